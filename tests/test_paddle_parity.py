"""The optimizers against real Paddle 3.3.1, in the same process, on params and accumulators.

Tolerances: float64 runs agree to 1e-12 (both sides compute in float64; the formulas differ
only in algebraic form). float32 runs agree to 1e-5 relative: both sides round to float32 at
every operation but in a different order (Paddle's CPU kernel vs ours, with FMA), a few ulps
(~1e-6 relative) per step after 10 steps; atol 1e-7 covers moments near zero. In CUDA mode
(``tests/devices.py``) both are at least the FMA bound ``devices.FMA_FLOOR``; Paddle runs on the
CPU and our results are brought back to it.

``test_matches_paddle`` runs the configurations of the shared table (``tests/configs.py``)
marked ``paddle``, each built by the same builder with either library's classes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import configs
import triton_adam
from configs import CONFIGS, PADDLE_CONFIGS
from devices import DEVICE, fma_tol, import_paddle, needs_paddle, to_numpy

paddle = import_paddle()

TOL = {"float64": fma_tol("float64", rtol=1e-12, atol=1e-12),
       "float32": fma_tol("float32", rtol=1e-5, atol=1e-7)}
STEPS = 10


def random_problem(dtype: str, seed: int, steps: int = STEPS):
    """Random shapes, initial params and a fresh gradient per step (numpy arrays)."""
    rng = np.random.default_rng(seed)
    shapes = [tuple(rng.integers(1, 6, size=rng.integers(1, 4))) for _ in range(4)] + [(1,)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[(rng.standard_normal(s) * rng.uniform(0.01, 2)).astype(dtype) for s in shapes]
             for _ in range(steps)]
    return init, grads


def paddle_params(init):
    return [paddle.create_parameter(list(a.shape), dtype=str(a.dtype),
                                    default_initializer=paddle.nn.initializer.Assign(a))
            for a in init]


def paddle_step(params, opt, grads):
    """Give each param the gradient ``g`` (d/dp sum(p*g) = g exactly) and step."""
    loss = sum((p * paddle.to_tensor(g)).sum() for p, g in zip(params, grads))
    loss.backward()
    opt.step()
    opt.clear_grad()


def torch_params(init):
    return [torch.tensor(a, device=DEVICE, requires_grad=True) for a in init]


def torch_names(params):
    """Our names for unnamed tensors: ``param_{index}`` in the order given."""
    return [f"param_{i}" for i in range(len(params))]


def torch_step(params, opt, grads):
    for p, g in zip(params, grads):
        p.grad = torch.from_numpy(g.copy()).to(DEVICE)
    opt.step()
    opt.clear_grad()


# The configurations of the shared table (tests/configs.py) that Paddle's CPU build runs too,
# each built with either library's classes (``configs.OURS`` / ``configs.paddle_lib()``).
PADDLE = configs.paddle_lib() if paddle is not None else None


def _paddle_accumulator(opt, acc, param):
    return opt._accumulators[acc][param.name].numpy()


@needs_paddle
@pytest.mark.parametrize("multi_tensor", [False, True], ids=["per-tensor", "multi-tensor"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("config", PADDLE_CONFIGS)
def test_matches_paddle(config, dtype, multi_tensor):
    init, grads = random_problem(dtype, seed=len(config))
    pp = paddle_params(init)
    popt = CONFIGS[config].make(pp, lib=PADDLE)
    tp = torch_params(init)
    topt = CONFIGS[config].make(tp, per_tensor_launches=not multi_tensor)
    for step, g in enumerate(grads):
        if step == 4:  # a learning-rate change mid-run, as a user's schedule would make
            popt.set_lr(popt.get_lr() * 0.5)
            topt.set_lr(topt.get_lr() * 0.5)
        paddle_step(pp, popt, g)
        torch_step(tp, topt, g)

    tol = TOL[dtype]
    state = topt.state_dict()
    accs = ["moment1", "moment2", "beta1_pow_acc", "beta2_pow_acc"]
    if CONFIGS[config].amsgrad:
        accs.append("moment2_max")
    for p_pd, p_t, name in zip(pp, tp, torch_names(tp)):
        assert p_t.dtype == getattr(torch, dtype)
        np.testing.assert_allclose(to_numpy(p_t), p_pd.numpy(), **tol,
                                   err_msg=f"param {p_pd.name}")
        for acc in accs:
            ours = state[f"{name}_{acc}_0"]
            theirs = _paddle_accumulator(popt, acc, p_pd)
            assert ours.dtype == getattr(torch, dtype), acc
            assert tuple(ours.shape) == theirs.shape, acc
            np.testing.assert_allclose(to_numpy(ours), theirs, **tol,
                                       err_msg=f"{acc} {p_pd.name}")


@needs_paddle
def test_beta_tensors_changed_in_place_are_read_every_step():
    """Paddle reads tensor betas at every step; so do we (on the device, without a sync)."""
    init, grads = random_problem("float64", seed=3)
    pp = paddle_params(init)
    tp = torch_params(init)
    pb1, pb2 = paddle.to_tensor([0.9], dtype="float64"), paddle.to_tensor([0.999],
                                                                           dtype="float64")
    tb1 = torch.tensor([0.9], dtype=torch.float64, device=DEVICE)
    tb2 = torch.tensor([0.999], dtype=torch.float64, device=DEVICE)
    popt = paddle.optimizer.Adam(0.01, beta1=pb1, beta2=pb2, parameters=pp)
    topt = triton_adam.Adam(0.01, beta1=tb1, beta2=tb2, parameters=tp)
    for step, g in enumerate(grads):
        if step == 5:
            pb1.set_value(paddle.to_tensor([0.8], dtype="float64"))
            pb2.set_value(paddle.to_tensor([0.99], dtype="float64"))
            tb1.fill_(0.8)
            tb2.fill_(0.99)
        paddle_step(pp, popt, g)
        torch_step(tp, topt, g)
    for p_pd, p_t, name in zip(pp, tp, torch_names(tp)):
        np.testing.assert_allclose(to_numpy(p_t), p_pd.numpy(), **TOL["float64"])
        np.testing.assert_allclose(to_numpy(topt.state_dict()[f"{name}_beta1_pow_acc_0"]),
                                   _paddle_accumulator(popt, "beta1_pow_acc", p_pd),
                                   **TOL["float64"])


@needs_paddle
def test_param_without_grad_keeps_its_own_step_count():
    """Pows advance per parameter: a param skipped (grad None) lags behind, as in Paddle."""
    init, grads = random_problem("float64", seed=5, steps=6)
    pp = paddle_params(init)
    tp = torch_params(init)
    popt = paddle.optimizer.Adam(0.01, parameters=pp)
    topt = triton_adam.Adam(0.01, parameters=tp)
    for step, g in enumerate(grads):
        active = [i for i in range(len(init)) if step % 2 == 0 or i != 0]  # param 0: odd
        loss = sum((pp[i] * paddle.to_tensor(g[i])).sum() for i in active)
        loss.backward()
        popt.step()
        popt.clear_grad(set_to_zero=False)
        for i in active:
            tp[i].grad = torch.from_numpy(g[i].copy()).to(DEVICE)
        topt.step()
        topt.clear_grad(set_to_zero=False)
    for p_pd, p_t, name in zip(pp, tp, torch_names(tp)):
        np.testing.assert_allclose(to_numpy(p_t), p_pd.numpy(), **TOL["float64"])
        np.testing.assert_allclose(to_numpy(topt.state_dict()[f"{name}_beta2_pow_acc_0"]),
                                   _paddle_accumulator(popt, "beta2_pow_acc", p_pd),
                                   **TOL["float64"])


@needs_paddle
def test_named_optimizer_state_keys_match_paddle():
    init, grads = random_problem("float32", seed=7, steps=1)
    pp = paddle_params(init)
    tp = torch_params(init)
    popt = paddle.optimizer.Adam(0.01, parameters=pp, amsgrad=True, name="myopt")
    topt = triton_adam.Adam(0.01, parameters=tp, amsgrad=True, name="myopt")
    assert topt.state_dict() == {}
    paddle_step(pp, popt, grads[0])
    torch_step(tp, topt, grads[0])
    theirs = {k: v for k, v in popt.state_dict().items() if isinstance(v, paddle.Tensor)}
    ours = topt.state_dict()
    # Same keys once each side's parameter names are swapped in; Paddle's trailing counter
    # is process-wide, so the key stems (without it) are what must agree.
    stem = {f"param_{i}_": f"{p.name}_" for i, p in enumerate(pp)}

    def paddle_stem(key):
        for ours_prefix, theirs_prefix in stem.items():
            if key.startswith(ours_prefix):
                key = theirs_prefix + key[len(ours_prefix):]
        return key.rsplit("_", 1)[0]

    assert sorted(paddle_stem(k) for k in ours) == sorted(k.rsplit("_", 1)[0] for k in theirs)
    for key, value in ours.items():
        match = next(v for k, v in theirs.items() if k.rsplit("_", 1)[0] == paddle_stem(key))
        assert tuple(value.shape) == tuple(match.shape), key
        assert str(value.dtype).split(".")[-1] == str(match.dtype).split(".")[-1].lower(), key


# Section 10 of the spec: values printed by Paddle 3.3.1 (CPU, float64).
GOLDEN = {
    "adam": [[0.900000009999999, -1.9000000049999997, 2.900000003333333],
             [0.8000000199999987, -1.8000000100000002, 2.800000006666667],
             [0.7000000299999978, -1.700000015, 2.70000001]],
    "adam-wd": [[0.9000000090909083, -1.9000000045454544, 2.900000003030303],
                [0.8000248647864798, -1.8000121435427405, 2.8000080318664384],
                [0.7000913790784967, -1.700044550392022, 2.700029449456271]],
    "adamw-wd": [[0.8990000100223507, -1.8980000050447032, 2.897000003400388],
                 [0.7981010200324223, -1.7961020100820826, 2.794103006795075],
                 [0.697302929030228, -1.6943059131121463, 2.691308907184066]],
}


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_table(case):
    p = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, device=DEVICE, requires_grad=True)
    if case == "adam":
        opt = triton_adam.Adam(0.1, parameters=[p])
    elif case == "adam-wd":
        opt = triton_adam.Adam(0.1, parameters=[p], weight_decay=0.01)
    else:
        opt = triton_adam.AdamW(0.1, parameters=[p], weight_decay=0.01)
    for expected in GOLDEN[case]:
        p.grad = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, device=DEVICE)
        opt.step()
        np.testing.assert_allclose(to_numpy(p), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("amsgrad, expected", [
    (True, [0.7751268222174107, -1.7878522871863018, 2.769699565302782]),
    (False, [0.7750933109257331, -1.7878187758946242, 2.769666054012052]),
])
def test_golden_amsgrad(amsgrad, expected):
    p = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, device=DEVICE, requires_grad=True)
    opt = triton_adam.Adam(0.1, parameters=[p], amsgrad=amsgrad)
    for g in ([1.0, -1.0, 0.5], [0.0, 0.0, 0.0], [0.1, 0.1, 0.1]):
        p.grad = torch.tensor(g, dtype=torch.float64, device=DEVICE)
        opt.step()
    np.testing.assert_allclose(to_numpy(p), expected, rtol=1e-12, atol=1e-12)


@needs_paddle
@pytest.mark.parametrize("make_scheduler", [
    lambda mod: mod.StepDecay(0.05, step_size=3, gamma=0.5),
    lambda mod: mod.NoamDecay(d_model=64, warmup_steps=5, learning_rate=2.0),
], ids=["StepDecay", "NoamDecay"])
def test_scheduler_driven_run_matches_paddle(make_scheduler):
    """Each step uses the scheduler's current value; the user steps the scheduler."""
    init, grads = random_problem("float64", seed=11, steps=20)
    pp = paddle_params(init)
    tp = torch_params(init)
    psched, tsched = make_scheduler(paddle.optimizer.lr), make_scheduler(triton_adam.lr)
    popt = paddle.optimizer.Adam(psched, parameters=pp)
    topt = triton_adam.Adam(tsched, parameters=tp)
    assert topt.state_dict() == popt.state_dict()  # only 'LR_Scheduler' before a step
    lrs = set()
    for g in grads:
        assert topt.get_lr() == popt.get_lr()
        lrs.add(topt.get_lr())
        paddle_step(pp, popt, g)
        torch_step(tp, topt, g)
        psched.step()
        tsched.step()
    assert len(lrs) > 3  # the schedule really changed the learning rate
    assert topt.state_dict()["LR_Scheduler"] == popt.state_dict()["LR_Scheduler"]
    for p_pd, p_t in zip(pp, tp):
        np.testing.assert_allclose(to_numpy(p_t), p_pd.numpy(), **TOL["float64"])
