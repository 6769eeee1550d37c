"""Are bf16 moments and bf16 parameters without master weights rounded without bias, and
deterministically?

``moment_dtype=torch.bfloat16`` stores the moments in bf16 and ``stochastic_rounding=True``
writes bf16 parameters (no master weights) stochastically, both with Philox-4x32-10 bits keyed
by (seed, the tensor's step count, the element's offset) (``kernels/common.py``). Checked here:
the generator against a numpy Philox that matches the published known-answer vectors; the
rounding over every one of its 2^16 random inputs (exactly unbiased; NaN, inf, zeros and the
bf16 maximum as decided) and kernel == host; the optimizer's errors against the float64
reference shrinking as 1/sqrt(seeds); runs bitwise deterministic given the seed, bucketed ==
per-tensor launches, resume bitwise from a state dict (Paddle's and the torch face's, moments
carried as float32); the refusals.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import triton_adam
from triton_adam import reference as R
from triton_adam.kernels.common import (philox_bits, philox_host, round_stochastic_bf16,
                                        round_stochastic_bf16_host)

SHAPES = ((33, 7), (1030,), (5,))  # a partial block, a full block and a part, a tiny tensor


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16}[t.dtype])


# --------------------------------------------------------------------------- the generator
@triton.jit
def _philox_kernel(offs_ptr, out_ptr, seed, step, stream, N: tl.constexpr):
    i = tl.arange(0, N)
    r0, r1, r2, r3 = philox_bits(seed, step, tl.load(offs_ptr + i), stream)
    tl.store(out_ptr + i * 4, r0.to(tl.int32, bitcast=True))
    tl.store(out_ptr + i * 4 + 1, r1.to(tl.int32, bitcast=True))
    tl.store(out_ptr + i * 4 + 2, r2.to(tl.int32, bitcast=True))
    tl.store(out_ptr + i * 4 + 3, r3.to(tl.int32, bitcast=True))


@triton.jit
def _round_kernel(x_ptr, bits_ptr, out_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    bits = tl.load(bits_ptr + i).to(tl.uint32, bitcast=True)
    tl.store(out_ptr + i, round_stochastic_bf16(tl.load(x_ptr + i), bits))


def test_philox_host_matches_published_vectors():
    """Random123's known-answer vectors of Philox-4x32-10 (kat_vectors)."""
    ctr = np.array([[0, 0, 0, 0], [0xFFFFFFFF] * 4], dtype=np.uint32)
    assert philox_host(0, ctr[:1]).tolist() == [[0x6627E8D5, 0xE169C58D, 0xBC57AC4C,
                                                 0x9B00DBD8]]
    assert philox_host(0xFFFFFFFFFFFFFFFF, ctr[1:]).tolist() == [[0x408F276D, 0x41C83B0E,
                                                                  0xA20BC7C6, 0x6D5451FD]]


@pytest.mark.parametrize("stream", [0, 5, 2 ** 32 - 1])
def test_kernel_philox_matches_host(stream):
    """(seed, step, offset, stream) -> the counter (offset lo, offset hi, step, stream) under
    the key seed; offsets beyond 2^32 included (tensors that large exist)."""
    n = 64
    offs = torch.arange(n, dtype=torch.int64) * 7919 + (torch.arange(n) % 3) * (1 << 33)
    seed, step = (123 << 40) + 45, 17
    out = torch.zeros(n * 4, dtype=torch.int32)
    _philox_kernel[(1,)](offs, out, seed, step, stream, N=n)
    o = offs.numpy()
    ctr = np.stack([o & 0xFFFFFFFF, o >> 32, np.full(n, step), np.full(n, stream)], 1)
    expect = philox_host(seed, ctr.astype(np.uint64).astype(np.uint32))
    assert (out.view(n, 4).numpy().view(np.uint32) == expect).all()


# ----------------------------------------------------------------------------- the rounding
def _all_bits(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each value of ``x`` against every 16-bit random input: ([n, 65536] x, bits)."""
    bits = torch.arange(1 << 16, dtype=torch.int64)
    return x[:, None].expand(-1, bits.numel()), bits[None, :].expand(x.numel(), -1)


def test_rounding_is_exactly_unbiased_over_all_random_inputs():
    """Averaged over all 2^16 random inputs, the rounding returns x exactly (float64), for
    positive and negative normals, subnormals, binade edges and tiny fractions."""
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(40, generator=g) * 10.0 ** torch.randint(-30, 30, (40,),
                                                                          generator=g),
                   torch.tensor([1.0 + 2 ** -20, -(2.0 - 2 ** -23), 2 ** -130, -3e-39,
                                 3.0e38, 1.17549435e-38])])
    xs, bits = _all_bits(x)
    y = round_stochastic_bf16_host(xs.contiguous(), bits).to(torch.float64)
    assert torch.equal(y.mean(dim=1), x.to(torch.float64))
    # Every result is one of the two bf16 neighbours of x.
    assert ((y.min(dim=1).values <= x.double()) & (y.max(dim=1).values >= x.double())).all()
    assert ((y.max(dim=1).values - y.min(dim=1).values).abs()
            <= x.double().abs() * 2 ** -7 + 2 ** -133).all()


def test_rounding_edges_and_kernel_equals_host():
    x = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), 0.0, -0.0,
                      3.3895314e38, 3.39e38, -3.4028235e38, 1.0, -1.0, 1e-45])
    xs, bits = _all_bits(x)
    y = round_stochastic_bf16_host(xs.contiguous(), bits)
    yf = y.float()
    assert torch.isnan(yf[:2]).all()
    assert (torch.sign(yf[1]) == -1).all() or torch.isnan(yf[1]).all()
    assert (yf[2] == float("inf")).all() and (yf[3] == -float("inf")).all()
    assert (_bits(y[4]) == 0).all() and (_bits(y[5]) == _bits(torch.tensor(-0.0).bfloat16())).all()
    bf16_max = torch.finfo(torch.bfloat16).max
    # Finite values never become inf: above bf16's max they saturate (a decided bias).
    assert (yf[6:9].abs() <= bf16_max).all()
    assert (yf[6] == bf16_max).all() and (yf[8] == -bf16_max).all()
    assert (yf[9] == 1.0).all() and (yf[10] == -1.0).all()  # exact values stay exact
    # The kernel writes the host twin's bits (a sample of the random inputs per value).
    pick = torch.arange(0, 1 << 16, 257)
    flat_x = xs[:, pick].contiguous().reshape(-1)
    flat_bits = bits[:, pick].contiguous().reshape(-1).to(torch.int32)
    n = triton.next_power_of_2(flat_x.numel())
    xpad = torch.zeros(n)
    xpad[:flat_x.numel()] = flat_x
    bpad = torch.zeros(n, dtype=torch.int32)
    bpad[:flat_x.numel()] = flat_bits
    out = torch.zeros(n, dtype=torch.bfloat16)
    _round_kernel[(1,)](xpad, bpad, out, N=n)
    assert torch.equal(_bits(out), _bits(round_stochastic_bf16_host(xpad, bpad)))


# ------------------------------------------------------------- the optimizer, against float64
LR = 1e-3  # updates of about 0.13 bf16 ulp at |p| ~ 1: round-to-nearest drops them all
STEPS = 12


def _grads(shape, steps):
    g = torch.Generator().manual_seed(77)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


def _reference(p0: torch.Tensor, grads):
    """float64 Paddle Adam on ``p0`` (betas 0.9/0.999, eps 1e-8)."""
    state = R.init_state(p0, beta1=0.9, beta2=0.999, amsgrad=False)
    for g in grads:
        state = R.adam_step(state, g.to(torch.float64), lr=LR, beta1=0.9, beta2=0.999,
                            epsilon=1e-8)
    return state


SEEDS, COPIES = 8, 8  # 64 independent draws: 8 seeds x 8 copies


def _seeded_runs(p0, grads, *, param_dtype, **kw):
    """Final params and moments (float64) of ``SEEDS * COPIES`` draws, ``[draws, n]``: for each
    seed, one parameter holding ``COPIES`` copies of ``p0`` end to end, with the same
    gradients. The copies sit at other offsets, and the random bits are keyed by the offset,
    so every draw is independent; the first 4 draws come from one seed, all 64 from 8. (One
    tensor of 8 copies: 4 times fewer interpreted programs than a tensor per copy.)"""
    n = p0.numel()
    finals, m1, m2 = [], [], []
    for seed in range(SEEDS):
        p = torch.nn.Parameter(p0.to(param_dtype).repeat(COPIES))
        opt = triton_adam.Adam(learning_rate=LR, parameters=[p], seed=seed, **kw)
        for g in grads:
            p.grad = g.to(param_dtype).repeat(COPIES)
            opt.step()
        st = opt._engine.state(0)
        finals.append(p.detach().to(torch.float64).view(COPIES, n))
        m1.append(st["exp_avg"].to(torch.float64).view(COPIES, n))
        m2.append(st["exp_avg_sq"].to(torch.float64).view(COPIES, n))
    return torch.cat(finals), torch.cat(m1), torch.cat(m2)


def _shrinks(samples: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """RMS over elements of the mean error over 4 and over 64 draws.

    Unbiased rounding: the mean's error is noise, its RMS falls as 1/sqrt(draws), a ratio of
    sqrt(16) = 4. Each RMS is over 256 elements, so it is known to about 1/sqrt(2 * 256) = 4.4 %
    and the ratio to about 10 %: the band (2.8, 5.6) is 3 of those either way (wider above,
    where chance is the only cause). A bias b adds b^2 to both mean squares and pulls the
    ratio towards 1: below 2.8 once b reaches about the 64-draw noise."""
    def err(k):
        return (samples[:k].mean(0) - ref).pow(2).mean().sqrt().item()
    return err(4), err(64)


@pytest.mark.filterwarnings("ignore:Accumulating with FP16 or BF16")
def test_bf16_params_unbiased_error_shrinks_as_one_over_sqrt_seeds():
    n = 256
    p0 = (1.0 + torch.rand(n, generator=torch.Generator().manual_seed(5))).to(torch.bfloat16)
    grads = _grads((n,), STEPS)
    ref = _reference(p0.float(), grads).param
    params, _, _ = _seeded_runs(p0.float(), grads, param_dtype=torch.bfloat16,
                                stochastic_rounding=True)
    e4, e64 = _shrinks(params, ref)
    assert 2.8 < e4 / e64 < 5.6, (e4, e64)  # sqrt(16) = 4
    # Round-to-nearest stalls: every update is below half an ulp, the param never moves.
    p = torch.nn.Parameter(p0.clone())
    opt = triton_adam.Adam(learning_rate=LR, parameters=[p])
    for g in grads:
        p.grad = g.to(torch.bfloat16)
        opt.step()
    assert torch.equal(p.detach(), p0)
    rne = (p.detach().double() - ref).pow(2).mean().sqrt().item()
    assert e64 < rne / 4, (e64, rne)


def test_bf16_moments_unbiased_error_shrinks_as_one_over_sqrt_seeds():
    """fp32 params, bf16 moments: the moments' recursion is linear, so the seed mean tends
    to the float64 reference's moments."""
    n = 256
    p0 = torch.randn(n, generator=torch.Generator().manual_seed(6))
    grads = _grads((n,), STEPS)
    ref = _reference(p0, grads)
    _, m1, m2 = _seeded_runs(p0, grads, param_dtype=torch.float32,
                             moment_dtype=torch.bfloat16)
    for samples, expect in ((m1, ref.moment1), (m2, ref.moment2)):
        e4, e64 = _shrinks(samples, expect)
        assert 2.8 < e4 / e64 < 5.6, (e4, e64)


# ---------------------------------------------------------------------- determinism, paths
def _params(seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]


def _train(params, opt, start, steps, amp=False):
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(1000 + step)
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g) * (1 + step % 5)).to(p.dtype)
        if amp:
            opt.step(grad_scale=torch.tensor([4.0]),
                     found_inf=torch.tensor([1.0 if step % 4 == 2 else 0.0]))
        else:
            opt.step()


MODES = {
    "bf16 moments": dict(moment_dtype=torch.bfloat16),
    "sr params": dict(stochastic_rounding=True),
    "both, amsgrad": dict(moment_dtype=torch.bfloat16, stochastic_rounding=True, amsgrad=True),
    "bf16 moments, fp32 masters": dict(moment_dtype=torch.bfloat16, multi_precision=True),
}


def _snapshot(opt, params, pows=True):
    """Params (bits) and state; without ``pows`` the pow accumulators are left out (the
    torch face rebuilds them as ``beta ** (step + 1)`` on load and never reads them: its
    bias corrections come from the step count)."""
    out = [_bits(p.detach()).clone() for p in params]
    for i in range(len(params)):
        for name, t in sorted(opt._engine.state(i).items()):
            if pows or not name.endswith("_pow"):
                out.append(t.clone())
    return out


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.filterwarnings("ignore:Accumulating with FP16 or BF16")
@pytest.mark.parametrize("mode", MODES)
def test_deterministic_and_bucketed_equals_per_tensor(mode):
    runs = {}
    for name, extra in (("a", {}), ("b", {}), ("per-tensor", dict(per_tensor_launches=True)),
                        ("other seed", dict(seed=1))):
        params = _params()
        opt = triton_adam.Adam(learning_rate=1e-2, parameters=params,
                               **{"seed": 0, **MODES[mode], **extra})
        _train(params, opt, 0, 6, amp=mode == "sr params")
        runs[name] = _snapshot(opt, params)
    assert _equal(runs["a"], runs["b"])
    assert _equal(runs["a"], runs["per-tensor"])
    assert not _equal(runs["a"], runs["other seed"])


@pytest.mark.filterwarnings("ignore:Accumulating with FP16 or BF16")
@pytest.mark.parametrize("via_file", [False, True], ids=["dict", "pdopt file"])
@pytest.mark.parametrize("mode", ["bf16 moments", "both, amsgrad"])
def test_paddle_state_dict_resume_is_bitwise(mode, via_file, tmp_path):
    """The step counts travel in the dict (``{param}_step_0``, not Paddle's), so the resumed
    run draws the random bits the uninterrupted one draws."""
    kw = dict(learning_rate=1e-2, seed=9, **MODES[mode])
    whole_params = _params()
    whole = triton_adam.Adam(parameters=whole_params, **kw)
    _train(whole_params, whole, 0, 8)

    params = _params()
    first = triton_adam.Adam(parameters=params, **kw)
    _train(params, first, 0, 4)
    sd = first.state_dict()
    assert all(v.dtype == torch.float32 for k, v in sd.items() if "moment" in k)
    steps = {k: v for k, v in sd.items() if k.endswith("_step_0")}
    assert len(steps) == len(params) and all(v.tolist() == [4.0] for v in steps.values())
    if via_file:
        triton_adam.save(sd, tmp_path / "opt.pdopt")
        sd = triton_adam.load(tmp_path / "opt.pdopt")
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = triton_adam.Adam(parameters=resumed_params, **kw)
    resumed.set_state_dict(sd)
    _train(resumed_params, resumed, 4, 4)
    assert _equal(_snapshot(whole, whole_params), _snapshot(resumed, resumed_params))


@pytest.mark.filterwarnings("ignore:Accumulating with FP16 or BF16")
def test_step_counts_are_only_in_random_modes_and_optional_on_load():
    """Without random bits the dict is Paddle's exactly (no step keys, and step keys given
    are accepted, not loaded); a random mode loading a dict without them restarts its stream
    at step 0, the same continuation whatever its own count was."""
    params = _params()
    plain = triton_adam.Adam(learning_rate=1e-2, parameters=params)
    _train(params, plain, 0, 2)
    assert not any(k.endswith("_step_0") for k in plain.state_dict())

    kw = dict(learning_rate=1e-2, seed=3, **MODES["bf16 moments"])
    params = _params()
    source = triton_adam.Adam(parameters=params, **kw)
    _train(params, source, 0, 3)
    sd = source.state_dict()
    plain_params = _params()
    triton_adam.Adam(learning_rate=1e-2, parameters=plain_params).set_state_dict(sd)

    no_steps = {k: v for k, v in sd.items() if not k.endswith("_step_0")}
    outcomes = []
    for warm_steps in (0, 5):
        ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
        opt = triton_adam.Adam(parameters=ps, **kw)
        _train(ps, opt, 0, warm_steps)  # a count of its own, which the load replaces
        with torch.no_grad():  # the params are the model's, not in the dict
            for p, src in zip(ps, params):
                p.copy_(src)
        opt.set_state_dict(no_steps)
        assert all(v.tolist() == [0.0] for k, v in opt.state_dict().items()
                   if k.endswith("_step_0"))
        _train(ps, opt, 3, 2)
        outcomes.append(_snapshot(opt, ps))
    assert _equal(*outcomes)


@pytest.mark.parametrize("bad", [-1.0, 2.5, float("nan"), float("inf"), 2.0 ** 24 + 2])
@pytest.mark.filterwarnings("ignore:Accumulating with FP16 or BF16")
def test_bad_step_count_raises_and_changes_nothing(bad):
    kw = dict(learning_rate=1e-2, seed=3, **MODES["bf16 moments"])
    params = _params()
    opt = triton_adam.Adam(parameters=params, **kw)
    _train(params, opt, 0, 2)
    before = _snapshot(opt, params)
    sd = {k: v.clone() if isinstance(v, torch.Tensor) else v
          for k, v in opt.state_dict().items()}
    key = next(k for k in sd if k.endswith("_step_0"))
    sd[key] = torch.tensor([bad])
    with pytest.raises(triton_adam.state.StateDictError, match="step count"):
        opt.set_state_dict(sd)
    assert _equal(before, _snapshot(opt, params))


def test_loading_rounds_float32_moments_to_nearest_even():
    p = torch.nn.Parameter(torch.randn(40))
    opt = triton_adam.Adam(learning_rate=1e-2, parameters=[p], moment_dtype=torch.bfloat16)
    p.grad = torch.randn(40)
    opt.step()
    sd = opt.state_dict()
    key = next(k for k in sd if k.endswith("moment1_0"))
    value = torch.randn(40) * 1e-3
    sd[key] = value.clone()
    opt.set_state_dict(sd)
    assert torch.equal(opt._engine.state(0)["exp_avg"], value.to(torch.bfloat16).float())
    assert opt._engine._where[0][0].moment1.dtype == torch.bfloat16  # 2 B a moment


@pytest.mark.filterwarnings("ignore:Accumulating with FP16 or BF16")
def test_torch_face_state_dict_resume_is_bitwise():
    kw = dict(lr=1e-2, moment_dtype=torch.bfloat16, stochastic_rounding=True, seed=4)

    def run(params, start, steps, sd=None):
        opt = triton_adam.optim.AdamW(params, **kw)
        if sd is not None:
            opt.load_state_dict(sd)
        _train(params, opt, start, steps)
        return opt

    whole_params = _params()
    whole = run(whole_params, 0, 6)
    params = _params()
    first = run(params, 0, 3)
    sd = first.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == torch.float32
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = run(resumed_params, 3, 3, sd)
    assert _equal(_snapshot(whole, whole_params, pows=False),
                  _snapshot(resumed, resumed_params, pows=False))


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("kw, error", [
    (dict(moment_dtype=torch.float16), ValueError),
    (dict(moment_dtype="bfloat16"), ValueError),
    (dict(stochastic_rounding="yes"), TypeError),
    (dict(stochastic_rounding=True, multi_precision=True), ValueError),
    (dict(seed=-1), ValueError),
    (dict(seed=2 ** 63), ValueError),
    (dict(seed=1.5), ValueError),
    (dict(seed=True), ValueError),
    (dict(moment_dtype=torch.bfloat16, lazy_mode=True), ValueError),
    (dict(stochastic_rounding=True, lazy_mode=True), ValueError),
])
def test_bad_values_raise(kw, error):
    p = torch.nn.Parameter(torch.randn(4).to(torch.bfloat16))
    with pytest.raises(error):
        triton_adam.Adam(parameters=[p], **kw)
    torch_kw = {{"multi_precision": "master_weights", "lazy_mode": "lazy_sparse"}.get(k, k): v
                for k, v in kw.items()}
    with pytest.raises(error):
        triton_adam.optim.Adam([p], **torch_kw)


@pytest.mark.parametrize("dtype, kw", [(torch.float16, dict(stochastic_rounding=True)),
                                       (torch.float64, dict(moment_dtype=torch.bfloat16))])
def test_unsupported_param_dtypes_raise(dtype, kw):
    p = torch.nn.Parameter(torch.randn(4).to(dtype))
    with pytest.raises(TypeError):
        triton_adam.Adam(parameters=[p], **kw)


# ------------------------------------------------------------------- streams and shard offsets
def _sr_kernel_run(param, grad, *, stream, offset, steps=3, seed=11):
    """``steps`` stochastic-rounding steps (bf16 param and moments) of one tensor through the
    per-tensor launcher; returns (param, m, v) bits."""
    from triton_adam.kernels import adam as K

    n = param.numel()
    m = torch.zeros(n, dtype=torch.bfloat16)
    v = torch.zeros(n, dtype=torch.bfloat16)
    hyper = torch.zeros(K.HYPER_WIDTH, dtype=torch.float32)
    for col, value in ((K.HYPER_LR_SCALE, 1.0), (K.HYPER_BETA1, 0.9), (K.HYPER_BETA2, 0.999),
                       (K.HYPER_EPS, 1e-8), (K.HYPER_CLIP_MIN, -float("inf")),
                       (K.HYPER_CLIP_MAX, float("inf")), (K.HYPER_SIGN, 1.0)):
        hyper[col] = value
    pows = torch.zeros(2, K.POW_SLOT_WIDTH, dtype=torch.float32)
    pows[0, K.POW_BETA1], pows[0, K.POW_BETA2] = 0.9, 0.999
    for step in range(steps):
        K.adam_update_(param, grad * (1 + step), m, v, None, hyper, pows[step % 2],
                       pows[1 - step % 2], lr=1e-3, coupled_decay=False, decoupled_decay=False,
                       stochastic_rounding=True, seed=seed, rng_stream=stream,
                       rng_offset=offset)
    return [_bits(t).clone() for t in (param, m, v)]


def test_tensors_of_one_shape_draw_their_own_bits_and_shards_draw_the_whole_tensors():
    """Two tensors with the same values, gradients and step draw different bits (their
    streams differ), so their roundings are independent; a tensor updated as two shards, each
    with its place in the whole (``rng_offset``), gets the bits of the whole tensor: a
    sharded (FSDP2, dim 0) run rounds as an unsharded one."""
    g = torch.Generator().manual_seed(5)
    n = 2 * 1024 + 37  # two blocks and a part: the shard boundary is inside a block
    values = torch.randn(n, generator=g).to(torch.bfloat16)
    grad = torch.randn(n, generator=g).to(torch.bfloat16)
    whole = _sr_kernel_run(values.clone(), grad, stream=3, offset=0)
    other = _sr_kernel_run(values.clone(), grad, stream=4, offset=0)
    assert not torch.equal(whole[0], other[0]) and not torch.equal(whole[2], other[2])
    cut = 1500
    first = _sr_kernel_run(values[:cut].clone(), grad[:cut], stream=3, offset=0)
    second = _sr_kernel_run(values[cut:].clone(), grad[cut:], stream=3, offset=cut)
    for w, a, b in zip(whole, first, second):
        assert torch.equal(w, torch.cat([a, b]))
    unplaced = _sr_kernel_run(values[cut:].clone(), grad[cut:], stream=3, offset=0)
    assert not torch.equal(unplaced[0], second[0])


@pytest.mark.parametrize("bad", [dict(rng_stream=-1), dict(rng_stream=2 ** 32),
                                 dict(rng_offset=-5), dict(rng_stream=1.0),
                                 dict(rng_offset=True)])
def test_launcher_rejects_bad_streams_and_offsets(bad):
    from triton_adam.kernels import adam as K

    p = torch.ones(4, dtype=torch.bfloat16)
    kw = {"rng_stream": 0, "rng_offset": 0, **bad}
    with pytest.raises(ValueError, match="rng_stream"):
        K.adam_update_(p, p.clone(), torch.zeros(4, dtype=torch.bfloat16),
                       torch.zeros(4, dtype=torch.bfloat16), None,
                       torch.zeros(K.HYPER_WIDTH), torch.zeros(K.POW_SLOT_WIDTH),
                       torch.zeros(K.POW_SLOT_WIDTH), lr=1e-3, coupled_decay=False,
                       decoupled_decay=False, stochastic_rounding=True, **kw)
    assert torch.equal(p, torch.ones(4, dtype=torch.bfloat16))


def test_no_master_weight_advice_for_stochastically_rounded_params():
    """Paddle's warning (use multi_precision) is for round-to-nearest low-precision params;
    stochastic rounding is the chosen answer to it, so it stays silent there only."""
    import warnings

    for kw, expect in ((dict(stochastic_rounding=True), False), (dict(), True)):
        p = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
        p.grad = torch.ones(3, dtype=torch.bfloat16)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            triton_adam.Adam(learning_rate=1e-3, parameters=[p], **kw).step()
        assert any("Accumulating with FP16 or BF16" in str(w.message) for w in caught) == expect
