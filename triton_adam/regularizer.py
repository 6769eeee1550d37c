"""Weight-decay regularizers: what term a coupled decay adds to a gradient.

``L2Decay(coeff)`` adds ``coeff * param`` and ``L1Decay(coeff)`` adds ``coeff * sign(param)``
(Paddle's ``paddle.regularizer``). They are configuration objects: the optimizer's kernel adds
the term while it reads each gradient, so ``param.grad`` itself is never modified.
"""

from __future__ import annotations

import torch


class WeightDecayRegularizer:
    """Base class of the coupled weight-decay regularizers."""

    _kind = ""

    def __init__(self, coeff: float = 0.0) -> None:
        if isinstance(coeff, bool) or not isinstance(coeff, (int, float)):
            raise TypeError(f"{type(self).__name__} coeff must be a float, got "
                            f"{type(coeff).__name__}")
        self._coeff = float(coeff)

    @property
    def coeff(self) -> float:
        """The regularization coefficient."""
        return self._coeff

    def term(self, param: torch.Tensor) -> torch.Tensor:
        """The tensor this regularizer adds to ``param``'s gradient."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}, coeff={self._coeff:f}"


class L2Decay(WeightDecayRegularizer):
    """L2 weight decay: the gradient gains ``coeff * param`` (loss ``0.5*coeff*sum(p^2)``)."""

    _kind = "l2"

    def term(self, param: torch.Tensor) -> torch.Tensor:
        return self._coeff * param


class L1Decay(WeightDecayRegularizer):
    """L1 weight decay: the gradient gains ``coeff * sign(param)`` (loss ``coeff*sum(|p|)``)."""

    _kind = "l1"

    def term(self, param: torch.Tensor) -> torch.Tensor:
        return self._coeff * torch.sign(param)
