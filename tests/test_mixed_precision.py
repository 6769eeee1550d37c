"""fp16/bf16 parameters: fp32 master weights, fp32 moments, independent gradient dtypes, and
AMP without host syncs (a device loss scale and overflow flag consumed by the kernels).

Tolerances: master weights and moments are float32 (the update is computed in float32 from
the master), so they are compared with the float64 reference at float32 tolerance (a few ulps
per step: rtol 1e-5, atol 1e-6 for values of magnitude ~1 after 5 steps). The fp16/bf16
parameter must be *exactly* the master rounded to nearest in its dtype. In CUDA mode
(``tests/devices.py``) the float32 tolerance is at least the FMA bound ``devices.FMA_FLOOR``.

The master-weight configurations of the shared table (``tests/configs.py``: fp16 and bf16
with global-norm clipping, bf16 AdamW with amsgrad) are also checked by the generic tests:
against the float64 reference (test_reference.py), both update paths bitwise equal
(test_multi_tensor.py), exact resume (test_resume.py).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import triton_adam
from devices import DEVICE, fma_tol
from host_syncs import count_host_syncs
from triton_adam.kernels import adam as K
from triton_adam.reference import adam_step, init_state

LOW = [torch.float16, torch.bfloat16]
SHAPES = [(1,), (17,), (K.BLOCK_SIZE + 1,), (5, 7)]
STEPS = 5
FP32_TOL = fma_tol(torch.float32, rtol=1e-5, atol=1e-6)


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).to(DEVICE).requires_grad_() for s in SHAPES]


def _grads(params, grad_dtype, steps=STEPS, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[(torch.randn(p.shape, generator=gen) * 0.5).to(grad_dtype).to(DEVICE)
             for p in params] for _ in range(steps)]


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        if g.dtype != p.dtype:
            p.grad_dtype = g.dtype  # torch >= 2.13: allow fp32 gradients on a bf16 tensor
        p.grad = g.clone()


@pytest.mark.parametrize("multi_tensor", [False, True], ids=["per-tensor", "multi-tensor"])
@pytest.mark.parametrize("grad_kind", ["same", "fp32"])
@pytest.mark.parametrize("dtype", LOW, ids=["fp16", "bf16"])
def test_master_weights_against_the_reference(dtype, grad_kind, multi_tensor):
    params = _params(dtype)
    grad_dtype = dtype if grad_kind == "same" else torch.float32
    grads = _grads(params, grad_dtype)
    opt = triton_adam.AdamW(0.01, parameters=params, multi_precision=True, amsgrad=True,
                            weight_decay=0.1, per_tensor_launches=not multi_tensor)
    refs = [init_state(p.cpu(), beta1=0.9, beta2=0.999, amsgrad=True) for p in params]
    for step_grads in grads:
        _set_grads(params, step_grads)
        opt.step()
        # AdamW's coeff is float32 in Paddle; the reference gets the same value.
        refs = [adam_step(r, g.cpu(), lr=0.01, beta1=0.9, beta2=0.999, epsilon=1e-8,
                          weight_decay=float(torch.tensor(0.1, dtype=torch.float32)))
                for r, g in zip(refs, step_grads)]
        for j, p in enumerate(params):
            master = opt.engine.state(j)["master"]
            assert master.dtype == torch.float32
            # The param is exactly its master rounded to nearest (no drift between them).
            assert torch.equal(p.detach(), master.to(dtype)), j
    for j, (p, r) in enumerate(zip(params, refs)):
        state = opt.engine.state(j)
        torch.testing.assert_close(state["master"].cpu().double(), r.param, **FP32_TOL)
        for acc, ref in (("exp_avg", r.moment1), ("exp_avg_sq", r.moment2),
                         ("max_exp_avg_sq", r.moment2_max)):
            view = state[acc]
            assert view.dtype == torch.float32
            torch.testing.assert_close(view.cpu().double(), ref, **FP32_TOL)


@pytest.mark.parametrize("dtype", LOW, ids=["fp16", "bf16"])
def test_without_master_computes_in_fp32_and_warns_once(dtype):
    params = _params(dtype)
    grads = _grads(params, dtype)
    refs = [init_state(p.cpu(), beta1=0.9, beta2=0.999, amsgrad=False) for p in params]
    with pytest.warns(UserWarning, match="multi_precision=True") as caught:
        opt = triton_adam.Adam(0.01, parameters=params)
        _set_grads(params, grads[0])
        opt.step()
    assert len([w for w in caught if "multi_precision" in str(w.message)]) == 1
    refs = [adam_step(r, g.cpu(), lr=0.01, beta1=0.9, beta2=0.999, epsilon=1e-8)
            for r, g in zip(refs, grads[0])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        for step_grads in grads[1:]:
            _set_grads(params, step_grads)
            opt.step()
            # The reference without master weights: the param is rounded at every step.
            for r in refs:
                r.param = r.param.to(dtype).double()
            refs = [adam_step(r, g.cpu(), lr=0.01, beta1=0.9, beta2=0.999, epsilon=1e-8)
                    for r, g in zip(refs, step_grads)]
    assert all("master" not in opt.engine.state(j)
               and opt.engine.state(j)["exp_avg"].dtype == torch.float32
               for j in range(len(params)))
    for j, (p, r) in enumerate(zip(params, refs)):
        # Within one rounding of the param's dtype (the fp32 update may land on the other
        # side of a rounding boundary than the float64 one).
        ulp = torch.finfo(dtype).eps * r.param.abs().clamp_min(1e-3)
        assert ((p.detach().cpu().double() - r.param).abs() <= ulp).all(), j
        torch.testing.assert_close(opt.engine.state(j)["exp_avg_sq"].cpu().double(),
                                   r.moment2, **FP32_TOL)


def _train_bf16_regression(mode: str, steps: int = 300) -> list[float]:
    """A small linear regression trained in fp32, bf16 + master, or bf16 without master."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 16, generator=gen).to(DEVICE)
    w_true = torch.randn(16, 4, generator=gen).to(DEVICE)
    y = x @ w_true
    dtype = torch.float32 if mode == "fp32" else torch.bfloat16
    w = (torch.randn(16, 4, generator=gen) * 0.1).to(dtype).to(DEVICE).requires_grad_()
    opt = triton_adam.Adam(1e-2, parameters=[w], multi_precision=(mode == "master"),
                           use_multi_tensor=True)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fp16/bf16-without-master warning
        for _ in range(steps):
            loss = ((x.to(dtype) @ w).float() - y).square().mean()
            loss.backward()
            opt.step()
            opt.clear_grad()
            losses.append(loss.item())
    return losses


def test_bf16_training_with_master_weights_tracks_fp32():
    fp32 = _train_bf16_regression("fp32")
    master = _train_bf16_regression("master")
    plain = _train_bf16_regression("plain")
    assert fp32[-1] < 0.2 * fp32[0]  # the problem is actually being learned
    assert abs(master[-1] - fp32[-1]) <= 0.01 * fp32[-1], (master[-1], fp32[-1])
    # Without master weights the small updates are lost to bf16 rounding: shown, not hidden.
    assert abs(plain[-1] - fp32[-1]) > abs(master[-1] - fp32[-1]), (plain[-1], master[-1])


def _amp_run(bad_step: int | None, skip_step: int | None, monkeypatch=None, multi=True):
    """fp16 params with fp32 master weights under torch.amp.GradScaler; at ``bad_step`` an
    inf is injected into a gradient; at ``skip_step`` the optimizer step is left out."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(32, 8, generator=gen).half().to(DEVICE)
    y = torch.randn(32, 3, generator=gen).to(DEVICE)
    w1 = (torch.randn(8, 16, generator=gen) * 0.3).half().to(DEVICE).requires_grad_()
    w2 = (torch.randn(16, 3, generator=gen) * 0.3).half().to(DEVICE).requires_grad_()
    opt = triton_adam.Adam(1e-2, parameters=[w1, w2], multi_precision=True,
                           per_tensor_launches=not multi)
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0 ** 8, growth_interval=1000)
    syncs: list[str] = []
    original_step = opt.step

    def counted_step(*args, **kwargs):
        # Count syncs inside the optimizer's step only (the scaler's own bookkeeping, e.g.
        # its inf check, runs before and is the scaler's).
        if monkeypatch is None:
            return original_step(*args, **kwargs)
        with monkeypatch.context() as m:
            count_host_syncs(m, syncs)
            return original_step(*args, **kwargs)

    opt.step = counted_step
    for step in range(8):
        loss = ((torch.relu(x @ w1) @ w2).float() - y).square().mean()
        scaler.scale(loss).backward()
        if step == bad_step:
            w1.grad[0, 0] = float("inf")
        if step != skip_step:  # a left-out step leaves the scaler alone too
            scaler.step(opt)
            scaler.update()
        opt.clear_grad()
    pows = [v.clone() for k, v in sorted(opt.state_dict().items()) if "pow_acc" in k]
    state = [opt.engine.state(j)[acc].clone() for j in range(2)
             for acc in ("master", "exp_avg", "exp_avg_sq")]
    return [w1.detach().clone(), w2.detach().clone()] + state + pows, syncs, scaler


@pytest.mark.parametrize("multi", [False, True], ids=["per-tensor", "multi-tensor"])
def test_grad_scaler_overflow_step_changes_nothing(monkeypatch, multi):
    with_bad, syncs, scaler = _amp_run(bad_step=3, skip_step=None, monkeypatch=monkeypatch,
                                       multi=multi)
    without, _, _ = _amp_run(bad_step=None, skip_step=3, multi=multi)
    assert scaler.get_scale() == 2.0 ** 7  # the scaler saw the overflow and backed off
    # Params, master weights and moments equal those of a run that left the step out
    # (GradScaler's scales are powers of two: unscaling is exact whatever the scale).
    # ... and the pows too: the skipped step copied them instead of advancing them.
    assert len(with_bad) == len(without) == 2 + 2 * 3 + 4  # params, their state, pows
    for a, b in zip(with_bad, without):
        assert torch.equal(a, b)
    assert syncs == []
    # and the bad step is not a no-op run: a run with no skip at all differs
    plain, _, _ = _amp_run(bad_step=None, skip_step=None, multi=multi)
    assert not torch.equal(plain[0], without[0])


def test_explicit_grad_scale_divides_gradients_inside_the_kernel():
    params = _params(torch.float32)
    ref = [p.detach().clone().requires_grad_() for p in params]
    opt = triton_adam.Adam(0.01, parameters=params, use_multi_tensor=True)
    opt_ref = triton_adam.Adam(0.01, parameters=ref, use_multi_tensor=True)
    scale = torch.tensor(1024.0, device=DEVICE)
    for step_grads in _grads(params, torch.float32):
        _set_grads(params, [g * 1024 for g in step_grads])
        _set_grads(ref, step_grads)
        opt.step(grad_scale=scale, found_inf=torch.zeros((), device=DEVICE))
        opt_ref.step()
    for a, b in zip(params, ref):
        assert torch.equal(a, b)
    # found_inf set: nothing changes
    before = [p.detach().clone() for p in params]
    state = {k: v.clone() for k, v in opt.state_dict().items()}
    opt.step(grad_scale=scale, found_inf=torch.ones((), device=DEVICE))
    assert all(torch.equal(a, b) for a, b in zip(params, before))
    after = opt.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in state)


def test_state_loaded_before_the_first_step_then_fp32_gradients():
    """Loading state builds the launch groups before any gradient is seen; the first
    gradients (fp32 on a bf16 param that accepts any gradient dtype) then decide."""
    def run(load: bool):
        params = _params(torch.bfloat16)
        opt = triton_adam.Adam(0.01, parameters=params, multi_precision=True)
        grads = _grads(params, torch.float32)
        if load:
            donor = _params(torch.bfloat16)
            donor_opt = triton_adam.Adam(0.01, parameters=donor, multi_precision=True)
            _set_grads(donor, grads[0])
            donor_opt.step()
            opt.set_state_dict(donor_opt.state_dict())
            for p, q in zip(params, donor):
                p.data.copy_(q.detach())
        for p in params:
            p.grad_dtype = None  # any gradient dtype
        for step_grads in grads[1:]:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        return [p.detach().clone() for p in params]

    straight = _params(torch.bfloat16)
    opt = triton_adam.Adam(0.01, parameters=straight, multi_precision=True)
    for step_grads in _grads(straight, torch.float32):
        for p, g in zip(straight, step_grads):
            p.grad_dtype = None
            p.grad = g.clone()
        opt.step()
    resumed = run(load=True)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
