"""PyTorch's API over the engine: ``triton_adam.optim.Adam`` and ``AdamW`` as ``torch.optim``'s.

The classes are ``torch.optim.Optimizer`` subclasses with ``torch.optim.Adam``/``AdamW``'s
signatures, math, ``param_groups`` and ``state_dict`` layout, so that PyTorch's tools take them
as they take torch's own (``torch.optim.lr_scheduler``, ``torch.amp.GradScaler``,
``torch.distributed.checkpoint``, training loops written for ``torch.optim.AdamW``). What a step
does on the device is ``triton_adam.engine``'s: one fused multi-tensor launch per (device,
dtype) bucket, no host sync.

**Math** (torch's, ``foreach=False``)::

    g = -grad if maximize else grad;  g += wd * p (Adam)  |  p *= 1 - lr * wd (AdamW)
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  vmax = max(vmax, v) (amsgrad)
    p -= lr / (1 - b1^t) * m / (sqrt(v or vmax) / sqrt(1 - b2^t) + eps)

with ``t`` the parameter's step number, ``b^t`` computed in the kernels from the step count and
the group's current betas (the engine's ``bias_from_step``), as torch computes it.

**Live groups.** ``param_groups`` are plain dicts, as torch's. Each step compares every
group's ``lr``, ``betas``, ``eps``, ``weight_decay``, ``maximize`` (and
``decoupled_weight_decay``) with what the engine was given (O(groups) host work when nothing
changed) and hands a change over before the update: a new ``lr`` is one device fill of that
group's learning-rate slot; other options re-upload the group's hyper-parameter rows
(asynchronously; new betas also enter the bias corrections from that step on, as in torch).
No host sync, no recompile. The learning rate always lives on the
device (one float64 slot per group), so a tensor ``lr`` is copied there at every step on the
device (``lr_scheduler``'s in-place updates of a tensor ``lr`` are seen) and ``capturable``
steps replay the current rates.

**Extras** torch's optimizers lack, each a keyword: ``master_weights`` (fp32 master weights of
bf16/fp16 parameters; ``master_weight_format="remainder"`` keeps a bf16 parameter's master as
the parameter plus an int16 remainder, the same master bits in 2 B less per parameter),
``max_grad_norm`` (global gradient-norm clipping fused into the step;
the norm of the last step as the device tensor ``grad_norm``), ``lazy_sparse`` (a sparse
gradient updates only its rows).

**Known differences from torch** (everything else is meant to be torch's behaviour):

* ``differentiable=True`` raises; ``fused`` and ``foreach`` are accepted and change nothing
  (every step is fused and multi-tensor), so their combinations with tensor ``lr``/``betas``
  that torch refuses are accepted.
* ``amsgrad`` and ``capturable`` are optimizer-wide (the engine's state layout and launch
  mode): every group must have the optimizer's value, and ``load_state_dict`` keeps this
  optimizer's ``capturable`` (and ``differentiable``) instead of the saved one.
* bf16/fp16 parameters keep float32 moments (torch: the parameter's dtype) and are computed
  in float32, rounded once per step; with ``master_weights=True`` the rounding is not
  accumulated.
* Tensor hyper-parameters on the parameters' device are read there at every step (a change in
  place counts) but never read back, so their ranges are not checked. A CPU tensor
  ``lr``/beta/``eps`` with parameters on a GPU is read on the host at each step (host memory:
  no device sync).
* ``max_grad_norm`` scales by ``max_norm / max(norm, max_norm)``; torch's
  ``clip_grad_norm_`` uses ``max_norm / (norm + 1e-6)`` (capped at 1).
* Pickling and ``copy`` raise (the state lives in device buffers tied to the parameters):
  save ``state_dict()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from triton_adam import dtensor as D
from triton_adam import torch_state as TS
from triton_adam.engine import (Engine, NormClip, ParamConfig, check_storage_options,
                                zero_in_place)

__all__ = ["Adam", "AdamW"]

SPARSE_GRADIENT_ERROR = (
    "Adam does not support sparse gradients, please consider SparseAdam instead (or build "
    "triton_adam.optim.Adam/AdamW with lazy_sparse=True: a sparse gradient then updates only "
    "its rows)")
# Keys of torch.optim.Adam's param groups that are switches (the rest: lr, betas, eps,
# weight_decay, which a saved group must have).
_SWITCH_KEYS = ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused",
                "decoupled_weight_decay")
# Options of the whole optimizer, not of a group: a group that names one must agree.
_OPTIMIZER_WIDE = ("master_weights", "master_weight_format", "max_grad_norm", "lazy_sparse",
                   "moment_dtype", "stochastic_rounding", "seed")
# The engine's norm output of max_grad_norm (one global norm).
_NORM_KEY = "max_grad_norm"
_MISSING = object()


@dataclass(frozen=True, eq=False)
class _Hyper:
    """A group's options as the engine takes them (validated and converted): ``lr`` a float
    (written with ``set_lr`` when it changes) or a tensor on the parameters' device (copied
    with ``copy_lr`` at every step); betas/eps floats or tensors on the parameters' device."""

    lr: float | torch.Tensor
    beta1: float | torch.Tensor
    beta2: float | torch.Tensor
    eps: float | torch.Tensor
    weight_decay: float
    maximize: bool
    decoupled: bool

    def config(self) -> tuple:
        """What the parameters' ``ParamConfig`` is built from (all but ``lr``)."""
        return (self.beta1, self.beta2, self.eps, self.weight_decay, self.maximize,
                self.decoupled)


def _same(a: object, b: object) -> bool:
    """Whether two option values are the same, without ever comparing tensors by value (that
    would read them back): a tensor is the same only as itself."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_max_grad_norm(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"max_grad_norm must be a positive float or None, got "
                        f"{type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"max_grad_norm must be a positive finite float (the global norm "
                         f"the gradients are scaled down to), got {value}")
    return float(value)


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam``, on fused Triton kernels (see the module docstring).

    Args:
        params: tensors, ``(name, tensor)`` pairs, or parameter-group dicts, as torch takes
            them. float32, float64, bfloat16 and float16 parameters, contiguous; DTensor
            (FSDP2) parameters too.
        lr: the learning rate: a float, or a one-element tensor (on the parameters' device:
            copied on the device at every step, no host sync; on the CPU with parameters
            elsewhere: its value is read on the host at every step).
        betas: ``(beta1, beta2)`` in [0, 1), floats or one-element tensors.
        eps: added to the denominator, >= 0 (a float or a one-element tensor).
        weight_decay: >= 0. Adam adds ``weight_decay * p`` to the gradient (L2);
            ``decoupled_weight_decay=True`` (AdamW) multiplies ``p`` by ``1 - lr * wd``.
        amsgrad: keep ``max_exp_avg_sq`` and use it in the denominator (optimizer-wide).
        foreach, fused: accepted for compatibility; no effect (every step is one fused,
            multi-tensor launch per bucket). ``fused=True`` with ``foreach=True`` raises, as
            in torch.
        maximize: step along the gradient.
        capturable: ``step()`` may be captured in a CUDA graph (``torch.cuda.graph``) after
            an eager warm-up step and replayed; eager results are the same bit for bit.
            Optimizer-wide. A replay runs no Python: a scheduler that changes ``lr`` between
            replays needs ``lr`` given as a tensor on the parameters' device (the scheduler
            updates it in place and the captured copy reads it), as with torch's capturable
            Adam; a float ``lr`` reaches the device at the next eager ``step()``.
        differentiable: must be False (the kernels update in place, outside autograd).
        decoupled_weight_decay: as in torch (True: this is AdamW).
        master_weights: keep fp32 master weights of bf16/fp16 parameters (updated in fp32,
            rounded into the parameter at every step; exported as the state entry
            ``'master'``). Optimizer-wide.
        master_weight_format: how those master weights are kept: ``"fp32"`` (default) or
            ``"remainder"`` (needs ``master_weights=True``; bfloat16 parameters only, float16
            ones are refused): the parameter is the master's high half, rounded to nearest
            with ties away from zero, and an int16 remainder the low half, so the master is
            rebuilt exactly: the same masters, moments and steps as ``"fp32"`` bit for bit,
            2 B less state and traffic per parameter (the parameter differs from ``"fp32"``'s
            by one bf16 ulp where the master lies exactly halfway and ties-to-even would
            round down). The state entry ``'master'`` is still float32, rebuilt (a new
            tensor, not a live view); loading one splits it (writing the parameter).
            Optimizer-wide.
        moment_dtype: ``torch.float32`` (default) or ``torch.bfloat16``: keep ``exp_avg``,
            ``exp_avg_sq`` (and ``max_exp_avg_sq``) in bf16, computed in float32 and stored
            rounded stochastically (unbiased); the state dict carries them as float32 (new
            tensors, not live views); loading rounds them to nearest even. float64
            parameters and ``lazy_sparse`` are refused. Optimizer-wide.
        stochastic_rounding: write bfloat16 parameters (``master_weights=False``) rounded
            stochastically instead of to nearest even (small updates are not lost). float16
            parameters and ``lazy_sparse`` are refused. Optimizer-wide.
        seed: the key of the stochastic rounding's random bits (int in ``[0, 2**63)``,
            default 0; with each tensor's step count and element offset): deterministic
            runs, bitwise resume (same seed). Optimizer-wide.
        max_grad_norm: clip the gradients of all parameters to this global L2 norm, fused
            into the step (scale ``max_grad_norm / max(norm, max_grad_norm)``, computed on the
            device; ``param.grad`` is not modified). ``grad_norm`` then holds the norm of the
            last step. None: no clipping. Settable between steps.
        lazy_sparse: a sparse COO gradient (``Embedding(sparse=True)``) updates only the rows
            it holds (moments, decay and parameter of the other rows untouched; the step
            count advances for the whole tensor). False: a sparse gradient raises, as in
            torch.

    ``step()`` also consumes ``torch.amp.GradScaler``'s ``grad_scale`` and ``found_inf``
    (its fused-optimizer protocol): gradients are unscaled inside the kernels and a step with
    an overflow changes nothing, decided on the device.
    """

    # torch.amp.GradScaler's fused protocol: the scaler sets ``grad_scale`` and ``found_inf``
    # (device tensors) on the optimizer before step(), which the kernels consume.
    _step_supports_amp_scaling = True
    # AdamW sets decoupled decay in every group it loads, as torch's AdamW does.
    _always_decoupled = False

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
                 eps: float | torch.Tensor = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False, master_weights: bool = False,
                 max_grad_norm: float | None = None, lazy_sparse: bool = False,
                 master_weight_format: str = "fp32", moment_dtype: torch.dtype = torch.float32,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        for value, name in ((amsgrad, "amsgrad"), (maximize, "maximize"),
                            (capturable, "capturable"), (differentiable, "differentiable"),
                            (decoupled_weight_decay, "decoupled_weight_decay"),
                            (master_weights, "master_weights"), (lazy_sparse, "lazy_sparse")):
            _check_bool(value, name)
        for value, name in ((foreach, "foreach"), (fused, "fused")):
            if value is not None:
                _check_bool(value, name)
        if differentiable:
            raise ValueError("differentiable=True is not supported: the kernels update the "
                             "parameters in place, outside autograd")
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        check_storage_options(master_format=master_weight_format, master_weights=master_weights,
                              moment_dtype=moment_dtype,
                              stochastic_rounding=stochastic_rounding, seed=seed,
                              lazy=lazy_sparse)
        self._moment_dtype = moment_dtype
        self._stochastic_rounding = stochastic_rounding
        self._seed = seed
        self._master_weight_format = master_weight_format
        self._max_grad_norm = _check_max_grad_norm(max_grad_norm)
        self._master_weights = master_weights
        self._lazy_sparse = lazy_sparse
        self._engine: Engine | None = None  # built once torch's __init__ has the groups
        defaults = {"lr": lr, "betas": tuple(betas) if isinstance(betas, (tuple, list))
                    else betas, "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "maximize": maximize, "foreach": foreach,
                    "capturable": capturable, "differentiable": differentiable,
                    "fused": fused, "decoupled_weight_decay": decoupled_weight_decay}
        # torch's __init__ checks the parameters and calls add_param_group for each group
        # (before the engine exists: only the checks that need no engine run then).
        super().__init__(params, defaults)

        params_all = [p for group in self.param_groups for p in group["params"]]
        self._params = params_all
        self._devices = {D.local_tensor(p).device for p in params_all}
        self._hypers = [self._hyper(group, g, f"param_groups[{g}]")
                        for g, group in enumerate(self.param_groups)]
        self._group_of = [g for g, group in enumerate(self.param_groups)
                          for _ in group["params"]]
        self._starts = self._group_starts()
        self._index_of = {id(p): i for i, p in enumerate(params_all)}
        self._clip = (NormClip(_NORM_KEY, self._max_grad_norm)
                      if self._max_grad_norm is not None else None)
        # One learning-rate slot per group, always on the device (device_lr: a group's rate
        # changes with its options, and a tensor lr is copied there on the device). Bias
        # corrections from the step count and the current betas: torch's.
        self._engine = Engine(params_all, self._configure, amsgrad=amsgrad,
                              master_weights=master_weights, multi_tensor=True,
                              label_of=self._label, capturable=capturable,
                              lr_slots=len(self.param_groups), device_lr=True,
                              bias_from_step=True, master_format=master_weight_format,
                              moment_dtype=moment_dtype,
                              stochastic_rounding=stochastic_rounding, seed=seed)
        self._seen = [self._raw(group) for group in self.param_groups]
        self._lr_written: list[float | None] = [None] * len(self.param_groups)
        self.state = TS.StateView(lambda p: self._index_of.get(id(p)), lambda: len(self._params),
                                  self._engine.has_state, lambda: self._params,
                                  self._param_state, self._load_param)

    # ------------------------------------------------------------------------- pickling
    def __reduce_ex__(self, protocol: object) -> object:
        """Refuse ``pickle`` and ``copy``: a copy would hold copies of the parameters (not the
        model's) and device buffers addressed by launch tables."""
        raise TypeError(
            f"a triton_adam.optim.{type(self).__name__} cannot be pickled or copied (its state "
            "lives in device buffers tied to the model's parameters): save "
            "optimizer.state_dict() instead (torch.save), and load it into a new optimizer "
            "over the model with load_state_dict()")

    def __getstate__(self) -> dict[str, Any]:
        return self.__reduce_ex__(None)

    # ------------------------------------------------------------------- groups, checked
    def _group_starts(self) -> list[int]:
        starts, total = [], 0
        for group in self.param_groups:
            starts.append(total)
            total += len(group["params"])
        return starts

    def _indices(self, g: int) -> range:
        return range(self._starts[g], self._starts[g] + len(self.param_groups[g]["params"]))

    def _label(self, index: int) -> str:
        """A parameter as errors name it: its name (``named_parameters()``) or its place."""
        if index < len(self._group_of):
            g = self._group_of[index]
            k = index - self._starts[g]
        else:  # a parameter of a group being added (the engine names it in its checks)
            g, k = len(self.param_groups) - 1, index - len(self._group_of)
        names = self.param_groups[g].get("param_names")
        if isinstance(names, (list, tuple)) and k < len(names):
            return f"parameter '{names[k]}'"
        return f"param_groups[{g}]['params'][{k}]"

    def _check_switches(self, group: dict, where: str) -> None:
        """The options that are the whole optimizer's: a group must agree with it."""
        for key, value in (("amsgrad", self.defaults["amsgrad"]),
                           ("capturable", self.defaults["capturable"])):
            given = group.get(key, value)
            if not isinstance(given, bool) or given != value:
                raise ValueError(
                    f"{where}[{key!r}] is {group.get(key)!r} but this optimizer was built with "
                    f"{key}={value}: {key} is the same for every group here (the engine's "
                    "state layout and launch mode); build the optimizer with the value you "
                    "need")
        if group.get("differentiable", False) is not False:
            raise ValueError(f"{where}['differentiable'] must be False: the kernels update "
                             "the parameters in place, outside autograd")
        for key in ("maximize", "decoupled_weight_decay"):
            if not isinstance(group.get(key, False), bool):
                raise TypeError(f"{where}[{key!r}] must be a bool, got "
                                f"{type(group.get(key)).__name__}")
        own = {"master_weights": self._master_weights,
               "master_weight_format": self._master_weight_format,
               "max_grad_norm": self._max_grad_norm,
               "lazy_sparse": self._lazy_sparse, "moment_dtype": self._moment_dtype,
               "stochastic_rounding": self._stochastic_rounding, "seed": self._seed}
        for key in _OPTIMIZER_WIDE:
            if key in group and group[key] != own[key]:
                raise ValueError(
                    f"{where}[{key!r}] is {group[key]!r} but the optimizer has {key}="
                    f"{own[key]!r}: {key} is an option of the whole optimizer (a keyword of "
                    "its constructor), not of a group")

    def _tensor_value(self, t: torch.Tensor, where: str, *, on_device: bool = True
                      ) -> float | torch.Tensor:
        """A one-element tensor option as the engine takes it: the tensor itself if it is on
        the parameters' device (read there at every step, never read back here), its value
        if it is on the CPU while the parameters are elsewhere (host memory: no sync), else
        an error."""
        if t.numel() != 1:
            raise ValueError(f"Tensor {where} must be 1-element, got shape {list(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"Tensor {where} must be a floating tensor, got {t.dtype}")
        if D.is_dtensor(t) or t.layout != torch.strided or t.device.type == "meta":
            raise ValueError(f"Tensor {where} must be a dense tensor holding its value, on the "
                             "parameters' device")
        if on_device and t.device in self._devices:
            return t.detach()
        if t.device.type == "cpu":
            return float(t.detach().reshape(()))
        if not on_device:
            raise TypeError(f"{where} is a tensor on {t.device}: the kernels take it as a host "
                            "value, which would be read back at every step; pass a float (or "
                            "a CPU tensor)")
        raise ValueError(f"Tensor {where} is on {t.device}, the parameters on "
                         f"{sorted(map(str, self._devices))}: keep it on the parameters' "
                         "device (a copy from another would sync)")

    def _number(self, value: object, where: str, low: float, high: float | None = None,
                torch_message: str = "", on_device: bool = True) -> float | torch.Tensor:
        if isinstance(value, torch.Tensor):
            value = self._tensor_value(value, where, on_device=on_device)
            if isinstance(value, torch.Tensor):
                return value  # on the device: never read back here
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where} must be a float (or a one-element tensor), got "
                            f"{type(value).__name__}")
        value = float(value)
        if not (value >= low and (high is None or value < high) and math.isfinite(value)):
            span = f"[{low}, {high})" if high is not None else f">= {low}"
            raise ValueError(f"{torch_message or 'Invalid ' + where}: {value} ({where} must be "
                             f"finite and {span})")
        return value

    def _hyper(self, group: dict, g: int, where: str) -> _Hyper:
        """Group ``g``'s options, validated and converted (nothing changes here)."""
        self._check_switches(group, where)
        for key in ("lr", "betas", "eps", "weight_decay"):
            if key not in group:
                raise KeyError(f"{where} has no {key!r}")
        lr = self._number(group["lr"], f"{where}['lr']", 0.0,
                          torch_message="Invalid learning rate")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}['betas'] must be a pair (beta1, beta2), got "
                            f"{type(betas).__name__}")
        beta1, beta2 = (self._number(b, f"{where}['betas'][{k}]", 0.0, 1.0,
                                     torch_message=f"Invalid beta parameter at index {k}")
                        for k, b in enumerate(betas))
        eps = self._number(group["eps"], f"{where}['eps']", 0.0,
                           torch_message="Invalid epsilon value")
        wd = self._number(group["weight_decay"], f"{where}['weight_decay']", 0.0,
                          torch_message="Invalid weight_decay value", on_device=False)
        return _Hyper(lr, beta1, beta2, eps, wd, group.get("maximize", False),
                      group.get("decoupled_weight_decay", False))

    def _raw(self, group: dict) -> tuple:
        """What a step compares to see whether group options changed: the values as given
        (tensors by identity; a CPU tensor read on the host, by value)."""
        read = self._read
        betas = group.get("betas", _MISSING)
        betas = tuple(map(read, betas)) if isinstance(betas, (tuple, list)) else (betas,)
        wd = group.get("weight_decay", _MISSING)
        if isinstance(wd, torch.Tensor) and wd.device.type == "cpu" and wd.numel() == 1:
            wd = ("cpu tensor", float(wd.detach().reshape(())))  # always a host value
        return (read(group.get("lr", _MISSING)), betas, read(group.get("eps", _MISSING)),
                wd, group.get("maximize", False),
                group.get("decoupled_weight_decay", False), group.get("amsgrad"),
                group.get("capturable"), group.get("differentiable"), len(group["params"]))

    def _read(self, value: object) -> object:
        # A CPU tensor option that is read on the host (parameters elsewhere, or a weight
        # decay, which the engine takes as a host value): compared by value.
        if isinstance(value, torch.Tensor) and value.device.type == "cpu" \
                and value.device not in self._devices and value.numel() == 1:
            return ("cpu tensor", float(value.detach().reshape(())))
        return value

    def _configure(self, index: int) -> ParamConfig:
        """How parameter ``index`` is updated, in the engine's terms (its group's options)."""
        g = self._group_of[index]
        h = self._hypers[g]
        return ParamConfig(
            beta1=h.beta1, beta2=h.beta2, eps=h.eps,
            l2=0.0 if h.decoupled else h.weight_decay,
            decoupled_decay=h.weight_decay if h.decoupled else 0.0,
            maximize=h.maximize, lr_index=g, clip=self._clip, lazy=self._lazy_sparse,
            label=self._label(index))

    # ---------------------------------------------------------------------- torch's API
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group, as torch's ``add_param_group`` (its checks and defaults);
        its options are validated, and its parameters handed to the engine, before the group
        is kept: a failed call changes nothing (but the defaults torch writes into the dict
        given)."""
        super().add_param_group(param_group)  # torch's checks; appends the group
        g = len(self.param_groups) - 1
        group = self.param_groups[g]
        where = f"param_groups[{g}]"
        try:
            self._check_switches(group, where)
            engine = self._engine
            if engine is None:  # torch's __init__: the engine is built once all are in
                return
            devices = self._devices | {D.local_tensor(p).device for p in group["params"]}
            known, self._devices = self._devices, devices
            try:
                hyper = self._hyper(group, g, where)
            finally:
                self._devices = known
            engine.add_params(group["params"], lr_slots=g + 1)
        except BaseException:
            self.param_groups.pop()
            raise
        self._devices = devices
        first = len(self._params)
        self._params.extend(group["params"])
        self._group_of.extend([g] * len(group["params"]))
        self._starts.append(first)
        self._index_of.update((id(p), first + k) for k, p in enumerate(group["params"]))
        self._hypers.append(hyper)
        self._seen.append(self._raw(group))
        self._lr_written.append(None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients, as torch: set them to None (default), or zero them in place
        (``set_to_none=False``: one ``torch._foreach_zero_`` per device and dtype; the
        gradient tensors are kept, which a ``capturable`` step's CUDA graph needs)."""
        grads = []
        with torch.autograd.profiler.record_function(
                f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"):
            for group in self.param_groups:
                for p in group["params"]:
                    grad = p.grad
                    if grad is None:
                        continue
                    if set_to_none:
                        p.grad = None
                        continue
                    if grad.grad_fn is not None:
                        grad.detach_()
                    else:
                        grad.requires_grad_(False)
                    grads.append(grad)
            zero_in_place(grads)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient (a None gradient skips the parameter,
        whose step count stays behind, as in torch).

        ``closure`` (optional) is called first, with gradients enabled, and its result
        returned. Group options changed since the last step are applied first (see the
        module docstring); everything is checked before anything changes, and nothing is read
        back from the device. ``grad_scale``/``found_inf`` attributes (set by
        ``torch.amp.GradScaler``) are AMP's device loss scale and overflow flag.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        self._check_amp(grad_scale, found_inf)
        with torch.no_grad():
            self._sync_groups()
            self._engine.step(None, grad_scale=grad_scale, found_inf=found_inf,
                              refuse_sparse=None if self._lazy_sparse
                              else SPARSE_GRADIENT_ERROR)
        return loss

    # ------------------------------------------------------------------ live options
    def _sync_groups(self) -> None:
        """Hand the engine what changed in ``param_groups`` since the last step: validated
        for every group first, then applied (options, then learning rates)."""
        groups = self.param_groups
        seen = self._seen
        if len(groups) != len(seen):
            raise RuntimeError(f"param_groups has {len(groups)} groups but the optimizer knows "
                               f"{len(seen)}: add groups with add_param_group()")
        changes = []
        for g, group in enumerate(groups):
            raw = self._raw(group)
            if not _same(raw, seen[g]):
                if raw[-1] != seen[g][-1]:
                    raise RuntimeError(
                        f"param_groups[{g}]['params'] now has {raw[-1]} parameters, the "
                        f"optimizer was given {seen[g][-1]}: add parameters with "
                        "add_param_group()")
                changes.append((g, raw, self._hyper(group, g, f"param_groups[{g}]")))
        for g, raw, hyper in changes:
            self._apply(g, hyper)
            seen[g] = raw
        engine = self._engine
        written = self._lr_written
        for g, hyper in enumerate(self._hypers):
            lr = hyper.lr
            if isinstance(lr, torch.Tensor):
                engine.copy_lr(lr, g)  # a device copy: in-place changes of the tensor count
            elif lr != written[g]:
                engine.set_lr(lr, g)
                written[g] = lr

    def _apply(self, g: int, hyper: _Hyper) -> None:
        """Make ``hyper`` group ``g``'s options in the engine (its lr is written by the
        caller). The bias corrections come from the step count and the betas of each step
        (``bias_from_step``): new betas need nothing else."""
        old = self._hypers[g]
        self._hypers[g] = hyper
        if _same(old.config(), hyper.config()):
            return
        try:
            if _same(old.config()[2:], hyper.config()[2:]) and all(
                    isinstance(b, float) for b in (old.beta1, old.beta2, hyper.beta1,
                                                   hyper.beta2)):
                # Only float betas changed (OneCycleLR cycles beta1 at every step): two
                # device fills instead of rebuilding the group's rows on the host.
                self._engine.set_betas(self._indices(g), hyper.beta1, hyper.beta2)
            else:
                self._engine.reconfigure(self._indices(g))
        except BaseException:
            self._hypers[g] = old
            raise

    def _check_amp(self, grad_scale: object, found_inf: object) -> None:
        self._engine.check_amp(grad_scale, found_inf, where="optimizer.")

    # ----------------------------------------------------------------------- extras
    @property
    def engine(self) -> Engine:
        """The engine under this optimizer (``triton_adam.engine``), for inspection."""
        return self._engine

    @property
    def master_weights(self) -> bool:
        """Whether bf16/fp16 parameters keep fp32 master weights (fixed at construction)."""
        return self._master_weights

    @property
    def master_weight_format(self) -> str:
        """``"fp32"`` or ``"remainder"``: how master weights are kept (fixed at
        construction)."""
        return self._master_weight_format

    @property
    def lazy_sparse(self) -> bool:
        """Whether a sparse gradient updates only its rows (fixed at construction)."""
        return self._lazy_sparse

    @property
    def max_grad_norm(self) -> float | None:
        """The global gradient norm the step clips to (None: no clipping). Setting it takes
        effect at the next step (an asynchronous upload; no host sync)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: float | None) -> None:
        value = _check_max_grad_norm(value)
        old = (self._max_grad_norm, self._clip)
        self._max_grad_norm = value
        self._clip = NormClip(_NORM_KEY, value) if value is not None else None
        try:
            self._engine.reconfigure(range(len(self._params)))
        except BaseException:
            self._max_grad_norm, self._clip = old
            raise

    @property
    def grad_norm(self) -> torch.Tensor | None:
        """The total L2 norm of the gradients of the last step, before clipping (a 0-dim
        device tensor, unscaled by AMP's ``grad_scale``; overwritten by the next step: clone
        it to keep it), or None without ``max_grad_norm`` or before the first clipped step.
        Reading it is free; ``float(opt.grad_norm)`` is a host sync."""
        if self._max_grad_norm is None:
            return None
        norms = self._engine.norms()
        return None if norms is None else norms[0]

    # ------------------------------------------------------------------------ state
    def _param_state(self, index: int) -> dict[str, torch.Tensor]:
        return TS.param_state(self._engine, index, capturable=self.defaults["capturable"])

    def _load_param(self, index: int, entry: object) -> None:
        """``optimizer.state[p] = entry``: one parameter's entry, checked, then written."""
        engine = self._engine
        label = self._label(index)
        load = TS.check_entry(engine, index, entry, where=f"optimizer.state[{label}]",
                              label=label)
        h = self._hypers[self._group_of[index]]
        if load is not None:
            engine.load_state({index: TS.engine_values(engine, index, load, h.beta1,
                                                       h.beta2)})
        elif engine.has_state(index):
            engine.load_state({index: TS.fresh_values(engine, index, h.beta1, h.beta2)})

    def state_dict(self) -> dict[str, Any]:
        """The state in ``torch.optim.Adam``'s layout (``triton_adam.torch_state``):
        ``{"state": {index: {"step", "exp_avg", "exp_avg_sq", ["max_exp_avg_sq"],
        ["master"]}}, "param_groups": [{options..., "params": [indices]}]}``.

        The moments and master weights are live views of the state (as torch returns its
        live state tensors); the steps are copies. With ``master_weight_format="remainder"``
        the masters are float32 tensors rebuilt from the parameters and their remainders
        (copies: later steps do not change them). ``torch.optim.Adam``/``AdamW`` load it
        (they ignore ``master``). State-dict hooks registered with torch's
        ``register_state_dict_pre_hook``/``post_hook`` run as in torch."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        groups, start = [], 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(packed)
        state = {}
        for i in range(len(self._params)):
            entry = self._param_state(i)
            if entry:
                state[i] = entry
        out: dict[str, Any] = {"state": state, "param_groups": groups}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, out)
            if result is not None:
                out = result
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this layout (``state_dict()`` here, or of
        ``torch.optim.Adam``/``AdamW``), as torch's ``load_state_dict`` does: the saved
        groups' options replace the current ones (but ``capturable`` and ``differentiable``,
        this optimizer's modes), parameters are matched by position, a parameter absent from
        the saved state starts afresh.

        All or nothing: the groups and every entry are checked before anything is written
        (``triton_adam.StateDictError`` and its subclasses, naming the entry), and a failed
        load changes nothing. Each entry's ``step`` is the count the bias corrections continue
        from; ``master`` (optional) restores fp32 master weights, which are otherwise taken
        from the parameters.
        """
        if not isinstance(state_dict, Mapping):
            raise TS.StateDictTypeError("a torch optimizer state_dict must be a dict with "
                                        "'state' and 'param_groups' (optimizer.state_dict()), "
                                        f"got {type(state_dict).__name__}")
        state_dict = dict(state_dict)  # a shallow copy, as torch's; hooks may edit it
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        engine = self._engine
        saved, entries = TS.check_structure(state_dict,
                                            [g["params"] for g in self.param_groups])
        new_groups = []
        for g, (group, loaded) in enumerate(zip(self.param_groups, saved)):
            new = dict(loaded)
            new["params"] = group["params"]
            if "param_names" in group and "param_names" not in new:
                new["param_names"] = group["param_names"]
            for key in ("capturable", "differentiable"):
                new[key] = group[key]  # this optimizer's modes, not the saver's
            for key in _SWITCH_KEYS:
                # As torch's Adam.__setstate__: switches an older checkpoint lacks.
                new.setdefault(key, group.get(key, self.defaults[key]))
            if self._always_decoupled:
                new["decoupled_weight_decay"] = True
            if new["amsgrad"] != self.defaults["amsgrad"]:
                raise TS.StateDictError(
                    f"state_dict['param_groups'][{g}]['amsgrad'] is {new['amsgrad']!r} but "
                    f"this optimizer has amsgrad={self.defaults['amsgrad']}: build it with "
                    "the saved amsgrad (its state has other moments)")
            new_groups.append(new)
        hypers = []
        for g, new in enumerate(new_groups):
            try:
                hypers.append(self._hyper(new, g, f"state_dict['param_groups'][{g}]"))
            except (TypeError, ValueError, KeyError) as e:
                raise TS.StateDictError(e.args[0] if e.args else str(e)) from e
        values = {}
        for i in range(len(self._params)):
            h = hypers[self._group_of[i]]
            pid, entry = entries.get(i, (None, {}))
            load = TS.check_entry(engine, i, entry, where=f"state_dict['state'][{pid!r}]",
                                  label=self._label(i))
            if load is not None:
                values[i] = TS.engine_values(engine, i, load, h.beta1, h.beta2)
            elif engine.has_state(i):
                # torch: a parameter without saved state has none after the load.
                values[i] = TS.fresh_values(engine, i, h.beta1, h.beta2)

        # Everything is checked: write.
        old = (self.param_groups, self._hypers, self._seen, self._lr_written)
        self.param_groups = new_groups
        self._hypers = hypers
        self._seen = [self._raw(group) for group in new_groups]
        self._lr_written = [None] * len(new_groups)
        try:
            # The hyper-parameter rows of the slots that exist, then the state (creating
            # the slots of loaded parameters, configured from the new groups).
            engine.reconfigure(range(len(self._params)))
            if values:
                engine.load_state(values)
        except BaseException:
            self.param_groups, self._hypers, self._seen, self._lr_written = old
            engine.reconfigure(range(len(self._params)))
            raise
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW``: Adam with decoupled weight decay,
    ``p *= 1 - lr * weight_decay`` before the Adam update (default ``weight_decay=1e-2``).

    The arguments are ``Adam``'s, without ``decoupled_weight_decay``: True in the defaults,
    and set in every group of a loaded state dict, as torch's AdamW does.
    """

    _always_decoupled = True

    def __init__(self, params: Iterable[Any], lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float | torch.Tensor, float | torch.Tensor] = (0.9, 0.999),
                 eps: float | torch.Tensor = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 master_weights: bool = False, max_grad_norm: float | None = None,
                 lazy_sparse: bool = False, master_weight_format: str = "fp32",
                 moment_dtype: torch.dtype = torch.float32, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, master_weights=master_weights,
                         max_grad_norm=max_grad_norm, lazy_sparse=lazy_sparse,
                         master_weight_format=master_weight_format,
                         moment_dtype=moment_dtype, stochastic_rounding=stochastic_rounding,
                         seed=seed)
