"""How the PyTorch face's state is laid out, exported and loaded: ``torch.optim.Adam``'s format.

``triton_adam.optim.Adam``/``AdamW`` keep their state in the engine (``triton_adam.engine``:
flat buffers per bucket, pows ``beta ** t`` and a step count per parameter). This module maps
one parameter's engine state to the entry ``torch.optim.Adam`` keeps for it, and back:

* export (``param_state``): ``{"step": tensor, "exp_avg", "exp_avg_sq", ["max_exp_avg_sq"],
  ["master"]}``. ``step`` is what torch keeps: a float32 tensor of shape ``[]`` counting the
  steps applied (a step skipped by AMP's ``found_inf`` does not count), on the CPU, or on the
  parameter's device for a ``capturable`` optimizer (torch's placement), and a copy taken by
  the call (the engine's count lives in a slot that alternates between steps). The moments and
  ``master`` (the fp32 master weights of a bf16/fp16 parameter with ``master_weights=True``, an
  entry torch does not have) are live views of the engine's buffers, as torch's own
  ``state_dict()`` returns its live state tensors; for a DTensor (FSDP2) parameter they are
  DTensors sharded like it, as torch's state would be. The pows are not exported: torch
  derives its bias corrections from ``step`` and the group's current betas.
* import (``check_entry`` then ``engine_values``): every entry is checked (keys, types,
  shapes, dtypes, a finite whole ``step``) before anything is written. The step count is what
  the bias corrections continue from (the PyTorch face's engine computes ``1 - beta ** t``
  from it and the current betas, as torch does); the pows the engine also keeps (Paddle's
  running products) are set to ``beta ** (step + 1)``, computed in float64 from the betas of
  the parameter's group and cast to the state dtype, so that they are consistent too.

What a value may be, on load:

* moments: a dense tensor (any device) shaped like the parameter (its local shard for a
  DTensor parameter, or a DTensor sharded like it), of the engine's state dtype: the
  parameter's dtype for float32/float64 parameters, float32 for bf16/fp16 ones, which also
  accept their own dtype (torch keeps a bf16 parameter's moments in bf16; they widen exactly);
* ``master``: float32, shaped like the parameter, only for a parameter that keeps master
  weights. Without it such a parameter's master is the parameter's current value (a
  checkpoint of ``torch.optim.AdamW`` has none);
* ``step``: a tensor with one element or a Python number, finite, whole and >= 0.

``StateView`` is ``optimizer.state`` for tools that read it as torch's ``defaultdict``
(``torch.distributed.checkpoint`` checks ``if optim.state`` and walks ``optim.state[p]``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from triton_adam import dtensor as D
from triton_adam.engine import Engine
from triton_adam.state import (MissingStateError, StateDictError, StateDictTypeError,
                                tensor_without_values)

__all__ = ["MASTER", "MOMENTS", "STEP", "ParamLoad", "StateView", "check_entry",
           "check_structure", "engine_values", "fresh_values", "param_state"]

STEP = "step"
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # torch's names, the engine's too
MASTER = "master"
# A step count is exact in float32 up to 2**24; torch keeps it in float32 too.
_MAX_STEP = 2.0 ** 24


# ------------------------------------------------------------------------------ export
def _like_param(local: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``local`` (engine state shaped like ``param``'s local shard) as torch's optimizer would
    hold it: a DTensor sharded like a DTensor parameter (a view, no copy), else itself."""
    if not D.is_dtensor(param):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())


def param_state(engine: Engine, index: int, *, capturable: bool) -> dict[str, torch.Tensor]:
    """Parameter ``index``'s state in torch's layout (empty before it has state): see the
    module docstring. The step is a copy taken now; on the CPU unless ``capturable`` (a
    device-to-host copy, as torch keeps a non-capturable step on the host)."""
    state = engine.state(index)
    if not state:
        return {}
    param = engine.params[index]
    step = state[STEP].to(torch.float32, copy=True).reshape(())
    if not capturable:
        step = step.cpu()
    out = {STEP: step}
    for name in MOMENTS + (MASTER,):
        if name in state:
            out[name] = _like_param(state[name], param)
    return out


# ------------------------------------------------------------------------------ import
@dataclass
class ParamLoad:
    """One parameter's checked entry: the step count and the tensors to copy in (local
    shards, any dtype the rules allow; the copy converts)."""

    step: float
    tensors: dict[str, torch.Tensor]


def _local_value(value: object, param: torch.Tensor, where: str, what: str) -> torch.Tensor:
    """``value`` as a dense tensor shaped like ``param``'s local shard, or a StateDictError
    naming ``where``: a DTensor value must be sharded like a DTensor parameter."""
    if not isinstance(value, torch.Tensor):
        raise StateDictTypeError(f"{where} ({what}) is a {type(value).__name__}; expected a "
                                 "tensor")
    if D.is_dtensor(value):
        if not D.is_dtensor(param):
            raise StateDictTypeError(f"{where} ({what}) is a DTensor but the parameter is not "
                                     "sharded; expected a plain tensor")
        if (value.device_mesh != param.device_mesh
                or tuple(value.placements) != tuple(param.placements)
                or value.shape != param.shape):
            raise StateDictError(
                f"{where} ({what}) is a DTensor of shape {list(value.shape)} with placements "
                f"{tuple(value.placements)}, but the parameter is {list(param.shape)} with "
                f"{tuple(param.placements)} on another layout: reshard it like the parameter "
                "(torch.distributed.checkpoint does when loading into this optimizer's "
                "state_dict())")
        value = D.local_tensor(value)
    why = tensor_without_values(value)
    if why is not None:
        raise StateDictTypeError(f"{where} ({what}) is {why}; expected a dense tensor")
    local = D.local_tensor(param)
    if value.shape != local.shape:
        shard = (" (this rank's shard of a sharded parameter)" if local is not param else "")
        raise StateDictError(f"{where} ({what}) has shape {list(value.shape)}, expected "
                             f"{list(local.shape)}{shard}")
    return value.detach()


def _step_value(value: object, where: str) -> float:
    """A saved step count as a float: a one-element real tensor (read back: this is load time,
    not a step) or a Python number; finite, whole, >= 0."""
    if isinstance(value, torch.Tensor):
        if D.is_dtensor(value):
            raise StateDictTypeError(f"{where} is a DTensor; a step count is a plain tensor")
        why = tensor_without_values(value)
        if why is not None:
            raise StateDictTypeError(f"{where} is {why}; expected a one-element tensor")
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise StateDictTypeError(f"{where} must be a real tensor with one element (torch "
                                     f"keeps a float32 scalar), got shape {list(value.shape)} "
                                     f"and dtype {value.dtype}")
        step = float(value.detach().reshape(()).to("cpu", torch.float64))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        step = float(value)
    else:
        raise StateDictTypeError(f"{where} is a {type(value).__name__}; expected the step count "
                                 "as a tensor (torch's float32 scalar) or a number")
    if not math.isfinite(step) or step < 0 or step != math.floor(step) or step > _MAX_STEP:
        raise StateDictError(f"{where} is {step}; a step count must be a finite whole number "
                             f"in [0, 2**24]")
    return step


def check_entry(engine: Engine, index: int, entry: object, *, where: str,
                label: str) -> ParamLoad | None:
    """Check parameter ``index``'s saved entry against the engine (nothing is written).

    Returns None for an empty entry (the parameter had no state), else what to load. Raises
    ``StateDictError`` (shape, dtype, value), ``StateDictTypeError`` (not a dict, not a dense
    tensor) or ``MissingStateError`` (a required key absent), naming ``where`` and
    ``label``."""
    if not isinstance(entry, Mapping):
        raise StateDictTypeError(f"{where} (the state of {label}) must be a dict, got "
                                 f"{type(entry).__name__}")
    if not entry:
        return None
    param = engine.params[index]
    required = [STEP, "exp_avg", "exp_avg_sq"] + ["max_exp_avg_sq"] * engine.amsgrad
    allowed = set(required) | ({MASTER} if engine.has_master(index) else set())
    missing = [k for k in required if k not in entry]
    if missing:
        hint = (" (this optimizer has amsgrad=True: was the state saved without it?)"
                if missing == ["max_exp_avg_sq"] else "")
        raise MissingStateError(f"{where} (the state of {label}) has no {missing}{hint}; "
                                f"it has {sorted(map(str, entry))}")
    extra = [k for k in entry if k not in allowed]
    if extra:
        if "max_exp_avg_sq" in extra:
            hint = (" (saved with amsgrad=True, and this optimizer has amsgrad=False: build "
                    "it with amsgrad=True)")
        elif MASTER in extra:
            hint = (" (fp32 master weights, but this parameter keeps none here: it is not "
                    "bf16/fp16, or master_weights=False; drop the 'master' entries to load "
                    "without them)")
        else:
            hint = ""
        raise StateDictError(f"{where} (the state of {label}) has keys this optimizer does not "
                             f"keep: {', '.join(sorted(map(repr, extra)))}{hint}")
    step = _step_value(entry[STEP], f"{where}['step']")
    state_dtype = engine.state_dtype(index)
    # torch keeps a bf16/fp16 parameter's moments in its own dtype; they widen exactly.
    dtypes = {state_dtype, param.dtype}
    tensors = {}
    for name in required[1:]:
        value = _local_value(entry[name], param, f"{where}[{name!r}]", f"{name} of {label}")
        if value.dtype not in dtypes:
            expected = " or ".join(sorted(map(str, dtypes)))
            raise StateDictError(f"{where}[{name!r}] ({name} of {label}) has dtype "
                                 f"{value.dtype}, expected {expected}")
        tensors[name] = value
    if MASTER in entry:
        value = _local_value(entry[MASTER], param, f"{where}['master']",
                             f"master weight of {label}")
        if value.dtype != torch.float32:
            raise StateDictError(f"{where}['master'] (master weight of {label}) has dtype "
                                 f"{value.dtype}, expected torch.float32")
        tensors[MASTER] = value
    return ParamLoad(step, tensors)


def _pow(beta: float | torch.Tensor, exponent: float, dtype: torch.dtype,
         device: torch.device) -> torch.Tensor:
    """``beta ** exponent`` in float64, cast to ``dtype``, as a ``[1]`` tensor on ``device``
    (a float beta: computed on the host and filled in, no copy from host memory; a tensor
    beta: computed on its device, never read back)."""
    if isinstance(beta, torch.Tensor):
        b = beta.detach().reshape(1).to(torch.float64)
        return torch.pow(b, exponent).to(dtype)
    return torch.full((1,), float(beta) ** exponent, dtype=dtype, device=device)


def engine_values(engine: Engine, index: int, load: ParamLoad, beta1: float | torch.Tensor,
                  beta2: float | torch.Tensor) -> dict[str, torch.Tensor]:
    """What ``Engine.load_state`` takes for parameter ``index``: the checked tensors, the step
    and the pows of the next step, ``beta ** (step + 1)`` of the group's betas; the master
    weights from the parameter when the entry has none."""
    dtype = engine.state_dtype(index)
    values = dict(load.tensors)
    if engine.has_master(index) and MASTER not in values:
        values[MASTER] = D.local_tensor(engine.params[index]).detach().to(torch.float32)
    device = D.local_tensor(engine.params[index]).device
    values["beta1_pow"] = _pow(beta1, load.step + 1, dtype, device)
    values["beta2_pow"] = _pow(beta2, load.step + 1, dtype, device)
    values[STEP] = torch.full((1,), load.step, dtype=dtype, device=device)
    return values


def fresh_values(engine: Engine, index: int, beta1: float | torch.Tensor,
                 beta2: float | torch.Tensor) -> dict[str, torch.Tensor]:
    """The state of parameter ``index`` before its first step, as ``Engine.load_state`` takes
    it: zero moments, step 0, pows ``beta`` of the given betas, master weights from the
    parameter. Built on the parameter's device (no host data for the large tensors)."""
    local = D.local_tensor(engine.params[index])
    dtype = engine.state_dtype(index)
    zeros = torch.zeros(local.shape, dtype=dtype, device=local.device)
    values = {name: zeros for name in MOMENTS[:2 + engine.amsgrad]}
    if engine.has_master(index):
        values[MASTER] = local.detach().to(torch.float32)
    values["beta1_pow"] = _pow(beta1, 1, dtype, local.device)
    values["beta2_pow"] = _pow(beta2, 1, dtype, local.device)
    values[STEP] = torch.zeros(1, dtype=dtype, device=local.device)
    return values


def check_structure(state_dict: object, groups: Sequence[Sequence[torch.Tensor]]
                    ) -> tuple[list[dict], dict[int, tuple[Hashable, object]]]:
    """Check the outer layout of a torch optimizer state dict against this optimizer's
    parameter groups (``groups[g]``: that group's parameters, in order).

    Returns the saved parameter groups (deep copies, as torch's ``load_state_dict`` takes
    them) and, per parameter index (the position over all groups), ``(saved id, entry)``.
    Saved ids are matched to parameters by position, as torch does: they are ints in torch's
    own dicts, fully qualified names in ``torch.distributed.checkpoint``'s."""
    if not isinstance(state_dict, Mapping):
        raise StateDictTypeError(f"a torch optimizer state_dict must be a dict with 'state' and "
                                 f"'param_groups', got {type(state_dict).__name__}")
    missing = [k for k in ("state", "param_groups") if k not in state_dict]
    if missing:
        raise MissingStateError(f"state_dict has no {missing}: a torch optimizer state_dict "
                                "has 'state' and 'param_groups' (a Paddle-style dict loads "
                                "into triton_adam.Adam/AdamW with set_state_dict)")
    extra = [k for k in state_dict if k not in ("state", "param_groups")]
    if extra:
        raise StateDictError(f"state_dict has keys other than 'state' and 'param_groups': "
                             f"{sorted(map(repr, extra))}")
    saved, state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved, (list, tuple)):
        raise StateDictTypeError("state_dict['param_groups'] must be a list of dicts, got "
                                 f"{type(saved).__name__}")
    if not isinstance(state, Mapping):
        raise StateDictTypeError("state_dict['state'] must be a dict of parameter id -> "
                                 f"state, got {type(state).__name__}")
    if len(saved) != len(groups):
        raise StateDictError(f"loaded state dict has a different number of parameter groups: "
                             f"{len(saved)} saved, {len(groups)} in this optimizer")
    position: dict[Hashable, int] = {}
    for g, (group, params) in enumerate(zip(saved, groups)):
        where = f"state_dict['param_groups'][{g}]"
        if not isinstance(group, Mapping):
            raise StateDictTypeError(f"{where} must be a dict, got {type(group).__name__}")
        ids = group.get("params")
        if not isinstance(ids, (list, tuple)):
            raise StateDictTypeError(f"{where}['params'] must be a list of parameter ids, got "
                                     f"{type(ids).__name__}")
        if len(ids) != len(params):
            raise StateDictError(f"loaded state dict contains a parameter group that doesn't "
                                 f"match the size of optimizer's group: {where} has "
                                 f"{len(ids)} parameters, this optimizer's group {g} has "
                                 f"{len(params)}")
        for pid in ids:
            if not isinstance(pid, Hashable) or isinstance(pid, torch.Tensor):
                raise StateDictTypeError(f"{where}['params'] holds a {type(pid).__name__}; "
                                         "expected parameter ids (ints or names)")
            if pid in position:
                raise StateDictError(f"parameter id {pid!r} is listed twice in "
                                     "state_dict['param_groups']")
            position[pid] = len(position)
    entries: dict[int, tuple[Hashable, object]] = {}
    for pid, entry in state.items():
        if not isinstance(pid, Hashable) or pid not in position:
            raise StateDictError(f"state_dict['state'] has an entry for parameter id {pid!r}, "
                                 "which no group of state_dict['param_groups'] lists")
        entries[position[pid]] = (pid, entry)
    return [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            for group in saved], entries


# ------------------------------------------------------------------------------ the view
class StateView(MutableMapping):
    """``optimizer.state`` as torch's ``defaultdict``: parameter -> its state entry.

    Holds the parameters that have state (``len``, ``bool``, iteration, ``in``); ``view[p]``
    is ``param_state`` of ``p`` (live moment views, a copy of the step), ``{}`` for a tensor
    without state (as torch's defaultdict gives, without inserting it). ``view[p] = entry``
    loads one parameter's entry with the rules of ``load_state_dict`` (all checked first);
    deleting raises (the engine keeps a parameter's slot).
    """

    def __init__(self, index_of: Callable[[torch.Tensor], int | None],
                 count: Callable[[], int], has_state: Callable[[int], bool],
                 params: Callable[[], Sequence[torch.Tensor]],
                 read: Callable[[int], dict], write: Callable[[int, object], None]) -> None:
        self._index_of, self._count, self._has = index_of, count, has_state
        self._params, self._read, self._write = params, read, write

    def __getitem__(self, param: object) -> dict[str, Any]:
        if not isinstance(param, torch.Tensor):
            raise KeyError(param)
        index = self._index_of(param)
        if index is None or not self._has(index):
            return {}
        return self._read(index)

    def __setitem__(self, param: object, entry: object) -> None:
        index = self._index_of(param) if isinstance(param, torch.Tensor) else None
        if index is None:
            raise KeyError("optimizer.state[p] = ... takes a parameter of this optimizer")
        self._write(index, entry)

    def __delitem__(self, param: object) -> None:
        raise TypeError("the state of a triton_adam.optim optimizer cannot be deleted "
                        "parameter by parameter: load a state_dict (load_state_dict) instead")

    def __contains__(self, param: object) -> bool:
        if not isinstance(param, torch.Tensor):
            return False
        index = self._index_of(param)
        return index is not None and self._has(index)

    def __iter__(self) -> Iterator[torch.Tensor]:
        params = self._params()
        return iter([p for i, p in enumerate(params) if self._has(i)])

    def __len__(self) -> int:
        return sum(1 for i in range(self._count()) if self._has(i))

    def __repr__(self) -> str:
        return f"StateView({len(self)} parameters with state)"
