"""The optimizer's API: argument validation (as Paddle raises it), lr, grads, minimize, errors.

Optimizer tensors live on ``devices.DEVICE`` (``tests/devices.py``); the subprocess checks
(CPU tensors without the interpreter, imports) are the same in every mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import triton_adam
from devices import DEVICE, fma_tol, import_paddle, needs_paddle, to_numpy
from host_syncs import count_host_syncs

paddle = import_paddle()


def make_params(n=3, dtype=torch.float32):
    return [torch.randn(k + 2, dtype=dtype).to(DEVICE).requires_grad_() for k in range(n)]


def raised(fn):
    """The exception type ``fn`` raises (None if it returns)."""
    try:
        fn()
    except Exception as exc:  # the type is what is compared
        return type(exc)
    return None


def paddle_param():
    return paddle.create_parameter([3], dtype="float32")


# Bad constructor arguments; each must raise in ours what it raises in Paddle.
BAD_ARGS = {
    "beta1=1": dict(beta1=1.0),
    "beta1<0": dict(beta1=-0.1),
    "beta2=1.5": dict(beta2=1.5),
    "epsilon<0": dict(epsilon=-1e-8),
    "learning_rate int": dict(learning_rate=1),
    "learning_rate str": dict(learning_rate="0.1"),
    "learning_rate tensor": dict(learning_rate="tensor"),
}


@needs_paddle
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_arguments_raise_like_paddle(cls, case):
    kwargs = dict(BAD_ARGS[case])

    def build(mod, param):
        args = dict(kwargs)
        if args.get("learning_rate") == "tensor":
            args["learning_rate"] = (paddle.to_tensor([0.1]) if mod is paddle.optimizer
                                     else torch.tensor([0.1]))
        return getattr(mod, cls)(parameters=[param], **args)

    theirs = raised(lambda: build(paddle.optimizer, paddle_param()))
    ours = raised(lambda: build(triton_adam, make_params(1)[0]))
    assert theirs is not None
    assert ours is theirs


@needs_paddle
def test_parameters_errors_like_paddle():
    assert raised(lambda: triton_adam.Adam(0.1)) is raised(lambda: paddle.optimizer.Adam(0.1))
    assert raised(lambda: triton_adam.Adam(0.1, parameters=torch.zeros(2))) is raised(
        lambda: paddle.optimizer.Adam(0.1, parameters=paddle.zeros([2]))) is TypeError
    with pytest.raises(TypeError, match="dict"):
        triton_adam.Adam(0.1, parameters={"params": make_params(1)})
    with pytest.raises(ValueError, match="empty"):
        triton_adam.Adam(0.1, parameters=[])


@needs_paddle
def test_weight_decay_types():
    p = make_params(1)
    with pytest.raises(TypeError, match="weight_decay"):
        triton_adam.Adam(parameters=p, weight_decay="0.1")
    # AdamW takes a coefficient, not a regularizer object (Paddle: TypeError as well).
    assert raised(lambda: triton_adam.AdamW(parameters=p, weight_decay=triton_adam.L2Decay(
        0.1))) is raised(lambda: paddle.optimizer.AdamW(
            parameters=[paddle_param()], weight_decay=paddle.regularizer.L2Decay(0.1)))
    assert isinstance(triton_adam.Adam(parameters=p, weight_decay=1).regularization,
                      triton_adam.L2Decay)


def test_beta_tensor_must_have_one_element():
    with pytest.raises(TypeError, match="one element"):
        triton_adam.Adam(parameters=make_params(1),
                         beta1=torch.tensor([0.9, 0.9], device=DEVICE))
    with pytest.raises(ValueError, match="beta2"):
        triton_adam.Adam(parameters=make_params(1), beta2=torch.tensor([1.0], device=DEVICE))


def test_duplicate_parameter_is_an_error():
    p = make_params(1)[0]
    with pytest.raises(ValueError, match="more than once"):
        triton_adam.Adam(parameters=[p, p])


def test_non_contiguous_parameter_is_an_error():
    p = torch.randn(4, 3, device=DEVICE).t().requires_grad_()
    with pytest.raises(ValueError, match="not contiguous"):
        triton_adam.Adam(parameters=[p])


def test_set_and_get_lr():
    opt = triton_adam.Adam(0.1, parameters=make_params(1))
    assert opt.get_lr() == 0.1
    opt.set_lr(2)
    assert opt.get_lr() == 2.0 and isinstance(opt.get_lr(), float)
    with pytest.raises(TypeError):
        opt.set_lr(torch.tensor(0.1))
    with pytest.raises(TypeError):
        opt.set_lr_scheduler(0.1)


def test_set_lr_with_scheduler_is_a_runtime_error():
    sched = triton_adam.lr.StepDecay(0.1, step_size=2)
    opt = triton_adam.Adam(sched, parameters=make_params(1))
    assert opt.get_lr() == 0.1
    with pytest.raises(RuntimeError):
        opt.set_lr(0.2)


def test_clear_grad_zero_and_none():
    params = make_params(2)
    for p in params:
        p.grad = torch.ones_like(p)
    opt = triton_adam.Adam(parameters=params)
    opt.clear_grad()
    assert all(p.grad is not None and not p.grad.any() for p in params)
    opt.clear_grad(set_to_zero=False)
    assert all(p.grad is None for p in params)


def test_zero_grad_is_still_a_step():
    """After clear_grad() (zeros), a step decays the moments and moves the param."""
    p = torch.tensor([1.0, -2.0], device=DEVICE, requires_grad=True)
    opt = triton_adam.Adam(0.1, parameters=[p])
    p.grad = torch.tensor([1.0, 1.0], device=DEVICE)
    opt.step()
    opt.clear_grad()
    after_one = p.detach().clone()
    m1 = opt.state_dict()["param_0_moment1_0"].clone()
    opt.step()
    state = opt.state_dict()
    assert torch.allclose(state["param_0_moment1_0"], 0.9 * m1)
    assert not torch.equal(p.detach(), after_one)
    assert torch.allclose(state["param_0_beta1_pow_acc_0"].cpu(), torch.tensor([0.9 ** 3]))


def test_minimize_uses_existing_grads_and_does_not_backprop():
    params = make_params(2)
    opt = triton_adam.Adam(0.1, parameters=params)
    before = [p.detach().clone() for p in params]
    loss = sum((p * p).sum() for p in params)
    assert opt.minimize(loss) == ([], [])  # no grads yet: nothing happens
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    loss.backward()
    ops, pairs = opt.minimize(loss, no_grad_set=[params[1]])
    assert ops == [] and [p for p, _ in pairs] == [params[0]]
    assert not torch.equal(params[0].detach(), before[0])
    assert torch.equal(params[1].detach(), before[1])
    with pytest.raises(TypeError):
        opt.minimize(3.0)


def test_params_without_grad_or_frozen_are_untouched():
    params = make_params(3)
    params[2].requires_grad_(False)
    params[0].grad = torch.randn_like(params[0])
    params[2].grad = torch.randn_like(params[2])
    before = [p.detach().clone() for p in params]
    opt = triton_adam.Adam(0.1, parameters=params)
    opt.step()
    assert not torch.equal(params[0].detach(), before[0])
    assert torch.equal(params[1].detach(), before[1])
    assert torch.equal(params[2].detach(), before[2])
    assert set(opt.state_dict()) == {f"param_0_{a}_0" for a in (
        "moment1", "moment2", "beta1_pow_acc", "beta2_pow_acc")}


def test_bad_gradient_changes_nothing():
    """Every pair is validated before the first launch: no half-applied step."""
    params = make_params(1) + [torch.randn(3, 4, device=DEVICE, requires_grad=True)]
    params[0].grad = torch.randn_like(params[0])
    # 2-D sparse (sparse_dim 2): not the row-sparse gradient lazy mode takes
    params[1].grad = torch.randn_like(params[1]).to_sparse()
    before = [p.detach().clone() for p in params]
    opt = triton_adam.Adam(0.1, parameters=params)
    with pytest.raises(ValueError, match="row-sparse"):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert opt.state_dict() == {}


def run_steps(opt_factory, steps=3, dtype=torch.float32):
    torch.manual_seed(1)
    params = make_params(3, dtype)
    opt = opt_factory(params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return [p.detach() for p in params], opt.state_dict()


@pytest.mark.parametrize("flag", ["lazy_mode", "multi_precision"])
def test_flags_without_effect_on_dense_full_precision(flag):
    """lazy_mode with dense grads and multi_precision with fp32 params change nothing."""
    base = run_steps(lambda ps: triton_adam.Adam(0.1, parameters=ps))
    other = run_steps(lambda ps: triton_adam.Adam(0.1, parameters=ps, **{flag: True}))
    assert all(torch.equal(a, b) for a, b in zip(base[0], other[0]))
    assert base[1].keys() == other[1].keys()
    assert all(torch.equal(base[1][k], other[1][k]) for k in base[1])


def test_changing_lr_does_not_recompile():
    """The learning rate is a runtime argument: a new value each step, one compiled kernel.

    Under the interpreter nothing is compiled, so this inspects the JIT's specialization
    key in a subprocess without the interpreter: lr must not be a constexpr of the kernel.
    """
    from triton_adam.kernels import adam as K

    assert "lr" not in K.kernel_constexprs(amsgrad=False, coupled_decay=False,
                                           decoupled_decay=False)
    src = K._adam_kernel.fn if hasattr(K._adam_kernel, "fn") else K._adam_kernel
    import inspect

    sig = inspect.signature(src)
    assert "constexpr" not in str(sig.parameters["lr"].annotation)


def _run_python(code: str, env_overrides: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_cpu_tensors_without_interpreter_get_a_clear_error():
    result = _run_python("""
        import torch, triton_adam
        p = torch.zeros(3, requires_grad=True)
        p.grad = torch.ones(3)
        opt = triton_adam.Adam(0.1, parameters=[p])
        try:
            opt.step()
        except RuntimeError as e:
            print("ERROR:", e)
        print("unchanged:", bool((p == 0).all()))
    """, {})
    assert "TRITON_INTERPRET=1" in result.stdout, result.stderr
    assert "unchanged: True" in result.stdout


def test_import_touches_no_cuda_driver():
    result = _run_python("""
        import torch, triton
        import triton_adam, triton_adam.kernels.adam
        from triton.runtime import driver
        print("cuda initialized:", torch.cuda.is_initialized())
        print("triton driver created:", driver._default is not None or driver._active is not None)
    """, {})
    assert "cuda initialized: False" in result.stdout, result.stderr
    assert "triton driver created: False" in result.stdout, result.stderr


def test_no_top_level_kernels_module_installed():
    """Only ``triton_adam.kernels`` is installed: a PyPI package called ``kernels`` exists."""
    result = _run_python("""
        import importlib.util, os
        os.chdir("/")
        print("kernels found:", importlib.util.find_spec("kernels") is not None)
        print("ours found:", importlib.util.find_spec("triton_adam.kernels") is not None)
    """, {"PYTHONPATH": ""})
    assert "kernels found: False" in result.stdout, result.stderr
    assert "ours found: True" in result.stdout, result.stderr


def test_state_dict_empty_before_first_step_and_paddle_dtypes():
    params = make_params(1, torch.float64)
    opt = triton_adam.Adam(parameters=params, amsgrad=True)
    assert opt.state_dict() == {}
    params[0].grad = torch.randn_like(params[0])
    opt.step()
    state = opt.state_dict()
    assert all(v.dtype == torch.float64 for v in state.values())
    assert state["param_0_beta1_pow_acc_0"].shape == (1,)
    np.testing.assert_allclose(to_numpy(state["param_0_beta2_pow_acc_0"]), [0.999 ** 2])


def test_adamw_lr_ratio_matches_reference():
    """lr_ratio (Paddle: GPU only) scales both the decay and the update, per parameter."""
    from triton_adam import reference

    params = make_params(3, torch.float64)
    ratio = {id(p): r for p, r in zip(params, (0.5, 1.0, 3.0))}
    coeff = float(np.float32(0.1))  # Paddle's float32 attribute
    opt = triton_adam.AdamW(0.01, parameters=params, weight_decay=0.1, amsgrad=True,
                            lr_ratio=lambda p: ratio[id(p)])
    refs = [reference.init_state(p.cpu(), beta1=0.9, beta2=0.999, amsgrad=True) for p in params]
    tol = fma_tol(torch.float64, rtol=1e-12, atol=1e-12)
    for step in range(4):
        for i, p in enumerate(params):
            p.grad = torch.randn_like(p)
            refs[i] = reference.adam_step(refs[i], p.grad.cpu(), lr=0.01, beta1=0.9,
                                          beta2=0.999, epsilon=1e-8, lr_scale=ratio[id(p)],
                                          weight_decay=coeff)
        opt.step()
    for p, ref in zip(params, refs):
        torch.testing.assert_close(p.detach().cpu(), ref.param, **tol)
    state = opt.state_dict()
    for i, ref in enumerate(refs):
        torch.testing.assert_close(state[f"param_{i}_moment2_max_0"].cpu(), ref.moment2_max,
                                   **tol)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(amsgrad=True, weight_decay=triton_adam.L1Decay(0.01)),
    dict(beta1=torch.tensor([0.9]), beta2=torch.tensor([0.99]), epsilon=torch.tensor([1e-8])),
], ids=["adam", "amsgrad-l1", "tensor-hypers"])
@pytest.mark.parametrize("multi_tensor", [False, True], ids=["per-tensor", "multi-tensor"])
def test_step_makes_no_host_sync(monkeypatch, kwargs, multi_tensor):
    """Nothing in step() reads a tensor back to the host (each would stall a GPU); the
    multi-tensor path rebuilds its address table every step here (new grads each step)."""
    params = make_params(3)
    sched = triton_adam.lr.StepDecay(0.1, step_size=1)
    kwargs = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    opt = triton_adam.Adam(sched, parameters=params, per_tensor_launches=not multi_tensor, **kwargs)
    calls = []
    count_host_syncs(monkeypatch, calls)
    for _ in range(3):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    monkeypatch.undo()
    assert calls == []
