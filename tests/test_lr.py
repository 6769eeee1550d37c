"""Parity of ``triton_adam.lr`` with ``paddle.optimizer.lr`` (PaddlePaddle 3.3.1), in one process.

Every case of ``CASES`` builds a scheduler from a module, so the same call builds ours
(``make(lr)``) and Paddle's (``make(plr)``) with identical arguments.  Both are then driven
side by side and must agree to ``REL_TOL`` at every step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from triton_adam import lr

# The reference, a test dependency; skipped on a machine without it (a GPU machine may lack it).
pytest.importorskip("paddle")
from paddle.optimizer import lr as plr  # noqa: E402

REL_TOL = 1e-12
STEPS = 200
RESTORE_AT = 57
STEPS_AFTER_RESTORE = 50


def loss_curve(i: int) -> float:
    """A decreasing, plateauing, slightly noisy loss: 'min'-mode food for ReduceOnPlateau."""
    return 2.0 / (1 + i // 12) + 0.05 * ((i * 7) % 5) / 5


def accuracy_curve(i: int) -> float:
    """An increasing, plateauing accuracy: 'max'-mode food for ReduceOnPlateau."""
    return 1.0 - loss_curve(i) / 3


def decay_every_third(epoch: int) -> float:
    """A custom ``lr_lambda``."""
    return 0.9 if epoch % 3 == 0 else 1.0


def sawtooth_scale(x: float) -> float:
    """A custom CyclicLR ``scale_fn``."""
    return 1.0 / (1.0 + 0.1 * x)


@dataclass(frozen=True)
class Case:
    """One scheduler configuration: ``make(module)`` builds it from ``lr`` or from ``plr``."""

    name: str
    make: Callable[[ModuleType], Any]
    metric: Callable[[int], float] | None = None  # ReduceOnPlateau only

    def __str__(self) -> str:
        return self.name


CASES = [
    Case("Noam", lambda m: m.NoamDecay(d_model=64, warmup_steps=20)),
    Case("Noam-lr", lambda m: m.NoamDecay(512, 50, learning_rate=2.0)),
    Case("Piecewise", lambda m: m.PiecewiseDecay([10, 40, 90], [0.5, 0.1, 0.05, 0.01])),
    Case("Piecewise-long-values", lambda m: m.PiecewiseDecay([30], [1.0, 0.3, 0.2, 0.1])),
    Case("NaturalExp", lambda m: m.NaturalExpDecay(0.5, gamma=0.1)),
    Case("NaturalExp-slow", lambda m: m.NaturalExpDecay(3, gamma=0.003)),
    Case("InverseTime", lambda m: m.InverseTimeDecay(0.5, gamma=0.1)),
    Case("InverseTime-slow", lambda m: m.InverseTimeDecay(1, gamma=0.013)),
    Case("Polynomial", lambda m: m.PolynomialDecay(0.5, decay_steps=60)),
    Case("Polynomial-power", lambda m: m.PolynomialDecay(0.5, 80, end_lr=0.01, power=2.5)),
    Case("Polynomial-cycle", lambda m: m.PolynomialDecay(0.5, 30, 0.001, 1.5, cycle=True)),
    Case("LinearWarmup-float", lambda m: m.LinearWarmup(0.5, 20, start_lr=0.0, end_lr=0.5)),
    Case(
        "LinearWarmup-cosine",
        lambda m: m.LinearWarmup(m.CosineAnnealingDecay(0.4, T_max=25), 15, 0.01, 0.4),
    ),
    Case(
        "LinearWarmup-linearlr",
        lambda m: m.LinearWarmup(m.LinearLR(0.3, total_steps=40), 10, 0.0, 0.1),
    ),
    Case("Exponential", lambda m: m.ExponentialDecay(0.5, gamma=0.97)),
    Case("Exponential-fast", lambda m: m.ExponentialDecay(2, gamma=0.5)),
    Case("MultiStep", lambda m: m.MultiStepDecay(0.5, milestones=[20, 50, 120])),
    Case("MultiStep-tuple", lambda m: m.MultiStepDecay(1.0, (5, 6, 100), gamma=0.5)),
    Case("Step", lambda m: m.StepDecay(0.5, step_size=30)),
    Case("Step-gamma", lambda m: m.StepDecay(0.5, 7, gamma=0.8)),
    Case("Lambda", lambda m: m.LambdaDecay(0.5, lambda epoch: 0.95**epoch)),
    Case("Lambda-function", lambda m: m.LambdaDecay(0.1, decay_every_third)),
    Case(
        "ROP-min-rel",
        lambda m: m.ReduceOnPlateau(1.0, factor=0.5, patience=4, threshold=1e-2),
        loss_curve,
    ),
    Case(
        "ROP-min-abs-cooldown-minlr",
        lambda m: m.ReduceOnPlateau(
            1.0, patience=3, factor=0.3, threshold=0.05, threshold_mode="abs", cooldown=5,
            min_lr=1e-3,
        ),
        loss_curve,
    ),
    Case(
        "ROP-max-rel-epsilon",
        lambda m: m.ReduceOnPlateau(
            0.5, mode="MAX", factor=0.5, patience=2, cooldown=2, min_lr=0.02, epsilon=1e-3,
        ),
        accuracy_curve,
    ),
    Case(
        "ROP-max-abs",
        lambda m: m.ReduceOnPlateau(0.5, "max", threshold=0.02, threshold_mode="abs", patience=6),
        accuracy_curve,
    ),
    Case("CosineAnnealing", lambda m: m.CosineAnnealingDecay(0.5, T_max=30)),
    Case("CosineAnnealing-eta", lambda m: m.CosineAnnealingDecay(0.5, 17, eta_min=0.05)),
    Case("Multiplicative", lambda m: m.MultiplicativeDecay(0.5, lambda epoch: 0.98)),
    Case("Multiplicative-function", lambda m: m.MultiplicativeDecay(1.0, decay_every_third)),
    Case("OneCycle", lambda m: m.OneCycleLR(0.1, total_steps=250)),
    Case(
        "OneCycle-three-phase",
        lambda m: m.OneCycleLR(0.2, 220, divide_factor=10, phase_pct=0.25, three_phase=True),
    ),
    Case(
        "OneCycle-linear",
        lambda m: m.OneCycleLR(1, 210, end_learning_rate=0.001, anneal_strategy="linear"),
    ),
    Case("Cyclic-triangular", lambda m: m.CyclicLR(0.01, 0.1, step_size_up=15)),
    Case("Cyclic-triangular2", lambda m: m.CyclicLR(0.01, 0.1, 10, 25, mode="triangular2")),
    Case(
        "Cyclic-exp-range",
        lambda m: m.CyclicLR(0.01, 0.2, 8, 12, mode="exp_range", exp_gamma=0.99),
    ),
    Case(
        "Cyclic-scale-fn-cycle",
        lambda m: m.CyclicLR(0.001, 0.05, 9, scale_fn=sawtooth_scale),
    ),
    Case(
        "Cyclic-scale-fn-iterations",
        lambda m: m.CyclicLR(0.001, 0.05, 9, 4, scale_fn=sawtooth_scale, scale_mode="iterations"),
    ),
    Case("LinearLR", lambda m: m.LinearLR(0.5, total_steps=40)),
    Case("LinearLR-down", lambda m: m.LinearLR(0.5, 120, start_factor=1.0, end_factor=0.1)),
    Case("WarmRestarts", lambda m: m.CosineAnnealingWarmRestarts(0.5, T_0=13)),
    Case(
        "WarmRestarts-mult2",
        lambda m: m.CosineAnnealingWarmRestarts(0.5, T_0=5, T_mult=2, eta_min=0.01),
    ),
    Case("WarmRestarts-mult3", lambda m: m.CosineAnnealingWarmRestarts(1.0, 2, T_mult=3)),
]

# Explicit ``step(epoch)`` calls: repeats, jumps forward and back, then plain steps after each.
JUMPS = [3, 3, 10, 0, 57, 56, 120, 7, 199, 30, 150]
STEPS_AFTER_JUMP = 5


def test_every_paddle_scheduler_is_covered() -> None:
    covered = {type(case.make(lr)).__name__ for case in CASES}
    assert covered == set(plr.__all__) - {"LRScheduler"}
    assert set(lr.__all__) == set(plr.__all__)


def advance(sched: Any, case: Case, i: int, epoch: int | None = None) -> None:
    """Step ``sched`` once; ReduceOnPlateau is fed the case's metric at ``i``."""
    if case.metric is None:
        sched.step(epoch)
    else:
        sched.step(case.metric(i), epoch)


def close(ours: Any, ref: Any) -> bool:
    return abs(ours - ref) <= REL_TOL * max(1.0, abs(ref))


def assert_same_now(ours: Any, ref: Any, where: str) -> None:
    """The two schedulers report the same epoch and rate (``last_lr``, ``()``, ``get_lr()``)."""
    assert ours.last_epoch == ref.last_epoch, where
    assert close(ours.last_lr, ref.last_lr), (where, ours.last_lr, ref.last_lr)
    assert close(ours(), ref()), (where, ours(), ref())
    if isinstance(ref, plr.ReduceOnPlateau):  # Paddle leaves get_lr unimplemented here
        with pytest.raises(NotImplementedError):
            ref.get_lr()
        with pytest.raises(NotImplementedError):
            ours.get_lr()
    else:
        assert close(ours.get_lr(), ref.get_lr()), (where, ours.get_lr(), ref.get_lr())


def assert_states_close(ours: dict, ref: dict) -> None:
    assert list(ours) == list(ref)
    for key, value in ref.items():
        if isinstance(value, dict):
            assert_states_close(ours[key], value)
        elif value is None:
            assert ours[key] is None, key
        else:
            assert close(ours[key], value), (key, ours[key], value)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_steps_match_paddle(case: Case) -> None:
    ours, ref = case.make(lr), case.make(plr)
    assert_same_now(ours, ref, "after construction")
    seen = {ours.last_lr}
    for i in range(STEPS):
        advance(ours, case, i)
        advance(ref, case, i)
        assert_same_now(ours, ref, f"step {i}")
        seen.add(ours.last_lr)
    assert len(seen) > 1, "the schedule never moved: the case tests nothing"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_explicit_epochs_match_paddle(case: Case) -> None:
    ours, ref = case.make(lr), case.make(plr)
    i = 0
    for epoch in JUMPS:
        advance(ours, case, i, epoch)
        advance(ref, case, i, epoch)
        assert_same_now(ours, ref, f"step({epoch})")
        for _ in range(STEPS_AFTER_JUMP):
            i += 1
            advance(ours, case, i)
            advance(ref, case, i)
            assert_same_now(ours, ref, f"{i}: plain step after step({epoch})")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_state_dict_matches_paddle_and_restores(case: Case) -> None:
    ours, ref = case.make(lr), case.make(plr)
    for i in range(RESTORE_AT):
        advance(ours, case, i)
        advance(ref, case, i)
    state = ours.state_dict()
    assert_states_close(state, ref.state_dict())

    restored, from_paddle = case.make(lr), case.make(lr)
    restored.set_state_dict(state)
    from_paddle.set_state_dict(ref.state_dict())
    for i in range(RESTORE_AT, RESTORE_AT + STEPS_AFTER_RESTORE):
        for sched in (ours, ref, restored, from_paddle):
            advance(sched, case, i)
        assert restored.last_epoch == ours.last_epoch
        assert restored.last_lr == ours.last_lr and restored() == ours()
        # A Paddle checkpoint resumes where Paddle's own uninterrupted schedule goes.
        assert_same_now(from_paddle, ref, f"step {i} after loading Paddle's state")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_verbose_prints_like_paddle(case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    printed = []
    for module in (lr, plr):
        sched = case.make(module)
        sched.verbose = True
        for i in range(40):
            advance(sched, case, i)
        advance(sched, case, 40, 25)
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]
    if case.metric is None:
        assert printed[0].count("\n") == 41
        assert printed[0].startswith(f"Epoch 1: {type(sched).__name__} set learning rate to ")


def test_verbose_construction_prints(capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for module in (lr, plr):
        module.StepDecay(0.5, 3, verbose=True).step()
        module.ReduceOnPlateau(1.0, patience=0, verbose=True).step(1.0)  # silent: no reduction
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert outputs[0] == (
        "Epoch 0: StepDecay set learning rate to 0.5.\n"
        "Epoch 1: StepDecay set learning rate to 0.5.\n"
    )


def test_warm_restarts_fractional_epochs() -> None:
    def make(m: ModuleType) -> Any:
        return m.CosineAnnealingWarmRestarts(0.3, T_0=4, T_mult=2, eta_min=0.001)

    ours, ref = make(lr), make(plr)
    for epoch in (0.5, 7.25, 31.0, 3.0, 100.75, 12.0):
        ours.step(epoch)
        ref.step(epoch)
        assert_same_now(ours, ref, f"step({epoch})")
        ours.step()
        ref.step()
        assert_same_now(ours, ref, f"plain step after step({epoch})")


# --- ReduceOnPlateau metric types ------------------------------------------------------------

METRIC_TYPES = {
    "float": float,
    "int-valued": lambda x: round(x * 100),
    "np.float64": np.float64,
    "np.float32": np.float32,
    "np.ndarray[1]": lambda x: np.array([x]),
    "np.ndarray[]": lambda x: np.array(x),
    "torch[]": lambda x: torch.tensor(x, dtype=torch.float64),
    "torch[1]": lambda x: torch.tensor([x], dtype=torch.float32),
    "torch[1,1]-grad": lambda x: torch.tensor([[x]], requires_grad=True) * 1.0,
}


@pytest.mark.parametrize("convert", METRIC_TYPES.values(), ids=METRIC_TYPES.keys())
def test_plateau_accepts_metric_types(convert: Callable[[float], Any]) -> None:
    def make(m: ModuleType) -> Any:
        return m.ReduceOnPlateau(1.0, factor=0.5, patience=3, threshold=1e-2)

    ours, ref = make(lr), make(plr)
    for i in range(STEPS):
        metric = convert(loss_curve(i))
        ours.step(metric)
        ref.step(metric.item() if hasattr(metric, "item") else metric)
        assert_same_now(ours, ref, f"step {i}")
    assert ours.last_lr < 1.0
    assert isinstance(ours.state_dict()["best"], (int, float))  # never an array or tensor


def test_plateau_rejected_metric_leaves_state_alone() -> None:
    sched = lr.ReduceOnPlateau(1.0)
    sched.step(0.5)
    before = sched.state_dict()
    for bad in ("0.5", None, np.array([0.1, 0.2]), torch.zeros(2)):
        with pytest.raises((TypeError, AssertionError)):
            sched.step(bad)
    assert sched.state_dict() == before


# --- argument errors ---------------------------------------------------------------------------

def step_times(sched: Any, times: int) -> None:
    for _ in range(times):
        sched.step()


INVALID = {
    "LRScheduler-no-get_lr": lambda m: m.LRScheduler(0.1),
    "LRScheduler-lr-str": lambda m: m.LRScheduler("0.1"),
    "LRScheduler-lr-negative": lambda m: m.LRScheduler(-0.1),
    "Noam-d_model-0": lambda m: m.NoamDecay(0, 10),
    "Noam-warmup-0": lambda m: m.NoamDecay(64, 0),
    "Noam-lr-negative": lambda m: m.NoamDecay(64, 10, learning_rate=-1.0),
    "Piecewise-empty": lambda m: m.PiecewiseDecay([], [0.1]),
    "Piecewise-short-values": lambda m: m.PiecewiseDecay([3, 6], [0.1, 0.2]),
    "Piecewise-not-sized": lambda m: m.PiecewiseDecay(3, [0.1, 0.2]),
    "NaturalExp-gamma-0": lambda m: m.NaturalExpDecay(0.5, 0.0),
    "NaturalExp-gamma-negative": lambda m: m.NaturalExpDecay(0.5, -0.1),
    "NaturalExp-lr-str": lambda m: m.NaturalExpDecay("0.5", 0.1),
    "InverseTime-lr-negative": lambda m: m.InverseTimeDecay(-0.5, 0.1),
    "InverseTime-lr-None": lambda m: m.InverseTimeDecay(None, 0.1),
    "Polynomial-steps-0": lambda m: m.PolynomialDecay(0.5, 0),
    "Polynomial-steps-float": lambda m: m.PolynomialDecay(0.5, 2.5),
    "Polynomial-steps-str": lambda m: m.PolynomialDecay(0.5, "3"),
    "Polynomial-power-0": lambda m: m.PolynomialDecay(0.5, 10, power=0.0),
    "LinearWarmup-lr-str": lambda m: m.LinearWarmup("0.5", 10, 0.0, 0.5),
    "LinearWarmup-steps-0": lambda m: m.LinearWarmup(0.5, 0, 0.0, 0.5),
    "LinearWarmup-steps-float": lambda m: m.LinearWarmup(0.5, 1.5, 0.0, 0.5),
    "LinearWarmup-end-not-above-start": lambda m: m.LinearWarmup(0.5, 10, 0.5, 0.5),
    "LinearWarmup-start-negative": lambda m: m.LinearWarmup(0.5, 10, -0.5, 0.5),
    "Exponential-gamma-1": lambda m: m.ExponentialDecay(0.5, 1.0),
    "Exponential-gamma-0": lambda m: m.ExponentialDecay(0.5, 0.0),
    "MultiStep-range": lambda m: m.MultiStepDecay(0.5, range(3)),
    "MultiStep-not-increasing": lambda m: m.MultiStepDecay(0.5, [5, 5, 9]),
    "MultiStep-gamma-1": lambda m: m.MultiStepDecay(0.5, [5], gamma=1.0),
    "Step-size-float": lambda m: m.StepDecay(0.5, 2.0),
    "Step-gamma-big": lambda m: m.StepDecay(0.5, 2, gamma=1.5),
    "Step-size-0": lambda m: m.StepDecay(0.5, 0),
    "Lambda-not-callable": lambda m: m.LambdaDecay(0.5, 0.9),
    "ROP-mode": lambda m: m.ReduceOnPlateau(1.0, mode="avg"),
    "ROP-mode-None": lambda m: m.ReduceOnPlateau(1.0, mode=None),
    "ROP-factor-1": lambda m: m.ReduceOnPlateau(1.0, factor=1.0),
    "ROP-threshold-mode": lambda m: m.ReduceOnPlateau(1.0, threshold_mode="pct"),
    "ROP-lr-str": lambda m: m.ReduceOnPlateau("1.0"),
    "ROP-metric-str": lambda m: m.ReduceOnPlateau(1.0).step("0.5"),
    "ROP-metric-None": lambda m: m.ReduceOnPlateau(1.0).step(None),
    "ROP-metric-list": lambda m: m.ReduceOnPlateau(1.0).step([0.5]),
    "ROP-metric-2-elements": lambda m: m.ReduceOnPlateau(1.0).step(np.array([0.5, 0.4])),
    "ROP-metric-0-elements": lambda m: m.ReduceOnPlateau(1.0).step(np.array([])),
    "Cosine-T_max-float": lambda m: m.CosineAnnealingDecay(0.5, 10.0),
    "Cosine-eta_min-str": lambda m: m.CosineAnnealingDecay(0.5, 10, eta_min="0"),
    "Cosine-T_max-0": lambda m: m.CosineAnnealingDecay(0.5, 0),
    "Multiplicative-not-callable": lambda m: m.MultiplicativeDecay(0.5, None),
    "OneCycle-max-str": lambda m: m.OneCycleLR("0.1", 100),
    "OneCycle-max-negative": lambda m: m.OneCycleLR(-0.1, 100),
    "OneCycle-end-str": lambda m: m.OneCycleLR(0.1, 100, end_learning_rate="0"),
    "OneCycle-end-negative": lambda m: m.OneCycleLR(0.1, 100, end_learning_rate=-1e-4),
    "OneCycle-steps-float": lambda m: m.OneCycleLR(0.1, 100.0),
    "OneCycle-steps-0": lambda m: m.OneCycleLR(0.1, 0),
    "OneCycle-pct-int": lambda m: m.OneCycleLR(0.1, 100, phase_pct=0),
    "OneCycle-pct-big": lambda m: m.OneCycleLR(0.1, 100, phase_pct=1.5),
    "OneCycle-divide-str": lambda m: m.OneCycleLR(0.1, 100, divide_factor="25"),
    "OneCycle-divide-0": lambda m: m.OneCycleLR(0.1, 100, divide_factor=0),
    "OneCycle-three-phase-pct": lambda m: m.OneCycleLR(0.1, 100, phase_pct=0.5, three_phase=True),
    "OneCycle-anneal": lambda m: m.OneCycleLR(0.1, 100, anneal_strategy="exp"),
    "OneCycle-empty-first-phase": lambda m: m.OneCycleLR(0.1, 100, phase_pct=0.01),
    "OneCycle-past-total-steps": lambda m: step_times(m.OneCycleLR(0.1, 5), 6),
    "Cyclic-max-str": lambda m: m.CyclicLR(0.01, "0.1", 5),
    "Cyclic-max-negative": lambda m: m.CyclicLR(0.01, -0.1, 5),
    "Cyclic-up-float": lambda m: m.CyclicLR(0.01, 0.1, 5.0),
    "Cyclic-up-0": lambda m: m.CyclicLR(0.01, 0.1, 0),
    "Cyclic-down-float": lambda m: m.CyclicLR(0.01, 0.1, 5, 5.0),
    "Cyclic-down-0": lambda m: m.CyclicLR(0.01, 0.1, 5, 0),
    "Cyclic-gamma-int": lambda m: m.CyclicLR(0.01, 0.1, 5, exp_gamma=1),
    "Cyclic-mode": lambda m: m.CyclicLR(0.01, 0.1, 5, mode="sine"),
    "Cyclic-scale-mode": lambda m: m.CyclicLR(0.01, 0.1, 5, scale_mode="epochs"),
    "Cyclic-base-negative": lambda m: m.CyclicLR(-0.01, 0.1, 5),
    "Cyclic-base-str": lambda m: m.CyclicLR("0.01", 0.1, 5),
    "LinearLR-start-0": lambda m: m.LinearLR(0.5, 10, start_factor=0.0),
    "LinearLR-start-big": lambda m: m.LinearLR(0.5, 10, start_factor=1.5),
    "LinearLR-end-negative": lambda m: m.LinearLR(0.5, 10, end_factor=-0.1),
    "LinearLR-end-big": lambda m: m.LinearLR(0.5, 10, end_factor=1.1),
    "LinearLR-steps-0": lambda m: m.LinearLR(0.5, 0),
    "WarmRestarts-T_0-0": lambda m: m.CosineAnnealingWarmRestarts(0.5, 0),
    "WarmRestarts-T_0-float": lambda m: m.CosineAnnealingWarmRestarts(0.5, 2.0),
    "WarmRestarts-T_mult-0": lambda m: m.CosineAnnealingWarmRestarts(0.5, 5, T_mult=0),
    "WarmRestarts-T_mult-float": lambda m: m.CosineAnnealingWarmRestarts(0.5, 5, T_mult=1.5),
    "WarmRestarts-negative-epoch": lambda m: m.CosineAnnealingWarmRestarts(0.5, 5).step(-1),
    "set_state_dict-missing-key": lambda m: m.StepDecay(0.5, 3).set_state_dict({"last_lr": 0.5}),
}


@pytest.mark.parametrize("build", INVALID.values(), ids=INVALID.keys())
def test_invalid_arguments_raise_like_paddle(build: Callable[[ModuleType], Any]) -> None:
    with pytest.raises(Exception) as paddle_error:
        build(plr)
    with pytest.raises(Exception) as our_error:
        build(lr)
    assert type(our_error.value) is type(paddle_error.value), (paddle_error.value, our_error.value)
    assert str(our_error.value), "our error message is empty"


# --- state-dict details ------------------------------------------------------------------------


def test_linear_warmup_nests_inner_state_without_warning() -> None:
    sched = lr.LinearWarmup(lr.StepDecay(0.5, 3), 5, 0.0, 0.5)
    for _ in range(10):
        sched.step()
    state = sched.state_dict()
    assert state == {
        "last_epoch": 10, "last_lr": 0.05, "LinearWarmup_LR": {"last_epoch": 5, "last_lr": 0.05},
    }
    restored = lr.LinearWarmup(lr.StepDecay(0.5, 3), 5, 0.0, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Paddle warns about "unused values" here
        restored.set_dict(state)  # the alias also restores the nested state
    assert restored.state_dict() == state


def test_unused_state_keys_warn() -> None:
    sched = lr.StepDecay(0.5, 3)
    with pytest.warns(UserWarning, match="unused values"):
        sched.set_state_dict({"last_epoch": 4, "last_lr": 0.05, "best": 1.0})
    assert (sched.last_epoch, sched()) == (4, 0.05)


def test_state_keys_like_paddle() -> None:
    ours, ref = lr.ReduceOnPlateau(1.0), plr.ReduceOnPlateau(1.0)
    ours.state_keys()
    ref.state_keys()
    assert ours.keys == ref.keys
    assert ours.state_dict() == ref.state_dict()  # best is still None
    assert math.isclose(lr.OneCycleLR(0.1, 10)(), plr.OneCycleLR(0.1, 10)())
