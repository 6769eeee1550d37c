"""Parameter groups, per-parameter attributes and regularizer precedence, against real Paddle.

Every run is float64 for 10 steps (tolerance 1e-12, as in test_paddle_parity.py: both sides
compute in float64 and differ only in algebraic form), with both update paths: one launch
per parameter and one multi-tensor launch per bucket. Our side runs on ``devices.DEVICE``
(``tests/devices.py``), Paddle on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import triton_adam
from devices import DEVICE, import_paddle, needs_paddle, to_numpy
from test_paddle_parity import TOL, random_problem

paddle = import_paddle()
STEPS = 10
ACCS = ["moment1", "moment2", "beta1_pow_acc", "beta2_pow_acc"]


def _paddle_param(a: np.ndarray, lr: float | None = None, reg: object = None):
    attr = None
    if lr is not None or reg is not None:
        attr = paddle.ParamAttr(learning_rate=1.0 if lr is None else lr, regularizer=reg)
    return paddle.create_parameter(list(a.shape), dtype=str(a.dtype), attr=attr,
                                   default_initializer=paddle.nn.initializer.Assign(a))


def _torch_param(a: np.ndarray, lr: float | None = None, reg: object = None):
    p = torch.tensor(a, device=DEVICE, requires_grad=True)
    triton_adam.set_param_attr(p, learning_rate=lr, regularizer=reg)
    return p


def _reg(mod, kind: str | None, coeff: float = 0.0):
    if kind is None:
        return None
    ns = paddle.regularizer if mod is paddle else triton_adam
    return getattr(ns, kind)(coeff)


def _run(make_params, make_opt, multi_tensor: bool, seed: int, grads_none=()):
    """Train both sides on the same problem; returns (paddle params, opt, torch params, opt)."""
    init, grads = random_problem("float64", seed=seed, steps=STEPS)
    pp, tp = make_params(paddle, init), make_params(triton_adam, init)
    popt = make_opt(paddle, pp)
    topt = make_opt(triton_adam, tp, per_tensor_launches=not multi_tensor)
    for step, g in enumerate(grads):
        active = [i for i in range(len(init)) if (step, i) not in grads_none]
        loss = sum((pp[i] * paddle.to_tensor(g[i])).sum() for i in active)
        loss.backward()
        popt.step()
        popt.clear_grad(set_to_zero=False)
        for i in active:
            tp[i].grad = torch.from_numpy(g[i].copy()).to(DEVICE)
        topt.step()
        topt.clear_grad(set_to_zero=False)
    return pp, popt, tp, topt


def _assert_same(pp, popt, tp, topt):
    state = topt.state_dict()
    for i, (p_pd, p_t) in enumerate(zip(pp, tp)):
        np.testing.assert_allclose(to_numpy(p_t), p_pd.numpy(), **TOL["float64"],
                                   err_msg=f"param {i}")
        for acc in ACCS:
            theirs = popt._accumulators[acc][p_pd.name].numpy()
            np.testing.assert_allclose(to_numpy(state[f"param_{i}_{acc}_0"]), theirs,
                                       **TOL["float64"], err_msg=f"{acc} of param {i}")


def _opt(mod, cls="Adam"):
    return getattr(paddle.optimizer if mod is paddle else triton_adam, cls)


def _kw(mod, kw):
    return {} if mod is paddle else kw


MULTI = pytest.mark.parametrize("multi_tensor", [False, True],
                                ids=["per-tensor", "multi-tensor"])


@needs_paddle
@MULTI
def test_groups_with_learning_rate_scales_and_beta_epsilon_overrides(multi_tensor):
    def params(mod, init):
        return [(_paddle_param if mod is paddle else _torch_param)(a) for a in init]

    def opt(mod, ps, **kw):
        groups = [{"params": ps[:2], "learning_rate": 0.5, "beta1": 0.8, "epsilon": 1e-6},
                  {"params": ps[2:4], "beta2": 0.99, "learning_rate": 3.0},
                  {"params": ps[4:]}]
        return _opt(mod)(0.02, parameters=groups, **_kw(mod, kw))

    _assert_same(*_run(params, opt, multi_tensor, seed=11))


@needs_paddle
@MULTI
def test_groups_adamw_weight_decay_and_learning_rate_per_group(multi_tensor):
    def params(mod, init):
        return [(_paddle_param if mod is paddle else _torch_param)(a) for a in init]

    def opt(mod, ps, **kw):
        groups = [{"params": ps[:2], "weight_decay": 0.3, "learning_rate": 2.0},
                  {"params": ps[2:4], "beta1": 0.5},
                  {"params": ps[4:], "weight_decay": 0.0}]
        return _opt(mod, "AdamW")(0.02, parameters=groups, weight_decay=0.05,
                                  **_kw(mod, kw))

    _assert_same(*_run(params, opt, multi_tensor, seed=12))


@needs_paddle
@MULTI
def test_flat_per_parameter_regularizer_wins_and_lr_scale_applies(multi_tensor):
    """Flat list: param 0's L1Decay and param 2's L2Decay replace the optimizer's weight_decay
    for them; param 1 and 3 get the optimizer's; param 1 and 4 have a learning-rate scale."""
    def params(mod, init):
        make = _paddle_param if mod is paddle else _torch_param
        return [make(init[0], reg=_reg(mod, "L1Decay", 0.04)),
                make(init[1], lr=2.5),
                make(init[2], reg=_reg(mod, "L2Decay", 0.2)),
                make(init[3]),
                make(init[4], lr=0.25, reg=_reg(mod, "L1Decay", 0.01))]

    def opt(mod, ps, **kw):
        return _opt(mod)(0.02, parameters=ps, weight_decay=_reg(mod, "L2Decay", 0.05),
                         **_kw(mod, kw))

    _assert_same(*_run(params, opt, multi_tensor, seed=13))


@needs_paddle
@MULTI
def test_group_weight_decay_overrides_the_parameters_regularizer(multi_tensor):
    """Group mode: the group's weight_decay (default: the optimizer's) replaces every
    parameter's own regularizer, and its learning rate replaces the parameter's scale; a
    group weight_decay of None falls back to the optimizer's."""
    def params(mod, init):
        make = _paddle_param if mod is paddle else _torch_param
        return [make(a, lr=4.0, reg=_reg(mod, "L1Decay", 0.5)) for a in init]

    def opt(mod, ps, **kw):
        groups = [{"params": ps[:2], "weight_decay": 0.1},
                  {"params": ps[2:3], "weight_decay": _reg(mod, "L1Decay", 0.02)},
                  {"params": ps[3:4], "weight_decay": None},
                  {"params": ps[4:], "learning_rate": 0.5}]
        return _opt(mod)(0.02, parameters=groups, weight_decay=_reg(mod, "L2Decay", 0.03),
                         **_kw(mod, kw))

    _assert_same(*_run(params, opt, multi_tensor, seed=14))


@needs_paddle
@MULTI
def test_adamw_keeps_parameter_regularizers_in_both_modes(multi_tensor):
    """AdamW has no optimizer-wide regularizer; a parameter's own is still added to its
    gradient (flat and group mode), on top of the decoupled decay."""
    def params(mod, init):
        make = _paddle_param if mod is paddle else _torch_param
        return [make(init[0], reg=_reg(mod, "L2Decay", 0.3))] + [make(a) for a in init[1:]]

    def flat(mod, ps, **kw):
        return _opt(mod, "AdamW")(0.02, parameters=ps, weight_decay=0.1, **_kw(mod, kw))

    def groups(mod, ps, **kw):
        return _opt(mod, "AdamW")(0.02, parameters=[{"params": ps[:3], "weight_decay": 0.2},
                                                    {"params": ps[3:]}], **_kw(mod, kw))

    _assert_same(*_run(params, flat, multi_tensor, seed=15))
    _assert_same(*_run(params, groups, multi_tensor, seed=16))


@needs_paddle
@MULTI
def test_groups_with_skipped_parameters_keep_their_own_step_counts(multi_tensor):
    def params(mod, init):
        return [(_paddle_param if mod is paddle else _torch_param)(a) for a in init]

    def opt(mod, ps, **kw):
        return _opt(mod)(0.02, parameters=[{"params": ps[:3], "beta1": 0.7},
                                           {"params": ps[3:], "learning_rate": 2.0}],
                         amsgrad=True, **_kw(mod, kw))

    skipped = {(1, 0), (2, 0), (2, 4), (5, 3), (6, 1)}
    _assert_same(*_run(params, opt, multi_tensor, seed=17, grads_none=skipped))


@needs_paddle
def test_append_regularization_ops_matches_paddle():
    init, grads = random_problem("float64", seed=18, steps=1)
    g = grads[0]
    pp = [_paddle_param(init[0], reg=paddle.regularizer.L1Decay(0.3)),
          _paddle_param(init[1]), _paddle_param(init[2])]
    tp = [_torch_param(init[0], reg=triton_adam.L1Decay(0.3)), _torch_param(init[1]),
          _torch_param(init[2])]
    popt = paddle.optimizer.Adam(0.01, parameters=pp)
    topt = triton_adam.Adam(0.01, parameters=tp)
    p_pairs = [(pp[0], paddle.to_tensor(g[0])), (pp[1], paddle.to_tensor(g[1])), (pp[2], None)]
    t_grads = [torch.from_numpy(g[0].copy()).to(DEVICE), torch.from_numpy(g[1].copy()).to(DEVICE)]
    t_pairs = [(tp[0], t_grads[0]), (tp[1], t_grads[1]), (tp[2], None)]
    for p_reg, t_reg in [(None, None), (paddle.regularizer.L2Decay(0.05),
                                        triton_adam.L2Decay(0.05))]:
        theirs = popt.append_regularization_ops(p_pairs, p_reg)
        ours = topt.append_regularization_ops(t_pairs, t_reg)
        assert [p is q for (p, _), (q, _) in zip(ours, t_pairs)] == [True] * 3
        for (_, a), (_, b) in zip(ours, theirs):
            if b is None:
                assert a is None
            else:
                np.testing.assert_allclose(to_numpy(a), b.numpy(), **TOL["float64"])
    # The gradients themselves are not modified.
    assert torch.equal(t_grads[0].cpu(), torch.from_numpy(g[0]))
    # Without any regularizer the gradient tensor is returned as is (Paddle does the same).
    assert topt.append_regularization_ops(t_pairs[1:2])[0][1] is t_grads[1]


def _paddle_error(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return type(exc)
    return None


@needs_paddle
def test_group_errors_match_paddle():
    a = np.ones(3)
    pp = [_paddle_param(a), _paddle_param(a)]
    tp = [_torch_param(a), _torch_param(a)]
    cases = {
        "set": lambda ps: [{"params": set(ps)}],
        "missing params": lambda ps: [{"learning_rate": 0.1}],
        "in two groups": lambda ps: [{"params": ps}, {"params": ps[:1]}],
    }
    for name, make in cases.items():
        expected = _paddle_error(lambda: paddle.optimizer.Adam(0.1, parameters=make(pp)))
        assert expected is not None, name
        with pytest.raises(expected):
            triton_adam.Adam(0.1, parameters=make(tp))
    with pytest.raises(ValueError, match="more than one parameter group"):
        triton_adam.Adam(0.1, parameters=[{"params": tp}, {"params": tp[1:]}])
    # Decision: Paddle accepts a duplicate in a flat list (and updates it twice).
    assert _paddle_error(lambda: paddle.optimizer.Adam(0.1, parameters=[pp[0], pp[0]])) is None
    with pytest.raises(ValueError, match="more than once"):
        triton_adam.Adam(0.1, parameters=[tp[0], tp[0]])


@pytest.mark.parametrize("bad, error, match", [
    ({"params": [], "amsgrad": True}, ValueError, "unknown options"),
    ({"params": [], "learning_rate": "x"}, TypeError, "learning_rate"),
    ({"params": [], "beta1": 1.5}, ValueError, "beta1"),
    ({"params": [], "weight_decay": "x"}, TypeError, "weight_decay"),
])
def test_group_option_errors_are_named(bad, error, match):
    p = _torch_param(np.ones(2))
    bad = dict(bad, params=[p])
    with pytest.raises(error, match=match):
        triton_adam.Adam(0.1, parameters=[bad])


def test_named_parameters_give_state_names_and_set_param_attr_wins():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)).double().to(DEVICE)
    triton_adam.set_param_attr(model[1].bias, name="head_bias")
    seen = []
    opt = triton_adam.AdamW(0.01, parameters=model.named_parameters(),
                            apply_decay_param_fun=lambda n: seen.append(n) or True)
    model(torch.randn(4, 3, dtype=torch.float64, device=DEVICE)).sum().backward()
    opt.step()
    expected = ["0.weight", "0.bias", "1.weight", "head_bias"]
    assert seen == expected
    assert {k.rsplit("_moment1_0", 1)[0] for k in opt.state_dict()
            if k.endswith("_moment1_0")} == set(expected)


def test_parameter_attributes_set_directly_are_read():
    """Attributes assigned without the helper (Paddle's names) count the same way."""
    init, grads = random_problem("float64", seed=19, steps=3)
    a = [torch.tensor(x, device=DEVICE, requires_grad=True) for x in init]
    b = [torch.tensor(x, device=DEVICE, requires_grad=True) for x in init]
    a[0].optimize_attr = {"learning_rate": 3.0}
    a[1].regularizer = triton_adam.L1Decay(0.1)
    triton_adam.set_param_attr(b[0], learning_rate=3.0)
    triton_adam.set_param_attr(b[1], regularizer=triton_adam.L1Decay(0.1))
    oa, ob = triton_adam.Adam(0.01, parameters=a), triton_adam.Adam(0.01, parameters=b)
    for g in grads:
        for ps, o in ((a, oa), (b, ob)):
            for p, x in zip(ps, g):
                p.grad = torch.from_numpy(x.copy()).to(DEVICE)
            o.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0].cpu(), torch.from_numpy(init[0]))


def test_set_param_attr_validates():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match="learning_rate"):
        triton_adam.set_param_attr(p, learning_rate="fast")
    with pytest.raises(TypeError, match="regularizer"):
        triton_adam.set_param_attr(p, regularizer=0.1)
    with pytest.raises(TypeError, match="name"):
        triton_adam.set_param_attr(p, name="")
    with pytest.raises(TypeError, match="need_clip"):
        triton_adam.set_param_attr(p, need_clip="no")
    assert triton_adam.set_param_attr(p, need_clip=False) is p and p.need_clip is False
