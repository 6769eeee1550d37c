"""Lazy (sparse-row) Adam / AdamW: update only the rows present in a sparse COO gradient.

Semantics (``docs/paddle-compatibility.md`` section 4, following Paddle's GPU
kernel, not its CPU sparse kernel). The parameter is viewed as a table ``[n_rows, width]``
(dim 0 is the row, the other dims are flattened into ``width``); the gradient is a sparse COO
tensor with one sparse dimension, as ``torch.nn.Embedding(sparse=True)`` produces:
``indices`` int64 ``[1, nnz]``, possibly unsorted and with duplicates, and ``values``
``[nnz, *param.shape[1:]]``. For every distinct row ``r`` among the indices::

    g[r]  = sum of values[i] over the i with indices[i] == r       (in sparse-tensor order)
    p[r], m[r], v[r], vmax[r] = the dense update of section 1 on that row (the dense
            kernels' ``adam_math`` of kernels/update.py: coupled L2/L1 decay, AdamW, AMSGrad,
            bias correction with the stored pows beta^t, epsilon scaled as in the GPU kernel)
    b1p, b2p = b1p * beta1, b2p * beta2                           (once per step, per tensor)

Rows absent from the gradient are not touched at all: neither the param nor any accumulator
is read or written. An empty gradient (``nnz == 0``) launches nothing: no update, no pow
advance (Paddle returns early in that case). ``lazy_mode=False`` with a sparse gradient is the
dense update of the densified gradient: ``dense_grad(grad)`` (duplicates summed in a fixed
order, deterministic on a GPU too) then ``kernels.adam.adam_update_``.

**Clipping and AMP** (``sparse_adam_update_``'s ``clip_scale``, ``clip_value``,
``grad_scale``, ``found_inf``) act on ``g[r]``, the row's gradient after its duplicates are
summed, in the dense kernels' order (``kernels/update.py``'s ``prepare_grad``). Paddle
merges a SelectedRows gradient's duplicate rows before ``ClipGradByGlobalNorm`` /
``ClipGradByNorm`` take its norm (``merge_selected_rows``; checked against Paddle 3.3.1 in
tests/test_kernel_sparse_clip_amp.py) and its SelectedRows clip kernel merges them before it
clamps (Paddle 3.3.1's dygraph ``ClipGradByValue`` raises on a SelectedRows gradient)::

    g[r] = clamp(g[r] / grad_scale * clip_scale, clip_min, clip_max)    (each step optional)

``found_inf`` set: nothing changes and the pows are copied to ``pows_out`` unchanged, as in
the dense kernels. **The norm of a sparse gradient** counts each row once after its duplicates
are summed, ids outside the table skipped::

    ||g||^2 = sum over distinct r in [0, n_rows) of ||g[r]||^2

``sparse_sum_squares_`` writes it as partial sums into a slice of the norm pass's partials
buffer (``kernels/norm.py``), sized by ``sparse_sum_squares_size``, which the finalize
(``clip_scales_``, ``output_sums_``) reduces with the dense tensors' partials.

Design:

* **Duplicates and order without a host sync.** The launcher sorts the row ids on the device,
  ``torch.sort(ids, stable=True)``, which returns sorted ids and the permutation, both of
  length ``nnz``, an output size known on the host (unlike ``unique``, ``nonzero`` or CUDA's
  ``coalesce``, which read a count back). The grid is ``(nnz, column blocks)``: the program at
  sorted position ``k`` does nothing if ``sorted[k - 1] == sorted[k]`` (it is not the head of
  its run of equal ids); the head sums ``values[perm[k]], values[perm[k + 1]], ...`` while the
  sorted id stays the same, in that fixed order (the stable sort keeps duplicates in sparse
  tensor order, so the sum is deterministic), and applies the update to its columns. Work and
  bytes are proportional to ``nnz * width``, never to the table size.
* **Cost.** A row with ``d`` duplicates is summed by one program, serially: ``d`` gradient
  rows read, then one read-modify-write of p, m, v (and vmax, master). Per updated element
  that is the dense floor plus one gradient element per extra duplicate; per program a few
  scalars (two sorted ids, one permutation entry and one next id per gradient row, the hyper
  row and the pows). The sort itself is an O(nnz) device pass over the int64 ids. Measured in
  the sm_80/sm_90 SASS (tests/test_compile_lazy.py), per updated element, loads + stores:
  fp32 16 + 12 (amsgrad 20 + 16), fp64 32 + 24, bf16/fp16 with fp32 master 14 + 14 (fp32
  gradient 16 + 14), bf16 with the master as a remainder 14 + 12, half without master
  12 + 10; +4 B (fp32 gradient) or +2 B (half) per
  duplicate; all 16-byte vector accesses when ``width % 16 == 0``; no spills. Clipping and
  AMP add per-program scalars only (the scale, the bounds, the loss scale, the flag). The
  sparse sum of squares reads each gradient entry once (4 B per fp32 element, 2 per half)
  and writes one partial per program.
  A run of many duplicates of one row is serial in one program (a hot row of a huge batch is
  a latency chain of ``d`` loads), the price of a deterministic sum without atomics.
* **Pows without a race**, as in the dense kernel: every program reads ``pows_in``; only the
  program ``(0, 0)`` writes ``pows_out``, a different buffer. The launcher returns whether it
  launched, so the caller alternates its two pow slots only when the pows were written.
* **Per-step values never recompile**: ``lr`` is a ``tl.float64`` runtime argument, the other
  hyper-parameters come from the device ``hyper`` row, and ``nnz`` is excluded from the JIT's
  integer specialization (it changes every step). What is constexpr is per tensor: the column
  block (from ``width``), the dtype-dependent ``MASTER`` and the mode switches.
* **Offsets are int64**: the row id is int64, so ``row * width`` and ``perm * width`` are
  int64 (tables beyond 2^31 elements exist). The row start is added to each table's pointer
  once, as a scalar, and the int32 columns to that: with per-element int64 offsets ptxas
  spilled on sm_80 (bf16 + master + amsgrad + AdamW). For the same reason the stores
  recompute their addresses from a re-read of the row id, and the launch passes
  ``maxnreg=MAX_REGISTERS`` so ptxas never trades a stack spill for occupancy.
* **Out-of-range ids** (negative or ``>= n_rows``) cannot be checked on the host without a
  sync, and torch validates a sparse tensor's ids only when asked (``check_invariants``;
  autograd's own ``Embedding`` gradients are valid by construction): the kernel skips such a
  run (one scalar compare per program) rather than write outside the table.
* **Vectorization.** The column mask ``col < width`` is all the masking there is; when
  ``width`` is a multiple of 16 the JIT marks it divisible, the compiler then knows the mask is
  constant over 16-element groups and row starts are 16-byte aligned, and keeps 16-byte
  vector accesses. Other widths compile to narrower accesses (correct, just slower). The
  column block is the width's next power of two (32 to 1024); warps are chosen for 8
  elements per thread (``row_block_config``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    ACC_DTYPES,
    FLOAT_DTYPES,
    FP_FUSION,
    HYPER_WIDTH,
    LOW_PRECISION,
    TRITON_DTYPES,
    check_interpretable,
    compute_dtype_for,
    device_guard,
    lr_arguments,
    join_master,
    round_to,
    split_master,
)
from .update import (
    adam_math,
    advance_pows,
    amp_scalars,
    clip_scalars,
    grad_sign,
    prepare_grad,
    step_scalars,
)

# The widest column block, and the number of warps at that width: 1024 elements per program
# with 4 warps is 8 contiguous elements per thread, the shape kernels/adam.py measured to
# keep 16-byte accesses and no spills (two 16-byte accesses per fp32 stream).
MAX_BLOCK_W = 1024
MAX_NUM_WARPS = 4
# Narrowest column block: one warp (1 warp, 1 element per thread). A smaller block would be
# replicated across the warp's threads; narrow rows are dominated by per-program work anyway.
MIN_BLOCK_W = 32
# Elements per thread the warp count is chosen for (8: one or two 16-byte accesses per stream).
ELEMENTS_PER_THREAD = 8
# Register budget ptxas may use per thread (the ``.maxnreg`` launch option). Without it ptxas
# chose to stay at 56-64 registers and save a value to the stack around the fp32 div.rn /
# sqrt.rn slow-path calls on some specializations (sm_80 and sm_90); with it the widest
# specialization (fp64 + amsgrad) takes 96 and none spills (tests/test_compile_lazy.py).
MAX_REGISTERS = 128
# CUDA limits of the grid: axis 0 (the nnz positions) up to 2^31 - 1, axis 1 (the column
# blocks) up to 65535.
MAX_GRID_0 = 2**31 - 1
MAX_GRID_1 = 65535



@triton.jit
def _run_sum(values_ptr, sorted_rows_ptr, perm_ptr, k, row, nnz, width, cols, mask,
             acc_dtype: tl.constexpr):
    """The gradient of ``row``: the sum of its run of equal ids starting at sorted position
    ``k`` (the run's head), over the columns ``cols``, in sorted (= stable, i.e. sparse
    tensor) order, accumulated in ``acc_dtype``: a fixed order, so the same bits every run."""
    src = tl.load(perm_ptr + k)  # int64: src * width is an int64 offset
    g = tl.load(values_ptr + src * width + cols, mask=mask, other=0.0).to(acc_dtype)
    j = k + 1
    nxt = tl.load(sorted_rows_ptr + j, mask=j < nnz, other=-1)
    while nxt == row:
        src = tl.load(perm_ptr + j)
        g += tl.load(values_ptr + src * width + cols, mask=mask, other=0.0).to(acc_dtype)
        j += 1
        nxt = tl.load(sorted_rows_ptr + j, mask=j < nnz, other=-1)
    return g


@triton.jit(do_not_specialize=["nnz"])
def _lazy_adam_kernel(
    param_ptr,  # *P [n_rows, width]: the table, updated in place on the present rows only
    master_ptr,  # *fp32 [n_rows, width]: fp32 master weights (MASTER only; else any pointer);
    #              *i16 [n_rows, width]: their remainders beside bf16 params (MASTER_REMAINDER)
    values_ptr,  # *G [nnz, width]: the gradient rows, in the sparse tensor's (unsorted) order
    sorted_rows_ptr,  # *i64 [nnz]: the row ids sorted ascending (stable sort)
    perm_ptr,  # *i64 [nnz]: perm[k] is the position in values of sorted_rows[k]
    exp_avg_ptr,  # *C [n_rows, width]: moment1, updated in place; its dtype is the compute dtype
    exp_avg_sq_ptr,  # *C [n_rows, width]: moment2, updated in place
    max_exp_avg_sq_ptr,  # *C [n_rows, width]: moment2_max (AMSGRAD only; else any pointer)
    hyper_ptr,  # *C [HYPER_WIDTH]: the tensor's hyper-parameter row (HYPER_* columns)
    pows_in_ptr,  # *C [2]: (beta1^t, beta2^t) used by this step, read by every program
    pows_out_ptr,  # *C [2]: receives the advanced pows, written by program (0, 0) only
    clip_scale_ptr,  # *S [1]: the norm clip's scale (CLIP_SCALE only; else any pointer)
    grad_scale_ptr,  # *f32 [1]: AMP loss scale the gradient is divided by (UNSCALE only)
    found_inf_ptr,  # *f32 [1]: nonzero = skip this step entirely (SKIP_ON_INF only)
    lr: tl.float64,  # the step's learning rate (per step: never constexpr)
    lr_ptr,  # *f64: the learning rate in device memory (LR_ON_DEVICE only, else any pointer)
    nnz,  # entries of the sparse gradient = programs on axis 0 (per step: not specialized)
    n_rows,  # rows of the table: ids outside [0, n_rows) are skipped
    width,  # elements per row (product of param.shape[1:])
    BLOCK_W: tl.constexpr,  # columns per program (axis 1 of the grid walks the blocks)
    AMSGRAD: tl.constexpr,  # keep and use moment2_max
    COUPLED_DECAY: tl.constexpr,  # g += l2 * p + l1 * sign(p) on the present rows
    DECOUPLED_DECAY: tl.constexpr,  # AdamW: p -= lr_t * wd * p on the present rows
    MASTER: tl.constexpr,  # p is read from and written to master_ptr; param gets it rounded
    MASTER_REMAINDER: tl.constexpr,  # the master is the bf16 param + int16 remainder at master_ptr
    CLIP_SCALE: tl.constexpr,  # multiply each row's summed gradient by *clip_scale_ptr
    CLIP_VALUE: tl.constexpr,  # clamp it to the hyper row's clip bounds
    UNSCALE: tl.constexpr,  # divide it by *grad_scale_ptr (AMP), before clipping
    SKIP_ON_INF: tl.constexpr,  # change nothing, copy the pows, when *found_inf_ptr
    LR_ON_DEVICE: tl.constexpr,  # read the learning rate at lr_ptr (capturable steps)
    MAXIMIZE: tl.constexpr,  # multiply each row's gradient by the hyper row's sign
    BIAS_FROM_STEP: tl.constexpr,  # bias corrections from the step count (torch), not the pows
):
    compute_dtype = exp_avg_ptr.dtype.element_ty
    k = tl.program_id(0)  # position in the sorted ids
    col_block = tl.program_id(1)

    if (k == 0) & (col_block == 0):
        # Exactly one program advances the pows, into the other buffer: no race with the
        # programs still reading pows_in. A skipped step (AMP) copies them unchanged.
        advance_pows(hyper_ptr, pows_in_ptr, pows_out_ptr, found_inf_ptr, SKIP_ON_INF)

    row = tl.load(sorted_rows_ptr + k)  # int64
    prev = tl.load(sorted_rows_ptr + tl.maximum(k - 1, 0))
    is_head = (k == 0) | (prev != row)  # first of its run of equal ids
    update = is_head & (row >= 0) & (row < n_rows)
    if SKIP_ON_INF:
        update = update & (tl.load(found_inf_ptr) == 0)  # AMP overflow: nothing changes
    if update:
        cols = col_block * BLOCK_W + tl.arange(0, BLOCK_W)
        mask = cols < width
        g = _run_sum(values_ptr, sorted_rows_ptr, perm_ptr, k, row, nnz, width, cols, mask,
                     compute_dtype)
        # The row's gradient as the update sees it, in the dense kernels' order (after the
        # duplicates are summed, as Paddle merges rows before it clips): AMP unscale, the norm
        # clip's scale, the value clip. Read after the loop: nothing more is live across it.
        inv_grad_scale, _ = amp_scalars(grad_scale_ptr, found_inf_ptr, compute_dtype, UNSCALE,
                                        False)
        g_scale, clip_lo, clip_hi = clip_scalars(clip_scale_ptr, hyper_ptr, compute_dtype,
                                                 CLIP_SCALE, CLIP_VALUE)
        sign = grad_sign(hyper_ptr, compute_dtype, MAXIMIZE)
        g = prepare_grad(g, inv_grad_scale, g_scale, clip_lo, clip_hi, sign, UNSCALE,
                         CLIP_SCALE, CLIP_VALUE, MAXIMIZE)

        lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd = step_scalars(
            hyper_ptr, pows_in_ptr, lr, lr_ptr, compute_dtype, LR_ON_DEVICE, BIAS_FROM_STEP)
        # The row's start in every table is an int64 scalar added to each pointer once; the
        # columns are int32 offsets from it (per-element int64 offsets cost registers).
        row_start = row * width
        if MASTER_REMAINDER:
            # The master rebuilt from the param and its remainder (kernels/common.py).
            p = join_master(tl.load(param_ptr + row_start + cols, mask=mask),
                            tl.load(master_ptr + row_start + cols, mask=mask))
        elif MASTER:
            p = tl.load(master_ptr + row_start + cols, mask=mask)
        else:
            p = tl.load(param_ptr + row_start + cols, mask=mask).to(compute_dtype)
        m = tl.load(exp_avg_ptr + row_start + cols, mask=mask)
        v = tl.load(exp_avg_sq_ptr + row_start + cols, mask=mask)
        if AMSGRAD:
            vmax = tl.load(max_exp_avg_sq_ptr + row_start + cols, mask=mask)
        else:
            vmax = v  # unused
        p, m, v, vmax = adam_math(p, g, m, v, vmax, lr_t, step_size, inv_sqrt_bc2, beta1,
                                  beta2, eps, l2, l1, wd, AMSGRAD, COUPLED_DECAY,
                                  DECOUPLED_DECAY)
        # Re-read the row id (a cached scalar; volatile, so the compiler cannot reuse the first
        # load) rather than keep four or five 64-bit store addresses live across the fp32
        # div.rn / sqrt.rn slow-path subroutine calls: fewer registers (fp64 amsgrad 120 -> 96).
        row_start = tl.load(sorted_rows_ptr + k, volatile=True) * width
        if AMSGRAD:
            tl.store(max_exp_avg_sq_ptr + row_start + cols, vmax, mask=mask)
        tl.store(exp_avg_ptr + row_start + cols, m, mask=mask)
        tl.store(exp_avg_sq_ptr + row_start + cols, v, mask=mask)
        if MASTER_REMAINDER:
            # Param rounded to nearest, ties away from zero, and the exact remainder.
            p_out, rem = split_master(p)
            tl.store(master_ptr + row_start + cols, rem, mask=mask)
            tl.store(param_ptr + row_start + cols, p_out, mask=mask)
        else:
            if MASTER:
                tl.store(master_ptr + row_start + cols, p, mask=mask)
            tl.store(param_ptr + row_start + cols, round_to(p, param_ptr.dtype.element_ty),
                     mask=mask)


@triton.jit(do_not_specialize=["nnz"])
def _densify_rows_kernel(
    dense_ptr,  # *G [n_rows, width]: zeros on entry; each present row receives its sum
    values_ptr,  # *G [nnz, width]: the gradient rows, in the sparse tensor's (unsorted) order
    sorted_rows_ptr,  # *i64 [nnz]: the row ids sorted ascending (stable sort)
    perm_ptr,  # *i64 [nnz]: perm[k] is the position in values of sorted_rows[k]
    nnz,  # entries of the sparse gradient = programs on axis 0 (per step: not specialized)
    n_rows,  # rows of the table: ids outside [0, n_rows) are skipped
    width,  # elements per row
    ACC_DTYPE: tl.constexpr,  # accumulation dtype of duplicate rows (fp32, or fp64)
    BLOCK_W: tl.constexpr,  # columns per program
):
    # The head of each run of equal ids writes the run's sum, the others nothing: each
    # present row is written once, summed in a fixed order (no atomics), so the dense
    # gradient has the same bits on every run and every GPU.
    k = tl.program_id(0)
    col_block = tl.program_id(1)
    row = tl.load(sorted_rows_ptr + k)
    prev = tl.load(sorted_rows_ptr + tl.maximum(k - 1, 0))
    is_head = (k == 0) | (prev != row)
    if is_head & (row >= 0) & (row < n_rows):
        cols = col_block * BLOCK_W + tl.arange(0, BLOCK_W)
        mask = cols < width
        g = _run_sum(values_ptr, sorted_rows_ptr, perm_ptr, k, row, nnz, width, cols, mask,
                     ACC_DTYPE)
        tl.store(dense_ptr + row * width + cols, round_to(g, dense_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit(do_not_specialize=["nnz", "row_programs"])
def _sparse_sum_squares_kernel(
    values_ptr,  # *G [nnz, width]: the gradient rows, in the sparse tensor's (unsorted) order
    sorted_rows_ptr,  # *i64 [nnz]: the row ids sorted ascending (stable sort)
    perm_ptr,  # *i64 [nnz]: perm[k] is the position in values of sorted_rows[k]
    partials_ptr,  # *ACC [row_programs * column blocks]: one sum of squares per program
    nnz,  # entries of the sparse gradient (per step: not specialized)
    n_rows,  # rows of the table: ids outside [0, n_rows) are skipped
    width,  # elements per row
    row_programs,  # programs on axis 0: program r takes sorted positions r, r + row_programs..
    SUM_DTYPE: tl.constexpr,  # dtype a row's duplicates are summed in (the update's: fp32/fp64)
    ACC_DTYPE: tl.constexpr,  # accumulation dtype of the squares (the element type of partials)
    BLOCK_W: tl.constexpr,  # columns per program (axis 1 of the grid walks the blocks)
):
    # Each run of equal ids is summed by its head, once, as the update sums it (_run_sum, the
    # same order and dtype), and its squares added: every present row counts once, after its
    # duplicates are summed. A fixed order (positions ascending, then one reduction over the
    # lanes), no atomics: the same bits on every run.
    r = tl.program_id(0)
    col_block = tl.program_id(1)
    cols = col_block * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = cols < width
    acc = tl.zeros([BLOCK_W], dtype=ACC_DTYPE)
    for k in range(r, nnz, row_programs):
        row = tl.load(sorted_rows_ptr + k)
        prev = tl.load(sorted_rows_ptr + tl.maximum(k - 1, 0))
        if ((k == 0) | (prev != row)) & (row >= 0) & (row < n_rows):
            g = _run_sum(values_ptr, sorted_rows_ptr, perm_ptr, k, row, nnz, width, cols, mask,
                         SUM_DTYPE).to(ACC_DTYPE)
            acc += g * g
    tl.store(partials_ptr + r * tl.num_programs(1) + col_block, tl.sum(acc, axis=0))


def row_block_config(width: int) -> tuple[int, int]:
    """``(BLOCK_W, num_warps)`` for rows of ``width`` elements.

    The block is the next power of two of the width, between ``MIN_BLOCK_W`` and
    ``MAX_BLOCK_W`` (wider rows take several column programs); warps are chosen for
    ``ELEMENTS_PER_THREAD`` elements per thread, 1 to ``MAX_NUM_WARPS``.
    """
    block = min(MAX_BLOCK_W, max(MIN_BLOCK_W, triton.next_power_of_2(max(width, 1))))
    warps = max(1, min(MAX_NUM_WARPS, block // (32 * ELEMENTS_PER_THREAD)))
    return block, warps


def lazy_kernel_constexprs(*, block_w: int, amsgrad: bool, coupled_decay: bool,
                           decoupled_decay: bool, master: bool, clip_scale: bool = False,
                           clip_value: bool = False, unscale: bool = False,
                           skip_on_inf: bool = False, lr_on_device: bool = False,
                           maximize: bool = False, bias_from_step: bool = False,
                           master_remainder: bool = False) -> dict:
    """The constexpr arguments of one specialization (shared with the compile check)."""
    return dict(
        BLOCK_W=int(block_w),
        AMSGRAD=bool(amsgrad),
        COUPLED_DECAY=bool(coupled_decay),
        DECOUPLED_DECAY=bool(decoupled_decay),
        MASTER=bool(master or master_remainder),
        MASTER_REMAINDER=bool(master_remainder),
        CLIP_SCALE=bool(clip_scale),
        CLIP_VALUE=bool(clip_value),
        UNSCALE=bool(unscale),
        SKIP_ON_INF=bool(skip_on_inf),
        LR_ON_DEVICE=bool(lr_on_device),
        MAXIMIZE=bool(maximize),
        BIAS_FROM_STEP=bool(bias_from_step),
    )


def _check(cond: bool, message, where: str = "sparse_adam_update_") -> None:
    # As in kernels/adam.py: the message is formatted only on failure.
    if not cond:
        raise ValueError(f"{where}: {message()}")


def sparse_adam_update_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    hyper: torch.Tensor,
    pows_in: torch.Tensor,
    pows_out: torch.Tensor,
    *,
    lr: float | torch.Tensor,
    coupled_decay: bool,
    decoupled_decay: bool,
    master: torch.Tensor | None = None,
    clip_scale: torch.Tensor | None = None,
    clip_value: bool = False,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    maximize: bool = False,
    bias_from_step: bool = False,
) -> bool:
    """Apply one lazy Adam step (only the rows present in ``grad``) to ``param`` in place.

    One device sort of the row ids and one kernel launch; no host sync. Returns True when it
    launched (``pows_out`` was written: the pows advanced, or copied when ``found_inf`` is
    set), False for an empty gradient, which changes nothing (``pows_out`` not written: the
    caller keeps using ``pows_in``).

    Clipping and AMP act on each present row's gradient **after its duplicates are summed**
    (Paddle merges a SelectedRows gradient's duplicate rows before it takes a norm, and its
    SelectedRows clip kernel before it clamps), in the dense kernels' order: ``g_r = sum of
    the row's entries`` (compute dtype), then ``g_r / grad_scale`` (AMP), ``* clip_scale`` (a
    norm clip), clamped to ``[hyper[HYPER_CLIP_MIN], hyper[HYPER_CLIP_MAX]]`` (value clip),
    then the decay terms and the update. Unscaling (or norm-scaling) the sum instead of each
    entry is the same value up to rounding, exactly the same for a power-of-two loss scale
    (GradScaler's).
    The norm a clip scale comes from counts each row once after its duplicates are summed:
    ``sparse_sum_squares_``.

    Args:
        param: contiguous float32, float64, float16 or bfloat16 tensor with at least one
            dimension; dim 0 indexes the rows. Present rows are updated in place.
        grad: sparse COO tensor of ``param``'s shape with one sparse dimension (rows) and the
            rest dense, e.g. the ``.grad`` of ``Embedding(sparse=True)``; uncoalesced
            (unsorted, duplicate ids) is fine: duplicates are summed. Values in the param's
            dtype or float32, contiguous, on the param's device.
        exp_avg, exp_avg_sq: moments, contiguous, ``param.numel()`` elements, in the compute
            dtype (``compute_dtype_for(param.dtype)``: float64 for float64, else float32).
        max_exp_avg_sq: moment2_max for AMSGrad (same layout), or None.
        hyper: ``HYPER_WIDTH`` values in the compute dtype (the ``HYPER_*`` columns).
        pows_in: at least 2 values ``(beta1_pow, beta2_pow)`` of this step, compute dtype.
        pows_out: receives the advanced pows; must not be ``pows_in``.
        lr: the step's learning rate: a Python float (passed to the kernel as float64), or a
            one-element float64 tensor on the param's device that the kernel reads.
        coupled_decay: add ``l2 * p + l1 * sign(p)`` to the present rows' gradient.
        decoupled_decay: AdamW's ``p -= lr * lr_scale * wd * p`` on the present rows.
        master: fp32 master weights of a float16/bfloat16 param (contiguous, same numel), or
            None. With it the kernel reads p from the master, writes the master and the param
            rounded to nearest. Without it a half param is computed in fp32 from its own
            values (Paddle's behaviour without ``multi_precision``). An int16 ``master`` of a
            bfloat16 param holds the masters' remainders (``kernels/common.py``): the kernel
            rebuilds each master from the param and its remainder and writes both back.
        clip_scale: a 1-element float32/float64 tensor on the param's device that multiplies
            each present row's summed gradient (a norm clip's scale, computed on the device),
            or None.
        clip_value: clamp each present row's summed gradient to the hyper row's
            ``HYPER_CLIP_MIN`` / ``HYPER_CLIP_MAX`` (NaN stays NaN).
        grad_scale: AMP's loss scale (1 element, device): the gradient is divided by it,
            before clipping.
        found_inf: AMP's overflow flag (1 element, device): when nonzero nothing changes
            (param, master, moments) and the pows are copied to ``pows_out`` unchanged, as
            the dense kernels do, so the caller flips its pow slots whenever this returns True.
        maximize: multiply each row's gradient by ``hyper[HYPER_SIGN]`` (after clipping).
        bias_from_step: torch's bias corrections from the step count (``adam_update_``).
    """
    check_interpretable(param.device)
    _check(grad.layout == torch.sparse_coo, lambda: f"grad layout {grad.layout} is not "
           "torch.sparse_coo (a dense gradient takes kernels.adam.adam_update_)")
    _check(param.dtype in FLOAT_DTYPES, lambda: f"param dtype {param.dtype} is not one of "
           "float32, float64, float16, bfloat16")
    _check(param.dim() >= 1, lambda: "param must have at least one dimension (the rows)")
    _check(tuple(grad.shape) == tuple(param.shape), lambda: f"grad shape {tuple(grad.shape)} "
           f"!= param shape {tuple(param.shape)}")
    _check(grad.sparse_dim() == 1, lambda: f"grad has {grad.sparse_dim()} sparse dimensions, "
           "expected 1 (sparse rows, dense rest)")
    cdtype = compute_dtype_for(param.dtype)
    indices = grad._indices()
    values = grad._values()
    _check(indices.dtype == torch.int64, lambda: f"grad indices dtype {indices.dtype} is not int64")
    _check(values.dtype in (param.dtype, torch.float32), lambda: f"grad values dtype "
           f"{values.dtype} is neither the param dtype {param.dtype} nor float32")
    _check(values.is_contiguous(), lambda: "grad values are not contiguous")

    states = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
    if max_exp_avg_sq is not None:
        states.append(("max_exp_avg_sq", max_exp_avg_sq))
    scalars = [("hyper", hyper), ("pows_in", pows_in), ("pows_out", pows_out)]
    if master is not None:
        _check(param.dtype in LOW_PRECISION, lambda: f"master weights are for float16/bfloat16 "
               f"params, param is {param.dtype}")
        _check(master.dtype == torch.float32
               or (master.dtype == torch.int16 and param.dtype == torch.bfloat16), lambda:
               f"master dtype {master.dtype} is not float32 (master weights) or int16 (the "
               "remainders of a bfloat16 param's masters)")
    tables = [("param", param)] + states + ([("master", master)] if master is not None else [])
    for name, t in tables + scalars + [("grad", grad)]:
        _check(t.device == param.device, lambda: f"{name} is on {t.device}, param on "
               f"{param.device}")
    for name, t in tables + scalars:
        _check(t.is_contiguous(), lambda: f"{name} is not contiguous")
    for name, t in states + scalars:
        _check(t.dtype == cdtype, lambda: f"{name} dtype {t.dtype} != compute dtype {cdtype}")
    for name, t in tables[1:]:
        _check(t.numel() == param.numel(), lambda: f"{name} has {t.numel()} elements, param "
               f"{param.numel()}")
    _check(hyper.numel() >= HYPER_WIDTH, lambda: f"hyper has {hyper.numel()} < {HYPER_WIDTH} "
           "values")
    _check(pows_in.numel() >= 2 and pows_out.numel() >= 2, lambda: "pows need 2 values each")
    _check(pows_in.data_ptr() != pows_out.data_ptr(), lambda: "pows_in and pows_out must differ")
    if clip_scale is not None:
        _check(clip_scale.numel() >= 1 and clip_scale.device == param.device
               and clip_scale.dtype in ACC_DTYPES, lambda:
               f"clip_scale must be a float32/float64 tensor on {param.device}, got "
               f"{clip_scale.dtype} {tuple(clip_scale.shape)} on {clip_scale.device}")
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None:
            _check(t.numel() >= 1 and t.device == param.device and t.is_floating_point(),
                   lambda: f"{name} must be a floating tensor with one element on "
                   f"{param.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")

    check_launchable(param, grad)
    lr, lr_ptr = lr_arguments(lr, param.device)
    nnz = indices.shape[1]  # host metadata of the sparse tensor: no sync
    n_rows, width, block_w, num_warps = _row_geometry(param.shape)
    col_blocks = max(1, triton.cdiv(width, block_w))
    if nnz == 0:
        return False

    with device_guard(param.device):
        # Same length in, same length out: no output size to read back, hence no sync.
        sorted_rows, perm = torch.sort(indices[0], stable=True)
        _lazy_adam_kernel[(nnz, col_blocks)](
            param, master if master is not None else param, values, sorted_rows, perm,
            exp_avg, exp_avg_sq, max_exp_avg_sq if max_exp_avg_sq is not None else exp_avg_sq,
            hyper, pows_in, pows_out,
            clip_scale if clip_scale is not None else hyper,
            grad_scale if grad_scale is not None else hyper,
            found_inf if found_inf is not None else hyper,
            lr, lr_ptr if lr_ptr is not None else hyper, nnz, n_rows, width,
            **lazy_kernel_constexprs(block_w=block_w, amsgrad=max_exp_avg_sq is not None,
                                     coupled_decay=coupled_decay,
                                     decoupled_decay=decoupled_decay, master=master is not None,
                                     master_remainder=(master is not None
                                                       and master.dtype == torch.int16),
                                     clip_scale=clip_scale is not None, clip_value=clip_value,
                                     unscale=grad_scale is not None,
                                     skip_on_inf=found_inf is not None,
                                     lr_on_device=lr_ptr is not None, maximize=maximize,
                                     bias_from_step=bias_from_step),
            num_warps=num_warps,
            enable_fp_fusion=FP_FUSION,
            **_register_budget(param.device),
        )
    return True


def check_launchable(param: torch.Tensor, grad: torch.Tensor) -> None:
    """Raise ``ValueError`` when the launch for ``grad`` would exceed the grid's limits (the
    launchers check the same; the optimizer checks it before any launch of a step)."""
    nnz = grad._nnz()
    _, width, block_w, _ = _row_geometry(param.shape)
    col_blocks = max(1, triton.cdiv(width, block_w))
    _check(nnz <= MAX_GRID_0, lambda: f"grad has {nnz} entries, more than {MAX_GRID_0}")
    _check(col_blocks <= MAX_GRID_1, lambda: f"rows of {width} elements need {col_blocks} "
           f"column blocks, more than {MAX_GRID_1}")


def _register_budget(device: torch.device) -> dict:
    # ``maxnreg`` is an option of Triton's CUDA backend only (AMD's rejects unknown options;
    # the interpreter ignores it).
    return {"maxnreg": MAX_REGISTERS} if device.type == "cuda" and not torch.version.hip else {}


def dense_grad(grad: torch.Tensor) -> torch.Tensor:
    """The dense gradient equivalent to a sparse COO ``grad``: the ``lazy_mode=False`` path.

    ``lazy_mode=False`` with a sparse gradient is the dense update of this tensor (absent rows
    have a zero gradient: their moments decay and they move), i.e. ``dense_grad(grad)`` then
    ``kernels.adam.adam_update_``. Only an empty gradient differs: like the lazy path it must
    change nothing, so the caller skips the step when ``grad._nnz() == 0`` (host metadata).

    Deterministic on every device: the row ids are sorted on the device (stable) and the
    first entry of each run of equal ids writes the run's sum, accumulated in float32
    (float64 for float64 values) in sparse-tensor order and rounded once to the values'
    dtype. (``grad.to_dense()`` sums duplicates with atomics on CUDA, in no fixed order.)
    Ids outside ``[0, n_rows)`` are skipped, as in the lazy kernel. No host sync.
    """
    _check(grad.layout == torch.sparse_coo, lambda: f"grad layout {grad.layout} is not "
           "torch.sparse_coo")
    _check(grad.sparse_dim() == 1 and grad.dim() >= 1, lambda: f"grad has "
           f"{grad.sparse_dim()} sparse dimensions, expected 1 (sparse rows, dense rest)")
    indices = grad._indices()
    values = grad._values()
    _check(indices.dtype == torch.int64, lambda: f"grad indices dtype {indices.dtype} is not "
           "int64")
    _check(values.dtype in FLOAT_DTYPES, lambda: f"grad values dtype {values.dtype} is not "
           "one of float32, float64, float16, bfloat16")
    values = values.contiguous()
    dense = torch.zeros(grad.shape, dtype=values.dtype, device=values.device)
    nnz = indices.shape[1]
    n_rows = grad.shape[0]
    width = dense.numel() // n_rows if n_rows else 0
    if nnz == 0 or width == 0:
        return dense
    block_w, num_warps = row_block_config(width)
    col_blocks = triton.cdiv(width, block_w)
    _check(nnz <= MAX_GRID_0 and col_blocks <= MAX_GRID_1, lambda: f"grad has {nnz} entries "
           f"of {width} elements: more than one launch can cover")
    with device_guard(dense.device):
        sorted_rows, perm = torch.sort(indices[0], stable=True)
        _densify_rows_kernel[(nnz, col_blocks)](
            dense, values, sorted_rows, perm, nnz, n_rows, width,
            ACC_DTYPE=tl.float64 if values.dtype == torch.float64 else tl.float32,
            BLOCK_W=block_w, num_warps=num_warps, enable_fp_fusion=FP_FUSION)
    return dense


# Programs on axis 0 of the sparse sum of squares by default (times the column blocks of a
# row): enough for a GPU to overlap the per-position latency chains (sorted id, permutation,
# gradient row), few enough that the finalize reads them at once (16 KB of float32 partials).
SPARSE_NORM_ROW_PROGRAMS = 4096


def _row_geometry(shape) -> tuple[int, int, int, int]:
    """``(n_rows, width, BLOCK_W, num_warps)`` of a table of ``shape`` (dim 0 the rows)."""
    n_rows = int(shape[0])
    width = 1
    for d in shape[1:]:
        width *= int(d)
    block_w, num_warps = row_block_config(width)
    return n_rows, width, block_w, num_warps


def sparse_sum_squares_size(shape, *, row_programs: int | None = None) -> int:
    """The number of partials ``sparse_sum_squares_`` writes for a gradient of ``shape`` (the
    param's shape): ``row_programs`` times the column blocks of a row (``row_block_config``).

    The default, ``min(SPARSE_NORM_ROW_PROGRAMS, n_rows)`` (at least 1), depends only on the
    shape: the caller reserves a fixed slice of its partials buffer for the tensor and builds
    the finalize tables once, whatever the number of entries of each step's gradient.
    ``row_programs=grad._nnz()`` gives one program per entry (the most parallel; the count
    then follows every step's nnz, and so must the slice and the finalize tables).
    """
    n_rows, width, block_w, _ = _row_geometry(shape)
    if row_programs is None:
        row_programs = max(1, min(SPARSE_NORM_ROW_PROGRAMS, n_rows))
    if not isinstance(row_programs, int) or row_programs < 0:
        raise ValueError(f"sparse_sum_squares_size: row_programs must be a non-negative int, "
                         f"got {row_programs!r}")
    return row_programs * max(1, triton.cdiv(width, block_w))


def sparse_sum_squares_(grad: torch.Tensor, partials: torch.Tensor) -> None:
    """Write the sum of squares of a row-sparse gradient into ``partials``, for the norm of a
    clip: per-program partial sums whose total is

        sum over the distinct ids r in [0, n_rows) of || sum of grad's entries of row r ||^2

    i.e. each present row counts once, after its duplicates are summed, as Paddle takes the
    norm of a SelectedRows gradient (``merge_selected_rows`` then the squared L2 norm, in
    ``ClipGradByGlobalNorm`` and ``ClipGradByNorm``), and as the lazy update then sees the
    row. Ids outside ``[0, n_rows)`` are skipped, as in the update. A row's duplicates are
    summed as the update sums them (sparse-tensor order, in float32, float64 for float64
    values), then squared and accumulated in the dtype of ``partials`` (the accumulation
    dtype, ``norm.accumulation_dtype_for``). This is the norm of the densified gradient
    (``dense_grad``) too, up to its rounding of each row to the values' dtype.

    One device sort of the ids and one launch of ``partials.numel()`` programs (row programs
    x column blocks, see ``sparse_sum_squares_size``), deterministic (positions in a fixed
    order, one reduction per program, no atomics), no host sync. The result composes with
    ``norm.clip_scales_`` / ``norm.output_sums_``: pass a slice of the step's one partials
    buffer (``partials[off : off + sparse_sum_squares_size(param.shape)]``) and name that
    range in the finalize's segments, like a bucket's slice of ``sum_squares_tensor_list_``.
    An empty gradient writes zeros (no kernel).

    Args:
        grad: sparse COO tensor with one sparse dimension (rows), as for
            ``sparse_adam_update_``; values float32, float64, float16 or bfloat16.
        partials: contiguous 1-D float32 or float64 (float64 for float64 values) tensor on the
            gradient's device, of a multiple of the row's column blocks; its size sets the
            number of row programs (``sparse_sum_squares_size``).
    """
    where = "sparse_sum_squares_"
    check_interpretable(grad.device)  # first: the checks below read the tensors' metadata
    _check(grad.layout == torch.sparse_coo, lambda: f"grad layout {grad.layout} is not "
           "torch.sparse_coo", where)
    _check(grad.sparse_dim() == 1 and grad.dim() >= 1, lambda: f"grad has "
           f"{grad.sparse_dim()} sparse dimensions, expected 1 (sparse rows, dense rest)", where)
    indices = grad._indices()
    values = grad._values()
    _check(indices.dtype == torch.int64, lambda: f"grad indices dtype {indices.dtype} is not "
           "int64", where)
    _check(values.dtype in FLOAT_DTYPES, lambda: f"grad values dtype {values.dtype} is not "
           "one of float32, float64, float16, bfloat16", where)
    _check(values.is_contiguous(), lambda: "grad values are not contiguous", where)
    _check(partials.dtype in ACC_DTYPES and partials.dim() == 1 and partials.is_contiguous(),
           lambda: f"partials must be a contiguous 1-D float32/float64 buffer, got "
           f"{partials.dtype} {tuple(partials.shape)}", where)
    _check(values.dtype != torch.float64 or partials.dtype == torch.float64, lambda:
           "float64 gradients need float64 partials (Paddle sums their squares in float64)",
           where)
    _check(partials.device == grad.device, lambda: f"partials are on {partials.device}, grad "
           f"on {grad.device}", where)
    nnz = indices.shape[1]  # host metadata of the sparse tensor: no sync
    n_rows, width, block_w, num_warps = _row_geometry(grad.shape)
    col_blocks = max(1, triton.cdiv(width, block_w))
    n_partials = partials.shape[0]
    row_programs = n_partials // col_blocks
    _check(n_partials % col_blocks == 0 and (row_programs >= 1 or nnz == 0), lambda:
           f"partials has {n_partials} entries: expected a positive multiple of the "
           f"{col_blocks} column blocks of a row (sparse_sum_squares_size)", where)
    _check(row_programs <= MAX_GRID_0 and col_blocks <= MAX_GRID_1
           and n_partials < 2**31, lambda: f"{row_programs} x {col_blocks} programs: more "
           "than one launch can cover", where)
    if n_partials == 0:
        return
    if nnz == 0:
        partials.zero_()
        return
    with device_guard(grad.device):
        sorted_rows, perm = torch.sort(indices[0], stable=True)
        _sparse_sum_squares_kernel[(row_programs, col_blocks)](
            values, sorted_rows, perm, partials, nnz, n_rows, width, row_programs,
            **sparse_sum_squares_constexprs(values_dtype=values.dtype,
                                            acc_dtype=partials.dtype, block_w=block_w),
            num_warps=num_warps,
            enable_fp_fusion=FP_FUSION,
        )


def sparse_sum_squares_constexprs(*, values_dtype: torch.dtype, acc_dtype: torch.dtype,
                                  block_w: int) -> dict:
    """The constexpr arguments of one sparse sum-of-squares specialization (shared with the
    compile check)."""
    return dict(SUM_DTYPE=tl.float64 if values_dtype == torch.float64 else tl.float32,
                ACC_DTYPE=TRITON_DTYPES[acc_dtype], BLOCK_W=int(block_w))
