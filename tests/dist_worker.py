"""One rank of the distributed tests (``tests/test_distributed.py``), and their reference run.

Run by the test as ``python dist_worker.py RANK WORLD STORE OUT CASE [CASE ...]`` in two
processes, with ``TRITON_INTERPRET=1``: gloo on CPU, rendezvous through a file store (no TCP
port to pick, so no race with other processes for a free port). Each case trains or probes a
fresh model and saves this rank's result to ``OUT/{case}.rank{RANK}.pt`` at once, so a crash
in one case (a segfault kills the process) leaves the earlier cases' results; an exception is
recorded (``"error"``, the traceback) and the next case runs.

The model, data and optimizer of a case are defined here once and shared with the test's
single-process reference (``reference(case)``): the same seeded MLP, the same global batch of
8 rows per step, of which rank ``r`` gets rows ``4r:4r+4``, and a mean loss, so the averaged
gradient of DDP / FSDP equals the single process's full-batch gradient up to rounding.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch

import gloo

import triton_adam
from triton_adam import distributed as D

STEPS = 5
GLOBAL_BATCH = 8
IN, HIDDEN1, HIDDEN2, OUT = 6, 15, 9, 1  # odd sizes: uneven shards, and empty ones on rank 1
LR = 0.01
CLIP_NORM = 0.05  # below every step's gradient norm (the test checks it): clipping is active



@dataclass(frozen=True)
class Case:
    """A training case: how the model is wrapped and how the optimizer runs."""

    kind: str  # "ddp", "ddp_bucket_view", "fsdp", "hsdp", "fsdp_mixed"
    clip: float | None = None  # ClipGradByGlobalNorm(clip) or no clipping
    multi_tensor: bool = False
    set_to_none: bool = False  # clear_grad(set_to_zero=False): new gradients every step
    # Resume: the first ``resume_at`` steps run in one process on every rank, then the
    # sharded run starts from those params and the state's shards (set_state_dict).
    resume_at: int = 0
    # Checkpoint detour before step ``dcp_at``: torch.distributed.checkpoint saves the shard
    # state (state_as_dtensors), a stray step changes params and state, the params are put
    # back and the state loaded in place (dcp.load, then set_state_dict for the pows).
    dcp_at: int = 0


OPT_CASES = {
    "ddp_adam": Case("ddp"),
    "ddp_clip": Case("ddp", CLIP_NORM),
    "ddp_clip_mt": Case("ddp", CLIP_NORM, multi_tensor=True),
    "ddp_bucket_view_clip_mt": Case("ddp_bucket_view", CLIP_NORM, multi_tensor=True,
                                    set_to_none=True),
    "fsdp_adam": Case("fsdp"),
    "fsdp_clip": Case("fsdp", CLIP_NORM),
    "fsdp_clip_mt": Case("fsdp", CLIP_NORM, multi_tensor=True, set_to_none=True),
    "hsdp_clip": Case("hsdp", CLIP_NORM),
    "fsdp_mixed_clip_mt": Case("fsdp_mixed", CLIP_NORM, multi_tensor=True),
    "fsdp_resume_clip_mt": Case("fsdp", CLIP_NORM, multi_tensor=True, resume_at=3),
    "fsdp_dcp_clip_mt": Case("fsdp_mixed", CLIP_NORM, multi_tensor=True, dcp_at=3),
}
# issue 19's low-precision modes on a bf16 model: fp32 masters kept as remainders beside the
# params (with amsgrad and value clipping), and stochastic rounding of the params with bf16
# moments (random bits keyed by seed, step and element). The gradients are set, not computed:
# every process draws the full gradients of a step and each rank takes its shard
# (``lowp_grads``), so the optimizer sees the same gradient bits sharded and in one process,
# and the runs must agree bit for bit; step LOWP_SKIP_STEP overflows (AMP skip on every rank).
# Each case: ``options`` of triton_adam.AdamW, ``per_tensor`` launches, a resume at
# ``resume_at`` from a single-process state (``shard_full_state`` + ``set_state_dict``) and a
# torch.distributed.checkpoint detour at ``dcp_at`` (as ``Case``).
LOWP_REMAINDER = (("multi_precision", True), ("master_weight_format", "remainder"),
                  ("amsgrad", True))
LOWP_SR = (("stochastic_rounding", True), ("moment_dtype", torch.bfloat16))


@dataclass(frozen=True)
class LowpCase:
    options: tuple  # (name, value) pairs
    value_clip: bool = False  # ClipGradByValue(LOWP_VALUE_CLIP): elementwise, so bitwise
    per_tensor: bool = False
    resume_at: int = 0
    dcp_at: int = 0


LOWP_CASES = {
    "fsdp_lowp_remainder": LowpCase(LOWP_REMAINDER, value_clip=True),
    "fsdp_lowp_remainder_resume_dcp": LowpCase(LOWP_REMAINDER, value_clip=True, resume_at=2,
                                               dcp_at=3),
    "fsdp_lowp_sr": LowpCase(LOWP_SR),
    "fsdp_lowp_sr_resume_dcp": LowpCase(LOWP_SR, per_tensor=True, resume_at=2, dcp_at=3),
}
LOWP_SKIP_STEP = 1
LOWP_GRAD_SCALE = 4.0
LOWP_VALUE_CLIP = 1.0
LOWP_SEED = 31337

# Probes of triton_adam.distributed alone (no optimizer step): the norm rule at step 0 and the
# state gather / shard / checkpoint round trip.
HELPER_CASES = {"helpers_fsdp": "fsdp", "helpers_hsdp": "hsdp", "helpers_fsdp_mixed": "fsdp_mixed"}
# Bad gradients of an FSDP2 model: the per-tensor and the multi-tensor launch path.
ERROR_CASES = ("errors_fsdp", "errors_fsdp_mt")


def make_model(dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    gen = torch.Generator().manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN1), torch.nn.Tanh(),
                                torch.nn.Linear(HIDDEN1, HIDDEN2), torch.nn.Tanh(),
                                torch.nn.Linear(HIDDEN2, OUT))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.to(dtype)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return (torch.randn(GLOBAL_BATCH, IN, generator=gen),
            torch.randn(GLOBAL_BATCH, OUT, generator=gen))


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(x), y)  # mean: DDP/FSDP average the grads


def make_optimizer(named: list[tuple[str, torch.nn.Parameter]], clip: float | None,
                   multi_tensor: bool) -> triton_adam.Adam:
    return triton_adam.Adam(
        learning_rate=LR, parameters=named, per_tensor_launches=not multi_tensor,
        grad_clip=None if clip is None else triton_adam.ClipGradByGlobalNorm(clip))


def grad_norm(params) -> float:
    return float(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in params)))


def reference(case: str) -> dict:
    """The single-process run of ``case``: final params, state, per-step grad norms (before
    clipping), and for a helper case the step-0 grads' norm."""
    model = make_model()
    named = list(model.named_parameters())
    if case in HELPER_CASES:
        x, y = batch(0)
        loss_of(model, x, y).backward()
        return {"norm0": grad_norm(model.parameters()),
                "params": {n: p.detach().clone() for n, p in named}}
    spec = OPT_CASES[case]  # resume_at and set_to_none change nothing in one process
    opt = make_optimizer(named, spec.clip, spec.multi_tensor)
    norms = []
    for step in range(STEPS):
        x, y = batch(step)
        loss_of(model, x, y).backward()
        norms.append(grad_norm(model.parameters()))
        opt.step()
        opt.clear_grad()
    return {"params": {n: p.detach().clone() for n, p in named}, "norms": norms,
            "state": {k: v.clone() for k, v in opt.state_dict().items()}}


def make_lowp_optimizer(named: list[tuple[str, torch.nn.Parameter]],
                        spec: LowpCase) -> triton_adam.AdamW:
    clip = triton_adam.ClipGradByValue(LOWP_VALUE_CLIP) if spec.value_clip else None
    return triton_adam.AdamW(learning_rate=LR, parameters=named, weight_decay=0.05,
                             grad_clip=clip, per_tensor_launches=spec.per_tensor,
                             seed=LOWP_SEED, **dict(spec.options))


def lowp_grads(named: list[tuple[str, torch.nn.Parameter]], step: int) -> dict:
    """The full (unsharded) gradients of ``step``, times LOWP_GRAD_SCALE, in the params' dtype:
    the same in every process; LOWP_SKIP_STEP's hold an inf."""
    gen = torch.Generator().manual_seed(500 + step)
    out = {}
    for name, p in named:
        g = torch.randn(tuple(p.shape), generator=gen)
        if step == LOWP_SKIP_STEP and name == "0.weight":
            g[0, 0] = float("inf")
        out[name] = (g * LOWP_GRAD_SCALE).to(p.dtype)
    return out


def lowp_step(named: list[tuple[str, torch.nn.Parameter]], opt, step: int) -> None:
    """Set ``step``'s gradients (a DTensor parameter gets its shard, as a DTensor laid out
    like it) and step with AMP's tensors (the same flag on every rank)."""
    for name, g in lowp_grads(named, step).items():
        p = dict(named)[name]
        if D.is_dtensor(p):
            from torch.distributed.tensor import DTensor

            g = DTensor.from_local(D.local_shard_like(g, p), p.device_mesh, p.placements,
                                   run_check=False, shape=p.shape, stride=p.stride())
        p.grad = g
    opt.step(grad_scale=torch.tensor([LOWP_GRAD_SCALE]),
             found_inf=torch.tensor([1.0 if step == LOWP_SKIP_STEP else 0.0]))


def clone_state(obj):
    """A state dict's copy (nested dicts, such as ``master_weights``, included)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_state(v) for k, v in obj.items()}
    return obj


def lowp_reference(case: str) -> dict:
    """The single-process run of a low-precision case: final params and state_dict."""
    spec = LOWP_CASES[case]
    model = make_model(torch.bfloat16)
    named = list(model.named_parameters())
    opt = make_lowp_optimizer(named, spec)
    for step in range(STEPS):
        lowp_step(named, opt, step)
    return {"params": {n: p.detach().clone() for n, p in named},
            "state": clone_state(opt.state_dict())}


# ------------------------------------------------------------------------------ distributed
def _wrap(kind: str, world: int, init: dict | None = None,
          dtype: torch.dtype = torch.float32):
    """``(model, module to call, named params, plain params to all-reduce by hand)``; the
    model starts from the parameters ``init`` (name -> tensor) if given."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    model = make_model(dtype)
    if init is not None:
        model.load_state_dict(init)
    manual: list[torch.nn.Parameter] = []
    if kind in ("ddp", "ddp_bucket_view"):
        wrapped = DistributedDataParallel(model,
                                          gradient_as_bucket_view=kind == "ddp_bucket_view")
    elif kind in ("fsdp", "fsdp_mixed", "hsdp"):
        if kind == "hsdp":  # (replicate, shard): every param (Replicate(), Shard(0))
            mesh = init_device_mesh("cpu", (world, 1), mesh_dim_names=("replicate", "shard"))
        else:
            mesh = init_device_mesh("cpu", (world,))
        ignored = None
        if kind == "fsdp_mixed":
            # The last bias stays a plain replicated tensor, its grad averaged by hand (as DDP
            # would): sharded and replicated parameters in one global norm and one bucket.
            manual = [model[4].bias]
            ignored = set(manual)
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer, mesh=mesh, ignored_params=ignored)
        wrapped = fully_shard(model, mesh=mesh, ignored_params=ignored)
    else:
        raise ValueError(kind)
    assert dist.get_world_size() == world
    return model, wrapped, list(model.named_parameters()), manual


def _local_batch(step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch(step)
    rows = GLOBAL_BATCH // world
    return x[rank * rows:(rank + 1) * rows], y[rank * rows:(rank + 1) * rows]


def _average_by_hand(params: list[torch.nn.Parameter], world: int) -> None:
    import torch.distributed as dist

    for p in params:
        dist.all_reduce(p.grad)
        p.grad.div_(world)


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if D.is_dtensor(t) else t).detach().clone()


def _dcp_detour(case: str, wrapped, named, opt, manual, rank: int, world: int,
                scratch: str, set_to_none: bool) -> None:
    """Save the optimizer state with torch.distributed.checkpoint, take a stray step, put the
    params back and load the state into the live optimizer: the run must go on as if the
    stray step never happened."""
    import torch.distributed.checkpoint as dcp

    params = dict(named)
    path = os.path.join(scratch, f"dcp_{case}")
    saved = {n: D.local_tensor(p).detach().clone() for n, p in named}
    dcp.save({"optim": D.state_as_dtensors(opt.state_dict(), params)}, checkpoint_id=path)
    x, y = _local_batch(STEPS + 7, rank, world)  # a batch of no step of the run
    loss_of(wrapped, x, y).backward()
    _average_by_hand(manual, world)
    opt.step()
    opt.clear_grad(set_to_zero=not set_to_none)
    with torch.no_grad():
        for n, p in named:
            D.local_tensor(p).copy_(saved[n])
    state = opt.state_dict()  # moments: views of the live state; pows: copies
    dcp.load({"optim": D.state_as_dtensors(state, params)}, checkpoint_id=path)
    opt.set_state_dict(state)  # the pows (and a scheduler) from the loaded copies


def run_optimizer_case(case: str, rank: int, world: int, scratch: str) -> dict:
    spec = OPT_CASES[case]
    init, full_state = None, None
    if spec.resume_at:  # the first steps in one process, as the reference runs them
        single = make_model()
        single_named = list(single.named_parameters())
        single_opt = make_optimizer(single_named, spec.clip, spec.multi_tensor)
        for step in range(spec.resume_at):
            loss_of(single, *batch(step)).backward()
            single_opt.step()
            single_opt.clear_grad()
        init = {n: p.detach().clone() for n, p in single_named}
        full_state = {k: v.clone() for k, v in single_opt.state_dict().items()}
    model, wrapped, named, manual = _wrap(spec.kind, world, init)
    out: dict = {"local_shapes": {n: tuple(D.local_tensor(p).shape) for n, p in named},
                 "placements": {n: str(getattr(p, "placements", None)) for n, p in named}}
    opt = make_optimizer(named, spec.clip, spec.multi_tensor)
    if full_state is not None:
        opt.set_state_dict(D.shard_full_state(full_state, dict(named)))
    for step in range(spec.resume_at, STEPS):
        if spec.dcp_at and step == spec.dcp_at:
            _dcp_detour(case, wrapped, named, opt, manual, rank, world, scratch,
                        spec.set_to_none)
        x, y = _local_batch(step, rank, world)
        loss_of(wrapped, x, y).backward()
        _average_by_hand(manual, world)
        opt.step()
        opt.clear_grad(set_to_zero=not spec.set_to_none)
    out["params"] = {n: _full(p) for n, p in named}
    state = opt.state_dict()
    out["state"] = {k: v.clone() for k, v in state.items()}
    out["full_state"] = {k: v.clone() for k, v in
                         D.gather_full_state(state, dict(named)).items()}
    return out


def run_lowp_case(case: str, rank: int, world: int, scratch: str) -> dict:
    """A low-precision case on FSDP2 shards (``LOWP_CASES``)."""
    import torch.distributed.checkpoint as dcp

    spec = LOWP_CASES[case]
    init, full_state = None, None
    if spec.resume_at:  # the first steps in one process, then their state split
        single = make_model(torch.bfloat16)
        single_named = list(single.named_parameters())
        single_opt = make_lowp_optimizer(single_named, spec)
        for step in range(spec.resume_at):
            lowp_step(single_named, single_opt, step)
        init = {n: p.detach().clone() for n, p in single_named}
        full_state = clone_state(single_opt.state_dict())
    model, wrapped, named, manual = _wrap("fsdp", world, init, torch.bfloat16)
    params = dict(named)
    opt = make_lowp_optimizer(named, spec)
    if full_state is not None:
        opt.set_state_dict(D.shard_full_state(full_state, params))
    for step in range(spec.resume_at, STEPS):
        if spec.dcp_at and step == spec.dcp_at:
            # Save the shards' state, take a stray step, put the params back and load the
            # state in place: the run must go on as if the stray step never happened.
            path = os.path.join(scratch, f"dcp_{case}")
            saved = {n: D.local_tensor(p).detach().clone() for n, p in named}
            dcp.save({"optim": D.state_as_dtensors(opt.state_dict(), params)},
                     checkpoint_id=path)
            lowp_step(named, opt, STEPS + 7)  # gradients of no step of the run
            with torch.no_grad():
                for n, p in named:
                    D.local_tensor(p).copy_(saved[n])
            state = opt.state_dict()
            dcp.load({"optim": D.state_as_dtensors(state, params)}, checkpoint_id=path)
            opt.set_state_dict(state)
        lowp_step(named, opt, step)
    return {"params": {n: _full(p) for n, p in named},
            "local_shapes": {n: tuple(D.local_tensor(p).shape) for n, p in named},
            "full_state": clone_state(D.gather_full_state(opt.state_dict(), params))}


def run_helper_case(case: str, rank: int, world: int, scratch: str) -> dict:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    model, wrapped, named, manual = _wrap(HELPER_CASES[case], world)
    params = [p for _, p in named]
    out: dict = {}
    # The norm rule on the step-0 gradients: owned local sums, one all-reduce.
    x, y = _local_batch(0, rank, world)
    loss_of(wrapped, x, y).backward()
    _average_by_hand(manual, world)
    for p in params:
        D.check_grad_placement(p, p.grad, "param")
    rule = D.norm_reduction(params)
    out["distributed"] = rule.distributed
    out["owners"] = rule.owners
    sumsq = torch.zeros(1, dtype=torch.float64)
    naive = torch.zeros(1, dtype=torch.float64)
    for p, owned in zip(params, rule.owners):
        local = D.local_tensor(p.grad).double().pow(2).sum()
        naive += local
        if owned:
            sumsq += local
    D.all_reduce_sum_(sumsq, rule.group)
    D.all_reduce_sum_(naive, rule.group)
    out["norm0"] = float(sumsq.sqrt())
    out["naive_norm0"] = float(naive.sqrt())  # every local sum added: replicas counted twice

    # State round trip: a full state -> this rank's shards -> gathered back; and a
    # torch.distributed.checkpoint save / load of the shards in place.
    full = {}
    for i, (n, p) in enumerate(named):
        full[f"{n}_moment1_0"] = torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) + i
        full[f"{n}_beta1_pow_acc_0"] = torch.tensor([0.9 ** (i + 1)])
    mapping = dict(named)
    local = D.shard_full_state(full, mapping)
    out["local_shapes_ok"] = all(
        tuple(local[f"{n}_moment1_0"].shape) == tuple(D.local_tensor(p).shape) for n, p in named)
    gathered = D.gather_full_state(local, mapping)
    out["round_trip_ok"] = (list(gathered) == list(full)
                            and all(torch.equal(gathered[k], full[k]) for k in full))
    wrapped_state = D.state_as_dtensors(local, mapping)
    out["dtensor_views_ok"] = all(
        D.local_tensor(wrapped_state[k]).data_ptr() == local[k].data_ptr() for k in local
        if D.is_dtensor(wrapped_state[k]))
    path = os.path.join(scratch, f"dcp_{case}")
    dcp.save({"optim": wrapped_state}, checkpoint_id=path)
    saved = {k: v.clone() for k, v in local.items()}
    for v in local.values():
        v.zero_()
    dcp.load({"optim": D.state_as_dtensors(local, mapping)}, checkpoint_id=path)
    out["dcp_round_trip_ok"] = all(torch.equal(local[k], saved[k]) for k in saved)
    dist.barrier()
    return out


def run_error_case(case: str, rank: int, world: int) -> dict:
    """Bad input on an FSDP2 model: each probe replaces one gradient and steps; records the
    error (``"Type: message"``, or None if the step passed) and whether any parameter or
    state changed (a rejected step must change nothing)."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    model, wrapped, named, manual = _wrap("fsdp", world)
    x, y = _local_batch(0, rank, world)
    loss_of(wrapped, x, y).backward()
    opt = make_optimizer(named, CLIP_NORM, multi_tensor=case == "errors_fsdp_mt")
    weight = named[0][1]  # "0.weight": a DTensor, (Shard(0),)
    mesh = weight.device_mesh
    good = weight.grad
    before = {n: D.local_tensor(p).detach().clone() for n, p in named}
    probes = {
        # the same values, replicated: the local grad no longer lines up with the shard
        "replicated_grad": good.redistribute(mesh, [Replicate()]),
        # unreduced partial sums
        "partial_grad": DTensor.from_local(torch.zeros(weight.shape), mesh, [Partial()],
                                           run_check=False),
    }
    out: dict = {"errors": {}}
    for label, grad in probes.items():
        weight.grad = grad
        try:
            opt.step()
            out["errors"][label] = None
        except Exception as exc:  # noqa: BLE001 (recorded for the test)
            out["errors"][label] = f"{type(exc).__name__}: {exc}"
    # A plain parameter handed a DTensor gradient (bypassing autograd's own checks).
    plain = torch.nn.Parameter(torch.zeros(4))
    plain_opt = make_optimizer([("plain", plain)], CLIP_NORM, multi_tensor=False)
    plain.grad = torch.zeros(4)
    plain_opt.step()  # builds the bucket from a plain gradient
    try:
        plain.grad = DTensor.from_local(torch.zeros(4), mesh, [Replicate()], run_check=False)
        plain_opt.step()
        out["errors"]["dtensor_grad_of_plain_param"] = None
    except Exception as exc:  # noqa: BLE001
        out["errors"]["dtensor_grad_of_plain_param"] = f"{type(exc).__name__}: {exc}"
    weight.grad = good
    out["unchanged"] = all(torch.equal(D.local_tensor(p), before[n]) for n, p in named)
    out["no_state"] = opt.state_dict() == {}
    # The good gradient still steps afterwards.
    opt.step()
    out["stepped"] = not all(torch.equal(D.local_tensor(p), before[n]) for n, p in named)
    # A full (gathered) state handed to a sharded run's set_state_dict, unsliced.
    full = D.gather_full_state(opt.state_dict(), dict(named))
    try:
        opt.set_state_dict(full)
        out["errors"]["full_state_into_shards"] = None
    except Exception as exc:  # noqa: BLE001
        out["errors"]["full_state_into_shards"] = f"{type(exc).__name__}: {exc}"
    return out


def _run_case(case: str, rank: int, world: int, out_dir: str) -> dict:
    if case in OPT_CASES:
        return run_optimizer_case(case, rank, world, out_dir)
    if case in ERROR_CASES:
        return run_error_case(case, rank, world)
    if case in LOWP_CASES:
        return run_lowp_case(case, rank, world, out_dir)
    return run_helper_case(case, rank, world, out_dir)


def main(argv: list[str]) -> int:
    return gloo.serve(argv, _run_case)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
