"""How parameters are handed to an optimizer: a flat list, ``named_parameters()`` pairs, or groups.

Paddle's ``parameters`` argument is either a list of tensors or a list of dicts, each with
``params`` and optional per-group options. This module turns either into a list of
``ParamGroup`` (a flat list is one group without options) and applies Paddle's checks: a set
is a ``TypeError``, a group without ``params`` an ``AssertionError`` (raised as
``MissingParamsError``, which is also a ``ValueError``), a parameter in two groups a
``ValueError``, a group whose ``params`` is neither a tensor nor an iterable of tensors (None, a
number) a ``TypeError`` naming the group (Paddle's names nothing). **Decision**: the same
tensor twice in a flat list is a ``ValueError`` too (Paddle updates it twice per step).

``(name, tensor)`` pairs, as ``model.named_parameters()`` yields, are accepted wherever a
tensor is; the name is used for a parameter that has no name of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

# The per-group options Paddle's Adam/AdamW read; amsgrad, multi_precision and
# use_multi_tensor are optimizer-wide.
GROUP_OPTIONS = frozenset({"learning_rate", "weight_decay", "grad_clip", "beta1", "beta2",
                           "epsilon", "lazy_mode"})


class MissingParamsError(ValueError, AssertionError):
    """A parameter group without ``params`` (Paddle raises AssertionError)."""


@dataclass
class ParamGroup:
    """The tensors of one group, their given names (or None), and the group's options."""

    params: list[torch.Tensor]
    given_names: list[str | None]
    options: dict = field(default_factory=dict)


def _unpack(item: object, where: str) -> tuple[torch.Tensor, str | None]:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        name, tensor = item
    else:
        name, tensor = None, item
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{where} is a {type(tensor).__name__}, expected a torch.Tensor "
                        "(or a (name, tensor) pair)")
    return tensor, name


def parse_parameters(parameters: object) -> tuple[list[ParamGroup], bool]:
    """``(groups, group_mode)`` for an optimizer's ``parameters`` argument."""
    if parameters is None:
        raise AttributeError("parameters argument given to the Optimizer should not be None "
                             "in dygraph mode.")
    if isinstance(parameters, torch.Tensor):
        raise TypeError("`parameters` argument given to the optimizer should be an iterable "
                        f"of Tensors, but got argument type is `{type(parameters)}`.")
    if isinstance(parameters, dict):
        raise TypeError("`parameters` argument should not get dict type, if parameter groups "
                        "is needed, please set `parameters` as list of dict")
    if isinstance(parameters, set):
        raise TypeError("optimizer parameters should be in ordered collections, but received "
                        "set, please use list instead.")
    items = list(parameters)
    if not items:
        raise ValueError("optimizer got an empty parameter list")

    group_mode = isinstance(items[0], dict)
    groups: list[ParamGroup] = []
    if group_mode:
        for g, group in enumerate(items):
            if not isinstance(group, dict):
                raise TypeError(f"parameters[{g}] is a {type(group).__name__}: in group mode "
                                "every entry must be a dict with 'params'")
            if "params" not in group:
                raise MissingParamsError(
                    "params should be set in parameters if parameter groups are optimized in "
                    f"different options (parameters[{g}] has no 'params')")
            unknown = set(group) - GROUP_OPTIONS - {"params"}
            if unknown:
                raise ValueError(f"parameters[{g}] has unknown options {sorted(unknown)}; a "
                                 f"group may set {sorted(GROUP_OPTIONS)}")
            params = group["params"]
            if isinstance(params, torch.Tensor):
                params = [params]
            elif isinstance(params, set):
                raise TypeError("optimizer parameters should be in ordered collections, but "
                                "received set, please use list instead.")
            elif isinstance(params, (str, bytes, dict)) or not isinstance(params, Iterable):
                raise TypeError(f"parameters[{g}]['params'] is a {type(params).__name__}; "
                                "expected a tensor or a list of tensors (or of (name, "
                                "tensor) pairs)")
            pairs = [_unpack(x, f"parameters[{g}]['params'][{i}]")
                     for i, x in enumerate(params)]
            options = {k: v for k, v in group.items() if k != "params"}
            groups.append(ParamGroup([t for t, _ in pairs], [n for _, n in pairs], options))
    else:
        pairs = []
        for i, x in enumerate(items):
            if isinstance(x, dict):
                raise TypeError(f"parameters[{i}] is a dict but parameters[0] is not: give "
                                "either tensors or parameter groups (dicts)")
            pairs.append(_unpack(x, f"parameters[{i}]"))
        groups.append(ParamGroup([t for t, _ in pairs], [n for _, n in pairs]))

    seen: dict[int, int] = {}
    for g, group in enumerate(groups):
        for p in group.params:
            if id(p) in seen:
                if group_mode and seen[id(p)] != g:
                    raise ValueError("some parameters appear in more than one parameter group")
                raise ValueError("a parameter appears more than once in the parameter list")
            seen[id(p)] = g
    return groups, group_mode
