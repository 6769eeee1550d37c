"""Gradient clipping configurations: ``ClipGradByGlobalNorm``, ``ClipGradByNorm``,
``ClipGradByValue``, as in ``paddle.nn``.

Each object is a configuration: it validates its arguments as Paddle 3.3.1 does (same error
types) and holds only Python numbers, never tensors. The optimizer reads the configuration and
clips on the device (``triton_adam.kernels.norm`` computes the norms and scales without a host
sync). Each class also offers ``clip(params_grads)`` (and ``__call__``, as Paddle): plain
PyTorch code that clips a list of ``(param, grad)`` pairs **out of place**, exactly as
``paddle.nn.ClipGradBy*`` does in dynamic mode. It is the readable specification of the
semantics (``docs/paddle-compatibility.md`` section 3), tested against real Paddle; it
reads tensors back to the host (``auto_skip_clip``, validation of the bounds), so it is not the
optimizer's step path.

Common rules, all from ``paddle/nn/clip.py``:

* pairs whose grad is None are dropped from the result;
* params with ``need_clip`` set to ``False`` (``getattr(param, 'need_clip', True) is False``)
  keep their gradient unchanged and are left out of the global norm;
* the result is a new list of ``(param, grad)``; a clipped gradient is a new tensor, an
  unclipped one is the input tensor itself. Paddle multiplies ``ClipGradByGlobalNorm``'s
  gradients in place; this module never writes its inputs.

Validation that Paddle does at clip time, not at construction (``ClipGradByNorm`` with
``clip_norm <= 0``, ``ClipGradByValue`` with ``min > max``) raises ``ValueError`` from
``clip`` too, and only when there is a gradient to clip, as in Paddle. Paddle's
``AssertionError`` checks raise exceptions that are both ``AssertionError`` (Paddle's type) and
``TypeError``/``ValueError`` (the natural one), and run also under ``python -O``.

Dtypes Paddle 3.3.1's CPU build cannot clip, handled here the natural way (decisions):

* fp16/bf16 gradients (no CPU kernel for any of the three clips): their squares are summed in
  float32 and the norm enters the global sum as float32 (Paddle's GPU build rounds each
  tensor's sum of squares to the gradient's dtype, which overflows float16 beyond 65504); the
  scale is cast to the gradient's dtype before the multiply, as Paddle does.
* float64 gradients with ``ClipGradByNorm`` (no float64 ``clip_by_norm`` kernel: Paddle raises
  ``RuntimeError``): the norm and the scale are computed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ClipGradBase", "ClipGradByGlobalNorm", "ClipGradByNorm", "ClipGradByValue"]

ParamsGrads = Sequence[tuple[torch.Tensor, "torch.Tensor | None"]]


class _PaddleAssertionTypeError(TypeError, AssertionError):
    """A TypeError that is also the AssertionError Paddle raises for the same argument."""


class _PaddleAssertionValueError(ValueError, AssertionError):
    """A ValueError that is also the AssertionError Paddle raises for the same argument."""


def _need_clip(param) -> bool:
    # Paddle tests identity with False: only an explicit False opts out.
    return getattr(param, "need_clip", True) is not False


class ClipGradBase:
    """Base class of the gradient clipping configurations.

    Subclasses hold Python numbers only and implement ``clip``, the out-of-place reference
    semantics on plain PyTorch tensors.
    """

    def clip(self, params_grads: ParamsGrads) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return the clipped ``(param, grad)`` pairs (see the module docstring)."""
        raise NotImplementedError

    def __call__(self, params_grads: ParamsGrads) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.clip(params_grads)

    def _clip_each(self, params_grads: ParamsGrads, fn) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-tensor clips: ``fn(g)`` for each pair with a gradient and ``need_clip``; pairs
        without a gradient are dropped. ``check()`` runs only when a gradient is clipped, as
        in Paddle."""
        out = []
        for p, g in params_grads:
            if g is None:
                continue
            if _need_clip(p):
                self.check()
                g = fn(g)
            out.append((p, g))
        return out

    def check(self) -> None:
        """Bounds Paddle checks when it clips (none for the base class)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class ClipGradByGlobalNorm(ClipGradBase):
    """Scale all gradients by ``clip_norm / max(global_norm, clip_norm)``.

    ``global_norm = sqrt(sum of ||g||^2)`` over the gradients of the params with
    ``need_clip`` not False, summed in float32, or float64 if any of those gradients is
    float64 (each tensor's sum of squares in its own dtype, float32 for fp16/bf16; the float32
    sums are added in float32, then cast). ``clip_norm`` is cast to that dtype; the scale is
    cast to each gradient's dtype before the multiply.

    Args:
        clip_norm: the maximum norm; anything ``float()`` accepts (Paddle does not check its
            sign: 0 gives NaN or 0 scales, a negative value flips the gradients' sign).
        group_name: kept for API compatibility (Paddle uses it only in static graphs).
        auto_skip_clip: if True, the gradients are multiplied only when
            ``global_norm > clip_norm`` (so a NaN norm leaves them unchanged); else always,
            by a scale that is 1 below the threshold. Must be a bool (``AssertionError``, as
            Paddle; also a ``TypeError``).

    Non-finite norms behave as in Paddle: an inf norm gives scale 0 (so inf elements become
    NaN and the others 0), a NaN norm gives NaN everywhere (without ``auto_skip_clip``).
    When no gradient enters the norm, the input pairs are returned unchanged (None grads
    included), as Paddle does.
    """

    def __init__(self, clip_norm: float, group_name: str = "default_group",
                 auto_skip_clip: bool = False) -> None:
        self.clip_norm = float(clip_norm)
        self.group_name = group_name
        if not isinstance(auto_skip_clip, bool):
            raise _PaddleAssertionTypeError(
                f"auto_skip_clip must be a bool, got {type(auto_skip_clip).__name__}")
        self.auto_skip_clip = auto_skip_clip

    def __str__(self) -> str:
        return f"Gradient Clip By GlobalNorm, global_norm={self.clip_norm:f}"

    def global_norm(self, params_grads: ParamsGrads) -> torch.Tensor | None:
        """The global norm Paddle computes (a 0-d tensor in the sum dtype), or None when no
        gradient enters it."""
        sums: dict[torch.dtype, list[torch.Tensor]] = {}
        for p, g in params_grads:
            if g is None or not _need_clip(p):
                continue
            dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
            sums.setdefault(dtype, []).append(g.to(dtype).square().sum())
        if not sums:
            return None
        sum_dtype = torch.float64 if torch.float64 in sums else torch.float32
        total = sum(torch.stack(parts).sum().to(sum_dtype) for parts in sums.values())
        return total.sqrt()

    def scale(self, global_norm: torch.Tensor) -> torch.Tensor | None:
        """The factor that multiplies the gradients, or None when Paddle skips the multiply
        (``auto_skip_clip`` and ``global_norm <= clip_norm``, or NaN)."""
        clip_norm = torch.tensor(self.clip_norm, dtype=global_norm.dtype)
        if not self.auto_skip_clip:
            return clip_norm / torch.maximum(global_norm, clip_norm)  # maximum propagates NaN
        if bool(global_norm > clip_norm):
            return clip_norm / global_norm
        return None

    def clip(self, params_grads: ParamsGrads) -> list[tuple[torch.Tensor, torch.Tensor]]:
        params_grads = list(params_grads)
        global_norm = self.global_norm(params_grads)
        if global_norm is None:
            return params_grads
        scale = self.scale(global_norm)
        out = []
        for p, g in params_grads:
            if g is None:
                continue
            if _need_clip(p) and scale is not None:
                g = g * scale.to(g.dtype)
            out.append((p, g))
        return out


class ClipGradByNorm(ClipGradBase):
    """Scale each gradient to L2 norm at most ``clip_norm``: ``g * (1 if ||g|| <= c else
    c / ||g||)``, the norm and the scale computed in the gradient's dtype (float32 for
    fp16/bf16, then the scale is cast back).

    Args:
        clip_norm: the maximum norm; anything ``float()`` accepts. Paddle accepts any value
            here and raises ``ValueError`` at clip time unless ``clip_norm > 0``; so does
            ``clip``.

    An inf norm gives scale 0 (inf elements become NaN, the others 0); a NaN norm gives NaN.
    """

    def __init__(self, clip_norm: float) -> None:
        self.clip_norm = float(clip_norm)

    def __str__(self) -> str:
        return f"Gradient Clip By Norm, clip_norm={self.clip_norm:f}"

    def check(self) -> None:
        """Raise ``ValueError`` unless ``clip_norm > 0`` (Paddle's check when it clips; an
        optimizer clipping on the device runs it on the host before the first clip)."""
        if not self.clip_norm > 0:
            raise ValueError(f"ClipGradByNorm: clip_norm must be greater than 0, got "
                             f"{self.clip_norm}")

    def scale(self, grad: torch.Tensor) -> torch.Tensor:
        """The factor for one gradient, in its (float32 for fp16/bf16) compute dtype."""
        dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
        norm = grad.to(dtype).square().sum().sqrt()
        clip_norm = torch.tensor(self.clip_norm, dtype=dtype)
        return torch.where(norm <= clip_norm, torch.ones((), dtype=dtype), clip_norm / norm)

    def clip(self, params_grads: ParamsGrads) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self._clip_each(params_grads, lambda g: g * self.scale(g).to(g.dtype))


class ClipGradByValue(ClipGradBase):
    """Clamp every gradient element to ``[min, max]``.

    Args:
        max: the upper bound (``float()`` of it is kept).
        min: the lower bound; when None it is ``-max``, and then ``max > 0`` is required
            (``AssertionError`` as Paddle, also a ``ValueError``; a non-number ``max`` gives
            Paddle's ``TypeError`` from the comparison).

    Paddle does not check ``min <= max`` at construction; it raises ``ValueError`` when it
    clips a gradient, and so does ``clip``. NaN elements stay NaN.
    """

    def __init__(self, max: float, min: float | None = None) -> None:  # noqa: A002 (Paddle's names)
        if min is None:
            # Paddle: ``assert max > 0.0`` (the comparison itself raises TypeError for a
            # non-number), then ``min = -max``.
            if not max > 0.0:
                raise _PaddleAssertionValueError(
                    f"ClipGradByValue: max must be > 0 when min is None, got {max!r}")
            min = -max  # noqa: A001
        self.max = float(max)
        self.min = float(min)

    def __str__(self) -> str:
        return f"Clip Gradient By Value, min = {self.min:f}, max={self.max:f}"

    def check(self) -> None:
        """Raise ``ValueError`` unless ``min <= max`` (Paddle's check when it clips; an
        optimizer clipping on the device runs it on the host before the first clip)."""
        if not self.min <= self.max:
            raise ValueError(f"ClipGradByValue: max should be greater than or equal to min, "
                             f"got min={self.min}, max={self.max}")

    def clip(self, params_grads: ParamsGrads) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self._clip_each(params_grads,
                               lambda g: torch.clamp(g, min=self.min, max=self.max))
