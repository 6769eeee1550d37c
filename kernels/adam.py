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

# 1024 elements per program with 4 warps: 8 contiguous elements per thread, i.e. two 16-byte
# vector accesses per fp32 stream (one per fp64 stream), the shape measured to keep 16-byte
# LDG/STG and ~48 registers on sm_80/sm_90 (see ../shared/performance-method.md).
BLOCK_SIZE = 1024
NUM_WARPS = 4

# Columns of the per-tensor hyper-parameter row (the ``hyper`` argument), in the compute dtype.
HYPER_LR_SCALE = 0  # multiplies the step's learning rate (param attr lr, AdamW lr_ratio)
HYPER_BETA1 = 1
HYPER_BETA2 = 2
HYPER_EPS = 3
HYPER_L2 = 4  # coupled L2Decay coefficient: g += l2 * p
HYPER_L1 = 5  # coupled L1Decay coefficient: g += l1 * sign(p)
HYPER_WD = 6  # decoupled (AdamW) coefficient: p -= lr_t * wd * p
HYPER_WIDTH = 8  # padded to 8 so consecutive rows of a table stay 16-byte aligned

# A pow slot holds (beta1_pow, beta2_pow) padded to 16 bytes in either compute dtype, so both
# slots of a buffer have the same alignment and alternating them never changes the JIT's
# specialization of the pointer.
POW_SLOT_WIDTH = 4


@triton.jit
def _adam_block(
    param_ptr,
    grad_ptr,
    exp_avg_ptr,
    exp_avg_sq_ptr,
    max_exp_avg_sq_ptr,
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
    AMSGRAD: tl.constexpr,
    COUPLED_DECAY: tl.constexpr,
    DECOUPLED_DECAY: tl.constexpr,
):
    """Loads, updates and stores one block; ``mask`` is None on full blocks (vector access)."""
    compute_dtype = exp_avg_ptr.dtype.element_ty
    p = tl.load(param_ptr + offs, mask=mask).to(compute_dtype)
    g = tl.load(grad_ptr + offs, mask=mask).to(compute_dtype)
    m = tl.load(exp_avg_ptr + offs, mask=mask)
    v = tl.load(exp_avg_sq_ptr + offs, mask=mask)

    if COUPLED_DECAY:
        # Paddle adds the regularizer's term to a new gradient tensor before the update.
        sign_p = tl.where(p > 0, 1.0, tl.where(p < 0, -1.0, 0.0)).to(compute_dtype)
        g = g + l2 * p + l1 * sign_p
    if DECOUPLED_DECAY:
        p = p - lr_t * wd * p

    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    if AMSGRAD:
        vmax = tl.maximum(tl.load(max_exp_avg_sq_ptr + offs, mask=mask), v)
        tl.store(max_exp_avg_sq_ptr + offs, vmax, mask=mask)
        denom = tl.sqrt(vmax) * inv_sqrt_bc2 + eps
    else:
        denom = tl.sqrt(v) * inv_sqrt_bc2 + eps
    p = p - step_size * (m / denom)

    tl.store(exp_avg_ptr + offs, m, mask=mask)
    tl.store(exp_avg_sq_ptr + offs, v, mask=mask)
    tl.store(param_ptr + offs, p.to(param_ptr.dtype.element_ty), mask=mask)


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
    lr: tl.float64,  # the step's learning rate, exact in float64 (per step: never constexpr)
    n_elements,  # number of elements of the range
    BLOCK: tl.constexpr,  # elements per program
    AMSGRAD: tl.constexpr,  # keep and use moment2_max
    COUPLED_DECAY: tl.constexpr,  # add l2 * p + l1 * sign(p) to the gradient
    DECOUPLED_DECAY: tl.constexpr,  # AdamW: p -= lr_t * wd * p before the update
):
    compute_dtype = exp_avg_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)  # int64: ranges beyond 2^31 elements exist
    block_start = pid * BLOCK
    offs = block_start + tl.arange(0, BLOCK)

    lr_scale = tl.load(hyper_ptr + 0)
    beta1 = tl.load(hyper_ptr + 1)
    beta2 = tl.load(hyper_ptr + 2)
    eps = tl.load(hyper_ptr + 3)
    l2 = tl.load(hyper_ptr + 4)
    l1 = tl.load(hyper_ptr + 5)
    wd = tl.load(hyper_ptr + 6)
    beta1_pow = tl.load(pows_in_ptr + 0)
    beta2_pow = tl.load(pows_in_ptr + 1)

    # Scalars once per program; the per-element work is then multiplies and one divide.
    lr_t = (lr * lr_scale).to(compute_dtype)
    step_size = lr_t / (1.0 - beta1_pow)
    inv_sqrt_bc2 = 1.0 / tl.sqrt(1.0 - beta2_pow)

    if block_start + BLOCK <= n_elements:
        # Full block: unmasked, so the compiler keeps 16-byte vector loads and stores.
        _adam_block(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
                    offs, None, lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps, l2, l1, wd,
                    AMSGRAD, COUPLED_DECAY, DECOUPLED_DECAY)
    else:
        _adam_block(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
                    offs, offs < n_elements, lr_t, step_size, inv_sqrt_bc2, beta1, beta2, eps,
                    l2, l1, wd, AMSGRAD, COUPLED_DECAY, DECOUPLED_DECAY)

    if pid == 0:
        # Re-read (from cache) rather than keep the pows and betas live across the block body:
        # holding them made ptxas spill on sm_90 (fp32 amsgrad + decoupled decay).
        tl.store(pows_out_ptr + 0, tl.load(pows_in_ptr + 0) * tl.load(hyper_ptr + 1))
        tl.store(pows_out_ptr + 1, tl.load(pows_in_ptr + 1) * tl.load(hyper_ptr + 2))



def compute_dtype_for(param_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the moments, pows and arithmetic for params of ``param_dtype``."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def kernel_constexprs(*, amsgrad: bool, coupled_decay: bool, decoupled_decay: bool) -> dict:
    """The constexpr arguments of one specialization (shared with the compile check)."""
    return dict(
        BLOCK=BLOCK_SIZE,
        AMSGRAD=bool(amsgrad),
        COUPLED_DECAY=bool(coupled_decay),
        DECOUPLED_DECAY=bool(decoupled_decay),
    )


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
) -> None:
    """Apply one Adam step to ``param`` in place, with one kernel launch.

    Args:
        param: contiguous float32 or float64 tensor, updated in place.
        grad: contiguous gradient of the same shape, dtype and device.
        exp_avg, exp_avg_sq: moments, contiguous, same numel, in the compute dtype
            (``compute_dtype_for(param.dtype)``); updated in place.
        max_exp_avg_sq: moment2_max for AMSGrad (updated in place), or None.
        hyper: ``HYPER_WIDTH`` values in the compute dtype (the ``HYPER_*`` columns).
        pows_in: at least 2 values ``(beta1_pow, beta2_pow)`` of this step, compute dtype.
        pows_out: receives the advanced pows; must not overlap ``pows_in``.
        lr: the step's learning rate (a Python float, passed to the kernel as float64).
        coupled_decay: add ``l2 * p + l1 * sign(p)`` to the gradient.
        decoupled_decay: AdamW's ``p -= lr * lr_scale * wd * p``.
    """
    cdtype = compute_dtype_for(param.dtype)
    _check(param.dtype in (torch.float32, torch.float64), lambda:
           f"param dtype {param.dtype} is not float32 or float64")
    _check(grad.dtype == param.dtype, lambda: f"grad dtype {grad.dtype} != param dtype {param.dtype}")
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

    n = param.numel()
    # At least one program, so the pows advance also for an empty tensor.
    grid = (max(1, triton.cdiv(n, BLOCK_SIZE)),)
    _adam_kernel[grid](
        param, grad, exp_avg, exp_avg_sq,
        max_exp_avg_sq if max_exp_avg_sq is not None else exp_avg_sq,
        hyper, pows_in, pows_out,
        float(lr), n,
        **kernel_constexprs(amsgrad=max_exp_avg_sq is not None, coupled_decay=coupled_decay,
                            decoupled_decay=decoupled_decay),
        num_warps=NUM_WARPS,
    )
