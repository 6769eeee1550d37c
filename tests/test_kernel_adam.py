"""The fused Adam kernel against the float64 reference, on params and on every accumulator.

Tolerances, by dtype:
* float64: the kernel and the reference evaluate the same real-number formula in two algebraic
  forms (Paddle's GPU form vs its CPU form); the difference is a few float64 ulps per step on
  O(1) values, so 1e-12 is far above rounding and far below any mistake in the math.
* float32: the kernel stores params and moments in float32 after every step (relative rounding
  6e-8 each) and its update divides by sqrt(v) + eps, which amplifies relative errors by a few
  units; over 3 steps that stays within ~1e-6 relative of the float64 reference, so 1e-5
  relative (plus 1e-6 absolute for values that cross zero) leaves a 10x margin.
In CUDA mode (``tests/devices.py``) both are at least the FMA bound ``devices.FMA_FLOOR``.
"""

from __future__ import annotations

import pytest
import torch

from devices import DEVICE, fma_tol
from triton_adam import reference
from triton_adam.kernels import adam as K

BLOCK = K.BLOCK_SIZE
SIZES = [1, 17, BLOCK + 1, 3 * BLOCK + 5]
TOL = {torch.float64: fma_tol(torch.float64, rtol=1e-12, atol=1e-12),
       torch.float32: fma_tol(torch.float32, rtol=1e-5, atol=1e-6)}

# name -> (amsgrad, l2, l1, decoupled weight decay, lr_scale)
MODES = {
    "adam": (False, 0.0, 0.0, 0.0, 1.0),
    "amsgrad": (True, 0.0, 0.0, 0.0, 1.0),
    "l2": (False, 0.05, 0.0, 0.0, 1.0),
    "l1": (False, 0.0, 0.03, 0.0, 1.0),
    "adamw": (False, 0.0, 0.0, 0.02, 0.5),
    "adamw-amsgrad-l2": (True, 0.01, 0.0, 0.02, 2.0),
}


def _row(values, dtype=torch.float32):
    """A kernel hyper-parameter row (HYPER_* columns), zero-padded to HYPER_WIDTH."""
    return torch.tensor(list(values) + [0.0] * (K.HYPER_WIDTH - len(values)), dtype=dtype,
                        device=DEVICE)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str):
    """Compare with the dtype's tolerance; on failure name the first mismatching index."""
    actual64, expected64 = actual.cpu().to(torch.float64), expected.cpu().to(torch.float64)
    tol = TOL[dtype]
    bad = (actual64 - expected64).abs() > tol["atol"] + tol["rtol"] * expected64.abs()
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise AssertionError(f"{what}: {int(bad.sum())} mismatches, first at index {i}: "
                             f"{actual64[i].item()!r} vs reference {expected64[i].item()!r}")


def run_kernel_and_reference(n: int, dtype: torch.dtype, mode: str, steps: int = 3):
    amsgrad, l2, l1, wd, lr_scale = MODES[mode]
    beta1, beta2, eps = 0.85, 0.995, 1e-6
    lrs = [0.01, 0.003, 0.02]  # a different learning rate every step: no recompilation needed
    # The param is a prefix of a larger buffer whose tail must never be written.
    storage = torch.randn(n + 64, dtype=dtype).to(DEVICE)
    param = storage[:n]
    tail = storage[n:].clone()
    ref = reference.init_state(param.cpu(), beta1=beta1, beta2=beta2, amsgrad=amsgrad)
    m = torch.zeros(n, dtype=dtype, device=DEVICE)
    v = torch.zeros(n, dtype=dtype, device=DEVICE)
    vmax = torch.zeros(n, dtype=dtype, device=DEVICE) if amsgrad else None
    hyper = _row([lr_scale, beta1, beta2, eps, l2, l1, wd], dtype=dtype)
    pows = torch.zeros(2, K.POW_SLOT_WIDTH, dtype=dtype, device=DEVICE)
    pows[0, 0], pows[0, 1] = beta1, beta2
    slot = 0
    for step in range(steps):
        grad = torch.randn(n, dtype=dtype) * (0.1 + step)
        # The kernel writes the other pow slot without reading it: poison it first.
        pows[1 - slot].fill_(float("nan"))
        K.adam_update_(param, grad.to(DEVICE), m, v, vmax, hyper, pows[slot], pows[1 - slot],
                       lr=lrs[step], coupled_decay=bool(l1 or l2), decoupled_decay=bool(wd))
        ref = reference.adam_step(ref, grad, lr=lrs[step], beta1=beta1, beta2=beta2,
                                  epsilon=eps, lr_scale=lr_scale, l2=l2, l1=l1,
                                  weight_decay=wd)
        slot = 1 - slot
    return dict(param=param, m=m, v=v, vmax=vmax, pows=pows[slot], storage_tail=storage[n:],
                tail=tail), ref


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_kernel_matches_reference(dtype, n, mode):
    out, ref = run_kernel_and_reference(n, dtype, mode)
    assert_close(out["param"], ref.param, dtype, "param")
    assert_close(out["m"], ref.moment1, dtype, "moment1")
    assert_close(out["v"], ref.moment2, dtype, "moment2")
    if ref.moment2_max is not None:
        assert_close(out["vmax"], ref.moment2_max, dtype, "moment2_max")
    assert_close(out["pows"][:2], torch.tensor([ref.beta1_pow, ref.beta2_pow], dtype=torch.float64), dtype, "pows")
    assert torch.equal(out["storage_tail"], out["tail"]), "kernel wrote past the end"


def test_every_element_moves():
    """A dropped block or lane would leave its elements at their old value."""
    n = 3 * BLOCK + 5
    param = torch.randn(n).to(DEVICE)
    before = param.clone()
    grad = torch.randn(n).to(DEVICE)
    hyper = _row([1.0, 0.9, 0.999, 1e-8])
    pows = torch.tensor([[0.9, 0.999, 0, 0], [0, 0, 0, 0]], device=DEVICE)
    K.adam_update_(param, grad, torch.zeros(n, device=DEVICE), torch.zeros(n, device=DEVICE),
                   None, hyper, pows[0], pows[1], lr=0.1, coupled_decay=False,
                   decoupled_decay=False)
    # The first step of Adam moves each element by lr * g / (|g| + eps) = lr * sign(g), up to
    # eps / |g| relative and the float32 rounding of p (ulp of |p| < 8 is below 1e-6).
    expected = 0.1 * grad / (grad.abs() + 1e-8)
    torch.testing.assert_close(before - param, expected, rtol=1e-5, atol=2e-6)


def test_float64_learning_rate_is_not_rounded_to_float32():
    """lr reaches the kernel as float64: a float32 lr would be off by ~1e-9 relative."""
    lr = 0.1 + 1e-12  # not representable in float32
    n = 5
    f64 = dict(dtype=torch.float64, device=DEVICE)
    param = torch.zeros(n, **f64)
    grad = torch.ones(n, **f64)
    hyper = _row([1.0, 0.9, 0.999, 0.0], dtype=torch.float64)
    pows = torch.tensor([[0.9, 0.999, 0, 0], [0, 0, 0, 0]], **f64)
    K.adam_update_(param, grad, torch.zeros(n, **f64), torch.zeros(n, **f64), None, hyper,
                   pows[0], pows[1], lr=lr, coupled_decay=False, decoupled_decay=False)
    # With eps = 0 the first step is exactly -lr * g / |g| (p = 0: FMA or not, one rounding).
    assert torch.allclose(param, torch.full((n,), -lr, **f64), rtol=1e-15, atol=0)


def test_empty_tensor_still_advances_pows():
    param = torch.zeros(0, device=DEVICE)
    hyper = _row([1.0, 0.9, 0.999, 1e-8])
    pows = torch.tensor([[0.9, 0.999, 0, 0], [float("nan")] * 4], device=DEVICE)
    K.adam_update_(param, torch.zeros_like(param), torch.zeros_like(param),
                   torch.zeros_like(param), None, hyper, pows[0], pows[1], lr=0.1,
                   coupled_decay=False, decoupled_decay=False)
    assert torch.allclose(pows[1, :2].cpu(), torch.tensor([0.81, 0.998001]))


@pytest.mark.parametrize("bad, message", [
    (lambda a: a.update(grad=a["grad"].double()), "grad dtype"),
    (lambda a: a.update(exp_avg=torch.zeros(7, device=DEVICE)), "exp_avg has 7 elements"),
    (lambda a: a.update(exp_avg_sq=torch.zeros(16, 2, device=DEVICE)[:, 0]),
     "exp_avg_sq is not contiguous"),
    (lambda a: a.update(pows_out=a["pows_in"]), "must differ"),
    (lambda a: a.update(hyper=torch.zeros(K.HYPER_WIDTH, dtype=torch.float64, device=DEVICE)),
     "hyper dtype"),
])
def test_launcher_rejects_bad_arguments_without_writing(bad, message):
    n = 16
    args = dict(param=torch.randn(n, device=DEVICE), grad=torch.randn(n, device=DEVICE),
                exp_avg=torch.zeros(n, device=DEVICE), exp_avg_sq=torch.zeros(n, device=DEVICE),
                max_exp_avg_sq=None, hyper=_row([1.0, 0.9, 0.999, 1e-8]))
    pows = torch.tensor([[0.9, 0.999, 0, 0], [0, 0, 0, 0]], device=DEVICE)
    args.update(pows_in=pows[0], pows_out=pows[1])
    bad(args)
    before = args["param"].clone()
    with pytest.raises(ValueError, match=message):
        K.adam_update_(**args, lr=0.1, coupled_decay=False, decoupled_decay=False)
    assert torch.equal(args["param"], before)
