"""The fused Adam / AdamW update: one pass over a contiguous range of elements.

Math (Paddle's GPU kernel, ``../shared/paddle-adam-semantics.md`` section 1), per element, in the
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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from .common import check_interpretable, device_guard, interpreting

# 1024 elements per program with 4 warps: 8 contiguous elements per thread, i.e. two 16-byte
# vector accesses per fp32 stream (one per fp64 stream), the shape measured to keep 16-byte
# LDG/STG and ~48 registers on sm_80/sm_90 (see ../shared/performance-method.md).
BLOCK_SIZE = 1024
NUM_WARPS = 4
# FMA contraction on (a*b+c in one rounding), as nvcc's default (-fmad=true) with which Paddle's
# CUDA kernels are built. Pinned at every launch: Triton 3.10 changes the default to off.
FP_FUSION = True

# Columns of the per-tensor hyper-parameter row (the ``hyper`` argument), in the compute dtype.
HYPER_LR_SCALE = 0  # multiplies the step's learning rate (param attr lr, AdamW lr_ratio)
HYPER_BETA1 = 1
HYPER_BETA2 = 2
HYPER_EPS = 3
HYPER_L2 = 4  # coupled L2Decay coefficient: g += l2 * p
HYPER_L1 = 5  # coupled L1Decay coefficient: g += l1 * sign(p)
HYPER_WD = 6  # decoupled (AdamW) coefficient: p -= lr_t * wd * p
HYPER_CLIP_MIN = 7  # ClipGradByValue bounds (-inf / inf for a tensor without value clipping)
HYPER_CLIP_MAX = 8
HYPER_WIDTH = 16  # padded to 16 so consecutive rows of a table stay 16-byte aligned

# A pow slot holds (beta1_pow, beta2_pow) padded to 16 bytes in either compute dtype, so both
# slots of a buffer have the same alignment and alternating them never changes the JIT's
# specialization of the pointer.
POW_SLOT_WIDTH = 4

# The multi-tensor kernel's tables. A row of the int64 tensor table describes one tensor of a
# bucket; a row of the int32 chunk table is one program's work: a chunk of one tensor.
TABLE_WIDTH = 8  # int64 columns per tensor (64 bytes: rows stay aligned, room to grow)
COL_PARAM_ADDR = 0  # data_ptr() of the param
COL_GRAD_ADDR = 1  # data_ptr() of the gradient (0 when the tensor is inactive this step)
COL_NUMEL = 2  # elements of the param
COL_STATE_OFFSET = 3  # where the tensor's region starts in the bucket's flat state buffers
COL_ACTIVE = 4  # 1 if the tensor is updated this step (its pows advance), else 0
COL_CLIP_INDEX = 5  # which entry of the clip-scale buffer multiplies the gradient (CLIP_SCALE)
# Every tensor's region of a flat state buffer starts at a multiple of 16 elements, so it is
# 16-byte aligned (64 B in fp32) and the kernel can promise so with tl.multiple_of.
STATE_ALIGN = 16
# A program updates one block of one tensor (a chunk is a block): no loop, so every program
# is the dense kernel's program, and the SASS audit can read it. The chunk table costs 8 bytes
# per 1024 elements (55 MB for 7B parameters, against 56 GB of moments), built once.
CHUNK_SIZE = BLOCK_SIZE
# Tensors whose pows one program advances in the pow pass of the multi-tensor kernel.
POW_BLOCK = 128

# fp32 -> bf16 must round to nearest even. Compiled, ``.to(tl.bfloat16)`` is LLVM's fptrunc,
# i.e. ``cvt.rn.bf16`` (tests/test_compile_lazy.py checks the PTX); but the Triton 3.9
# interpreter truncates toward zero for that conversion (even with
# ``fp_downcast_rounding="rtne"``). Under the interpreter the kernels therefore round with
# integer arithmetic instead, so CPU runs give the bits a GPU gives. fp16 is exact in both.
_INTERPRETER_BF16_RNE = tl.constexpr(interpreting())

# The same constants as seen from @triton.jit code (compiled kernels may read only constexpr
# globals).
_HYPER_WIDTH = tl.constexpr(HYPER_WIDTH)
_POW_SLOT_WIDTH = tl.constexpr(POW_SLOT_WIDTH)
_TABLE_WIDTH = tl.constexpr(TABLE_WIDTH)
_COL_PARAM_ADDR = tl.constexpr(COL_PARAM_ADDR)
_COL_GRAD_ADDR = tl.constexpr(COL_GRAD_ADDR)
_COL_NUMEL = tl.constexpr(COL_NUMEL)
_COL_STATE_OFFSET = tl.constexpr(COL_STATE_OFFSET)
_COL_ACTIVE = tl.constexpr(COL_ACTIVE)
_COL_CLIP_INDEX = tl.constexpr(COL_CLIP_INDEX)
_HYPER_CLIP_MIN = tl.constexpr(HYPER_CLIP_MIN)
_HYPER_CLIP_MAX = tl.constexpr(HYPER_CLIP_MAX)
_STATE_ALIGN = tl.constexpr(STATE_ALIGN)



@triton.jit
def _round_to(p, dtype: tl.constexpr):
    """``p`` (fp32 or fp64) rounded to nearest even in ``dtype`` (the param's dtype)."""
    if _INTERPRETER_BF16_RNE and dtype == tl.bfloat16:
        bits = p.to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))  # carries into the exponent as it should
        rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        out = tl.where(p != p, p.to(tl.bfloat16), rounded)  # NaN stays NaN
    else:
        out = p.to(dtype)
    return out


@triton.jit
def _sqrt(x):
    """Correctly rounded square root (fp32: sqrt.rn, not Triton's default sqrt.approx.ftz)."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)  # already sqrt.rn.f64
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _div(a, b):
    """Correctly rounded division (fp32: div.rn, not Triton's default div.full)."""
    if a.dtype == tl.float64:
        return a / b  # already div.rn.f64
    else:
        return tl.div_rn(a, b)


@triton.jit
def _step_scalars(hyper_row_ptr, pows_in_row_ptr, lr, compute_dtype: tl.constexpr):
    """The per-tensor scalars of a step, read once per program (shared by every kernel)."""
    lr_scale = tl.load(hyper_row_ptr + 0)
    beta1 = tl.load(hyper_row_ptr + 1)
    beta2 = tl.load(hyper_row_ptr + 2)
    eps = tl.load(hyper_row_ptr + 3)
    l2 = tl.load(hyper_row_ptr + 4)
    l1 = tl.load(hyper_row_ptr + 5)
    wd = tl.load(hyper_row_ptr + 6)
    beta1_pow = tl.load(pows_in_row_ptr + 0)
    beta2_pow = tl.load(pows_in_row_ptr + 1)
    # Scalars once per program; the per-element work is then multiplies and one divide.
    lr_t = (lr * lr_scale).to(compute_dtype)
    # Correctly rounded sqrt and division (as CUDA's defaults, which Paddle's kernel uses):
    # Triton's plain `/` and tl.sqrt are approximate in fp32 (div.full, sqrt.approx.ftz).
    step_size = _div(lr_t, 1.0 - beta1_pow)
    inv_sqrt_bc2 = _div(tl.full((), 1.0, compute_dtype), _sqrt(1.0 - beta2_pow))
    return lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd


@triton.jit
def _amp_scalars(grad_scale_ptr, found_inf_ptr, compute_dtype: tl.constexpr,
                 UNSCALE: tl.constexpr, SKIP_ON_INF: tl.constexpr):
    """AMP's per-step values: 1 / loss scale, and whether to skip the step (found_inf)."""
    if UNSCALE:
        inv_grad_scale = _div(tl.full((), 1.0, tl.float32),
                              tl.load(grad_scale_ptr).to(tl.float32)).to(compute_dtype)
    else:
        inv_grad_scale = tl.full((), 1.0, compute_dtype)
    if SKIP_ON_INF:
        skip = tl.load(found_inf_ptr) != 0
    else:
        skip = False
    return inv_grad_scale, skip


@triton.jit
def _clip_scalars(clip_scale_ptr, hyper_row_ptr, compute_dtype: tl.constexpr,
                  CLIP_SCALE: tl.constexpr, CLIP_VALUE: tl.constexpr):
    """The tensor's gradient-clip values: a scale (norm clips) and value bounds."""
    if CLIP_SCALE:
        # The scale is in the norm's accumulation dtype; Paddle casts it to the gradient's.
        g_scale = tl.load(clip_scale_ptr).to(compute_dtype)
    else:
        g_scale = tl.full((), 1.0, compute_dtype)
    if CLIP_VALUE:
        clip_lo = tl.load(hyper_row_ptr + _HYPER_CLIP_MIN)
        clip_hi = tl.load(hyper_row_ptr + _HYPER_CLIP_MAX)
    else:
        clip_lo = tl.full((), 0.0, compute_dtype)
        clip_hi = tl.full((), 0.0, compute_dtype)
    return g_scale, clip_lo, clip_hi


@triton.jit
def _adam_math(p, g, m, v, vmax, lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd,
               AMSGRAD: tl.constexpr, COUPLED_DECAY: tl.constexpr,
               DECOUPLED_DECAY: tl.constexpr):
    """The update of a block of values already loaded in the compute dtype: the one copy of
    the math, used by the dense, multi-tensor and sparse-row kernels. Returns (p, m, v, vmax);
    ``vmax`` is passed through unchanged unless AMSGRAD."""
    if COUPLED_DECAY:
        # Paddle adds the regularizer's term to a new gradient tensor before the update.
        sign_p = tl.where(p > 0, 1.0, tl.where(p < 0, -1.0, 0.0)).to(p.dtype)
        g = g + l2 * p + l1 * sign_p
    if DECOUPLED_DECAY:
        p = p - lr_t * wd * p

    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    if AMSGRAD:
        vmax = tl.maximum(vmax, v)
        denom = _sqrt(vmax) * inv_sqrt_bc2 + eps
    else:
        denom = _sqrt(v) * inv_sqrt_bc2 + eps
    p = p - step_size * _div(m, denom)
    return p, m, v, vmax


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
    AMSGRAD: tl.constexpr,
    COUPLED_DECAY: tl.constexpr,
    DECOUPLED_DECAY: tl.constexpr,
    CLIP_SCALE: tl.constexpr,
    CLIP_VALUE: tl.constexpr,
    MASTER: tl.constexpr,
    UNSCALE: tl.constexpr,
):
    """Loads, updates and stores one block; ``mask`` is None on full blocks (vector access).

    Gradient clipping happens here, as the gradient is read (Paddle clips before it adds the
    regularizer): ``g * g_scale`` (a global or per-tensor norm clip, computed on the device)
    and the clamp to ``[clip_lo, clip_hi]`` (``ClipGradByValue``; NaN stays NaN).
    """
    compute_dtype = exp_avg_ptr.dtype.element_ty
    if MASTER:
        # fp32 master weights of fp16/bf16 params: the update reads the master, never the
        # rounded param, and writes both.
        p = tl.load(master_ptr + offs, mask=mask)
    else:
        p = tl.load(param_ptr + offs, mask=mask).to(compute_dtype)
    g = tl.load(grad_ptr + offs, mask=mask).to(compute_dtype)
    if UNSCALE:
        g = g * inv_grad_scale  # AMP: the loss scale comes off before clipping (GradScaler)
    if CLIP_SCALE:
        g = g * g_scale
    if CLIP_VALUE:
        g = tl.where(g < clip_lo, clip_lo, tl.where(g > clip_hi, clip_hi, g))
    m = tl.load(exp_avg_ptr + offs, mask=mask)
    v = tl.load(exp_avg_sq_ptr + offs, mask=mask)
    if AMSGRAD:
        vmax = tl.load(max_exp_avg_sq_ptr + offs, mask=mask)
    else:
        vmax = v  # unused
    p, m, v, vmax = _adam_math(p, g, m, v, vmax, lr_t, step_size, inv_sqrt_bc2, beta1, beta2,
                               eps, l2, l1, wd, AMSGRAD, COUPLED_DECAY, DECOUPLED_DECAY)
    if AMSGRAD:
        tl.store(max_exp_avg_sq_ptr + offs, vmax, mask=mask)
    tl.store(exp_avg_ptr + offs, m, mask=mask)
    tl.store(exp_avg_sq_ptr + offs, v, mask=mask)
    if MASTER:
        tl.store(master_ptr + offs, p, mask=mask)
    tl.store(param_ptr + offs, _round_to(p, param_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _adam_kernel(
    param_ptr,  # *P: params, updated in place
    grad_ptr,  # *G: gradients (read only)
    exp_avg_ptr,  # *C: moment1, updated in place; its dtype is the compute dtype C
    exp_avg_sq_ptr,  # *C: moment2, updated in place
    max_exp_avg_sq_ptr,  # *C: moment2_max, updated in place (AMSGRAD only, else any pointer)
    hyper_ptr,  # *C: the tensor's hyper-parameter row (HYPER_* columns)
    pows_in_ptr,  # *C: (beta1_pow, beta2_pow) used by this step
    pows_out_ptr,  # *C: receives the advanced pows; never the same memory as pows_in_ptr
    clip_scale_ptr,  # *S: the scale that multiplies the gradient (CLIP_SCALE only)
    master_ptr,  # *fp32: master weights of fp16/bf16 params (MASTER only, else any pointer)
    grad_scale_ptr,  # *f32: AMP loss scale the gradient is divided by (UNSCALE only)
    found_inf_ptr,  # *f32: nonzero = skip this step entirely (SKIP_ON_INF only)
    lr: tl.float64,  # the step's learning rate, exact in float64 (per step: never constexpr)
    n_elements,  # number of elements of the range
    BLOCK: tl.constexpr,  # elements per program
    AMSGRAD: tl.constexpr,  # keep and use moment2_max
    COUPLED_DECAY: tl.constexpr,  # add l2 * p + l1 * sign(p) to the gradient
    DECOUPLED_DECAY: tl.constexpr,  # AdamW: p -= lr_t * wd * p before the update
    CLIP_SCALE: tl.constexpr,  # multiply the gradient by *clip_scale_ptr (norm clipping)
    CLIP_VALUE: tl.constexpr,  # clamp the gradient to the hyper row's clip bounds
    MASTER: tl.constexpr,  # read/write fp32 master weights, write the param rounded
    UNSCALE: tl.constexpr,  # divide the gradient by *grad_scale_ptr (AMP)
    SKIP_ON_INF: tl.constexpr,  # change nothing when *found_inf_ptr is set (AMP)
):
    compute_dtype = exp_avg_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)  # int64: ranges beyond 2^31 elements exist
    block_start = pid * BLOCK
    offs = block_start + tl.arange(0, BLOCK)
    lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd = _step_scalars(
        hyper_ptr, pows_in_ptr, lr, compute_dtype)
    g_scale, clip_lo, clip_hi = _clip_scalars(clip_scale_ptr, hyper_ptr, compute_dtype,
                                              CLIP_SCALE, CLIP_VALUE)
    inv_grad_scale, skip = _amp_scalars(grad_scale_ptr, found_inf_ptr, compute_dtype, UNSCALE,
                                        SKIP_ON_INF)

    if SKIP_ON_INF:
        # AMP found an inf/NaN gradient: no element is in range, so every access is masked
        # off and params, master and moments stay as they are. (An `if skip` around the
        # update made the compiler predicate the full-block path's vector accesses.)
        n_elements = tl.where(skip, 0, n_elements)
    if block_start + BLOCK <= n_elements:
        # Full block: unmasked, so the compiler keeps 16-byte vector loads and stores.
        _adam_block(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
                    master_ptr, offs, None, lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps,
                    l2, l1, wd, g_scale, clip_lo, clip_hi, inv_grad_scale, AMSGRAD,
                    COUPLED_DECAY, DECOUPLED_DECAY, CLIP_SCALE, CLIP_VALUE, MASTER, UNSCALE)
    else:
        _adam_block(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
                    master_ptr, offs, offs < n_elements, lr_t, step_size, inv_sqrt_bc2, beta1,
                    beta2, eps, l2, l1, wd, g_scale, clip_lo, clip_hi, inv_grad_scale, AMSGRAD,
                    COUPLED_DECAY, DECOUPLED_DECAY, CLIP_SCALE, CLIP_VALUE, MASTER, UNSCALE)

    if pid == 0:
        # Re-read (from cache) rather than keep the pows and betas live across the block body:
        # holding them made ptxas spill on sm_90 (fp32 amsgrad + decoupled decay). A skipped
        # step writes the pows unchanged into the other slot (the host flips slots blindly).
        beta1 = tl.load(hyper_ptr + 1)
        beta2 = tl.load(hyper_ptr + 2)
        if SKIP_ON_INF:
            beta1 = tl.where(tl.load(found_inf_ptr) != 0, 1.0, beta1).to(beta1.dtype)
            beta2 = tl.where(tl.load(found_inf_ptr) != 0, 1.0, beta2).to(beta2.dtype)
        tl.store(pows_out_ptr + 0, tl.load(pows_in_ptr + 0) * beta1)
        tl.store(pows_out_ptr + 1, tl.load(pows_in_ptr + 1) * beta2)


@triton.jit
def _adam_tensor_list_kernel(
    tensor_table_ptr,  # *i64 [n_tensors, TABLE_WIDTH]: addresses, numel, state offset, active
    chunk_table_ptr,  # *i32 [n_chunks, 2]: (tensor index, chunk index within the tensor)
    exp_avg_ptr,  # *C: the bucket's flat moment1 buffer; its dtype is the compute dtype C
    exp_avg_sq_ptr,  # *C: the bucket's flat moment2 buffer
    max_exp_avg_sq_ptr,  # *C: the bucket's flat moment2_max buffer (AMSGRAD only)
    hyper_ptr,  # *C [n_tensors, HYPER_WIDTH]: per-tensor hyper-parameter rows
    pows_in_ptr,  # *C [n_tensors, POW_SLOT_WIDTH]: the pows this step uses
    pows_out_ptr,  # *C [n_tensors, POW_SLOT_WIDTH]: receives the pows of the next step
    clip_scales_ptr,  # *S: clip scales, indexed by the tensor table's COL_CLIP_INDEX
    master_ptr,  # *fp32: the bucket's flat master-weight buffer (MASTER only)
    grad_scale_ptr,  # *f32: AMP loss scale the gradients are divided by (UNSCALE only)
    found_inf_ptr,  # *f32: nonzero = skip this step entirely (SKIP_ON_INF only)
    lr: tl.float64,  # the step's learning rate (per step: never constexpr)
    n_tensors,  # rows of the tensor table (every tensor of the bucket, active or not)
    n_chunks,  # rows of the chunk table: programs [0, n_chunks) update elements, the rest pows
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
    UNSCALE: tl.constexpr,
    SKIP_ON_INF: tl.constexpr,
):
    compute_dtype = exp_avg_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)  # int64: chunk-table offsets beyond 2^31 exist
    inv_grad_scale, skip = _amp_scalars(grad_scale_ptr, found_inf_ptr, compute_dtype, UNSCALE,
                                        SKIP_ON_INF)
    if pid >= n_chunks:
        # The programs after the chunks write every tensor's pows to the other slot: advanced
        # for the active tensors, copied for the rest, so one slot index serves the whole
        # bucket. (Programs of their own: the full-block path stays free of masked accesses.)
        j = (pid - n_chunks) * POW_BLOCK + tl.arange(0, POW_BLOCK)
        in_range = j < n_tensors
        active = tl.load(tensor_table_ptr + j.to(tl.int64) * _TABLE_WIDTH + _COL_ACTIVE,
                         mask=in_range, other=0) != 0
        for which in tl.static_range(2):
            beta = tl.load(hyper_ptr + j * _HYPER_WIDTH + (1 + which), mask=in_range)
            pow_in = tl.load(pows_in_ptr + j * _POW_SLOT_WIDTH + which, mask=in_range)
            factor = tl.where(active, beta, 1.0)
            if SKIP_ON_INF:
                # A skipped step writes every tensor's pows unchanged (the host flips slots).
                factor = tl.where(tl.load(found_inf_ptr) != 0, 1.0, factor)
            tl.store(pows_out_ptr + j * _POW_SLOT_WIDTH + which, pow_in * factor,
                     mask=in_range)
    else:
        t = tl.load(chunk_table_ptr + 2 * pid)
        chunk = tl.load(chunk_table_ptr + 2 * pid + 1).to(tl.int64)
        row = tensor_table_ptr + t.to(tl.int64) * _TABLE_WIDTH
        param_addr = tl.load(row + _COL_PARAM_ADDR)
        grad_addr = tl.load(row + _COL_GRAD_ADDR)
        param_ptr = param_addr.to(tl.pointer_type(PARAM_DTYPE))
        grad_ptr = grad_addr.to(tl.pointer_type(GRAD_DTYPE))
        n_elements = tl.load(row + _COL_NUMEL)
        if SKIP_ON_INF:
            # AMP found an inf/NaN gradient: every access masked off (see _adam_kernel).
            n_elements = tl.where(skip, 0, n_elements)
        # State offsets are multiples of _STATE_ALIGN elements (the bucket pads every region).
        state_offset = tl.multiple_of(tl.load(row + _COL_STATE_OFFSET), _STATE_ALIGN)
        lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd = _step_scalars(
            hyper_ptr + t * _HYPER_WIDTH, pows_in_ptr + t * _POW_SLOT_WIDTH, lr, compute_dtype)
        g_scale, clip_lo, clip_hi = _clip_scalars(
            clip_scales_ptr + tl.load(row + _COL_CLIP_INDEX), hyper_ptr + t * _HYPER_WIDTH,
            compute_dtype, CLIP_SCALE, CLIP_VALUE)

        block_start = chunk * BLOCK  # int64
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
                        clip_lo, clip_hi, inv_grad_scale, AMSGRAD, COUPLED_DECAY,
                        DECOUPLED_DECAY, CLIP_SCALE, CLIP_VALUE, MASTER, UNSCALE)
        else:
            _adam_block(param_ptr, grad_ptr, m_ptr, v_ptr, vmax_ptr, w_ptr, offs,
                        offs < n_elements, lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps,
                        l2, l1, wd, g_scale, clip_lo, clip_hi, inv_grad_scale, AMSGRAD,
                        COUPLED_DECAY, DECOUPLED_DECAY, CLIP_SCALE, CLIP_VALUE, MASTER,
                        UNSCALE)


def compute_dtype_for(param_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the moments, pows and arithmetic for params of ``param_dtype``."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def kernel_constexprs(*, amsgrad: bool, coupled_decay: bool, decoupled_decay: bool,
                      clip_scale: bool = False, clip_value: bool = False, master: bool = False,
                      unscale: bool = False, skip_on_inf: bool = False) -> dict:
    """The constexpr arguments of one specialization (shared with the compile check)."""
    return dict(
        BLOCK=BLOCK_SIZE,
        AMSGRAD=bool(amsgrad),
        COUPLED_DECAY=bool(coupled_decay),
        DECOUPLED_DECAY=bool(decoupled_decay),
        CLIP_SCALE=bool(clip_scale),
        CLIP_VALUE=bool(clip_value),
        MASTER=bool(master),
        UNSCALE=bool(unscale),
        SKIP_ON_INF=bool(skip_on_inf),
    )


LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_amp(grad_scale: torch.Tensor | None, found_inf: torch.Tensor | None,
               device: torch.device) -> None:
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None:
            _check(t.numel() >= 1 and t.device == device and t.is_floating_point(), lambda:
                   f"{name} must be a floating tensor with one element on {device}, got "
                   f"{t.dtype} {tuple(t.shape)} on {t.device}")


def grad_dtype_allowed(param_dtype: torch.dtype, grad_dtype: torch.dtype) -> bool:
    """fp16/bf16 params may come with fp32 ("master") gradients; otherwise the dtypes match."""
    return grad_dtype == param_dtype or (param_dtype in LOW_PRECISION
                                         and grad_dtype == torch.float32)


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
    lr: float,
    coupled_decay: bool,
    decoupled_decay: bool,
    clip_scale: torch.Tensor | None = None,
    clip_value: bool = False,
    master: torch.Tensor | None = None,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> None:
    """Apply one Adam step to ``param`` in place, with one kernel launch.

    Args:
        param: contiguous float32, float64, float16 or bfloat16 tensor, updated in place
            (fp16/bf16: computed in float32, written rounded to nearest).
        grad: contiguous gradient of the same shape and device; the param's dtype, or float32
            for fp16/bf16 params.
        exp_avg, exp_avg_sq: moments, contiguous, same numel, in the compute dtype
            (``compute_dtype_for(param.dtype)``); updated in place.
        max_exp_avg_sq: moment2_max for AMSGrad (updated in place), or None.
        hyper: ``HYPER_WIDTH`` values in the compute dtype (the ``HYPER_*`` columns).
        pows_in: at least 2 values ``(beta1_pow, beta2_pow)`` of this step, compute dtype.
        pows_out: receives the advanced pows; must not overlap ``pows_in``.
        lr: the step's learning rate (a Python float, passed to the kernel as float64).
        coupled_decay: add ``l2 * p + l1 * sign(p)`` to the gradient.
        decoupled_decay: AdamW's ``p -= lr * lr_scale * wd * p``.
        clip_scale: a 1-element float32/float64 tensor on the param's device that multiplies
            the gradient as it is read (a norm clip's scale, computed on the device), or None.
        clip_value: clamp the gradient to ``hyper[HYPER_CLIP_MIN], hyper[HYPER_CLIP_MAX]``.
        master: float32 master weights of an fp16/bf16 param (same numel): the update reads
            and writes them and writes the param rounded; or None.
        grad_scale: AMP's loss scale (1 element, device): the gradient is divided by it.
        found_inf: AMP's overflow flag (1 element, device): when nonzero nothing changes
            (param, master, moments; the pows are copied, not advanced).
    """
    check_interpretable(param.device)  # first: the checks below read device tensors' metadata
    cdtype = compute_dtype_for(param.dtype)
    _check(param.dtype in _TRITON_DTYPES, lambda:
           f"param dtype {param.dtype} is not float32, float64, float16 or bfloat16")
    _check_grad_dtype(param.dtype, grad.dtype)
    if master is not None:
        _check(param.dtype in LOW_PRECISION and master.dtype == torch.float32
               and master.numel() == param.numel() and master.is_contiguous()
               and master.device == param.device, lambda:
               "master must be a contiguous float32 tensor like an fp16/bf16 param")
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
    for name, t in states:
        _check(t.dtype == cdtype, lambda: f"{name} dtype {t.dtype} != compute dtype {cdtype}")
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
            float(lr), n,
            **kernel_constexprs(amsgrad=max_exp_avg_sq is not None, coupled_decay=coupled_decay,
                                decoupled_decay=decoupled_decay,
                                clip_scale=clip_scale is not None, clip_value=clip_value,
                                master=master is not None, unscale=grad_scale is not None,
                                skip_on_inf=found_inf is not None),
            num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION,
        )


_TRITON_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64,
                  torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


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
    lr: float,
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
        exp_avg, exp_avg_sq: the bucket's flat moment buffers (compute dtype), updated in place.
        max_exp_avg_sq: the flat moment2_max buffer for AMSGrad, or None.
        hyper: ``[n_tensors, HYPER_WIDTH]`` per-tensor hyper-parameter rows (compute dtype).
        pows_in: ``[n_tensors, POW_SLOT_WIDTH]`` pows of this step; pows_out receives the next
            step's (advanced for active tensors, copied for the others); must not overlap.
        lr: the step's learning rate (passed as float64).
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
            the moments; or None.
        grad_scale, found_inf: AMP's loss scale and overflow flag, as in ``adam_update_``.
    """
    check_interpretable(exp_avg.device)
    cdtype = exp_avg.dtype
    _check_grad_dtype(param_dtype, grad_dtype)
    if master is not None:
        _check(param_dtype in LOW_PRECISION and master.dtype == torch.float32
               and master.numel() == exp_avg.numel() and master.is_contiguous(), lambda:
               "master must be a contiguous float32 buffer like exp_avg, for fp16/bf16 params")
    _check_amp(grad_scale, found_inf, exp_avg.device)
    n_tensors = tensor_table.shape[0] if tensor_table.dim() == 2 else -1
    _check(cdtype == compute_dtype_for(param_dtype), lambda:
           f"state dtype {cdtype} is not the compute dtype of {param_dtype} params")
    _check(param_dtype in _TRITON_DTYPES and grad_dtype in _TRITON_DTYPES, lambda:
           f"unsupported param/grad dtypes {param_dtype}/{grad_dtype}")
    _check(tensor_table.dtype == torch.int64 and tensor_table.dim() == 2
           and tensor_table.shape[1] == TABLE_WIDTH and tensor_table.is_contiguous(), lambda:
           f"tensor_table must be contiguous int64 [n, {TABLE_WIDTH}], got "
           f"{tensor_table.dtype} {tuple(tensor_table.shape)}")
    _check(chunk_table.dtype == torch.int32 and chunk_table.dim() == 2
           and chunk_table.shape[1] == 2 and chunk_table.is_contiguous(), lambda:
           f"chunk_table must be contiguous int32 [n, 2], got {chunk_table.dtype} "
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
        _check(t.dtype == cdtype and t.is_contiguous() and t.numel() == exp_avg.numel(), lambda:
               f"{name} must be a contiguous {cdtype} buffer like exp_avg")
    device = exp_avg.device
    args = [("tensor_table", tensor_table), ("chunk_table", chunk_table)] + flat
    for name, t in args + [(name, t) for name, t, _ in expected]:
        _check(t.device == device, lambda: f"{name} is on {t.device}, the state on {device}")
    _check(pows_in.data_ptr() != pows_out.data_ptr(), lambda: "pows_in and pows_out must differ")
    if clip_scales is not None:
        _check(clip_scales.dim() == 1 and clip_scales.device == device
               and clip_scales.dtype in (torch.float32, torch.float64), lambda:
               f"clip_scales must be a 1-D float32/float64 tensor on {device}")

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
            float(lr), n_tensors, n_chunks,
            **tensor_list_constexprs(param_dtype=param_dtype, grad_dtype=grad_dtype, aligned=aligned,
                                     amsgrad=max_exp_avg_sq is not None,
                                     coupled_decay=coupled_decay, decoupled_decay=decoupled_decay,
                                     clip_scale=clip_scales is not None, clip_value=clip_value,
                                     master=master is not None, unscale=grad_scale is not None,
                                     skip_on_inf=found_inf is not None),
            num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION,
        )


def tensor_list_constexprs(*, param_dtype: torch.dtype, grad_dtype: torch.dtype, aligned: bool,
                           amsgrad: bool, coupled_decay: bool, decoupled_decay: bool,
                           clip_scale: bool = False, clip_value: bool = False,
                           master: bool = False, unscale: bool = False,
                           skip_on_inf: bool = False) -> dict:
    """The constexpr arguments of one multi-tensor specialization (shared with the compile
    check)."""
    return dict(
        PARAM_DTYPE=_TRITON_DTYPES[param_dtype],
        GRAD_DTYPE=_TRITON_DTYPES[grad_dtype],
        ALIGNED=bool(aligned),
        BLOCK=BLOCK_SIZE,
        POW_BLOCK=POW_BLOCK,
        AMSGRAD=bool(amsgrad),
        COUPLED_DECAY=bool(coupled_decay),
        DECOUPLED_DECAY=bool(decoupled_decay),
        CLIP_SCALE=bool(clip_scale),
        CLIP_VALUE=bool(clip_value),
        MASTER=bool(master),
        UNSCALE=bool(unscale),
        SKIP_ON_INF=bool(skip_on_inf),
    )
