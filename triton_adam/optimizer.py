"""Paddle's API over the engine: ``Adam`` and ``AdamW`` as ``paddle.optimizer.Adam``/``AdamW``.

The classes validate their arguments as Paddle does (its messages and exception types), turn
Paddle's options (groups, per-parameter attributes, regularizers, clip classes, AdamW's
``lr_ratio`` and ``apply_decay_param_fun``) into the engine's ``ParamConfig`` of each
parameter, and map the engine's state to Paddle's keys and files (``triton_adam.state``).
What a step does on the device is ``triton_adam.engine``'s. A parameter's attributes
(``optimize_attr['learning_rate']``, ``regularizer``, ``need_clip``) are live, as in Paddle:
they are compared at every step, and a change is handed to the engine before the step (an
asynchronous upload of the changed rows; nothing when unchanged). Group options are copied
when the optimizer is built, as Paddle copies its groups.
"""

from __future__ import annotations

import math
import reprlib
import warnings
from collections.abc import Callable, Iterable

import numpy as np
import torch

from triton_adam import state as _state
from triton_adam.clip import ClipGradBase, ClipGradByNorm, ClipGradByValue
from triton_adam.engine import (Engine, NormClip, ParamConfig, ValueClip,
                                check_storage_options, zero_in_place)
from triton_adam.lr import LRScheduler, watch_lr
from triton_adam.param_attr import (param_lr_scale, param_name, param_need_clip,
                                    param_regularizer)
from triton_adam.param_groups import parse_parameters
from triton_adam.regularizer import L1Decay, L2Decay, WeightDecayRegularizer

LOW_PRECISION = (torch.float16, torch.bfloat16)
class ReadOnlyGroup(dict):
    """A parameter group as ``param_groups`` shows it: reading works, writing raises (a write
    would not reach the optimizer, and a silently ignored ``lr`` is worse than an error)."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            "param_groups of triton_adam.Adam/AdamW (Paddle's API) are read-only: set the "
            "learning rate with set_lr() or an LRScheduler, and per-group options in the "
            "'parameters' groups given to the constructor")

    __setitem__ = __delitem__ = __ior__ = update = setdefault = pop = popitem = clear = _refuse


def _check_grad_clip(clip: object, where: str) -> None:
    """Paddle's type check; bounds Paddle checks only when it clips are checked here, once
    (the kernels clip on the device and cannot raise)."""
    if clip is None:
        return
    if not isinstance(clip, ClipGradBase):
        raise TypeError(f"{where}: 'grad_clip' should be an instance of GradientClipBase's "
                        f"derived class (triton_adam.ClipGradBy*), got {type(clip).__name__}")
    if isinstance(clip, (ClipGradByNorm, ClipGradByValue)):
        clip.check()


def _check_beta(value: float | torch.Tensor, name: str) -> None:
    """Paddle's range check, also applied to 1-element tensors (read once, at construction)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise TypeError(f"{name} given as a tensor must be a floating tensor with one "
                            f"element, got shape {tuple(value.shape)} and dtype {value.dtype}")
        if value.device.type == "meta" or value.layout != torch.strided:
            # The kernels read the value from the tensor's memory at every step.
            got = ("on the meta device, which holds no value" if value.device.type == "meta"
                   else f"a {value.layout} tensor")
            raise ValueError(f"{name} is a tensor {got}; expected a dense 1-element tensor "
                             "holding its value, on the parameters' device")
        value = value.detach().reshape(()).item()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a 1-element tensor, got "
                        f"{type(value).__name__}")
    if name.endswith("epsilon") or name.endswith("epsilon']"):
        if not value >= 0:
            raise ValueError(f"Invalid value of {name}, expect {name} >= 0.")
    elif not 0 <= value < 1:
        raise ValueError(f"Invalid value of {name}, expect {name} in [0,1).")


class _AdamBase:
    """Shared machinery of ``Adam`` and ``AdamW``; subclasses decide how decay applies."""

    def __init__(self, learning_rate: float | LRScheduler, beta1: float | torch.Tensor,
                 beta2: float | torch.Tensor, epsilon: float | torch.Tensor,
                 parameters: Iterable | None, grad_clip: object | None,
                 lazy_mode: bool, multi_precision: bool, use_multi_tensor: bool,
                 name: str | None, amsgrad: bool, capturable: bool = False,
                 per_tensor_launches: bool = False,
                 master_weight_format: str = "fp32",
                 moment_dtype: torch.dtype = torch.float32, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        for value, arg in ((beta1, "beta1"), (beta2, "beta2"), (epsilon, "epsilon")):
            _check_beta(value, arg)
        check_storage_options(master_format=master_weight_format,
                              master_weights=bool(multi_precision), moment_dtype=moment_dtype,
                              stochastic_rounding=stochastic_rounding, seed=seed,
                              lazy=bool(lazy_mode), master_flag="multi_precision=True",
                              lazy_flag="lazy_mode=True")
        groups, group_mode = parse_parameters(parameters)
        if isinstance(learning_rate, bool) or not isinstance(learning_rate,
                                                             (float, LRScheduler)):
            raise TypeError("learning rate should be float or LRScheduler, got "
                            f"{type(learning_rate)} here")
        _check_grad_clip(grad_clip, "grad_clip")
        for g, group in enumerate(groups):
            opts = group.options
            for arg in ("beta1", "beta2", "epsilon"):
                if arg in opts:
                    _check_beta(opts[arg], f"parameters[{g}]['{arg}']")
            _check_grad_clip(opts.get("grad_clip"), f"parameters[{g}]['grad_clip']")
            scale = opts.get("learning_rate", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                    or not math.isfinite(scale):
                raise TypeError(f"parameters[{g}]['learning_rate'] is a scale of the "
                                f"optimizer's learning rate and must be a finite float, got "
                                f"{scale!r}")
            self._check_group_weight_decay(opts, g)

        self._groups = groups
        self._group_mode = group_mode
        self._parameter_list = [p for group in groups for p in group.params]
        self._given_names = [n for group in groups for n in group.given_names]
        self._group_of = [g for g, group in enumerate(groups) for _ in group.params]

        self._learning_rate = learning_rate
        self._beta1 = beta1
        self._beta2 = beta2
        self._epsilon = epsilon
        self._lazy_mode = bool(lazy_mode)
        self._multi_precision = bool(multi_precision)
        self._master_weight_format = master_weight_format
        self._warned_low_precision = False
        self._use_multi_tensor = bool(use_multi_tensor)
        self._capturable = bool(capturable)
        self._per_tensor_launches = bool(per_tensor_launches)
        self._amsgrad = bool(amsgrad)
        self._name = name
        self._grad_clip = grad_clip
        self._index_of = {id(p): i for i, p in enumerate(self._parameter_list)}
        self._ratios: dict[int, float] = {}  # AdamW lr_ratio, evaluated once per parameter
        if group_mode:
            # As Paddle: each group's learning-rate scale is written into its parameters'
            # optimize_attr, which is what every step reads (so a later set_param_attr or
            # optimize_attr change takes effect, in group mode as in a flat list).
            for group in groups:
                scale = float(group.options.get("learning_rate", 1.0))
                for p in group.params:
                    attr = getattr(p, "optimize_attr", None)
                    attr = attr if isinstance(attr, dict) else {}
                    attr["learning_rate"] = scale
                    p.optimize_attr = attr
        # Every step takes the bucketed launch (one per device and dtype) whatever
        # use_multi_tensor says: results are bitwise the same as one launch per parameter,
        # which costs ~100 us of host time per tensor and stays available for profiling a
        # single parameter's update (per_tensor_launches=True).
        self._engine = Engine(self._parameter_list, self._param_config, amsgrad=self._amsgrad,
                              master_weights=self._multi_precision,
                              multi_tensor=not self._per_tensor_launches,
                              label_of=lambda i: f"parameter '{self._param_name(i)}'",
                              capturable=self._capturable, master_format=master_weight_format,
                              moment_dtype=moment_dtype,
                              stochastic_rounding=stochastic_rounding, seed=seed)
        if self._capturable:
            # The rate every step and replay reads, on the device from the start.
            self._engine.set_lr(self.get_lr())
            if isinstance(learning_rate, LRScheduler):
                watch_lr(learning_rate, self._scheduler_moved)
        # What each parameter's configuration was built from (its attributes and its group's
        # options), compared at every step: a change is reconfigured before the step.
        self._seen_options: list[tuple] | None = None

    # ----------------------------------------------------------------------------- pickling
    def __reduce_ex__(self, protocol: object) -> object:
        """Refuse ``pickle`` and ``copy``: a copy would hold copies of the parameters (not the
        model's) and device buffers addressed by launch tables; the state travels as
        ``state_dict()``."""
        raise TypeError(
            f"a triton_adam {type(self).__name__} optimizer cannot be pickled or copied (its "
            "state lives in device buffers tied to the model's parameters): save "
            "opt.state_dict() instead, e.g. triton_adam.save(opt.state_dict(), path), and load "
            "it into a new optimizer over the model with opt.set_state_dict(...)")

    def __getstate__(self) -> object:
        return self.__reduce_ex__(None)

    # ----------------------------------------------------------------- decay, per subclass
    def _check_group_weight_decay(self, options: dict, g: int) -> None:
        """Type check of a group's ``weight_decay`` (the subclass knows what it means)."""
        raise NotImplementedError

    def _coupled_regularizer(self, index: int) -> WeightDecayRegularizer | None:
        """The regularizer whose term is added to parameter ``index``'s gradient, if any."""
        raise NotImplementedError

    def _decoupled_coeff(self, index: int) -> float:
        """AdamW's decay coefficient for parameter ``index`` (0 for Adam)."""
        return 0.0

    def _lr_ratio(self, param: torch.Tensor) -> float:
        """What else multiplies the learning rate for ``param`` (AdamW's ``lr_ratio``)."""
        return 1.0

    # ----------------------------------------------------------------------- learning rate
    def get_lr(self) -> float:
        """The learning rate of the next step (the scheduler's current value if one is set)."""
        if isinstance(self._learning_rate, LRScheduler):
            return float(self._learning_rate())
        return float(self._learning_rate)

    def set_lr(self, value: float) -> None:
        """Set a constant learning rate; not allowed while a scheduler drives it."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("The type of 'value' in optimizer.set_lr must be float, but "
                            f"received {type(value)}.")
        if isinstance(self._learning_rate, LRScheduler):
            raise RuntimeError("optimizer's learning rate can't be LRScheduler when invoke "
                               "this API, because this will lead to conflict.")
        if self._capturable:
            self._engine.set_lr(float(value))  # what graph replays read from now on
        self._learning_rate = float(value)

    def set_lr_scheduler(self, scheduler: LRScheduler) -> None:
        """Let ``scheduler`` drive the learning rate (it is stepped by the user, not here)."""
        if not isinstance(scheduler, LRScheduler):
            raise TypeError("The type of 'scheduler' in optimizer.set_lr_scheduler must be "
                            f"LRScheduler, but received {type(scheduler)}.")
        if self._capturable:
            self._engine.set_lr(float(scheduler()))
            watch_lr(scheduler, self._scheduler_moved)
        self._learning_rate = scheduler

    def _scheduler_moved(self, scheduler: LRScheduler, rate: float) -> None:
        """A watched scheduler has a new rate (capturable optimizers): write it where graph
        replays read it, if that scheduler still drives this optimizer. A rate set while a
        graph is being captured raises (``Engine.set_lr``): it would be recorded."""
        if scheduler is self._learning_rate:
            self._engine.set_lr(float(rate))

    # ---------------------------------------------------------------- per-parameter values
    def _param_name(self, index: int) -> str:
        """The name of parameter ``index``: ``set_param_attr(name=...)``, else the name given
        with ``named_parameters()``, else ``param_{index}`` (index over all groups, in
        order)."""
        return (param_name(self._parameter_list[index]) or self._given_names[index]
                or f"param_{index}")

    def _option(self, index: int, key: str, default: object) -> object:
        """A group option of parameter ``index``. Paddle copies the groups when the optimizer
        is built (a later change to the dicts given has no effect there), so they are read
        from the copy made then."""
        return self._groups[self._group_of[index]].options.get(key, default)

    def _ratio(self, index: int) -> float:
        ratio = self._ratios.get(index)
        if ratio is None:
            ratio = self._lr_ratio(self._parameter_list[index])
            if not math.isfinite(ratio):
                raise ValueError(f"lr_ratio returned {ratio} for parameter "
                                 f"'{self._param_name(index)}'")
            self._ratios[index] = ratio
        return ratio

    def _param_config(self, index: int) -> ParamConfig:
        """How parameter ``index`` is updated, in the engine's terms (sections 2, 3 and 6 of
        Paddle's rules: attribute and group precedence, clipping per group)."""
        param = self._parameter_list[index]
        if param.dtype in LOW_PRECISION and not self._multi_precision \
                and not self._warned_low_precision and not (
                    self._engine.stochastic_rounding and param.dtype == torch.bfloat16):
            # Paddle's warning, once per optimizer (Paddle: once per parameter); not for
            # stochastically rounded bf16 params, the extension that answers its concern.
            warnings.warn("Accumulating with FP16 or BF16 in optimizer can lead to poor "
                          "accuracy or slow convergence.Consider using "
                          "multi_precision=True option of the Adam optimizer.", stacklevel=5)
            self._warned_low_precision = True
        label = f"parameter '{self._param_name(index)}'"
        hypers = {key: self._option(index, key, default)
                  for key, default in (("beta1", self._beta1), ("beta2", self._beta2),
                                       ("epsilon", self._epsilon))}
        reg = self._coupled_regularizer(index)
        clip = (self._option(index, "grad_clip", self._grad_clip) if self._group_mode
                else self._grad_clip)
        engine_clip: NormClip | ValueClip | None = None
        if clip is not None and param_need_clip(param):
            if isinstance(clip, ClipGradByValue):
                engine_clip = ValueClip(clip.min, clip.max)
            elif isinstance(clip, ClipGradByNorm):
                engine_clip = NormClip(("tensor", index), clip.clip_norm, per_tensor=True)
            else:  # ClipGradByGlobalNorm: one norm per group (flat list: one group)
                engine_clip = NormClip(("group", self._group_of[index]), clip.clip_norm,
                                       auto_skip=clip.auto_skip_clip)
        lazy = (self._option(index, "lazy_mode", self._lazy_mode) if self._group_mode
                else self._lazy_mode)
        return ParamConfig(
            lr_scale=param_lr_scale(param) * self._ratio(index),
            beta1=hypers["beta1"], beta2=hypers["beta2"], eps=hypers["epsilon"],
            l2=reg.coeff if isinstance(reg, L2Decay) else 0.0,
            l1=reg.coeff if isinstance(reg, L1Decay) else 0.0,
            decoupled_decay=self._decoupled_coeff(index), clip=engine_clip, lazy=bool(lazy),
            label=label)

    def _options_now(self) -> list[tuple]:
        """Per parameter, what its configuration is built from that a user may change between
        steps, which Paddle reads at every step: its ``optimize_attr`` learning rate, its
        regularizer and ``need_clip``. Cheap: three attribute reads per parameter."""
        out = []
        append = out.append
        for p in self._parameter_list:
            attrs = p.__dict__  # where a tensor's Python attributes live
            if not attrs:  # the common case: a parameter with no attribute at all
                append(None)
                continue
            attr = attrs.get("optimize_attr")
            reg = attrs.get("regularizer")
            append((attr.get("learning_rate") if attr.__class__ is dict else attr,
                    reg, getattr(reg, "coeff", None), attrs.get("need_clip", True)))
        return out

    def _refresh_options(self) -> None:
        """Reconfigure the parameters whose options changed since the last step (nothing
        when nothing changed: no upload, no host sync either way)."""
        now = self._options_now()
        seen = self._seen_options
        if seen is not None and now != seen:
            self._engine.reconfigure([i for i, (a, b) in enumerate(zip(now, seen)) if a != b])
        self._seen_options = now

    def state_dict(self) -> dict[str, torch.Tensor | dict]:
        """The accumulators under Paddle's keys, ``{param_name}_{[name_]}{acc}_0``.

        Empty before the first step, but for ``'LR_Scheduler'`` (the scheduler's own
        ``state_dict()``) when a scheduler drives the learning rate. Moments and master
        weights are views of the live state (as Paddle returns its live accumulators); the
        pows are copies taken at the call: take the dict and save it before the next step.
        See ``triton_adam.state`` for the keys (master weights included).
        """
        return _state.state_dict(self._layout())

    def set_state_dict(self, state_dict: dict) -> None:
        """Load accumulators saved by ``state_dict()`` (here or by Paddle), matched by key.

        See ``triton_adam.state.set_state_dict`` for the rules (Paddle's section 7). Loaded
        master weights win over the parameters' current values (as in Paddle), also when the
        model's own weights were loaded into the parameters just before.
        """
        _state.set_state_dict(self._layout(), state_dict)

    def _layout(self) -> _state.Layout:
        """What this optimizer's Paddle state keys are built from."""
        sched = self._learning_rate if isinstance(self._learning_rate, LRScheduler) else None
        return _state.Layout(self._engine, [self._param_name(i) for i in
                                            range(len(self._parameter_list))],
                             opt_name=self._name, scheduler=sched)

    # -------------------------------------------------------------------------------- step
    def _params_and_grads(
            self, params: Iterable[torch.Tensor] | None = None,
            exclude: Iterable[torch.Tensor] = ()) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (param, grad) pairs of this step: trainable params whose grad is not None."""
        excluded = {id(p) for p in exclude}
        pairs = []
        for p in self._parameter_list if params is None else params:
            if p.requires_grad and p.grad is not None and id(p) not in excluded:
                pairs.append((p, p.grad))
        return pairs

    @torch.no_grad()
    def _apply(self, pairs: list[tuple[torch.Tensor, torch.Tensor]],
               grad_scale: torch.Tensor | None = None,
               found_inf: torch.Tensor | None = None) -> None:
        """Update the params of ``pairs`` (all trainable params with a gradient when None)
        with their grads: validate all, then launch."""
        grads = None
        if pairs is not None:
            for param, _ in pairs:
                if id(param) not in self._index_of:
                    raise ValueError("a parameter passed to minimize() is not managed by this "
                                     "optimizer")
            grads = {self._index_of[id(p)]: g for p, g in pairs}
        self._check_amp(grad_scale, found_inf)
        self._refresh_options()
        refuse = None
        if not self._group_mode and getattr(self, "regularization", None) is not None:
            refuse = ("Adam don't support weight_decay with sparse parameters, please set it "
                      "to None.")
        self._engine.step(self.get_lr(), grads=grads, grad_scale=grad_scale,
                          found_inf=found_inf, refuse_sparse=refuse)

    def _check_amp(self, grad_scale: torch.Tensor | None,
                   found_inf: torch.Tensor | None) -> None:
        self._engine.check_amp(grad_scale, found_inf)

    @property
    def engine(self) -> Engine:
        """The engine under this optimizer (``triton_adam.engine``): each parameter's state
        by plain accumulator name (``engine.state(i)``), the norms of the last clipped step
        (``engine.norms()``). An extension of Paddle's API, for inspection and tools."""
        return self._engine

    # torch.amp.GradScaler's fused-optimizer protocol: instead of unscaling the gradients and
    # checking them on the host, the scaler sets ``grad_scale`` and ``found_inf`` (device
    # tensors) on the optimizer before calling step(), which the kernels consume.
    _step_supports_amp_scaling = True

    @property
    def param_groups(self) -> list[dict]:
        """PyTorch-style groups (``[{'params': [...]}, ...]``), for tools that walk an
        optimizer's parameters (``torch.amp.GradScaler`` does).

        Read-only: a write such as ``opt.param_groups[0]['lr'] = x`` raises ``TypeError``
        (this Paddle-style optimizer takes its learning rate from ``set_lr`` or a scheduler;
        a write here would otherwise be silently ignored)."""
        return [ReadOnlyGroup(params=list(group.params)) for group in self._groups]

    @torch.no_grad()
    def step(self, *, grad_scale: torch.Tensor | None = None,
             found_inf: torch.Tensor | None = None) -> None:
        """Update every trainable parameter that has a gradient; others are left untouched.

        A zero gradient is still a step (moments decay, the pows advance); a ``None``
        gradient skips the parameter, whose step count then stays behind (Paddle's
        per-parameter step count). This is one kernel launch per bucket (parameters of one
        device and dtype; plus a norm pass and a finalize with clipping by norm), or one per
        parameter with ``per_tensor_launches=True``.

        Args:
            grad_scale: AMP's loss scale, a 1-element device tensor: gradients are divided by
                it inside the kernels (their tensors are not modified).
            found_inf: AMP's overflow flag, a 1-element device tensor: when nonzero the step
                changes nothing (params, master weights, moments, pows), decided on the
                device. ``torch.amp.GradScaler`` passes both by setting the attributes
                ``grad_scale`` and ``found_inf`` on the optimizer; explicit arguments win.
        """
        if grad_scale is None:
            grad_scale = getattr(self, "grad_scale", None)
        if found_inf is None:
            found_inf = getattr(self, "found_inf", None)
        self._apply(None, grad_scale, found_inf)

    def minimize(self, loss: torch.Tensor, startup_program: object = None,
                 parameters: Iterable[torch.Tensor] | None = None,
                 no_grad_set: Iterable[torch.Tensor] | None = None
                 ) -> tuple[list, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Paddle's dygraph ``minimize``: update from the existing gradients.

        As in Paddle, ``loss`` is not back-propagated: call ``loss.backward()`` first. Only
        ``parameters`` (default: all of this optimizer's) minus ``no_grad_set`` are updated.
        Returns ``([], [(param, grad), ...])`` for the parameters that were updated.
        """
        if not isinstance(loss, torch.Tensor):
            raise TypeError("The loss should be an Tensor.")
        pairs = self._params_and_grads(parameters, no_grad_set or ())
        self._apply(pairs)
        return [], pairs

    def append_regularization_ops(
            self, parameters_and_grads: list[tuple[torch.Tensor, torch.Tensor | None]],
            regularization: WeightDecayRegularizer | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Paddle's ``append_regularization_ops``: ``(param, grad + decay term)`` pairs.

        The parameter's own regularizer (``param.regularizer``) wins over ``regularization``;
        with neither, or a None gradient, the pair is returned unchanged. The sums are new
        tensors: gradients are not modified. (``step()`` does not call this: the kernels add
        the same term while they read each gradient.)
        """
        if regularization is not None and not isinstance(regularization,
                                                         WeightDecayRegularizer):
            raise TypeError("regularization must be an L1Decay/L2Decay or None, got "
                            f"{type(regularization).__name__}")
        out = []
        with torch.no_grad():
            for param, grad in parameters_and_grads:
                reg = param_regularizer(param) or regularization
                if grad is None or reg is None:
                    out.append((param, grad))
                    continue
                out.append((param, grad + reg.term(param.detach()).to(grad.dtype)))
        return out

    def clear_grad(self, set_to_zero: bool = True) -> None:
        """Zero the gradients of trainable parameters in place, or set them to None.

        Zeroing takes one ``torch._foreach_zero_`` per (device, dtype) of the gradients, not
        one operation per tensor; it keeps the gradient tensors, which is what a
        ``capturable`` optimizer's CUDA graph needs (it may also be captured itself)."""
        grads = []
        for p in self._parameter_list:
            if not p.requires_grad or p.grad is None:
                continue
            if set_to_zero:
                grads.append(p.grad)
            else:
                p.grad = None
        zero_in_place(grads)

    clear_gradients = clear_grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        """PyTorch's spelling: ``clear_grad(set_to_zero=not set_to_none)``."""
        self.clear_grad(set_to_zero=not set_to_none)



class Adam(_AdamBase):
    """Adam (Kingma & Ba) as ``paddle.optimizer.Adam``, on fused Triton kernels.

    Args:
        learning_rate: a float, or an ``LRScheduler`` whose current value each step uses.
        beta1, beta2: exponential decay rates of the moments, in [0, 1), floats or
            1-element tensors on the parameters' device (read at every step, on the device).
        epsilon: added to the denominator for stability, >= 0.
        parameters: tensors, ``(name, tensor)`` pairs (``named_parameters()``), or parameter
            groups (dicts with ``params`` and ``learning_rate`` (a scale), ``weight_decay``,
            ``grad_clip``, ``beta1``, ``beta2``, ``epsilon``, ``lazy_mode``). float32,
            float64, float16 and bfloat16 parameters, contiguous; DTensor (FSDP2) shards too.
        weight_decay: a float/int (``L2Decay(coeff)``), an ``L1Decay``/``L2Decay``, or None.
            A parameter's own regularizer (``set_param_attr``) wins in a flat list; a group's
            ``weight_decay`` wins in group mode. The term is added to the gradient inside the
            kernel; ``param.grad`` itself is not modified.
        grad_clip: ``ClipGradByGlobalNorm`` (one norm per group), ``ClipGradByNorm`` or
            ``ClipGradByValue``, computed on the device and applied as the update reads each
            gradient (``param.grad`` is not modified); ``need_clip=False`` params are left out.
        lazy_mode: with a sparse COO gradient, update only its rows; with dense gradients it
            has no effect, as in Paddle.
        multi_precision: fp32 master weights for float16/bfloat16 parameters (without them,
            such parameters are computed in fp32 and rounded every step, with a warning).
        use_multi_tensor: accepted for Paddle compatibility; it changes nothing here. Every
            step is one kernel launch per (device, dtype) bucket of parameters (Paddle's
            ``use_multi_tensor=True``), which gives the same results bit for bit as one
            launch per parameter at a fraction of the host cost.
        name: inserted in the state_dict keys (``{param}_{name}_moment1_0``).
        amsgrad: keep ``moment2_max`` and use it in the denominator.
        capturable: (keyword only; not in Paddle) ``step()`` may be captured in a CUDA graph
            (``torch.cuda.graph``) and replayed. The learning rate then lives on the device:
            ``set_lr()`` and the scheduler's ``step()`` write it there (call them outside
            the captured region), and each replay reads the current value. Capture after an
            eager warm-up step with the same gradient tensors; a captured step that would
            need new state or new launch tables raises. Same results bit for bit as
            ``capturable=False``, whose steps refuse to be captured. Default False.
        per_tensor_launches: (keyword only; not in Paddle) one kernel launch per parameter
            instead of one per bucket: the same results, about 100 us more host time per
            parameter; for profiling or tuning the update of single parameters.
        master_weight_format: (keyword only; not in Paddle) how the master weights of
            ``multi_precision`` are kept: ``"fp32"`` (default, float32 copies) or
            ``"remainder"``: a bfloat16 parameter keeps only the low 16 bits of its float32
            master beside it (int16), the parameter being the high half: 2 B less state and
            traffic per parameter, masters, moments and pows bit-identical to ``"fp32"``.
            The parameter is the master rounded to nearest with ties away from zero (``"fp32"``
            rounds ties to even: a 16-bit remainder cannot rebuild every master beside a
            ties-to-even parameter, see ``kernels/common.py``), so it differs by one bf16 ulp
            where the master lies exactly halfway and ties-to-even rounds down. ``state_dict``
            rebuilds float32 masters (Paddle's format; new tensors, not live views) and
            ``set_state_dict`` splits them (writing the parameters, the masters' high
            halves): checkpoints cross both ways with ``"fp32"`` and with Paddle. float16
            parameters are refused (an fp16 value and 16 bits cannot hold every float32
            master); ``multi_precision=True`` is required.
        moment_dtype: (keyword only; not in Paddle) ``torch.float32`` (default) or
            ``torch.bfloat16``: keep ``moment1``/``moment2``/``moment2_max`` in bf16 (4 B per
            parameter instead of 8 or 12), computed in float32 and stored rounded
            stochastically (unbiased). ``state_dict`` carries them as float32 (Paddle's
            format; new tensors, not live views); loading rounds them to nearest even.
            float64 parameters and ``lazy_mode`` are refused.
        stochastic_rounding: (keyword only; not in Paddle) with ``multi_precision=False``,
            write bfloat16 parameters rounded stochastically instead of to nearest even,
            which drops every update below half a bf16 ulp (unbiased: a small update moves
            the parameter in expectation). float16 parameters and ``lazy_mode`` are refused.
        seed: (keyword only; not in Paddle) the key of the stochastic rounding's random bits
            (an int in ``[0, 2**63)``, default 0): with each tensor's step count and each
            element's offset it decides them, so runs are deterministic given the seed, and
            a resumed run (same seed; the step count is in the state) continues bit for bit.

    ``step(grad_scale=None, found_inf=None)`` also takes AMP's device loss scale and overflow
    flag (``torch.amp.GradScaler`` passes them itself).
    """

    def __init__(self, learning_rate: float | LRScheduler = 0.001,
                 beta1: float | torch.Tensor = 0.9, beta2: float | torch.Tensor = 0.999,
                 epsilon: float | torch.Tensor = 1e-08,
                 parameters: Iterable[torch.Tensor] | None = None,
                 weight_decay: float | WeightDecayRegularizer | None = None,
                 grad_clip: object | None = None, lazy_mode: bool = False,
                 multi_precision: bool = False, use_multi_tensor: bool = False,
                 name: str | None = None, amsgrad: bool = False, *,
                 capturable: bool = False, per_tensor_launches: bool = False,
                 master_weight_format: str = "fp32",
                 moment_dtype: torch.dtype = torch.float32, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        if isinstance(weight_decay, bool) or not (
                weight_decay is None or isinstance(weight_decay, (int, float,
                                                                  WeightDecayRegularizer))):
            raise TypeError("weight_decay should be a float, an L1Decay/L2Decay or None, got "
                            f"{type(weight_decay).__name__}")
        super().__init__(learning_rate, beta1, beta2, epsilon, parameters, grad_clip,
                         lazy_mode, multi_precision, use_multi_tensor, name, amsgrad,
                         capturable, per_tensor_launches, master_weight_format,
                         moment_dtype, stochastic_rounding, seed)
        self.regularization = (L2Decay(float(weight_decay))
                               if isinstance(weight_decay, (int, float)) else weight_decay)

    def _check_group_weight_decay(self, options: dict, g: int) -> None:
        wd = options.get("weight_decay")
        if isinstance(wd, bool) or not (wd is None or isinstance(wd, (int, float,
                                                                      WeightDecayRegularizer))):
            raise TypeError(f"parameters[{g}]['weight_decay'] should be a float, an "
                            f"L1Decay/L2Decay or None, got {type(wd).__name__}")

    def _coupled_regularizer(self, index: int) -> WeightDecayRegularizer | None:
        # Section 2: flat mode, the parameter's own regularizer wins; group mode, the group's
        # weight_decay (default: the optimizer's) replaces it. Either way, None falls back to
        # the optimizer's weight_decay (Paddle's append_regularization_ops).
        if self._group_mode:
            wd = self._option(index, "weight_decay", self.regularization)
            reg = L2Decay(float(wd)) if isinstance(wd, (int, float)) else wd
        else:
            reg = param_regularizer(self._parameter_list[index])
        return reg if reg is not None else self.regularization


class AdamW(_AdamBase):
    """AdamW (Loshchilov & Hutter) as ``paddle.optimizer.AdamW``: decoupled weight decay.

    Each step first decays the parameter, ``p -= lr * lr_ratio(p) * coeff * p``, then applies
    the Adam update with learning rate ``lr * lr_ratio(p)``. Paddle keeps ``coeff`` as a
    float32 attribute, so it is rounded to float32 here too (also for float64 parameters).

    Args:
        weight_decay: the decay coefficient, a float or int (default 0.01); in group mode a
            group's ``weight_decay`` is its coefficient. A parameter's own regularizer
            (``set_param_attr(regularizer=...)``) is still added to its gradient.
        lr_ratio: ``lr_ratio(param) -> float`` scales the learning rate per parameter
            (Paddle implements it on GPUs only; here it works on every device). It is called
            once per parameter, at its first step, and the ratio kept on the device; Paddle
            calls it at every step, which only differs for a ratio that changes over time.
        apply_decay_param_fun: ``f(param_name) -> bool``; parameters for which it returns
            False are not decayed. Names: ``set_param_attr(name=...)``, else the
            ``named_parameters()`` name, else ``param_{index}``.
        use_multi_tensor: as in ``Adam`` (an extension: Paddle's AdamW has no such argument).
        The other arguments (``capturable``, ``per_tensor_launches``,
        ``master_weight_format``, ``moment_dtype``, ``stochastic_rounding`` and ``seed``
        included) are as in ``Adam``.
    """

    def __init__(self, learning_rate: float | LRScheduler = 0.001,
                 beta1: float | torch.Tensor = 0.9, beta2: float | torch.Tensor = 0.999,
                 epsilon: float | torch.Tensor = 1e-08,
                 parameters: Iterable[torch.Tensor] | None = None,
                 weight_decay: float = 0.01,
                 lr_ratio: Callable[[torch.Tensor], float] | None = None,
                 apply_decay_param_fun: Callable[[str], bool] | None = None,
                 grad_clip: object | None = None, lazy_mode: bool = False,
                 multi_precision: bool = False, amsgrad: bool = False,
                 name: str | None = None, use_multi_tensor: bool = False, *,
                 capturable: bool = False, per_tensor_launches: bool = False,
                 master_weight_format: str = "fp32",
                 moment_dtype: torch.dtype = torch.float32, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        if isinstance(weight_decay, torch.Tensor):
            if weight_decay.numel() != 1 or weight_decay.device.type == "meta" \
                    or weight_decay.layout != torch.strided:
                raise TypeError("weight_decay given as a tensor must be a dense tensor holding "
                                f"one element, got shape {tuple(weight_decay.shape)} "
                                f"({weight_decay.layout}, on {weight_decay.device})")
            weight_decay = weight_decay.detach().reshape(()).item()  # once, at construction
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
            raise TypeError("weight_decay should be an int, a float or a 1-element tensor, got "
                            f"{type(weight_decay).__name__}")
        if lr_ratio is not None and not callable(lr_ratio):
            raise TypeError("lr_ratio should be a callable lr_ratio(param) -> float")
        if apply_decay_param_fun is not None and not callable(apply_decay_param_fun):
            raise TypeError("apply_decay_param_fun should be a callable f(name) -> bool")
        super().__init__(learning_rate, beta1, beta2, epsilon, parameters, grad_clip,
                         lazy_mode, multi_precision, use_multi_tensor, name, amsgrad,
                         capturable, per_tensor_launches, master_weight_format,
                         moment_dtype, stochastic_rounding, seed)
        self._coeff = float(np.float32(weight_decay))
        self._lr_ratio_fn = lr_ratio
        self._apply_decay_param_fun = apply_decay_param_fun

    def _check_group_weight_decay(self, options: dict, g: int) -> None:
        wd = options.get("weight_decay", 0.0)
        if isinstance(wd, bool) or not isinstance(wd, (int, float)):
            raise TypeError(f"parameters[{g}]['weight_decay'] is AdamW's decay coefficient and "
                            f"should be a float, got {type(wd).__name__}")

    def _coupled_regularizer(self, index: int) -> WeightDecayRegularizer | None:
        # AdamW has no optimizer-wide regularizer, but a parameter's own is still added to
        # its gradient, in flat and group mode alike.
        return param_regularizer(self._parameter_list[index])

    def _decoupled_coeff(self, index: int) -> float:
        if self._apply_decay_param_fun is not None:
            if not self._apply_decay_param_fun(self._param_name(index)):
                return 0.0
        if self._group_mode and "weight_decay" in self._groups[self._group_of[index]].options:
            return float(np.float32(self._option(index, "weight_decay", 0.0)))
        return self._coeff

    def _lr_ratio(self, param: torch.Tensor) -> float:
        if self._lr_ratio_fn is None:
            return 1.0
        ratio = self._lr_ratio_fn(param)
        # A number, or a 1-element tensor / array (read once: the ratio is kept on the device).
        # A bool is refused (float(True) would silently be a ratio of 1), as is a str.
        if isinstance(ratio, torch.Tensor):
            ok = (ratio.numel() == 1 and ratio.layout == torch.strided
                  and ratio.device.type != "meta" and ratio.dtype != torch.bool
                  and not ratio.is_complex())
            got = f"a tensor of shape {tuple(ratio.shape)} ({ratio.dtype}, on {ratio.device})"
        elif isinstance(ratio, (np.ndarray, np.generic)):
            ok = ratio.size == 1 and ratio.dtype.kind in "iuf"
            got = f"a numpy {type(ratio).__name__} of shape {ratio.shape} ({ratio.dtype})"
        else:
            ok = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
            got = f"a {type(ratio).__name__} ({reprlib.repr(ratio)})"
        if not ok:
            name = self._param_name(self._index_of[id(param)])
            raise TypeError(f"lr_ratio returned {got} for parameter '{name}'; expected a "
                            "float (or a 1-element tensor)")
        return float(ratio.item() if isinstance(ratio, (torch.Tensor, np.ndarray, np.generic))
                     else ratio)
