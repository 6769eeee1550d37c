"""The float64 reference of gradient clipping: norms, scales and clipped gradients.

The specification the clipping kernels (``triton_adam.kernels.norm``) are tested against, in
the style of ``reference.py``: plain PyTorch, float64 throughout, written for reading.
Paddle's own arithmetic (float32 sums for float32 gradients) is in ``triton_adam.clip``, which
is tested against real Paddle; this module is the exact value both approximate.

Every function takes the gradients that enter the computation (the caller drops None grads
and ``need_clip=False`` params first) and returns float64 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sum_of_squares(grad: torch.Tensor) -> torch.Tensor:
    """``sum(g^2)`` of one gradient, in float64 (a 0-d tensor)."""
    g = grad.detach().to(torch.float64)
    return (g * g).sum()


def global_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sqrt(sum over grads of sum(g^2))`` in float64; 0 for no gradients."""
    total = torch.zeros((), dtype=torch.float64)
    for g in grads:
        total = total + sum_of_squares(g)
    return total.sqrt()


def global_norm_scale(norm: torch.Tensor, clip_norm: float, *,
                      auto_skip_clip: bool = False) -> torch.Tensor:
    """The factor ``ClipGradByGlobalNorm`` multiplies every gradient by.

    ``clip_norm / max(norm, clip_norm)``, NaN when ``norm`` is NaN; with ``auto_skip_clip``,
    ``clip_norm / norm`` when ``norm > clip_norm`` and 1 otherwise (also for NaN).
    """
    norm = norm.to(torch.float64)
    c = torch.tensor(float(clip_norm), dtype=torch.float64)
    if auto_skip_clip:
        return torch.where(norm > c, c / norm, torch.ones_like(norm))
    return c / torch.maximum(norm, c)  # torch.maximum propagates NaN, as paddle.maximum


def by_norm_scale(norm: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """The factor ``ClipGradByNorm`` multiplies one gradient by: 1 if ``norm <= clip_norm``,
    else ``clip_norm / norm`` (NaN for a NaN norm, 0 for an inf one)."""
    norm = norm.to(torch.float64)
    c = torch.tensor(float(clip_norm), dtype=torch.float64)
    return torch.where(norm <= c, torch.ones_like(norm), c / norm)


def clip_by_global_norm(grads: Sequence[torch.Tensor], clip_norm: float, *,
                        auto_skip_clip: bool = False) -> list[torch.Tensor]:
    """The clipped gradients of ``ClipGradByGlobalNorm``, in float64."""
    scale = global_norm_scale(global_norm(grads), clip_norm, auto_skip_clip=auto_skip_clip)
    return [g.detach().to(torch.float64) * scale for g in grads]


def clip_by_norm(grads: Sequence[torch.Tensor], clip_norm: float) -> list[torch.Tensor]:
    """The clipped gradients of ``ClipGradByNorm``, in float64."""
    return [g.detach().to(torch.float64) * by_norm_scale(sum_of_squares(g).sqrt(), clip_norm)
            for g in grads]


def clip_by_value(grads: Sequence[torch.Tensor], min: float,  # noqa: A002 (Paddle's names)
                  max: float) -> list[torch.Tensor]:  # noqa: A002
    """The clipped gradients of ``ClipGradByValue``: every element clamped to [min, max]."""
    return [torch.clamp(g.detach().to(torch.float64), min=float(min), max=float(max))
            for g in grads]
