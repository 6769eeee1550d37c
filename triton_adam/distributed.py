"""Paddle state dicts of distributed runs: the per-rank state of FSDP2 (DTensor) parameters
turned into the single-process state and back, and wrapped for ``torch.distributed.checkpoint``.

**State of a sharded run.** ``state_dict()`` keeps Paddle's keys; each rank's moments are
shaped like its local shard and the beta pows (per-parameter scalars) are the same on every
rank. ``gather_full_state`` turns them into the single-process state (a collective),
``shard_full_state`` takes every rank's part of a full state (no communication), and
``state_as_dtensors`` wraps the moments as DTensors (views) for ``torch.distributed.checkpoint``
(load: ``dcp.load`` into the wrapped ``opt.state_dict()``, then ``opt.set_state_dict`` of it).

What the engine does with DTensor parameters (local shards, the global norm over shards) is
``triton_adam.dtensor``; its helpers are importable from here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from triton_adam.dtensor import (NormReduction, all_reduce_sum_, check_grad_placement,
                                 full_tensor_like, is_dtensor, is_sharded, local_shard_like,
                                 local_tensor, norm_reduction)

__all__ = [
    "ACCUMULATORS", "MOMENT_ACCUMULATORS", "NormReduction", "all_reduce_sum_",
    "check_grad_placement", "full_tensor_like", "gather_full_state", "is_dtensor",
    "is_sharded", "local_shard_like", "local_tensor", "norm_reduction", "shard_full_state",
    "state_as_dtensors",
]

# state_dict key suffixes (``{param_name}_{[opt_name_]}{acc}_0``, triton_adam.state): the
# moments are shaped like the parameter (sharded like it), the pows and the step counts (the
# stochastic modes' random streams) are per-parameter scalars.
MOMENT_ACCUMULATORS = ("moment1", "moment2", "moment2_max")
ACCUMULATORS = MOMENT_ACCUMULATORS + ("beta1_pow_acc", "beta2_pow_acc", "step")
# An accumulator key, as triton_adam.state reads it: any trailing counter (``_1`` from a
# process that had built another optimizer; set_state_dict accepts it), a greedy prefix.
_ACC_KEY = re.compile(r"(.+)_(" + "|".join(ACCUMULATORS) + r")_(\d+)", re.DOTALL)


def _split_key(key: object, params: Mapping[str, torch.Tensor]) -> tuple[str, str] | None:
    """``(param_name, accumulator)`` of a state_dict key: the longest parameter name that is
    the key's prefix or starts it followed by ``_`` (``{name}_fp32_master_{N}``, or an
    optimizer ``name``); None if the key is no accumulator's or names no parameter."""
    m = _ACC_KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        return None
    head, acc = m.group(1), m.group(2)
    names = [n for n in params if head == n or head.startswith(f"{n}_")]
    return (max(names, key=len), acc) if names else None


def _as_tensor(value: Any) -> Any:
    """A numpy array as a tensor (shares memory); anything else as it is."""
    if isinstance(value, np.ndarray):
        if not value.dtype.isnative:  # torch takes native byte order only
            value = value.astype(value.dtype.newbyteorder("="))
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def _map_state(state: Mapping[str, Any], params: Mapping[str, torch.Tensor],
               fn: Any) -> dict[str, Any]:
    """``state`` with ``fn(value, param)`` applied to every moment and master weight (the
    values shaped like their parameter); pows, ``'LR_Scheduler'`` and other keys as they are.
    numpy arrays (``triton_adam.load(..., return_numpy=True)``) are taken as tensors.

    Raises ``TypeError`` if ``state`` or ``params`` is not a Mapping (``params``: of str names
    to tensors), ``ValueError`` if a tensor's key (any counter, ``_0``, ``_1``, ...) or a
    master weight names no parameter of ``params``. The three public helpers share it."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be an optimizer state dict (a Mapping such as "
                        f"opt.state_dict()), got {type(state).__name__}")
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a Mapping of parameter name (as in the state_dict "
                        f"keys) -> parameter, such as dict(model.named_parameters()), got "
                        f"{type(params).__name__}")
    for name, param in params.items():
        if not isinstance(name, str) or not isinstance(param, torch.Tensor):
            raise TypeError(f"params[{name!r}] must map a str name to a parameter tensor, got "
                            f"{type(name).__name__} -> {type(param).__name__}")
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key == "master_weights" and isinstance(value, Mapping):
            # fp32 master weights (multi_precision): parameter name -> tensor like the param.
            masters = {}
            for name, master in value.items():
                if name not in params:
                    raise ValueError(f"state_dict['master_weights'][{name!r}] names no "
                                     "parameter of the given mapping")
                master = _as_tensor(master)
                if not isinstance(master, torch.Tensor):
                    raise TypeError(f"state_dict['master_weights'][{name!r}] is a "
                                    f"{type(master).__name__}; expected a tensor")
                masters[name] = fn(master, params[name])
            out[key] = masters
            continue
        if key != "LR_Scheduler" and isinstance(value, np.ndarray):
            value = _as_tensor(value)
        if key == "LR_Scheduler" or not isinstance(value, torch.Tensor):
            out[key] = value
            continue
        split = _split_key(key, params)
        if split is None:
            raise ValueError(f"state_dict key {key!r} names no parameter of the given mapping")
        name, acc = split
        out[key] = fn(value, params[name]) if acc in MOMENT_ACCUMULATORS else value
    return out


def gather_full_state(state: Mapping[str, Any],
                      params: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The single-process state of a sharded run: every moment (and fp32 master weight)
    all-gathered to the whole parameter's shape (``full_tensor_like``), pows and
    ``'LR_Scheduler'`` as they are.

    ``state``: this rank's ``opt.state_dict()``; ``params``: parameter name (as used in the
    keys) -> parameter. A collective: every rank calls it with the same keys in the same
    order (the same optimizer on every rank gives that); every rank gets the full state.
    """
    return _map_state(state, params, full_tensor_like)


def shard_full_state(state: Mapping[str, Any],
                     params: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """This rank's part of a full (single-process) state: every moment (and fp32 master
    weight) sliced like its parameter (``local_shard_like``), pows and ``'LR_Scheduler'`` as
    they are. The result is what ``opt.set_state_dict`` of a sharded run takes. Values may
    be torch tensors or numpy arrays. No communication."""
    return _map_state(state, params, local_shard_like)


def state_as_dtensors(state: Mapping[str, Any],
                      params: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``state`` with every moment (and master weight) of a DTensor parameter wrapped as a
    DTensor sharded like it (a view of the same memory, no copy), for
    ``torch.distributed.checkpoint``:
    ``dcp.save({"optim": state_as_dtensors(opt.state_dict(), params)}, ...)`` writes one
    checkpoint of the whole state from all ranks. To load it into a live optimizer (whose
    state exists: after a step or a ``set_state_dict``)::

        state = opt.state_dict()  # moments: views of the live state; pows: copies
        dcp.load({"optim": state_as_dtensors(state, params)}, checkpoint_id=path)
        opt.set_state_dict(state)  # the loaded pows (and scheduler) into the optimizer

    ``dcp.load`` writes the moments in place through the views; the pows (and the step
    counts, bf16 moments and remainder-format masters, which ``state_dict()`` returns as
    copies) land in the dict, which ``set_state_dict`` then loads: the call above is needed
    whatever the mode."""
    def wrap(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if not is_dtensor(like):
            return local
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False,
                                  shape=like.shape, stride=like.stride())

    return _map_state(state, params, wrap)
