"""The engine alone: a step through ``triton_adam.engine`` with plain accumulator names, and
the layering of the package (the engine knows no front end; no import cycle), read from the
sources."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch

from devices import DEVICE, fma_tol
from triton_adam import reference
from triton_adam.engine import ACCUMULATORS, Engine, NormClip, ParamConfig, ValueClip
from triton_adam.kernels import adam as K

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "triton_adam"
KERNELS = ROOT / "kernels"

# The engine and what it is built from: none of these may import a front-end module.
ENGINE_MODULES = {"engine", "buckets", "clip_plan", "dtensor", "backend", "reference",
                  "reference_clip"}
FRONT_END_MODULES = {"optimizer", "state", "io", "param_attr", "param_groups", "lr", "clip",
                     "regularizer", "distributed", "demo", "__main__", "optim", "torch_state"}


def _module_imports() -> dict[str, set[str]]:
    """``module -> modules of the package it imports`` (``kernels.x`` for the kernels)."""
    graph: dict[str, set[str]] = {}
    files = [(p.stem, p) for p in PACKAGE.glob("*.py")]
    files += [(f"kernels.{p.stem}", p) for p in KERNELS.glob("*.py")]
    for name, path in files:
        deps = set()
        package = "kernels" if name.startswith("kernels.") else ""
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: only the kernels use them
                    base = package
                    target = f"{base}.{node.module}" if node.module else base
                    deps |= ({target} if node.module else
                             {f"{base}.{a.name}" for a in node.names})
                elif node.module and node.module.startswith("triton_adam"):
                    mod = node.module.removeprefix("triton_adam").lstrip(".")
                    if mod:
                        deps.add(mod)
                    else:
                        deps |= {a.name for a in node.names}
                    if mod == "kernels":
                        deps |= {f"kernels.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("triton_adam."):
                        deps.add(a.name.removeprefix("triton_adam."))
        graph[name] = {d for d in deps if d != "kernels" and d != name}
    return graph


def test_the_engine_imports_no_front_end_module():
    graph = _module_imports()
    for module in ENGINE_MODULES:
        assert module in graph, module
        assert not graph[module] & FRONT_END_MODULES, (module, graph[module] & FRONT_END_MODULES)
    for module in [m for m in graph if m.startswith("kernels.")]:
        assert all(d.startswith("kernels.") for d in graph[module]), (module, graph[module])


def test_no_import_cycle_in_the_package():
    graph = _module_imports()
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                pytest.fail(f"import cycle: {' -> '.join(path + [module, dep])}")
            if dep not in state:
                visit(dep, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_no_module_touches_another_modules_private_names():
    """``from x import _name`` and ``x._name`` across modules of the package."""
    offenders = []
    for path in list(PACKAGE.glob("*.py")) + list(KERNELS.glob("*.py")):
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (
                    node.module or "").startswith("triton_adam")):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        offenders.append(f"{path.name}: from {node.module} import {a.name}")
                    aliases.add(a.asname or a.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                offenders.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert offenders == []


# ---------------------------------------------------------------------- a step, engine only
def _params(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(K.BLOCK_SIZE + 1,), (17,), (3, 5)]
    return [torch.randn(s, generator=gen, dtype=dtype).to(DEVICE) for s in shapes]


@pytest.mark.parametrize("multi_tensor", [False, True])
def test_a_step_through_the_engine_alone_matches_the_reference(multi_tensor):
    params = _params()
    configs = [ParamConfig(lr_scale=1.0, beta1=0.9, beta2=0.99, eps=1e-8, l2=0.01),
               ParamConfig(lr_scale=0.5, beta1=0.8, beta2=0.999, eps=1e-6,
                           decoupled_decay=0.1),
               ParamConfig(clip=ValueClip(-0.5, 0.5))]
    engine = Engine(params, lambda i: configs[i], amsgrad=True, multi_tensor=multi_tensor)
    refs = [reference.init_state(p.cpu(), beta1=c.beta1, beta2=c.beta2, amsgrad=True)
            for p, c in zip(params, configs)]
    gen = torch.Generator().manual_seed(1)
    for step, lr in enumerate([0.1, 0.05, 0.02]):
        grads = {i: torch.randn(p.shape, generator=gen, dtype=p.dtype).to(DEVICE)
                 for i, p in enumerate(params)}
        engine.step(lr, grads=grads)
        for i, c in enumerate(configs):
            g = grads[i].cpu()
            if isinstance(c.clip, ValueClip):
                g = g.clamp(c.clip.min, c.clip.max)
            refs[i] = reference.adam_step(refs[i], g, lr=lr, beta1=c.beta1, beta2=c.beta2,
                                          epsilon=c.eps, lr_scale=c.lr_scale, l2=c.l2,
                                          weight_decay=c.decoupled_decay)
    tol = fma_tol(torch.float64, rtol=1e-12, atol=1e-13)
    for i, p in enumerate(params):
        state = engine.state(i)
        assert set(state) == {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "beta1_pow",
                              "beta2_pow", "step"} <= set(ACCUMULATORS) | set(state)
        assert state["step"].item() == 3  # the steps applied, counted on the device
        torch.testing.assert_close(p.cpu(), refs[i].param, **tol)
        torch.testing.assert_close(state["exp_avg"].cpu(), refs[i].moment1, **tol)
        torch.testing.assert_close(state["exp_avg_sq"].cpu(), refs[i].moment2, **tol)
        torch.testing.assert_close(state["max_exp_avg_sq"].cpu(), refs[i].moment2_max, **tol)
        assert state["beta1_pow"].item() == pytest.approx(refs[i].beta1_pow, rel=1e-14)


def test_engine_global_norm_clip_and_live_reconfigure():
    """Two parameters share a norm (one key); a reconfiguration between steps changes the
    clip norm and a learning-rate scale, taking effect at the next step."""
    params = _params(dtype=torch.float32)[:2]
    configs = [ParamConfig(clip=NormClip("all", 1.0)), ParamConfig(clip=NormClip("all", 1.0))]
    engine = Engine(params, lambda i: configs[i], multi_tensor=True)
    grads = {i: torch.full(p.shape, 3.0, device=DEVICE) for i, p in enumerate(params)}
    engine.step(0.1, grads=grads)
    norm = torch.sqrt(torch.tensor(9.0 * sum(p.numel() for p in params)))
    assert engine.norms().cpu().item() == pytest.approx(norm.item(), rel=1e-6)
    before = [p.clone() for p in params]
    configs[1] = ParamConfig(lr_scale=0.0, clip=NormClip("all", 2.0))
    engine.reconfigure([1])
    engine.step(0.1, grads=grads)
    assert torch.equal(params[1], before[1])  # lr scale 0: unchanged
    assert not torch.equal(params[0], before[0])


def test_engine_load_state_then_step_continues_from_it():
    params = _params()
    engine = Engine(params, lambda i: ParamConfig())
    loaded = {0: {"exp_avg": torch.full(params[0].shape, 0.5, dtype=torch.float64),
                  "exp_avg_sq": torch.full(params[0].shape, 0.25, dtype=torch.float64),
                  "beta1_pow": torch.tensor([0.9 ** 3], dtype=torch.float64),
                  "beta2_pow": torch.tensor([0.999 ** 3], dtype=torch.float64)}}
    engine.load_state(loaded)
    assert engine.has_state(0) and not engine.has_state(1)
    assert torch.equal(engine.state(0)["exp_avg"].cpu(), loaded[0]["exp_avg"])
    g = torch.ones(params[0].shape, dtype=torch.float64)
    ref = reference.AdamTensorState(params[0].cpu().clone(), loaded[0]["exp_avg"].clone(),
                                    loaded[0]["exp_avg_sq"].clone(), None, 0.9 ** 3,
                                    0.999 ** 3)
    engine.step(0.1, grads={0: g.to(DEVICE)})
    ref = reference.adam_step(ref, g, lr=0.1, beta1=0.9, beta2=0.999, epsilon=1e-8)
    tol = fma_tol(torch.float64, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(params[0].cpu(), ref.param, **tol)
    torch.testing.assert_close(engine.state(0)["exp_avg"].cpu(), ref.moment1, **tol)
    assert engine.state(0)["beta1_pow"].item() == pytest.approx(0.9 ** 4, rel=1e-14)


@pytest.mark.parametrize("multi_tensor", [True, False], ids=["bucketed", "per-tensor"])
def test_torch_math_options_match_torch_adam(multi_tensor):
    """What a second front end needs, against ``torch.optim.Adam/AdamW(foreach=False)`` in
    float64: ``maximize``, a learning rate per parameter group read from the device
    (``lr_slots``), torch's bias corrections from the step count with betas that change
    every step (``bias_from_step``), parameters added mid-run (``add_params``), and an AMP
    step skipped on the device (the step count does not advance). Tolerance: float64, the
    same operations up to their order (the engine matched to 2e-14 relative)."""
    gen = torch.Generator().manual_seed(5)
    ps = [torch.randn(n, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
          for n in (1, 17, K.BLOCK_SIZE + 1)]
    ref = [p.detach().clone().requires_grad_() for p in ps]
    beta1 = [0.9]

    def configure(i):
        return ParamConfig(beta1=beta1[0], beta2=0.99, eps=1e-8, decoupled_decay=0.1,
                           maximize=True, lr_index=0 if i < 2 else 1)

    torch_opt = torch.optim.AdamW([{"params": ref[:2], "lr": 0.01}], betas=(0.9, 0.99),
                                  weight_decay=0.1, amsgrad=True, maximize=True,
                                  foreach=False)
    engine = Engine(ps[:2], configure, amsgrad=True, multi_tensor=multi_tensor, lr_slots=1,
                    bias_from_step=True, capturable=True)
    engine.set_lr(0.01, 0)
    found_inf = torch.zeros(1, device=DEVICE)
    for step in range(7):
        if step == 2:
            torch_opt.add_param_group({"params": ref[2:], "lr": 0.02})
            engine.add_params(ps[2:], lr_slots=2)
            engine.set_lr(0.02, 1)
        beta1[0] = 0.9 - 0.01 * step
        for group in torch_opt.param_groups:
            group["betas"] = (beta1[0], 0.99)
        engine.reconfigure(range(len(engine.params)))
        for p, r in zip(ps, ref):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(DEVICE)
            p.grad, r.grad = g, g.clone()
        skip = step == 4
        found_inf.fill_(float(skip))
        engine.step(None, found_inf=found_inf)
        if not skip:
            torch_opt.step()
    tol = fma_tol(torch.float64, rtol=1e-12, atol=1e-13)
    for i, (p, r) in enumerate(zip(ps, ref)):
        torch.testing.assert_close(p, r, **tol)
        state, torch_state = engine.state(i), torch_opt.state[r]
        torch.testing.assert_close(state["exp_avg"], torch_state["exp_avg"], **tol)
        torch.testing.assert_close(state["max_exp_avg_sq"], torch_state["max_exp_avg_sq"],
                                   **tol)
        assert state["step"].item() == torch_state["step"].item() == (6 if i < 2 else 4)
    with pytest.raises(ValueError, match="already in this optimizer"):
        engine.add_params(ps[:1])
    with pytest.raises(IndexError, match="slot 2"):
        engine.set_lr(0.1, 2)


def test_set_betas_is_reconfigure_without_the_row_rebuild(monkeypatch):
    """The fast path for betas that change every step (OneCycleLR) gives the results of a
    full reconfigure bit for bit, and rebuilds no row (no hyper-parameter upload)."""
    import triton_adam.buckets as B

    uploads = []
    original = B.Bucket._upload_hyper
    monkeypatch.setattr(B.Bucket, "_upload_hyper",
                        lambda self: uploads.append(1) or original(self))
    runs = []
    for fast in (False, True):
        uploads.clear()
        ps = [torch.randn(n, generator=torch.Generator().manual_seed(n)).to(DEVICE)
              .requires_grad_() for n in (1, 17, K.BLOCK_SIZE + 1)]
        beta1 = [0.9]
        engine = Engine(ps, lambda i: ParamConfig(beta1=beta1[0], beta2=0.99),
                        bias_from_step=True)
        for step in range(4):
            beta1[0] = 0.85 + 0.01 * step
            if step:
                if fast:
                    engine.set_betas(range(3), beta1[0], 0.99)
                else:
                    engine.reconfigure(range(3))
            for k, p in enumerate(ps):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(
                    100 * step + k)).to(DEVICE)
            engine.step(0.01)
        runs.append(([p.detach().clone() for p in ps], len(uploads)))
    (slow_params, slow_uploads), (fast_params, fast_uploads) = runs
    assert all(torch.equal(a, b) for a, b in zip(slow_params, fast_params))
    assert slow_uploads == 1 + 3 and fast_uploads == 1  # the bucket's first rows only
