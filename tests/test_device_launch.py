"""Where and how launches run: each on its tensors' device, never inside a CUDA-graph capture,
without hidden host syncs, with 16-byte access decided per tensor, never over parameters that
share memory, never interpreting device memory, and with densified sparse gradients summed in
a fixed order.

The CPU has no second device, no streams and no graphs, so what a GPU would show is recorded
instead: every kernel launch is wrapped to note the device guard it runs in (the guard makes
the tensors' device current, which is what makes Triton launch there and on that device's
current stream), CUDA's capture query is patched, and the sync counter also counts blocking
host-to-device copies.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import triton_adam
from devices import CUDA_MODE, DEVICE, cpu_only
from host_syncs import count_host_syncs
from triton_adam import backend
from triton_adam.kernels import adam as K
from triton_adam.kernels import common as C
from triton_adam.kernels import lazy as L
from triton_adam.kernels import norm as N

KERNELS = [(K, "_adam_kernel"), (K, "_adam_tensor_list_kernel"), (L, "_lazy_adam_kernel"),
           (L, "_densify_rows_kernel"), (N, "_sum_squares_kernel"),
           (N, "_clip_finalize_kernel")]


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch as ``(kernel name, guarded device, devices of its tensors)``."""
    seen: list[tuple[str, torch.device | None, set[torch.device]]] = []
    for module, name in KERNELS:
        kernel = getattr(module, name)
        original = kernel.run

        def run(*args, _original=original, _name=name, **kwargs):
            devices = {a.device for a in list(args) + list(kwargs.values())
                       if isinstance(a, torch.Tensor)}
            seen.append((_name, C.guarded_device(), devices))
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", run)
    return seen


def _model(n: int = 4, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(K.BLOCK_SIZE + 3,), (17,), (5, 7), (1,)]
    return [torch.randn(shapes[i % 4], generator=gen, dtype=dtype).to(DEVICE).requires_grad_()
            for i in range(n)]


def _set_grads(params, seed: int, skip=()) -> None:
    gen = torch.Generator().manual_seed(seed)
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(DEVICE)
        p.grad = None if i in skip else g


# ------------------------------------------------------------------------ 1. device guard
CONFIGS = {
    "per-tensor": lambda ps: triton_adam.Adam(0.01, parameters=ps, per_tensor_launches=True),
    "multi-tensor": lambda ps: triton_adam.Adam(0.01, parameters=ps, use_multi_tensor=True),
    "multi-tensor global-norm clip": lambda ps: triton_adam.AdamW(
        0.01, parameters=ps, use_multi_tensor=True,
        grad_clip=triton_adam.ClipGradByGlobalNorm(0.5)),
    "per-tensor clip by norm, amsgrad": lambda ps: triton_adam.Adam(
        0.01, parameters=ps, amsgrad=True, grad_clip=triton_adam.ClipGradByNorm(0.5),
        per_tensor_launches=True),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_launch_of_a_step_runs_guarded_on_its_tensors_device(launches, config):
    params = _model()
    opt = CONFIGS[config](params)
    for step in range(2):
        _set_grads(params, step)
        opt.step()
    assert launches, "no launch recorded"
    for name, guarded, devices in launches:
        assert devices == {DEVICE} and guarded == DEVICE, (name, guarded, devices)


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy-rows", "densified"])
def test_sparse_launches_run_guarded(launches, lazy):
    emb = torch.nn.Embedding(9, 4, sparse=True).to(DEVICE)
    opt = triton_adam.Adam(0.01, parameters=[emb.weight], lazy_mode=lazy)
    emb(torch.tensor([[1, 3, 3, 8]], device=DEVICE)).sum().backward()
    opt.step()
    names = {name for name, _, _ in launches}
    # The bucket's launch also writes the pows of its members (the row kernel then overwrites
    # the lazy member's with the advanced ones).
    assert names == ({"_lazy_adam_kernel", "_adam_tensor_list_kernel"} if lazy
                     else {"_densify_rows_kernel", "_adam_tensor_list_kernel"})
    assert all(guarded == DEVICE for _, guarded, _ in launches)


def test_distributed_finalize_halves_run_guarded(launches):
    partials = torch.rand(5, device=DEVICE)
    segments, outputs = N.finalize_tables([([(0, 5)], N.MODE_GLOBAL)], DEVICE)
    sums, scales = torch.zeros(1, device=DEVICE), torch.zeros(1, device=DEVICE)
    N.output_sums_(partials, segments, outputs, sums)
    N.scales_from_sums_(sums, outputs, torch.ones(1, dtype=torch.float64, device=DEVICE),
                        scales)
    assert [(name, guarded) for name, guarded, _ in launches] == [
        ("_clip_finalize_kernel", DEVICE)] * 2


@cpu_only("fakes a CUDA device by patching torch.cuda.device")
def test_guard_makes_the_tensors_device_current(monkeypatch):
    """On CUDA the guard enters ``torch.cuda.device(d)`` (what makes Triton launch on ``d``
    and its current stream); nested guards restore the outer device."""
    entered = []

    @contextlib.contextmanager
    def fake_device(device):
        entered.append(device)
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(C, "_INTERPRETING", False)
    with C.device_guard(torch.device("cuda", 1)):
        assert C.guarded_device() == torch.device("cuda", 1)
        with C.device_guard(torch.device("cpu")):
            assert C.guarded_device() == torch.device("cpu")
        assert C.guarded_device() == torch.device("cuda", 1)
    assert C.guarded_device() is None
    assert entered == [torch.device("cuda", 1)]


# ---------------------------------------------------------------------- 2. graph capture
def _snapshot(opt, params):
    return ([p.detach().clone() for p in params],
            {k: v.clone() if isinstance(v, torch.Tensor) else v
             for k, v in opt.state_dict().items()})


def _assert_same(a, b):
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        if isinstance(a[1][k], torch.Tensor):
            assert torch.equal(a[1][k], b[1][k]), k


@cpu_only("patches CUDA's capture query")
@pytest.mark.parametrize("multi_tensor", [False, True])
def test_step_while_capturing_raises_and_changes_nothing(monkeypatch, multi_tensor):
    params = _model()
    opt = triton_adam.Adam(0.01, parameters=params, per_tensor_launches=not multi_tensor)
    _set_grads(params, 0)
    opt.step()
    before = _snapshot(opt, params)
    _set_grads(params, 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="CUDA graph is being captured"):
        opt.step()
    with pytest.raises(RuntimeError, match="CUDA graph is being captured"):
        opt.minimize(torch.zeros(()))
    _assert_same(before, _snapshot(opt, params))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    opt.step()  # outside the capture it steps again
    assert not torch.equal(before[0][0], params[0].detach())


@cpu_only("patches CUDA's capture query and device guard")
def test_capture_is_checked_on_each_parameter_device(monkeypatch):
    current = []

    @contextlib.contextmanager
    def fake_device(device):
        current.append(device)
        yield
        current.pop()

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing",
                        lambda: bool(current) and current[-1] == torch.device("cuda", 1))
    backend.check_not_capturing([torch.device("cuda", 0), torch.device("cpu")])
    assert not backend.capturing([torch.device("cuda", 0), torch.device("cpu")])
    assert backend.capturing([torch.device("cuda", 0), torch.device("cuda", 1)])
    with pytest.raises(RuntimeError, match="CUDA graph is being captured"):
        backend.check_not_capturing([torch.device("cuda", 0), torch.device("cuda", 1)])


# --------------------------------------------------------------------- 3. no hidden syncs
@pytest.mark.parametrize("multi_tensor", [False, True])
@pytest.mark.parametrize("clip", [False, True])
def test_changing_the_active_set_every_step_makes_no_host_sync(monkeypatch, multi_tensor, clip):
    """MoE experts without tokens, set_to_none gradients: the set of parameters with a
    gradient changes every step, and one parameter gets its first gradient mid-run (a new
    bucket). Every table is rebuilt, yet nothing waits for the device: no read-back, no
    blocking host-to-device copy, no ``torch.tensor(..., device=...)``."""
    params = _model(6)
    opt = triton_adam.AdamW(
        0.01, parameters=params, per_tensor_launches=not multi_tensor, amsgrad=True,
        grad_clip=triton_adam.ClipGradByGlobalNorm(0.5) if clip else None)
    grads = []
    for step in range(6):
        # parameter 5 has no gradient before step 3; the others take turns
        _set_grads(params, step, skip={step % 5} | ({5} if step < 3 else set()))
        grads.append([p.grad for p in params])
    calls: list[str] = []
    with monkeypatch.context() as m:
        count_host_syncs(m, calls)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()
    assert calls == []


def test_sync_counter_sees_blocking_copies_and_device_creations(monkeypatch):
    """The counter itself: the calls a GPU would block on are counted, async ones are not."""
    calls: list[str] = []
    with monkeypatch.context() as m:
        count_host_syncs(m, calls)
        x = torch.zeros(3)
        x.to(DEVICE, non_blocking=True)
        x.to(torch.float64)
        assert calls == []
        x.to(DEVICE)
        x.to(device=DEVICE)
        torch.tensor([1.0], device=DEVICE)
        torch.as_tensor([1.0], device=DEVICE)
    assert calls == ["to(device) blocking"] * 2 + ["torch.tensor(device=...)",
                                                   "torch.as_tensor(device=...)"]


def test_upload_is_asynchronous(monkeypatch):
    import numpy as np

    calls: list[str] = []
    with monkeypatch.context() as m:
        count_host_syncs(m, calls)
        out = C.upload(np.arange(6, dtype=np.int64).reshape(2, 3), DEVICE)
    assert calls == []
    assert out.device.type == DEVICE.type and out.cpu().tolist() == [[0, 1, 2], [3, 4, 5]]


# ----------------------------------------------------------------- 4. alignment per row
def test_bucket_mixing_aligned_and_unaligned_members_matches_per_tensor():
    """One member at an odd offset (a view, as an FSDP2 shard or DDP bucket view can be):
    every member of the bucket is still updated exactly as the per-tensor path does (the
    aligned members' 16-byte access is the SASS audit's mixed-alignment row)."""
    def build():
        base = torch.randn(3 * K.BLOCK_SIZE, generator=torch.Generator().manual_seed(3)).to(
            DEVICE)
        odd = base[1:2 * K.BLOCK_SIZE + 1].clone()[0:]  # a fresh aligned allocation ...
        holder = torch.zeros(2 * K.BLOCK_SIZE + 2, device=DEVICE)
        holder[1:-1].copy_(odd)
        unaligned = holder[1:-1]  # ... copied to an odd offset
        aligned = [torch.randn(s, generator=torch.Generator().manual_seed(i)).to(DEVICE)
                   for i, s in enumerate([(2 * K.BLOCK_SIZE,), (K.BLOCK_SIZE + 16,)])]
        return [unaligned.requires_grad_()] + [a.requires_grad_() for a in aligned]

    a, b = build(), build()
    assert a[0].data_ptr() % 16 != 0 and all(p.data_ptr() % 16 == 0 for p in a[1:])
    oa = triton_adam.Adam(0.01, parameters=a, per_tensor_launches=True)
    ob = triton_adam.Adam(0.01, parameters=b, use_multi_tensor=True,
                          grad_clip=None)
    for step in range(3):
        _set_grads(a, step)
        _set_grads(b, step)
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# --------------------------------------------------------------- 5. overlapping storage
def test_parameters_sharing_memory_are_refused_naming_both():
    storage = torch.zeros(40, device=DEVICE)
    w = storage[:30].view(5, 6).requires_grad_()
    b = storage[25:].requires_grad_()
    with pytest.raises(ValueError, match="parameter 'w' and parameter 'b' share memory"):
        triton_adam.Adam(0.01, parameters=[("w", w), ("b", b)], use_multi_tensor=True)
    with pytest.raises(ValueError, match="share memory"):
        triton_adam.Adam(0.01, parameters=[{"params": [w]}, {"params": [storage[29:31]]}])


def test_adjacent_views_of_one_storage_are_fine():
    storage = torch.randn(40, device=DEVICE)
    views = [storage[:30].view(5, 6).requires_grad_(), storage[30:].requires_grad_()]
    opt = triton_adam.Adam(0.01, parameters=views, use_multi_tensor=True)
    _set_grads(views, 0)
    before = storage.clone()
    opt.step()
    assert (storage != before).all()


# --------------------------------------------------------- 6. interpreter with CUDA tensors
@cpu_only("the interpreter is what is checked")
def test_interpreter_refuses_device_tensors_instead_of_reading_them():
    """Under TRITON_INTERPRET=1 a kernel given device memory would read its addresses as
    host memory (a segfault): every launcher refuses first. Meta tensors stand in for CUDA
    ones here (the same check: any device but the CPU)."""
    meta = dict(device="meta")
    p, g = torch.empty(8, **meta), torch.empty(8, **meta)
    m, v = torch.empty(8, **meta), torch.empty(8, **meta)
    hyper = torch.empty(K.HYPER_WIDTH, **meta)
    pows_in, pows_out = torch.empty(4, **meta), torch.empty(4, **meta)
    with pytest.raises(RuntimeError, match="under the interpreter"):
        K.adam_update_(p, g, m, v, None, hyper, pows_in, pows_out, lr=0.1,
                       coupled_decay=False, decoupled_decay=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        C.device_guard(torch.device("cuda", 0)).__enter__()
    assert C.guarded_device() is None


@cpu_only("the interpreter is what is checked")
def test_optimizer_names_the_parameter_on_a_cuda_device_under_the_interpreter():
    class FakeCuda:
        device = torch.device("cuda", 0)

    with pytest.raises(RuntimeError, match="weight are on cuda:0.*interpreter"):
        backend.check_runnable(FakeCuda(), "weight")


# ------------------------------------------------------- 7. densified sparse gradients
def _sparse(ids, values, shape):
    return torch.sparse_coo_tensor(torch.tensor([ids]), values, shape).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_densified_gradient_sums_duplicates_in_a_fixed_order(dtype):
    """Each present row is the sum of its entries in sparse-tensor order, accumulated in
    float32 (float64 for float64) and rounded once: bitwise the sequential sum computed here,
    the same bits on every call (no atomics)."""
    gen = torch.Generator().manual_seed(7)
    ids = [5, 1, 5, 0, 5, 1, 9]
    values = torch.randn(len(ids), 33, generator=gen).to(dtype)
    grad = _sparse(ids, values, (11, 33))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    expected = torch.zeros(11, 33, dtype=acc)
    for row in sorted(set(ids)):
        total = None
        for i, r in enumerate(ids):
            if r == row:
                x = values[i].to(acc)
                total = x if total is None else total + x
        expected[row] = total
    first = L.dense_grad(grad)
    assert first.dtype == dtype and first.layout == torch.strided
    assert torch.equal(first.cpu(), expected.to(dtype))
    for _ in range(3):
        assert torch.equal(L.dense_grad(grad), first)


def test_densified_gradient_skips_out_of_range_ids():
    grad = _sparse([2, -1, 7], torch.ones(3, 4), (4, 4))
    dense = L.dense_grad(grad).cpu()
    assert torch.equal(dense, torch.tensor([[0.0] * 4, [0.0] * 4, [1.0] * 4, [0.0] * 4]))


def test_interpreting_flag_matches_the_mode():
    assert C.interpreting() is (not CUDA_MODE)
