"""The PyTorch face (``triton_adam.optim.Adam`` / ``AdamW``) driven by PyTorch's own tools.

Each test trains a tiny model a few steps with the face and, beside it, the same run of
``torch.optim.AdamW(foreach=False)`` (same init, same data, same tool), then compares:
``torch.amp.GradScaler`` (its fused protocol: the scaler sets ``grad_scale`` / ``found_inf``
on the optimizer, the kernels unscale and skip on the device), the ``torch.optim.lr_scheduler``
family, a ``torch.compile``d model, a training loop written the way the HF Trainer drives an
optimizer (gradient accumulation, clipping, scheduler, checkpoint and resume), and FSDP2 with
``torch.distributed.checkpoint.state_dict`` in two gloo processes (``torch_dist_worker.py``).

Tolerances. float64 where the tool allows it: the face and torch compute the same Adam math in
possibly different algebraic forms (bias corrections folded into the step size and epsilon or
not), each within a few roundings of the exact update, so one step's update differs by at
most ~10 u relative (u = 2^-53 = 1.1e-16) of its size, which is at most
``lr * (1 - beta1) / sqrt(1 - beta2)`` = 3.2 lr, plus half an ulp of the parameter when each
writes it (|p| < 4 here: 4.4e-16). Over N <= 16 steps that is below 1e-14; the feedback
through the gradients (the parameters differ by that much, so do the next gradients) adds a
factor of order one for these seeded tanh MLPs with unit-scale data (no gradient entry is as
small as eps). So float64 comparisons use ``rtol=1e-10, atol=1e-12``: four orders above the
rounding, and far below any wrong term of the math (a bias correction off by one step, or
taken with the product of the past beta1 instead of the current one, a lost decay, a
clipping factor off by 1e-6 relative: all move the parameters by more than 1e-9).

float32 (GradScaler's realistic dtype): the same argument with u = 6e-8 gives 10 u = 6e-7
relative per update; in addition the face may derive ``1 - beta2`` and the bias corrections
on the device from float32 betas while torch derives them in float64 on the host and rounds
each once: ``1 - beta2`` then differs by up to u / (1 - beta2) = 6e-5 relative, the update by
half of that through the square root. So per step the updates differ by at most
1e-4 * 3.2 lr, and each parameter write by one ulp (2.4e-7 for |p| < 4): over N steps
``atol = N * (3.2e-4 * lr + 2.4e-7)`` (2.1e-5 at N = 6, lr = 0.01), ``rtol=1e-5``. A skipped
step not skipped, or an unscaled gradient, moves a parameter by about lr = 1e-2.

In CUDA mode (``tests/devices.py``) every tolerance is at least the FMA floor
(``devices.fma_tol``). Comparisons of the face with itself (resume against an uninterrupted
run, a scaled run against an unscaled one, a skipped overflow step against a left-out step)
are bitwise: power-of-two loss scales unscale exactly, and a resumed run recomputes the same
operations on the same bits.
"""

from __future__ import annotations

import copy
import os
import pathlib
import shutil

import pytest
import torch

import gloo
import torch_dist_worker as W
from devices import CUDA_MODE, DEVICE, cpu_only, fma_tol
from host_syncs import count_host_syncs
from triton_adam import optim as topt

HERE = pathlib.Path(__file__).resolve().parent
IN, HIDDEN, OUT, BATCH = 5, 7, 3, 6  # 66 parameter elements: cheap under the interpreter
LR, BETAS, EPS, WD = 0.01, (0.9, 0.999), 1e-8, 0.05
F64 = fma_tol(torch.float64, rtol=1e-10, atol=1e-12)


def f32_tol(steps: int, lr: float = LR) -> dict[str, float]:
    """float32 against torch after ``steps`` steps (the module docstring derives it)."""
    return fma_tol(torch.float32, rtol=1e-5, atol=steps * (3.2e-4 * lr + 2.4e-7))


def tol_for(dtype: torch.dtype, steps: int) -> dict[str, float]:
    return F64 if dtype == torch.float64 else f32_tol(steps)


# ---------------------------------------------------------------------------------- helpers
def make_model(dtype=torch.float64, seed: int = 0) -> torch.nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.Tanh(),
                                torch.nn.Linear(HIDDEN, OUT)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * 0.5)
    return model.to(DEVICE)


def batch(i: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(BATCH, IN, generator=gen, dtype=dtype)
    y = torch.randn(BATCH, OUT, generator=gen, dtype=dtype)
    return x.to(DEVICE), y.to(DEVICE)


def loss_of(model, x, y) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(x), y)


def hf_groups(model: torch.nn.Module, bias_lr: float | None = None) -> list[dict]:
    """The HF Trainer's two groups: weights decayed, biases not (optionally another lr)."""
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    extra = {} if bias_lr is None else {"lr": bias_lr}
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, **extra}]


def twins(dtype=torch.float64, face_kwargs: dict | None = None, bias_lr: float | None = None):
    """``(model, face optimizer, model copy, torch.optim.AdamW(foreach=False))``: the same
    init, the same groups and hyper-parameters."""
    model = make_model(dtype)
    model_ref = copy.deepcopy(model)
    common = dict(lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    face = topt.AdamW(hf_groups(model, bias_lr), **common, **(face_kwargs or {}))
    ref = torch.optim.AdamW(hf_groups(model_ref, bias_lr), **common, foreach=False)
    return model, face, model_ref, ref


def assert_params_close(model, model_ref, tol: dict, what: str) -> float:
    worst = 0.0
    for (name, p), q in zip(model.named_parameters(), model_ref.parameters()):
        worst = max(worst, float((p.detach().double() - q.detach().double()).abs().max()))
        torch.testing.assert_close(p.detach(), q.detach(), **tol,
                                   msg=lambda m, name=name: f"{what} {name}: {m}")
    print(f"{what}: largest parameter difference {worst:.3g}")
    return worst


def assert_state_close(opt, opt_ref, tol: dict, what: str) -> None:
    """The torch-layout state: the same entries per parameter index, ``step`` equal, the
    moments close."""
    state, ref = opt.state_dict()["state"], opt_ref.state_dict()["state"]
    assert sorted(state) == sorted(ref), (what, sorted(state), sorted(ref))
    for i, entry in ref.items():
        assert sorted(state[i]) == sorted(entry), (what, i, sorted(state[i]), sorted(entry))
        assert float(state[i]["step"]) == float(entry["step"]), (what, i)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[i][key], entry[key], **tol,
                                       msg=lambda m, i=i, key=key: f"{what} {i} {key}: {m}")


def snapshot(model, opt) -> list[torch.Tensor]:
    """Params and every state tensor (the step count included), cloned."""
    out = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        for key in sorted(opt.state[p]):
            value = opt.state[p][key]
            out.append(value.detach().clone() if isinstance(value, torch.Tensor)
                       else torch.tensor(float(value)))
    return out


def same_bits(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y)
                                    for x, y in zip(a, b))


# --------------------------------------------------------------------------- GradScaler
SCALER_STEPS = 6
OVERFLOW_STEP = 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_grad_scaler_fused_protocol_matches_torch_and_skips_an_overflow(dtype, monkeypatch):
    """``scaler.scale(loss).backward(); scaler.step(opt); scaler.update()`` with the face and
    with torch.optim.AdamW, an inf in a gradient at one step. GradScaler takes the face's
    fused path (``_step_supports_amp_scaling``): it sets ``opt.grad_scale`` /
    ``opt.found_inf`` and calls ``opt.step()``, which makes no host sync; the overflow step
    leaves params, moments and the step count exactly as they were (torch's scaler skips
    torch's step on the host); the scales evolve alike (growth after 2 good steps, backoff
    at the overflow) and the runs end close."""
    assert getattr(topt.AdamW, "_step_supports_amp_scaling", False) is True
    model, face, model_ref, ref = twins(dtype)
    scalers = [torch.amp.GradScaler(DEVICE.type, init_scale=2.0 ** 10, growth_interval=2)
               for _ in range(2)]
    syncs: list[str] = []
    handed: list[tuple] = []
    original_step = face.step

    def counted_step(*args, **kwargs):
        scale, found = getattr(face, "grad_scale", None), getattr(face, "found_inf", None)
        handed.append((None if scale is None else scale.detach().clone(),
                       None if found is None else found.detach().clone()))
        with monkeypatch.context() as m:  # syncs inside the optimizer's step only
            count_host_syncs(m, syncs)
            return original_step(*args, **kwargs)

    face.step = counted_step
    scales, scales_before = [], []
    for step in range(SCALER_STEPS):
        scales_before.append(scalers[0].get_scale())
        for mdl, opt, scaler in ((model, face, scalers[0]), (model_ref, ref, scalers[1])):
            scaler.scale(loss_of(mdl, *batch(step, dtype))).backward()
            if step == OVERFLOW_STEP:
                mdl[0].weight.grad[1, 2] = float("inf")
                before = snapshot(mdl, opt)
            scaler.step(opt)
            scaler.update()
            if step == OVERFLOW_STEP:
                assert same_bits(snapshot(mdl, opt), before), \
                    f"{type(opt).__module__}: the overflow step changed params or state"
            opt.zero_grad()
        scales.append((scalers[0].get_scale(), scalers[1].get_scale()))
    assert syncs == [], syncs
    assert len(handed) == SCALER_STEPS  # the scaler called the face's step every time
    for step, (scale, found) in enumerate(handed):
        assert scale is not None and found is not None, step  # the fused protocol was used
        assert float(scale) == scales_before[step], (step, scale, scales_before)
        assert float(found) == (1.0 if step == OVERFLOW_STEP else 0.0), (step, found)
    assert all(a == b for a, b in scales), scales
    assert scales[OVERFLOW_STEP][1] == 2.0 ** 10  # grown at step 1 then backed off
    tol = tol_for(dtype, SCALER_STEPS - 1)
    assert_params_close(model, model_ref, tol, f"GradScaler {dtype}")
    assert_state_close(face, ref, tol, f"GradScaler {dtype}")
    assert float(face.state_dict()["state"][0]["step"]) == SCALER_STEPS - 1


def test_grad_scaler_run_equals_an_unscaled_run_bitwise():
    """The kernels divide the scaled gradients by the scaler's power-of-two scale, which is
    exact: the scaled run and a run without a scaler end with the same bits."""
    runs = []
    for use_scaler in (True, False):
        model = make_model(torch.float32)
        opt = topt.AdamW(model.parameters(), lr=LR, weight_decay=WD)
        scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0 ** 12, growth_interval=1)
        for step in range(4):
            loss = loss_of(model, *batch(step, torch.float32))
            if use_scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            opt.zero_grad()
        runs.append(snapshot(model, opt))
    assert same_bits(*runs)


CLIP_NORM = 0.2  # below every step's gradient norm here (checked): clipping is active


@pytest.mark.parametrize("how", ["fused max_grad_norm", "unscale_ + clip_grad_norm_"])
def test_grad_scaler_with_clipping(how):
    """Clipping under GradScaler, both ways a torch user writes it. ``max_grad_norm`` fused
    into the step must take the norm of the *unscaled* gradients (the scaler hands the face
    scaled ones and the scale); the HF/AMP recipe ``scaler.unscale_(opt)`` +
    ``clip_grad_norm_`` then ``scaler.step(opt)`` hands the face unscaled gradients and no
    scale (``grad_scale`` None). An overflow at one step is skipped either way. Against
    torch.optim.AdamW with ``unscale_`` and the same clipping rule (the face's by hand, or
    ``clip_grad_norm_``), float64."""
    fused = how.startswith("fused")
    model, face, model_ref, ref = twins(torch.float64,
                                        dict(max_grad_norm=CLIP_NORM) if fused else None)
    scalers = [torch.amp.GradScaler(DEVICE.type, init_scale=2.0 ** 10, growth_interval=1000)
               for _ in range(2)]
    norms, face_norms = [], []
    for step in range(SCALER_STEPS):
        for mdl, opt, scaler in ((model, face, scalers[0]), (model_ref, ref, scalers[1])):
            scaler.scale(loss_of(mdl, *batch(step))).backward()
            if step == OVERFLOW_STEP:
                mdl[2].bias.grad[0] = float("inf")
            if opt is ref:
                scaler.unscale_(opt)
                clip = W.clip_like_the_face if fused else torch.nn.utils.clip_grad_norm_
                norms.append(float(clip(list(mdl.parameters()), CLIP_NORM)))
            elif not fused:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(mdl.parameters(), CLIP_NORM)
            scaler.step(opt)
            scaler.update()
            if opt is face and fused:
                face_norms.append(float(face.grad_norm))
            opt.zero_grad()
    good = [n for i, n in enumerate(norms) if i != OVERFLOW_STEP]
    assert min(good) > CLIP_NORM, norms
    assert scalers[0].get_scale() == scalers[1].get_scale() == 2.0 ** 9
    assert_params_close(model, model_ref, F64, f"GradScaler + {how}")
    assert_state_close(face, ref, F64, f"GradScaler + {how}")
    if fused:
        # The norm of the unscaled gradients (the scale divided out), before clipping.
        for i, (a, b) in enumerate(zip(face_norms, norms)):
            if i != OVERFLOW_STEP:
                assert a == pytest.approx(b, rel=1e-12), (i, face_norms, norms)
        assert not torch.isfinite(torch.tensor(face_norms[OVERFLOW_STEP]))


# ----------------------------------------------------------------------- LR schedulers
SCHED_STEPS = 12
PLATEAU_METRICS = [1.0, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7]


def _schedulers() -> dict:
    S = torch.optim.lr_scheduler
    return {
        "LambdaLR": lambda opt: S.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3) * 0.8 ** s),
        # cycles betas[0] between 0.95 and 0.85 too: torch's bias correction 1 - beta1^t takes
        # the current beta1, not the product of the past ones
        "OneCycleLR": lambda opt: S.OneCycleLR(opt, max_lr=[0.05, 0.02],
                                               total_steps=SCHED_STEPS, pct_start=0.3),
        "CosineAnnealingLR": lambda opt: S.CosineAnnealingLR(opt, T_max=6, eta_min=1e-3),
        "SequentialLR": lambda opt: S.SequentialLR(
            opt, [S.LinearLR(opt, start_factor=0.1, total_iters=3),
                  S.CosineAnnealingLR(opt, T_max=8)], milestones=[3]),
        "ReduceLROnPlateau": lambda opt: S.ReduceLROnPlateau(opt, factor=0.5, patience=1,
                                                             threshold=0.0),
    }


@pytest.mark.parametrize("name", list(_schedulers()))
def test_lr_scheduler_tracks_torch(name):
    """A torch scheduler on the face's live ``param_groups`` (two groups, different base
    learning rates): every step's lr (and OneCycleLR's beta1) equal to the same scheduler on
    torch.optim.AdamW, and the params close after 12 steps, float64. ReduceLROnPlateau is fed
    a fixed metric sequence so that both take the same decisions."""
    make = _schedulers()[name]
    model, face, model_ref, ref = twins(torch.float64, bias_lr=0.004)
    scheds = [make(face), make(ref)]
    seen = [[], []]
    for step in range(SCHED_STEPS):
        for k, (mdl, opt, sched) in enumerate(((model, face, scheds[0]),
                                               (model_ref, ref, scheds[1]))):
            seen[k].append([(g["lr"], tuple(g["betas"])) for g in opt.param_groups])
            loss_of(mdl, *batch(step)).backward()
            opt.step()
            if name == "ReduceLROnPlateau":
                sched.step(PLATEAU_METRICS[step])
            else:
                sched.step()
            opt.zero_grad()
    assert seen[0] == seen[1]
    lrs = {row[0][0] for row in seen[1]}
    assert len(lrs) >= 3, lrs  # the schedule did change the learning rate
    if name == "OneCycleLR":
        assert len({row[0][1][0] for row in seen[1]}) >= 3  # and beta1
    assert_params_close(model, model_ref, F64, name)
    assert_state_close(face, ref, F64, name)


# --------------------------------------------------------------------------- torch.compile
def _compile_backend() -> str:
    """Inductor (torch.compile's default) needs a C++ compiler on the CPU; without one the
    test compiles with ``aot_eager`` (Dynamo's graph capture and AOTAutograd, as inductor
    runs them, without code generation)."""
    if CUDA_MODE or shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++"):
        return "inductor"
    return "aot_eager"


def test_compiled_model():
    """``torch.compile(model)`` with the optimizer step outside the compiled region: the face
    updates the parameters in place, so the compiled graph keeps reading them, with no
    recompilation after the first step; the run tracks torch.optim.AdamW stepping the same
    compiled model, float64."""
    import torch._dynamo

    backend = _compile_backend()
    print(f"torch.compile backend: {backend}")
    results = []
    for use_face in (True, False):
        torch._dynamo.reset()
        model, face, model_ref, ref = twins(torch.float64)
        mdl, opt = (model, face) if use_face else (model_ref, ref)
        compiled = torch.compile(mdl, backend=backend)
        base = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        graphs = []
        for step in range(5):
            loss_of(compiled, *batch(step)).backward()
            opt.step()
            opt.zero_grad()
            graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - base)
        assert graphs[0] >= 1 and graphs[-1] == graphs[0], graphs  # compiled once, reused
        results.append((mdl, opt))
    (model, face), (model_ref, ref) = results
    assert_params_close(model, model_ref, F64, f"torch.compile ({backend})")
    assert_state_close(face, ref, F64, f"torch.compile ({backend})")


# -------------------------------------------------------------- an HF-Trainer-style loop
ACCUMULATE = 2
OPT_STEPS = 6
RESUME_AT = 3
WARMUP = 2
HF_MAX_NORM = 0.1


def _hf_lambda(step: int) -> float:  # transformers' get_linear_schedule_with_warmup
    if step < WARMUP:
        return step / max(1, WARMUP)
    return max(0.0, (OPT_STEPS - step) / max(1, OPT_STEPS - WARMUP))


def _hf_build(model, use_face: bool, clipping: str):
    """Optimizer and scheduler as the Trainer creates them (``create_optimizer`` groups,
    ``get_linear_schedule_with_warmup`` = a LambdaLR)."""
    if use_face:
        extra = dict(max_grad_norm=HF_MAX_NORM) if clipping == "max_grad_norm" else {}
        opt = topt.AdamW(hf_groups(model), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD,
                         **extra)
    else:
        opt = torch.optim.AdamW(hf_groups(model), lr=LR, betas=BETAS, eps=EPS,
                                weight_decay=WD, foreach=False)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _hf_lambda)


def _hf_train(model, opt, sched, steps, clipping: str, use_face: bool, log: list) -> None:
    """The Trainer's inner loop: ``ACCUMULATE`` micro-batches, each ``(loss / n).backward()``,
    then clip, ``optimizer.step()``, ``lr_scheduler.step()``, ``model.zero_grad()``."""
    for opt_step in steps:
        for micro in range(ACCUMULATE):
            (loss_of(model, *batch(opt_step * ACCUMULATE + micro)) / ACCUMULATE).backward()
        if clipping == "clip_grad_norm_":
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), HF_MAX_NORM)
        elif not use_face:  # torch's twin of the face's max_grad_norm
            norm = W.clip_like_the_face(model.parameters(), HF_MAX_NORM)
        opt.step()
        if clipping == "max_grad_norm" and use_face:
            norm = opt.grad_norm  # the device tensor, read after the step
        sched.step()
        model.zero_grad()
        log.append((float(norm), sched.get_last_lr()))


@pytest.mark.parametrize("clipping", ["clip_grad_norm_", "max_grad_norm"])
def test_hf_trainer_style_loop_with_checkpoint_resume(clipping, tmp_path):
    """Gradient accumulation, clipping (``clip_grad_norm_`` on the gradients, or the face's
    fused ``max_grad_norm`` with its ``grad_norm`` logged), a linear warmup schedule whose
    first step has lr 0, and a mid-run checkpoint as the Trainer writes it (``torch.save`` of
    the model's, optimizer's and scheduler's ``state_dict``s, read back with ``torch.load``'s
    default ``weights_only=True``) into a fresh model, optimizer and scheduler: the resumed
    run ends bitwise equal to the uninterrupted one, and both track torch.optim.AdamW driven
    by the same loop (float64; the same clipping rule)."""
    log_face, log_resumed, log_ref = [], [], []
    model = make_model()
    opt, sched = _hf_build(model, True, clipping)
    _hf_train(model, opt, sched, range(OPT_STEPS), clipping, True, log_face)

    first = make_model()
    opt1, sched1 = _hf_build(first, True, clipping)
    _hf_train(first, opt1, sched1, range(RESUME_AT), clipping, True, log_resumed)
    torch.save(first.state_dict(), tmp_path / "model.pt")
    torch.save(opt1.state_dict(), tmp_path / "optimizer.pt")
    torch.save(sched1.state_dict(), tmp_path / "scheduler.pt")
    del first, opt1, sched1
    resumed = make_model(seed=7)  # another init: the load must restore everything
    resumed.load_state_dict(torch.load(tmp_path / "model.pt"))
    opt2, sched2 = _hf_build(resumed, True, clipping)
    opt2.load_state_dict(torch.load(tmp_path / "optimizer.pt", map_location=DEVICE))
    sched2.load_state_dict(torch.load(tmp_path / "scheduler.pt"))
    _hf_train(resumed, opt2, sched2, range(RESUME_AT, OPT_STEPS), clipping, True, log_resumed)

    model_ref = make_model()
    opt_ref, sched_ref = _hf_build(model_ref, False, clipping)
    _hf_train(model_ref, opt_ref, sched_ref, range(OPT_STEPS), clipping, False, log_ref)

    assert min(n for n, _ in log_ref) > HF_MAX_NORM, log_ref  # clipping at every step
    assert [lrs for _, lrs in log_face] == [lrs for _, lrs in log_ref]
    assert log_resumed == log_face  # norms and lrs, bit for bit
    assert same_bits([p.detach() for p in resumed.parameters()],
                     [p.detach() for p in model.parameters()])
    a, b = opt2.state_dict(), opt.state_dict()
    assert sorted(a["state"]) == sorted(b["state"])
    for i in b["state"]:
        assert sorted(a["state"][i]) == sorted(b["state"][i])
        for key, value in b["state"][i].items():
            assert torch.equal(torch.as_tensor(a["state"][i][key]), torch.as_tensor(value)), \
                (i, key)
    assert a["param_groups"] == b["param_groups"]
    for (n_face, _), (n_ref, _) in zip(log_face, log_ref):
        assert n_face == pytest.approx(n_ref, rel=1e-12)
    assert_params_close(model, model_ref, F64, f"HF loop ({clipping})")
    assert_state_close(opt, opt_ref, F64, f"HF loop ({clipping})")


# ------------------------------------------------------------------------------------ FSDP2
WORLD = 2
FSDP_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    """One launch of two gloo processes (``torch_dist_worker.py``) running every case."""
    out = tmp_path_factory.mktemp("torch_fsdp")
    runs = gloo.launch(HERE / "torch_dist_worker.py", WORLD, out, W.CASES, FSDP_TIMEOUT_S)
    print(f"FSDP2 launch: {runs['_seconds']:.1f} s")
    return runs


def _ranks(runs: dict, case: str) -> list[dict]:
    for r, res in enumerate(runs[case]):
        if res is None:
            raise AssertionError(f"{case}: rank {r} wrote no result\n{runs['_log']}")
        if res["error"] is not None:
            raise AssertionError(f"{case}: rank {r} raised\n{res['error']}")
    return runs[case]


def _check_against(res: dict, ref: dict, what: str, bitwise: bool = False) -> None:
    assert list(res["params"]) == list(ref["params"]), what
    for name, expected in ref["params"].items():
        if bitwise:
            assert torch.equal(res["params"][name], expected), (what, name)
        else:
            torch.testing.assert_close(res["params"][name], expected, **F64,
                                       msg=lambda m, n=name: f"{what} {n}: {m}")
    state = res["full_state"]
    assert sorted(state) == sorted(ref["state"]), (what, sorted(state))
    for fqn, entry in ref["state"].items():
        assert sorted(state[fqn]) == sorted(entry), (what, fqn, sorted(state[fqn]))
        for key, expected in entry.items():
            actual = torch.as_tensor(state[fqn][key])
            if bitwise:
                assert torch.equal(actual, torch.as_tensor(expected)), (what, fqn, key)
            elif key == "step":
                assert float(actual) == float(expected), (what, fqn)
            else:
                torch.testing.assert_close(actual, expected, **F64,
                                           msg=lambda m, f=fqn, k=key: f"{what} {f} {k}: {m}")


fsdp = cpu_only("gloo processes under the Triton interpreter")


@fsdp
def test_fsdp2_face_matches_torch_adamw_and_the_single_process_run(fsdp_runs):
    """FSDP2 (``fully_shard`` per layer and root; the last layer's weight has one row, so
    rank 1's shard is empty): 6 steps of the face equal the single-process
    torch.optim.AdamW run (float64), and ``get_optimizer_state_dict`` gives the face's state
    in torch.optim.AdamW's layout under FSDP2: the same parameter names, the same entries,
    DTensor moments with the parameters' placements and local shapes, and the same full
    state once gathered (``full_state_dict=True``)."""
    ref = W.reference()
    face, torch_runs = _ranks(fsdp_runs, "face"), _ranks(fsdp_runs, "torch")
    for r in range(WORLD):
        _check_against(torch_runs[r], ref, f"torch rank {r}")  # the harness itself
        _check_against(face[r], ref, f"face rank {r}")
        assert face[r]["layout"] == torch_runs[r]["layout"], (r, face[r]["layout"],
                                                                torch_runs[r]["layout"])
        assert face[r]["group_params"] == torch_runs[r]["group_params"]
        torch_keys = set(torch_runs[r]["group_keys"][0])
        for keys in face[r]["group_keys"]:
            missing = {"lr", "betas", "eps", "weight_decay", "amsgrad", "params"} - set(keys)
            assert not missing, (r, missing)
        print(f"param_group keys: face only {sorted(set(face[r]['group_keys'][0]) - torch_keys)}"
              f", torch only {sorted(torch_keys - set(face[r]['group_keys'][0]))}")
    assert face[1]["layout"]["4.weight"]["exp_avg"][2] == (0, W.HIDDEN2)  # an empty shard


@fsdp
def test_fsdp2_dcp_checkpoint_resumes_bitwise(fsdp_runs):
    """``dcp.save`` of ``get_model_state_dict`` + ``get_optimizer_state_dict`` after 3 steps;
    a fresh model (another init) and a fresh face load it (``dcp.load``,
    ``set_model_state_dict``, ``set_optimizer_state_dict``, which first runs a zero-lr step
    on the fresh optimizer to create its state) and run the last 3 steps: the same bits as
    the uninterrupted run."""
    face, resumed = _ranks(fsdp_runs, "face"), _ranks(fsdp_runs, "face_resume")
    fresh = W.make_model(seed=999)
    for r in range(WORLD):
        assert not torch.equal(resumed[r]["loaded_params"]["0.weight"], fresh[0].weight)
        _check_against(resumed[r], {"params": face[r]["params"],
                                    "state": face[r]["full_state"]},
                       f"face_resume rank {r}", bitwise=True)


@fsdp
@pytest.mark.parametrize("case", ["torch_to_face", "face_to_torch"])
def test_fsdp2_dcp_checkpoint_crosses_between_torch_and_the_face(fsdp_runs, case):
    """A checkpoint of torch.optim.AdamW under FSDP2 loads into the face with torch's own
    calls and continues as torch would, and the other way round (float64)."""
    ref = W.reference()
    for r, res in enumerate(_ranks(fsdp_runs, case)):
        _check_against(res, ref, f"{case} rank {r}")


@fsdp
def test_fsdp2_fused_clipping_takes_the_global_norm(fsdp_runs):
    """``max_grad_norm`` on sharded parameters: the norm over both ranks' shards (the face
    all-reduces it), the same on both ranks and equal to the single process's, read from
    ``grad_norm`` after each step; the run equals the single-process run clipped by hand."""
    ref = W.reference(clip=True)
    assert min(ref["norms"]) > W.CLIP, ref["norms"]
    ranks = _ranks(fsdp_runs, "face_clip")
    for r, res in enumerate(ranks):
        assert res["norms"] == pytest.approx(ref["norms"], rel=1e-12), (r, res["norms"])
        _check_against(res, ref, f"face_clip rank {r}")
    assert ranks[0]["norms"] == ranks[1]["norms"]


@fsdp
@pytest.mark.parametrize("case", W.LOWP_CASES)
def test_fsdp2_low_precision_modes_equal_the_single_process_bitwise(fsdp_runs, case):
    """issue 19's modes on FSDP2 shards of the bf16 MLP (an empty shard on rank 1), the
    gradients set to the single process's bits, an AMP skip: ``master_weights`` as
    remainders (amsgrad), and stochastic rounding with bf16 moments (random bits keyed by
    each element's offset in the whole tensor, so a shard draws the bits the whole tensor
    would). Params and the full optimizer state (``get_optimizer_state_dict``, step counts,
    masters and moments) bitwise those of the face in one process, also after a
    ``torch.distributed.checkpoint`` save and a resume in a fresh model and optimizer."""
    ref = W.lowp_reference(case)
    fresh = W.make_model(seed=999).to(torch.bfloat16)
    for r, res in enumerate(_ranks(fsdp_runs, case)):
        _check_against(res, ref, f"{case} rank {r}", bitwise=True)
        if "loaded_params" in res:
            assert not torch.equal(res["loaded_params"]["0.weight"], fresh[0].weight)


@fsdp
def test_fsdp2_grad_scaler_overflow_on_one_rank_skips_on_every_rank(fsdp_runs):
    """GradScaler under FSDP2, an inf in rank 0's shard only. GradScaler's inf check on
    DTensor gradients all-reduces the flag (DTensor's ``found_inf_reduce_handler``, a max over
    the mesh), so the face on rank 1, whose own gradients are finite, gets ``found_inf`` = 1
    too: on both ranks params and state (step count included) stay exactly as they were, the
    scale backs off, and the run ends bitwise equal to one that left that step out, and close
    to the single-process run without it."""
    overflow, skip = _ranks(fsdp_runs, "scaler_overflow"), _ranks(fsdp_runs, "scaler_skip")
    ref = W.reference(skip_step=W.OVERFLOW_STEP)
    assert overflow[0]["local_inf_written"] and not overflow[1]["local_inf_written"]
    assert not overflow[0]["local_grads_finite"] and overflow[1]["local_grads_finite"]
    for r in range(WORLD):
        res = overflow[r]
        expected = [1.0 if s == W.OVERFLOW_STEP else 0.0 for s in range(W.STEPS)]
        assert res["found_inf_seen"] == expected, (r, res["found_inf_seen"])
        assert res["params_unchanged"] and res["state_unchanged"], (r, res)
        assert res["scale_after_overflow"] == W.INIT_SCALE / 2
        assert res["steps_in_state"] == [float(W.STEPS - 1)] * len(res["steps_in_state"])
        _check_against(res, {"params": skip[r]["params"], "state": skip[r]["full_state"]},
                       f"scaler_overflow rank {r} vs skip", bitwise=True)
        _check_against(res, ref, f"scaler_overflow rank {r}")
