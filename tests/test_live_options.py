"""Options are live as in Paddle: a parameter's attributes (``optimize_attr`` learning rate,
regularizer, need_clip) changed after some steps take effect at the next step (Paddle reads
them at every step), while the group dicts given to the constructor are copied (a later change
to them has no effect, in Paddle either). Matched against real Paddle doing the same change,
float64, both update paths, with no host sync in the step that picks the change up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import triton_adam
from devices import DEVICE, import_paddle, needs_paddle, to_numpy
from host_syncs import count_host_syncs
from test_paddle_parity import TOL, random_problem

paddle = import_paddle()
STEPS = 8
CHANGE_AT = 4  # the change is made after this many steps
ACCS = ["moment1", "moment2", "beta1_pow_acc", "beta2_pow_acc"]
MULTI = pytest.mark.parametrize("multi_tensor", [False, True], ids=["per-tensor", "multi-tensor"])


def _params(mod, init):
    if mod is paddle:
        return [paddle.create_parameter(list(a.shape), dtype=str(a.dtype),
                                        default_initializer=paddle.nn.initializer.Assign(a))
                for a in init]
    return [torch.tensor(a, device=DEVICE, requires_grad=True) for a in init]


def _run(make_opt, change, multi_tensor, seed, monkeypatch):
    init, grads = random_problem("float64", seed=seed, steps=STEPS)
    pp, tp = _params(paddle, init), _params(triton_adam, init)
    popt = make_opt(paddle, pp)
    topt = make_opt(triton_adam, tp, per_tensor_launches=not multi_tensor)
    syncs: list[str] = []
    for step, g in enumerate(grads):
        if step == CHANGE_AT:
            change(paddle, pp, popt)
            change(triton_adam, tp, topt)
        sum((pp[i] * paddle.to_tensor(g[i])).sum() for i in range(len(init))).backward()
        popt.step()
        popt.clear_grad(set_to_zero=False)
        for i in range(len(init)):
            tp[i].grad = torch.from_numpy(g[i].copy()).to(DEVICE)
        if step == CHANGE_AT:
            with monkeypatch.context() as m:
                count_host_syncs(m, syncs)
                topt.step()
        else:
            topt.step()
        topt.clear_grad(set_to_zero=False)
    assert syncs == []
    state = topt.state_dict()
    for i, (p_pd, p_t) in enumerate(zip(pp, tp)):
        np.testing.assert_allclose(to_numpy(p_t), p_pd.numpy(), **TOL["float64"],
                                   err_msg=f"param {i}")
        for acc in ACCS:
            np.testing.assert_allclose(to_numpy(state[f"param_{i}_{acc}_0"]),
                                       popt._accumulators[acc][p_pd.name].numpy(),
                                       **TOL["float64"], err_msg=f"{acc} of param {i}")
    return tp


def _opt(mod, cls="Adam"):
    return getattr(paddle.optimizer if mod is paddle else triton_adam, cls)


def _kw(mod, kw):
    return {} if mod is paddle else kw


@needs_paddle
@MULTI
@pytest.mark.parametrize("group_mode", [False, True], ids=["flat", "groups"])
def test_optimize_attr_learning_rate_changed_between_steps(multi_tensor, group_mode,
                                                         monkeypatch):
    def opt(mod, ps, **kw):
        params = [{"params": ps[:2], "learning_rate": 2.0}, {"params": ps[2:]}] \
            if group_mode else ps
        return _opt(mod)(0.02, parameters=params, **_kw(mod, kw))

    def change(mod, ps, o):
        for i, lr in ((0, 0.25), (3, 4.0)):
            if mod is paddle or group_mode:  # both keep optimize_attr on the parameter
                ps[i].optimize_attr["learning_rate"] = lr
            else:
                triton_adam.set_param_attr(ps[i], learning_rate=lr)

    _run(opt, change, multi_tensor, 21, monkeypatch)


@needs_paddle
@MULTI
def test_regularizer_and_need_clip_changed_between_steps(multi_tensor, monkeypatch):
    def opt(mod, ps, **kw):
        clip = (paddle.nn if mod is paddle else triton_adam).ClipGradByGlobalNorm(0.5)
        return _opt(mod)(0.02, parameters=ps, grad_clip=clip, **_kw(mod, kw))

    def change(mod, ps, o):
        ns = paddle.regularizer if mod is paddle else triton_adam
        ps[1].regularizer = ns.L2Decay(0.3)
        ps[2].regularizer = ns.L1Decay(0.05)
        ps[4].need_clip = False

    _run(opt, change, multi_tensor, 22, monkeypatch)


@needs_paddle
@MULTI
def test_group_dicts_changed_after_construction_change_nothing_as_in_paddle(multi_tensor,
                                                                           monkeypatch):
    """Paddle copies the parameter groups when the optimizer is built: a later change to the
    dicts given (beta1, epsilon, weight_decay) has no effect there, nor here."""
    def opt(mod, ps, **kw):
        groups = [{"params": ps[:2], "beta1": 0.8}, {"params": ps[2:], "weight_decay": 0.01}]
        o = _opt(mod)(0.02, parameters=groups, **_kw(mod, kw))
        o.test_groups = groups
        return o

    def change(mod, ps, o):
        o.test_groups[0]["beta1"] = 0.7
        o.test_groups[0]["epsilon"] = 1e-4
        o.test_groups[1]["weight_decay"] = 0.2

    _run(opt, change, multi_tensor, 23, monkeypatch)


@MULTI
def test_nothing_changed_uploads_nothing(multi_tensor, monkeypatch):
    """Unchanged options cost no device work: no table or row is uploaded again."""
    from triton_adam.kernels import common

    params = [torch.randn(17, device=DEVICE, requires_grad=True) for _ in range(3)]
    opt = triton_adam.Adam(0.01, parameters=params, per_tensor_launches=not multi_tensor)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    uploads = []
    original = common.upload
    monkeypatch.setattr(common, "upload", lambda *a: uploads.append(1) or original(*a))
    opt.step()
    assert uploads == []
    triton_adam.set_param_attr(params[1], learning_rate=0.5)
    opt.step()
    assert uploads, "a changed option is uploaded"


def test_a_bad_attribute_set_between_steps_raises_before_anything_changes():
    params = [torch.randn(5, device=DEVICE, requires_grad=True) for _ in range(2)]
    opt = triton_adam.Adam(0.01, parameters=params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [p.detach().clone() for p in params]
    params[1].optimize_attr = {"learning_rate": "fast"}
    with pytest.raises(TypeError, match=r"optimize_attr\['learning_rate'\] must be a float"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    params[1].optimize_attr = {"learning_rate": 0.5}
    opt.step()
