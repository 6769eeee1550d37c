"""Lazy (sparse-row) Adam / AdamW: update only the rows present in a sparse COO gradient.

Semantics (``../shared/paddle-adam-semantics.md`` section 4, with its **Decision**: Paddle's GPU
kernel, not its CPU sparse kernel). The parameter is viewed as a table ``[n_rows, width]``
(dim 0 is the row, the other dims are flattened into ``width``); the gradient is a sparse COO
tensor with one sparse dimension, as ``torch.nn.Embedding(sparse=True)`` produces:
``indices`` int64 ``[1, nnz]``, possibly unsorted and with duplicates, and ``values``
``[nnz, *param.shape[1:]]``. For every distinct row ``r`` among the indices::

    g[r]  = sum of values[i] over the i with indices[i] == r       (in sparse-tensor order)
    p[r], m[r], v[r], vmax[r] = the dense update of section 1 on that row (the same
            ``_adam_math`` as kernels/adam.py: coupled L2/L1 decay, AdamW, AMSGrad, bias
            correction with the stored pows beta^t, epsilon scaled as in the GPU kernel)
    b1p, b2p = b1p * beta1, b2p * beta2                           (once per step, per tensor)

Rows absent from the gradient are not touched at all: neither the param nor any accumulator
is read or written. An empty gradient (``nnz == 0``) launches nothing: no update, no pow
advance (Paddle returns early in that case). ``lazy_mode=False`` with a sparse gradient is the
dense update of the densified gradient: ``dense_grad(grad)`` (duplicates summed in a fixed
order, deterministic on a GPU too) then ``kernels.adam.adam_update_``.

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
  gradient 16 + 14), half without master 12 + 10; +4 B (fp32 gradient) or +2 B (half) per
  duplicate; all 16-byte vector accesses when ``width % 16 == 0``; no spills.
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

from .common import check_interpretable, device_guard
from .adam import (
    FP_FUSION,
    HYPER_BETA1,
    HYPER_BETA2,
    HYPER_WIDTH,
    _adam_math,
    _round_to,
    _step_scalars,
    compute_dtype_for,
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


# The hyper-row columns as seen from @triton.jit code (compiled kernels may read only
# constexpr globals).
_HYPER_BETA1 = tl.constexpr(HYPER_BETA1)
_HYPER_BETA2 = tl.constexpr(HYPER_BETA2)

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


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
    master_ptr,  # *fp32 [n_rows, width]: fp32 master weights (MASTER only; else any pointer)
    values_ptr,  # *G [nnz, width]: the gradient rows, in the sparse tensor's (unsorted) order
    sorted_rows_ptr,  # *i64 [nnz]: the row ids sorted ascending (stable sort)
    perm_ptr,  # *i64 [nnz]: perm[k] is the position in values of sorted_rows[k]
    exp_avg_ptr,  # *C [n_rows, width]: moment1, updated in place; its dtype is the compute dtype
    exp_avg_sq_ptr,  # *C [n_rows, width]: moment2, updated in place
    max_exp_avg_sq_ptr,  # *C [n_rows, width]: moment2_max (AMSGRAD only; else any pointer)
    hyper_ptr,  # *C [HYPER_WIDTH]: the tensor's hyper-parameter row (HYPER_* columns)
    pows_in_ptr,  # *C [2]: (beta1^t, beta2^t) used by this step, read by every program
    pows_out_ptr,  # *C [2]: receives the advanced pows, written by program (0, 0) only
    lr: tl.float64,  # the step's learning rate (per step: never constexpr)
    nnz,  # entries of the sparse gradient = programs on axis 0 (per step: not specialized)
    n_rows,  # rows of the table: ids outside [0, n_rows) are skipped
    width,  # elements per row (product of param.shape[1:])
    BLOCK_W: tl.constexpr,  # columns per program (axis 1 of the grid walks the blocks)
    AMSGRAD: tl.constexpr,  # keep and use moment2_max
    COUPLED_DECAY: tl.constexpr,  # g += l2 * p + l1 * sign(p) on the present rows
    DECOUPLED_DECAY: tl.constexpr,  # AdamW: p -= lr_t * wd * p on the present rows
    MASTER: tl.constexpr,  # p is read from and written to master_ptr; param gets it rounded
):
    compute_dtype = exp_avg_ptr.dtype.element_ty
    k = tl.program_id(0)  # position in the sorted ids
    col_block = tl.program_id(1)

    if (k == 0) & (col_block == 0):
        # Exactly one program advances the pows, into the other buffer: no race with the
        # programs still reading pows_in.
        tl.store(pows_out_ptr + 0, tl.load(pows_in_ptr + 0) * tl.load(hyper_ptr + _HYPER_BETA1))
        tl.store(pows_out_ptr + 1, tl.load(pows_in_ptr + 1) * tl.load(hyper_ptr + _HYPER_BETA2))

    row = tl.load(sorted_rows_ptr + k)  # int64
    prev = tl.load(sorted_rows_ptr + tl.maximum(k - 1, 0))
    is_head = (k == 0) | (prev != row)  # first of its run of equal ids
    if is_head & (row >= 0) & (row < n_rows):
        cols = col_block * BLOCK_W + tl.arange(0, BLOCK_W)
        mask = cols < width
        g = _run_sum(values_ptr, sorted_rows_ptr, perm_ptr, k, row, nnz, width, cols, mask,
                     compute_dtype)

        lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd = _step_scalars(
            hyper_ptr, pows_in_ptr, lr, compute_dtype)
        # The row's start in every table is an int64 scalar added to each pointer once; the
        # columns are int32 offsets from it (per-element int64 offsets cost registers).
        row_start = row * width
        if MASTER:
            p = tl.load(master_ptr + row_start + cols, mask=mask)
        else:
            p = tl.load(param_ptr + row_start + cols, mask=mask).to(compute_dtype)
        m = tl.load(exp_avg_ptr + row_start + cols, mask=mask)
        v = tl.load(exp_avg_sq_ptr + row_start + cols, mask=mask)
        if AMSGRAD:
            vmax = tl.load(max_exp_avg_sq_ptr + row_start + cols, mask=mask)
        else:
            vmax = v  # unused
        p, m, v, vmax = _adam_math(p, g, m, v, vmax, lr_t, step_size, inv_sqrt_bc2, beta1,
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
        if MASTER:
            tl.store(master_ptr + row_start + cols, p, mask=mask)
        tl.store(param_ptr + row_start + cols, _round_to(p, param_ptr.dtype.element_ty),
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
        tl.store(dense_ptr + row * width + cols, _round_to(g, dense_ptr.dtype.element_ty),
                 mask=mask)


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
                           decoupled_decay: bool, master: bool) -> dict:
    """The constexpr arguments of one specialization (shared with the compile check)."""
    return dict(
        BLOCK_W=int(block_w),
        AMSGRAD=bool(amsgrad),
        COUPLED_DECAY=bool(coupled_decay),
        DECOUPLED_DECAY=bool(decoupled_decay),
        MASTER=bool(master),
    )


def _check(cond: bool, message) -> None:
    # As in kernels/adam.py: the message is formatted only on failure.
    if not cond:
        raise ValueError(f"sparse_adam_update_: {message()}")


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
    lr: float,
    coupled_decay: bool,
    decoupled_decay: bool,
    master: torch.Tensor | None = None,
) -> bool:
    """Apply one lazy Adam step (only the rows present in ``grad``) to ``param`` in place.

    One device sort of the row ids and one kernel launch; no host sync. Returns True when it
    launched (the pows were advanced into ``pows_out``), False for an empty gradient, which
    changes nothing (``pows_out`` not written: the caller keeps using ``pows_in``).

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
        lr: the step's learning rate (a Python float, passed to the kernel as float64).
        coupled_decay: add ``l2 * p + l1 * sign(p)`` to the present rows' gradient.
        decoupled_decay: AdamW's ``p -= lr * lr_scale * wd * p`` on the present rows.
        master: fp32 master weights of a float16/bfloat16 param (contiguous, same numel), or
            None. With it the kernel reads p from the master, writes the master and the param
            rounded to nearest. Without it a half param is computed in fp32 from its own
            values (Paddle's behaviour without ``multi_precision``).
    """
    check_interpretable(param.device)
    _check(grad.layout == torch.sparse_coo, lambda: f"grad layout {grad.layout} is not "
           "torch.sparse_coo (a dense gradient takes kernels.adam.adam_update_)")
    _check(param.dtype in _FLOAT_DTYPES, lambda: f"param dtype {param.dtype} is not one of "
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
        _check(param.dtype in _HALF_DTYPES, lambda: f"master weights are for float16/bfloat16 "
               f"params, param is {param.dtype}")
        _check(master.dtype == torch.float32, lambda: f"master dtype {master.dtype} is not "
               "float32")
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

    nnz = indices.shape[1]  # host metadata of the sparse tensor: no sync
    n_rows = param.shape[0]
    width = param.numel() // n_rows if n_rows else 0
    block_w, num_warps = row_block_config(width)
    col_blocks = max(1, triton.cdiv(width, block_w))
    _check(nnz <= MAX_GRID_0, lambda: f"grad has {nnz} entries, more than {MAX_GRID_0}")
    _check(col_blocks <= MAX_GRID_1, lambda: f"rows of {width} elements need {col_blocks} "
           f"column blocks, more than {MAX_GRID_1}")
    if nnz == 0:
        return False

    with device_guard(param.device):
        # Same length in, same length out: no output size to read back, hence no sync.
        sorted_rows, perm = torch.sort(indices[0], stable=True)
        _lazy_adam_kernel[(nnz, col_blocks)](
            param, master if master is not None else param, values, sorted_rows, perm,
            exp_avg, exp_avg_sq, max_exp_avg_sq if max_exp_avg_sq is not None else exp_avg_sq,
            hyper, pows_in, pows_out,
            float(lr), nnz, n_rows, width,
            **lazy_kernel_constexprs(block_w=block_w, amsgrad=max_exp_avg_sq is not None,
                                     coupled_decay=coupled_decay,
                                     decoupled_decay=decoupled_decay, master=master is not None),
            num_warps=num_warps,
            enable_fp_fusion=FP_FUSION,
            **_register_budget(param.device),
        )
    return True


def check_launchable(param: torch.Tensor, grad: torch.Tensor) -> None:
    """Raise ``ValueError`` when the launch for ``grad`` would exceed the grid's limits (the
    launchers check the same; the optimizer checks it before any launch of a step)."""
    nnz = grad._nnz()
    n_rows = param.shape[0] if param.dim() else 0
    width = param.numel() // n_rows if n_rows else 0
    block_w, _ = row_block_config(width)
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
    _check(values.dtype in _FLOAT_DTYPES, lambda: f"grad values dtype {values.dtype} is not "
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
