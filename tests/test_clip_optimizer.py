"""Gradient clipping inside the optimizer step, against real Paddle, and its device cost.

10 steps with random gradients whose norms straddle the clip thresholds, float64 (1e-12: both
sides compute the norms and the update in float64) and float32 (1e-5 relative: the norm is a
float32 sum in another order, ~1e-7 relative, and the update adds a few ulps per step, as in
test_paddle_parity.py), per-tensor and multi-tensor launches. In CUDA mode
(``tests/devices.py``) the tolerances are at least the FMA bound ``devices.FMA_FLOOR``.

The clipping configurations of the shared table (``tests/configs.py``: global norm, with
``auto_skip_clip``, by norm, by value, per group, with master weights) are also checked by
the generic tests: against the float64 reference (test_reference.py), both update paths
bitwise equal (test_multi_tensor.py), exact resume (test_resume.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import triton_adam
from counters import DeviceOps, TritonLaunches  # perf/counters.py (pytest's pythonpath)
from devices import DEVICE, fma_tol, import_paddle, kernel_ops, needs_paddle, to_numpy
from test_paddle_parity import TOL

paddle = import_paddle()
STEPS = 10
SHAPES = [(3, 4), (17,), (1,), (2, 3, 2), (1030,)]


def _problem(dtypes, seed, scale_range=(0.05, 3.0)):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtypes[i % len(dtypes)]) for i, s in
            enumerate(SHAPES)]
    grads = [[(rng.standard_normal(s) * rng.uniform(*scale_range)).astype(a.dtype)
              for s, a in zip(SHAPES, init)] for _ in range(STEPS)]
    return init, grads


def _paddle_params(init, no_clip=()):
    return [paddle.create_parameter(
        list(a.shape), dtype=str(a.dtype),
        attr=paddle.ParamAttr(need_clip=False) if i in no_clip else None,
        default_initializer=paddle.nn.initializer.Assign(a)) for i, a in enumerate(init)]


def _torch_params(init, no_clip=()):
    out = []
    for i, a in enumerate(init):
        p = torch.tensor(a, device=DEVICE, requires_grad=True)
        if i in no_clip:
            triton_adam.set_param_attr(p, need_clip=False)
        out.append(p)
    return out


def _clip(mod, kind, *args, **kwargs):
    ns = paddle.nn if mod is paddle else triton_adam
    return getattr(ns, kind)(*args, **kwargs)


def _compare(make_opt, dtypes, seed, multi_tensor, no_clip=(), scale_range=(0.05, 3.0)):
    init, grads = _problem(dtypes, seed, scale_range)
    pp, tp = _paddle_params(init, no_clip), _torch_params(init, no_clip)
    popt = make_opt(paddle, pp)
    topt = make_opt(triton_adam, tp, per_tensor_launches=not multi_tensor)
    for g in grads:
        loss = sum((p * paddle.to_tensor(x)).sum() for p, x in zip(pp, g))
        loss.backward()
        popt.step()
        popt.clear_grad()
        given = [torch.from_numpy(x.copy()).to(DEVICE) for x in g]
        for p, x in zip(tp, given):
            p.grad = x
        topt.step()
        for x, raw in zip(given, g):
            assert np.array_equal(to_numpy(x), raw)  # param.grad is not modified
        topt.clear_grad()
    state = topt.state_dict()
    for i, (a, b) in enumerate(zip(pp, tp)):
        tol = TOL[str(init[i].dtype)]
        np.testing.assert_allclose(to_numpy(b), a.numpy(), **tol, err_msg=f"param {i}")
        for acc in ("moment1", "moment2"):
            np.testing.assert_allclose(to_numpy(state[f"param_{i}_{acc}_0"]),
                                       popt._accumulators[acc][a.name].numpy(), **tol,
                                       err_msg=f"{acc} {i}")
    return topt


def _compare_reference(clip, multi_tensor, no_clip=(), dtypes=("float64",),
                       loose=False):
    from triton_adam.reference import adam_step, init_state
    init, grads = _problem(list(dtypes), seed=8)
    tp = _torch_params(init, no_clip)
    refs = [init_state(p.cpu(), beta1=0.9, beta2=0.999, amsgrad=False) for p in tp]
    topt = triton_adam.Adam(0.05, parameters=tp, grad_clip=clip, per_tensor_launches=not multi_tensor)
    for g in grads:
        given = [torch.from_numpy(x.copy()) for x in g]
        for p, x in zip(tp, given):
            p.grad = x.to(DEVICE)
        # the readable spec on the CPU gradients (it reads only need_clip from the params)
        clipped = [c for _, c in clip.clip(list(zip(tp, given)))]
        topt.step()
        refs = [adam_step(r, c, lr=0.05, beta1=0.9, beta2=0.999, epsilon=1e-8)
                for r, c in zip(refs, clipped)]
    for p, r in zip(tp, refs):
        # float32 against the float64 reference: each of the 10 steps rounds params of
        # magnitude up to ~2 (half an ulp: 1.2e-7), hence atol 1e-6 beside rtol 1e-5.
        # ``loose``: the norm itself is only float32-accurate (Paddle's rule sums float32
        # squares in float32; the kernel in float64), so every param gets that tolerance.
        tol = (fma_tol(torch.float32, rtol=1e-5, atol=1e-6) if p.dtype == torch.float32 or loose
               else TOL["float64"])
        torch.testing.assert_close(p.detach().cpu().double(), r.param, **tol)
    return topt


def _kw(mod, kw):
    return {} if mod is paddle else kw


MULTI = pytest.mark.parametrize("multi_tensor", [False, True], ids=["per-tensor", "multi-tensor"])
DTYPES = pytest.mark.parametrize("dtype", ["float64", "float32"])


@needs_paddle
@MULTI
@DTYPES
@pytest.mark.parametrize("kind, args", [
    ("ClipGradByGlobalNorm", (1.0,)),
    ("ClipGradByNorm", (0.5,)),
    ("ClipGradByValue", (0.3,)),
    ("ClipGradByValue", (0.2, -0.05)),
], ids=["global", "by-norm", "by-value", "by-value-min"])
def test_each_clip_flat_matches_paddle(kind, args, dtype, multi_tensor):
    if kind == "ClipGradByNorm" and dtype == "float64":
        # Paddle 3.3.1's CPU build has no float64 clip_by_norm kernel (RuntimeError): compare
        # with the float64 reference instead (clip.py's readable spec + reference.adam_step).
        _compare_reference(triton_adam.ClipGradByNorm(*args), multi_tensor, no_clip=(1,))
        return

    def opt(mod, ps, **kw):
        return paddle.optimizer.Adam(0.05, parameters=ps, grad_clip=_clip(mod, kind, *args)) \
            if mod is paddle else triton_adam.Adam(0.05, parameters=ps,
                                                   grad_clip=_clip(mod, kind, *args), **kw)

    _compare(opt, [dtype], seed=hash((kind, args)) % 1000, multi_tensor=multi_tensor,
             no_clip=(1,))


@needs_paddle
@MULTI
@DTYPES
@pytest.mark.parametrize("clip_norm, expect_clipped", [(0.5, True), (1e4, False)],
                         ids=["below-norm", "above-norm"])
def test_auto_skip_clip_both_sides_of_the_threshold(clip_norm, expect_clipped, dtype,
                                                    multi_tensor):
    def opt(mod, ps, **kw):
        clip = _clip(mod, "ClipGradByGlobalNorm", clip_norm, auto_skip_clip=True)
        return (paddle.optimizer if mod is paddle else triton_adam).Adam(
            0.05, parameters=ps, grad_clip=clip, weight_decay=0.01, **_kw(mod, kw))

    topt = _compare(opt, [dtype], seed=3, multi_tensor=multi_tensor)
    norm = topt.engine.norms()[0].item()
    assert (norm > clip_norm) == expect_clipped


@needs_paddle
@MULTI
@DTYPES
def test_group_mode_each_group_its_own_norm_and_clip(dtype, multi_tensor):
    def opt(mod, ps, **kw):
        groups = [{"params": ps[:2], "grad_clip": _clip(mod, "ClipGradByGlobalNorm", 0.7)},
                  {"params": ps[2:4], "grad_clip": _clip(mod, "ClipGradByValue", 0.1),
                   "learning_rate": 2.0},
                  {"params": ps[4:]}]  # the optimizer's clip
        return (paddle.optimizer if mod is paddle else triton_adam).Adam(
            0.05, parameters=groups, grad_clip=_clip(mod, "ClipGradByGlobalNorm", 0.4),
            **_kw(mod, kw))

    _compare(opt, [dtype], seed=4, multi_tensor=multi_tensor, no_clip=(3,))


@MULTI
def test_global_norm_over_mixed_dtype_grads(multi_tensor):
    """float32 and float64 grads in one norm. Paddle's Adam cannot step float32 and float64
    params in one optimizer (its learning-rate tensor takes the first param's dtype), so the
    expected values come from clip.py's readable spec (tested against paddle.nn's clip on
    mixed grads in test_clip.py) and the float64 reference; float32 tolerance."""
    clip = triton_adam.ClipGradByGlobalNorm(1.0)
    topt = _compare_reference(clip, multi_tensor, dtypes=["float32", "float64"], loose=True)
    assert topt.engine.norms().dtype == torch.float64


@needs_paddle
def test_non_finite_norm_behaves_as_paddle():
    """An inf gradient makes the global norm inf: scale 0, so its param gets NaN (0 * inf) and
    the others a zero clipped gradient, exactly as Paddle."""
    init, grads = _problem(["float64"], seed=7)
    grads = grads[:2]
    grads[1][0][0, 0] = np.inf
    pp, tp = _paddle_params(init), _torch_params(init)
    popt = paddle.optimizer.Adam(0.05, parameters=pp, grad_clip=paddle.nn.ClipGradByGlobalNorm(1.))
    topt = triton_adam.Adam(0.05, parameters=tp, grad_clip=triton_adam.ClipGradByGlobalNorm(1.),
                            use_multi_tensor=True)
    for g in grads:
        (sum((p * paddle.to_tensor(x)).sum() for p, x in zip(pp, g))).backward()
        popt.step()
        popt.clear_grad()
        for p, x in zip(tp, g):
            p.grad = torch.from_numpy(x.copy()).to(DEVICE)
        topt.step()
    for a, b in zip(pp, tp):
        np.testing.assert_allclose(to_numpy(b), a.numpy(), **TOL["float64"], equal_nan=True)
    assert np.isnan(to_numpy(tp[0])).any()


@needs_paddle
def test_construction_errors_match_paddle():
    p = [torch.zeros(2, device=DEVICE, requires_grad=True)]
    pd = [paddle.create_parameter([2], "float32")]
    with pytest.raises(TypeError):
        paddle.optimizer.Adam(parameters=pd, grad_clip=0.5)
    with pytest.raises(TypeError, match="grad_clip"):
        triton_adam.Adam(parameters=p, grad_clip=0.5)
    with pytest.raises(TypeError, match="grad_clip"):
        triton_adam.Adam(parameters=[{"params": p, "grad_clip": "x"}])
    # Paddle raises these when it first clips a gradient; the device cannot raise, so here
    # they are raised at construction (a documented decision).
    with pytest.raises(ValueError, match="clip_norm"):
        triton_adam.Adam(parameters=p, grad_clip=triton_adam.ClipGradByNorm(0.0))
    with pytest.raises(ValueError, match="min"):
        triton_adam.Adam(parameters=p, grad_clip=triton_adam.ClipGradByValue(0.1, min=0.5))


def test_clipped_step_over_291_tensors_launches_and_syncs():
    """Llama-7B-shaped count: one norm pass (one bucket), one finalize, one update; no sync."""
    params = [torch.nn.Parameter(torch.randn(n % 23 + 1, device=DEVICE)) for n in range(291)]
    opt = triton_adam.AdamW(1e-3, parameters=params, use_multi_tensor=True,
                            grad_clip=triton_adam.ClipGradByGlobalNorm(1.0))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # builds the tables
    for p in params:
        p.grad = torch.randn_like(p)
    with TritonLaunches(execute=False) as launches, DeviceOps() as device:
        opt.step()
    assert launches.count == 3
    assert device.syncs == 0 and kernel_ops(device.ops) == {}, device.ops


@pytest.mark.parametrize("multi_tensor", [False, True], ids=["per-tensor", "multi-tensor"])
def test_inf_gradient_with_clipping_and_the_amp_skip_flag_corrupts_nothing(multi_tensor):
    """An inf gradient makes the global norm inf (clip scale 0, NaN for the inf element); with
    AMP's overflow flag set, as GradScaler sets it for such a step, nothing changes at all."""
    init, grads = _problem(["float32"], seed=9)
    tp = _torch_params(init)
    opt = triton_adam.Adam(0.05, parameters=tp, per_tensor_launches=not multi_tensor,
                           grad_clip=triton_adam.ClipGradByGlobalNorm(1.0), amsgrad=True)
    for p, x in zip(tp, grads[0]):
        p.grad = torch.from_numpy(x.copy()).to(DEVICE)
    opt.step()
    before = [p.detach().clone() for p in tp]
    state = {k: v.clone() for k, v in opt.state_dict().items()}
    bad = [x.copy() for x in grads[1]]
    bad[0][0, 0] = np.inf
    for p, x in zip(tp, bad):
        p.grad = torch.from_numpy(x).to(DEVICE)
    opt.step(found_inf=torch.ones((), device=DEVICE))
    assert all(torch.equal(p, b) for p, b in zip(tp, before))
    assert all(torch.equal(v, state[k]) for k, v in opt.state_dict().items())
    assert not any(torch.isnan(p).any() for p in tp)
