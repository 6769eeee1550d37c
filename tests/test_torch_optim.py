"""Does ``triton_adam.optim.Adam``/``AdamW`` behave as ``torch.optim.Adam``/``AdamW``?

* parity: every configuration of PyTorch's own ``OptimizerInfo`` inputs for Adam and AdamW
  (``torch.testing._internal.common_optimizers``: lr, weight decay, maximize, amsgrad,
  capturable, tensor lr, tensor betas), 100 steps, float32 and float64, against
  ``torch.optim.Adam``/``AdamW(foreach=False, fused=False)`` on the CPU; tolerances derived
  from the dtype below;
* the library's own paths are bitwise equal: capturable or not, one group or the same values
  in several, a tensor lr or the float of its value;
* the extras against references: master weights against a float64 run of the bf16 values,
  ``max_grad_norm`` against ``clip_grad_norm_`` + ``torch.optim.AdamW``, ``lazy_sparse``
  against a float64 update of the rows present;
* live ``param_groups``: schedulers (lr, and OneCycleLR's betas), options set by hand,
  ``add_param_group``, a parameter whose first step comes after its betas changed;
* capture (simulated on the CPU), AMP's device flag and scale, no host sync in ``step()``,
  ``zero_grad``, the closure, and clear errors for bad arguments (nothing changed after one).

**Tolerances** (``_tolerances``), for ``n`` steps in a dtype of unit roundoff ``u``
(``2**-24`` float32, ``2**-53`` float64). Both sides round every operation, so they differ by
roundings, and by one systematic thing: torch computes the bias corrections ``1 - beta**t`` in
float64 from the Python betas, and the coefficients ``1 - beta`` in float64 before rounding
them, while the kernels compute ``beta**t`` in the compute dtype from the beta rounded to it
(square-and-multiply: relative error <= ``2 t u``, ``t u`` of it from the rounded beta) and
``1 - beta`` from the rounded beta.
Since ``1 - beta**t >= t (1 - beta) beta**t``, the relative error of ``1 - beta**t`` is at most
``2u / (1 - beta)``, and that of ``1 - beta`` at most ``u / (1 - beta)``: per step the update
``lr * m_hat / (sqrt(v_hat) + eps)`` moves, relative to itself, by at most
``3u / (1 - b1) + 2u / (1 - b2)`` (the square root halves ``b2``'s terms), plus the rounding of
the moments: ``m``'s absolute error is a few ``u * |g|``, divided by ``sqrt(v_hat) >=
sqrt(1 - b2) |g|`` and by ``1 - b1**t >= 1 - b1``. The update itself is at most
``R * lr`` with ``R = max(1, (1 - b1) / sqrt(1 - b2))`` (Kingma & Ba, section 2.1). Hence::

    |p - p_torch| <= n * lr * (R (3u/(1-b1) + 2u/(1-b2)) + 4u / ((1-b1) sqrt(1-b2)))
                     + 2 n u |p|                       (each step rounds p once, both sides)

For the defaults in float32 that is ``atol`` 4.6e-5 after 100 steps at ``lr=1e-3``; in
float64 1e-13. A wrong term is far above either: a missing decay of 0.1 moves ``p`` by 1e-2
over 100 steps, a bias correction off by one step by more than the update, torch's epsilon
placement swapped for Paddle's by 1e-9 in float64. Moments: ``m`` and ``v`` are exponential
averages, whose rounding errors decay geometrically, so their relative error stays below
``4u / (1 - b) + 4u min(n, 1 / (1 - b))`` (the first term: the rounded ``1 - b``), absolute
in units of ``max |g|`` (``m``) and ``max g**2`` (``v``). In CUDA mode ``fma_tol`` raises
these to its floor (tests/devices.py).
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from devices import DEVICE, fma_tol
from host_syncs import count_host_syncs
from triton_adam import backend, optim

STEPS = 100


# ------------------------------------------------------------------------------ helpers
def _tolerances(dtype: torch.dtype, steps: int, lr: float, beta1: float, beta2: float,
                grad_max: float) -> dict[str, dict[str, float]]:
    """Per compared quantity, ``dict(rtol=, atol=)`` (the derivation: module docstring)."""
    u = torch.finfo(dtype).eps / 2
    r = max(1.0, (1 - beta1) / math.sqrt(1 - beta2))
    per_update = (r * (3 * u / (1 - beta1) + 2 * u / (1 - beta2))
                  + 4 * u / ((1 - beta1) * math.sqrt(1 - beta2)))
    param = fma_tol(dtype, rtol=2 * steps * u, atol=steps * lr * per_update)

    def moment(beta: float, scale: float) -> dict[str, float]:
        rel = 4 * u / (1 - beta) + 4 * u * min(steps, 1 / (1 - beta))
        return fma_tol(dtype, rtol=rel, atol=rel * scale)

    return {"param": param, "exp_avg": moment(beta1, grad_max),
            "exp_avg_sq": moment(beta2, grad_max ** 2),
            "max_exp_avg_sq": moment(beta2, grad_max ** 2)}


def _value(x: float | torch.Tensor) -> float:
    return float(x.reshape(())) if isinstance(x, torch.Tensor) else float(x)


def _optimizer_info_configs(name: str) -> list[tuple[str, dict]]:
    """PyTorch's own test inputs of ``torch.optim.<name>`` (``OptimizerInfo``): the kwargs
    of every configuration it tests, capturable ones included (asking as for CUDA only
    selects which configurations are listed: the kwargs hold CPU tensors)."""
    # ~10 s of imports (torch's test suite): only here.
    from torch.testing._internal.common_optimizers import optim_db

    info = next(o for o in optim_db if o.optim_cls.__name__ == name)
    return [(i.desc, dict(i.kwargs)) for i in info.optim_inputs_func(device="cuda")]


def _map_tensors(kwargs: dict, fn) -> dict:
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            value = fn(value)
        elif isinstance(value, tuple):
            value = tuple(fn(v) if isinstance(v, torch.Tensor) else v for v in value)
        out[key] = value
    return out


def _assert_state_close(ours: dict, ref: dict, tol: dict, what: str) -> None:
    assert set(ours) == set(ref), what
    assert float(ours["step"]) == float(ref["step"]), what
    for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if name in ref:
            torch.testing.assert_close(ours[name].cpu(), ref[name], **tol[name],
                                       msg=lambda m, n=name: f"{what}: {n}: {m}")


def _grads(params, gen, scale=1.0):
    """Fresh gradients (drawn in float64 on the CPU, the same values in every mode)."""
    out = []
    for p in params:
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
        out.append(g.to(p.dtype))
    return out


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.to(DEVICE)


def _params(shapes, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE)
            .requires_grad_() for s in shapes]


def _twins(params):
    """CPU float copies for a torch reference."""
    return [p.detach().cpu().clone().requires_grad_() for p in params]


def _step_both(ours, opt, refs, ref_opt, gen, scale=1.0):
    grads = _grads(ours, gen, scale)
    _set_grads(ours, grads)
    for r, g in zip(refs, grads):
        r.grad = g.clone()
    opt.step()
    ref_opt.step()


F64 = fma_tol(torch.float64, rtol=1e-12, atol=1e-13)  # short float64 runs (~1e-15 measured)


# -------------------------------------------------------------------- parity, 100 steps
SIZES = [(17,), (3, 5), (1,), (2, 9)]  # odd sizes, one tensor each per configuration


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_matches_torch_for_every_optimizer_info_config(name):
    """One of our optimizers per optimizer-wide switch (amsgrad, capturable), one parameter
    group per configuration, each group holding a float32 and a float64 parameter; against
    one torch optimizer per configuration and dtype (CPU, foreach=False, fused=False,
    capturable=False: the same math). A float64 reference gets tensor lr/betas converted to
    float64 (torch computes ``1 - beta ** t`` in the beta tensor's dtype; the values are the
    float32 tensor's, which is what the kernels read)."""
    ours_cls, torch_cls = getattr(optim, name), getattr(torch.optim, name)
    configs = _optimizer_info_configs(name)
    assert len(configs) >= 10  # lr, decay, maximize, amsgrad, capturable, tensor lr/betas
    gen = torch.Generator().manual_seed(1)
    runs = []  # (our optimizer, [(desc, [(our param, ref param, ref optimizer, kw)])])
    count = 0
    by_switch: dict[tuple[bool, bool], list[tuple[str, dict]]] = {}
    for desc, kw in configs:
        key = (kw.pop("amsgrad", False), kw.pop("capturable", False))
        by_switch.setdefault(key, []).append((desc, kw))
    for (amsgrad, capturable), entries in by_switch.items():
        groups, checks = [], []
        for desc, kw in entries:
            size = SIZES[count % len(SIZES)]
            count += 1
            params = [torch.randn(size, generator=gen, dtype=torch.float64).to(dtype)
                      .to(DEVICE).requires_grad_() for dtype in (torch.float32, torch.float64)]
            groups.append({"params": params,
                           **_map_tensors(kw, lambda t: t.clone().to(DEVICE))})
            refs = []
            for p in params:
                ref = p.detach().cpu().clone().requires_grad_()
                ref_kw = _map_tensors(kw, lambda t, d=p.dtype: t.clone().to(d))
                ref_opt = torch_cls([ref], amsgrad=amsgrad, foreach=False, fused=False,
                                    capturable=False, **ref_kw)
                refs.append((p, ref, ref_opt, kw))
            checks.append((f"{desc} (amsgrad={amsgrad}, capturable={capturable})", refs))
        opt = ours_cls(groups, amsgrad=amsgrad, capturable=capturable)
        runs.append((opt, checks))

    grad_max = 0.0
    for _ in range(STEPS):
        for opt, checks in runs:
            for _, refs in checks:
                for p, ref, ref_opt, _ in refs:
                    g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                    grad_max = max(grad_max, float(g.abs().max()))
                    p.grad = g.to(p.dtype).to(DEVICE)
                    ref.grad = g.to(p.dtype)
                    ref_opt.step()
            opt.step()

    for opt, checks in runs:
        for desc, refs in checks:
            for p, ref, ref_opt, kw in refs:
                betas = kw.get("betas", (0.9, 0.999))
                tol = _tolerances(p.dtype, STEPS, _value(kw.get("lr", 1e-3)),
                                  _value(betas[0]), _value(betas[1]), grad_max)
                what = f"{name} {desc} {p.dtype}"
                torch.testing.assert_close(p.detach().cpu(), ref.detach(), **tol["param"],
                                           msg=lambda m, w=what: f"{w}: param: {m}")
                _assert_state_close(opt.state[p], ref_opt.state[ref], tol, what)


# ------------------------------------------------------------- the library's own paths
def test_capturable_groups_and_tensor_lr_paths_are_bitwise_equal():
    """The same run four ways: the plain optimizer; capturable=True; the same options in one
    group per parameter; the learning rate as a tensor on the parameters' device. A learning
    rate changed mid-run too. Every parameter and state tensor is bitwise equal."""
    shapes = [(17,), (3, 5), (1,)]
    options = dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    runs = []
    for way in ("plain", "capturable", "groups", "tensor lr"):
        params = _params(shapes, torch.float32)
        if way == "groups":
            opt = optim.AdamW([{"params": [p]} for p in params], lr=0.01, amsgrad=True,
                              **options)
        elif way == "tensor lr":
            opt = optim.AdamW(params, lr=torch.tensor(0.01, device=DEVICE), amsgrad=True,
                              **options)
        else:
            opt = optim.AdamW(params, lr=0.01, amsgrad=True, capturable=way == "capturable",
                              **options)
        runs.append((way, params, opt))
    for step in range(4):
        grads = _grads(runs[0][1], torch.Generator().manual_seed(step))
        for way, params, opt in runs:
            if step == 2:  # a scheduler-like change of the rate
                for group in opt.param_groups:
                    if isinstance(group["lr"], torch.Tensor):
                        group["lr"].fill_(0.003)
                    else:
                        group["lr"] = 0.003
            _set_grads(params, grads)
            opt.step()
    _, base_params, base = runs[0]
    for way, params, opt in runs[1:]:
        for p, q in zip(base_params, params):
            assert torch.equal(p, q), way
            for key, value in base.state[p].items():
                assert torch.equal(value.cpu(), opt.state[q][key].cpu()), (way, key)


# ------------------------------------------------------------------------------ extras
def test_master_weights_follow_a_float64_run_of_the_bf16_values():
    """bf16 parameters: with master weights the fp32 master follows a float64 run from the
    same bf16 start (torch.optim.AdamW in float64) to float32 precision, and the parameter
    is the master rounded to bf16; without them the updates (1e-3, below half a bf16 ulp of
    values near 1) are lost in the rounding and the parameter drifts from the run."""
    steps, lr = 30, 1e-3
    start = (torch.rand(33, generator=torch.Generator().manual_seed(0)) + 0.5).bfloat16()
    with_master = start.clone().to(DEVICE).requires_grad_()
    without = start.clone().to(DEVICE).requires_grad_()
    opt_m = optim.AdamW([with_master], lr=lr, master_weights=True)
    opt_n = optim.AdamW([without], lr=lr)
    ref = start.double().requires_grad_()
    ref_opt = torch.optim.AdamW([ref], lr=lr, foreach=False)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        g = torch.randn(33, generator=gen, dtype=torch.float64)
        with_master.grad = g.bfloat16().to(DEVICE)
        without.grad = g.bfloat16().to(DEVICE)
        ref.grad = g.bfloat16().double()  # the same bf16 gradient values
        opt_m.step()
        opt_n.step()
        ref_opt.step()
    master = opt_m.state[with_master]["master"]
    assert master.dtype == torch.float32 and "master" not in opt_n.state[without]
    # float32 arithmetic over 30 steps (the module docstring's bound, float32).
    tol = _tolerances(torch.float32, steps, lr, 0.9, 0.999, 4.0)["param"]
    torch.testing.assert_close(master.cpu().double(), ref.detach(), **tol)
    assert torch.equal(with_master.detach(), master.to(torch.bfloat16))
    # Without master weights the parameter is more than an update away from the run.
    assert (without.detach().cpu().double() - ref.detach()).abs().max() > lr


def test_max_grad_norm_matches_clip_grad_norm_then_torch_adamw():
    """``max_grad_norm`` against ``torch.nn.utils.clip_grad_norm_`` + ``torch.optim.AdamW``
    (float64), with steps above and below the norm: the gradient norm is reported as a
    device tensor, the gradients themselves are not modified. torch divides by
    ``norm + 1e-6``, the kernels by ``max(norm, max_norm)``: per clipped step the scales
    differ by a relative ``1e-6 / norm <= 1e-6``, and so does the update (at most ``R * lr``,
    R = 3.2 for the default betas): tolerance ``steps * lr * R * 2e-6``."""
    max_norm, lr, steps = 1.0, 0.01, 6
    params = _params([(17,), (3, 5)])
    refs = _twins(params)
    unclipped = _twins(params)
    opt = optim.AdamW(params, lr=lr, max_grad_norm=max_norm)
    ref_opt = torch.optim.AdamW(refs, lr=lr, foreach=False)
    unclipped_opt = torch.optim.AdamW(unclipped, lr=lr, foreach=False)
    assert opt.grad_norm is None  # no clipped step yet
    gen = torch.Generator().manual_seed(3)
    for step in range(steps):
        scale = 5.0 if step % 2 == 0 else 0.05  # norms ~28 (clipped) and ~0.3 (not)
        grads = _grads(params, gen, scale)
        _set_grads(params, grads)
        for r, u, g in zip(refs, unclipped, grads):
            r.grad, u.grad = g.clone(), g.clone()
        total = torch.nn.utils.clip_grad_norm_(refs, max_norm)
        opt.step()
        ref_opt.step()
        unclipped_opt.step()
        assert opt.grad_norm.device == params[0].device and opt.grad_norm.dim() == 0
        torch.testing.assert_close(opt.grad_norm.cpu(), total, rtol=1e-12, atol=0)
        for p, g in zip(params, grads):
            assert torch.equal(p.grad.cpu(), g)  # not clipped in place
    tol = fma_tol(torch.float64, rtol=1e-12, atol=steps * lr * 3.2 * 2e-6)
    for p, r in zip(params, refs):
        torch.testing.assert_close(p.detach().cpu(), r.detach(), **tol)
    # The clipping mattered: the run without it is far outside the tolerance.
    assert max((p.detach().cpu() - u.detach()).abs().max() for p, u in
               zip(params, unclipped)) > 1e3 * tol["atol"]
    assert opt.max_grad_norm == max_norm
    opt.max_grad_norm = None  # settable: no clipping from the next step on
    assert opt.grad_norm is None
    with pytest.raises(ValueError, match="max_grad_norm must be a positive finite"):
        opt.max_grad_norm = -1.0


def test_lazy_sparse_updates_only_the_rows_present():
    """``lazy_sparse=True``: a sparse gradient (duplicate rows summed) updates only its rows,
    with torch's AdamW math on those rows (float64 reference written here) and the step count
    of the whole tensor; other rows keep their values and moments. Without it a sparse
    gradient raises torch's error and changes nothing."""
    rows, width, lr, wd, b1, b2, eps = 7, 3, 0.05, 0.1, 0.9, 0.999, 1e-8
    table = _params([(rows, width)])[0]
    opt = optim.AdamW([table], lr=lr, weight_decay=wd, lazy_sparse=True)
    p = table.detach().cpu().clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    gen = torch.Generator().manual_seed(4)
    steps = [torch.tensor([[0, 3, 3, 5]]), torch.tensor([[5, 1]]), torch.tensor([[6, 0, 6]])]
    for t, ids in enumerate(steps, start=1):
        values = torch.randn(ids.shape[1], width, generator=gen, dtype=torch.float64)
        table.grad = torch.sparse_coo_tensor(ids, values, (rows, width),
                                             check_invariants=True).to(DEVICE)
        before_m, before_v = m.clone(), v.clone()
        dense = torch.zeros(rows, width, dtype=torch.float64).index_add_(0, ids[0], values)
        present = sorted(set(ids[0].tolist()))
        for r in present:
            g = dense[r]
            p[r] *= 1 - lr * wd
            m[r] = b1 * m[r] + (1 - b1) * g
            v[r] = b2 * v[r] + (1 - b2) * g * g
            denom = v[r].sqrt() / math.sqrt(1 - b2 ** t) + eps
            p[r] -= lr / (1 - b1 ** t) * m[r] / denom
        opt.step()
        state = opt.state[table]
        torch.testing.assert_close(table.detach().cpu(), p, **F64)
        torch.testing.assert_close(state["exp_avg"].cpu(), m, **F64)
        torch.testing.assert_close(state["exp_avg_sq"].cpu(), v, **F64)
        absent = [r for r in range(rows) if r not in present]
        assert torch.equal(state["exp_avg"].cpu()[absent], before_m[absent])
        assert torch.equal(state["exp_avg_sq"].cpu()[absent], before_v[absent])
        assert float(state["step"]) == t

    dense_opt = optim.Adam([table], lr=lr)
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.ones(
        1, width, dtype=torch.float64), (rows, width), check_invariants=True).to(DEVICE)
    before = table.detach().clone()
    with pytest.raises(RuntimeError, match="Adam does not support sparse gradients.*"
                                           "lazy_sparse=True"):
        dense_opt.step()
    assert torch.equal(table.detach(), before) and not dense_opt.state


# ------------------------------------------------------------------------- live groups
def test_schedulers_drive_lr_and_betas_as_in_torch():
    """OneCycleLR (lr and beta1 at every step) and CosineAnnealingLR in two groups, a
    parameter whose first gradient comes after its betas changed, and LambdaLR on a tensor
    lr (changed in place by the scheduler): float64, against torch."""
    params = _params([(17,), (3, 5), (1,)])
    refs = _twins(params)
    opt = optim.AdamW([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], lr=0.01)
    ref_opt = torch.optim.AdamW([{"params": refs[:2]}, {"params": refs[2:], "lr": 0.02}],
                                lr=0.01, foreach=False)
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=[0.05, 0.03], total_steps=12)
              for o in (opt, ref_opt)]
    tensor_p = _params([(2, 9)])
    tensor_ref = _twins(tensor_p)
    opt_t = optim.Adam(tensor_p, lr=torch.tensor(0.01, dtype=torch.float64, device=DEVICE))
    ref_t = torch.optim.Adam(tensor_ref, lr=torch.tensor(0.01, dtype=torch.float64),
                             foreach=False)
    lambdas = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 / (s + 1))
               for o in (opt_t, ref_t)]
    gen = torch.Generator().manual_seed(5)
    for step in range(8):
        late = params[1]  # no gradient before step 3: its betas changed meanwhile
        grads = _grads(params, gen)
        _set_grads(params, grads)
        for r, g in zip(refs, grads):
            r.grad = g.clone()
        if step < 3:
            late.grad, refs[1].grad = None, None
        opt.step()
        ref_opt.step()
        _step_both(tensor_p, opt_t, tensor_ref, ref_t, gen)
        for s in scheds + lambdas:
            s.step()
    assert opt.param_groups[0]["betas"] == ref_opt.param_groups[0]["betas"] != (0.9, 0.999)
    for p, r in zip(params + tensor_p, refs + tensor_ref):
        torch.testing.assert_close(p.detach().cpu(), r.detach(), **F64)
    assert float(opt.state[params[1]]["step"]) == 5


def test_options_set_by_hand_and_add_param_group_take_effect_as_in_torch():
    """eps, weight_decay, maximize, betas, decoupled_weight_decay changed between steps, and a
    group added mid-run, on Adam: float64, against torch.optim.Adam."""
    params = _params([(17,), (3, 5), (1,)])
    refs = _twins(params)
    opt = optim.Adam(params[:2], lr=0.01, weight_decay=0.1)
    ref_opt = torch.optim.Adam(refs[:2], lr=0.01, weight_decay=0.1, foreach=False)
    gen = torch.Generator().manual_seed(6)
    for step in range(8):
        if step == 2:
            for o, ps in ((opt, params), (ref_opt, refs)):
                o.add_param_group({"params": [ps[2]], "lr": 0.03, "betas": (0.8, 0.9)})
        if step == 4:
            for o in (opt, ref_opt):
                o.param_groups[0]["eps"] = 1e-3
                o.param_groups[0]["weight_decay"] = 0.5
                o.param_groups[0]["decoupled_weight_decay"] = True
                o.param_groups[1]["maximize"] = True
                o.param_groups[1]["betas"] = (0.5, 0.7)
        active = params if step >= 2 else params[:2]
        _step_both(active, opt, refs[:len(active)], ref_opt, gen)
    for p, r in zip(params, refs):
        torch.testing.assert_close(p.detach().cpu(), r.detach(), **F64)
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.03


def test_a_bad_group_option_raises_at_the_step_and_changes_nothing():
    params = _params([(17,)])
    opt = optim.AdamW(params, lr=0.01)
    _set_grads(params, _grads(params, torch.Generator().manual_seed(0)))
    opt.step()
    before = params[0].detach().clone()
    state = {k: v.clone() for k, v in opt.state[params[0]].items()}
    for key, value, error, match in [
            ("lr", -1.0, ValueError, r"Invalid learning rate: -1.0 \(param_groups\[0\]\['lr'\]"),
            ("lr", "fast", TypeError, r"param_groups\[0\]\['lr'\] must be a float"),
            ("betas", (0.9, 1.0), ValueError, "Invalid beta parameter at index 1"),
            ("betas", (0.9,), TypeError, r"\['betas'\] must be a pair"),
            ("eps", float("nan"), ValueError, "Invalid epsilon value"),
            ("weight_decay", -0.1, ValueError, "Invalid weight_decay value"),
            ("amsgrad", True, ValueError, "amsgrad is the same for every group"),
            ("capturable", True, ValueError, "capturable is the same for every group"),
            ("maximize", "yes", TypeError, r"\['maximize'\] must be a bool")]:
        good = opt.param_groups[0][key]
        opt.param_groups[0][key] = value
        with pytest.raises(error, match=match):
            opt.step()
        opt.param_groups[0][key] = good
        assert torch.equal(params[0].detach(), before), key
        for k, v in opt.state[params[0]].items():
            assert torch.equal(v, state[k]), (key, k)
    opt.param_groups[0]["params"].append(_params([(3,)])[0])
    with pytest.raises(RuntimeError, match="add parameters with add_param_group"):
        opt.step()


# ------------------------------------------------------------------- capture, AMP, syncs
def test_capturable_steps_under_a_simulated_capture(monkeypatch):
    """A capturable optimizer's step after an eager warm-up runs while a capture is reported
    (CPU: the capture query patched, the launches run): a tensor lr copy is allowed, a new
    float lr or new betas are refused before anything changes (they would be recorded)."""
    params = _params([(17,), (3, 5)])
    lr = torch.tensor(0.01, dtype=torch.float64, device=DEVICE)
    opt = optim.AdamW([{"params": params[:1], "lr": lr}, {"params": params[1:]}],
                      lr=0.02, capturable=True)
    with pytest.raises(ValueError, match="capturable is the same for every group"):
        opt.add_param_group({"params": _params([(3,)]), "capturable": False})
    gen = torch.Generator().manual_seed(7)
    _set_grads(params, _grads(params, gen))
    opt.step()  # eager warm-up
    state = {"on": True}
    monkeypatch.setattr(backend, "capturing", lambda devices: state["on"])
    lr.fill_(0.005)  # read on the device at each replay: fine during capture
    before = [p.detach().clone() for p in params]
    opt.step()
    assert not any(torch.equal(p, b) for p, b in zip(params, before))
    for key, value in (("lr", 0.03), ("betas", (0.5, 0.9))):
        old = opt.param_groups[1][key]
        opt.param_groups[1][key] = value
        before = [p.detach().clone() for p in params]
        with pytest.raises(RuntimeError, match="captured"):
            opt.step()
        assert all(torch.equal(p, b) for p, b in zip(params, before)), key
        opt.param_groups[1][key] = old
    state["on"] = False
    opt.param_groups[1]["lr"] = 0.03
    opt.step()  # eager again: the new rate is written


def test_amp_scale_and_overflow_flag_are_consumed_on_the_device():
    """GradScaler's fused protocol: ``grad_scale`` divides the gradients inside the kernels
    (a power of two: bitwise the unscaled run), ``found_inf`` set skips the step (params,
    moments and step count unchanged)."""
    assert optim.AdamW._step_supports_amp_scaling
    a, b = _params([(17,), (3, 5)]), _params([(17,), (3, 5)])
    opt_a, opt_b = optim.AdamW(a, lr=0.01), optim.AdamW(b, lr=0.01)
    grads = _grads(a, torch.Generator().manual_seed(8))
    _set_grads(a, grads)
    _set_grads(b, [g * 8 for g in grads])
    opt_a.step()
    opt_b.grad_scale = torch.full((1,), 8.0, device=DEVICE)
    opt_b.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    opt_b.found_inf = torch.ones(1, device=DEVICE)
    before = [q.detach().clone() for q in b]
    opt_b.step()
    assert all(torch.equal(q, x) for q, x in zip(b, before))
    assert float(opt_b.state[b[0]]["step"]) == 1
    opt_b.grad_scale = torch.full((2,), 8.0, device=DEVICE)
    with pytest.raises(TypeError, match="grad_scale must be a 1-element tensor"):
        opt_b.step()


def test_step_makes_no_host_sync(monkeypatch):
    """After a warm-up, steps with schedulers changing the rate and the betas at every step,
    a tensor learning rate, AMP's loss scale and global-norm clipping read nothing back from
    the device and copy nothing from the host blocking (tests/host_syncs.py)."""
    params = _params([(17,), (3, 5)], torch.float32)
    opt = optim.AdamW([{"params": params[:1]},
                       {"params": params[1:], "lr": torch.tensor(0.02, device=DEVICE)}],
                      lr=0.01, amsgrad=True, max_grad_norm=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.05, 0.05], total_steps=20)
    opt.grad_scale = torch.full((1,), 4.0, device=DEVICE)
    _set_grads(params, _grads(params, torch.Generator().manual_seed(9)))
    opt.step()
    sched.step()
    calls: list[str] = []
    count_host_syncs(monkeypatch, calls)
    for _ in range(3):
        opt.step()
        sched.step()
        opt.param_groups[1]["eps"] = opt.param_groups[1]["eps"] * 2  # a reconfigure too
    monkeypatch.undo()
    assert calls == []
    assert opt.grad_norm is not None


# --------------------------------------------------------------------- torch's API
def test_zero_grad_closure_hooks_and_groups_as_in_torch():
    params = _params([(17,), (3, 5)])
    opt = optim.AdamW(params, lr=0.01)
    ref = torch.optim.AdamW(_twins(params), lr=0.01)
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt, optim.Adam)
    assert opt.param_groups[0].keys() == ref.param_groups[0].keys()
    assert opt.param_groups[0]["decoupled_weight_decay"] is True
    assert not opt.state and len(opt.state) == 0 and params[0] not in opt.state
    assert opt.state[params[0]] == {}

    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))

    def closure():
        assert torch.is_grad_enabled()
        opt.zero_grad()
        loss = sum((p * p).sum() for p in params)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and seen == ["pre", "post"]
    assert opt.state and len(opt.state) == 2 and params[1] in opt.state
    assert set(opt.state[params[0]]) == {"step", "exp_avg", "exp_avg_sq"}
    assert [id(p) for p in opt.state] == [id(p) for p in params]
    grads = [p.grad for p in params]
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(params, grads))
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    with pytest.raises(TypeError, match="cannot be pickled or copied"):
        pickle.dumps(opt)
    with pytest.raises(TypeError, match="cannot be pickled or copied"):
        copy.deepcopy(opt)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lr=-0.1), ValueError, "Invalid learning rate: -0.1"),
    (dict(lr="0.1"), TypeError, r"\['lr'\] must be a float"),
    (dict(lr=True), TypeError, r"\['lr'\] must be a float"),
    (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor .*lr.* must be 1-element"),
    (dict(lr=torch.tensor(1, dtype=torch.int64)), TypeError, "must be a floating tensor"),
    (dict(betas=(1.0, 0.999)), ValueError, "Invalid beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, -0.1)), ValueError, "Invalid beta parameter at index 1"),
    (dict(betas=0.9), TypeError, "must be a pair"),
    (dict(eps=-1e-8), ValueError, "Invalid epsilon value"),
    (dict(weight_decay=-0.1), ValueError, "Invalid weight_decay value"),
    (dict(weight_decay=None), TypeError, r"\['weight_decay'\] must be a float"),
    (dict(amsgrad=1), TypeError, "amsgrad must be a bool"),
    (dict(differentiable=True), ValueError, "differentiable=True is not supported"),
    (dict(fused=True, foreach=True), RuntimeError, "cannot be `True` together"),
    (dict(fused="yes"), TypeError, "fused must be a bool"),
    (dict(max_grad_norm=0.0), ValueError, "max_grad_norm must be a positive finite"),
    (dict(max_grad_norm="1"), TypeError, "max_grad_norm must be a positive float"),
    (dict(master_weights=None), TypeError, "master_weights must be a bool"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        optim.AdamW(_params([(3,)]), **kwargs)


def test_bad_params_and_groups_raise_clear_errors():
    p = _params([(3,)])[0]
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(TypeError, match="param_groups.0..'params'..0. has dtype torch.int64"):
        optim.Adam([torch.zeros(3, dtype=torch.int64, device=DEVICE)])
    with pytest.raises(TypeError, match="parameter 'head.w' has dtype torch.int64"):
        optim.Adam([("w", p), ("head.w", torch.zeros(3, dtype=torch.int64, device=DEVICE))])
    with pytest.raises(ValueError, match="amsgrad is the same for every group"):
        optim.Adam([{"params": [p], "amsgrad": True}])
    with pytest.raises(ValueError, match="master_weights is an option of the whole optimizer"):
        optim.Adam([{"params": [p], "master_weights": True}])
    opt = optim.Adam([p], lr=0.01)
    q = _params([(4,)])[0]
    for group, error, match in [
            ({"params": [q], "lr": -1.0}, ValueError, "Invalid learning rate"),
            ({"params": [q], "betas": (0.9, 2.0)}, ValueError, "Invalid beta parameter"),
            ({"params": [p]}, ValueError, "more than one parameter group"),
            ({"params": [torch.zeros(2, dtype=torch.int32, device=DEVICE)]}, TypeError,
             "dtype torch.int32")]:
        with pytest.raises(error, match=match):
            opt.add_param_group(group)
        assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [q], "lr": 0.5})  # still works after the failures
    assert len(opt.param_groups) == 2 and opt.engine.lr_slots == 2
