"""Gradient norms for clipping: a multi-tensor sum-of-squares pass and a finalize kernel.

Two launches give every clip scale of a step on the device, deterministically (no atomics: each
value is reduced by one program in an order fixed by the tables, so every run gives the same
bits) and without a host sync:

1. ``sum_squares_tensor_list_`` (kernel ``_sum_squares_kernel``), once per bucket. It reads the
   same tables as the multi-tensor Adam kernel (``kernels/adam.py``): the int64 tensor table
   ``[n_tensors, TABLE_WIDTH]`` (it reads only ``COL_GRAD_ADDR`` and ``COL_NUMEL``) and an int32
   chunk table ``[n_chunks, 2]`` of ``(tensor row, chunk index)``, chunks of ``chunk_size``
   elements: the Adam kernel's ``CHUNK_SIZE`` (its chunk table reused as is) or a multiple of
   ``BLOCK_SIZE`` such as ``NORM_CHUNK_SIZE`` for a norm-only table with fewer rows. Program
   ``i`` writes the sum of squares of chunk ``i`` to ``partials[i]``, accumulated in the dtype
   of ``partials`` (the *accumulation dtype*). Full blocks are loaded unmasked (16-byte vector
   loads when the launcher is told the addresses are aligned), the last partial block of a
   tensor masked. The tables are the caller's, built once; the pass adds one read of every
   gradient to the step (+4 B/param for fp32 grads, +2 for bf16), its only traffic besides
   one partial per chunk.
2. ``clip_scales_`` (kernel ``_clip_finalize_kernel``), once per step. One program per
   *output* (a clip group, or one tensor for ``ClipGradByNorm``) sums a list of partial ranges
   in a fixed order, takes the square root and writes the output's norm and clip scale.
   With gradients sharded over ranks (FSDP2), the same kernel runs in two halves (constexpr
   ``PHASE``): ``output_sums_`` writes each output's local sum of squares, the caller
   all-reduces that ``[n_outputs]`` vector (a device collective, no host sync), and
   ``scales_from_sums_`` takes the root and the scales from the global sums.

Layout (``finalize_tables`` builds the tables on the host; like the chunk tables they change
only when the set of tensors with a gradient changes, never with the values):

* **partials**: one flat 1-D buffer per step in the accumulation dtype of the *whole* norm:
  float64 if any gradient that enters it is float64, else float32 (Paddle sums the squares in
  float32 unless a float64 gradient is present). Each bucket's pass writes its own contiguous
  slice ``partials[off_b : off_b + n_chunks_b]`` (pass the slice view to the launcher); so a
  float32 bucket and a float64 bucket combine into one global norm, the float32 grads then
  accumulated in float64 (exact squares, more accurate than Paddle's float32 sum).
* **segments**: int64 ``[n_segments, 2]`` of ``(start, end)`` indices into ``partials``: a range
  of consecutive chunks of one bucket (the chunks of one tensor, or of one group's tensors, are
  consecutive when the chunk table lists them so).
* **outputs**: int64 ``[n_outputs, OUT_WIDTH]`` of ``(first segment, end segment, mode, 0)``:
  output ``o`` owns segments ``outputs[o, 0] <= s < outputs[o, 1]`` (CSR), summed in that order.
* **clip_norms**: float64 ``[n_outputs]``: the ``clip_norm`` of each output, a runtime value
  (cast to the accumulation dtype in the kernel, as Paddle casts it to the sum's dtype).
* **norms**, **scales**: ``[n_outputs]`` in the accumulation dtype, written by the finalize.

A finalize program reads its partials sequentially (masked scalar loads, 1024 per iteration):
cheap for ``NORM_CHUNK_SIZE`` chunks (427k partials, 1.7 MB, for 7B float32 parameters in one
group), 16x more with the one-block chunks of the Adam chunk table; prefer a norm chunk table
for large models.

How the optimizer maps Paddle's clips onto it:

* flat ``ClipGradByGlobalNorm``: one output (``MODE_GLOBAL`` or ``MODE_GLOBAL_AUTO_SKIP``) with
  one segment per bucket (that bucket's whole slice); every clipped tensor uses ``scales[0]``.
* parameter groups: one output per group that has a global-norm clip; its segments are the
  group's chunk ranges in each bucket (list a bucket's tensors group by group, so each
  group's chunks are one range per bucket).
* ``ClipGradByNorm``: one output per clipped tensor (``MODE_BY_NORM``), one segment each (the
  tensor's chunks). Global and per-tensor outputs can share one partials buffer and one
  finalize launch: a chunk's partial may be read by several outputs. (Paddle computes a
  float32 tensor's norm in float32; in a float64 partials buffer it is float64, more exact.
  Paddle 3.3.1 has no float64 ``clip_by_norm`` kernel at all; float64 tensors work here.)
  Paddle raises at clip time unless ``clip_norm > 0``: the kernel cannot, so the optimizer
  must check the configuration on the host (``ClipGradByNorm.check``).
* Sparse (row COO) gradients: ``kernels.lazy.sparse_sum_squares_`` writes their sums of
  squares (each row once, after its duplicates are summed) into a slice of the same partials
  buffer, ``kernels.lazy.sparse_sum_squares_size(param.shape)`` entries (fixed per shape, so
  the segments built once stay valid whatever each step's number of entries); its range is a
  segment like a bucket's slice.
* Tensors with ``need_clip=False`` (or without a clip) must not enter a norm: give the norm pass
  a chunk table of the clipped tensors only (the Adam chunk table itself when every active
  tensor is clipped). Inactive tensors (grad None, ``COL_GRAD_ADDR`` 0) must not appear in it.

The scale is what multiplies the gradient (``g * scale``, cast to the compute dtype), matching
``paddle.nn.ClipGradBy*`` including non-finite norms (``docs/paddle-compatibility.md``
section 3, and ``triton_adam/clip.py`` for the readable spec):

* ``MODE_GLOBAL``: ``c / max(norm, c)``, with ``max`` propagating NaN as ``paddle.maximum``
  does: an inf norm gives 0, a NaN norm gives NaN.
* ``MODE_GLOBAL_AUTO_SKIP``: ``c / norm`` if ``norm > c`` else 1: an inf norm gives 0, a NaN
  norm gives 1 (Paddle skips the multiply).
* ``MODE_BY_NORM``: 1 if ``norm <= c`` else ``c / norm``: inf gives 0, NaN gives NaN.

The division and square root are the IEEE round-to-nearest ones (``tl.div_rn``, ``tl.sqrt_rn``;
Triton's ``/`` and ``tl.sqrt`` are approximate for float32 on NVIDIA GPUs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import triton
import triton.language as tl

from .common import (
    ACC_DTYPES,
    BLOCK_SIZE,
    CHUNK_INDEX_C,
    CHUNK_SIZE,
    CHUNK_TABLE_WIDTH,
    CHUNK_TABLE_WIDTH_C,
    CHUNK_TENSOR_C,
    COL_GRAD_ADDR_C,
    COL_NUMEL_C,
    FP_FUSION,
    NUM_WARPS,
    TABLE_WIDTH,
    TABLE_WIDTH_C,
    TRITON_DTYPES,
    device_guard,
    div_rn,
    sqrt_rn,
    upload,
)

__all__ = [
    "MODE_GLOBAL", "MODE_GLOBAL_AUTO_SKIP", "MODE_BY_NORM", "OUT_WIDTH", "FINALIZE_BLOCK",
    "NORM_CHUNK_SIZE", "accumulation_dtype_for", "sum_squares_tensor_list_", "clip_scales_",
    "finalize_tables", "sum_squares_constexprs", "finalize_constexprs", "output_sums_",
    "scales_from_sums_", "PHASE_ALL", "PHASE_SUMS", "PHASE_SCALES",
]

# What a finalize launch does (its constexpr PHASE): everything at once (one process, DDP),
# or one of the two halves of a distributed norm, between which the caller all-reduces the
# per-output sums of squares over the ranks (FSDP2 shards: triton_adam.distributed).
PHASE_ALL = 0  # partials -> norms and scales (clip_scales_)
PHASE_SUMS = 1  # partials -> each output's sum of squares, into norms (output_sums_)
PHASE_SCALES = 2  # (all-reduced) sums of squares -> norms in place, and scales

# Clip modes of an output (column OUT_MODE of the outputs table).
MODE_GLOBAL = 0  # ClipGradByGlobalNorm: c / max(norm, c)
MODE_GLOBAL_AUTO_SKIP = 1  # ClipGradByGlobalNorm(auto_skip_clip=True): c / norm if norm > c
MODE_BY_NORM = 2  # ClipGradByNorm, one output per tensor: 1 if norm <= c else c / norm

# Columns of the int64 outputs table.
OUT_SEG_BEGIN = 0  # first segment row of the output
OUT_SEG_END = 1  # one past its last segment row
OUT_MODE = 2  # MODE_*
OUT_WIDTH = 4  # padded: 32-byte rows
# Columns of the int64 segments table.
SEG_START = 0  # first partial of the range
SEG_END = 1  # one past its last partial
SEG_WIDTH = 2

# A coarser chunk for a norm-only chunk table: one partial per 16 blocks (a 7B-parameter model
# gives 427k partials, 1.7 MB in float32, for the finalize; the Adam chunk table, one block per
# chunk, gives 16x more).
NORM_CHUNK_SIZE = 16 * BLOCK_SIZE

# Partials one finalize program loads per iteration (4 warps: 8 per thread, 16-byte loads).
FINALIZE_BLOCK = 1024

# The same constants as seen from @triton.jit code (constexpr mirrors, as in kernels/common.py).
_OUT_WIDTH = tl.constexpr(OUT_WIDTH)
_OUT_SEG_BEGIN = tl.constexpr(OUT_SEG_BEGIN)
_OUT_SEG_END = tl.constexpr(OUT_SEG_END)
_OUT_MODE = tl.constexpr(OUT_MODE)
_SEG_START = tl.constexpr(SEG_START)
_SEG_END = tl.constexpr(SEG_END)
_SEG_WIDTH = tl.constexpr(SEG_WIDTH)
_MODE_GLOBAL = tl.constexpr(MODE_GLOBAL)
_MODE_BY_NORM = tl.constexpr(MODE_BY_NORM)
_PHASE_SUMS = tl.constexpr(PHASE_SUMS)
_PHASE_SCALES = tl.constexpr(PHASE_SCALES)


@triton.jit
def _chunk_squares(grad_ptr, chunk_start, n_elements, ACC_DTYPE: tl.constexpr,
                   BLOCK: tl.constexpr, BLOCKS_PER_CHUNK: tl.constexpr):
    """Per-lane sums of squares of the chunk of ``BLOCK * BLOCKS_PER_CHUNK`` elements that
    starts at ``chunk_start`` (``[BLOCK]`` values in ``ACC_DTYPE``)."""
    if BLOCKS_PER_CHUNK == 1:
        # A chunk is one block (the Adam chunk table): straight-line code, no loop.
        offs = chunk_start + tl.arange(0, BLOCK)
        if chunk_start + BLOCK <= n_elements:
            x = tl.load(grad_ptr + offs).to(ACC_DTYPE)  # full block: unmasked vector loads
        else:
            x = tl.load(grad_ptr + offs, mask=offs < n_elements, other=0.0).to(ACC_DTYPE)
        acc = x * x
    else:
        chunk_end = tl.minimum(chunk_start + BLOCK * BLOCKS_PER_CHUNK, n_elements)
        full_end = chunk_start + ((chunk_end - chunk_start) // BLOCK) * BLOCK
        # One running sum per lane, reduced once at the end: a fixed order, so the same bits
        # on every run (and more accurate than one sequential sum).
        acc = tl.zeros([BLOCK], dtype=ACC_DTYPE)
        for block_start in range(chunk_start, full_end, BLOCK):
            # Full blocks: unmasked, so the loads stay 16-byte vectors.
            x = tl.load(grad_ptr + block_start + tl.arange(0, BLOCK)).to(ACC_DTYPE)
            acc += x * x
        if full_end < chunk_end:
            offs = full_end + tl.arange(0, BLOCK)
            x = tl.load(grad_ptr + offs, mask=offs < chunk_end, other=0.0).to(ACC_DTYPE)
            acc += x * x
    return acc


@triton.jit
def _sum_squares_kernel(
    tensor_table_ptr,  # *i64 [n_tensors, TABLE_WIDTH]: reads COL_GRAD_ADDR and COL_NUMEL
    chunk_table_ptr,  # *i32 [n_chunks, 2]: (tensor row, chunk index within the tensor)
    partials_ptr,  # *ACC [n_chunks]: receives each chunk's sum of squares
    GRAD_DTYPE: tl.constexpr,  # element type behind the grad addresses
    ACC_DTYPE: tl.constexpr,  # accumulation dtype (the element type of partials)
    ALIGNED: tl.constexpr,  # 16-byte loads for rows whose grad address allows it
    BLOCK: tl.constexpr,  # elements per inner iteration
    BLOCKS_PER_CHUNK: tl.constexpr,  # chunk size / BLOCK: inner iterations per chunk
):
    pid = tl.program_id(0)  # one program per chunk-table row: the grid is exactly n_chunks
    chunk_row = chunk_table_ptr + CHUNK_TABLE_WIDTH_C * pid
    t = tl.load(chunk_row + CHUNK_TENSOR_C)
    chunk = tl.load(chunk_row + CHUNK_INDEX_C).to(tl.int64)
    row = tensor_table_ptr + t.to(tl.int64) * TABLE_WIDTH_C
    grad_addr = tl.load(row + COL_GRAD_ADDR_C)
    grad_ptr = grad_addr.to(tl.pointer_type(GRAD_DTYPE))
    n_elements = tl.load(row + COL_NUMEL_C)
    chunk_start = chunk * (BLOCK * BLOCKS_PER_CHUNK)  # int64 offsets: tensors beyond 2^31 exist
    # Each row decides on the device whether its address allows 16-byte loads (a table load
    # carries no alignment): one unaligned gradient does not slow down the others.
    vector = False
    if ALIGNED:
        vector = (grad_addr & 15) == 0
    if vector:
        acc = _chunk_squares(tl.multiple_of(grad_ptr, 16), chunk_start, n_elements, ACC_DTYPE,
                             BLOCK, BLOCKS_PER_CHUNK)
    else:
        acc = _chunk_squares(grad_ptr, chunk_start, n_elements, ACC_DTYPE, BLOCK,
                             BLOCKS_PER_CHUNK)
    tl.store(partials_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _clip_finalize_kernel(
    partials_ptr,  # *ACC: sums of squares, written by the sum-of-squares passes
    segments_ptr,  # *i64 [n_segments, 2]: (start, end) ranges of partials
    outputs_ptr,  # *i64 [n_outputs, OUT_WIDTH]: (first segment, end segment, mode, 0)
    clip_norms_ptr,  # *f64 [n_outputs]: clip_norm of each output
    norms_ptr,  # *ACC [n_outputs]: receives the norm
    scales_ptr,  # *ACC [n_outputs]: receives the clip scale
    ACC_DTYPE: tl.constexpr,  # accumulation dtype (the element type of partials)
    BLOCK: tl.constexpr,  # partials per inner iteration
    PHASE: tl.constexpr = 0,  # PHASE_ALL, PHASE_SUMS or PHASE_SCALES
):
    o = tl.program_id(0).to(tl.int64)
    row = outputs_ptr + o * _OUT_WIDTH
    if PHASE == _PHASE_SCALES:
        # The sum of squares was reduced by PHASE_SUMS (then all-reduced over the ranks):
        # partials and segments are not read.
        total = tl.load(norms_ptr + o)
    else:
        seg_begin = tl.load(row + _OUT_SEG_BEGIN)
        seg_end = tl.load(row + _OUT_SEG_END)
        acc = tl.zeros([BLOCK], dtype=ACC_DTYPE)
        for s in range(seg_begin, seg_end):
            start = tl.load(segments_ptr + _SEG_WIDTH * s + _SEG_START)
            end = tl.load(segments_ptr + _SEG_WIDTH * s + _SEG_END)
            for i in range(start, end, BLOCK):
                offs = i + tl.arange(0, BLOCK)
                acc += tl.load(partials_ptr + offs, mask=offs < end, other=0.0)
        total = tl.sum(acc, axis=0)
    if PHASE == _PHASE_SUMS:
        # The same reduction, in the same order, as PHASE_ALL: its sum, not yet its root.
        tl.store(norms_ptr + o, total)
        return
    mode = tl.load(row + _OUT_MODE)
    norm = sqrt_rn(total)
    c = tl.load(clip_norms_ptr + o).to(ACC_DTYPE)

    # MODE_GLOBAL: c / max(norm, c), NaN-propagating like paddle.maximum (c >= NaN is false).
    global_scale = div_rn(c, tl.where(c >= norm, c, norm))
    # MODE_GLOBAL_AUTO_SKIP clips when norm > c (NaN: no); MODE_BY_NORM unless norm <= c (NaN:
    # yes). The denominator of a non-clipping output is set to 1 to keep the division finite.
    clip = tl.where(mode == _MODE_BY_NORM, (norm <= c) == 0, norm > c)
    cond_scale = tl.where(clip, div_rn(c, tl.where(clip, norm, 1.0)), 1.0)
    scale = tl.where(mode == _MODE_GLOBAL, global_scale, cond_scale)
    tl.store(norms_ptr + o, norm)
    tl.store(scales_ptr + o, scale)




def accumulation_dtype_for(grad_dtypes: Sequence[torch.dtype]) -> torch.dtype:
    """The accumulation dtype of a norm over gradients of ``grad_dtypes``: float64 if any is
    float64 (as Paddle), else float32 (also for fp16/bf16 gradients)."""
    return torch.float64 if torch.float64 in grad_dtypes else torch.float32


def _check(cond: bool, where: str, message: Callable[[], str]) -> None:
    # The message is built only on failure (these checks run on every launch).
    if not cond:
        raise ValueError(f"{where}: {message()}")


def sum_squares_constexprs(*, grad_dtype: torch.dtype, acc_dtype: torch.dtype,
                           aligned: bool, chunk_size: int = CHUNK_SIZE) -> dict:
    """The constexpr arguments of one sum-of-squares specialization (shared with the compile
    check)."""
    return dict(GRAD_DTYPE=TRITON_DTYPES[grad_dtype], ACC_DTYPE=TRITON_DTYPES[acc_dtype],
                ALIGNED=bool(aligned), BLOCK=BLOCK_SIZE,
                BLOCKS_PER_CHUNK=chunk_size // BLOCK_SIZE)


def finalize_constexprs(*, acc_dtype: torch.dtype, phase: int = PHASE_ALL) -> dict:
    """The constexpr arguments of one finalize specialization (shared with the compile
    check); ``phase`` is ``PHASE_ALL`` (``clip_scales_``), ``PHASE_SUMS`` (``output_sums_``)
    or ``PHASE_SCALES`` (``scales_from_sums_``)."""
    if phase not in (PHASE_ALL, PHASE_SUMS, PHASE_SCALES):
        raise ValueError(f"finalize_constexprs: unknown phase {phase!r}")
    return dict(ACC_DTYPE=TRITON_DTYPES[acc_dtype], BLOCK=FINALIZE_BLOCK, PHASE=phase)


def sum_squares_tensor_list_(
    tensor_table: torch.Tensor,
    chunk_table: torch.Tensor,
    partials: torch.Tensor,
    *,
    grad_dtype: torch.dtype,
    aligned: bool,
    chunk_size: int = CHUNK_SIZE,
) -> None:
    """Write the sum of squares of every chunk of ``chunk_table`` to ``partials``, one launch.

    The tables are built and kept valid by the caller, as for ``adam_update_tensor_list_``:
    the kernel dereferences the gradient addresses of ``tensor_table`` unchecked. This launcher
    checks only its arguments (shapes, dtypes, devices), in constant time, without a host sync.

    Args:
        tensor_table: int64 ``[n_tensors, TABLE_WIDTH]``; only ``COL_GRAD_ADDR`` and
            ``COL_NUMEL`` are read, and only on the rows the chunk table names.
        chunk_table: int32 ``[n_chunks, 2]``: ``(tensor row, chunk index)``, chunks of
            ``chunk_size`` elements; every row must name a chunk of a tensor that has a
            gradient (a nonzero ``COL_GRAD_ADDR``) and enters the norm.
        partials: contiguous 1-D ``[n_chunks]`` buffer, float32 or float64 (the accumulation
            dtype, see ``accumulation_dtype_for``); ``partials[i]`` receives the sum of squares
            of chunk ``i``. Usually a slice of the step's one partials buffer.
        grad_dtype: the element type behind the gradient addresses (fp16, bf16, fp32, fp64).
        aligned: 16-byte loads for every row whose gradient address is a multiple of 16
            bytes (checked per row, on the device); False compiles scalar loads only.
        chunk_size: elements per chunk-table row, a positive multiple of ``BLOCK_SIZE``. The
            default is the Adam kernel's ``CHUNK_SIZE``, so its chunk table can be reused; a
            coarser norm chunk table (e.g. ``NORM_CHUNK_SIZE``) gives fewer partials for the
            finalize to reduce.
    """
    where = "sum_squares_tensor_list_"
    _check(isinstance(chunk_size, int) and chunk_size > 0 and chunk_size % BLOCK_SIZE == 0,
           where, lambda: f"chunk_size must be a positive multiple of {BLOCK_SIZE}, got "
           f"{chunk_size!r}")
    _check(grad_dtype in TRITON_DTYPES, where, lambda: f"unsupported grad dtype {grad_dtype}")
    _check(partials.dtype in ACC_DTYPES, where, lambda:
           f"partials must be float32 or float64, got {partials.dtype}")
    _check(grad_dtype != torch.float64 or partials.dtype == torch.float64, where, lambda:
           "float64 gradients need float64 partials (Paddle sums their squares in float64)")
    _check(tensor_table.dtype == torch.int64 and tensor_table.dim() == 2
           and tensor_table.shape[1] == TABLE_WIDTH and tensor_table.is_contiguous(), where,
           lambda: f"tensor_table must be contiguous int64 [n, {TABLE_WIDTH}], got "
           f"{tensor_table.dtype} {tuple(tensor_table.shape)}")
    _check(chunk_table.dtype == torch.int32 and chunk_table.dim() == 2
           and chunk_table.shape[1] == CHUNK_TABLE_WIDTH and chunk_table.is_contiguous(), where,
           lambda: f"chunk_table must be contiguous int32 [n, {CHUNK_TABLE_WIDTH}], got "
           f"{chunk_table.dtype} "
           f"{tuple(chunk_table.shape)}")
    n_chunks = chunk_table.shape[0]
    _check(partials.dim() == 1 and partials.shape[0] == n_chunks and partials.is_contiguous(),
           where, lambda: f"partials must be a contiguous 1-D buffer of the {n_chunks} chunks, "
           f"got shape {tuple(partials.shape)}")
    device = partials.device
    for name, t in (("tensor_table", tensor_table), ("chunk_table", chunk_table)):
        _check(t.device == device, where, lambda: f"{name} is on {t.device}, partials on {device}")
    if n_chunks == 0:
        return
    with device_guard(partials.device):
        _sum_squares_kernel[(n_chunks,)](
            tensor_table, chunk_table, partials,
            **sum_squares_constexprs(grad_dtype=grad_dtype, acc_dtype=partials.dtype,
                                     aligned=aligned, chunk_size=chunk_size),
            num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION,
        )


def _check_reduction_tables(where: str, partials: torch.Tensor, segments: torch.Tensor,
                            outputs: torch.Tensor) -> int:
    """The checks every finalize launcher makes on its partials and tables; returns the
    number of outputs."""
    acc = partials.dtype
    _check(acc in ACC_DTYPES and partials.dim() == 1 and partials.is_contiguous(), where,
           lambda: f"partials must be a contiguous 1-D float32/float64 buffer, got {acc} "
           f"{tuple(partials.shape)}")
    _check(segments.dtype == torch.int64 and segments.dim() == 2
           and segments.shape[1] == SEG_WIDTH and segments.is_contiguous(), where, lambda:
           f"segments must be contiguous int64 [n, {SEG_WIDTH}], got {segments.dtype} "
           f"{tuple(segments.shape)}")
    return _check_outputs_table(where, outputs)


def _check_outputs_table(where: str, outputs: torch.Tensor) -> int:
    """The outputs table's checks; returns the number of outputs."""
    _check(outputs.dtype == torch.int64 and outputs.dim() == 2
           and outputs.shape[1] == OUT_WIDTH and outputs.is_contiguous(), where, lambda:
           f"outputs must be contiguous int64 [n, {OUT_WIDTH}], got {outputs.dtype} "
           f"{tuple(outputs.shape)}")
    return outputs.shape[0]


def _check_output_vectors(where: str, n_outputs: int,
                          vectors: Sequence[tuple[str, torch.Tensor, torch.dtype]]) -> None:
    """Each per-output vector is a contiguous ``[n_outputs]`` tensor of its dtype."""
    for name, t, dtype in vectors:
        _check(t.dtype == dtype and tuple(t.shape) == (n_outputs,) and t.is_contiguous(), where,
               lambda: f"{name} must be contiguous {dtype} [{n_outputs}], got {t.dtype} "
               f"{tuple(t.shape)}")


def _check_devices(where: str, anchor: str, device: torch.device,
                   tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
    for name, t in tensors:
        _check(t.device == device, where, lambda: f"{name} is on {t.device}, {anchor} on {device}")


def clip_scales_(
    partials: torch.Tensor,
    segments: torch.Tensor,
    outputs: torch.Tensor,
    clip_norms: torch.Tensor,
    norms: torch.Tensor,
    scales: torch.Tensor,
) -> None:
    """Reduce ``partials`` into one norm and clip scale per output, one launch, on the device.

    Output ``o`` sums ``partials[start:end]`` for each segment ``(start, end)`` of its rows
    ``outputs[o, 0] <= s < outputs[o, 1]`` of ``segments``, in that order, takes the square
    root and applies its mode (``MODE_*``, see the module docstring). The indices in the tables
    are the caller's (``finalize_tables`` builds them); they are not checked here, which would
    need a host sync.

    Args:
        partials: contiguous 1-D float32 or float64 buffer (the accumulation dtype), filled by
            ``sum_squares_tensor_list_``.
        segments: int64 ``[n_segments, 2]`` ``(start, end)`` ranges of ``partials``.
        outputs: int64 ``[n_outputs, OUT_WIDTH]`` ``(first segment, end segment, mode, 0)``.
        clip_norms: float64 ``[n_outputs]``: each output's ``clip_norm`` (runtime values; the
            kernel casts them to the accumulation dtype, as Paddle does).
        norms, scales: ``[n_outputs]`` in the accumulation dtype: receive the norm and the
            scale that multiplies the gradients of the output's tensors.
    """
    where = "clip_scales_"
    acc = partials.dtype
    n_outputs = _check_reduction_tables(where, partials, segments, outputs)
    expected = [("clip_norms", clip_norms, torch.float64), ("norms", norms, acc),
                ("scales", scales, acc)]
    _check_output_vectors(where, n_outputs, expected)
    _check(norms.data_ptr() != scales.data_ptr() or n_outputs == 0, where,
           lambda: "norms and scales must differ")
    _check_devices(where, "partials", partials.device,
                   [("segments", segments), ("outputs", outputs)] + [e[:2] for e in expected])
    if n_outputs == 0:
        return
    with device_guard(partials.device):
        _clip_finalize_kernel[(n_outputs,)](
            partials, segments, outputs, clip_norms, norms, scales,
            **finalize_constexprs(acc_dtype=acc),
            num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION,
        )


def finalize_tables(
    outputs: Sequence[tuple[Sequence[tuple[int, int]], int]],
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the ``segments`` and ``outputs`` tables of ``clip_scales_`` on the host (once).

    Args:
        outputs: per output, ``(ranges, mode)``: ``ranges`` the ``(start, end)`` partial ranges
            summed into its norm, in that order (an empty list gives norm 0), ``mode`` one of
            ``MODE_GLOBAL``, ``MODE_GLOBAL_AUTO_SKIP``, ``MODE_BY_NORM``.
        device: where the tables live (the device of the partials).

    Returns:
        ``(segments, outputs)``: int64 ``[n_segments, 2]`` and int64 ``[n_outputs, OUT_WIDTH]``.
    """
    seg_rows: list[list[int]] = []
    out_rows: list[list[int]] = []
    for ranges, mode in outputs:
        if mode not in (MODE_GLOBAL, MODE_GLOBAL_AUTO_SKIP, MODE_BY_NORM):
            raise ValueError(f"finalize_tables: unknown clip mode {mode!r}")
        first = len(seg_rows)
        for start, end in ranges:
            if not 0 <= start <= end:
                raise ValueError(f"finalize_tables: bad partial range ({start}, {end})")
            seg_rows.append([int(start), int(end)])  # SEG_START, SEG_END
        # OUT_SEG_BEGIN, OUT_SEG_END, OUT_MODE, padding
        out_rows.append([first, len(seg_rows), int(mode), 0])
    segments = np.asarray(seg_rows, dtype=np.int64).reshape(-1, SEG_WIDTH)
    out = np.asarray(out_rows, dtype=np.int64).reshape(-1, OUT_WIDTH)
    # Rebuilt whenever the set of clipped gradients changes: uploaded without a host sync.
    device = torch.device(device)
    return upload(segments, device), upload(out, device)


def output_sums_(partials: torch.Tensor, segments: torch.Tensor, outputs: torch.Tensor,
                 sums: torch.Tensor) -> None:
    """First half of a distributed finalize: ``sums[o]`` receives output ``o``'s sum of
    squares of ``partials``, reduced as ``clip_scales_`` reduces it (same segments, same
    order), without the square root. One launch, no host sync.

    The caller sums ``sums`` over the ranks (``triton_adam.distributed.all_reduce_sum_``) and
    then calls ``scales_from_sums_``. Tables and ``partials`` as for ``clip_scales_``;
    ``sums``: contiguous ``[n_outputs]`` in the accumulation dtype (``partials.dtype``).
    """
    where = "output_sums_"
    acc = partials.dtype
    n_outputs = _check_reduction_tables(where, partials, segments, outputs)
    _check_output_vectors(where, n_outputs, [("sums", sums, acc)])
    _check_devices(where, "partials", partials.device,
                   [("segments", segments), ("outputs", outputs), ("sums", sums)])
    if n_outputs == 0:
        return
    # clip_norms and scales are not read in this phase: sums stands in for both.
    with device_guard(partials.device):
        _clip_finalize_kernel[(n_outputs,)](
            partials, segments, outputs, sums, sums, sums,
            **finalize_constexprs(acc_dtype=acc, phase=PHASE_SUMS),
            num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION,
        )


def scales_from_sums_(sums: torch.Tensor, outputs: torch.Tensor, clip_norms: torch.Tensor,
                      scales: torch.Tensor) -> None:
    """Second half of a distributed finalize: from each output's sum of squares in ``sums``
    (summed over the ranks), write its norm into ``sums`` (in place: afterwards ``sums``
    holds the norms, as ``clip_scales_``'s ``norms``) and its clip scale into ``scales``,
    with the same square root and modes as ``clip_scales_``. One launch, no host sync.

    Args:
        sums: contiguous float32/float64 ``[n_outputs]`` (the accumulation dtype).
        outputs: the finalize's int64 ``[n_outputs, OUT_WIDTH]`` table (only the mode is read).
        clip_norms: float64 ``[n_outputs]``; scales: ``[n_outputs]`` in the accumulation dtype.
    """
    where = "scales_from_sums_"
    acc = sums.dtype
    n_outputs = _check_outputs_table(where, outputs)
    _check(acc in ACC_DTYPES, where, lambda: f"sums must be float32 or float64, got {acc}")
    _check_output_vectors(where, n_outputs, [("sums", sums, acc),
                                             ("clip_norms", clip_norms, torch.float64),
                                             ("scales", scales, acc)])
    _check(sums.data_ptr() != scales.data_ptr() or n_outputs == 0, where,
           lambda: "sums and scales must differ")
    _check_devices(where, "sums", sums.device,
                   [("outputs", outputs), ("clip_norms", clip_norms), ("scales", scales)])
    if n_outputs == 0:
        return
    # partials and segments are not read in this phase: sums and outputs stand in for them.
    with device_guard(sums.device):
        _clip_finalize_kernel[(n_outputs,)](
            sums, outputs, outputs, clip_norms, sums, scales,
            **finalize_constexprs(acc_dtype=acc, phase=PHASE_SCALES),
            num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION,
        )
