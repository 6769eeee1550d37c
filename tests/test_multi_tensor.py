"""The bucketed launch (every step's default), bitwise equal to one launch per parameter.

Both paths run the same ``_adam_math`` with the same per-bucket decay switches, so on the same
inputs they must agree bit for bit (``torch.equal``), on params and on every accumulator. The
multi-tensor path reaches params and grads through a device address table: these tests also
change what the table describes between steps (grads re-created, a param's storage replaced,
a new gradient object at the same address with other strides, unaligned views) and require
that the change is seen, never read through a stale address.

Everything runs on ``devices.DEVICE`` (``tests/devices.py``): bitwise equality holds compiled
too, since both paths contract the same expressions into the same FMAs.

The equality check runs every configuration of the shared table (``tests/configs.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import triton_adam
from configs import CONFIGS
from counters import TritonLaunches  # perf/counters.py (pytest's pythonpath)
from devices import DEVICE, fma_tol
from triton_adam import buckets
from triton_adam.kernels import adam as K
from triton_adam.reference import adam_step, init_state

# Odd sizes: 1, 17, one block + 1, several blocks (and a 2-D one).
SHAPES = [(1,), (17,), (K.BLOCK_SIZE + 1,), (3 * K.BLOCK_SIZE + 5,), (7, 13), (2, 1)]
STEPS = 10


def _params(dtypes=(torch.float32,), seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, shape in enumerate(SHAPES):
        dtype = dtypes[i % len(dtypes)]
        out.append(torch.randn(shape, generator=gen, dtype=dtype).to(DEVICE).requires_grad_())
    return out


def _grads(params, steps, seed=1, none=()):
    gen = torch.Generator().manual_seed(seed)
    return [[None if (s, i) in none
             else torch.randn(p.shape, generator=gen, dtype=p.dtype).to(DEVICE)
             for i, p in enumerate(params)] for s in range(steps)]


CLEARS = {
    # Paddle's clear_grad(set_to_zero=False): every gradient is a new tensor each step.
    "clear_grad-set_to_zero-False": lambda opt, ps: opt.clear_grad(set_to_zero=False),
    # PyTorch's zero_grad(set_to_none=True), called on the params as a module would.
    "torch-zero_grad-set_to_none": lambda opt, ps: [setattr(p, "grad", None) for p in ps],
    # The default: gradients kept and zeroed in place; the tables are reused.
    "clear_grad-zero": lambda opt, ps: opt.clear_grad(),
}
# Every configuration of the table runs with new gradient objects every step; these also
# with the other ways of clearing (the same objects zeroed and accumulated into, or None),
# which change what the launch tables (and the norm pass's) must notice between steps.
EVERY_CLEAR = ("adam", "groups-amsgrad", "adamw-lr-ratio", "adam-betas-as-tensors",
               "clip-global-norm", "lazy-sparse")
CASES = [pytest.param(config, clear, id=f"{config}-{clear}") for config in CONFIGS
         for clear in CLEARS
         if clear == "clear_grad-set_to_zero-False" or config in EVERY_CLEAR]


def _config_grads(config, params, steps, none=(), seed=1):
    """Per step, a gradient of ``config``'s form (dense or sparse) for each param, None for
    the (step, param) pairs in ``none``; the same for every run with the same arguments."""
    rng = np.random.default_rng(seed)
    return [[None if (s, i) in none else config.grad(rng, p) for i, p in enumerate(params)]
            for s in range(steps)]


def _train(name, multi_tensor, clear, none=()):
    config = CONFIGS[name]
    params = _params((config.dtype,))
    config.set_attrs(params)
    opt, sched = config.start(params, per_tensor_launches=not multi_tensor)
    for step_grads in _config_grads(config, params, STEPS, none=none):
        for p, g in zip(params, step_grads):
            if g is None:
                p.grad = None
            elif p.grad is None or clear != "clear_grad-zero":
                p.grad = g.clone()
            else:
                p.grad.add_(g)  # accumulate into the kept gradient, as backward does
        opt.step()
        if sched is not None:
            sched.step()
        CLEARS[clear](opt, params)
    return params, opt.state_dict()


def _assert_bitwise(a, b):
    (pa, sa), (pb, sb) = a, b
    for i, (x, y) in enumerate(zip(pa, pb)):
        assert torch.equal(x, y), f"param {i}: max diff {(x - y).abs().max()}"
    _assert_same_state(sa, sb, "state_dict")


def _assert_same_state(x, y, where):
    """Equal state dicts: same keys, every tensor bitwise (master weights and a
    scheduler's state are nested dicts)."""
    if isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for key in x:
            _assert_same_state(x[key], y[key], f"{where}[{key!r}]")
    elif isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    else:
        assert x == y, where


@pytest.mark.parametrize("config, clear", CASES)
def test_multi_tensor_is_bitwise_equal_to_per_tensor(config, clear):
    skipped = {(2, 0), (3, 0), (5, 4), (7, 2)}  # a few params without a grad at some steps
    per_tensor = _train(config, False, clear, none=skipped)
    multi = _train(config, True, clear, none=skipped)
    _assert_bitwise(per_tensor, multi)


def test_mixed_dtypes_are_two_buckets_and_match_the_reference():
    """float32 and float64 params in one optimizer: one launch per dtype bucket; results equal
    the per-tensor path bitwise and the float64 reference to each dtype's tolerance."""
    dtypes = (torch.float32, torch.float64)
    params = _params(dtypes)
    refs = [init_state(p.cpu(), beta1=0.9, beta2=0.999, amsgrad=False) for p in params]
    opt = triton_adam.Adam(0.01, parameters=params, use_multi_tensor=True)
    grads = _grads(params, 4)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g
        with TritonLaunches() as launches:
            opt.step()
        assert launches.count == 2
        refs = [adam_step(r, g.cpu(), lr=0.01, beta1=0.9, beta2=0.999, epsilon=1e-8)
                for r, g in zip(refs, step_grads)]
    state = opt.state_dict()
    for i, (p, r) in enumerate(zip(params, refs)):
        # fp32: a few ulps per step after 4 steps; fp64: algebraic form only.
        tol = (fma_tol(p.dtype, rtol=1e-5, atol=1e-7) if p.dtype == torch.float32
               else fma_tol(p.dtype, rtol=1e-12, atol=1e-12))
        torch.testing.assert_close(p.detach().cpu().double(), r.param, **tol)
        torch.testing.assert_close(state[f"param_{i}_moment2_0"].cpu().double(), r.moment2,
                                   **tol)
        # fp32 pows: beta rounded to fp32 (6e-8 relative) and one rounding per step.
        pow_rel = 1e-6 if p.dtype == torch.float32 else 1e-15
        assert state[f"param_{i}_beta1_pow_acc_0"].item() == pytest.approx(r.beta1_pow,
                                                                          rel=pow_rel)
    _assert_bitwise((params, state), _train_reference_path(dtypes, grads))


def _train_reference_path(dtypes, grads):
    params = _params(dtypes)
    opt = triton_adam.Adam(0.01, parameters=params, per_tensor_launches=True)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g
        opt.step()
    return params, opt.state_dict()


def test_one_launch_per_bucket_whatever_the_number_of_tensors_and_groups():
    params = [torch.randn(n % 37 + 1, device=DEVICE, requires_grad=True) for n in range(150)]
    groups = [{"params": params[i:i + 30], "learning_rate": 1.0 + i / 100, "beta1": 0.9 - i / 1000}
              for i in range(0, 150, 30)]
    opt = triton_adam.Adam(0.01, parameters=groups, use_multi_tensor=True, amsgrad=True)
    lone = torch.zeros(3, device=DEVICE, requires_grad=True)
    per_tensor = triton_adam.Adam(0.01, parameters=[lone])
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        with TritonLaunches(execute=False) as launches:
            opt.step()
        assert launches.count == 1
    lone.grad = torch.ones(3, device=DEVICE)
    with TritonLaunches(execute=False) as launches:
        per_tensor.step()
    assert launches.count == 1


def _pair(config="adam"):
    """The same params in two optimizers: per-tensor and multi-tensor."""
    a, b = _params(), _params()
    return (a, CONFIGS[config].make(a, per_tensor_launches=True),
            b, CONFIGS[config].make(b, use_multi_tensor=True))


def test_param_storage_replaced_between_steps_is_seen():
    a, oa, b, ob = _pair()
    for step, grads in enumerate(_grads(a, 4)):
        if step == 2:
            fresh = [torch.randn_like(p) for p in a]
            for x, y, f in zip(a, b, fresh):
                x.data = f.clone()  # new storage: the old address is stale
                y.data = f.clone()
        for x, y, g in zip(a, b, grads):
            if x.grad is None:
                x.grad, y.grad = g.clone(), g.clone()
            else:  # the same gradient objects every step: only the params' storage changes
                x.grad.copy_(g)
                y.grad.copy_(g)
        oa.step()
        ob.step()
    _assert_bitwise((a, oa.state_dict()), (b, ob.state_dict()))


def test_new_gradient_object_at_the_same_address_with_other_strides_is_seen():
    """The allocator can hand a new gradient the old one's address; here a transposed view of
    the same buffer: same data_ptr, new object, not contiguous. Reading it through the cached
    row would read the wrong elements."""
    a, oa, b, ob = _pair()
    i = 4  # the (7, 13) param
    shape = a[i].shape
    buffers = [torch.empty(shape[0] * shape[1], device=DEVICE) for _ in range(2)]
    for step, grads in enumerate(_grads(a, 3)):
        for x, y, g in zip(a, b, grads):
            x.grad, y.grad = g.clone(), g.clone()
        for p, buf, g in ((a[i], buffers[0], grads[i]), (b[i], buffers[1], grads[i])):
            if step == 0:
                buf.copy_(g.reshape(-1))
                p.grad = buf.view(shape)
            else:
                view = buf.view(shape[1], shape[0]).t()  # same address, other strides
                view.copy_(g)
                p.grad = view
                assert p.grad.data_ptr() == buf.data_ptr() and not p.grad.is_contiguous()
        oa.step()
        ob.step()
    _assert_bitwise((a, oa.state_dict()), (b, ob.state_dict()))


def test_unaligned_view_beside_aligned_members_is_decided_per_row(monkeypatch):
    """A bucket with one unaligned member (a view at an odd offset) launches the per-row
    specialization (``aligned=True``: each row's own addresses pick vector or scalar access on
    the device, so the aligned members keep 16-byte access: the SASS audit's mixed-alignment
    rows), with results bitwise equal to the per-tensor path."""
    base_a, base_b = torch.randn(3000, device=DEVICE), torch.randn(3000, device=DEVICE)
    base_b.copy_(base_a)
    a = [base_a[1:1500].requires_grad_(), torch.randn(17, device=DEVICE, requires_grad=True)]
    b = [base_b[1:1500].requires_grad_(), a[1].detach().clone().requires_grad_()]
    assert a[0].data_ptr() % 16 != 0
    oa = triton_adam.Adam(0.01, parameters=a, per_tensor_launches=True)
    ob = triton_adam.Adam(0.01, parameters=b, use_multi_tensor=True)
    seen = []
    original = K.adam_update_tensor_list_
    monkeypatch.setattr(K, "adam_update_tensor_list_",
                        lambda *args, **kw: seen.append(kw["aligned"]) or original(*args, **kw))
    for grads in _grads(a, 3):
        for x, y, g in zip(a, b, grads):
            x.grad, y.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert seen == [True] * 3
    _assert_bitwise((a, oa.state_dict()), (b, ob.state_dict()))


def test_tables_are_rebuilt_only_when_what_they_describe_changes(monkeypatch):
    params = _params()
    opt = triton_adam.Adam(0.01, parameters=params, use_multi_tensor=True)
    uploads = []
    original = buckets.upload_table
    monkeypatch.setattr(buckets, "upload_table",
                        lambda array, device: uploads.append(array.dtype.name) or
                        original(array, device))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert sorted(uploads) == ["int32", "int64"]  # chunk table and address table, built once
    for _ in range(3):
        opt.clear_grad()  # zeroed in place: same gradient objects
        for p in params:
            p.grad.add_(1.0)
        opt.step()
    assert len(uploads) == 2
    opt.clear_grad(set_to_zero=False)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert uploads[2:] == ["int64"]  # new addresses; same active set, same chunks
    params[0].grad = None
    opt.step()
    assert sorted(uploads[3:]) == ["int32", "int64"]  # the active set changed


def test_kernel_writes_nothing_outside_the_active_regions():
    """Poison: padding between state regions and an inactive member's param, state and pows
    are bit-for-bit unchanged by multi-tensor steps."""
    params = _params()
    opt = triton_adam.Adam(0.01, parameters=params, use_multi_tensor=True, amsgrad=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    bucket = opt.engine.buckets[0]
    pad = torch.ones(bucket.total, dtype=torch.bool, device=DEVICE)
    for off, n in zip(bucket.offsets, bucket.numels):
        pad[off:off + n] = False
    for buf in (bucket.moment1, bucket.moment2, bucket.moment2_max):
        buf[pad] = float("nan")
    frozen = 3
    params[frozen].grad = None
    before = {name: t.clone() for name, t in opt.state_dict().items()
              if name.startswith(f"param_{frozen}_")}
    p_before = params[frozen].detach().clone()
    for _ in range(2):
        for i, p in enumerate(params):
            if i != frozen:
                p.grad = torch.randn_like(p)
        opt.step()
    for buf in (bucket.moment1, bucket.moment2, bucket.moment2_max):
        assert buf[pad].isnan().all()
        assert not buf[~pad].isnan().any()
    assert torch.equal(params[frozen], p_before)
    after = opt.state_dict()
    for name, t in before.items():
        assert torch.equal(after[name], t), name


def test_a_parameter_unfrozen_later_joins_a_new_bucket():
    params = _params()
    params[2].requires_grad_(False)
    ref = _params()
    ref[2].requires_grad_(False)
    opt = triton_adam.Adam(0.01, parameters=params, use_multi_tensor=True)
    opt_ref = triton_adam.Adam(0.01, parameters=ref, per_tensor_launches=True)
    for step, grads in enumerate(_grads(params, 4)):
        if step == 2:
            params[2].requires_grad_(True)
            ref[2].requires_grad_(True)
        for p, q, g in zip(params, ref, grads):
            if p.requires_grad:
                p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        opt_ref.step()
    assert len(opt.engine.buckets) == 2
    _assert_bitwise((params, opt.state_dict()), (ref, opt_ref.state_dict()))


def test_bad_gradient_in_one_bucket_changes_nothing():
    params = _params((torch.float32, torch.float64))
    opt = triton_adam.Adam(0.01, parameters=params, use_multi_tensor=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [p.detach().clone() for p in params]
    state = {k: v.clone() for k, v in opt.state_dict().items()}
    for p in params:
        p.grad = torch.randn_like(p)
    params[-1].grad = torch.randn(params[-1].shape, dtype=params[-1].dtype,
                                  device=DEVICE).to_sparse()
    with pytest.raises(ValueError, match="row-sparse"):  # sparse_dim 2: not a row gradient
        opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    for k, v in opt.state_dict().items():
        assert torch.equal(v, state[k]), k
