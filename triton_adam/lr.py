"""Learning-rate schedules: which learning rate should the optimizer use at epoch (step) ``t``?

This module is a dependency-free (``math`` only) re-implementation of ``paddle.optimizer.lr`` as
of PaddlePaddle 3.3.1.  Every class keeps Paddle's name, constructor signature and defaults, its
argument checks (same exception types), its ``step`` / ``__call__`` / ``get_lr`` protocol, its
``verbose`` messages and its ``state_dict`` keys, so a schedule written for Paddle runs unchanged
and a checkpointed schedule state can be exchanged with Paddle.  The floating-point formulas are
evaluated in the same order as Paddle's, so the learning rates agree with Paddle's to the last
bit or so (the tests require a relative difference of at most 1e-12 over hundreds of steps).

Protocol shared by all schedulers (see :class:`LRScheduler`):

* construction performs the first ``step()``, so ``last_epoch`` is ``0`` right afterwards
  (``ReduceOnPlateau`` is the exception: it starts at ``last_epoch == 0`` without stepping);
* ``step()`` advances ``last_epoch`` by one, ``step(epoch)`` jumps to ``epoch``; both recompute
  ``last_lr``;
* ``scheduler()`` returns ``last_lr``, the rate the optimizer should use for its next update.

Deliberate differences from Paddle 3.3.1 (each one a Paddle defect; none changes a learning rate
computed by an uninterrupted schedule):

* ``CosineAnnealingWarmRestarts.set_state_dict`` rebuilds the position inside the current
  restart cycle from ``last_epoch``; Paddle saves neither ``T_cur`` nor ``T_i`` and so resumes a
  restored schedule from the wrong point of its cycle.
* ``LinearWarmup.set_state_dict`` does not warn about "unused values" because of the nested
  ``'LinearWarmup_LR'`` entry that its own ``state_dict`` wrote.
* ``ReduceOnPlateau.step`` validates ``metrics`` before advancing ``last_epoch`` (Paddle advances
  the epoch even when it then rejects the metric), converts array/tensor metrics to a Python
  number with ``.item()`` (so ``best`` is never a tensor, in ``state_dict`` or elsewhere, and
  comparisons happen in double precision) and also accepts one-element tensors of any library,
  e.g. PyTorch, by duck typing.
* Argument checks that Paddle performs with ``assert`` raise :class:`AssertionError` explicitly,
  so they survive ``python -O``.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

__all__ = [
    "LRScheduler",
    "NoamDecay",
    "PiecewiseDecay",
    "NaturalExpDecay",
    "InverseTimeDecay",
    "PolynomialDecay",
    "LinearWarmup",
    "ExponentialDecay",
    "MultiStepDecay",
    "StepDecay",
    "LambdaDecay",
    "ReduceOnPlateau",
    "CosineAnnealingDecay",
    "MultiplicativeDecay",
    "OneCycleLR",
    "CyclicLR",
    "LinearLR",
    "CosineAnnealingWarmRestarts",
]

StateDict = dict[str, Any]
"""A scheduler state as returned by :meth:`LRScheduler.state_dict` (Paddle's keys)."""

_WARMUP_INNER_KEY = "LinearWarmup_LR"


# scheduler -> weak references to the callbacks of watch_lr (neither kept alive by this table).
_WATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def watch_lr(scheduler: LRScheduler, callback: Callable[[LRScheduler, float], None]) -> None:
    """Call ``callback(scheduler, rate)`` whenever ``scheduler``'s ``last_lr`` is set. ``callback`` is held
    by weak reference (a bound method through ``weakref.WeakMethod``): watching keeps neither
    the scheduler nor the watcher alive. Not part of Paddle's API."""
    ref = (weakref.WeakMethod(callback) if hasattr(callback, "__self__")
           else weakref.ref(callback))
    watchers = _WATCHERS.setdefault(scheduler, [])
    watchers[:] = [r for r in watchers if r() is not None] + [ref]


def _require(condition: bool, error: type[Exception], message: str) -> None:
    """Raise ``error(message)`` unless ``condition`` holds (an ``assert`` that survives ``-O``)."""
    if not condition:
        raise error(message)


def _as_number(value: Any, what: str) -> int | float:
    """Return ``value`` as a Python number.

    Python numbers (including ``bool`` and ``numpy.float64``, a ``float`` subclass) are returned
    unchanged.  Anything else must be a one-element array or tensor exposing ``.item()`` (NumPy
    scalars and arrays, PyTorch or Paddle tensors, ...); its single element is returned.  The
    element count is read from a callable ``numel()`` (tensors) or else from ``size`` (NumPy).

    Raises:
        AssertionError: the array/tensor does not hold exactly one element (Paddle's type).
        TypeError: ``value`` is neither a number nor an array/tensor.
    """
    if isinstance(value, (int, float)):
        return value
    if not callable(getattr(value, "item", None)):
        raise TypeError(
            f"{what} must be 'int', 'float', or a one-element numpy.ndarray or tensor, "
            f"but received {type(value)}"
        )
    numel = value.numel() if callable(getattr(value, "numel", None)) else getattr(value, "size", 1)
    _require(
        numel == 1,
        AssertionError,
        f"the size of {what} must be 1, but received {numel} elements; reduce it first "
        "(e.g. take its mean).",
    )
    return value.item()


def _half_cosine(low: float, high: float, t: float, period: float) -> float:
    r"""Cosine interpolation from ``high`` (at ``t = 0``) down to ``low`` (at ``t = period``).

    .. math:: low + (high - low) \cdot \frac{1 + \cos(\pi t / period)}{2}
    """
    return low + (high - low) * (1 + math.cos(math.pi * t / period)) / 2


def _cos_anneal(start_lr: float, end_lr: float, pct: float) -> float:
    r"""Cosine annealing from ``start_lr`` (``pct = 0``) to ``end_lr`` (``pct = 1``).

    .. math:: end + \frac{start - end}{2} (\cos(\pi \cdot pct) + 1)
    """
    return end_lr + (start_lr - end_lr) / 2.0 * (math.cos(math.pi * pct) + 1)


def _linear_anneal(start_lr: float, end_lr: float, pct: float) -> float:
    r"""Linear interpolation from ``start_lr`` (``pct = 0``) to ``end_lr`` (``pct = 1``).

    .. math:: (end - start) \cdot pct + start
    """
    return (end_lr - start_lr) * pct + start_lr


class LRScheduler:
    """Base class of all learning-rate schedulers.

    A subclass implements :meth:`get_lr`, the learning rate at epoch ``self.last_epoch``; it may
    read ``self.base_lr`` and, for recursive schedules, ``self.last_lr`` (the previous rate).

    Args:
        learning_rate: the initial learning rate, a non-negative Python ``float`` or ``int``.
        last_epoch: the index of the last finished epoch; ``-1`` starts from scratch.  The
            constructor calls :meth:`step` once, so afterwards ``last_epoch == last_epoch + 1``.
        verbose: if ``True``, print a message to stdout on every update.

    Attributes:
        base_lr (float): the initial learning rate.
        last_lr (float): the current learning rate, also returned by ``scheduler()``.
        last_epoch (int): the current epoch (number of ``step`` calls minus one).
        verbose (bool): whether updates are printed.

    Raises:
        TypeError: ``learning_rate`` is not a ``float`` or ``int``.
        ValueError: ``learning_rate`` is negative.
    """

    base_lr: float
    last_lr: float
    last_epoch: int
    verbose: bool
    keys: list[str]

    def __init__(
        self,
        learning_rate: float = 0.1,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            isinstance(learning_rate, (float, int)),
            TypeError,
            f"The type of learning rate must be float, but received {type(learning_rate)}",
        )
        _require(learning_rate >= 0, ValueError, f"Invalid learning rate: {learning_rate}")
        self.base_lr = float(learning_rate)
        self.last_lr = float(learning_rate)
        self.last_epoch = last_epoch
        self.verbose = verbose
        self.step()

    def __call__(self) -> float:
        """Return the current learning rate (``last_lr``)."""
        return self.last_lr

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "last_lr":
            # Whoever watches this schedule (a capturable optimizer, which keeps the rate on
            # the device for its CUDA-graph replays) hears of every new rate, from step(),
            # set_state_dict() or a direct assignment alike.
            for ref in tuple(_WATCHERS.get(self, ())):
                callback = ref()
                if callback is not None:
                    callback(self, value)

    def step(self, epoch: int | None = None) -> None:
        """Advance the schedule; call it after ``optimizer.step()``.

        Args:
            epoch: ``None`` advances ``last_epoch`` by one and applies :meth:`get_lr`; an integer
                jumps to that epoch and uses the schedule's closed form when it has one (only
                ``CosineAnnealingDecay`` distinguishes the two; recursive schedules such as
                ``LinearLR`` then apply their one-step recursion at the new epoch, as Paddle does).
        """
        if epoch is None:
            self.last_epoch += 1
            self.last_lr = self.get_lr()
        else:
            self.last_epoch = epoch
            self.last_lr = self._closed_form_lr()
        self._announce()

    def get_lr(self) -> float:
        """Return the learning rate for epoch ``last_epoch``; subclasses must implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement get_lr(); read last_lr or call the scheduler"
        )

    def _closed_form_lr(self) -> float:
        """Learning rate after a jump to ``last_epoch``; the recursive rule unless overridden."""
        return self.get_lr()

    def _announce(self) -> None:
        """Print Paddle's update message when ``verbose`` is set."""
        if self.verbose:
            print(
                f"Epoch {self.last_epoch}: {type(self).__name__} set learning rate to "
                f"{self.last_lr}."
            )

    def state_keys(self) -> None:
        """Set ``self.keys``, the attribute names that :meth:`state_dict` saves.

        The default is ``['last_epoch', 'last_lr']``; a subclass with more state overrides it.
        """
        self.keys = ["last_epoch", "last_lr"]

    def state_dict(self) -> StateDict:
        """Return the scheduler's state: the attributes named by :meth:`state_keys`.

        One-element arrays/tensors among them are stored as Python numbers.
        """
        self.state_keys()
        state: StateDict = {}
        for key in self.keys:
            if key in self.__dict__:
                value = self.__dict__[key]
                if callable(getattr(value, "item", None)) and not isinstance(value, (int, float)):
                    value = _as_number(value, key)
                state[key] = value
        return state

    def set_state_dict(self, state_dict: StateDict) -> None:
        """Load a state produced by :meth:`state_dict` (of this library or of Paddle).

        Raises:
            RuntimeError: a key named by :meth:`state_keys` is missing.

        Warns:
            UserWarning: ``state_dict`` holds keys this scheduler does not use.
        """
        self.state_keys()
        for key in self.keys:
            _require(
                key in state_dict,
                RuntimeError,
                "Please check whether state_dict is correct for optimizer. "
                f"Can't find [ {key} ] in state_dict",
            )
            setattr(self, key, state_dict[key])  # last_lr reaches its watchers (watch_lr)
        unused = set(state_dict) - set(self.keys)
        if unused:
            warnings.warn(
                f"There are some unused values in state_dict ({sorted(unused)}). Maybe the "
                "optimizer had a different 'LearningRateDecay' when invoking state_dict and "
                "set_dict",
                stacklevel=2,
            )

    def set_dict(self, state_dict: StateDict) -> None:
        """Alias of :meth:`set_state_dict` (Paddle's older name); honours subclass overrides."""
        self.set_state_dict(state_dict)


class NoamDecay(LRScheduler):
    r"""Noam decay ("Attention Is All You Need"): linear warm-up, then inverse square root.

    .. math::

        lr_t = learning\_rate \cdot d_{model}^{-0.5}
               \cdot \min(t^{-0.5},\; t \cdot warmup\_steps^{-1.5})

    with :math:`t^{-0.5}` taken as 1 at :math:`t = 0` (so :math:`lr_0 = 0`).

    Args:
        d_model: model (feature) dimension; must be positive.
        warmup_steps: number of warm-up steps.
        learning_rate: scale factor. Default: 1.0.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        ValueError: ``d_model <= 0``.
    """

    d_model: int
    warmup_steps: int

    def __init__(
        self,
        d_model: int,
        warmup_steps: int,
        learning_rate: float = 1.0,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(d_model > 0, ValueError, "d_model should be greater than 0")
        self.d_model = d_model
        self.warmup_steps = warmup_steps
        super().__init__(learning_rate, last_epoch, verbose)

    def get_lr(self) -> float:
        """Return the Noam rate at ``last_epoch``."""
        inv_sqrt = 1 if self.last_epoch == 0 else self.last_epoch**-0.5
        warmup = self.warmup_steps**-1.5 * self.last_epoch
        return self.base_lr * self.d_model**-0.5 * min(inv_sqrt, warmup)


class PiecewiseDecay(LRScheduler):
    r"""Piecewise-constant rate: ``values[i]`` until ``boundaries[i]`` is reached.

    .. math::

        lr_t = \begin{cases}
            values[i] & \text{for the first } i \text{ with } t < boundaries[i] \\
            values[-1] & \text{if } t \ge boundaries[i] \text{ for all } i
        \end{cases}

    ``values`` must have at least one more element than ``boundaries``; as in Paddle, the rate
    after the last boundary is the *last* element of ``values`` even if it is longer.

    Args:
        boundaries: increasing epoch boundaries; must not be empty.
        values: the rates of the pieces.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        ValueError: ``boundaries`` is empty or ``values`` is too short.
    """

    boundaries: Sequence[int]
    values: Sequence[float]

    def __init__(
        self,
        boundaries: Sequence[int],
        values: Sequence[float],
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(len(boundaries) != 0, ValueError, "The boundaries cannot be empty.")
        _require(
            len(values) > len(boundaries),
            ValueError,
            "values must have one more element than boundaries, but received "
            f"len(values) [{len(values)}] < len(boundaries) + 1 [{len(boundaries) + 1}].",
        )
        self.boundaries = boundaries
        self.values = values
        super().__init__(last_epoch=last_epoch, verbose=verbose)

    def get_lr(self) -> float:
        """Return the value of the piece containing ``last_epoch``."""
        for boundary, value in zip(self.boundaries, self.values):
            if self.last_epoch < boundary:
                return value
        return self.values[-1]


class NaturalExpDecay(LRScheduler):
    r"""Natural exponential decay.

    .. math:: lr_t = learning\_rate \cdot e^{-\gamma t}

    Args:
        learning_rate: initial rate.
        gamma: decay rate; must be positive.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        AssertionError: ``gamma <= 0``.
    """

    gamma: float

    def __init__(
        self,
        learning_rate: float,
        gamma: float,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            gamma > 0.0,
            AssertionError,
            "'gamma' must be a positive number so that the learning rate will decay.",
        )
        self.gamma = gamma
        super().__init__(learning_rate, last_epoch, verbose)

    def get_lr(self) -> float:
        """Return ``base_lr * exp(-gamma * last_epoch)``."""
        return self.base_lr * math.exp(-1 * self.gamma * self.last_epoch)


class InverseTimeDecay(LRScheduler):
    r"""Inverse-time decay.

    .. math:: lr_t = \frac{learning\_rate}{1 + \gamma t}

    Args:
        learning_rate: initial rate.
        gamma: decay rate (not checked, as in Paddle).
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.
    """

    gamma: float

    def __init__(
        self,
        learning_rate: float,
        gamma: float,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        self.gamma = gamma
        super().__init__(learning_rate, last_epoch, verbose)

    def get_lr(self) -> float:
        """Return ``base_lr / (1 + gamma * last_epoch)``."""
        return self.base_lr / (1 + self.gamma * self.last_epoch)


class PolynomialDecay(LRScheduler):
    r"""Polynomial decay from ``learning_rate`` to ``end_lr`` over ``decay_steps`` epochs.

    .. math::

        lr_t = (learning\_rate - end\_lr) \left(1 - \frac{\tau}{D}\right)^{power} + end\_lr

    Without ``cycle``: :math:`\tau = \min(t, decay\_steps)` and :math:`D = decay\_steps`, so the
    rate stays at ``end_lr`` after ``decay_steps``.  With ``cycle``: :math:`\tau = t` and
    :math:`D = decay\_steps \cdot \lceil t / decay\_steps \rceil` (1 cycle at :math:`t = 0`), so
    the decay restarts, ever slower, every ``decay_steps`` epochs.

    Args:
        learning_rate: initial rate.
        decay_steps: length of the decay; a positive ``int``.
        end_lr: final rate. Default: 1e-4.
        power: exponent; must be positive. Default: 1.0.
        cycle: whether to restart the decay. Default: ``False``.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        AssertionError: ``decay_steps`` is not a positive ``int`` or ``power <= 0``.
    """

    decay_steps: int
    end_lr: float
    power: float
    cycle: bool

    def __init__(
        self,
        learning_rate: float,
        decay_steps: int,
        end_lr: float = 0.0001,
        power: float = 1.0,
        cycle: bool = False,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            decay_steps > 0 and isinstance(decay_steps, int),
            AssertionError,
            "'decay_steps' must be a positive integer.",
        )
        self.decay_steps = decay_steps
        self.end_lr = end_lr
        _require(
            power > 0.0,
            AssertionError,
            "'power' must be greater than 0.0 so that the learning rate will decay.",
        )
        self.power = power
        self.cycle = cycle
        super().__init__(learning_rate, last_epoch, verbose)

    def get_lr(self) -> float:
        """Return the polynomially decayed rate at ``last_epoch``."""
        epoch = self.last_epoch
        decay_steps = self.decay_steps
        if self.cycle:
            cycles = 1 if epoch == 0 else math.ceil(float(epoch) / float(decay_steps))
            decay_steps = decay_steps * cycles
        else:
            epoch = min(epoch, decay_steps)
        fraction_left = 1 - float(epoch) / float(decay_steps)
        return (self.base_lr - self.end_lr) * fraction_left**self.power + self.end_lr


class LinearWarmup(LRScheduler):
    r"""Linear warm-up from ``start_lr`` to ``end_lr``, then ``learning_rate``.

    .. math::

        lr_t = \begin{cases}
            start\_lr + (end\_lr - start\_lr) \cdot \frac{t}{warmup\_steps}
                & t < warmup\_steps \\
            learning\_rate & \text{otherwise, if it is a number} \\
            learning\_rate.step(t - warmup\_steps);\ learning\_rate()
                & \text{otherwise, if it is a scheduler}
        \end{cases}

    A wrapped scheduler is not touched during the warm-up; afterwards it is driven with explicit
    epochs ``t - warmup_steps``.  Its state is saved under the key ``'LinearWarmup_LR'`` of this
    scheduler's ``state_dict``.

    Args:
        learning_rate: the rate after warm-up, a number or an :class:`LRScheduler`.
        warmup_steps: warm-up length; a positive ``int``.
        start_lr: rate at epoch 0 (also ``base_lr``).
        end_lr: rate approached at the end of the warm-up; must exceed ``start_lr``.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        TypeError: ``learning_rate`` is neither a number nor an :class:`LRScheduler`.
        AssertionError: ``warmup_steps`` is not a positive ``int`` or ``end_lr <= start_lr``.
    """

    learning_rate: float | LRScheduler
    warmup_steps: int
    start_lr: float
    end_lr: float

    def __init__(
        self,
        learning_rate: float | LRScheduler,
        warmup_steps: int,
        start_lr: float,
        end_lr: float,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            isinstance(learning_rate, (float, int, LRScheduler)),
            TypeError,
            "the type of learning_rate should be [int, float or LRScheduler], "
            f"but received {type(learning_rate)}",
        )
        self.learning_rate = learning_rate
        _require(
            warmup_steps > 0 and isinstance(warmup_steps, int),
            AssertionError,
            "'warmup_steps' must be a positive integer.",
        )
        self.warmup_steps = warmup_steps
        self.start_lr = start_lr
        self.end_lr = end_lr
        _require(
            end_lr > start_lr,
            AssertionError,
            f"end_lr {end_lr} must be greater than start_lr {start_lr}",
        )
        super().__init__(start_lr, last_epoch, verbose)

    def state_dict(self) -> StateDict:
        """Return the state; a wrapped scheduler's state is nested under ``'LinearWarmup_LR'``."""
        state = super().state_dict()
        if isinstance(self.learning_rate, LRScheduler):
            state[_WARMUP_INNER_KEY] = self.learning_rate.state_dict()
        return state

    def set_state_dict(self, state_dict: StateDict) -> None:
        """Load a state from :meth:`state_dict`, including the wrapped scheduler's.

        Raises:
            RuntimeError: a key, or the nested ``'LinearWarmup_LR'`` state, is missing.
        """
        if not isinstance(self.learning_rate, LRScheduler):
            super().set_state_dict(state_dict)
            return
        _require(
            _WARMUP_INNER_KEY in state_dict,
            RuntimeError,
            "Please check whether state_dict is correct for optimizer. "
            f"Can't find [ {_WARMUP_INNER_KEY} ] in state_dict",
        )
        own = {key: value for key, value in state_dict.items() if key != _WARMUP_INNER_KEY}
        super().set_state_dict(own)
        self.learning_rate.set_state_dict(state_dict[_WARMUP_INNER_KEY])

    def get_lr(self) -> float:
        """Return the warm-up rate, or the post-warm-up rate once ``warmup_steps`` is reached."""
        if self.last_epoch < self.warmup_steps:
            rise = (self.end_lr - self.start_lr) * float(self.last_epoch)
            return rise / float(self.warmup_steps) + self.start_lr
        if isinstance(self.learning_rate, LRScheduler):
            self.learning_rate.step(self.last_epoch - self.warmup_steps)
            return self.learning_rate()
        return self.learning_rate


class ExponentialDecay(LRScheduler):
    r"""Exponential decay.

    .. math:: lr_t = learning\_rate \cdot \gamma^{t}

    Args:
        learning_rate: initial rate.
        gamma: decay factor in the open interval (0, 1).
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        AssertionError: ``gamma`` is not in (0, 1).
    """

    gamma: float

    def __init__(
        self,
        learning_rate: float,
        gamma: float,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            0.0 < gamma < 1.0,
            AssertionError,
            "'gamma' must be in interval (0.0, 1.0) so that the learning rate will decay.",
        )
        self.gamma = gamma
        super().__init__(learning_rate, last_epoch, verbose)

    def get_lr(self) -> float:
        """Return ``base_lr * gamma ** last_epoch``."""
        return self.base_lr * self.gamma**self.last_epoch


class MultiStepDecay(LRScheduler):
    r"""Multiply the rate by ``gamma`` at each milestone.

    .. math:: lr_t = learning\_rate \cdot \gamma^{\#\{m \in milestones \,:\, m \le t\}}

    Args:
        learning_rate: initial rate.
        milestones: strictly increasing epochs, as a ``list`` or ``tuple``.
        gamma: factor applied at each milestone; must be below 1. Default: 0.1.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        TypeError: ``milestones`` is not a ``list`` or ``tuple``.
        ValueError: ``milestones`` is not increasing or ``gamma >= 1``.
    """

    milestones: Sequence[int]
    gamma: float

    def __init__(
        self,
        learning_rate: float,
        milestones: Sequence[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            isinstance(milestones, (tuple, list)),
            TypeError,
            "The type of 'milestones' in 'MultiStepDecay' must be 'tuple, list', "
            f"but received {type(milestones)}.",
        )
        _require(
            all(a < b for a, b in zip(milestones, milestones[1:])),
            ValueError,
            "The elements of milestones must be incremented",
        )
        _require(gamma < 1.0, ValueError, "gamma should be < 1.0.")
        self.milestones = milestones
        self.gamma = gamma
        super().__init__(learning_rate, last_epoch, verbose)

    def get_lr(self) -> float:
        """Return ``base_lr * gamma ** (number of milestones passed)``."""
        for passed, milestone in enumerate(self.milestones):
            if self.last_epoch < milestone:
                return self.base_lr * self.gamma**passed
        return self.base_lr * self.gamma ** len(self.milestones)


class StepDecay(LRScheduler):
    r"""Multiply the rate by ``gamma`` every ``step_size`` epochs.

    .. math:: lr_t = learning\_rate \cdot \gamma^{\lfloor t / step\_size \rfloor}

    Args:
        learning_rate: initial rate.
        step_size: decay period; a positive ``int``.
        gamma: factor applied each period; must be below 1. Default: 0.1.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        TypeError: ``step_size`` is not an ``int``.
        ValueError: ``gamma >= 1``.
        AssertionError: ``step_size <= 0``.
    """

    step_size: int
    gamma: float

    def __init__(
        self,
        learning_rate: float,
        step_size: int,
        gamma: float = 0.1,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            isinstance(step_size, int),
            TypeError,
            f"The type of 'step_size' must be 'int', but received {type(step_size)}.",
        )
        _require(gamma < 1.0, ValueError, "gamma should be < 1.0.")
        _require(step_size > 0, AssertionError, "'step_size' must be a positive integer.")
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(learning_rate, last_epoch, verbose)

    def get_lr(self) -> float:
        """Return ``base_lr * gamma ** (last_epoch // step_size)``."""
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class _UserFactorScheduler(LRScheduler):
    """Base of the schedulers driven by a user function ``lr_lambda(epoch) -> factor``."""

    lr_lambda: Callable[[int], float]

    def __init__(
        self,
        learning_rate: float,
        lr_lambda: Callable[[int], float],
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            callable(lr_lambda),
            TypeError,
            f"The type of 'lr_lambda' in '{type(self).__name__}' must be 'function', "
            f"but received {type(lr_lambda)}.",
        )
        self.lr_lambda = lr_lambda
        super().__init__(learning_rate, last_epoch, verbose)


class LambdaDecay(_UserFactorScheduler):
    r"""Scale the initial rate by a user function of the epoch.

    .. math:: lr_t = learning\_rate \cdot \lambda(t)

    Args:
        learning_rate: initial rate.
        lr_lambda: function of the epoch returning the factor.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        TypeError: ``lr_lambda`` is not callable.
    """

    def get_lr(self) -> float:
        """Return ``base_lr * lr_lambda(last_epoch)``."""
        return self.base_lr * self.lr_lambda(self.last_epoch)


class ReduceOnPlateau(LRScheduler):
    r"""Reduce the rate when a monitored metric stops improving.

    Each :meth:`step` receives the metric :math:`m`.  With ``best`` the best metric so far, the
    metric improves when

    .. math::

        \begin{array}{ll}
        m < best - best \cdot threshold & \text{mode 'min', threshold\_mode 'rel'} \\
        m < best - threshold            & \text{mode 'min', threshold\_mode 'abs'} \\
        m > best + best \cdot threshold & \text{mode 'max', threshold\_mode 'rel'} \\
        m > best + threshold            & \text{mode 'max', threshold\_mode 'abs'}
        \end{array}

    Otherwise a "bad epoch" is counted.  When more than ``patience`` bad epochs have accumulated
    the rate becomes :math:`\max(lr \cdot factor, min\_lr)` (unless that changes it by no more
    than ``epsilon``), the count is reset and the next ``cooldown`` steps are ignored entirely.

    Unlike the other schedulers, construction does not step: ``last_epoch`` starts at 0, and
    :meth:`get_lr` is not implemented (read ``last_lr`` or call the scheduler), as in Paddle.

    Args:
        learning_rate: initial rate, a ``float`` or ``int`` (its sign is not checked).
        mode: ``'min'`` (lower metric is better) or ``'max'``; case-insensitive. Default: 'min'.
        factor: reduction factor; must be below 1. Default: 0.1.
        patience: bad epochs tolerated before a reduction. Default: 10.
        threshold: minimal significant improvement. Default: 1e-4.
        threshold_mode: ``'rel'`` or ``'abs'``; case-insensitive. Default: 'rel'.
        cooldown: steps ignored after each reduction. Default: 0.
        min_lr: lower bound of the rate. Default: 0.
        epsilon: reductions smaller than this are skipped. Default: 1e-8.
        verbose: see :class:`LRScheduler` (prints only when the rate is reduced).

    Raises:
        ValueError: unknown ``mode`` or ``threshold_mode``, or ``factor >= 1``.
        TypeError: ``learning_rate`` is not a ``float`` or ``int``.
    """

    mode: Literal["min", "max"]
    factor: float
    patience: int
    threshold: float
    threshold_mode: Literal["rel", "abs"]
    cooldown: int
    min_lr: float
    epsilon: float
    cooldown_counter: int
    best: float | None
    num_bad_epochs: int

    def __init__(
        self,
        learning_rate: float,
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: float = 0,
        epsilon: float = 1e-8,
        verbose: bool = False,
    ) -> None:
        mode = mode.lower()  # type: ignore[assignment]
        _require(mode in ("min", "max"), ValueError, f"mode: {mode} is unknown!")
        _require(
            factor < 1.0,
            ValueError,
            "new_lr = origin_lr * factor and factor should be < 1.0.",
        )
        threshold_mode = threshold_mode.lower()  # type: ignore[assignment]
        _require(
            threshold_mode in ("rel", "abs"),
            ValueError,
            f"threshold mode: {threshold_mode} is unknown!",
        )
        _require(
            isinstance(learning_rate, (float, int)),
            TypeError,
            "The type of 'learning_rate' in 'ReduceOnPlateau' must be 'float', "
            f"but received {type(learning_rate)}.",
        )
        self.mode = mode
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.epsilon = epsilon
        self.cooldown_counter = 0
        self.best = None
        self.num_bad_epochs = 0
        self.base_lr = float(learning_rate)
        self.last_lr = float(learning_rate)
        self.last_epoch = 0
        self.verbose = verbose

    def state_keys(self) -> None:
        """Save the plateau bookkeeping along with ``last_epoch`` and ``last_lr``."""
        self.keys = ["cooldown_counter", "best", "num_bad_epochs", "last_epoch", "last_lr"]

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        """Update the rate from the latest metric; call it once per epoch.

        Args:
            metrics: the monitored value: a Python number, or anything with ``.item()`` holding
                one element (NumPy scalar or array, PyTorch or Paddle tensor).
            epoch: ``None`` advances ``last_epoch`` by one; an integer sets it.

        Raises:
            TypeError: ``metrics`` is neither a number nor an array/tensor.
            AssertionError: ``metrics`` holds more or fewer than one element.
        """
        current = _as_number(metrics, "metrics")
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            return
        if self.best is None or self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
            new_lr = max(self.last_lr * self.factor, self.min_lr)
            if self.last_lr - new_lr > self.epsilon:
                self.last_lr = new_lr
                self._announce()

    def _is_better(self, current: float, best: float) -> bool:
        """Whether ``current`` improves significantly on ``best`` (see the class docstring)."""
        margin = best * self.threshold if self.threshold_mode == "rel" else self.threshold
        if self.mode == "min":
            return current < best - margin
        return current > best + margin


class CosineAnnealingDecay(LRScheduler):
    r"""Cosine annealing (SGDR without restarts) between ``learning_rate`` and ``eta_min``.

    The closed form, used by ``step(epoch)`` with an explicit epoch, is

    .. math::

        lr_t = \eta_{min} + (learning\_rate - \eta_{min})
               \cdot \frac{1 + \cos(\pi t / T_{max})}{2}

    (periodic with period :math:`2 T_{max}`).  Plain ``step()`` applies Paddle's recursive form,
    which equals the closed form up to rounding when started from :math:`lr_0 = learning\_rate`:

    .. math::

        lr_t = \begin{cases}
            lr_{t-1} + (learning\_rate - \eta_{min}) \frac{1 - \cos(\pi / T_{max})}{2}
                & (t - 1 - T_{max}) \bmod 2T_{max} = 0 \\
            \eta_{min} + (lr_{t-1} - \eta_{min})
                \frac{1 + \cos(\pi t / T_{max})}{1 + \cos(\pi (t - 1) / T_{max})}
                & \text{otherwise}
        \end{cases}

    Args:
        learning_rate: initial (maximal) rate.
        T_max: half period, a positive ``int``.
        eta_min: minimal rate, a ``float`` or ``int``. Default: 0.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        TypeError: ``T_max`` is not an ``int`` or ``eta_min`` not a number.
        AssertionError: ``T_max <= 0``.
    """

    T_max: int
    eta_min: float

    def __init__(
        self,
        learning_rate: float,
        T_max: int,
        eta_min: float = 0,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            isinstance(T_max, int),
            TypeError,
            "The type of 'T_max' in 'CosineAnnealingDecay' must be 'int', "
            f"but received {type(T_max)}.",
        )
        _require(
            isinstance(eta_min, (float, int)),
            TypeError,
            "The type of 'eta_min' in 'CosineAnnealingDecay' must be 'float, int', "
            f"but received {type(eta_min)}.",
        )
        _require(T_max > 0, AssertionError, "'T_max' must be a positive integer.")
        self.T_max = T_max
        self.eta_min = float(eta_min)
        super().__init__(learning_rate, last_epoch, verbose)

    def get_lr(self) -> float:
        """Return the rate at ``last_epoch`` by the recursive rule (from ``last_lr``)."""
        t, period = self.last_epoch, self.T_max
        if t == 0:
            return self.base_lr
        if (t - 1 - period) % (2 * period) == 0:
            rise = (self.base_lr - self.eta_min) * (1 - math.cos(math.pi / period)) / 2
            return self.last_lr + rise
        ratio = (1 + math.cos(math.pi * t / period)) / (1 + math.cos(math.pi * (t - 1) / period))
        return ratio * (self.last_lr - self.eta_min) + self.eta_min

    def _closed_form_lr(self) -> float:
        """Return the rate at ``last_epoch`` by the closed form."""
        return _half_cosine(self.eta_min, self.base_lr, self.last_epoch, self.T_max)


class MultiplicativeDecay(_UserFactorScheduler):
    r"""Multiply the rate by a user factor at every epoch.

    .. math:: lr_t = learning\_rate \cdot \prod_{k=1}^{t} \lambda(k)

    (recomputed from ``learning_rate`` at each step, so ``step(epoch)`` jumps are exact).

    Args:
        learning_rate: initial rate.
        lr_lambda: function of the epoch returning that epoch's factor.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        TypeError: ``lr_lambda`` is not callable.
    """

    def get_lr(self) -> float:
        """Return ``base_lr`` times the factors of epochs ``1 .. last_epoch``."""
        lr = self.base_lr
        for epoch in range(1, self.last_epoch + 1):
            lr = lr * self.lr_lambda(epoch)
        return lr


class OneCycleLR(LRScheduler):
    r"""The one-cycle policy: warm up to ``max_learning_rate``, then anneal far below the start.

    With :math:`T` = ``total_steps``, :math:`p` = ``phase_pct``,
    :math:`lr_{init} = max\_learning\_rate / divide\_factor` and
    :math:`lr_{end}` = ``end_learning_rate``, the schedule is a chain of phases
    :math:`[s_0, s_1] \to [lr_a, lr_b]`, each annealed with
    :math:`lr_t = anneal(lr_a, lr_b, (t - s_0) / (s_1 - s_0))`:

    * two phases: :math:`[0, pT-1]: lr_{init} \to max`, :math:`[pT-1, T-1]: max \to lr_{end}`;
    * ``three_phase``: :math:`[0, pT-1]: lr_{init} \to max`,
      :math:`[pT-1, 2pT-2]: max \to lr_{init}`, :math:`[2pT-2, T-1]: lr_{init} \to lr_{end}`.

    ``anneal`` is :math:`end + \frac{start - end}{2}(\cos(\pi\,pct) + 1)` for ``'cos'`` and
    :math:`start + (end - start)\,pct` for ``'linear'``.  The last phase extends past its end
    up to epoch :math:`T`; stepping beyond :math:`T` raises ``ValueError``.

    Args:
        max_learning_rate: peak rate, a non-negative number.
        total_steps: number of steps of the cycle, a positive ``int``.
        divide_factor: ``initial rate = max_learning_rate / divide_factor``. Default: 25.
        end_learning_rate: final rate, a non-negative number. Default: 1e-4.
        phase_pct: fraction of the steps spent warming up, a ``float`` in [0, 1] (below 0.5
            with ``three_phase``). Default: 0.3.
        anneal_strategy: ``'cos'`` or ``'linear'``. Default: 'cos'.
        three_phase: add a symmetric descent back to the initial rate. Default: ``False``.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range, or the schedule is stepped past ``total_steps``.
    """

    total_steps: int
    anneal_func: Callable[[float, float, float], float]

    _ANNEALERS: dict[str, Callable[[float, float, float], float]] = {
        "cos": _cos_anneal,
        "linear": _linear_anneal,
    }

    def __init__(
        self,
        max_learning_rate: float,
        total_steps: int,
        divide_factor: float = 25.0,
        end_learning_rate: float = 0.0001,
        phase_pct: float = 0.3,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        three_phase: bool = False,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        for name, value in (
            ("max_learning_rate", max_learning_rate),
            ("end_learning_rate", end_learning_rate),
        ):
            _require(
                isinstance(value, (float, int)),
                TypeError,
                f"'{name}' must be 'float' or 'int', but received {type(value)}",
            )
            _require(value >= 0, ValueError, f"'{name}' must be non-negative, but got {value}.")
        _require(
            isinstance(total_steps, int),
            TypeError,
            f"'total_steps' must be 'int', but received {type(total_steps)}",
        )
        _require(total_steps > 0, ValueError, "'total_steps' must be a positive integer.")
        self.total_steps = total_steps
        _require(
            isinstance(phase_pct, float),
            TypeError,
            f"'phase_pct' must be 'float', but received {type(phase_pct)}",
        )
        _require(
            0 <= phase_pct <= 1,
            ValueError,
            f"'phase_pct' must be between 0 and 1, but received {phase_pct}",
        )
        _require(
            isinstance(divide_factor, (float, int)),
            TypeError,
            f"'divide_factor' must be 'float' or 'int', but received {type(divide_factor)}",
        )
        initial_lr = max_learning_rate / float(divide_factor)
        min_lr = float(end_learning_rate)
        warm_end = phase_pct * total_steps - 1
        # Each phase: (first step, last step, rate at first step, rate at last step).
        self._phases: list[tuple[float, float, float, float]]
        if three_phase:
            _require(
                phase_pct < 0.5,
                ValueError,
                "When three_phase is True, 'phase_pct' must be less than 0.5",
            )
            cool_end = 2 * phase_pct * total_steps - 2
            self._phases = [
                (0, warm_end, initial_lr, max_learning_rate),
                (warm_end, cool_end, max_learning_rate, initial_lr),
                (cool_end, total_steps - 1, initial_lr, min_lr),
            ]
        else:
            self._phases = [
                (0, warm_end, initial_lr, max_learning_rate),
                (warm_end, total_steps - 1, max_learning_rate, min_lr),
            ]
        _require(
            anneal_strategy in self._ANNEALERS,
            ValueError,
            f"'anneal_strategy' must be one of 'cos' or 'linear', but received {anneal_strategy}",
        )
        self.anneal_func = self._ANNEALERS[anneal_strategy]
        super().__init__(initial_lr, last_epoch, verbose)

    def get_lr(self) -> float:
        """Return the annealed rate of the phase containing ``last_epoch``."""
        step = self.last_epoch
        _require(
            step <= self.total_steps,
            ValueError,
            f"Tried to step {step} times. However the number of total steps is "
            f"{self.total_steps}",
        )
        # The first phase that has not ended yet; the last phase also takes the steps after it.
        start, end, start_lr, end_lr = next(
            (phase for phase in self._phases[:-1] if step <= phase[1]), self._phases[-1]
        )
        return self.anneal_func(start_lr, end_lr, (step - start) / (end - start))


class CyclicLR(LRScheduler):
    r"""Cyclical learning rate: a triangular wave between ``base_learning_rate`` and a peak.

    With :math:`u` = ``step_size_up``, :math:`d` = ``step_size_down`` (default :math:`u`),
    :math:`C = u + d` and :math:`A` = ``max_learning_rate - base_learning_rate``:

    .. math::

        cycle &= 1 + \lfloor t / C \rfloor, \qquad x = 1 + t / C - cycle \in [0, 1) \\
        h &= \begin{cases} x / (u / C) & x \le u / C \\
                           (1 - x) / (1 - u / C) & \text{otherwise} \end{cases} \\
        lr_t &= base\_learning\_rate + A \cdot h \cdot scale\_fn(s)

    where :math:`s = cycle` (``scale_mode='cycle'``) or :math:`s = t` (``'iterations'``).  The
    built-in modes are ``'triangular'`` (:math:`scale\_fn = 1`, per cycle), ``'triangular2'``
    (:math:`1 / 2^{cycle - 1}`, per cycle) and ``'exp_range'``
    (:math:`exp\_gamma^{t}`, per iteration); a custom ``scale_fn`` overrides ``mode`` and uses
    ``scale_mode``.

    Args:
        base_learning_rate: lower rate (also ``base_lr``).
        max_learning_rate: upper rate of the first cycle, a non-negative number.
        step_size_up: steps of the rising half, a positive ``int``.
        step_size_down: steps of the falling half, a positive ``int``; default ``step_size_up``.
        mode: ``'triangular'``, ``'triangular2'`` or ``'exp_range'``. Default: 'triangular'.
        exp_gamma: base of the ``'exp_range'`` scaling; must be a ``float``. Default: 1.0.
        scale_fn: custom amplitude scaling of one argument. Default: ``None``.
        scale_mode: ``'cycle'`` or ``'iterations'``, the argument of a custom ``scale_fn``.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range, or neither ``mode`` nor ``scale_fn`` is valid.
    """

    cycle_size: float
    step_up_pct: float
    max_lr: float
    amplitude: float
    mode: str
    gamma: float
    scale_fn: Callable[[float], float]
    scale_mode: Literal["cycle", "iterations"]

    def __init__(
        self,
        base_learning_rate: float,
        max_learning_rate: float,
        step_size_up: int,
        step_size_down: int | None = None,
        mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
        exp_gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: Literal["cycle", "iterations"] = "cycle",
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            isinstance(max_learning_rate, (float, int)),
            TypeError,
            f"'max_learning_rate' must be 'float' or 'int', but received {type(max_learning_rate)}",
        )
        _require(
            max_learning_rate >= 0,
            ValueError,
            f"'max_learning_rate' must be non-negative, but received {max_learning_rate}",
        )
        step_sizes = {"step_size_up": step_size_up}
        if step_size_down is not None:
            step_sizes["step_size_down"] = step_size_down
        for name, size in step_sizes.items():
            _require(
                isinstance(size, int),
                TypeError,
                f"The type of '{name}' must be int, but received {type(size)}",
            )
            _require(size > 0, ValueError, f"'{name}' must be a positive integer, but got {size}")
        _require(
            isinstance(exp_gamma, float),
            TypeError,
            f"The type of 'exp_gamma' must be float, but received {type(exp_gamma)}",
        )
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.cycle_size = up + down
        self.step_up_pct = up / self.cycle_size
        self.max_lr = float(max_learning_rate)
        self.amplitude = self.max_lr - base_learning_rate
        builtin_modes: dict[str, tuple[Callable[[float], float], Literal["cycle", "iterations"]]]
        builtin_modes = {
            "triangular": (self._triangular_scale_fn, "cycle"),
            "triangular2": (self._triangular2_scale_fn, "cycle"),
            "exp_range": (self._exp_range_scale_fn, "iterations"),
        }
        _require(
            scale_fn is not None or mode in tuple(builtin_modes),
            ValueError,
            "'mode' is invalid and 'scale_fn' is not specified, make sure one of 'mode' or "
            "'scale_fn' is valid",
        )
        _require(
            scale_mode in ("cycle", "iterations"),
            ValueError,
            "'scale_mode' must be one of 'cycle' or 'iterations'",
        )
        self.mode = mode
        self.gamma = exp_gamma
        if scale_fn is None:
            self.scale_fn, self.scale_mode = builtin_modes[mode]
        else:
            self.scale_fn, self.scale_mode = scale_fn, scale_mode
        super().__init__(base_learning_rate, last_epoch, verbose)

    def _triangular_scale_fn(self, x: float) -> float:
        """Constant amplitude: ``1``."""
        return 1.0

    def _triangular2_scale_fn(self, x: float) -> float:
        """Amplitude halved every cycle: ``1 / 2 ** (x - 1)``."""
        return 1 / (2.0 ** (x - 1))

    def _exp_range_scale_fn(self, x: float) -> float:
        """Amplitude decaying per iteration: ``exp_gamma ** x``."""
        return self.gamma**x

    def get_lr(self) -> float:
        """Return the cyclic rate at ``last_epoch``."""
        iterations = self.last_epoch
        cycle = 1 + iterations // self.cycle_size
        pct_per_cycle = 1.0 + iterations / self.cycle_size - cycle
        if pct_per_cycle <= self.step_up_pct:
            scale_factor = pct_per_cycle / self.step_up_pct
        else:
            scale_factor = (1 - pct_per_cycle) / (1 - self.step_up_pct)
        base_height = self.amplitude * scale_factor
        scale_arg = cycle if self.scale_mode == "cycle" else iterations
        return self.base_lr + base_height * self.scale_fn(scale_arg)


class LinearLR(LRScheduler):
    r"""Scale the rate linearly from ``start_factor`` to ``end_factor`` over ``total_steps``.

    .. math::

        lr_t = learning\_rate \cdot \left(start\_factor + (end\_factor - start\_factor)
               \frac{\min(t, total\_steps)}{total\_steps}\right)

    computed, as in Paddle, recursively: :math:`lr_0 = learning\_rate \cdot start\_factor`,
    :math:`lr_t = lr_{t-1} \left(1 + \frac{e - s}{T s + (t - 1)(e - s)}\right)` for
    :math:`0 < t \le T`, and :math:`lr_t = lr_{t-1}` afterwards (with :math:`s, e, T` the start
    factor, end factor and ``total_steps``).  ``step(epoch)`` applies one recursion step at the
    new epoch, like Paddle, rather than the closed form.

    Args:
        learning_rate: the reference rate.
        total_steps: length of the ramp; must be positive.
        start_factor: initial factor in (0, 1]. Default: 1/3.
        end_factor: final factor in [0, 1]. Default: 1.0.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        ValueError: a factor or ``total_steps`` is out of range.
    """

    start_factor: float
    end_factor: float
    total_steps: int

    def __init__(
        self,
        learning_rate: float,
        total_steps: int,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            0 < start_factor <= 1.0,
            ValueError,
            f"`start_factor` must be greater than 0 and at most 1, but got {start_factor}",
        )
        _require(
            0 <= end_factor <= 1.0,
            ValueError,
            f"`end_factor` must be between 0 and 1, but got {end_factor}",
        )
        _require(
            total_steps > 0,
            ValueError,
            f"`total_steps` must be greater than 0, but got {total_steps}",
        )
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_steps = total_steps
        super().__init__(learning_rate, last_epoch, verbose)

    def get_lr(self) -> float:
        """Return the rate at ``last_epoch`` by the recursive rule (from ``last_lr``)."""
        if self.last_epoch == 0:
            return self.base_lr * self.start_factor
        if self.last_epoch > self.total_steps:
            return self.last_lr
        span = self.end_factor - self.start_factor
        denominator = self.total_steps * self.start_factor + (self.last_epoch - 1) * span
        return self.last_lr * (1.0 + span / denominator)


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""Cosine annealing with warm restarts (SGDR).

    .. math::

        lr_t = \eta_{min} + (learning\_rate - \eta_{min})
               \cdot \frac{1 + \cos(\pi T_{cur} / T_i)}{2}

    where :math:`T_i` is the length of the current cycle (:math:`T_0`, then multiplied by
    ``T_mult`` at each restart) and :math:`T_{cur}` the epochs since the last restart.  A plain
    ``step()`` advances :math:`T_{cur}` by one and restarts when it reaches :math:`T_i`;
    ``step(epoch)`` locates ``epoch`` in closed form, as Paddle does (for ``T_mult > 1``:
    :math:`n = \lfloor \log_{T_{mult}}(epoch (T_{mult} - 1) / T_0 + 1) \rfloor`,
    :math:`T_{cur} = epoch - T_0 (T_{mult}^n - 1) / (T_{mult} - 1)`,
    :math:`T_i = T_0 T_{mult}^n`).

    ``state_dict`` holds only ``last_epoch`` and ``last_lr`` (Paddle's keys);
    :meth:`set_state_dict` recomputes :math:`T_{cur}` and :math:`T_i` from ``last_epoch``.

    Args:
        learning_rate: initial (maximal) rate.
        T_0: length of the first cycle, a positive ``int``.
        T_mult: cycle growth factor, an ``int >= 1``. Default: 1.
        eta_min: minimal rate. Default: 0.
        last_epoch: see :class:`LRScheduler`.
        verbose: see :class:`LRScheduler`.

    Raises:
        ValueError: ``T_0`` or ``T_mult`` is out of range or not an ``int``; ``step`` with a
            negative epoch.
    """

    T_0: int
    T_i: float
    T_mult: int
    eta_min: float
    T_cur: float

    def __init__(
        self,
        learning_rate: float,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0,
        last_epoch: int = -1,
        verbose: bool = False,
    ) -> None:
        _require(
            T_0 > 0 and isinstance(T_0, int),
            ValueError,
            f"Expected positive integer T_0, but got {T_0}",
        )
        _require(
            T_mult >= 1 and isinstance(T_mult, int),
            ValueError,
            f"Expected integer T_mult >= 1, but got {T_mult}",
        )
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(learning_rate, last_epoch, verbose)

    def get_lr(self) -> float:
        """Return the rate for the current position ``T_cur`` in the cycle of length ``T_i``."""
        return _half_cosine(self.eta_min, self.base_lr, self.T_cur, self.T_i)

    def step(self, epoch: float | None = None) -> None:
        """Advance by one epoch, or jump to ``epoch`` (which may be fractional).

        Raises:
            ValueError: ``epoch`` is negative.
        """
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur - self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            _require(epoch >= 0, ValueError, f"Expected non-negative epoch, but got {epoch}")
            if epoch < self.T_0:
                self.T_i = self.T_0
                self.T_cur = epoch
            elif self.T_mult == 1:
                self.T_cur = epoch % self.T_0
            else:
                growth = self.T_mult
                n = int(math.log(epoch / self.T_0 * (growth - 1) + 1, growth))
                self.T_cur = epoch - self.T_0 * (growth**n - 1) / (growth - 1)
                self.T_i = self.T_0 * growth**n
        self.last_epoch = math.floor(epoch)
        self.last_lr = self.get_lr()
        self._announce()

    def set_state_dict(self, state_dict: StateDict) -> None:
        """Load ``last_epoch``/``last_lr`` and rebuild ``T_cur``/``T_i`` from ``last_epoch``.

        The cycle position is the one that plain ``step()`` calls from epoch 0 reach.
        """
        super().set_state_dict(state_dict)
        self.T_i, self.T_cur = self.T_0, self.last_epoch
        if self.T_mult == 1 and self.T_cur >= 0:
            self.T_cur %= self.T_0
        while self.T_cur >= self.T_i:
            self.T_cur -= self.T_i
            self.T_i *= self.T_mult
