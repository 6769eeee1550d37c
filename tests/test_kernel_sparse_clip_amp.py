"""Clipping and AMP with sparse gradients, kernel side (kernels/lazy.py), against float64
references, under the interpreter (or compiled, in CUDA mode: ``tests/devices.py``).

Definitions under test (Paddle's, where Paddle defines them: it merges a SelectedRows
gradient's duplicate rows before it clips, ``merge_selected_rows`` in ``paddle.nn.clip``, and
its SelectedRows clip kernel merges before clamping):

* **The norm of a sparse gradient** counts each row once, after its duplicates are summed:
  ``sum over distinct ids r in [0, n_rows) of ||sum of the entries of row r||^2`` (ids
  outside the table are skipped, as the update skips them). ``sparse_sum_squares_`` writes
  per-program partial sums of it, which the finalize of ``kernels/norm.py`` reduces.
* **The update** (``sparse_adam_update_``) transforms each present row's summed gradient as
  the dense kernels transform a gradient: ``/ grad_scale`` (AMP), ``* clip_scale`` (norm
  clip), clamped to the hyper row's clip bounds (``ClipGradByValue``), then the decay terms
  and Adam. With ``found_inf`` set nothing changes and the pows are copied to ``pows_out``.

The float64 references are written here (``triton_adam/reference.py`` has the unclipped
``lazy_adam_step`` and ``merge_sparse_rows``): the transform applies to the merged float64
rows, which then take ``reference.lazy_adam_step`` (a row whose ids are distinct is its own
sum). Tolerances are those of ``tests/test_kernel_lazy.py`` (its module docstring); loss
scales are powers of two, as GradScaler's, so unscaling is exact in every dtype (the kernels
compute ``1 / grad_scale`` in float32, as the dense kernels do).
"""

from __future__ import annotations


import pytest
import torch

from devices import DEVICE, fma_tol, import_paddle, kernel_ops, needs_paddle
from triton_adam import reference
from triton_adam.kernels import adam as K
from triton_adam.kernels import lazy as L
from triton_adam.kernels import norm as N
from test_kernel_adam import MODES  # (amsgrad, l2, l1, decoupled wd, lr_scale)
from test_kernel_lazy import (BETA1, BETA2, EPS, LRS, TOL, Table, assert_close,
                              assert_rows_unchanged, bits, make_hyper, random_ids, sparse_grad)


CLIP_MIN, CLIP_MAX = -0.5, 0.7
GRAD_SCALE = 512.0  # a power of two, as GradScaler's
CLIP_SCALE = 0.37
# Sums of squares: float32 squares of float32 sums of a few duplicates, accumulated per lane
# in a fixed order; relative error ~1e-7 (float32) and ~1e-16 (float64).
SUMSQ_TOL = {torch.float32: fma_tol(torch.float32, rtol=1e-5, atol=1e-6),
             torch.float64: fma_tol(torch.float64, rtol=1e-12, atol=1e-12)}

TRANSFORMS = {  # name -> (unscale, clip scale, clip value)
    "unscale": (True, False, False),
    "clip-scale": (False, True, False),
    "clip-value": (False, False, True),
    "all": (True, True, True),
}


def transformed_rows(ids, values, n_rows, *, unscale=False, clip_scale=None, clip_value=False):
    """The float64 reference of what the update sees: ``(rows, grad_rows)``, the distinct
    in-range ids and their summed gradients, unscaled, scaled and clamped in that order."""
    ids = ids.reshape(-1)
    keep = (ids >= 0) & (ids < n_rows)
    rows, g = reference.merge_sparse_rows(ids[keep], values[keep])
    if unscale:
        g = g / GRAD_SCALE
    if clip_scale is not None:
        g = g * clip_scale
    if clip_value:
        g = g.clamp(CLIP_MIN, CLIP_MAX)
    return rows, g


def reference_sum_squares(ids, values, n_rows) -> float:
    """The float64 sum of squares of a sparse gradient: each in-range row once, after its
    duplicates are summed."""
    _, g = transformed_rows(ids, values, n_rows)
    return float((g * g).sum())


def clipped_step(t: Table, grad, hyper, lr, *, coupled, decoupled, clip_scale=None,
                 clip_value=False, grad_scale=None, found_inf=None) -> bool:
    pows_in, pows_out = t.pows[t.slot], t.pows[1 - t.slot]
    pows_out.fill_(float("nan"))  # written, never read: poison it
    launched = L.sparse_adam_update_(
        t.param, grad, t.m, t.v, t.vmax, hyper, pows_in, pows_out, lr=lr, coupled_decay=coupled,
        decoupled_decay=decoupled, master=t.master, clip_scale=clip_scale,
        clip_value=clip_value, grad_scale=grad_scale, found_inf=found_inf)
    if launched:
        t.slot = 1 - t.slot
    return launched


def hyper_with_clip(cdtype, **kw):
    hyper = make_hyper(dtype=cdtype, **kw)
    hyper[K.HYPER_CLIP_MIN], hyper[K.HYPER_CLIP_MAX] = CLIP_MIN, CLIP_MAX
    return hyper


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("mode", ["adam", "adamw-amsgrad-l2"])
@pytest.mark.parametrize("width", [1, 17, L.MAX_BLOCK_W + 17])
@pytest.mark.parametrize("dtype, master", [(torch.float32, False), (torch.float64, False),
                                           (torch.bfloat16, True)],
                         ids=["fp32", "fp64", "bf16-master"])
def test_clip_and_amp_match_reference(dtype, master, width, mode, transform):
    """Three steps with duplicates large enough that clamping the summed row differs from
    clamping each entry; every buffer against the float64 reference after every step."""
    unscale, use_scale, clip_value = TRANSFORMS[transform]
    amsgrad, l2, l1, wd, lr_scale = MODES[mode]
    cdtype = K.compute_dtype_for(dtype)
    n_rows, nnz = 24, 14
    never = {0, 7, n_rows - 1}
    t = Table(n_rows, (width,), dtype, amsgrad=amsgrad, master=master, never=never)
    hyper = hyper_with_clip(cdtype, lr_scale=lr_scale, l2=l2, l1=l1, wd=wd)
    # The norm's scale is in the accumulation dtype: float32 for float32 and bf16 gradients.
    clip_scale = torch.tensor([CLIP_SCALE], dtype=cdtype, device=DEVICE) if use_scale else None
    grad_scale = (torch.tensor([GRAD_SCALE], dtype=torch.float32, device=DEVICE) if unscale
                  else None)
    found_inf = torch.zeros(1, dtype=torch.float32, device=DEVICE) if unscale else None
    for step in range(3):
        ids = random_ids(n_rows, nnz, never)
        raw = torch.randn((nnz, width), dtype=torch.float64) * 0.6 * (1 + step)
        values = (raw * (GRAD_SCALE if unscale else 1.0)).to(dtype)
        before = t.snapshot()
        assert clipped_step(t, sparse_grad(ids, values, t.param.shape), hyper, LRS[step],
                            coupled=bool(l1 or l2), decoupled=bool(wd),
                            clip_scale=clip_scale, clip_value=clip_value,
                            grad_scale=grad_scale, found_inf=found_inf)
        rows, g = transformed_rows(ids, values, n_rows, unscale=unscale,
                                   clip_scale=CLIP_SCALE if use_scale else None,
                                   clip_value=clip_value)
        if transform == "clip-value":
            # The premise: clamping each entry before the duplicates are summed would differ.
            per_entry = values.double().clamp(CLIP_MIN, CLIP_MAX)
            _, g_entries = transformed_rows(ids, per_entry, n_rows)
            assert not torch.allclose(g, g_entries)
        t.ref = reference.lazy_adam_step(t.ref, rows, g, lr=LRS[step], beta1=BETA1,
                                         beta2=BETA2, epsilon=EPS, lr_scale=lr_scale, l2=l2,
                                         l1=l1, weight_decay=wd)
        what = f"step {step}"
        absent = torch.tensor([r for r in range(n_rows) if r not in set(ids.tolist())])
        assert_rows_unchanged(before, t.buffers(), absent, what)
        tol = TOL[dtype]
        if master:
            assert_close(t.master, t.ref.param, tol, f"{what}: master")
            assert torch.equal(bits(t.param), bits(t.master.to(dtype))), what
        else:
            assert_close(t.param, t.ref.param, tol, f"{what}: param")
        assert_close(t.m, t.ref.moment1, tol, f"{what}: moment1")
        assert_close(t.v, t.ref.moment2, tol, f"{what}: moment2")
        if amsgrad:
            assert_close(t.vmax, t.ref.moment2_max, tol, f"{what}: moment2_max")
        pows_in = t.pows[1 - t.slot, :2]
        betas = hyper[[K.HYPER_BETA1, K.HYPER_BETA2]]
        assert torch.equal(t.pows[t.slot, :2], pows_in * betas), f"{what}: pows"


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("dtype, master", [(torch.float32, False), (torch.float64, False),
                                           (torch.bfloat16, True), (torch.float16, True)],
                         ids=["fp32", "fp64", "bf16-master", "fp16-master"])
def test_found_inf_changes_nothing_and_copies_the_pows(dtype, master, amsgrad):
    """An overflowing step (inf and NaN in the gradient, found_inf set): the whole table,
    master and every accumulator bitwise unchanged, pows_in untouched, pows_out its copy,
    and the launcher reports a launch (the caller flips its pow slots blindly). The next
    step, found_inf clear, is bitwise the step without AMP inputs."""
    n_rows, width = 12, 17
    cdtype = K.compute_dtype_for(dtype)
    t = Table(n_rows, (width,), dtype, amsgrad=amsgrad, master=master, never=set())
    twin = Table(n_rows, (width,), dtype, amsgrad=amsgrad, master=master, never=set())
    for name, buf in t.buffers().items():  # the same start (Table draws random values)
        if buf is not None:
            buf.copy_(twin.buffers()[name])
    t.pows.copy_(twin.pows)
    hyper = hyper_with_clip(cdtype, l2=0.01, wd=0.02)
    ids = torch.tensor([3, 5, 3, 11, 0, 5])
    values = torch.randn(6, width).to(dtype)
    values[1, 2], values[4, 0] = float("inf"), float("nan")
    before = t.snapshot()
    pows_before = t.pows.clone()
    found_inf = torch.ones(1, dtype=torch.float32, device=DEVICE)
    grad_scale = torch.tensor([GRAD_SCALE], dtype=torch.float32, device=DEVICE)
    clip_scale = torch.tensor([0.5], dtype=cdtype, device=DEVICE)
    assert clipped_step(t, sparse_grad(ids, values, (n_rows, width)), hyper, 0.01,
                        coupled=True, decoupled=True, clip_scale=clip_scale, clip_value=True,
                        grad_scale=grad_scale, found_inf=found_inf)
    assert_rows_unchanged(before, t.buffers(), torch.arange(n_rows), "skipped step")
    assert torch.equal(bits(t.pows[1 - t.slot]), bits(pows_before[0])), "pows_in written"
    assert torch.equal(bits(t.pows[t.slot, :2]), bits(pows_before[0, :2])), \
        "pows_out is not a copy of pows_in"

    # found_inf clear: the same bits as a launch without AMP inputs (unscaling by 1).
    found_inf.zero_()
    t.slot = 0
    t.pows.copy_(pows_before)
    ids = torch.tensor([3, 5, 3, 11, 0, 5])
    values = torch.randn(6, width).to(dtype)
    one = torch.ones(1, dtype=torch.float32, device=DEVICE)
    assert clipped_step(t, sparse_grad(ids, values, (n_rows, width)), hyper, 0.01,
                        coupled=True, decoupled=True, grad_scale=one, found_inf=found_inf)
    assert clipped_step(twin, sparse_grad(ids, values, (n_rows, width)), hyper, 0.01,
                        coupled=True, decoupled=True)
    for name, buf in t.buffers().items():
        if buf is not None:
            assert torch.equal(bits(buf), bits(twin.buffers()[name])), name
    assert torch.equal(bits(t.pows), bits(twin.pows))


@pytest.mark.parametrize("row_programs", ["default", "nnz", 1, 3])
@pytest.mark.parametrize("width", [1, 17, L.MAX_BLOCK_W + 17])
@pytest.mark.parametrize("grad_dtype, acc_dtype", [
    (torch.float32, torch.float32), (torch.float32, torch.float64),
    (torch.float64, torch.float64), (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32)], ids=["fp32", "fp32-acc64", "fp64", "bf16", "fp16"])
def test_sparse_sum_squares_matches_reference(grad_dtype, acc_dtype, width, row_programs):
    """Unsorted ids, duplicates (summed before squaring: the norm differs from the sum of the
    entries' squares), ids outside the table (skipped), any number of row programs."""
    n_rows, nnz = 30, 23
    ids = random_ids(n_rows, nnz - 3, set())
    ids = torch.cat([ids, torch.tensor([n_rows, -3, n_rows + 7])])[torch.randperm(nnz)]
    values = torch.randn(nnz, width, dtype=torch.float64).to(grad_dtype)
    grad = sparse_grad(ids, values, (n_rows, width), check=False)
    programs = {"default": None, "nnz": nnz}.get(row_programs, row_programs)
    size = L.sparse_sum_squares_size((n_rows, width), row_programs=programs)
    col_blocks = -(-width // L.row_block_config(width)[0])
    expected_programs = min(L.SPARSE_NORM_ROW_PROGRAMS, n_rows) if programs is None else programs
    assert size == expected_programs * col_blocks
    # The partials are a slice of a larger buffer: the rest must stay as it is.
    buffer = torch.full((size + 8,), 12345.0, dtype=acc_dtype, device=DEVICE)
    partials = buffer[4:4 + size]
    L.sparse_sum_squares_(grad, partials)
    assert (buffer[:4] == 12345.0).all() and (buffer[4 + size:] == 12345.0).all()
    total = float(partials.double().sum())
    expected = reference_sum_squares(ids, values, n_rows)
    entries = float((values.double()[(ids >= 0) & (ids < n_rows)] ** 2).sum())
    assert abs(expected - entries) > 1e-3 * expected  # the premise: duplicates matter
    sumsq_tol = SUMSQ_TOL[torch.float64 if grad_dtype == torch.float64 else torch.float32]
    assert_close(torch.tensor([total]), torch.tensor([expected]), sumsq_tol, "sum of squares")
    # Deterministic: the same bits again.
    again = torch.empty_like(partials)
    L.sparse_sum_squares_(grad, again)
    assert torch.equal(bits(again), bits(partials))


@needs_paddle
@pytest.mark.parametrize("clip_name", ["ClipGradByGlobalNorm", "ClipGradByNorm"])
def test_sparse_norm_is_paddles_norm_of_a_selected_rows_gradient(clip_name):
    """Paddle's norm clips of an ``Embedding(sparse=True)`` gradient (a SelectedRows with
    duplicate rows) scale it by ``clip_norm / norm`` with the norm of the merged rows; the
    norm read back from Paddle's scale is the root of ``sparse_sum_squares_``'s total.
    (Paddle 3.3.1's ``ClipGradByValue`` raises on a SelectedRows gradient in dygraph; its
    SelectedRows clip kernel merges the rows first, which the update follows.)"""
    paddle = import_paddle()
    n_rows, width = 8, 5
    ids = torch.tensor([1, 4, 1, 1, 6, 4, 0])
    values = torch.randn(len(ids), width)
    emb = paddle.nn.Embedding(n_rows, width, sparse=True)
    out = emb(paddle.to_tensor(ids.numpy()[None, :]))
    (out * paddle.to_tensor(values.numpy()[None])).sum().backward()
    g = emb.weight.grad
    assert g.is_selected_rows()
    clip_norm = 1e-3  # far below the norm: the clip scales
    clipped = getattr(paddle.nn, clip_name)(clip_norm=clip_norm)([(emb.weight, g)])[0][1]
    before = g._get_tensor_from_selected_rows().numpy()
    after = clipped._get_tensor_from_selected_rows().numpy()
    if after.shape != before.shape:  # ClipGradByNorm returns the merged rows
        _, before = reference.merge_sparse_rows(ids, values)
        before = before.numpy()
    i = abs(before).argmax()
    paddle_norm = clip_norm / (after.flat[i] / before.flat[i])

    partials = torch.empty(L.sparse_sum_squares_size((n_rows, width)), device=DEVICE)
    L.sparse_sum_squares_(sparse_grad(ids, values, (n_rows, width)), partials)
    ours = float(partials.double().sum()) ** 0.5
    assert abs(ours - paddle_norm) <= 1e-5 * paddle_norm, (ours, paddle_norm)
    # Not the norm of the entries: the duplicates are summed first.
    assert abs(float(values.double().square().sum()) ** 0.5 - paddle_norm) > 1e-3


def test_sparse_norm_composes_with_the_finalize_and_clips_the_update():
    """Two sparse gradients in one partials buffer: a global norm over both and a per-tensor
    norm of the second, by ``norm.clip_scales_``; the global scale then clips a lazy step of
    the first, which matches the reference clipped by the float64 global norm."""
    shapes = [(20, 17), (9, 40)]
    grads, raw = [], []
    for n_rows, width in shapes:
        ids = random_ids(n_rows, 12, set())
        values = torch.randn(12, width) * 3
        grads.append(sparse_grad(ids, values, (n_rows, width)))
        raw.append((ids, values, n_rows))
    sizes = [L.sparse_sum_squares_size(s) for s in shapes]
    partials = torch.empty(sum(sizes), dtype=torch.float32, device=DEVICE)
    L.sparse_sum_squares_(grads[0], partials[:sizes[0]])
    L.sparse_sum_squares_(grads[1], partials[sizes[0]:])
    clip_norm = 1.5
    segments, outputs = N.finalize_tables(
        [([(0, sizes[0]), (sizes[0], sum(sizes))], N.MODE_GLOBAL),
         ([(sizes[0], sum(sizes))], N.MODE_BY_NORM)], DEVICE)
    clip_norms = torch.tensor([clip_norm, 100.0], dtype=torch.float64, device=DEVICE)
    norms = torch.empty(2, device=DEVICE)
    scales = torch.empty(2, device=DEVICE)
    N.clip_scales_(partials, segments, outputs, clip_norms, norms, scales)
    sq = [reference_sum_squares(*r) for r in raw]
    global_norm = (sq[0] + sq[1]) ** 0.5
    assert_close(norms, torch.tensor([global_norm, sq[1] ** 0.5]), SUMSQ_TOL[torch.float32],
                 "norms")
    assert global_norm > clip_norm  # the premise: the clip scales
    assert_close(scales, torch.tensor([clip_norm / global_norm, 1.0]), SUMSQ_TOL[torch.float32],
                 "scales")

    n_rows, width = shapes[0]
    t = Table(n_rows, (width,), torch.float32, amsgrad=False, master=False, never=set())
    hyper = make_hyper()
    assert clipped_step(t, grads[0], hyper, 0.01, coupled=False, decoupled=False,
                        clip_scale=scales[0:1])
    ids, values, _ = raw[0]
    rows, g = transformed_rows(ids, values, n_rows, clip_scale=clip_norm / global_norm)
    t.ref = reference.lazy_adam_step(t.ref, rows, g, lr=0.01, beta1=BETA1, beta2=BETA2,
                                     epsilon=EPS)
    assert_close(t.param, t.ref.param, TOL[torch.float32], "param")
    assert_close(t.m, t.ref.moment1, TOL[torch.float32], "moment1")


def test_empty_gradient_writes_zero_partials():
    grad = sparse_grad(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 5), (10, 5))
    partials = torch.full((L.sparse_sum_squares_size((10, 5)),), 7.0, device=DEVICE)
    L.sparse_sum_squares_(grad, partials)
    assert (partials == 0).all()
    assert L.sparse_sum_squares_size((10, 5), row_programs=0) == 0
    L.sparse_sum_squares_(grad, partials[:0])  # one program per entry: no partials at all


def test_sparse_sum_squares_makes_no_host_sync():
    from counters import DeviceOps, TritonLaunches

    ids = random_ids(40, 12, set())
    grad = sparse_grad(ids, torch.randn(12, 8), (40, 8))
    partials = torch.empty(L.sparse_sum_squares_size((40, 8)), device=DEVICE)
    with TritonLaunches(execute=False) as launches, DeviceOps() as ops:
        L.sparse_sum_squares_(grad, partials)
    assert ops.syncs == 0, ops.ops
    assert launches.count == 1
    kernels = {k: n for k, n in kernel_ops(ops.ops).items()
               if k not in ("sparse_dim", "dense_dim", "_nnz")}
    assert kernels == {"sort": 1}, ops.ops


@pytest.mark.parametrize("bad, message", [
    (lambda a: a.update(grad=a["grad"].to_dense()), "layout"),
    (lambda a: a.update(partials=torch.zeros(a["partials"].numel() + 1, device=DEVICE)),
     "multiple"),
    (lambda a: a.update(partials=torch.zeros(0, device=DEVICE)), "multiple"),
    (lambda a: a.update(partials=torch.zeros(a["partials"].numel(), device=DEVICE).half()),
     "float32/float64"),
    (lambda a: a.update(grad=sparse_grad(torch.tensor([1, 2]), torch.ones(2, 4).double(),
                                         (6, 4))), "float64 partials"),
    (lambda a: a.update(grad=sparse_grad(torch.tensor([1]), torch.ones(1, 4).int(), (6, 4))),
     "values dtype"),
])
def test_sparse_sum_squares_rejects_bad_arguments(bad, message):
    width = L.MAX_BLOCK_W + 17  # two column blocks: sizes must be even
    args = dict(grad=sparse_grad(torch.tensor([1, 3]), torch.randn(2, width), (6, width)),
                partials=torch.zeros(L.sparse_sum_squares_size((6, width)), device=DEVICE))
    bad(args)
    with pytest.raises(ValueError, match=message):
        L.sparse_sum_squares_(**args)


@pytest.mark.parametrize("bad, message", [
    (dict(clip_scale=torch.ones(1, dtype=torch.int32)), "clip_scale must be"),
    (dict(clip_scale=torch.ones(0)), "clip_scale must be"),
    (dict(grad_scale=torch.ones(1, dtype=torch.int64)), "grad_scale must be"),
    (dict(found_inf=torch.ones(0)), "found_inf must be"),
])
def test_update_rejects_bad_clip_and_amp_arguments(bad, message):
    t = Table(6, (4,), torch.float32, amsgrad=False, master=False, never=set())
    before = t.snapshot()
    bad = {k: v.to(DEVICE) for k, v in bad.items()}
    with pytest.raises(ValueError, match=message):
        clipped_step(t, sparse_grad(torch.tensor([1, 3]), torch.randn(2, 4), (6, 4)),
                     make_hyper(), 0.1, coupled=False, decoupled=False, **bad)
    assert_rows_unchanged(before, t.buffers(), torch.arange(6), "refused launch")
