"""One rank of the PyTorch face's FSDP2 tests (``tests/test_torch_ecosystem.py``), and their
single-process references.

Run by the test as ``python torch_dist_worker.py RANK WORLD STORE OUT CASE [CASE ...]`` in two
processes with ``TRITON_INTERPRET=1`` (``tests/dist_worker.py``'s pattern): gloo on CPU,
rendezvous through a file store, each case's result saved to ``OUT/{case}.rank{RANK}.pt`` at
once, an exception recorded as ``"error"`` (the traceback) and the next case run.

Every case trains a seeded float64 MLP wrapped with ``fully_shard`` (per layer, then the root)
on a global batch of 8 rows per step, of which rank ``r`` gets rows ``4r:4r+4``, with a mean
loss: FSDP2's reduce-scatter averages the two half-batch gradients, which is the single
process's full-batch gradient up to the rounding of another summation order. The optimizer is
``torch.optim.AdamW(foreach=False)`` ("torch") or ``triton_adam.optim.AdamW`` ("face"), both
with the same hyper-parameters; ``reference()`` is the single-process run of torch's.

Cases (``CASES``):

* ``torch`` / ``face``: ``STEPS`` uninterrupted steps;
* ``face_resume``: ``RESUME_AT`` steps, a ``torch.distributed.checkpoint`` save of
  ``get_model_state_dict`` + ``get_optimizer_state_dict``, then a fresh model (another init)
  and a fresh optimizer load it (``dcp.load`` + ``set_model_state_dict`` /
  ``set_optimizer_state_dict``) and run the remaining steps;
* ``torch_to_face`` / ``face_to_torch``: the same, saved by one optimizer class and loaded by
  the other;
* ``face_clip``: ``max_grad_norm=CLIP`` (the global norm over both ranks' shards);
* ``scaler_overflow``: ``torch.amp.GradScaler("cpu")``; at ``OVERFLOW_STEP`` rank 0 alone
  writes an inf into its shard of a gradient; ``scaler_skip``: the same run with that step
  left out (no ``scaler.step`` / ``update``);
* ``lowp_*`` (issue 19's low-precision modes, ``LOWP_OPTIONS``): the same MLP in bf16 with
  ``master_weights`` kept as remainders (amsgrad), or stochastic rounding with bf16 moments;
  the gradients are set, not computed (every process draws the full gradients of a step,
  each rank takes its shard: the optimizer sees the single process's bits), with an AMP
  skip at ``LOWP_SKIP_STEP``; ``*_resume`` saves with ``torch.distributed.checkpoint`` after
  ``RESUME_AT`` steps and resumes in a fresh model and optimizer. ``lowp_reference()`` is the
  single-process run of the face, which the sharded runs must equal bit for bit.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch

import gloo

DTYPE = torch.float64
STEPS = 6
RESUME_AT = 3
OVERFLOW_STEP = 3
GLOBAL_BATCH = 8
IN, HIDDEN1, HIDDEN2, OUT = 6, 15, 9, 1  # odd sizes: uneven shards, an empty one on rank 1
LR, BETAS, EPS, WD = 0.01, (0.9, 0.999), 1e-8, 0.05
CLIP = 0.05  # below every step's gradient norm (the test checks it): clipping is active
INIT_SCALE = 2.0 ** 10

LOWP_CASES = ("lowp_remainder", "lowp_remainder_resume", "lowp_sr", "lowp_sr_resume")
CASES = ("torch", "face", "face_resume", "torch_to_face", "face_to_torch", "face_clip",
         "scaler_overflow", "scaler_skip") + LOWP_CASES
LOWP_OPTIONS = {
    "remainder": dict(master_weights=True, master_weight_format="remainder", amsgrad=True),
    "sr": dict(stochastic_rounding=True, moment_dtype=torch.bfloat16),
}
LOWP_SKIP_STEP = 1
LOWP_GRAD_SCALE = 4.0
LOWP_SEED = 4242


def make_model(seed: int = 1234) -> torch.nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN1), torch.nn.Tanh(),
                                torch.nn.Linear(HIDDEN1, HIDDEN2), torch.nn.Tanh(),
                                torch.nn.Linear(HIDDEN2, OUT)).to(DTYPE)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DTYPE) * 0.5)
    return model


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return (torch.randn(GLOBAL_BATCH, IN, generator=gen, dtype=DTYPE),
            torch.randn(GLOBAL_BATCH, OUT, generator=gen, dtype=DTYPE))


def loss_of(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(x), y)  # mean: FSDP averages the gradients


def make_optimizer(kind: str, params, clip: float | None = None) -> torch.optim.Optimizer:
    if kind == "torch":
        return torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD,
                                 foreach=False)
    from triton_adam.optim import AdamW

    extra = {} if clip is None else {"max_grad_norm": clip}
    return AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, **extra)


def grad_norm_now(model) -> float:
    return float(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters())))


def clip_like_the_face(params, max_norm: float) -> torch.Tensor:
    """The face's ``max_grad_norm`` rule by hand, for a torch reference: the float64 norm of
    all gradients, which are multiplied by ``max_norm / max(norm, max_norm)``
    (``clip_grad_norm_`` divides by ``norm + 1e-6`` instead: 2e-5 relative off at a norm of
    0.05, far above a float64 tolerance). Returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads))
    scale = max_norm / torch.clamp(norm, min=max_norm)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return norm


def reference(clip: bool = False, skip_step: int | None = None) -> dict:
    """The single-process run: ``torch.optim.AdamW(foreach=False)`` on the full batch,
    clipped by the face's rule to ``CLIP`` if ``clip``; the step ``skip_step`` left out.
    Final params, optimizer state by parameter name, and the norms before clipping."""
    model = make_model()
    opt = make_optimizer("torch", model.parameters())
    norms = []
    for step in range(STEPS):
        loss_of(model, *batch(step)).backward()
        norms.append(grad_norm_now(model))
        if clip:
            clip_like_the_face(list(model.parameters()), CLIP)
        if step != skip_step:
            opt.step()
        opt.zero_grad()
    names = {p: n for n, p in model.named_parameters()}
    state = {names[p]: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "state": state, "norms": norms}


def _lowp_kind(case: str) -> str:
    return case.split("_")[1]  # "lowp_sr_resume" -> "sr"


def make_lowp_optimizer(case: str, params) -> torch.optim.Optimizer:
    from triton_adam.optim import AdamW

    return AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, seed=LOWP_SEED,
                 **LOWP_OPTIONS[_lowp_kind(case)])


def lowp_train(model, opt, steps) -> None:
    """Set each step's gradients (the full ones, drawn the same in every process, times
    LOWP_GRAD_SCALE, in bf16; a DTensor parameter gets its shard laid out like it; an inf
    at LOWP_SKIP_STEP) and step with GradScaler's attributes."""
    from triton_adam import distributed as D

    for step in steps:
        gen = torch.Generator().manual_seed(500 + step)
        for name, p in model.named_parameters():
            g = torch.randn(tuple(p.shape), generator=gen)
            if step == LOWP_SKIP_STEP and name == "0.weight":
                g[0, 0] = float("inf")
            g = (g * LOWP_GRAD_SCALE).to(p.dtype)
            if D.is_dtensor(p):
                from torch.distributed.tensor import DTensor

                g = DTensor.from_local(D.local_shard_like(g, p), p.device_mesh, p.placements,
                                       run_check=False, shape=p.shape, stride=p.stride())
            p.grad = g
        opt.grad_scale = torch.tensor([LOWP_GRAD_SCALE])
        opt.found_inf = torch.tensor([1.0 if step == LOWP_SKIP_STEP else 0.0])
        opt.step()
        opt.zero_grad()


def lowp_reference(case: str) -> dict:
    """The single-process run of a ``lowp_*`` case (the face, bf16 model): final params and
    the state by parameter name."""
    model = make_model().to(torch.bfloat16)
    opt = make_lowp_optimizer(case, model.parameters())
    lowp_train(model, opt, range(STEPS))
    names = {p: n for n, p in model.named_parameters()}
    state = {names[p]: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "state": state}


# ------------------------------------------------------------------------------ distributed
def _shard(model: torch.nn.Sequential, world: int) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _local_batch(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch(step)
    rows = GLOBAL_BATCH // world
    return x[rank * rows:(rank + 1) * rows], y[rank * rows:(rank + 1) * rows]


def _train(model, opt, steps, rank: int, world: int, norms: list | None = None) -> None:
    for step in steps:
        loss_of(model, *_local_batch(step, rank, world)).backward()
        opt.step()
        if norms is not None:  # the face's device norm, read after the step (not inside)
            norms.append(float(opt.grad_norm))
        opt.zero_grad()


def _local(t):
    return (t.to_local() if hasattr(t, "to_local") else t).detach().clone()


def _outputs(model, opt) -> dict:
    """Full params, the full optimizer state (get_optimizer_state_dict with
    full_state_dict=True), and the layout of the sharded one, which the test compares with
    torch.optim.AdamW's."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         get_optimizer_state_dict)
    from torch.distributed.tensor import DTensor

    full = get_optimizer_state_dict(model, opt,
                                    options=StateDictOptions(full_state_dict=True))
    sharded = get_optimizer_state_dict(model, opt)
    layout = {}
    for fqn, entry in sharded["state"].items():
        layout[fqn] = {k: (type(v).__name__,
                           str(v.placements) if isinstance(v, DTensor) else None,
                           tuple(_local(v).shape) if isinstance(v, torch.Tensor) else None,
                           str(v.dtype) if isinstance(v, torch.Tensor) else repr(v))
                       for k, v in entry.items()}
    return {
        "params": {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()},
        "full_state": {fqn: {k: (v.full_tensor() if isinstance(v, DTensor) else v).clone()
                             if isinstance(v, torch.Tensor) else v for k, v in entry.items()}
                       for fqn, entry in full["state"].items()},
        "layout": layout,
        "group_keys": [sorted(g) for g in sharded["param_groups"]],
        "group_params": [list(g["params"]) for g in sharded["param_groups"]],
    }


def _save(model, opt, path: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict)

    dcp.save({"model": get_model_state_dict(model),
              "optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=path)


def _load_fresh(kind: str, path: str, world: int):
    """A fresh model (another init, so the load must restore the params) and optimizer of
    ``kind`` (an optimizer kind, or a ``lowp_*`` case: its bf16 model and options), loaded
    from the checkpoint at ``path`` the way torch's docs show it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)

    if kind.startswith("lowp_"):
        model = make_model(seed=999).to(torch.bfloat16)
        _shard(model, world)
        opt = make_lowp_optimizer(kind, model.parameters())
    else:
        model = make_model(seed=999)
        _shard(model, world)
        opt = make_optimizer(kind, model.parameters())
    sd = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(sd, checkpoint_id=path)
    set_model_state_dict(model, sd["model"])
    set_optimizer_state_dict(model, opt, sd["optim"])
    return model, opt


def run_training_case(case: str, rank: int, world: int, scratch: str) -> dict:
    steps = range(STEPS)
    if case in ("torch", "face", "face_clip"):
        model = make_model()
        _shard(model, world)
        kind = "torch" if case == "torch" else "face"
        opt = make_optimizer(kind, model.parameters(), CLIP if case == "face_clip" else None)
        norms: list | None = [] if case == "face_clip" else None
        _train(model, opt, steps, rank, world, norms)
        out = _outputs(model, opt)
        out["norms"] = norms
        return out
    first, second = {"face_resume": ("face", "face"), "torch_to_face": ("torch", "face"),
                     "face_to_torch": ("face", "torch")}[case]
    model = make_model()
    _shard(model, world)
    opt = make_optimizer(first, model.parameters())
    _train(model, opt, range(RESUME_AT), rank, world)
    path = os.path.join(scratch, f"dcp_{case}")
    _save(model, opt, path)
    model, opt = _load_fresh(second, path, world)
    out = {"loaded_params": {n: p.full_tensor().detach().clone()
                             for n, p in model.named_parameters()}}
    _train(model, opt, range(RESUME_AT, STEPS), rank, world)
    out.update(_outputs(model, opt))
    return out


def run_lowp_case(case: str, rank: int, world: int, scratch: str) -> dict:
    """A ``lowp_*`` case on FSDP2 shards: ``STEPS`` steps, or ``RESUME_AT`` steps, a
    checkpoint and a fresh model and optimizer loading it for the rest."""
    model = make_model().to(torch.bfloat16)
    _shard(model, world)
    opt = make_lowp_optimizer(case, model.parameters())
    if not case.endswith("_resume"):
        lowp_train(model, opt, range(STEPS))
        return _outputs(model, opt)
    lowp_train(model, opt, range(RESUME_AT))
    path = os.path.join(scratch, f"dcp_{case}")
    _save(model, opt, path)
    model, opt = _load_fresh(case, path, world)
    out = {"loaded_params": {n: p.full_tensor().detach().clone()
                             for n, p in model.named_parameters()}}
    lowp_train(model, opt, range(RESUME_AT, STEPS))
    out.update(_outputs(model, opt))
    return out


def run_scaler_case(case: str, rank: int, world: int) -> dict:
    """GradScaler's fused protocol under FSDP2: the scaler sets ``grad_scale`` / ``found_inf``
    on the optimizer and calls its step. An inf on rank 0's shard only: GradScaler's inf check
    on DTensor gradients (``_amp_foreach_non_finite_check_and_unscale_``) all-reduces the flag
    (DTensor's ``found_inf_reduce_handler``), so both ranks must skip."""
    model = make_model()
    _shard(model, world)
    opt = make_optimizer("face", model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=1000)
    seen: list = []
    original_step = opt.step

    def recording_step(*args, **kwargs):  # what the scaler handed the optimizer
        found = getattr(opt, "found_inf", None)
        seen.append(None if found is None else found.detach().clone())
        return original_step(*args, **kwargs)

    opt.step = recording_step
    out: dict = {}
    for step in range(STEPS):
        loss = loss_of(model, *_local_batch(step, rank, world))
        scaler.scale(loss).backward()
        if step == OVERFLOW_STEP:
            if case == "scaler_skip":
                opt.zero_grad()
                continue
            weight_grad = model[0].weight.grad
            if rank == 0:
                with torch.no_grad():
                    weight_grad.to_local()[0, 0] = float("inf")
            out["local_grads_finite"] = all(bool(torch.isfinite(_local(p.grad)).all())
                                            for p in model.parameters())
            out["local_inf_written"] = not bool(torch.isfinite(_local(weight_grad)).all())
            before_params = [_local(p) for p in model.parameters()]
            before_state = [{k: _local(v) for k, v in opt.state[p].items()}
                            for p in model.parameters()]
            scaler.step(opt)
            scaler.update()
            out["params_unchanged"] = all(torch.equal(_local(p), b) for p, b in
                                          zip(model.parameters(), before_params))
            after_state = [{k: _local(v) for k, v in opt.state[p].items()}
                           for p in model.parameters()]
            out["state_keys_unchanged"] = ([sorted(s) for s in after_state]
                                           == [sorted(s) for s in before_state])
            out["state_unchanged"] = out["state_keys_unchanged"] and all(
                torch.equal(a[k], b[k]) for a, b in zip(after_state, before_state) for k in b)
            out["scale_after_overflow"] = float(scaler.get_scale())
        else:
            scaler.step(opt)
            scaler.update()
        opt.zero_grad()
    out["found_inf_seen"] = [None if f is None else float(f) for f in seen]
    out["final_scale"] = float(scaler.get_scale())
    out["steps_in_state"] = [float(opt.state[p]["step"]) for p in model.parameters()]
    out.update(_outputs(model, opt))
    return out


def _run_case(case: str, rank: int, world: int, out_dir: str) -> dict:
    if case.startswith("scaler"):
        return run_scaler_case(case, rank, world)
    if case.startswith("lowp_"):
        return run_lowp_case(case, rank, world, out_dir)
    return run_training_case(case, rank, world, out_dir)


def main(argv: list[str]) -> int:
    return gloo.serve(argv, _run_case)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
