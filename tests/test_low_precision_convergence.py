"""Does a small bf16 model trained 500 steps in each low-precision mode end at the loss of
fp32 master weights?

The model: K = 6 two-layer tanh MLPs (8 -> 16 -> 1, 161 weights each) packed in one flat bf16
parameter (966 elements: one tensor, one block, so each step is one small launch under the
interpreter). Adam is elementwise, so the K copies train independently: K runs for the
price of one. All K fit one synthetic regression (a random teacher MLP of the same shape plus
label noise); they differ in the start, the teacher plus a perturbation of size ``DELTA``
drawn per copy. Forward and backward run in float32 from the bf16 weights (the gradient
arrives in bf16, as autograd gives it); losses are evaluated in float64 at the bf16 weights.

The learning rate is small (``LR = 2^-12``): Adam never moves a weight by more than
``B * LR`` with ``B = sqrt((1-b1)^2 / (1-b2) / (1 - b1^2/b2)) = 7.27`` (Cauchy-Schwarz on the
moments' sums, bias corrections included), ``1.78e-3``, less than half a bf16 ulp (``2^-9``)
of every weight with ``|w| > 1/2``: round-to-nearest bf16 weights without master weights
cannot move at all there, and most of this model's weights are such. That is the stall
stochastic rounding exists to fix.

Modes (the Paddle face, one launch per step): (a) fp32 masters (``multi_precision=True``,
the baseline); (b) remainder masters; (c) remainder masters + bf16 moments; (d) no masters +
stochastic rounding; (e) stochastic rounding + bf16 moments; (f) no masters, round to nearest
(the contrast). (b) keeps masters bitwise equal to (a)'s given the same gradients (tested
elsewhere); here the whole training is compared. (fp32 masters + bf16 moments and the
PyTorch face's options run the same kernels: they are compared step by step with the float64
reference and across formats in ``test_low_precision_modes.py``, not trained here, to keep
this file's interpreter time down.)

Yardsticks, from a float64 run of the same copies (``torch.optim.Adam`` in float64: no bf16
and none of this library's code), per copy ``k``:

* ``res[k]``: the loss's resolution at bf16 weights: the RMS change of the float64 run's final
  loss when every weight moves by an independent uniform error within half its bf16 ulp,
  which is what rounding the weights to bf16 does (200 draws).
* ``spread``: the standard deviation over the K copies of the float64 run's final loss: how
  much the draw of the start (one size, same data) moves the result.

A run with master weights evaluates its loss at its masters rounded to bf16: about ``res``
(RMS) from its masters' loss. Two runs with masters that differ in any way (a tie rounded the
other way, moments stored in bf16, Adam's formula evaluated in another order) soon round some
weight differently, and from then on their weights, hence their gradients, differ by such
roundings: they end about two independent roundings apart, ``sqrt(2) res`` (RMS). Allowed:
``4 res`` (2.8 of those standard deviations), per copy, for (a) against an independent
emulation of fp32 masters (``torch.optim.Adam`` on a float32 master, the weights its bf16
rounding) and for (b), (c) against (a). Stochastic rounding moves a weight by a
full ulp at random, and the weights carry that noise through the run, more than a rounding's
worth; the claim for (d), (e) is the issue's: they end closer to (a) than ``spread``, the
change another start makes. (f) stalls: every weight with ``|w| > 1/2`` ends bitwise where it
started, every copy ends farther than ``spread`` from (a), and (d) ends, on average over the
copies, at least 10 times closer to (a) than (f) does.

Interpreter cost: each step is one launch of one program, about 15 ms (fp32 masters) to 50 ms
(stochastic rounding) on the CPU, so each mode takes 8 to 25 s.
"""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch

import triton_adam
from devices import DEVICE

K, IN, HID, N = 6, 8, 16, 128
P = IN * HID + HID + HID + 1  # weights of one copy
STEPS = 500
LR = 2.0 ** -12
BETA1, BETA2 = 0.9, 0.999
SIGMA = 0.05  # label noise
DELTA = 0.1  # size of each copy's start perturbation
SR_SEED = 19  # the key of the stochastic roundings' random bits (any fixed value)

MODES = {
    "a: fp32 masters": dict(multi_precision=True),
    "b: remainder masters": dict(multi_precision=True, master_weight_format="remainder"),
    "c: remainder masters, bf16 moments": dict(
        multi_precision=True, master_weight_format="remainder", moment_dtype=torch.bfloat16,
        seed=SR_SEED),
    "d: stochastic rounding": dict(stochastic_rounding=True, seed=SR_SEED),
    "e: stochastic rounding, bf16 moments": dict(
        stochastic_rounding=True, moment_dtype=torch.bfloat16, seed=SR_SEED),
    "f: round to nearest, no masters": dict(),
}


def _forward(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[K, N] outputs of the K copies packed in ``flat``, on inputs ``x`` [N, IN]."""
    f = flat.view(-1, P)
    w1 = f[:, :IN * HID].reshape(-1, IN, HID)
    b1 = f[:, IN * HID:IN * HID + HID]
    w2 = f[:, IN * HID + HID:IN * HID + 2 * HID]
    b2 = f[:, -1]
    # 1/sqrt(fan-in) in the forward keeps the weights themselves O(1) (unit-normal), where
    # bf16's ulp is coarse compared with the learning rate.
    h = torch.tanh(torch.matmul(x, w1) / IN ** 0.5 + b1[:, None, :])
    return (h * w2[:, None, :]).sum(-1) / HID ** 0.5 + b2[:, None]


def _losses(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each copy: [K]."""
    return ((_forward(flat, x) - y) ** 2).mean(-1)


@functools.cache
def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, start), float64 on the CPU; ``start`` holds bf16 values (every run starts at
    the same weights, the float64 one too)."""
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(P, generator=gen, dtype=torch.float64)
    x = torch.randn(N, IN, generator=gen, dtype=torch.float64)
    y = _forward(teacher, x) + SIGMA * torch.randn(1, N, generator=gen, dtype=torch.float64)
    start = teacher.repeat(K) + DELTA * torch.randn(K * P, generator=gen, dtype=torch.float64)
    return x, y, start.to(torch.bfloat16).double()


@functools.cache
def _float64_run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.optim.Adam in float64 from the same start: (final losses [K], res [K],
    spread)."""
    x, y, start = _problem()
    w = start.clone().requires_grad_()
    opt = torch.optim.Adam([w], lr=LR, betas=(BETA1, BETA2), eps=1e-8, foreach=False)
    for _ in range(STEPS):
        opt.zero_grad()
        _losses(w, x, y).sum().backward()
        opt.step()
    w = w.detach()
    with torch.no_grad():
        final = _losses(w, x, y)
        _, exp = torch.frexp(w.to(torch.bfloat16).double())
        half_ulp = torch.ldexp(torch.ones_like(w), exp - 9)  # |w| in [2^(e-1), 2^e): 2^(e-9)
        gen = torch.Generator().manual_seed(1)
        moved = torch.stack([
            _losses(w + half_ulp * (2 * torch.rand(w.shape, generator=gen,
                                                    dtype=torch.float64) - 1), x, y) - final
            for _ in range(200)])
    return final, moved.pow(2).mean(0).sqrt(), final.std()


@functools.cache
def _train(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Train the bf16 copies ``STEPS`` steps in ``mode``: (final losses [K] in float64, final
    weights as float64 on the CPU)."""
    options = MODES[mode]
    x, y, start = _problem()
    x32, y32 = x.float().to(DEVICE), y.float().to(DEVICE)
    w = torch.nn.Parameter(start.to(device=DEVICE, dtype=torch.bfloat16))
    with warnings.catch_warnings():
        # Paddle's advice to use master weights: (d)-(f) do without them on purpose.
        warnings.filterwarnings("ignore", "Accumulating with FP16 or BF16")
        # One launch per step (the bucketed path adds a pow program: 25% more interpreter
        # time for this single tensor; the two paths are bitwise equal, tested elsewhere).
        opt = triton_adam.Adam(LR, BETA1, BETA2, parameters=[w], per_tensor_launches=True,
                               **options)
        for _ in range(STEPS):
            w.grad = None
            _losses(w.float(), x32, y32).sum().backward()  # the gradient arrives in bf16
            opt.step()
    final = w.detach().cpu().double()
    return _losses(final, x, y), final


def _baseline() -> torch.Tensor:
    return _train("a: fp32 masters")[0]


@functools.cache
def _emulated_fp32_masters() -> torch.Tensor:
    """Final losses [K] of fp32 master weights done with torch alone: ``torch.optim.Adam`` on
    a float32 master, the bf16 weights its rounding to nearest even, the gradient taken at
    the weights as ``_train`` takes it."""
    x, y, start = _problem()
    x32, y32 = x.float(), y.float()
    master = start.float().clone()
    opt = torch.optim.Adam([master], lr=LR, betas=(BETA1, BETA2), eps=1e-8, foreach=False)
    for _ in range(STEPS):
        w = master.to(torch.bfloat16).requires_grad_()
        _losses(w.float(), x32, y32).sum().backward()
        master.grad = w.grad.float()
        opt.step()
    return _losses(master.to(torch.bfloat16).double(), x, y)


def test_setup_trains_and_most_weights_are_beyond_round_to_nearest():
    """Guards of the setup itself (float64 only, none of the optimizer): the float64 run
    trains (loss down by more than 3x); most weights have ``|w| > 1/2``, where Adam's largest
    step is below half a bf16 ulp; the yardsticks have the sizes the argument above assumes
    (a rounding's cost a small part of the loss, the spread over starts many of those)."""
    x, y, start = _problem()
    final, res, spread = _float64_run()
    initial = _losses(start, x, y)
    assert (final < initial / 3).all(), (initial, final)
    b = math.sqrt((1 - BETA1) ** 2 / (1 - BETA2) / (1 - BETA1 ** 2 / BETA2))
    assert b * LR < 2.0 ** -9
    assert (start.abs() > 0.5).double().mean() > 0.5
    assert (res < final / 50).all() and (spread > 10 * res).all(), (final, res, spread)


def test_fp32_masters_match_an_independent_emulation():
    _, res, _ = _float64_run()
    loss, emulated = _baseline(), _emulated_fp32_masters()
    assert ((loss - emulated).abs() <= 4 * res).all(), (loss, emulated, res)


@pytest.mark.parametrize("mode", ["b: remainder masters", "c: remainder masters, bf16 moments"])
def test_master_weight_modes_end_at_the_fp32_master_loss(mode):
    _, res, _ = _float64_run()
    loss, base = _train(mode)[0], _baseline()
    assert ((loss - base).abs() <= 4 * res).all(), (mode, loss, base, res)


@pytest.mark.parametrize("mode", ["d: stochastic rounding",
                                  "e: stochastic rounding, bf16 moments"])
def test_stochastic_rounding_ends_within_the_spread_over_starts(mode):
    _, _, spread = _float64_run()
    loss, base = _train(mode)[0], _baseline()
    assert ((loss - base).abs() <= spread).all(), (mode, loss, base, spread)


def test_round_to_nearest_stalls_where_stochastic_rounding_does_not():
    start = _problem()[2]
    _, _, spread = _float64_run()
    base = _baseline()
    rne_loss, rne_weights = _train("f: round to nearest, no masters")
    sr_loss, sr_weights = _train("d: stochastic rounding")
    frozen = start.abs() > 0.5
    assert torch.equal(rne_weights[frozen], start[frozen])  # not one of them moved
    assert not torch.equal(sr_weights[frozen], start[frozen])
    assert ((rne_loss - base).abs() > spread).all(), (rne_loss, base, spread)
    rne_gap = (rne_loss - base).abs().mean()
    sr_gap = (sr_loss - base).abs().mean()
    assert sr_gap * 10 <= rne_gap, (sr_gap, rne_gap)
