"""What a step does: ``Adam`` and ``AdamW``, Paddle's API over PyTorch tensors.

The classes validate their arguments as ``paddle.optimizer.Adam``/``AdamW`` do, own the state
of each parameter, and launch one fused Triton kernel per parameter per step
(``triton_adam.kernels.adam``). A step never reads a value back from the device: the
learning rate is a host float handed to the kernel, the hyper-parameters live in a small
device row per parameter, and the beta pows advance on the device (see ``_ParamState``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from triton_adam import backend
from triton_adam.kernels import adam as _adam_kernels
from triton_adam.lr import LRScheduler
from triton_adam.regularizer import L1Decay, L2Decay, WeightDecayRegularizer

# Paddle's accumulator names (state_dict keys are f"{param_name}_{acc}_0").
MOMENT1 = "moment1"
MOMENT2 = "moment2"
MOMENT2_MAX = "moment2_max"
BETA1_POW = "beta1_pow_acc"
BETA2_POW = "beta2_pow_acc"


@dataclass
class _ParamState:
    """The accumulators of one parameter, in the compute dtype.

    ``pows`` holds two slots of ``(beta1_pow, beta2_pow)``: a step reads slot ``slot`` and the
    kernel writes the advanced pows into the other one, after which ``slot`` flips. The host
    knows which slot is current without reading the device, and no program of a launch can
    overwrite a pow that another program is still about to read.
    """

    moment1: torch.Tensor
    moment2: torch.Tensor
    moment2_max: torch.Tensor | None
    pows: torch.Tensor  # [2, POW_SLOT_WIDTH]
    hyper: torch.Tensor  # [HYPER_WIDTH]: the kernel's per-tensor hyper-parameters
    coupled_decay: bool  # an L1/L2 regularizer applies to this parameter
    decoupled_decay: bool  # AdamW decay applies to this parameter
    slot: int = 0

    def beta_pow(self, which: int) -> torch.Tensor:
        """The current ``beta{which+1}_pow`` as a 1-element view (shape [1], like Paddle)."""
        return self.pows[self.slot, which:which + 1]


def _check_beta(value: float | torch.Tensor, name: str) -> None:
    """Paddle's range check, also applied to 1-element tensors (read once, at construction)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise TypeError(f"{name} given as a tensor must be a floating tensor with one "
                            f"element, got shape {tuple(value.shape)} and dtype {value.dtype}")
        value = value.detach().reshape(()).item()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a 1-element tensor, got "
                        f"{type(value).__name__}")
    if name == "epsilon":
        if not value >= 0:
            raise ValueError("Invalid value of epsilon, expect epsilon >= 0.")
    elif not 0 <= value < 1:
        raise ValueError(f"Invalid value of {name}, expect {name} in [0,1).")


class _AdamBase:
    """Shared machinery of ``Adam`` and ``AdamW``; subclasses decide how decay applies."""

    def __init__(self, learning_rate: float | LRScheduler, beta1: float | torch.Tensor,
                 beta2: float | torch.Tensor, epsilon: float | torch.Tensor,
                 parameters: Iterable[torch.Tensor] | None, grad_clip: object | None,
                 lazy_mode: bool, multi_precision: bool, use_multi_tensor: bool,
                 name: str | None, amsgrad: bool) -> None:
        for value, arg in ((beta1, "beta1"), (beta2, "beta2"), (epsilon, "epsilon")):
            _check_beta(value, arg)
        if parameters is None:
            raise AttributeError("parameters argument given to the Optimizer should not be "
                                 "None in dygraph mode.")
        if isinstance(parameters, torch.Tensor):
            raise TypeError("`parameters` argument given to the optimizer should be an iterable "
                            f"of Tensors, but got argument type is `{type(parameters)}`.")
        if isinstance(parameters, dict):
            raise TypeError("`parameters` argument should not get dict type, if parameter "
                            "groups is needed, please set `parameters` as list of dict")
        if isinstance(learning_rate, bool) or not isinstance(learning_rate,
                                                             (float, LRScheduler)):
            raise TypeError("learning rate should be float or LRScheduler, got "
                            f"{type(learning_rate)} here")
        if grad_clip is not None:
            raise NotImplementedError("grad_clip: gradient clipping is not implemented yet "
                                      "(the gradient-clipping issue)")
        if use_multi_tensor:
            raise NotImplementedError("use_multi_tensor=True: multi-tensor apply is not "
                                      "implemented yet (the multi-tensor issue)")

        self._parameter_list = list(parameters)
        if not self._parameter_list:
            raise ValueError("optimizer got an empty parameter list")
        seen: set[int] = set()
        for i, p in enumerate(self._parameter_list):
            if isinstance(p, dict):
                raise NotImplementedError("parameter groups (a list of dicts) are not "
                                          "implemented yet (the parameter-groups issue)")
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"parameters[{i}] is a {type(p).__name__}, expected a "
                                "torch.Tensor")
            if p.dtype in (torch.float16, torch.bfloat16):
                raise NotImplementedError(
                    f"parameters[{i}] is {p.dtype}: float16/bfloat16 parameters (and "
                    "multi_precision master weights) are not implemented yet (the "
                    "mixed-precision issue)")
            if p.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"parameters[{i}] has dtype {p.dtype}; Adam updates float32 "
                                "and float64 parameters")
            if not p.is_contiguous():
                raise ValueError(f"parameters[{i}] is not contiguous: the kernels update a "
                                 "parameter in place over its storage")
            if id(p) in seen:
                # Decision (spec section 6): Paddle updates such a tensor twice per step.
                raise ValueError(f"parameters[{i}] appears more than once in the parameter "
                                 "list")
            seen.add(id(p))

        self._learning_rate = learning_rate
        self._beta1 = beta1
        self._beta2 = beta2
        self._epsilon = epsilon
        self._tensor_hypers = any(isinstance(x, torch.Tensor) for x in (beta1, beta2, epsilon))
        self._lazy_mode = bool(lazy_mode)
        self._multi_precision = bool(multi_precision)
        self._amsgrad = bool(amsgrad)
        self._name = name
        self._grad_clip = None
        self._state: dict[int, _ParamState] = {}  # keyed by id(param): one entry per param

    # ----------------------------------------------------------------- decay, per subclass
    def _coupled_regularizer(self, param: torch.Tensor) -> WeightDecayRegularizer | None:
        """The regularizer whose term is added to ``param``'s gradient, if any."""
        raise NotImplementedError

    def _decoupled_coeff(self, param: torch.Tensor) -> float:
        """AdamW's decay coefficient for ``param`` (0 for Adam)."""
        return 0.0

    def _lr_scale(self, param: torch.Tensor) -> float:
        """What multiplies the learning rate for ``param`` (AdamW's ``lr_ratio``)."""
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
        self._learning_rate = float(value)

    def set_lr_scheduler(self, scheduler: LRScheduler) -> None:
        """Let ``scheduler`` drive the learning rate (it is stepped by the user, not here)."""
        if not isinstance(scheduler, LRScheduler):
            raise TypeError("The type of 'scheduler' in optimizer.set_lr_scheduler must be "
                            f"LRScheduler, but received {type(scheduler)}.")
        self._learning_rate = scheduler

    # ------------------------------------------------------------------------------- state
    def _param_name(self, index: int, param: torch.Tensor) -> str:
        """``param.name`` when set (Paddle's attribute), else ``param_{index}``."""
        name = getattr(param, "name", None)
        return name if isinstance(name, str) and name else f"param_{index}"

    def _hyper_values(self, param: torch.Tensor) -> list[float]:
        """The kernel's hyper-parameter row for ``param`` (tensor hypers filled per step)."""
        reg = self._coupled_regularizer(param)
        row = [0.0] * _adam_kernels.HYPER_WIDTH
        row[_adam_kernels.HYPER_LR_SCALE] = self._lr_scale(param)
        for col, value in ((_adam_kernels.HYPER_BETA1, self._beta1),
                           (_adam_kernels.HYPER_BETA2, self._beta2),
                           (_adam_kernels.HYPER_EPS, self._epsilon)):
            row[col] = 0.0 if isinstance(value, torch.Tensor) else float(value)
        row[_adam_kernels.HYPER_L2] = reg.coeff if isinstance(reg, L2Decay) else 0.0
        row[_adam_kernels.HYPER_L1] = reg.coeff if isinstance(reg, L1Decay) else 0.0
        row[_adam_kernels.HYPER_WD] = self._decoupled_coeff(param)
        return row

    def _refresh_tensor_hypers(self, state: _ParamState) -> None:
        """Copy tensor-valued beta1/beta2/epsilon into the row (device copies, no sync).

        Paddle reads such tensors at every step, so an in-place change takes effect at the
        next step here too. Keep them on the parameters' device: a CPU tensor copied to a
        CUDA row is a synchronous copy.
        """
        for col, value in ((_adam_kernels.HYPER_BETA1, self._beta1),
                           (_adam_kernels.HYPER_BETA2, self._beta2),
                           (_adam_kernels.HYPER_EPS, self._epsilon)):
            if isinstance(value, torch.Tensor):
                state.hyper[col:col + 1].copy_(value.detach().reshape(1))

    def _create_state(self, param: torch.Tensor) -> _ParamState:
        cdtype = _adam_kernels.compute_dtype_for(param.dtype)
        dev = param.device
        pows = torch.zeros(2, _adam_kernels.POW_SLOT_WIDTH, dtype=cdtype, device=dev)
        # Pows start at beta^1. Decision (spec section 6): a tensor beta starts its pow at the
        # tensor's value (Paddle starts it at 0.9 / 0.999 whatever the tensor holds).
        for which, beta in enumerate((self._beta1, self._beta2)):
            if isinstance(beta, torch.Tensor):
                pows[0, which:which + 1].copy_(beta.detach().reshape(1))
            else:
                pows[0, which] = float(beta)
        hyper = torch.tensor(self._hyper_values(param), dtype=cdtype, device=dev)
        state = _ParamState(
            moment1=torch.zeros_like(param, dtype=cdtype),
            moment2=torch.zeros_like(param, dtype=cdtype),
            moment2_max=torch.zeros_like(param, dtype=cdtype) if self._amsgrad else None,
            pows=pows, hyper=hyper,
            coupled_decay=self._coupled_regularizer(param) is not None,
            decoupled_decay=self._decoupled_coeff(param) != 0.0)
        self._state[id(param)] = state
        return state

    def state_dict(self) -> dict[str, torch.Tensor | dict]:
        """The accumulators under Paddle's keys, ``{param_name}_{[name_]}{acc}_0``.

        Empty before the first step, but for ``'LR_Scheduler'`` (the scheduler's own
        ``state_dict()``) when a scheduler drives the learning rate. Moments are the live
        tensors; the pows are views of the slot current at the time of the call: take the
        dict and save it before the next step.
        """
        infix = f"{self._name}_" if self._name else ""
        out: dict[str, torch.Tensor | dict] = {}
        for index, param in enumerate(self._parameter_list):
            state = self._state.get(id(param))
            if state is None:
                continue
            prefix = f"{self._param_name(index, param)}_{infix}"
            out[f"{prefix}{MOMENT1}_0"] = state.moment1
            out[f"{prefix}{MOMENT2}_0"] = state.moment2
            if state.moment2_max is not None:
                out[f"{prefix}{MOMENT2_MAX}_0"] = state.moment2_max
            out[f"{prefix}{BETA1_POW}_0"] = state.beta_pow(0)
            out[f"{prefix}{BETA2_POW}_0"] = state.beta_pow(1)
        if isinstance(self._learning_rate, LRScheduler):
            out["LR_Scheduler"] = self._learning_rate.state_dict()
        return out

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
    def _apply(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        # Validate every pair before the first launch, so bad input changes nothing.
        index_of = {id(p): i for i, p in enumerate(self._parameter_list)}
        for param, grad in pairs:
            if id(param) not in index_of:
                raise ValueError("a parameter passed to minimize() is not managed by this "
                                 "optimizer")
            what = f"parameter '{self._param_name(index_of[id(param)], param)}'"
            if grad.is_sparse or grad.layout != torch.strided:
                raise NotImplementedError(f"{what} has a sparse gradient: sparse gradients "
                                          "(lazy_mode) are not implemented yet (the lazy-mode "
                                          "issue)")
            if grad.dtype != param.dtype:
                raise TypeError(f"{what}: gradient dtype {grad.dtype} differs from the "
                                f"parameter's {param.dtype}")
            if grad.shape != param.shape or grad.device != param.device:
                raise ValueError(f"{what}: gradient {tuple(grad.shape)} on {grad.device} does "
                                 f"not match the parameter {tuple(param.shape)} on "
                                 f"{param.device}")
            backend.check_runnable(param, what)
            if not param.is_contiguous():
                raise ValueError(f"{what} is no longer contiguous")

        lr = self.get_lr()
        for param, grad in pairs:
            state = self._state.get(id(param)) or self._create_state(param)
            if self._tensor_hypers:
                self._refresh_tensor_hypers(state)
            # A gradient with other strides than its parameter (rare: a user-assigned view)
            # is made contiguous, since the kernel walks both over the same flat range.
            grad = grad if grad.is_contiguous() else grad.contiguous()
            _adam_kernels.adam_update_(
                param, grad, state.moment1, state.moment2, state.moment2_max, state.hyper,
                state.pows[state.slot], state.pows[1 - state.slot], lr=lr,
                coupled_decay=state.coupled_decay, decoupled_decay=state.decoupled_decay)
            state.slot ^= 1

    def step(self) -> None:
        """Update every trainable parameter that has a gradient; others are left untouched.

        A zero gradient is still a step (moments decay, the pows advance); a ``None``
        gradient skips the parameter, whose step count then stays behind (Paddle's
        per-parameter step count).
        """
        self._apply(self._params_and_grads())

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

    def clear_grad(self, set_to_zero: bool = True) -> None:
        """Zero the gradients of trainable parameters in place, or set them to None."""
        for p in self._parameter_list:
            if not p.requires_grad or p.grad is None:
                continue
            if set_to_zero:
                p.grad.zero_()
            else:
                p.grad = None

    clear_gradients = clear_grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        """PyTorch's spelling: ``clear_grad(set_to_zero=not set_to_none)``."""
        self.clear_grad(set_to_zero=not set_to_none)


class Adam(_AdamBase):
    """Adam (Kingma & Ba) as ``paddle.optimizer.Adam``: one fused Triton kernel per parameter.

    Args:
        learning_rate: a float, or an ``LRScheduler`` whose current value each step uses.
        beta1, beta2: exponential decay rates of the moments, in [0, 1), floats or
            1-element tensors (read at every step, on the device).
        epsilon: added to the denominator for stability, >= 0.
        parameters: the tensors to optimize (float32 or float64, contiguous).
        weight_decay: a float/int (``L2Decay(coeff)``), an ``L1Decay``/``L2Decay``, or None.
            The decay term is added to the gradient inside the kernel; ``param.grad`` itself
            is not modified.
        grad_clip: gradient clipping (not implemented yet: raises NotImplementedError).
        lazy_mode: sparse-row updates for sparse gradients. With dense gradients it has no
            effect, as in Paddle; sparse gradients are not supported yet.
        multi_precision: fp32 master weights for float16/bfloat16 parameters; no effect for
            float32/float64 parameters (low-precision parameters are not supported yet).
        use_multi_tensor: one launch per bucket of parameters (not implemented yet).
        name: inserted in the state_dict keys (``{param}_{name}_moment1_0``).
        amsgrad: keep ``moment2_max`` and use it in the denominator.
    """

    def __init__(self, learning_rate: float | LRScheduler = 0.001,
                 beta1: float | torch.Tensor = 0.9, beta2: float | torch.Tensor = 0.999,
                 epsilon: float | torch.Tensor = 1e-08,
                 parameters: Iterable[torch.Tensor] | None = None,
                 weight_decay: float | WeightDecayRegularizer | None = None,
                 grad_clip: object | None = None, lazy_mode: bool = False,
                 multi_precision: bool = False, use_multi_tensor: bool = False,
                 name: str | None = None, amsgrad: bool = False) -> None:
        if isinstance(weight_decay, bool) or not (
                weight_decay is None or isinstance(weight_decay, (int, float,
                                                                  WeightDecayRegularizer))):
            raise TypeError("weight_decay should be a float, an L1Decay/L2Decay or None, got "
                            f"{type(weight_decay).__name__}")
        super().__init__(learning_rate, beta1, beta2, epsilon, parameters, grad_clip,
                         lazy_mode, multi_precision, use_multi_tensor, name, amsgrad)
        self.regularization = (L2Decay(float(weight_decay))
                               if isinstance(weight_decay, (int, float)) else weight_decay)

    def _coupled_regularizer(self, param: torch.Tensor) -> WeightDecayRegularizer | None:
        return self.regularization


class AdamW(_AdamBase):
    """AdamW (Loshchilov & Hutter) as ``paddle.optimizer.AdamW``: decoupled weight decay.

    Each step first decays the parameter, ``p -= lr * lr_ratio(p) * coeff * p``, then applies
    the Adam update with learning rate ``lr * lr_ratio(p)``. Paddle keeps ``coeff`` as a
    float32 attribute, so it is rounded to float32 here too (also for float64 parameters).

    Args:
        weight_decay: the decay coefficient, a float or int (default 0.01).
        lr_ratio: ``lr_ratio(param) -> float`` scales the learning rate per parameter
            (Paddle implements it on GPUs only; here it works on every device). It is called
            once per parameter, at its first step, and the ratio kept on the device; Paddle
            calls it at every step, which only differs for a ratio that changes over time.
        apply_decay_param_fun: ``f(param_name) -> bool``; parameters for which it returns
            False are not decayed. Names are ``param.name`` or ``param_{index}``.
        The other arguments are as in ``Adam``.
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
                 name: str | None = None) -> None:
        if isinstance(weight_decay, torch.Tensor) and weight_decay.numel() == 1:
            weight_decay = weight_decay.detach().reshape(()).item()  # once, at construction
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
            raise TypeError("weight_decay should be int, float or Tensor.")
        if lr_ratio is not None and not callable(lr_ratio):
            raise TypeError("lr_ratio should be a callable lr_ratio(param) -> float")
        if apply_decay_param_fun is not None and not callable(apply_decay_param_fun):
            raise TypeError("apply_decay_param_fun should be a callable f(name) -> bool")
        super().__init__(learning_rate, beta1, beta2, epsilon, parameters, grad_clip,
                         lazy_mode, multi_precision, False, name, amsgrad)
        self._coeff = float(np.float32(weight_decay))
        self._lr_ratio = lr_ratio
        self._apply_decay_param_fun = apply_decay_param_fun

    def _coupled_regularizer(self, param: torch.Tensor) -> WeightDecayRegularizer | None:
        return None

    def _decoupled_coeff(self, param: torch.Tensor) -> float:
        if self._apply_decay_param_fun is not None:
            index = next(i for i, p in enumerate(self._parameter_list) if p is param)
            if not self._apply_decay_param_fun(self._param_name(index, param)):
                return 0.0
        return self._coeff

    def _lr_scale(self, param: torch.Tensor) -> float:
        if self._lr_ratio is None:
            return 1.0
        ratio = float(self._lr_ratio(param))
        if not math.isfinite(ratio):
            raise ValueError(f"lr_ratio returned {ratio} for a parameter")
        return ratio
