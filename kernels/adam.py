"""The fused Adam / AdamW update: one pass over a contiguous range of elements.

Math (Paddle's GPU kernel, ``docs/paddle-compatibility.md`` section 1), per element, in the
compute dtype ``C`` (float64 for float64 params, float32 otherwise), with the per-tensor
hyper-parameters ``lr_scale, beta1, beta2, eps, l2, l1, wd`` and the stored pows
``b1p = beta1^t, b2p = beta2^t`` before the step::

    lr_t  = lr * lr_scale
    g     = grad + l2 * p + l1 * sign(p)            (COUPLED_DECAY: L2Decay / L1Decay)
    p     = p - lr_t * wd * p                       (DECOUPLED_DECAY: AdamW, pre-update p)
    m     = beta1 * m + (1 - beta1) * g
    v     = beta2 * v + (1 - beta2) * g * g
    vmax  = max(vmax, v)                            (AMSGRAD; raw v, not bias-corrected)
    denom = sqrt(vmax if AMSGRAD else v) / sqrt(1 - b2p) + eps
    p     = p - lr_t / (1 - b1p) * m / denom
    b1p, b2p = b1p * beta1, b2p * beta2             (written once, by program 0)

Every input is read once and every output written once: 16 bytes loaded and 12 stored per
fp32 element (plus 4 + 4 with AMSGRAD), the memory floor of the update.

Design notes, for the issues that build on this kernel:

* Per-step values never recompile. ``lr`` is a runtime scalar annotated ``tl.float64`` (so a
  float64 run gets a float64 learning rate; an unannotated Python float would arrive as fp32).
  Every other hyper-parameter is read from a small device row ``hyper`` in the compute dtype,
  which is also how one launch will serve many tensors with different hyper-parameters.
* The pows advance on the device without a race: all programs read ``pows_in`` and only
  program 0 writes ``pows_out``, a different buffer. The caller alternates the two slots of a
  per-tensor pow buffer between steps, which it can do without reading the device.
* Master weights, a gradient scale (clipping, AMP unscaling) and a skip-on-overflow flag are
  more loads and constexpr switches in ``_adam_block``/the kernel, not a second kernel.
  bf16 params with fp32 masters move g 2 + master 4 + m, v 8 in and p 2 + master 4 + m, v 8
  out (28 B); with ``MASTER_REMAINDER`` the master is the bf16 param plus an int16 remainder
  (``kernels/common.py``: ``join_master`` / ``split_master``), read and written as the pair:
  g 2 + p 2 + rem 2 + m, v 8 in, p 2 + rem 2 + m, v 8 out (26 B), the same master bits.
* bf16 moments (the moment buffers' dtype is bf16; the compute dtype, float32, is the hyper
  table's) are computed in fp32 and stored rounded stochastically, and ``STOCHASTIC_ROUNDING``
  writes a bf16 param (no master) the same way (``kernels/common.py``: ``philox_bits``,
  ``round_stochastic_bf16``). The random bits are keyed by the launch's ``rng_seed``, the
  tensor's step count (its pow slot's ``POW_STEP``, read on the device), its stream and the
  element's offset within the whole tensor (``rng_stream``, ``rng_offset``: arguments of the
  dense kernel, table columns of the multi-tensor one): both kernels draw the same bits.
* Boundaries: this module holds the dense and multi-tensor kernels and their launchers. The
  math, the gradient transform and the pow advance are ``kernels/update.py``'s (shared with
  the sparse-row kernel), the table layouts, dtype maps and IEEE helpers
  ``kernels/common.py``'s; the layout names are re-exported here (``HYPER_*``, ``COL_*``,
  ``TABLE_WIDTH``, ``POW_SLOT_WIDTH``, ``STATE_ALIGN``, ``BLOCK_SIZE``, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from .common import (  # the layout and configuration are re-exported: the engine reads them here
    lr_arguments,
    BLOCK_SIZE,
    CHUNK_SIZE,
    CHUNK_INDEX_C,
    CHUNK_TABLE_WIDTH,
    CHUNK_TABLE_WIDTH_C,
    CHUNK_TENSOR_C,
    COL_ACTIVE,
    COL_ACTIVE_C,
    COL_CLIP_INDEX,
    COL_RNG_OFFSET,
    COL_RNG_STREAM,
    COL_CLIP_INDEX_C,
    COL_RNG_OFFSET_C,
    COL_RNG_STREAM_C,
    COL_GRAD_ADDR,
    COL_GRAD_ADDR_C,
    COL_NUMEL,
    COL_NUMEL_C,
    COL_PARAM_ADDR,
    COL_PARAM_ADDR_C,
    COL_STATE_OFFSET,
    COL_STATE_OFFSET_C,
    FP_FUSION,
    HYPER_BETA1,
    HYPER_BETA1_C,
    HYPER_BETA2,
    HYPER_CLIP_MAX,
    HYPER_CLIP_MIN,
    HYPER_EPS,
    HYPER_L1,
    HYPER_L2,
    HYPER_LR_INDEX,
    HYPER_LR_SCALE,
    HYPER_SIGN,
    HYPER_WD,
    HYPER_WIDTH,
    HYPER_WIDTH_C,
    LOW_PRECISION,
    NUM_WARPS,
    POW_BETA1,
    POW_BETA1_C,
    POW_BETA2,
    POW_SLOT_WIDTH,
    POW_STEP,
    POW_STEP_C,
    POW_SLOT_WIDTH_C,
    STATE_ALIGN,
    STATE_ALIGN_C,
    TABLE_WIDTH,
    TABLE_WIDTH_C,
    TRITON_DTYPES,
    check_interpretable,
    compute_dtype_for,
    device_guard,
    grad_dtype_allowed,
    join_master,
    philox_bits,
    round_stochastic_bf16,
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

__all__ = [
    "adam_update_", "adam_update_tensor_list_", "kernel_constexprs", "tensor_list_constexprs",
    "compute_dtype_for", "grad_dtype_allowed", "POW_BLOCK", "SEED_LIMIT",
    # Re-exported from kernels/common.py (the launch configuration and table layouts):
    "BLOCK_SIZE", "NUM_WARPS", "CHUNK_SIZE", "FP_FUSION", "LOW_PRECISION", "HYPER_LR_SCALE",
    "HYPER_BETA1", "HYPER_BETA2", "HYPER_EPS", "HYPER_L2", "HYPER_L1", "HYPER_WD",
    "HYPER_CLIP_MIN", "HYPER_CLIP_MAX", "HYPER_SIGN", "HYPER_LR_INDEX", "HYPER_WIDTH",
    "POW_BETA1", "POW_BETA2", "POW_STEP", "POW_SLOT_WIDTH", "TABLE_WIDTH", "COL_PARAM_ADDR",
    "COL_GRAD_ADDR", "COL_NUMEL",
    "COL_STATE_OFFSET", "COL_ACTIVE", "COL_CLIP_INDEX", "COL_RNG_STREAM", "COL_RNG_OFFSET",
    "STATE_ALIGN",
]

# Tensors whose pows one program advances in the pow pass of the multi-tensor kernel.
POW_BLOCK = 128
# That pass walks the (beta, pow) pairs with one index: beta2 and its pow must follow beta1 and
# its pow in their layouts (kernels/common.py).
if HYPER_BETA2 != HYPER_BETA1 + 1 or POW_BETA2 != POW_BETA1 + 1:
    raise ImportError("kernels/adam.py: HYPER_BETA2 / POW_BETA2 must follow HYPER_BETA1 / "
                      "POW_BETA1")


@triton.jit
def _adam_block(
    param_ptr,
    grad_ptr,
    exp_avg_ptr,
    exp_avg_sq_ptr,
    max_exp_avg_sq_ptr,
    master_ptr,
    offs,
    mask,
    lr_t,
    step_size,
    inv_sqrt_bc2,
    beta1,
    beta2,
    eps,
    l2,
    l1,
    wd,
    g_scale,
    clip_lo,
    clip_hi,
    inv_grad_scale,
    sign,
    rng_seed,
    rng_step,
    rng_stream,
    rng_offset,
    AMSGRAD: tl.constexpr,
    COUPLED_DECAY: tl.constexpr,
    DECOUPLED_DECAY: tl.constexpr,
    CLIP_SCALE: tl.constexpr,
    CLIP_VALUE: tl.constexpr,
    MASTER: tl.constexpr,
    MASTER_REMAINDER: tl.constexpr,
    UNSCALE: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    STOCHASTIC_ROUNDING: tl.constexpr,
    compute_dtype: tl.constexpr,
):
    """Loads, updates and stores one block; ``mask`` is None on full blocks (vector access).

    Gradient clipping happens here, as the gradient is read (Paddle clips before it adds the
    regularizer): ``g * g_scale`` (a global or per-tensor norm clip, computed on the device)
    and the clamp to ``[clip_lo, clip_hi]`` (``ClipGradByValue``; NaN stays NaN).

    bf16 moment buffers are widened to ``compute_dtype`` as they are read and rounded
    stochastically as they are written; ``STOCHASTIC_ROUNDING`` writes the (bf16) param so.
    The random bits (``rng_seed``, ``rng_step``, ``rng_stream``, the offsets plus
    ``rng_offset``) are drawn only when used.
    """
    MOMENTS_BF16: tl.constexpr = exp_avg_ptr.dtype.element_ty == tl.bfloat16
    if MASTER_REMAINDER:
        # The fp32 master as a bf16 param and its int16 remainder (kernels/common.py): the
        # same fp32 value as MASTER reads, from 4 bytes instead of 4 + the param written.
        p = join_master(tl.load(param_ptr + offs, mask=mask), tl.load(master_ptr + offs,
                                                                       mask=mask))
    elif MASTER:
        # fp32 master weights of fp16/bf16 params: the update reads the master, never the
        # rounded param, and writes both.
        p = tl.load(master_ptr + offs, mask=mask)
    else:
        p = tl.load(param_ptr + offs, mask=mask).to(compute_dtype)
    g = tl.load(grad_ptr + offs, mask=mask).to(compute_dtype)
    # AMP unscale, then the norm clip's scale, then the value clip (kernels/update.py).
    g = prepare_grad(g, inv_grad_scale, g_scale, clip_lo, clip_hi, sign, UNSCALE, CLIP_SCALE,
                     CLIP_VALUE, MAXIMIZE)
    m = tl.load(exp_avg_ptr + offs, mask=mask).to(compute_dtype)
    v = tl.load(exp_avg_sq_ptr + offs, mask=mask).to(compute_dtype)
    if AMSGRAD:
        vmax = tl.load(max_exp_avg_sq_ptr + offs, mask=mask).to(compute_dtype)
    else:
        vmax = v  # unused
    p, m, v, vmax = adam_math(p, g, m, v, vmax, lr_t, step_size, inv_sqrt_bc2, beta1, beta2,
                              eps, l2, l1, wd, AMSGRAD, COUPLED_DECAY, DECOUPLED_DECAY)
    if MOMENTS_BF16 or STOCHASTIC_ROUNDING:
        # Drawn after the math, not before: four live random words across the division and
        # square root made the fp32 + bf16-moments kernel spill on sm_80.
        r_param, r_m, r_v, r_vmax = philox_bits(rng_seed, rng_step, offs + rng_offset,
                                                rng_stream)
    if MOMENTS_BF16:
        # Unbiased rounding: round-to-nearest would stall a moment whose per-step change is
        # below half a bf16 ulp (v with beta2 = 0.999 moves by 0.1% a step).
        if AMSGRAD:
            tl.store(max_exp_avg_sq_ptr + offs, round_stochastic_bf16(vmax, r_vmax), mask=mask)
        tl.store(exp_avg_ptr + offs, round_stochastic_bf16(m, r_m), mask=mask)
        tl.store(exp_avg_sq_ptr + offs, round_stochastic_bf16(v, r_v), mask=mask)
    else:
        if AMSGRAD:
            tl.store(max_exp_avg_sq_ptr + offs, vmax, mask=mask)
        tl.store(exp_avg_ptr + offs, m, mask=mask)
        tl.store(exp_avg_sq_ptr + offs, v, mask=mask)
    if MASTER_REMAINDER:
        # The param rounded to nearest with ties away from zero (not to even: see
        # kernels/common.py), and the remainder that rebuilds the master exactly.
        p_out, rem = split_master(p)
        tl.store(master_ptr + offs, rem, mask=mask)
        tl.store(param_ptr + offs, p_out, mask=mask)
    elif STOCHASTIC_ROUNDING:
        # A bf16 param without master weights: unbiased rounding, so updates below half an
        # ulp still move it in expectation (round-to-nearest drops them every step).
        tl.store(param_ptr + offs, round_stochastic_bf16(p, r_param), mask=mask)
    else:
        if MASTER:
            tl.store(master_ptr + offs, p, mask=mask)
        tl.store(param_ptr + offs, round_to(p, param_ptr.dtype.element_ty), mask=mask)


# Per-step and per-tensor ints are never specialized on (a seed or a tensor index that
# happens to be 1 or a multiple of 16 must not compile another variant).
@triton.jit(do_not_specialize=["rng_seed", "rng_stream", "rng_offset"])
def _adam_kernel(
    param_ptr,  # *P: params, updated in place
    grad_ptr,  # *G: gradients (read only)
    exp_avg_ptr,  # *M: moment1, updated in place: M is C, or bf16 (stochastically rounded)
    exp_avg_sq_ptr,  # *M: moment2, updated in place
    max_exp_avg_sq_ptr,  # *M: moment2_max, updated in place (AMSGRAD only, else any pointer)
    hyper_ptr,  # *C: the tensor's hyper-parameter row (HYPER_* columns); its dtype is C
    pows_in_ptr,  # *C: (beta1_pow, beta2_pow) used by this step
    pows_out_ptr,  # *C: receives the advanced pows; never the same memory as pows_in_ptr
    clip_scale_ptr,  # *S: the scale that multiplies the gradient (CLIP_SCALE only)
    master_ptr,  # *fp32: master weights of fp16/bf16 params (MASTER only, else any pointer);
    #              *i16: the master's remainders beside bf16 params (MASTER_REMAINDER)
    grad_scale_ptr,  # *f32: AMP loss scale the gradient is divided by (UNSCALE only)
    found_inf_ptr,  # *f32: nonzero = skip this step entirely (SKIP_ON_INF only)
    lr: tl.float64,  # the step's learning rate, exact in float64 (per step: never constexpr)
    lr_ptr,  # *f64: the learning rate in device memory (LR_ON_DEVICE only, else any pointer)
    n_elements,  # number of elements of the range
    rng_seed: tl.int64,  # in [0, 2^63): the Philox key of stochastic rounding (per optimizer)
    rng_stream: tl.int64,  # in [0, 2^32): the tensor's random stream (its optimizer index)
    rng_offset: tl.int64,  # >= 0: the tensor's first element in its whole tensor (FSDP2)
    BLOCK: tl.constexpr,  # elements per program
    AMSGRAD: tl.constexpr,  # keep and use moment2_max
    COUPLED_DECAY: tl.constexpr,  # add l2 * p + l1 * sign(p) to the gradient
    DECOUPLED_DECAY: tl.constexpr,  # AdamW: p -= lr_t * wd * p before the update
    CLIP_SCALE: tl.constexpr,  # multiply the gradient by *clip_scale_ptr (norm clipping)
    CLIP_VALUE: tl.constexpr,  # clamp the gradient to the hyper row's clip bounds
    MASTER: tl.constexpr,  # read/write fp32 master weights, write the param rounded
    MASTER_REMAINDER: tl.constexpr,  # MASTER kept as bf16 param + int16 remainder (master_ptr)
    UNSCALE: tl.constexpr,  # divide the gradient by *grad_scale_ptr (AMP)
    SKIP_ON_INF: tl.constexpr,  # change nothing when *found_inf_ptr is set (AMP)
    LR_ON_DEVICE: tl.constexpr,  # read the learning rate at lr_ptr (capturable steps)
    MAXIMIZE: tl.constexpr,  # multiply the gradient by the hyper row's sign (maximize)
    BIAS_FROM_STEP: tl.constexpr,  # bias corrections from the step count (torch), not the pows
    STOCHASTIC_ROUNDING: tl.constexpr,  # write the bf16 param rounded stochastically
):
    compute_dtype = hyper_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)  # int64: ranges beyond 2^31 elements exist
    # The random stream's step: the steps this tensor has applied, from the device.
    rng_step = tl.load(pows_in_ptr + POW_STEP_C).to(tl.int32)
    block_start = pid * BLOCK
    offs = block_start + tl.arange(0, BLOCK)
    lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd = step_scalars(
        hyper_ptr, pows_in_ptr, lr, lr_ptr, compute_dtype, LR_ON_DEVICE, BIAS_FROM_STEP)
    g_scale, clip_lo, clip_hi = clip_scalars(clip_scale_ptr, hyper_ptr, compute_dtype,
                                              CLIP_SCALE, CLIP_VALUE)
    inv_grad_scale, skip = amp_scalars(grad_scale_ptr, found_inf_ptr, compute_dtype, UNSCALE,
                                        SKIP_ON_INF)
    sign = grad_sign(hyper_ptr, compute_dtype, MAXIMIZE)

    if SKIP_ON_INF:
        # AMP found an inf/NaN gradient: no element is in range, so every access is masked
        # off and params, master and moments stay as they are. (An `if skip` around the
        # update made the compiler predicate the full-block path's vector accesses.)
        n_elements = tl.where(skip, 0, n_elements)
    if block_start + BLOCK <= n_elements:
        # Full block: unmasked, so the compiler keeps 16-byte vector loads and stores.
        _adam_block(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
                    master_ptr, offs, None, lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps,
                    l2, l1, wd, g_scale, clip_lo, clip_hi, inv_grad_scale, sign, rng_seed,
                    rng_step, rng_stream, rng_offset, AMSGRAD, COUPLED_DECAY, DECOUPLED_DECAY,
                    CLIP_SCALE, CLIP_VALUE, MASTER, MASTER_REMAINDER, UNSCALE, MAXIMIZE,
                    STOCHASTIC_ROUNDING, compute_dtype)
    else:
        _adam_block(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
                    master_ptr, offs, offs < n_elements, lr_t, step_size, inv_sqrt_bc2, beta1,
                    beta2, eps, l2, l1, wd, g_scale, clip_lo, clip_hi, inv_grad_scale, sign,
                    rng_seed, rng_step, rng_stream, rng_offset, AMSGRAD, COUPLED_DECAY,
                    DECOUPLED_DECAY, CLIP_SCALE, CLIP_VALUE, MASTER, MASTER_REMAINDER, UNSCALE,
                    MAXIMIZE, STOCHASTIC_ROUNDING, compute_dtype)

    if pid == 0:
        # Re-read (from cache) rather than keep the pows and betas live across the block body
        # (advance_pows). A skipped step writes the pows unchanged into the other slot (the
        # host flips slots blindly).
        advance_pows(hyper_ptr, pows_in_ptr, pows_out_ptr, found_inf_ptr, SKIP_ON_INF)


@triton.jit(do_not_specialize=["rng_seed"])
def _adam_tensor_list_kernel(
    tensor_table_ptr,  # *i64 [n_tensors, TABLE_WIDTH]: addresses, numel, state offset, active
    chunk_table_ptr,  # *i32 [n_chunks, 2]: (tensor index, chunk index within the tensor)
    exp_avg_ptr,  # *M: the bucket's flat moment1 buffer: M is C, or bf16 (rounded stochastically)
    exp_avg_sq_ptr,  # *M: the bucket's flat moment2 buffer
    max_exp_avg_sq_ptr,  # *M: the bucket's flat moment2_max buffer (AMSGRAD only)
    hyper_ptr,  # *C [n_tensors, HYPER_WIDTH]: per-tensor hyper-parameter rows; dtype C
    pows_in_ptr,  # *C [n_tensors, POW_SLOT_WIDTH]: the pows this step uses
    pows_out_ptr,  # *C [n_tensors, POW_SLOT_WIDTH]: receives the pows of the next step
    clip_scales_ptr,  # *S: clip scales, indexed by the tensor table's COL_CLIP_INDEX
    master_ptr,  # *fp32: the bucket's flat master-weight buffer (MASTER only);
    #              *i16: its flat remainder buffer (MASTER_REMAINDER)
    grad_scale_ptr,  # *f32: AMP loss scale the gradients are divided by (UNSCALE only)
    found_inf_ptr,  # *f32: nonzero = skip this step entirely (SKIP_ON_INF only)
    lr: tl.float64,  # the step's learning rate (per step: never constexpr)
    lr_ptr,  # *f64: the learning rate in device memory (LR_ON_DEVICE only, else any pointer)
    n_tensors,  # rows of the tensor table (every tensor of the bucket, active or not)
    n_chunks,  # rows of the chunk table: programs [0, n_chunks) update elements, the rest pows
    rng_seed: tl.int64,  # in [0, 2^63): the Philox key of stochastic rounding
    PARAM_DTYPE: tl.constexpr,  # element type behind the param addresses
    GRAD_DTYPE: tl.constexpr,  # element type behind the grad addresses
    ALIGNED: tl.constexpr,  # 16-byte access for rows whose param and grad addresses allow it
    BLOCK: tl.constexpr,  # elements per program: a chunk is one block
    POW_BLOCK: tl.constexpr,  # tensors whose pows one program advances
    AMSGRAD: tl.constexpr,
    COUPLED_DECAY: tl.constexpr,
    DECOUPLED_DECAY: tl.constexpr,
    CLIP_SCALE: tl.constexpr,
    CLIP_VALUE: tl.constexpr,
    MASTER: tl.constexpr,
    MASTER_REMAINDER: tl.constexpr,  # the master as bf16 param + int16 remainder
    UNSCALE: tl.constexpr,
    SKIP_ON_INF: tl.constexpr,
    LR_ON_DEVICE: tl.constexpr,  # read the learning rate at lr_ptr (capturable steps)
    MAXIMIZE: tl.constexpr,  # multiply the gradient by the hyper row's sign (maximize)
    BIAS_FROM_STEP: tl.constexpr,  # bias corrections from the step count (torch), not the pows
    STOCHASTIC_ROUNDING: tl.constexpr,  # write the bf16 params rounded stochastically
):
    compute_dtype = hyper_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)  # int64: chunk-table offsets beyond 2^31 exist
    inv_grad_scale, skip = amp_scalars(grad_scale_ptr, found_inf_ptr, compute_dtype, UNSCALE,
                                        SKIP_ON_INF)
    if pid >= n_chunks:
        # The programs after the chunks write every tensor's pows to the other slot: advanced
        # for the active tensors, copied for the rest, so one slot index serves the whole
        # bucket. (Programs of their own: the full-block path stays free of masked accesses.)
        j = (pid - n_chunks) * POW_BLOCK + tl.arange(0, POW_BLOCK)
        in_range = j < n_tensors
        active = tl.load(tensor_table_ptr + j.to(tl.int64) * TABLE_WIDTH_C + COL_ACTIVE_C,
                         mask=in_range, other=0) != 0
        for which in tl.static_range(2):
            # which = 0: beta1 and its pow, 1: beta2 and its pow (HYPER_BETA2 follows
            # HYPER_BETA1, POW_BETA2 follows POW_BETA1: checked at import).
            beta = tl.load(hyper_ptr + j * HYPER_WIDTH_C + (HYPER_BETA1_C + which),
                           mask=in_range)
            pow_in = tl.load(pows_in_ptr + j * POW_SLOT_WIDTH_C + (POW_BETA1_C + which),
                             mask=in_range)
            factor = tl.where(active, beta, 1.0)
            if SKIP_ON_INF:
                # A skipped step writes every tensor's pows unchanged (the host flips slots).
                factor = tl.where(tl.load(found_inf_ptr) != 0, 1.0, factor)
            tl.store(pows_out_ptr + j * POW_SLOT_WIDTH_C + (POW_BETA1_C + which),
                     pow_in * factor, mask=in_range)
        # The step count: + 1 for the active tensors of a step that is not skipped.
        count = active
        if SKIP_ON_INF:
            # (tl.where: the interpreter cannot `&` a block of bools with a scalar one)
            count = tl.where(tl.load(found_inf_ptr) == 0, count, False)
        step = tl.load(pows_in_ptr + j * POW_SLOT_WIDTH_C + POW_STEP_C, mask=in_range)
        tl.store(pows_out_ptr + j * POW_SLOT_WIDTH_C + POW_STEP_C,
                 step + tl.where(count, 1.0, 0.0).to(step.dtype), mask=in_range)
    else:
        chunk_row = chunk_table_ptr + CHUNK_TABLE_WIDTH_C * pid
        t = tl.load(chunk_row + CHUNK_TENSOR_C)
        chunk = tl.load(chunk_row + CHUNK_INDEX_C).to(tl.int64)
        row = tensor_table_ptr + t.to(tl.int64) * TABLE_WIDTH_C
        param_addr = tl.load(row + COL_PARAM_ADDR_C)
        grad_addr = tl.load(row + COL_GRAD_ADDR_C)
        param_ptr = param_addr.to(tl.pointer_type(PARAM_DTYPE))
        grad_ptr = grad_addr.to(tl.pointer_type(GRAD_DTYPE))
        n_elements = tl.load(row + COL_NUMEL_C)
        if SKIP_ON_INF:
            # AMP found an inf/NaN gradient: every access masked off (see _adam_kernel).
            n_elements = tl.where(skip, 0, n_elements)
        # State offsets are multiples of STATE_ALIGN elements (the bucket pads every region).
        state_offset = tl.multiple_of(tl.load(row + COL_STATE_OFFSET_C), STATE_ALIGN_C)
        lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd = step_scalars(
            hyper_ptr + t * HYPER_WIDTH_C, pows_in_ptr + t * POW_SLOT_WIDTH_C, lr, lr_ptr,
            compute_dtype, LR_ON_DEVICE, BIAS_FROM_STEP)
        g_scale, clip_lo, clip_hi = clip_scalars(
            clip_scales_ptr + tl.load(row + COL_CLIP_INDEX_C), hyper_ptr + t * HYPER_WIDTH_C,
            compute_dtype, CLIP_SCALE, CLIP_VALUE)
        sign = grad_sign(hyper_ptr + t * HYPER_WIDTH_C, compute_dtype, MAXIMIZE)
        # The random stream's step: this tensor's step count (as _adam_kernel reads it).
        rng_step = tl.load(pows_in_ptr + t * POW_SLOT_WIDTH_C + POW_STEP_C).to(tl.int32)
        rng_stream = tl.load(row + COL_RNG_STREAM_C)
        rng_offset = tl.load(row + COL_RNG_OFFSET_C)

        block_start = chunk * BLOCK  # int64 offsets within the tensor: the random counter
        offs = block_start + tl.arange(0, BLOCK)
        m_ptr = exp_avg_ptr + state_offset
        v_ptr = exp_avg_sq_ptr + state_offset
        vmax_ptr = max_exp_avg_sq_ptr + state_offset
        w_ptr = master_ptr + state_offset
        # 16-byte vector access needs a full block (no mask) and, since a table load carries
        # no alignment, a promise that both addresses are multiples of 16. Each row decides
        # for itself, on the device: one unaligned member (a view at an odd offset, a
        # gradient shard) does not slow down the others. Unaligned full blocks take the
        # masked path, which moves the same bytes with scalar accesses.
        vector = block_start + BLOCK <= n_elements
        if ALIGNED:
            vector = vector & (((param_addr | grad_addr) & 15) == 0)
        if vector:
            if ALIGNED:
                param_ptr = tl.multiple_of(param_ptr, 16)
                grad_ptr = tl.multiple_of(grad_ptr, 16)
            _adam_block(param_ptr, grad_ptr, m_ptr, v_ptr, vmax_ptr, w_ptr, offs, None, lr_t,
                        step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd, g_scale,
                        clip_lo, clip_hi, inv_grad_scale, sign, rng_seed, rng_step, rng_stream,
                        rng_offset, AMSGRAD, COUPLED_DECAY, DECOUPLED_DECAY, CLIP_SCALE,
                        CLIP_VALUE, MASTER, MASTER_REMAINDER, UNSCALE, MAXIMIZE,
                        STOCHASTIC_ROUNDING, compute_dtype)
        else:
            _adam_block(param_ptr, grad_ptr, m_ptr, v_ptr, vmax_ptr, w_ptr, offs,
                        offs < n_elements, lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps,
                        l2, l1, wd, g_scale, clip_lo, clip_hi, inv_grad_scale, sign, rng_seed,
                        rng_step, rng_stream, rng_offset, AMSGRAD, COUPLED_DECAY,
                        DECOUPLED_DECAY, CLIP_SCALE, CLIP_VALUE, MASTER, MASTER_REMAINDER,
                        UNSCALE, MAXIMIZE, STOCHASTIC_ROUNDING, compute_dtype)


def kernel_constexprs(*, amsgrad: bool, coupled_decay: bool, decoupled_decay: bool,
                      clip_scale: bool = False, clip_value: bool = False, master: bool = False,
                      unscale: bool = False, skip_on_inf: bool = False,
                      lr_on_device: bool = False, maximize: bool = False,
                      bias_from_step: bool = False, master_remainder: bool = False,
                      stochastic_rounding: bool = False) -> dict:
    """The constexpr arguments of one specialization (shared with the compile check)."""
    return dict(
        BLOCK=BLOCK_SIZE,
        AMSGRAD=bool(amsgrad),
        COUPLED_DECAY=bool(coupled_decay),
        DECOUPLED_DECAY=bool(decoupled_decay),
        CLIP_SCALE=bool(clip_scale),
        CLIP_VALUE=bool(clip_value),
        MASTER=bool(master or master_remainder),
        MASTER_REMAINDER=bool(master_remainder),
        UNSCALE=bool(unscale),
        SKIP_ON_INF=bool(skip_on_inf),
        LR_ON_DEVICE=bool(lr_on_device),
        MAXIMIZE=bool(maximize),
        BIAS_FROM_STEP=bool(bias_from_step),
        STOCHASTIC_ROUNDING=bool(stochastic_rounding),
    )


def _check_amp(grad_scale: torch.Tensor | None, found_inf: torch.Tensor | None,
               device: torch.device) -> None:
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None:
            _check(t.numel() >= 1 and t.device == device and t.is_floating_point(), lambda:
                   f"{name} must be a floating tensor with one element on {device}, got "
                   f"{t.dtype} {tuple(t.shape)} on {t.device}")


def _master_fits(param_dtype: torch.dtype, master_dtype: torch.dtype) -> bool:
    """fp32 masters go with fp16/bf16 params; int16 remainders with bf16 params only (an
    fp16 param and 16 bits cannot hold every fp32 value: kernels/common.py)."""
    return ((param_dtype in LOW_PRECISION and master_dtype == torch.float32)
            or (param_dtype == torch.bfloat16 and master_dtype == torch.int16))


def _remainder(master: torch.Tensor | None) -> bool:
    """Whether ``master`` holds remainders (int16) rather than fp32 master weights."""
    return master is not None and master.dtype == torch.int16


_MOMENT_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
SEED_LIMIT = 2 ** 63  # seeds are ints in [0, SEED_LIMIT): Philox's 64-bit key, signed-safe


def _check_moment_dtype(moment_dtype: torch.dtype, cdtype: torch.dtype) -> None:
    """Moments are in the compute dtype, or bf16 (stochastically rounded) for fp32 compute."""
    _check(moment_dtype == cdtype or (moment_dtype == torch.bfloat16
                                      and cdtype == torch.float32), lambda:
           f"moment dtype {moment_dtype} is neither the compute dtype {cdtype} nor bfloat16 "
           "(bf16 moments need float32 compute: float32, bfloat16 or float16 params)")


def _is_int(value: object, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _check_rounding(stochastic_rounding: bool, param_dtype: torch.dtype,
                    master: torch.Tensor | None, seed: object, rng_stream: object = 0,
                    rng_offset: object = 0) -> None:
    """Stochastic rounding writes bf16 params without masters; the random stream's ints
    (seed, and a per-tensor launch's stream and offset) are in range."""
    _check(not stochastic_rounding or (param_dtype == torch.bfloat16 and master is None),
           lambda: "stochastic_rounding writes bfloat16 params without master weights, got "
           f"{param_dtype} params{' with master weights' if master is not None else ''}")
    _check(_is_int(seed, SEED_LIMIT), lambda: f"seed must be an int in [0, 2**63), got {seed!r}")
    _check(_is_int(rng_stream, 2 ** 32) and _is_int(rng_offset, 2 ** 62), lambda:
           f"rng_stream must be an int in [0, 2**32) and rng_offset one in [0, 2**62), got "
           f"{rng_stream!r} and {rng_offset!r}")


def _check_grad_dtype(param_dtype: torch.dtype, grad_dtype: torch.dtype) -> None:
    _check(grad_dtype_allowed(param_dtype, grad_dtype), lambda: f"grad dtype {grad_dtype} does not go with param dtype {param_dtype} "
           "(fp16/bf16 params take their own dtype or float32 gradients)")


def _check(cond: bool, message: Callable[[], str]) -> None:
    # The message is built only on failure: these checks run on every launch, and formatting
    # a dozen f-strings per tensor was most of the launcher's host time.
    if not cond:
        raise ValueError(f"adam_update_: {message()}")


def adam_update_(
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
    clip_scale: torch.Tensor | None = None,
    clip_value: bool = False,
    master: torch.Tensor | None = None,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    maximize: bool = False,
    bias_from_step: bool = False,
    stochastic_rounding: bool = False,
    seed: int = 0,
    rng_stream: int = 0,
    rng_offset: int = 0,
) -> None:
    """Apply one Adam step to ``param`` in place, with one kernel launch.

    Args:
        param: contiguous float32, float64, float16 or bfloat16 tensor, updated in place
            (fp16/bf16: computed in float32, written rounded to nearest).
        grad: contiguous gradient of the same shape and device; the param's dtype, or float32
            for fp16/bf16 params.
        exp_avg, exp_avg_sq: moments, contiguous, same numel, in the compute dtype
            (``compute_dtype_for(param.dtype)``), or all in bfloat16 where that is float32
            (computed in float32, stored rounded stochastically); updated in place.
        max_exp_avg_sq: moment2_max for AMSGrad (updated in place, the moments' dtype), or
            None.
        hyper: ``HYPER_WIDTH`` values in the compute dtype (the ``HYPER_*`` columns).
        pows_in: at least 2 values ``(beta1_pow, beta2_pow)`` of this step, compute dtype.
        pows_out: receives the advanced pows; must not overlap ``pows_in``.
        lr: the step's learning rate: a Python float (passed to the kernel as float64), or a
            one-element float64 tensor on the param's device that the kernel reads
            (capturable steps).
        coupled_decay: add ``l2 * p + l1 * sign(p)`` to the gradient.
        decoupled_decay: AdamW's ``p -= lr * lr_scale * wd * p``.
        clip_scale: a 1-element float32/float64 tensor on the param's device that multiplies
            the gradient as it is read (a norm clip's scale, computed on the device), or None.
        clip_value: clamp the gradient to ``hyper[HYPER_CLIP_MIN], hyper[HYPER_CLIP_MAX]``.
        master: float32 master weights of an fp16/bf16 param (same numel): the update reads
            and writes them and writes the param rounded; or the int16 remainders of a
            bfloat16 param's masters (``kernels/common.py``: the param and its remainder are
            the master, read and written as a pair); or None.
        grad_scale: AMP's loss scale (1 element, device): the gradient is divided by it.
        found_inf: AMP's overflow flag (1 element, device): when nonzero nothing changes
            (param, master, moments; the pows are copied, not advanced).
        maximize: multiply the gradient by ``hyper[HYPER_SIGN]`` (-1: maximize the
            objective) after clipping, before the decay terms.
        bias_from_step: bias corrections ``1 - beta ** t`` from the current betas and the
            step number ``t = pows_in[POW_STEP] + 1`` (torch's), instead of the stored pows
            (Paddle's); the pows still advance.
        stochastic_rounding: write a bfloat16 param (no master) rounded stochastically.
        seed: the Philox key of stochastic rounding (bf16 moments, ``stochastic_rounding``),
            an int in ``[0, 2^63)``; with the tensor's step count and each element's offset
            it decides the random bits (``kernels/common.py``).
        rng_stream: the tensor's random stream, an int in ``[0, 2^32)`` (the multi-tensor
            kernel reads it from ``COL_RNG_STREAM``): tensors with distinct streams draw
            distinct bits.
        rng_offset: the place of ``param``'s first element in its whole tensor (an FSDP2
            shard's; 0 for a whole tensor), added to the element offsets the bits are keyed by
            (``COL_RNG_OFFSET``).
    """
    check_interpretable(param.device)  # first: the checks below read device tensors' metadata
    cdtype = compute_dtype_for(param.dtype)
    _check(param.dtype in TRITON_DTYPES, lambda:
           f"param dtype {param.dtype} is not float32, float64, float16 or bfloat16")
    _check_grad_dtype(param.dtype, grad.dtype)
    if master is not None:
        _check(_master_fits(param.dtype, master.dtype) and master.numel() == param.numel()
               and master.is_contiguous() and master.device == param.device, lambda:
               "master must be a contiguous float32 tensor like an fp16/bf16 param, or the "
               f"int16 remainders of a bfloat16 param's masters; got {master.dtype} "
               f"{tuple(master.shape)} on {master.device} for a {param.dtype} param")
    _check_amp(grad_scale, found_inf, param.device)
    _check(grad.shape == param.shape, lambda: f"grad shape {tuple(grad.shape)} != param shape "
           f"{tuple(param.shape)}")
    states = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq), ("hyper", hyper),
              ("pows_in", pows_in), ("pows_out", pows_out)]
    if max_exp_avg_sq is not None:
        states.append(("max_exp_avg_sq", max_exp_avg_sq))
    for name, t in [("param", param), ("grad", grad)] + states:
        _check(t.device == param.device, lambda: f"{name} is on {t.device}, param on {param.device}")
        _check(t.is_contiguous(), lambda: f"{name} is not contiguous")
    moment_dtype = exp_avg.dtype
    _check_moment_dtype(moment_dtype, cdtype)
    _check_rounding(stochastic_rounding, param.dtype, master, seed, rng_stream, rng_offset)
    for name, t in states:
        expected = moment_dtype if name in _MOMENT_NAMES else cdtype
        _check(t.dtype == expected, lambda: f"{name} dtype {t.dtype} != {expected} (the "
               f"{'moment' if name in _MOMENT_NAMES else 'compute'} dtype)")
    for name, t in [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq),
                    ("max_exp_avg_sq", max_exp_avg_sq)]:
        if t is not None:
            _check(t.numel() == param.numel(), lambda: f"{name} has {t.numel()} elements, param "
                   f"{param.numel()}")
    _check(hyper.numel() >= HYPER_WIDTH, lambda: f"hyper has {hyper.numel()} < {HYPER_WIDTH} values")
    _check(pows_in.numel() >= 2 and pows_out.numel() >= 2, lambda: "pows need 2 values each")
    _check(pows_in.data_ptr() != pows_out.data_ptr(), lambda: "pows_in and pows_out must differ")
    if clip_scale is not None:
        _check(clip_scale.numel() >= 1 and clip_scale.device == param.device
               and clip_scale.dtype in (torch.float32, torch.float64), lambda:
               f"clip_scale must be a float32/float64 tensor on {param.device}, got "
               f"{clip_scale.dtype} {tuple(clip_scale.shape)} on {clip_scale.device}")

    lr, lr_ptr = lr_arguments(lr, param.device)
    n = param.numel()
    # At least one program, so the pows advance also for an empty tensor.
    grid = (max(1, triton.cdiv(n, BLOCK_SIZE)),)
    with device_guard(param.device):
        _adam_kernel[grid](
            param, grad, exp_avg, exp_avg_sq,
            max_exp_avg_sq if max_exp_avg_sq is not None else exp_avg_sq,
            hyper, pows_in, pows_out,
            clip_scale if clip_scale is not None else hyper,
            master if master is not None else exp_avg,
            grad_scale if grad_scale is not None else hyper,
            found_inf if found_inf is not None else hyper,
            lr, lr_ptr if lr_ptr is not None else hyper, n, seed, rng_stream, rng_offset,
            **kernel_constexprs(amsgrad=max_exp_avg_sq is not None, coupled_decay=coupled_decay,
                                decoupled_decay=decoupled_decay,
                                clip_scale=clip_scale is not None, clip_value=clip_value,
                                master=master is not None, unscale=grad_scale is not None,
                                master_remainder=_remainder(master),
                                skip_on_inf=found_inf is not None,
                                lr_on_device=lr_ptr is not None, maximize=maximize,
                                bias_from_step=bias_from_step,
                                stochastic_rounding=stochastic_rounding),
            num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION,
        )


def adam_update_tensor_list_(
    tensor_table: torch.Tensor,
    chunk_table: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    hyper: torch.Tensor,
    pows_in: torch.Tensor,
    pows_out: torch.Tensor,
    *,
    lr: float | torch.Tensor,
    param_dtype: torch.dtype,
    grad_dtype: torch.dtype,
    aligned: bool,
    coupled_decay: bool,
    decoupled_decay: bool,
    clip_scales: torch.Tensor | None = None,
    clip_value: bool = False,
    master: torch.Tensor | None = None,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    maximize: bool = False,
    bias_from_step: bool = False,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None:
    """Apply one Adam step to every active tensor of a bucket, with one kernel launch.

    The tables are built and kept valid by the caller (``triton_adam.buckets``): the kernel
    dereferences the addresses in ``tensor_table`` without any check it could make on the
    host, so a stale address there is memory corruption. This launcher checks only what it
    can check in constant time (shapes, dtypes, devices of its arguments).

    Args:
        tensor_table: int64 ``[n_tensors, TABLE_WIDTH]`` (the ``COL_*`` columns), one row per
            tensor of the bucket whether or not it is updated this step.
        chunk_table: int32 ``[n_chunks, 2]``: ``(tensor row, chunk index)`` per program, chunks
            of ``CHUNK_SIZE`` elements of the active tensors.
        exp_avg, exp_avg_sq: the bucket's flat moment buffers (compute dtype, or bfloat16 as
            in ``adam_update_``), updated in place.
        max_exp_avg_sq: the flat moment2_max buffer for AMSGrad, or None.
        hyper: ``[n_tensors, HYPER_WIDTH]`` per-tensor hyper-parameter rows (compute dtype).
        pows_in: ``[n_tensors, POW_SLOT_WIDTH]`` pows of this step; pows_out receives the next
            step's (advanced for active tensors, copied for the others); must not overlap.
        lr: the step's learning rate, as in ``adam_update_`` (a float, or a float64 tensor).
        param_dtype, grad_dtype: the element types behind the table's addresses.
        aligned: use 16-byte vector access on the full blocks of every row whose param and
            grad addresses are multiples of 16 bytes (checked per row, on the device); False
            compiles scalar access only.
        coupled_decay, decoupled_decay: as in ``adam_update_``; tensors without decay have
            zero coefficients in their hyper row.
        clip_scales: 1-D float32/float64 clip scales; a tensor's gradient is multiplied by
            ``clip_scales[table[t, COL_CLIP_INDEX]]`` (an entry holding 1 for unclipped
            tensors), or None for no norm clipping.
        clip_value: clamp gradients to their hyper row's clip bounds.
        master: the bucket's flat float32 master weights (fp16/bf16 params), laid out like
            the moments; or its flat int16 remainder buffer (bfloat16 params, as in
            ``adam_update_``); or None.
        grad_scale, found_inf: AMP's loss scale and overflow flag, as in ``adam_update_``.
        maximize: as in ``adam_update_`` (each row's ``HYPER_SIGN``).
        bias_from_step: as in ``adam_update_``.
        stochastic_rounding, seed: as in ``adam_update_``.
    """
    check_interpretable(exp_avg.device)
    cdtype = hyper.dtype  # the moments may be bf16: the tables are in the compute dtype
    _check_moment_dtype(exp_avg.dtype, compute_dtype_for(param_dtype))
    _check_rounding(stochastic_rounding, param_dtype, master, seed)
    _check_grad_dtype(param_dtype, grad_dtype)
    if master is not None:
        _check(_master_fits(param_dtype, master.dtype) and master.numel() == exp_avg.numel()
               and master.is_contiguous() and master.device == exp_avg.device, lambda:
               "master must be a contiguous float32 buffer like exp_avg for fp16/bf16 params, "
               "or an int16 remainder buffer like exp_avg for bfloat16 params")
    _check_amp(grad_scale, found_inf, exp_avg.device)
    n_tensors = tensor_table.shape[0] if tensor_table.dim() == 2 else -1
    _check(cdtype == compute_dtype_for(param_dtype), lambda:
           f"state dtype {cdtype} is not the compute dtype of {param_dtype} params")
    _check(param_dtype in TRITON_DTYPES and grad_dtype in TRITON_DTYPES, lambda:
           f"unsupported param/grad dtypes {param_dtype}/{grad_dtype}")
    _check(tensor_table.dtype == torch.int64 and tensor_table.dim() == 2
           and tensor_table.shape[1] == TABLE_WIDTH and tensor_table.is_contiguous(), lambda:
           f"tensor_table must be contiguous int64 [n, {TABLE_WIDTH}], got "
           f"{tensor_table.dtype} {tuple(tensor_table.shape)}")
    _check(chunk_table.dtype == torch.int32 and chunk_table.dim() == 2
           and chunk_table.shape[1] == CHUNK_TABLE_WIDTH and chunk_table.is_contiguous(),
           lambda: f"chunk_table must be contiguous int32 [n, {CHUNK_TABLE_WIDTH}], got "
           f"{chunk_table.dtype} "
           f"{tuple(chunk_table.shape)}")
    expected = [("hyper", hyper, HYPER_WIDTH), ("pows_in", pows_in, POW_SLOT_WIDTH),
                ("pows_out", pows_out, POW_SLOT_WIDTH)]
    for name, t, width in expected:
        _check(tuple(t.shape) == (n_tensors, width) and t.dtype == cdtype and t.is_contiguous(),
               lambda: f"{name} must be contiguous {cdtype} [{n_tensors}, {width}], got "
               f"{t.dtype} {tuple(t.shape)}")
    flat = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
    if max_exp_avg_sq is not None:
        flat.append(("max_exp_avg_sq", max_exp_avg_sq))
    for name, t in flat:
        _check(t.dtype == exp_avg.dtype and t.is_contiguous() and t.numel() == exp_avg.numel(),
               lambda: f"{name} must be a contiguous {exp_avg.dtype} buffer like exp_avg")
    device = exp_avg.device
    args = [("tensor_table", tensor_table), ("chunk_table", chunk_table)] + flat
    for name, t in args + [(name, t) for name, t, _ in expected]:
        _check(t.device == device, lambda: f"{name} is on {t.device}, the state on {device}")
    _check(pows_in.data_ptr() != pows_out.data_ptr(), lambda: "pows_in and pows_out must differ")
    if clip_scales is not None:
        _check(clip_scales.dim() == 1 and clip_scales.device == device
               and clip_scales.dtype in (torch.float32, torch.float64), lambda:
               f"clip_scales must be a 1-D float32/float64 tensor on {device}")

    lr, lr_ptr = lr_arguments(lr, device)
    n_chunks = chunk_table.shape[0]
    if n_tensors == 0:
        return
    grid = (n_chunks + triton.cdiv(n_tensors, POW_BLOCK),)
    with device_guard(exp_avg.device):
        _adam_tensor_list_kernel[grid](
            tensor_table, chunk_table, exp_avg, exp_avg_sq,
            max_exp_avg_sq if max_exp_avg_sq is not None else exp_avg_sq,
            hyper, pows_in, pows_out, clip_scales if clip_scales is not None else hyper,
            master if master is not None else exp_avg,
            grad_scale if grad_scale is not None else hyper,
            found_inf if found_inf is not None else hyper,
            lr, lr_ptr if lr_ptr is not None else hyper, n_tensors, n_chunks, seed,
            **tensor_list_constexprs(param_dtype=param_dtype, grad_dtype=grad_dtype, aligned=aligned,
                                     amsgrad=max_exp_avg_sq is not None,
                                     coupled_decay=coupled_decay, decoupled_decay=decoupled_decay,
                                     clip_scale=clip_scales is not None, clip_value=clip_value,
                                     master=master is not None, unscale=grad_scale is not None,
                                     master_remainder=_remainder(master),
                                     skip_on_inf=found_inf is not None,
                                     lr_on_device=lr_ptr is not None, maximize=maximize,
                                     bias_from_step=bias_from_step,
                                     stochastic_rounding=stochastic_rounding),
            num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION,
        )


def tensor_list_constexprs(*, param_dtype: torch.dtype, grad_dtype: torch.dtype, aligned: bool,
                           amsgrad: bool, coupled_decay: bool, decoupled_decay: bool,
                           clip_scale: bool = False, clip_value: bool = False,
                           master: bool = False, unscale: bool = False,
                           skip_on_inf: bool = False, lr_on_device: bool = False,
                           maximize: bool = False, bias_from_step: bool = False,
                           master_remainder: bool = False,
                           stochastic_rounding: bool = False) -> dict:
    """The constexpr arguments of one multi-tensor specialization (shared with the compile
    check)."""
    return dict(
        PARAM_DTYPE=TRITON_DTYPES[param_dtype],
        GRAD_DTYPE=TRITON_DTYPES[grad_dtype],
        ALIGNED=bool(aligned),
        BLOCK=BLOCK_SIZE,
        POW_BLOCK=POW_BLOCK,
        AMSGRAD=bool(amsgrad),
        COUPLED_DECAY=bool(coupled_decay),
        DECOUPLED_DECAY=bool(decoupled_decay),
        CLIP_SCALE=bool(clip_scale),
        CLIP_VALUE=bool(clip_value),
        MASTER=bool(master or master_remainder),
        MASTER_REMAINDER=bool(master_remainder),
        UNSCALE=bool(unscale),
        SKIP_ON_INF=bool(skip_on_inf),
        LR_ON_DEVICE=bool(lr_on_device),
        MAXIMIZE=bool(maximize),
        BIAS_FROM_STEP=bool(bias_from_step),
        STOCHASTIC_ROUNDING=bool(stochastic_rounding),
    )
