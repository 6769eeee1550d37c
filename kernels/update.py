"""The Adam / AdamW step as device functions, shared by the dense and multi-tensor kernels
(``kernels/adam.py``) and the sparse-row kernel (``kernels/lazy.py``): one copy of the math,
of the order in which a gradient is transformed, and of the pow advance.

Every function is ``@triton.jit`` and inlined into its caller; the kernels decide what to load
and store, and how (vector or masked access, table addresses, row offsets). The columns of the
hyper-parameter row and of a pow slot are read through ``kernels/common.py``'s named constexpr
columns.

Per element, in the compute dtype (the dtype of the moments):

1. ``prepare_grad``: the gradient as the update sees it, in this order (Paddle's: GradScaler
   unscales before the optimizer clips, clipping precedes the regularizer):
   ``g * (1 / loss_scale)`` (AMP, ``UNSCALE``), ``* clip_scale`` (a norm clip, ``CLIP_SCALE``),
   clamped to the hyper row's ``[clip_min, clip_max]`` (``ClipGradByValue``, ``CLIP_VALUE``;
   NaN stays NaN).
2. ``adam_math``: coupled decay, AdamW decay, the moments, AMSGrad, the bias-corrected update
   (``kernels/adam.py``'s module docstring has the formula).

Per program: ``step_scalars`` (learning rate, bias corrections, betas, eps, decay
coefficients), ``amp_scalars`` (1 / loss scale, whether to skip), ``clip_scalars`` (clip scale
and bounds). Once per step and tensor: ``advance_pows`` (``pows_out = pows_in * beta``, or a
copy when AMP skips the step).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    HYPER_BETA1_C,
    HYPER_BETA2_C,
    HYPER_CLIP_MAX_C,
    HYPER_CLIP_MIN_C,
    HYPER_EPS_C,
    HYPER_L1_C,
    HYPER_L2_C,
    HYPER_LR_INDEX_C,
    HYPER_LR_SCALE_C,
    HYPER_SIGN_C,
    HYPER_WD_C,
    POW_BETA1_C,
    POW_BETA2_C,
    POW_STEP_C,
    div_rn,
    sqrt_rn,
)

__all__ = ["step_scalars", "amp_scalars", "clip_scalars", "grad_sign", "prepare_grad",
           "adam_math", "advance_pows"]


@triton.jit
def pow_of_step(beta, t):
    """``beta ** t`` for a whole step number ``t`` by square-and-multiply in ``beta``'s dtype:
    a pure function of ``(beta, t)``, the same bits compiled and interpreted, unrolled (no
    loop), 50 multiplies per call. ``t`` is taken up to 2^25 - 1: a float32 step count stops
    at 2^24 (t = 2^24 + 1 rounds to 2^24, as torch's float32 step stalls), and beyond 2^25
    steps ``beta ** t`` is 0 to the last bit for any beta below 1 - 1e-6, so clamping there
    keeps the bias correction 1 (never the wrapped low bits of a larger count)."""
    n = tl.minimum(t, 33554431.0).to(tl.int32)  # 2^25 - 1
    result = tl.full((), 1.0, beta.dtype)
    power = beta
    for bit in tl.static_range(25):
        result = tl.where(((n >> bit) & 1) != 0, result * power, result)
        power = power * power
    return result


@triton.jit
def step_scalars(hyper_row_ptr, pows_in_row_ptr, lr, lr_ptr, compute_dtype: tl.constexpr,
                 LR_ON_DEVICE: tl.constexpr, BIAS_FROM_STEP: tl.constexpr):
    """The per-tensor scalars of a step, read once per program (shared by every kernel):
    ``(lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd)``.

    The learning rate is the float64 argument ``lr``, or with ``LR_ON_DEVICE`` the float64
    entry of the vector at ``lr_ptr`` that the row's ``HYPER_LR_INDEX`` names (capturable
    steps: a CUDA graph replays its launches with the arguments of capture, so a learning rate
    that changes between replays must be read from memory; one entry per parameter group when
    groups have learning rates of their own). The same float64 value gives the same bits
    either way."""
    if LR_ON_DEVICE:
        lr = tl.load(lr_ptr + tl.load(hyper_row_ptr + HYPER_LR_INDEX_C).to(tl.int32))
    lr_scale = tl.load(hyper_row_ptr + HYPER_LR_SCALE_C)
    beta1 = tl.load(hyper_row_ptr + HYPER_BETA1_C)
    beta2 = tl.load(hyper_row_ptr + HYPER_BETA2_C)
    eps = tl.load(hyper_row_ptr + HYPER_EPS_C)
    l2 = tl.load(hyper_row_ptr + HYPER_L2_C)
    l1 = tl.load(hyper_row_ptr + HYPER_L1_C)
    wd = tl.load(hyper_row_ptr + HYPER_WD_C)
    if BIAS_FROM_STEP:
        # torch's bias correction: the current betas to the power of this step's number (the
        # steps applied + 1), not the product of the betas of every step (Paddle's pows).
        t = tl.load(pows_in_row_ptr + POW_STEP_C) + 1.0
        beta1_pow = pow_of_step(beta1, t)
        beta2_pow = pow_of_step(beta2, t)
    else:
        beta1_pow = tl.load(pows_in_row_ptr + POW_BETA1_C)
        beta2_pow = tl.load(pows_in_row_ptr + POW_BETA2_C)
    # Scalars once per program; the per-element work is then multiplies and one divide.
    lr_t = (lr * lr_scale).to(compute_dtype)
    # Correctly rounded sqrt and division (as CUDA's defaults, which Paddle's kernel uses):
    # Triton's plain `/` and tl.sqrt are approximate in fp32 (div.full, sqrt.approx.ftz).
    step_size = div_rn(lr_t, 1.0 - beta1_pow)
    inv_sqrt_bc2 = div_rn(tl.full((), 1.0, compute_dtype), sqrt_rn(1.0 - beta2_pow))
    return lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd


@triton.jit
def amp_scalars(grad_scale_ptr, found_inf_ptr, compute_dtype: tl.constexpr,
                UNSCALE: tl.constexpr, SKIP_ON_INF: tl.constexpr):
    """AMP's per-step values: ``(1 / loss scale, skip)``; ``skip`` is whether ``found_inf``
    is set (the step then changes nothing)."""
    if UNSCALE:
        inv_grad_scale = div_rn(tl.full((), 1.0, tl.float32),
                                tl.load(grad_scale_ptr).to(tl.float32)).to(compute_dtype)
    else:
        inv_grad_scale = tl.full((), 1.0, compute_dtype)
    if SKIP_ON_INF:
        skip = tl.load(found_inf_ptr) != 0
    else:
        skip = False
    return inv_grad_scale, skip


@triton.jit
def clip_scalars(clip_scale_ptr, hyper_row_ptr, compute_dtype: tl.constexpr,
                 CLIP_SCALE: tl.constexpr, CLIP_VALUE: tl.constexpr):
    """The tensor's gradient-clip values: ``(scale, lo, hi)``, a scale (norm clips) and value
    bounds (the hyper row's ``HYPER_CLIP_MIN`` / ``HYPER_CLIP_MAX``)."""
    if CLIP_SCALE:
        # The scale is in the norm's accumulation dtype; Paddle casts it to the gradient's.
        g_scale = tl.load(clip_scale_ptr).to(compute_dtype)
    else:
        g_scale = tl.full((), 1.0, compute_dtype)
    if CLIP_VALUE:
        clip_lo = tl.load(hyper_row_ptr + HYPER_CLIP_MIN_C)
        clip_hi = tl.load(hyper_row_ptr + HYPER_CLIP_MAX_C)
    else:
        clip_lo = tl.full((), 0.0, compute_dtype)
        clip_hi = tl.full((), 0.0, compute_dtype)
    return g_scale, clip_lo, clip_hi


@triton.jit
def grad_sign(hyper_row_ptr, compute_dtype: tl.constexpr, MAXIMIZE: tl.constexpr):
    """The factor of the gradient: the row's ``HYPER_SIGN`` (-1 maximizes) with MAXIMIZE."""
    if MAXIMIZE:
        sign = tl.load(hyper_row_ptr + HYPER_SIGN_C)
    else:
        sign = tl.full((), 1.0, compute_dtype)
    return sign


@triton.jit
def prepare_grad(g, inv_grad_scale, g_scale, clip_lo, clip_hi, sign, UNSCALE: tl.constexpr,
                 CLIP_SCALE: tl.constexpr, CLIP_VALUE: tl.constexpr,
                 MAXIMIZE: tl.constexpr):
    """The gradient the update uses, from ``g`` as read (in the compute dtype): AMP's loss
    scale comes off first (as GradScaler unscales before the optimizer clips), then the norm
    clip's scale, then the value clip (``ClipGradByValue``; NaN stays NaN). Paddle clips
    before it adds the regularizer: ``adam_math`` adds the decay terms afterwards."""
    if UNSCALE:
        g = g * inv_grad_scale
    if CLIP_SCALE:
        g = g * g_scale
    if CLIP_VALUE:
        g = tl.where(g < clip_lo, clip_lo, tl.where(g > clip_hi, clip_hi, g))
    if MAXIMIZE:
        g = g * sign  # exact: the sign of the gradient the decay terms are added to
    return g


@triton.jit
def adam_math(p, g, m, v, vmax, lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd,
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
        denom = sqrt_rn(vmax) * inv_sqrt_bc2 + eps
    else:
        denom = sqrt_rn(v) * inv_sqrt_bc2 + eps
    p = p - step_size * div_rn(m, denom)
    return p, m, v, vmax


@triton.jit
def advance_pows(hyper_row_ptr, pows_in_ptr, pows_out_ptr, found_inf_ptr,
                 SKIP_ON_INF: tl.constexpr):
    """Write one tensor's next pows: ``pows_out = pows_in * (beta1, beta2)``, or ``pows_in``
    unchanged when AMP skips the step (``found_inf`` set: the caller flips its pow slots
    blindly). Run by exactly one program per tensor; ``pows_out`` is never ``pows_in``.

    The betas are (re-)read here, at the end of a program, rather than kept live across the
    update: holding them made ptxas spill on sm_90 (fp32 amsgrad + decoupled decay)."""
    beta1 = tl.load(hyper_row_ptr + HYPER_BETA1_C)
    beta2 = tl.load(hyper_row_ptr + HYPER_BETA2_C)
    if SKIP_ON_INF:
        beta1 = tl.where(tl.load(found_inf_ptr) != 0, 1.0, beta1).to(beta1.dtype)
        beta2 = tl.where(tl.load(found_inf_ptr) != 0, 1.0, beta2).to(beta2.dtype)
    tl.store(pows_out_ptr + POW_BETA1_C, tl.load(pows_in_ptr + POW_BETA1_C) * beta1)
    tl.store(pows_out_ptr + POW_BETA2_C, tl.load(pows_in_ptr + POW_BETA2_C) * beta2)
    step = tl.load(pows_in_ptr + POW_STEP_C)
    if SKIP_ON_INF:
        step = tl.where(tl.load(found_inf_ptr) != 0, step, step + 1.0).to(step.dtype)
    else:
        step = step + 1.0
    tl.store(pows_out_ptr + POW_STEP_C, step)
