"""How optimizer state is named and exchanged: Paddle's ``state_dict`` keys and rules.

Keys are ``f"{param_name}_{[opt_name_]}{acc}_0"`` for ``acc`` in ``moment1``, ``moment2``,
``moment2_max`` (amsgrad), ``beta1_pow_acc``, ``beta2_pow_acc``
(``../shared/paddle-adam-semantics.md`` section 7), plus ``'LR_Scheduler'`` when a scheduler
drives the learning rate. Parameter names: see ``Adam._param_name``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from triton_adam.lr import LRScheduler

if TYPE_CHECKING:
    from triton_adam.optimizer import _AdamBase

# Paddle's accumulator names.
MOMENT1 = "moment1"
MOMENT2 = "moment2"
MOMENT2_MAX = "moment2_max"
BETA1_POW = "beta1_pow_acc"
BETA2_POW = "beta2_pow_acc"


def state_dict(opt: _AdamBase) -> dict[str, torch.Tensor | dict]:
    """The accumulators of ``opt`` under Paddle's keys (see ``_AdamBase.state_dict``)."""
    infix = f"{opt._name}_" if opt._name else ""
    out: dict[str, torch.Tensor | dict] = {}
    for index, param in enumerate(opt._parameter_list):
        where = opt._where.get(id(param))
        if where is None or not where[0].created[where[1]]:
            continue
        bucket, j = where
        prefix = f"{opt._param_name(index)}_{infix}"
        out[f"{prefix}{MOMENT1}_0"] = bucket.state_view(bucket.moment1, j)
        out[f"{prefix}{MOMENT2}_0"] = bucket.state_view(bucket.moment2, j)
        if bucket.moment2_max is not None:
            out[f"{prefix}{MOMENT2_MAX}_0"] = bucket.state_view(bucket.moment2_max, j)
        out[f"{prefix}{BETA1_POW}_0"] = bucket.beta_pow(j, 0)
        out[f"{prefix}{BETA2_POW}_0"] = bucket.beta_pow(j, 1)
    if isinstance(opt._learning_rate, LRScheduler):
        out["LR_Scheduler"] = opt._learning_rate.state_dict()
    return out


def set_state_dict(opt: _AdamBase, state_dict: dict) -> None:
    """Load ``state_dict`` into ``opt`` (to be written: the state-format issue)."""
    raise NotImplementedError("set_state_dict is not implemented yet (the state-format issue)")
