"""The lazy sparse-row Adam kernel (kernels/lazy.py) against the float64 reference
(``reference.lazy_adam_step``), on params and on every accumulator, under the interpreter.

Every run starts from random (not zero) moments and pows part-way through training, so each
term of the update matters from the first step; gradients are uncoalesced COO tensors with
unsorted, duplicated row ids; a set of rows is never present and holds sentinel values in
every accumulator. After **every** step the rows absent from that step's gradient are compared
bitwise with their values before the step (param, master and every accumulator), and so is
storage just past the table.

Tolerances, by dtype:
* float64: kernel and reference evaluate the same real formula in two algebraic forms (GPU vs
  CPU form of Paddle's kernel) and sum duplicates in different orders; a few float64 ulps per
  step on O(1) values, so 1e-12 is far above rounding and far below any mistake in the math.
* float32 (also the fp32 master and moments of fp16/bf16 params): params and moments are
  stored in float32 after every step (relative rounding 6e-8), duplicate rows are summed in
  float32 (a few ulps of the largest addend), and the update divides by sqrt(v) + eps, which
  amplifies relative errors by a few units; over 3 steps that stays within ~1e-6 relative of
  the float64 reference, so 1e-5 relative plus 1e-6 absolute (for values that cross zero)
  leaves a 10x margin while a wrong term (a missed duplicate, a pow off by one step: >1e-3
  relative) fails by orders of magnitude.
* fp16/bf16 params with master weights: the param must be bitwise the master rounded to
  nearest; the master and the moments follow the float32 tolerance.
* fp16/bf16 params without master weights: each step computes from the rounded param, so the
  reference restarts from it each step; the param may differ from the rounded float64 result
  by one ulp of its dtype (a float32 result next to a rounding boundary).
In CUDA mode (``tests/devices.py``) the float tolerances are at least the FMA bound
``devices.FMA_FLOOR``; the bitwise checks (absent rows, param = master rounded) stay bitwise.
"""

from __future__ import annotations

import time

import pytest
import torch

from devices import DEVICE, fma_tol, kernel_ops, synchronize
from triton_adam import reference
from triton_adam.kernels import adam as K
from triton_adam.kernels import lazy as L
from test_kernel_adam import MODES  # (amsgrad, l2, l1, decoupled wd, lr_scale)


F32_TOL = fma_tol(torch.float32, rtol=1e-5, atol=1e-6)
TOL = {torch.float64: fma_tol(torch.float64, rtol=1e-12, atol=1e-12), torch.float32: F32_TOL,
       torch.float16: F32_TOL, torch.bfloat16: F32_TOL}
# One ulp relative, for half params without master weights (see the module docstring).
HALF_ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}

# 1; odd; not a multiple of its column block (100 -> 128); wider than the widest block
# (1041 -> two blocks, the second one masked).
WIDTHS = [1, 17, 100, L.MAX_BLOCK_W + 17]
BETA1, BETA2, EPS = 0.85, 0.995, 1e-6
LRS = [0.01, 0.003, 0.02, 0.007]  # a different learning rate every step: no recompilation
# Sentinels of the rows that never appear in a gradient (finite: an update would move them).
# (The master keeps the param's values: the param must stay the master rounded.)
SENTINEL_M, SENTINEL_V, SENTINEL_VMAX = 777.0, 555.0, 999.0


def make_hyper(*, lr_scale=1.0, beta1=BETA1, beta2=BETA2, eps=EPS, l2=0.0, l1=0.0, wd=0.0,
               dtype=torch.float32) -> torch.Tensor:
    """A hyper-parameter row in kernels/adam.py's layout (its HYPER_* columns, whatever the
    width); columns this kernel does not use keep their neutral value."""
    hyper = torch.zeros(K.HYPER_WIDTH, dtype=dtype)
    for name, value in [("LR_SCALE", lr_scale), ("BETA1", beta1), ("BETA2", beta2),
                        ("EPS", eps), ("L2", l2), ("L1", l1), ("WD", wd),
                        ("CLIP_MIN", -float("inf")), ("CLIP_MAX", float("inf"))]:
        if hasattr(K, f"HYPER_{name}"):
            hyper[getattr(K, f"HYPER_{name}")] = value
    return hyper.to(DEVICE)


def sparse_grad(ids: torch.Tensor, values: torch.Tensor, shape, *, check: bool = True):
    """An uncoalesced COO gradient, as Embedding(sparse=True) makes (ids in given order), on
    DEVICE."""
    return torch.sparse_coo_tensor(ids.reshape(1, -1).to(DEVICE), values.to(DEVICE), shape,
                                   check_invariants=check)


def random_ids(n_rows: int, nnz: int, never: set[int]) -> torch.Tensor:
    """``nnz`` unsorted ids with duplicates, avoiding the ``never`` rows."""
    pool = torch.tensor([r for r in range(n_rows) if r not in never])
    ids = pool[torch.randint(0, len(pool), (nnz - 3,))]
    ids = torch.cat([ids, ids[:3]])[torch.randperm(nnz)]  # at least 3 duplicates
    assert len(set(ids.tolist())) < nnz and not torch.equal(ids, ids.sort().values)
    return ids


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: dict, what: str):
    """Compare with a tolerance; on failure name the first mismatching index."""
    a = actual.cpu().to(torch.float64).reshape(-1)
    e = expected.cpu().to(torch.float64).reshape(-1)
    bad = (a - e).abs() > tol["atol"] + tol["rtol"] * e.abs()
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise AssertionError(f"{what}: {int(bad.sum())} mismatches, first at flat index {i}: "
                             f"{a[i].item()!r} vs reference {e[i].item()!r}")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that comparisons are exact (NaN payloads, -0.0 included)."""
    return t.contiguous().view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_rows_unchanged(before: dict, after: dict, rows: torch.Tensor, what: str):
    for name, old in before.items():
        if old is None:
            continue
        new = after[name]
        if not torch.equal(bits(old[rows]), bits(new[rows])):
            raise AssertionError(f"{what}: {name} changed on rows absent from the gradient")


class Table:
    """A parameter table, its kernel state and its float64 reference state."""

    def __init__(self, n_rows: int, row_shape: tuple, dtype: torch.dtype, *, amsgrad: bool,
                 master: bool, never: set[int]):
        shape = (n_rows,) + tuple(row_shape)
        numel = n_rows * int(torch.tensor(row_shape).prod()) if row_shape else n_rows
        cdtype = K.compute_dtype_for(dtype)
        # Drawn on the CPU (the same values on every device), then moved to DEVICE.
        # The param is a prefix of a larger buffer whose tail must never be written.
        self.storage = torch.randn(numel + 64, dtype=torch.float64).to(dtype).to(DEVICE)
        self.param = self.storage[:numel].view(shape)
        self.tail = self.storage[numel:].clone()
        self.master = self.param.to(torch.float32) if master else None
        m = torch.randn(shape, dtype=torch.float64).mul_(0.1).to(cdtype)
        v = torch.rand(shape, dtype=torch.float64).mul_(0.01).add_(1e-4).to(cdtype)
        vmax = (v + torch.rand(shape, dtype=torch.float64).mul_(0.001).to(cdtype)
                if amsgrad else None)
        rows = torch.tensor(sorted(never), dtype=torch.int64)
        m[rows], v[rows] = SENTINEL_M, SENTINEL_V
        if vmax is not None:
            vmax[rows] = SENTINEL_VMAX
        self.m, self.v = m.to(DEVICE), v.to(DEVICE)
        self.vmax = None if vmax is None else vmax.to(DEVICE)
        # Pows part-way through training (t = 4): bias correction matters.
        pows = torch.full((2, K.POW_SLOT_WIDTH), float("nan"), dtype=cdtype)
        pows[0, 0], pows[0, 1] = BETA1**4, BETA2**4
        self.pows = pows.to(DEVICE)
        self.slot = 0
        start = self.master if master else self.param

        def f64(x):  # a CPU copy (also of CPU float64 buffers, which the kernel updates)
            return x.to("cpu", torch.float64, copy=True)

        self.ref = reference.AdamTensorState(
            param=f64(start), moment1=f64(self.m), moment2=f64(self.v),
            moment2_max=None if self.vmax is None else f64(self.vmax),
            beta1_pow=float(pows[0, 0]), beta2_pow=float(pows[0, 1]))

    def buffers(self) -> dict:
        return dict(param=self.param, master=self.master, m=self.m, v=self.v, vmax=self.vmax)

    def snapshot(self) -> dict:
        return {k: None if t is None else t.clone() for k, t in self.buffers().items()}

    def step(self, grad, hyper, lr, *, coupled: bool, decoupled: bool) -> bool:
        pows_in, pows_out = self.pows[self.slot], self.pows[1 - self.slot]
        pows_out.fill_(float("nan"))  # written, never read: poison it
        launched = L.sparse_adam_update_(
            self.param, grad, self.m, self.v, self.vmax, hyper, pows_in, pows_out, lr=lr,
            coupled_decay=coupled, decoupled_decay=decoupled, master=self.master)
        if launched:
            self.slot = 1 - self.slot
        return launched


def run_and_check(dtype, mode, row_shape, *, n_rows=24, nnz=12, steps=3, master=False,
                  grad_dtype=None):
    """Several lazy steps on a table; every step checked against the reference."""
    amsgrad, l2, l1, wd, lr_scale = MODES[mode]
    cdtype = K.compute_dtype_for(dtype)
    never = {0, 7, n_rows - 1}
    t = Table(n_rows, row_shape, dtype, amsgrad=amsgrad, master=master, never=never)
    hyper = make_hyper(lr_scale=lr_scale, l2=l2, l1=l1, wd=wd, dtype=cdtype)
    half_no_master = dtype in HALF_ULP and not master
    for step in range(steps):
        ids = random_ids(n_rows, nnz, never)
        values = (torch.randn((nnz,) + tuple(row_shape), dtype=torch.float64)
                  * (0.1 + step)).to(grad_dtype or dtype)
        before = t.snapshot()
        if half_no_master:  # each step computes from the rounded param
            t.ref.param = t.param.to("cpu", torch.float64, copy=True)
        assert t.step(sparse_grad(ids, values, t.param.shape), hyper, LRS[step],
                      coupled=bool(l1 or l2), decoupled=bool(wd))
        t.ref = reference.lazy_adam_step(t.ref, ids, values, lr=LRS[step], beta1=BETA1,
                                         beta2=BETA2, epsilon=EPS, lr_scale=lr_scale, l2=l2,
                                         l1=l1, weight_decay=wd)
        what = f"step {step}"
        absent = torch.tensor([r for r in range(n_rows) if r not in set(ids.tolist())])
        assert_rows_unchanged(before, t.buffers(), absent, what)
        assert torch.equal(bits(t.storage[t.param.numel():]), bits(t.tail)), \
            f"{what}: wrote past the end of the table"
        tol = TOL[dtype]
        if master:
            assert_close(t.master, t.ref.param, tol, f"{what}: master")
            assert torch.equal(bits(t.param), bits(t.master.to(dtype))), \
                f"{what}: param is not the master rounded to {dtype}"
        elif half_no_master:
            assert_close(t.param, t.ref.param, dict(rtol=HALF_ULP[dtype], atol=1e-6),
                         f"{what}: param")
        else:
            assert_close(t.param, t.ref.param, tol, f"{what}: param")
        assert_close(t.m, t.ref.moment1, tol, f"{what}: moment1")
        assert_close(t.v, t.ref.moment2, tol, f"{what}: moment2")
        if amsgrad:
            assert_close(t.vmax, t.ref.moment2_max, tol, f"{what}: moment2_max")
        pows = t.pows[t.slot, :2]
        assert_close(pows, torch.tensor([t.ref.beta1_pow, t.ref.beta2_pow],
                                        dtype=torch.float64), tol,
                     f"{what}: pows")
        # The pows advanced exactly once: this step's out = in * beta, computed in cdtype.
        pows_in = t.pows[1 - t.slot, :2]
        betas = hyper[[K.HYPER_BETA1, K.HYPER_BETA2]]
        assert torch.equal(pows, pows_in * betas), f"{what}: pows {pows} from {pows_in}"
    # The sentinel rows were absent every step: still bitwise the sentinels.
    rows = torch.tensor(sorted(never))
    assert (t.m[rows] == SENTINEL_M).all() and (t.v[rows] == SENTINEL_V).all()
    return t


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_lazy_kernel_matches_reference(dtype, width, mode):
    run_and_check(dtype, mode, (width,))


@pytest.mark.parametrize("grad_dtype, mode", [
    ("param", "adam"), ("param", "adamw-amsgrad-l2"), ("fp32", "amsgrad"), ("fp32", "l1")])
@pytest.mark.parametrize("width", [17, L.MAX_BLOCK_W + 17])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lazy_kernel_half_params_with_master_weights(dtype, width, grad_dtype, mode):
    run_and_check(dtype, mode, (width,), master=True,
                  grad_dtype=torch.float32 if grad_dtype == "fp32" else dtype)


@pytest.mark.parametrize("mode", ["adam", "adamw-amsgrad-l2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lazy_kernel_half_params_without_master_weights(dtype, mode):
    run_and_check(dtype, mode, (17,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_multi_dimensional_rows_and_one_dimensional_params(dtype):
    """[n, 3, 5] rows are flattened to width 15; a 1-D param has rows of one element."""
    run_and_check(dtype, "adamw-amsgrad-l2", (3, 5))
    run_and_check(dtype, "l1", ())


def test_embedding_sparse_gradient_from_autograd():
    """The real thing: Embedding(sparse=True)'s .grad (uncoalesced, repeated tokens)."""
    emb = torch.nn.Embedding(50, 24, sparse=True).to(DEVICE)
    tokens = torch.tensor([[3, 9, 3, 41], [9, 9, 0, 17]], device=DEVICE)
    (emb(tokens) * torch.randn(2, 4, 24).to(DEVICE)).sum().backward()
    grad = emb.weight.grad
    assert grad.layout == torch.sparse_coo and not grad.is_coalesced()
    param = emb.weight.detach()
    before = param.clone()
    ref = reference.init_state(param.cpu(), beta1=0.9, beta2=0.999, amsgrad=False)
    m, v = torch.zeros_like(param), torch.zeros_like(param)
    hyper = make_hyper(beta1=0.9, beta2=0.999, eps=1e-8)
    pows = torch.tensor([[0.9, 0.999, 0, 0], [0, 0, 0, 0]], device=DEVICE)
    assert L.sparse_adam_update_(param, grad, m, v, None, hyper, pows[0], pows[1], lr=0.01,
                                 coupled_decay=False, decoupled_decay=False)
    ref = reference.lazy_adam_step(ref, grad._indices().cpu(), grad._values().cpu(), lr=0.01,
                                   beta1=0.9, beta2=0.999, epsilon=1e-8)
    assert_close(param, ref.param, F32_TOL, "param")
    assert_close(m, ref.moment1, F32_TOL, "moment1")
    moved = (param != before).any(1).nonzero().flatten().tolist()
    assert moved == [0, 3, 9, 17, 41]


def test_pows_advance_once_with_many_duplicates_and_programs():
    """40 entries on 3 rows with 2 column blocks: 80 programs, one pow advance per step."""
    n_rows, width, nnz = 8, L.MAX_BLOCK_W + 5, 40
    t = Table(n_rows, (width,), torch.float32, amsgrad=False, master=False, never={0})
    hyper = make_hyper()
    start = t.pows[0, :2].to("cpu", copy=True)
    for step in range(3):
        ids = torch.tensor([2, 5, 6])[torch.randint(0, 3, (nnz,))]
        values = torch.randn(nnz, width)
        t.ref = reference.lazy_adam_step(t.ref, ids, values, lr=0.01, beta1=BETA1, beta2=BETA2,
                                         epsilon=EPS)
        pows_in = t.pows[t.slot, :2].clone()
        assert t.step(sparse_grad(ids, values, (n_rows, width)), hyper, 0.01,
                      coupled=False, decoupled=False)
        assert torch.equal(t.pows[1 - t.slot, :2], pows_in), "pows_in was written"
        betas = hyper[[K.HYPER_BETA1, K.HYPER_BETA2]]
        assert torch.equal(t.pows[t.slot, :2], pows_in * betas)
    expected = start.double() * torch.tensor([BETA1, BETA2], dtype=torch.float64) ** 3
    assert_close(t.pows[t.slot, :2], expected, F32_TOL, "pows after 3 steps")
    assert_close(t.param, t.ref.param, F32_TOL, "param")
    assert_close(t.m, t.ref.moment1, F32_TOL, "moment1")


@pytest.mark.parametrize("amsgrad", [False, True])
def test_empty_sparse_gradient_changes_nothing(amsgrad):
    t = Table(10, (6,), torch.float32, amsgrad=amsgrad, master=False, never=set())
    before = t.snapshot()
    pows = t.pows.clone()
    hyper = make_hyper(l2=0.1, l1=0.1, wd=0.1)
    empty = sparse_grad(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 6), (10, 6))
    assert not t.step(empty, hyper, 0.1, coupled=True, decoupled=True)
    pows[1 - t.slot].fill_(float("nan"))  # the launcher's caller poisoned pows_out
    assert t.slot == 0
    assert torch.equal(bits(t.pows), bits(pows)), "pows changed"
    assert_rows_unchanged(before, t.buffers(), torch.arange(10), "empty gradient")
    ref = reference.lazy_adam_step(t.ref, torch.zeros(1, 0, dtype=torch.int64),
                                   torch.zeros(0, 6), lr=0.1, beta1=BETA1, beta2=BETA2,
                                   epsilon=EPS)
    assert torch.equal(ref.param, t.ref.param) and ref.beta1_pow == t.ref.beta1_pow


def test_duplicates_are_summed_in_sparse_tensor_order():
    """The documented fixed order: the stable sort keeps duplicates in the order of the
    sparse tensor, and the float32 sum runs in that order. With beta1 = 0 the new moment1 is
    the summed gradient itself, and 1e8 + 1 - 1e8 is 0 in that order (1 in most others)."""
    ids = torch.tensor([5, 2, 5, 5, 2])
    values = torch.tensor([[1e8], [3.0], [1.0], [-1e8], [4.0]])
    param, m, v = (torch.zeros(8, 1, device=DEVICE) for _ in range(3))
    hyper = make_hyper(beta1=0.0, beta2=0.999, eps=1e-8)
    pows = torch.tensor([[0.0, 0.999, 0, 0], [0, 0, 0, 0]], device=DEVICE)
    L.sparse_adam_update_(param, sparse_grad(ids, values, (8, 1)), m, v, None, hyper, pows[0],
                          pows[1], lr=0.1, coupled_decay=False, decoupled_decay=False)
    in_order = {5: (values[0] + values[2]) + values[3], 2: values[1] + values[4]}
    assert in_order[5].item() == 0.0  # the test's premise: order matters for row 5
    assert m[5].item() == in_order[5].item() and m[2].item() == in_order[2].item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("mode", ["adam", "adamw-amsgrad-l2"])
def test_dense_equivalent_is_lazy_mode_false(dtype, mode):
    """lazy_mode=False: ``dense_grad`` (= to_dense) + the dense kernel, every row moves."""
    amsgrad, l2, l1, wd, lr_scale = MODES[mode]
    n_rows, width, nnz = 12, 17, 9
    t = Table(n_rows, (width,), dtype, amsgrad=amsgrad, master=False, never={0})
    hyper = make_hyper(lr_scale=lr_scale, l2=l2, l1=l1, wd=wd, dtype=dtype)
    for step in range(3):
        ids = random_ids(n_rows, nnz, {0})
        values = torch.randn(nnz, width, dtype=dtype)
        dense = L.dense_grad(sparse_grad(ids, values, (n_rows, width)))
        assert dense.layout == torch.strided and dense.shape == (n_rows, width)
        K.adam_update_(t.param, dense, t.m, t.v, t.vmax, hyper, t.pows[t.slot],
                       t.pows[1 - t.slot], lr=LRS[step], coupled_decay=bool(l1 or l2),
                       decoupled_decay=bool(wd))
        t.slot = 1 - t.slot
        t.ref = reference.sparse_dense_adam_step(t.ref, ids, values, lr=LRS[step], beta1=BETA1,
                                                 beta2=BETA2, epsilon=EPS, lr_scale=lr_scale,
                                                 l2=l2, l1=l1, weight_decay=wd)
    tol = TOL[dtype]
    assert_close(t.param, t.ref.param, tol, "param")
    assert_close(t.m, t.ref.moment1, tol, "moment1")
    assert_close(t.v, t.ref.moment2, tol, "moment2")
    # Unlike the lazy step, absent rows moved (row 0 was never in the gradient).
    assert (t.m[0] != SENTINEL_M).all()


def test_out_of_range_ids_are_skipped_not_written():
    """Ids outside the table (not validated by torch unless asked) touch nothing."""
    n_rows, width = 6, 17
    t = Table(n_rows, (width,), torch.float32, amsgrad=True, master=False, never=set())
    before = t.snapshot()
    ids = torch.tensor([n_rows, 2, n_rows + 100, 2])
    values = torch.randn(4, width)
    hyper = make_hyper()
    t.step(sparse_grad(ids, values, (n_rows, width), check=False), hyper, 0.01,
           coupled=False, decoupled=False)
    t.ref = reference.lazy_adam_step(t.ref, ids[ids < n_rows], values[ids < n_rows], lr=0.01,
                                     beta1=BETA1, beta2=BETA2, epsilon=EPS)
    assert_rows_unchanged(before, t.buffers(), torch.tensor([0, 1, 3, 4, 5]), "other rows")
    assert torch.equal(bits(t.storage[t.param.numel():]), bits(t.tail)), "wrote past the end"
    assert_close(t.param, t.ref.param, F32_TOL, "param")


def test_launch_makes_no_host_sync_and_one_sort():
    """On a GPU this path must not wait for the device: count syncs and launches."""
    from counters import DeviceOps, TritonLaunches

    t = Table(40, (8,), torch.float32, amsgrad=True, master=False, never=set())
    ids = random_ids(40, 12, set())
    grad = sparse_grad(ids, torch.randn(12, 8), (40, 8))
    hyper = make_hyper(l2=0.01, wd=0.01)
    with TritonLaunches(execute=False) as launches, DeviceOps() as ops:
        L.sparse_adam_update_(t.param, grad, t.m, t.v, t.vmax, hyper, t.pows[0], t.pows[1],
                              lr=0.01, coupled_decay=True, decoupled_decay=True)
    assert ops.syncs == 0, ops.ops
    assert launches.count == 1
    # Sparse-tensor metadata queries dispatch as aten ops but read host fields: no kernel.
    kernels = {k: n for k, n in kernel_ops(ops.ops).items()
               if k not in ("sparse_dim", "dense_dim", "_nnz")}
    assert kernels == {"sort": 1}, ops.ops  # the device sort, nothing else


def test_cost_is_proportional_to_rows_present_not_table_size():
    """The same 10-row update on a 1,000-row and a 1,000,000-row table (width 4).

    The interpreter runs one Python iteration per program and the grid is nnz x column
    blocks, so a correct kernel costs the same on both tables; one that touched every row
    (or copied the table) would be about 1000x slower on the big one (1e6 rows at ~1 us per
    element is seconds, against milliseconds). A ratio below 3 leaves ample room for timer
    noise on launches of a few milliseconds while catching any table-proportional term.
    """
    width, nnz = 4, 10
    hyper = make_hyper()
    times = {}
    for n_rows in (1_000, 1_000_000):
        param = torch.randn(n_rows, width, device=DEVICE)
        m, v = torch.zeros_like(param), torch.zeros_like(param)
        pows = torch.tensor([[BETA1, BETA2, 0, 0], [0, 0, 0, 0]], device=DEVICE)
        ids = torch.randint(0, n_rows, (nnz,))
        grad = sparse_grad(ids, torch.randn(nnz, width), (n_rows, width))
        samples = []
        for _ in range(4):  # the first is the warm-up
            synchronize()
            start = time.perf_counter()
            L.sparse_adam_update_(param, grad, m, v, None, hyper, pows[0], pows[1], lr=0.01,
                                  coupled_decay=False, decoupled_decay=False)
            synchronize()
            samples.append(time.perf_counter() - start)
        times[n_rows] = min(samples[1:])
    ratio = times[1_000_000] / times[1_000]
    print(f"\nlazy launch, 10 rows of width 4: 1e3-row table {times[1_000] * 1e3:.2f} ms, "
          f"1e6-row table {times[1_000_000] * 1e3:.2f} ms, ratio {ratio:.2f}")
    assert ratio < 3


def _args(**over):
    n, w = 6, 4
    args = dict(param=torch.randn(n, w, device=DEVICE),
                grad=sparse_grad(torch.tensor([1, 3]), torch.randn(2, w), (n, w)),
                exp_avg=torch.zeros(n, w, device=DEVICE),
                exp_avg_sq=torch.zeros(n, w, device=DEVICE), max_exp_avg_sq=None,
                hyper=make_hyper(beta1=0.9, beta2=0.999, eps=1e-8))
    pows = torch.tensor([[0.9, 0.999, 0, 0], [0, 0, 0, 0]], device=DEVICE)
    args.update(pows_in=pows[0], pows_out=pows[1])
    args.update(over)
    return args


@pytest.mark.parametrize("bad, message", [
    (lambda a: a.update(grad=a["grad"].to_dense()), "layout"),
    (lambda a: a.update(grad=torch.sparse_coo_tensor(torch.tensor([[1], [2]]),
                                                     torch.ones(1), (6, 4),
                                                     check_invariants=True).to(DEVICE)),
     "2 sparse dimensions"),
    (lambda a: a.update(grad=sparse_grad(torch.tensor([1]), torch.ones(1, 4).double(), (6, 4))),
     "values dtype"),
    (lambda a: a.update(grad=sparse_grad(torch.tensor([1]), torch.ones(1, 5), (6, 5))),
     "grad shape"),
    (lambda a: a.update(exp_avg=torch.zeros(6, 8, device=DEVICE)[:, :4]),
     "exp_avg is not contiguous"),
    (lambda a: a.update(exp_avg_sq=torch.zeros(7, 4, device=DEVICE)),
     "exp_avg_sq has 28 elements"),
    (lambda a: a.update(max_exp_avg_sq=torch.zeros(6, 4, device=DEVICE).double()),
     "max_exp_avg_sq dtype"),
    (lambda a: a.update(pows_out=a["pows_in"]), "must differ"),
    (lambda a: a.update(master=torch.zeros(6, 4, device=DEVICE)), "master weights are for"),
    (lambda a: a.update(param=a["param"].half(),
                        master=torch.zeros(6, 4, device=DEVICE).double()),
     "master dtype"),
    (lambda a: a.update(param=a["param"].int()), "param dtype"),
])
def test_launcher_rejects_bad_arguments_without_writing(bad, message):
    args = _args()
    bad(args)
    before = args["param"].clone()
    with pytest.raises(ValueError, match=message):
        L.sparse_adam_update_(**args, lr=0.1, coupled_decay=False, decoupled_decay=False)
    assert torch.equal(args["param"], before)
