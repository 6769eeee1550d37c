"""Per-parameter attributes with Paddle's names: learning-rate scale, regularizer, need_clip, name.

Paddle keeps these on the parameter (``ParamAttr``): ``param.optimize_attr['learning_rate']``,
``param.regularizer``, ``param.need_clip`` and ``param.name``. PyTorch tensors accept the
first three as plain Python attributes, so they live on the tensor here too, and the
optimizer reads them whether ``set_param_attr`` or the user set them.

``name`` is the exception: ``torch.Tensor.name`` is a read-only attribute of PyTorch's tensor
type (torch 2.13), so a name given to ``set_param_attr`` is kept in a registry keyed by the
tensor's identity (weakly: it does not keep the tensor alive) and read with ``param_name``.
"""

from __future__ import annotations

import math

import torch
from torch.utils.weak import WeakIdKeyDictionary

from triton_adam.regularizer import WeightDecayRegularizer

_NAMES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def set_param_attr(param: torch.Tensor, *, name: str | None = None,
                   learning_rate: float | None = None,
                   regularizer: WeightDecayRegularizer | None = None,
                   need_clip: bool | None = None) -> torch.Tensor:
    """Set Paddle's per-parameter attributes on ``param`` (arguments left None are unchanged).

    Args:
        param: the tensor (usually an ``nn.Parameter``).
        name: the parameter's name, used in ``state_dict`` keys and passed to AdamW's
            ``apply_decay_param_fun``. Kept in a registry (``param_name``), since PyTorch's
            ``Tensor.name`` cannot be assigned.
        learning_rate: a scale of the optimizer's learning rate for this parameter
            (``param.optimize_attr['learning_rate']``).
        regularizer: an ``L1Decay``/``L2Decay`` that wins over the optimizer's
            ``weight_decay`` in a flat parameter list (``param.regularizer``). To remove one,
            assign ``param.regularizer = None``.
        need_clip: False leaves the parameter out of gradient clipping (``param.need_clip``).

    Returns:
        ``param``, for chaining.
    """
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"set_param_attr expects a torch.Tensor, got {type(param).__name__}")
    if name is not None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        _NAMES[param] = name
    if learning_rate is not None:
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) \
                or not math.isfinite(learning_rate):
            raise TypeError(f"learning_rate must be a finite float, got {learning_rate!r}")
        attr = getattr(param, "optimize_attr", None)
        if not isinstance(attr, dict):
            attr = {}
        attr["learning_rate"] = float(learning_rate)
        param.optimize_attr = attr
    if regularizer is not None:
        if not isinstance(regularizer, WeightDecayRegularizer):
            raise TypeError("regularizer must be an L1Decay or L2Decay, got "
                            f"{type(regularizer).__name__}")
        param.regularizer = regularizer
    if need_clip is not None:
        if not isinstance(need_clip, bool):
            raise TypeError(f"need_clip must be a bool, got {need_clip!r}")
        param.need_clip = need_clip
    return param


def param_name(param: torch.Tensor) -> str | None:
    """The name given with ``set_param_attr`` (or a str ``param.name``), else None."""
    name = _NAMES.get(param)
    if name is None:
        attr = getattr(param, "name", None)  # None on PyTorch tensors; set on tensor subclasses
        name = attr if isinstance(attr, str) and attr else None
    return name


def param_lr_scale(param: torch.Tensor) -> float:
    """``param.optimize_attr['learning_rate']``, 1.0 when not set."""
    attr = getattr(param, "optimize_attr", None)
    if isinstance(attr, dict) and "learning_rate" in attr:
        value = attr["learning_rate"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("optimize_attr['learning_rate'] must be a float, got "
                            f"{type(value).__name__}")
        return float(value)
    return 1.0


def param_regularizer(param: torch.Tensor) -> WeightDecayRegularizer | None:
    """``param.regularizer`` when set, else None."""
    reg = getattr(param, "regularizer", None)
    if reg is not None and not isinstance(reg, WeightDecayRegularizer):
        raise TypeError(f"param.regularizer must be an L1Decay/L2Decay or None, got "
                        f"{type(reg).__name__}")
    return reg


def param_need_clip(param: torch.Tensor) -> bool:
    """``param.need_clip``, True when not set."""
    return bool(getattr(param, "need_clip", True))
