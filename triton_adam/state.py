"""How optimizer state is named, exported and loaded: Paddle's ``state_dict`` keys and rules.

Keys are ``f"{param_name}_{[opt_name_]}{acc}_{N}"`` for ``acc`` in ``moment1``, ``moment2``,
``moment2_max`` (amsgrad), ``beta1_pow_acc``, ``beta2_pow_acc``
(``../shared/paddle-adam-semantics.md`` section 7), plus ``'LR_Scheduler'`` when a scheduler
drives the learning rate. A parameter with fp32 master weights (fp16/bf16 with
``multi_precision``) has its accumulators under its master's name,
``f"{param_name}_fp32_master_0_{[opt_name_]}{acc}_0"``, and its master in
``state_dict['master_weights'][param_name]``. Parameter names: see ``Adam._param_name``.

Paddle 3.3.1, as read in ``paddle/optimizer/optimizer.py`` and confirmed by running it:

* the trailing ``N`` is ``unique_name.generate``'s per-process counter: ``0`` for the first
  accumulator of that name in the process, ``1`` for the second optimizer over the same
  parameter, ... Paddle matches keys by exact name, so a file whose keys end in ``_1`` (saved by
  a process that had built an optimizer over those parameters before) does not load into a
  fresh Paddle process (``AssertionError: Optimizer set error, ..._0 should in state dict`` at
  the first step). The counter carries no information, so this module writes ``_0`` and, when
  the ``_0`` key is absent, accepts the one key of that stem with another counter.
* ``set_state_dict`` on an optimizer whose accumulators exist checks that every one is in the
  dict (AssertionError otherwise) and copies the values in (``set_value``: shape and dtype must
  match, AssertionError otherwise), after restoring the scheduler, and stops at the first bad
  entry with the earlier ones loaded. Before the first step it only keeps the dict
  (``_accumulators_holder``); each accumulator takes its value from it when it is created, and
  raises then if it is missing or mismatched, but only while the dict still holds values
  nobody took: a parameter absent from the dict raises at its first step or starts fresh
  depending on whether the parameters before it in creation order have drained the dict.
* extra keys are ignored; ``LR_Scheduler`` is required when the optimizer has a scheduler
  (except ``LambdaDecay``) and ignored otherwise.

What ``set_state_dict`` here does: Paddle's outcomes for a complete, matching dict; errors
found at load time instead of at a later step, and never half-loaded:

* every entry is checked before anything is written: on any error nothing changes (moments,
  pows, master weights, scheduler, and no state is created);
* a parameter that has state, or has some of its keys in the dict, must have all of them
  (``MissingStateError``, naming the keys); shapes and dtypes must be the state's
  (``StateDictError``, naming the key, the expected and the given);
* a parameter with none of its keys is one the saved optimizer had never updated: it keeps no
  state and starts at its first gradient, as in the run that saved the dict, unless the dict
  holds accumulator keys that match no parameter here (other parameter names, another
  optimizer ``name``, amsgrad keys into a non-amsgrad optimizer): then its absence is an
  error, as in Paddle, whose dict would never drain. (Paddle's own outcome depends on the
  order in which parameters are created; this one does not.)
* keys are matched by name; the counter as said above; several other counters and no
  ``_0`` is ambiguous (``StateDictError``);
* a parameter with master weights needs ``master_weights[param_name]`` with its
  accumulators (Paddle would silently rebuild the master from the rounded parameter);
* values are copied in (never aliased); they may be torch tensors (any device), numpy arrays
  (``triton_adam.load(..., return_numpy=True)``, ``paddle.load(..., return_numpy=True)``) or
  Paddle tensors (``paddle.load``);
* loading before the first step creates the state at once: the optimizer's buckets are built
  at load time (as the first step would build them), so ``state_dict()`` returns the loaded
  values, as Paddle returns its held dict. Per-parameter attributes (``set_param_attr``,
  ``lr_ratio``, ``apply_decay_param_fun``) are read then, not at the first step; a
  bf16/fp16 parameter's gradient dtype (its own or fp32) is fixed by its first gradient.

``state_dict()`` returns the moments and master weights as views of the live state (no copy
of model-sized buffers; Paddle too returns its live accumulators) and the pows as copies
taken by the call (they alternate between two slots, so a view would later show another
step's value): save the dict before the next step.

Sharded runs (FSDP2 DTensor parameters): the keys are the same; each rank's moments and
master weights are its local shard's (shaped like ``param._local_tensor``), the pows are the
same on every rank. ``triton_adam.distributed`` gathers a full state from the shards
(``gather_full_state``), slices a full state into a rank's part (``shard_full_state``, what
``set_state_dict`` of that rank takes) and wraps the shards for
``torch.distributed.checkpoint`` (``state_as_dtensors``).
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from triton_adam import distributed as _dist
from triton_adam.kernels import adam as K
from triton_adam.lr import LambdaDecay, LRScheduler

if TYPE_CHECKING:
    from triton_adam.buckets import Bucket
    from triton_adam.optimizer import _AdamBase

# Paddle's accumulator names.
MOMENT1 = "moment1"
MOMENT2 = "moment2"
MOMENT2_MAX = "moment2_max"
BETA1_POW = "beta1_pow_acc"
BETA2_POW = "beta2_pow_acc"
LR_SCHEDULER_KEY = "LR_Scheduler"
MASTER_WEIGHTS_KEY = "master_weights"
MASTER_SUFFIX = "_fp32_master_0"  # Paddle's master weight name: f"{param.name}_fp32_master_0"

# Which accumulator, in Paddle's order (state_dict lists them accumulator by accumulator).
_MOMENTS = (MOMENT1, MOMENT2, MOMENT2_MAX)
_POWS = (BETA1_POW, BETA2_POW)
# A Paddle accumulator key: prefix, accumulator, counter. ``moment2`` must not swallow
# ``moment2_max``: the counter is digits only, so the regex backtracks to the longer name.
_ACC_KEY = re.compile(r"(.+)_(moment1|moment2|moment2_max|beta1_pow_acc|beta2_pow_acc)_(\d+)")
_MASTER_IN_PREFIX = re.compile(r"_fp32_master_\d+$")


class StateDictError(ValueError):
    """A state dict does not fit the optimizer (shape, dtype, ambiguous or foreign keys)."""


class MissingStateError(StateDictError, KeyError):
    """An accumulator (or master weight) the optimizer needs is not in the state dict."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


# ------------------------------------------------------------------------------ naming
def _names(opt: _AdamBase) -> list[str]:
    """Every parameter's name, checked to be distinct (keys are built from them)."""
    names = [opt._param_name(i) for i in range(len(opt._parameter_list))]
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            raise ValueError(
                f"parameters {first[name]} and {i} are both named {name!r}: their optimizer "
                "state would share keys. Give them distinct names, e.g. "
                "triton_adam.set_param_attr(p, name=...), or pass named_parameters() of one "
                "module")
        first[name] = i
    return names


def _has_master(opt: _AdamBase, param: torch.Tensor) -> bool:
    """Whether ``param`` has fp32 master weights (what ``Bucket.has_master`` decides)."""
    return bool(opt._multi_precision) and param.dtype in K.LOW_PRECISION


def _prefix(opt: _AdamBase, name: str, master: bool) -> str:
    """The key prefix of a parameter's accumulators, without the trailing ``_``."""
    base = name + MASTER_SUFFIX if master else name
    return f"{base}_{opt._name}" if opt._name else base


def _accs(opt: _AdamBase) -> tuple[str, ...]:
    moments = _MOMENTS if opt._amsgrad else _MOMENTS[:2]
    return moments + _POWS


# ------------------------------------------------------------------------------ export
def state_dict(opt: _AdamBase) -> dict[str, Any]:
    """The accumulators of ``opt`` under Paddle's keys (see ``_AdamBase.state_dict``).

    Moments and master weights are views of the live state (no copy: they are as large as the
    model, and Paddle too returns its live accumulators); the pows are copies taken now: they
    live in two slots that alternate between steps, so a view would show a value of the wrong
    step later. Use (save) the dict before the next step.
    """
    names = _names(opt)
    members: list[tuple[int, Bucket, int]] = []
    for index, param in enumerate(opt._parameter_list):
        where = opt._where.get(id(param))
        if where is not None and where[0].created[where[1]]:
            members.append((index, *where))
    pows: dict[int, torch.Tensor] = {}  # one copy of each bucket's pow table
    for _, bucket, _ in members:
        if id(bucket) not in pows:
            pows[id(bucket)] = bucket.pows.clone()

    out: dict[str, Any] = {}
    for acc in _accs(opt):
        for index, bucket, j in members:
            master = getattr(bucket, "master", None) is not None
            key = f"{_prefix(opt, names[index], master)}_{acc}_0"
            if acc in _POWS:
                which = _POWS.index(acc)
                out[key] = pows[id(bucket)][bucket.current_slot(j), j, which:which + 1]
            else:
                buffer = getattr(bucket, acc)
                if buffer is None:  # moment2_max of a bucket built without amsgrad
                    continue
                out[key] = bucket.state_view(buffer, j)
    masters = {names[index]: bucket.state_view(bucket.master, j)
               for index, bucket, j in members if getattr(bucket, "master", None) is not None}
    if masters:
        out[MASTER_WEIGHTS_KEY] = masters
    if isinstance(opt._learning_rate, LRScheduler):
        out[LR_SCHEDULER_KEY] = opt._learning_rate.state_dict()
    return out


# ------------------------------------------------------------------------------ import
@dataclass
class _Value:
    """One checked entry to copy in: where it came from and its value (tensor or ndarray)."""

    key: str
    value: torch.Tensor | np.ndarray


@dataclass
class _Load:
    """Everything to write for one parameter."""

    index: int
    values: dict[str, _Value]  # acc -> value
    master: _Value | None


def _as_value(key: str, value: object) -> torch.Tensor | np.ndarray:
    """A state dict value as a torch tensor or an ndarray (Paddle tensors via ``numpy()``)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value
    # A paddle.Tensor, duck-typed so that paddle need not be imported (or installed).
    if type(value).__module__.startswith("paddle") and callable(getattr(value, "numpy", None)):
        return np.asarray(value.numpy())
    raise TypeError(f"state_dict[{key!r}] is a {type(value).__name__}; expected a "
                    "torch.Tensor, a numpy.ndarray or a paddle.Tensor")


def _dtype_of(value: torch.Tensor | np.ndarray) -> torch.dtype | np.dtype:
    if isinstance(value, torch.Tensor):
        return value.dtype
    try:
        return torch.from_numpy(np.empty(0, dtype=value.dtype)).dtype
    except TypeError:
        return value.dtype  # a dtype no tensor has: reported as numpy's, never equal


def _check(key: str, value: object, shape: tuple[int, ...], dtype: torch.dtype,
           what: str) -> _Value:
    """``value`` as a ``_Value`` if it has ``shape`` and ``dtype`` (Paddle's ``set_value``
    checks), else a ``StateDictError`` naming the key, the expected and the given."""
    v = _as_value(key, value)
    got_shape = tuple(v.shape)
    if got_shape != shape:
        raise StateDictError(f"state_dict[{key!r}] ({what}) has shape {list(got_shape)}, "
                             f"expected {list(shape)}")
    got_dtype = _dtype_of(v)
    if got_dtype != dtype:
        raise StateDictError(f"state_dict[{key!r}] ({what}) has dtype {got_dtype}, "
                             f"expected {dtype}")
    return _Value(key, v)


def _index_keys(state: dict, opt_name: str | None
                ) -> tuple[dict[tuple[str, str], list[str]], list[str]]:
    """Accumulator keys by ``(prefix, acc)``: the prefix with the optimizer ``name`` removed
    and a master counter normalized to ``_fp32_master_0``; the list holds every counter.
    Also every accumulator-shaped key (those of another optimizer name included)."""
    index: dict[tuple[str, str], list[str]] = {}
    every: list[str] = []
    suffix = f"_{opt_name}" if opt_name else ""
    for key in state:
        if not isinstance(key, str):
            continue
        m = _ACC_KEY.fullmatch(key)
        if m is None:
            continue
        every.append(key)
        prefix, acc = m.group(1), m.group(2)
        if suffix:
            if not prefix.endswith(suffix):
                continue
            prefix = prefix[:-len(suffix)]
        prefix = _MASTER_IN_PREFIX.sub(MASTER_SUFFIX, prefix)
        index.setdefault((prefix, acc), []).append(key)
    return index, every


def _pick(candidates: list[str], exact: str) -> str:
    """The key for one accumulator: the exact ``_0`` key, else the only other counter."""
    if exact in candidates:
        return exact
    if len(candidates) == 1:
        return candidates[0]
    raise StateDictError(f"state_dict has {len(candidates)} keys for {exact!r} with other "
                         f"counters ({sorted(candidates)}) and not that key: which one is "
                         "this optimizer's is ambiguous")


def _plan(opt: _AdamBase, state: dict) -> tuple[list[_Load], object]:
    """Check ``state`` against ``opt`` without changing anything: what to write, and the
    scheduler state to restore (None if none)."""
    if not isinstance(state, dict):
        raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
    names = _names(opt)
    accs = _accs(opt)
    index, every = _index_keys(state, opt._name)
    used: set[str] = set()

    masters = state.get(MASTER_WEIGHTS_KEY)
    if masters is not None and not isinstance(masters, dict):
        raise TypeError(f"state_dict[{MASTER_WEIGHTS_KEY!r}] must be a dict of parameter name "
                        f"-> float32 tensor, got {type(masters).__name__}")

    loads: list[_Load] = []
    absent: list[tuple[int, str]] = []  # trainable params with none of their keys
    for i, param in enumerate(opt._parameter_list):
        name = names[i]
        master = _has_master(opt, param)
        prefix = _prefix(opt, name, master)
        lookup = name + MASTER_SUFFIX if master else name  # as _index_keys normalizes
        found = {acc: _pick(index[(lookup, acc)], f"{prefix}_{acc}_0")
                 for acc in accs if (lookup, acc) in index}
        where = opt._where.get(id(param))
        has_state = where is not None and where[0].created[where[1]]
        what = f"parameter {name!r}"
        if not found:
            if has_state:
                raise MissingStateError(
                    f"optimizer state of {what} not found: state_dict has no key "
                    f"{prefix}_{accs[0]}_0 (nor its other accumulators), and the parameter "
                    "already has state here")
            if param.requires_grad:
                absent.append((i, f"{prefix}_{accs[0]}_0"))
            continue
        missing = [f"{prefix}_{acc}_0" for acc in accs if acc not in found]
        if missing:
            raise MissingStateError(
                f"optimizer state of {what} is incomplete: state_dict has "
                f"{sorted(found.values())} but not {missing}"
                + (" (the optimizer has amsgrad=True: was the state saved without it?)"
                   if any(k.endswith(f"_{MOMENT2_MAX}_0") for k in missing) else ""))
        compute = (where[0].compute_dtype if where is not None
                   else K.compute_dtype_for(param.dtype))
        # A DTensor (FSDP2) parameter's state is its local shard's: each rank loads its part
        # (triton_adam.distributed.shard_full_state slices a full state).
        local = _dist.local_tensor(param)
        shape = tuple(local.shape)
        shard = ("" if local is param else ", whose state here is this rank's shard: load "
                 "triton_adam.distributed.shard_full_state(full_state, params) into a "
                 "sharded run")
        values = {}
        for acc, key in found.items():
            expected = (1,) if acc in _POWS else shape
            values[acc] = _check(key, state[key], expected, compute,
                                 f"{acc} of {what}{'' if acc in _POWS else shard}")
            used.add(key)
        master_value = None
        if master:
            if masters is None or name not in masters:
                raise MissingStateError(
                    f"master weight of {what} not found: state_dict[{MASTER_WEIGHTS_KEY!r}]"
                    f"[{name!r}] is needed with its accumulators (without it the fp32 master "
                    "would be rebuilt from the rounded parameter)")
            master_value = _check(f"{MASTER_WEIGHTS_KEY}/{name}", masters[name], shape,
                                  torch.float32, f"master weight of {what}")
        loads.append(_Load(i, values, master_value))

    if absent:
        foreign = sorted(k for k in every if k not in used)
        if foreign:
            i, key = absent[0]
            shown = ", ".join(repr(k) for k in foreign[:4]) + (", ..." if len(foreign) > 4
                                                                 else "")
            raise MissingStateError(
                f"optimizer state of parameter {names[i]!r} not found (no key {key!r}), and "
                f"state_dict holds {len(foreign)} accumulator key(s) that match no parameter "
                f"of this optimizer ({shown}): parameter names, the optimizer's name "
                f"({opt._name!r}) or amsgrad differ from the run that saved it. (A parameter "
                "absent from a state dict whose keys all match is taken as never updated.)")

    lr_state = None
    sched = opt._learning_rate
    if isinstance(sched, LRScheduler):
        lr_state = state.get(LR_SCHEDULER_KEY)
        if lr_state is None and not isinstance(sched, LambdaDecay):
            raise MissingStateError(
                f"state_dict has no {LR_SCHEDULER_KEY!r} but the optimizer's learning rate is "
                f"a {type(sched).__name__}: its state is needed to resume the schedule")
        if isinstance(lr_state, dict) and not lr_state:
            lr_state = None  # Paddle: an empty scheduler state is accepted and not applied
        if lr_state is not None:
            if not isinstance(lr_state, dict):
                raise TypeError(f"state_dict[{LR_SCHEDULER_KEY!r}] must be a dict, got "
                                f"{type(lr_state).__name__}")
            # Dry run on a copy: the scheduler's own checks fire before anything is written.
            try:
                probe = copy.deepcopy(sched)
            except Exception:  # an uncopyable user attribute: rely on the real call
                probe = None
            if probe is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    probe.set_state_dict(lr_state)
    return loads, lr_state


def _to_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if not value.flags.writeable:  # torch.from_numpy warns on read-only arrays
        value = value.copy()
    return torch.from_numpy(np.ascontiguousarray(value))


@torch.no_grad()
def set_state_dict(opt: _AdamBase, state_dict: dict) -> None:
    """Load ``state_dict`` (from ``state_dict()`` here or in Paddle) into ``opt``.

    Rules: the module docstring. Every value is checked before anything is written, so on an
    error the optimizer is unchanged.

    Raises:
        MissingStateError: (a ``StateDictError`` and a ``KeyError``) an accumulator of a
            parameter that has state, or has some of its keys in the dict, is missing; a
            parameter has no keys while the dict holds accumulator keys of other names; the
            master weight of a loaded fp16/bf16 parameter is missing; ``LR_Scheduler`` is
            missing while a scheduler (other than ``LambdaDecay``) drives the learning rate.
        StateDictError: (a ``ValueError``) a value's shape or dtype is not the state's, or
            several counters (``_1``, ``_2``) compete for one key.
        TypeError: a value is not a tensor / ndarray, or ``state_dict`` is not a dict.
        ValueError: two parameters have the same name.
        RuntimeError: the scheduler rejects ``LR_Scheduler`` (its own check).
    """
    loads, lr_state = _plan(opt, state_dict)

    # State is created now for what is loaded: buckets as the first step would build them
    # (every trainable parameter), plus buckets for loaded parameters that are frozen now.
    params = opt._parameter_list
    if loads:
        opt._ensure_buckets(params[load.index] for load in loads)
        rest = [load.index for load in loads if id(params[load.index]) not in opt._where]
        if rest:
            opt._build_buckets(rest)
    if lr_state is not None:
        opt._learning_rate.set_state_dict(lr_state)
    for load in loads:
        bucket, j = opt._where[id(params[load.index])]
        for acc, v in load.values.items():
            src = _to_tensor(v.value)
            if acc in _POWS:
                which = _POWS.index(acc)
                bucket.pows[bucket.current_slot(j), j, which:which + 1].copy_(src)
            else:
                bucket.state_view(getattr(bucket, acc), j).copy_(src)
        if load.master is not None and getattr(bucket, "master", None) is not None:
            bucket.state_view(bucket.master, j).copy_(_to_tensor(load.master.value))
        bucket.created[j] = True  # the first step must not re-initialize what was loaded
