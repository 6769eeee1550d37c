"""How optimizer state is named, exported and loaded: Paddle's ``state_dict`` keys and rules.

Keys are ``f"{param_name}_{[opt_name_]}{acc}_{N}"`` for ``acc`` in ``moment1``, ``moment2``,
``moment2_max`` (amsgrad), ``beta1_pow_acc``, ``beta2_pow_acc`` (Paddle's names), plus
``'LR_Scheduler'`` when a scheduler drives the learning rate. A parameter with fp32 master
weights (fp16/bf16 with ``multi_precision``) has its accumulators under its master's name,
``f"{param_name}_fp32_master_0_{[opt_name_]}{acc}_0"``, and its master in
``state_dict['master_weights'][param_name]``. Parameter names: see ``Adam._param_name``.

Not Paddle's, and only in an optimizer that rounds stochastically (``moment_dtype=
torch.bfloat16`` or ``stochastic_rounding=True``): ``f"{prefix}_step_0"``, a ``[1]`` tensor of
the compute dtype, each parameter's count of applied steps, which keys its random stream, so a
resumed run draws the bits the uninterrupted one would. Paddle ignores these keys; a dict
without them (Paddle's, or from a mode without random bits) loads with the counts at 0. bf16
moments are exported as float32 and rounded to nearest even on load; remainder-format master
weights (``master_weight_format="remainder"``) are exported as the float32 masters they stand
for and split again on load, so the files are Paddle's either way.

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
  pows, master weights, scheduler, and no state is created). A value must be a dense tensor
  that holds data (not sparse, nested, on the meta device, fake, or a DTensor), a numpy array
  (any byte order: a big-endian float32 array is float32) or a Paddle tensor; anything else
  is a ``StateDictTypeError`` naming the key. Every error is a ``StateDictError``, which is
  also an ``AssertionError``, the type Paddle raises for the same mismatches;
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
  ``_0`` is ambiguous (``StateDictError``). A key whose base is another parameter's is never
  taken as this one's with other counters, so every name loads back, also names that look
  like counters (``x_fp32_master_1`` beside a bf16 ``x`` with master weights);
* two parameters whose keys would be the same (a parameter named like another's master
  weight, ``w_fp32_master_0`` beside a bf16 ``w`` with master weights) are an error in
  ``state_dict()`` and ``set_state_dict()`` (``ValueError`` naming both), not a silent
  overwrite;
* a parameter with master weights needs ``master_weights[param_name]`` with its
  accumulators (Paddle would silently rebuild the master from the rounded parameter);
* values are copied in (never aliased); they may be torch tensors (any device), numpy arrays
  (``triton_adam.load(..., return_numpy=True)``, ``paddle.load(..., return_numpy=True)``) or
  Paddle tensors (``paddle.load``). A value that is a view of this optimizer's own state
  (``opt.state_dict()`` with its keys moved around) is read before anything is written;
* ``LR_Scheduler`` values must be numbers (or None, or nested dicts of them, as the
  schedulers write) and give a finite learning rate;
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
import math
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from triton_adam import dtensor as _dist
from triton_adam.engine import Engine
from triton_adam.lr import LambdaDecay, LRScheduler

# Paddle's accumulator names.
MOMENT1 = "moment1"
MOMENT2 = "moment2"
MOMENT2_MAX = "moment2_max"
BETA1_POW = "beta1_pow_acc"
BETA2_POW = "beta2_pow_acc"
# Not Paddle's: each parameter's count of applied steps, in the dict only when the optimizer
# draws random bits (``moment_dtype=torch.bfloat16`` or ``stochastic_rounding``), whose stream
# is keyed by it (``triton_adam.engine``); Paddle ignores the extra key.
STEP = "step"
LR_SCHEDULER_KEY = "LR_Scheduler"
MASTER_WEIGHTS_KEY = "master_weights"
MASTER_SUFFIX = "_fp32_master_0"  # Paddle's master weight name: f"{param.name}_fp32_master_0"

# Which accumulator, in Paddle's order (state_dict lists them accumulator by accumulator).
_MOMENTS = (MOMENT1, MOMENT2, MOMENT2_MAX)
_POWS = (BETA1_POW, BETA2_POW)
# Paddle's accumulator names -> the engine's (triton_adam.engine.ACCUMULATORS).
ENGINE_NAME = {MOMENT1: "exp_avg", MOMENT2: "exp_avg_sq", MOMENT2_MAX: "max_exp_avg_sq",
               BETA1_POW: "beta1_pow", BETA2_POW: "beta2_pow", STEP: "step"}
# A Paddle accumulator key: prefix, accumulator, counter. ``moment2`` must not swallow
# ``moment2_max``: the counter is digits only, so the regex backtracks to the longer name.
# The prefix is greedy, and no accumulator name ends another one after a ``_``, so the prefix
# found is the one the key was built from (``a_moment1_0_moment1_0``: parameter
# ``a_moment1_0``). DOTALL: a name may hold any character, a newline too.
_ACC_KEY = re.compile(
    r"(.+)_(moment1|moment2|moment2_max|beta1_pow_acc|beta2_pow_acc|step)_(\d+)", re.DOTALL)
_MASTER_IN_PREFIX = re.compile(r"_fp32_master_\d+\Z")
# LR_Scheduler dicts nest (LinearWarmup holds its inner scheduler's); deeper is not a state.
_SCHEDULER_DEPTH = 16


class StateDictError(ValueError, AssertionError):
    """A state dict does not fit the optimizer (shape, dtype, ambiguous or foreign keys).

    Also an ``AssertionError``: Paddle's ``set_state_dict`` asserts for the same mismatches, so
    code written against Paddle catches it as it is.
    """


class StateDictTypeError(StateDictError, TypeError):
    """A state dict value no state can be loaded from: not a tensor, ndarray or Paddle tensor,
    or a tensor without dense values (sparse, nested, on the meta device, fake, a DTensor)."""


class MissingStateError(StateDictError, KeyError):
    """An accumulator (or master weight) the optimizer needs is not in the state dict."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


# ------------------------------------------------------------------------------ naming
@dataclass
class Layout:
    """What the keys of an optimizer's state are built from: its engine (parameters, which
    have state, master weights, amsgrad), every parameter's name, the optimizer's ``name``
    and its learning-rate scheduler (None for a constant learning rate)."""

    engine: Engine
    names: Sequence[str]
    opt_name: str | None = None
    scheduler: LRScheduler | None = None


def _names(layout: Layout) -> list[str]:
    """Every parameter's name, checked to be distinct (keys are built from them)."""
    names = list(layout.names)
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


def _check_bases(layout: Layout, names: list[str]) -> None:
    """Raise ``ValueError`` if two parameters would have the same keys: a parameter named
    exactly like another's master weight (``w_fp32_master_0`` beside a bf16 ``w`` with master
    weights). Names are distinct (``_names``), so that is the only way keys can meet."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        base = name + MASTER_SUFFIX if layout.engine.has_master(i) else name
        if base in first:
            plain, master = (i, first[base]) if name == base else (first[base], i)
            raise ValueError(
                f"parameter {names[plain]!r} is named like the fp32 master weight of parameter "
                f"{names[master]!r}: both would have the state_dict keys '{base}_..._0' and "
                "one would overwrite the other. Rename one, e.g. "
                "triton_adam.set_param_attr(p, name=...)")
        first[base] = i


def _prefix(layout: Layout, name: str, master: bool) -> str:
    """The key prefix of a parameter's accumulators, without the trailing ``_``."""
    base = name + MASTER_SUFFIX if master else name
    return f"{base}_{layout.opt_name}" if layout.opt_name else base


def _accs(layout: Layout) -> tuple[str, ...]:
    """The accumulators every parameter with state has in the dict, in Paddle's order."""
    moments = _MOMENTS if layout.engine.amsgrad else _MOMENTS[:2]
    return moments + _POWS


def _writes_step(layout: Layout) -> bool:
    """Whether the dict carries the step counts: only where they key a random stream (they
    are not Paddle's, and nothing else here reads them)."""
    return layout.engine.draws_random_bits


# ------------------------------------------------------------------------------ export
def state_dict(layout: Layout) -> dict[str, Any]:
    """The accumulators of an optimizer under Paddle's keys (see ``_AdamBase.state_dict``).

    Moments and master weights are views of the live state (no copy: they are as large as the
    model, and Paddle too returns its live accumulators); the pows are copies taken now: they
    live in two slots that alternate between steps, so a view would show a value of the wrong
    step later. Use (save) the dict before the next step.
    """
    engine = layout.engine
    names = _names(layout)
    _check_bases(layout, names)
    states = {i: engine.state(i) for i in range(len(names)) if engine.has_state(i)}
    out: dict[str, Any] = {}
    for acc in _accs(layout):
        for index, state in states.items():
            key = f"{_prefix(layout, names[index], 'master' in state)}_{acc}_0"
            value = state[ENGINE_NAME[acc]]
            out[key] = value.clone() if acc in _POWS else value
    if _writes_step(layout):
        for index, state in states.items():
            out[f"{_prefix(layout, names[index], 'master' in state)}_{STEP}_0"] = \
                state["step"].clone()  # a slot of the alternating pows, as they are
    masters = {names[i]: state["master"] for i, state in states.items() if "master" in state}
    if masters:
        out[MASTER_WEIGHTS_KEY] = masters
    if layout.scheduler is not None:
        out[LR_SCHEDULER_KEY] = layout.scheduler.state_dict()
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


def _fake_tensor_type() -> type | None:
    # Only a program that imported torch's fake tensors can hold one.
    module = sys.modules.get("torch._subclasses.fake_tensor")
    return getattr(module, "FakeTensor", None) if module is not None else None


def _without_values(t: torch.Tensor) -> str | None:
    """Why tensor ``t`` has no dense values to copy from, or None if it has (Paddle's format:
    a DTensor is refused too)."""
    if _dist.is_dtensor(t):
        return ("a DTensor; a sharded run loads this rank's local shards (its own "
                "opt.state_dict(), or triton_adam.distributed.shard_full_state(full, params))")
    return tensor_without_values(t)


def tensor_without_values(t: torch.Tensor) -> str | None:
    """Why tensor ``t`` holds no dense values a load can copy (nested, sparse, meta or fake),
    or None if it holds them: shared by the state formats of both faces."""
    if t.is_nested:
        return "a nested tensor"
    if t.layout != torch.strided:
        return f"a {t.layout} tensor (call .to_dense() first)"
    if t.device.type == "meta":
        return "a tensor on the meta device, which holds no values"
    fake = _fake_tensor_type()
    if fake is not None and isinstance(t, fake):
        return "a FakeTensor, which holds no values"
    return None


def _as_value(key: str, value: object) -> torch.Tensor | np.ndarray:
    """A state dict value as a torch tensor or an ndarray with values to copy from (Paddle
    tensors via ``numpy()``), else a ``StateDictTypeError`` naming the key."""
    where = f"state_dict[{key!r}]"
    if isinstance(value, torch.Tensor):
        why = _without_values(value)
        if why is not None:
            raise StateDictTypeError(f"{where} is {why}; expected a dense tensor")
        return value
    if isinstance(value, np.ndarray):
        return np.asarray(value)  # a subclass (np.matrix, a masked array) as its plain data
    # A paddle.Tensor, duck-typed so that paddle need not be imported (or installed).
    if type(value).__module__.startswith("paddle") and callable(getattr(value, "numpy", None)):
        try:
            return np.asarray(value.numpy())
        except Exception as e:
            raise StateDictTypeError(f"{where}: a {type(value).__name__} whose numpy() failed "
                                     f"({type(e).__name__}: {e})") from e
    raise StateDictTypeError(f"{where} is a {type(value).__name__}; expected a "
                             "torch.Tensor, a numpy.ndarray or a paddle.Tensor")


def _dtype_of(value: torch.Tensor | np.ndarray) -> torch.dtype | np.dtype:
    if isinstance(value, torch.Tensor):
        return value.dtype
    # Byte order is storage, not type: a big-endian float32 array holds float32 values (and is
    # converted when copied in).
    native = value.dtype if value.dtype.isnative else value.dtype.newbyteorder("=")
    try:
        return torch.from_numpy(np.empty(0, dtype=native)).dtype
    except (TypeError, ValueError):
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
                ) -> tuple[dict[tuple[str, str, bool], list[tuple[str, str]]], list[str]]:
    """Accumulator keys (with their base) by ``(name, acc, master)``, every counter. A key's
    base is its prefix without the optimizer ``name``; with ``master`` False, ``name`` is the
    base, with ``master`` True the parameter name of a base ``{name}_fp32_master_{N}`` (any N,
    as Paddle counts master weights too). Also every accumulator-shaped key (another
    optimizer name's included)."""
    index: dict[tuple[str, str, bool], list[tuple[str, str]]] = {}
    every: list[str] = []
    suffix = f"_{opt_name}" if opt_name else ""
    for key in state:
        if not isinstance(key, str):
            continue
        m = _ACC_KEY.fullmatch(key)
        if m is None:
            continue
        every.append(key)
        base, acc = m.group(1), m.group(2)
        if suffix:
            if not base.endswith(suffix):
                continue
            base = base[:-len(suffix)]
        index.setdefault((base, acc, False), []).append((key, base))
        master = _MASTER_IN_PREFIX.search(base)
        if master is not None:
            index.setdefault((base[:master.start()], acc, True), []).append((key, base))
    return index, every


def _pick(state: dict, exact: str, candidates: list[tuple[str, str]], own: str,
          bases: set[str]) -> str | None:
    """The key of one accumulator: ``exact`` (its ``_0`` key), else the only candidate with
    other counters whose base is not another parameter's (the master weight counter of
    ``x``'s ``x_fp32_master_1_..`` is not taken when a parameter is named ``x_fp32_master_1``);
    None if there is none."""
    if exact in state:
        return exact
    others = [k for k, base in candidates if base == own or base not in bases]
    if len(others) > 1:
        raise StateDictError(f"state_dict has {len(others)} keys for {exact!r} with other "
                             f"counters ({sorted(others)}) and not that key: which one is "
                             "this optimizer's is ambiguous")
    return others[0] if others else None


def _check_scheduler_values(state: dict, where: str, depth: int = 0) -> None:
    """A scheduler's state holds numbers (None for an unset ReduceOnPlateau ``best``) and, for
    a wrapping scheduler, the wrapped one's dict; anything else would fail later, at a step."""
    if depth > _SCHEDULER_DEPTH:
        raise StateDictError(f"{where} nests dicts more than {_SCHEDULER_DEPTH} deep; a "
                             "scheduler's state is a dict of numbers")
    for key, value in state.items():
        here = f"{where}[{key!r}]"
        if isinstance(value, dict):
            _check_scheduler_values(value, here, depth + 1)
        elif not (value is None or isinstance(value, (int, float, np.number, np.bool_))):
            raise StateDictTypeError(f"{here} is a {type(value).__name__}; a learning-rate "
                                     "scheduler's state holds numbers")


def _check_steps(steps: list[_Value]) -> None:
    """Step counts must be whole numbers in ``[0, 2^24]`` (exact in float32): they key the
    random stream. One read for all of them (a load is not on the step path)."""
    if not steps:
        return
    values = torch.cat([_to_tensor(v.value).reshape(1).to("cpu", torch.float64)
                        for v in steps])
    for v, x in zip(steps, values.tolist()):
        if not (math.isfinite(x) and x == int(x) and 0 <= x <= 2 ** 24):
            raise StateDictError(f"state_dict[{v.key!r}] (step count) is {x}, expected a "
                                 "whole number in [0, 2**24]")


def _plan(layout: Layout, state: dict) -> tuple[list[_Load], object]:
    """Check ``state`` against the optimizer without changing anything: what to write, and
    the scheduler state to restore (None if none)."""
    if not isinstance(state, dict):
        raise StateDictTypeError(f"state_dict must be a dict, got {type(state).__name__}")
    engine = layout.engine
    names = _names(layout)
    _check_bases(layout, names)
    accs = _accs(layout)
    index, every = _index_keys(state, layout.opt_name)
    masters_of = [engine.has_master(i) for i in range(len(names))]
    prefixes = [_prefix(layout, name, m) for name, m in zip(names, masters_of)]
    # Every parameter's key base: a key with another parameter's base is never this one's.
    bases = [name + MASTER_SUFFIX if m else name for name, m in zip(names, masters_of)]
    all_bases = set(bases)
    taken: dict[str, int] = {}  # key -> the parameter it is loaded into
    used: set[str] = set()

    masters = state.get(MASTER_WEIGHTS_KEY)
    if masters is not None and not isinstance(masters, dict):
        raise StateDictTypeError(f"state_dict[{MASTER_WEIGHTS_KEY!r}] must be a dict of "
                                 "parameter name -> float32 tensor, got "
                                 f"{type(masters).__name__}")

    loads: list[_Load] = []
    absent: list[tuple[int, str]] = []  # trainable params with none of their keys
    for i, param in enumerate(engine.params):
        name, prefix, master = names[i], prefixes[i], masters_of[i]
        found: dict[str, str] = {}
        for acc in accs:
            key = _pick(state, f"{prefix}_{acc}_0", index.get((name, acc, master), []),
                        bases[i], all_bases)
            if key is None:
                continue
            if key in taken:
                raise StateDictError(
                    f"state_dict[{key!r}] could be the {acc} of parameter "
                    f"{names[taken[key]]!r} or of parameter {name!r} (other counters): "
                    "ambiguous")
            taken[key] = i
            found[acc] = key
        if found:
            # The optional step count (``STEP``): taken (not foreign) whatever the mode,
            # loaded only where it keys a random stream.
            key = _pick(state, f"{prefix}_{STEP}_0", index.get((name, STEP, master), []),
                        bases[i], all_bases)
            if key is not None and key not in taken:
                taken[key] = i
                used.add(key)
                if engine.draws_random_bits:
                    found[STEP] = key
        has_state = engine.has_state(i)
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
        compute = engine.state_dtype(i)
        # A DTensor (FSDP2) parameter's state is its local shard's: each rank loads its part
        # (triton_adam.distributed.shard_full_state slices a full state).
        local = _dist.local_tensor(param)
        shape = tuple(local.shape)
        shard = ("" if local is param else ", whose state here is this rank's shard: load "
                 "triton_adam.distributed.shard_full_state(full_state, params) into a "
                 "sharded run")
        values = {}
        for acc, key in found.items():
            scalar = acc in _POWS or acc == STEP
            expected = (1,) if scalar else shape
            values[acc] = _check(key, state[key], expected, compute,
                                 f"{acc} of {what}{'' if scalar else shard}")
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

    _check_steps([load.values[STEP] for load in loads if STEP in load.values])
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
                f"({layout.opt_name!r}) or amsgrad differ from the run that saved it. "
                "(A parameter "
                "absent from a state dict whose keys all match is taken as never updated.)")

    lr_state = None
    sched = layout.scheduler
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
                raise StateDictTypeError(f"state_dict[{LR_SCHEDULER_KEY!r}] must be a dict, "
                                         f"got {type(lr_state).__name__}")
            _check_scheduler_values(lr_state, f"state_dict[{LR_SCHEDULER_KEY!r}]")
            # Dry run on a copy: the scheduler's own checks fire before anything is written.
            try:
                probe = copy.deepcopy(sched)
            except Exception:  # an uncopyable user attribute: rely on the real call
                probe = None
            if probe is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    probe.set_state_dict(lr_state)
                try:
                    lr = float(probe())
                except Exception as e:
                    raise StateDictError(f"state_dict[{LR_SCHEDULER_KEY!r}] gives no learning "
                                         f"rate ({type(e).__name__}: {e})") from e
                if not math.isfinite(lr):
                    raise StateDictError(f"state_dict[{LR_SCHEDULER_KEY!r}] gives the "
                                         f"learning rate {lr}; expected a finite number")
    return loads, lr_state


def _to_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A checked value as a tensor to copy from (an ndarray shares its memory when it can)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if not value.dtype.isnative:  # torch takes native byte order only
        value = value.astype(value.dtype.newbyteorder("="))
    if not (value.flags.writeable and value.flags.c_contiguous):
        value = np.array(value, order="C")  # a copy; torch.from_numpy warns on read-only ones
    return torch.from_numpy(value)


@torch.no_grad()
def set_state_dict(layout: Layout, state_dict: dict) -> None:
    """Load ``state_dict`` (from ``state_dict()`` here or in Paddle) into the optimizer
    whose ``layout`` is given.

    Rules: the module docstring. Every value is checked before anything is written, so on an
    error the optimizer is unchanged (moments, pows, master weights, scheduler, and no state
    is created).

    Raises:
        MissingStateError: (a ``StateDictError`` and a ``KeyError``) an accumulator of a
            parameter that has state, or has some of its keys in the dict, is missing; a
            parameter has no keys while the dict holds accumulator keys of other names; the
            master weight of a loaded fp16/bf16 parameter is missing; ``LR_Scheduler`` is
            missing while a scheduler (other than ``LambdaDecay``) drives the learning rate.
        StateDictTypeError: (a ``StateDictError`` and a ``TypeError``) ``state_dict`` is not
            a dict, or a value is not a tensor / ndarray / Paddle tensor with dense values
            (a list, a number, a sparse, nested, meta or fake tensor, a DTensor), or an
            ``LR_Scheduler`` value is not a number.
        StateDictError: (a ``ValueError`` and an ``AssertionError``, as Paddle's own checks)
            a value's shape or dtype is not the state's, several counters (``_1``, ``_2``)
            compete for one key, or ``LR_Scheduler`` gives no finite learning rate.
        ValueError: two parameters have the same name, or one is named like another's
            master weight (their keys would be the same).
        RuntimeError: the scheduler rejects ``LR_Scheduler`` (its own check).
    """
    loads, lr_state = _plan(layout, state_dict)

    sched = layout.scheduler if lr_state is not None else None
    before = sched.state_dict() if sched is not None else None
    values: dict[int, dict[str, torch.Tensor]] = {}
    for load in loads:
        values[load.index] = {ENGINE_NAME[acc]: _to_tensor(v.value)
                              for acc, v in load.values.items()}
        if layout.engine.draws_random_bits and STEP not in load.values:
            # A dict without step counts (Paddle's, or a mode without random bits): the
            # stream starts again at step 0, whatever this optimizer's count was.
            values[load.index]["step"] = torch.zeros(1, dtype=layout.engine.state_dtype(
                load.index))
        if load.master is not None and layout.engine.has_master(load.index):
            values[load.index]["master"] = _to_tensor(load.master.value)
    try:
        if sched is not None:
            sched.set_state_dict(lr_state)
        # State is created now for what is loaded (slots as the first step would build
        # them), and the values are copied in.
        if values:
            layout.engine.load_state(values)
    except BaseException:
        # Building the slots reads per-parameter options (lr_ratio, ...), which may raise
        # before anything is copied: the scheduler goes back to where it was.
        if before is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sched.set_state_dict(before)
        raise
