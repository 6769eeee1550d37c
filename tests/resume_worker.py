"""The training runs behind tests/test_resume.py, and the fresh process that resumes them.

A *mode* is one optimizer configuration (``MODES``). ``train`` runs it on a fixed problem:
deterministic parameters and gradients (a function of the mode, the step and the parameter,
so any process can regenerate them), some gradients None so that step counts and pows differ
per parameter, one parameter without a gradient until after the checkpoint (absent from the
saved state, it must start fresh after the resume).

Run as a script, ``python resume_worker.py DIR MODE [MODE ...]``: for each mode, build the
parameters (filled with NaN, so that only loaded values can make the result right) and the
optimizer afresh, load ``DIR/{file}.pdparams`` and ``DIR/{file}.pdopt`` (``triton_adam.load``,
``set_state_dict`` before the first step), train the remaining steps and write
``DIR/{file}.resumed.pdparams`` / ``.pdopt``; a failure is written to ``DIR/{file}.error``
and the next mode runs. One process serves every mode (the interpreter start-up is the
expensive part).

Adding a mode (master weights, sparse gradients, ...): add a ``Mode`` to ``BASE_MODES`` with
its ``make_optimizer``; ``dtype`` sets the parameters' dtype (and, by default, the
gradients'), ``make_grad`` replaces the dense gradient (e.g. a sparse COO tensor for
``lazy_mode``), ``multi_tensor_variant=False`` if the mode has no multi-tensor form.
test_resume.py picks the new entry up by itself.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (no GPU here)

import dataclasses  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import triton_adam  # noqa: E402
from triton_adam import lr  # noqa: E402

STEPS_BEFORE = 3  # steps before the checkpoint
STEPS_AFTER = 3  # steps after it, in the fresh process
NAMES = ("fc.w_0", "fc.b_0", "emb.w_0", "head.w_0")
SHAPES = ((5, 3), (3,), (4, 2, 2), (7,))
LATE = 3  # the parameter whose first gradient comes after the checkpoint
# (step, parameter) pairs whose gradient is None: param 1 misses a step on each side of the
# checkpoint, param LATE every step before it.
SKIP = frozenset({(0, 1), (4, 1)} | {(s, LATE) for s in range(STEPS_BEFORE)})


def dense_grad(rng: np.random.Generator, param: torch.Tensor) -> torch.Tensor:
    """A dense gradient of ``param``'s shape and dtype (scaled so that clipping bites)."""
    g = rng.standard_normal(tuple(param.shape)) * 0.7
    return torch.from_numpy(g).to(param.dtype)


@dataclass(frozen=True)
class Mode:
    """One optimizer configuration to resume.

    ``make_optimizer(params, scheduler, multi_tensor)`` builds it over the (named) parameters;
    ``scheduler`` (a factory) drives the learning rate when given and is stepped after every
    optimizer step; ``attrs(i, param)`` sets per-parameter attributes (``set_param_attr``)
    besides the name.
    """

    name: str
    make_optimizer: Callable[..., object]
    dtype: torch.dtype = torch.float32
    scheduler: Callable[[], lr.LRScheduler] | None = None
    attrs: Callable[[int, torch.Tensor], None] | None = None
    make_grad: Callable[[np.random.Generator, torch.Tensor], torch.Tensor] = dense_grad
    skip: frozenset = SKIP
    multi_tensor: bool = False
    multi_tensor_variant: bool = True

    @property
    def file(self) -> str:
        """The file-name stem of this mode's checkpoint."""
        return self.name.replace("/", "-")


def sparse_grad(rng: np.random.Generator, param: torch.Tensor) -> torch.Tensor:
    """A row-sparse COO gradient (unsorted ids with a duplicate), as Embedding(sparse=True)."""
    rows = param.shape[0]
    ids = rng.integers(0, rows, size=3)
    ids = np.concatenate([ids, ids[:1]])
    values = rng.standard_normal((len(ids), *param.shape[1:])) * 0.7
    return torch.sparse_coo_tensor(torch.from_numpy(ids).reshape(1, -1),
                                   torch.from_numpy(values).to(param.dtype), tuple(param.shape))


def _groups(params: list[torch.Tensor]) -> list[dict]:
    """Two groups with their own learning-rate scale, betas, epsilon and decay."""
    return [
        {"params": params[:2], "learning_rate": 0.5, "beta1": 0.8, "weight_decay": 0.01},
        {"params": params[2:], "learning_rate": 2.0, "beta2": 0.99, "epsilon": 1e-6},
    ]


def _l1_l2_attrs(i: int, p: torch.Tensor) -> None:
    if i == 0:
        triton_adam.set_param_attr(p, regularizer=triton_adam.L1Decay(0.02))
    if i == 2:
        triton_adam.set_param_attr(p, learning_rate=0.5)


def _no_clip_bias(i: int, p: torch.Tensor) -> None:
    if i == 1:
        triton_adam.set_param_attr(p, need_clip=False)


BASE_MODES = [
    Mode("adam", lambda ps, s, mt: triton_adam.Adam(0.01, parameters=ps,
                                                     use_multi_tensor=mt)),
    Mode("adam-float64-l2", lambda ps, s, mt: triton_adam.Adam(
        0.01, parameters=ps, weight_decay=0.01, use_multi_tensor=mt), dtype=torch.float64),
    Mode("groups", lambda ps, s, mt: triton_adam.Adam(
        0.01, parameters=_groups(ps), use_multi_tensor=mt)),
    Mode("amsgrad-named", lambda ps, s, mt: triton_adam.Adam(
        0.02, parameters=ps, amsgrad=True, name="myopt", use_multi_tensor=mt)),
    Mode("adamw", lambda ps, s, mt: triton_adam.AdamW(
        0.01, parameters=ps, weight_decay=0.1, use_multi_tensor=mt,
        lr_ratio=lambda p: 0.5 if p.ndim == 1 else 1.0,
        apply_decay_param_fun=lambda n: not n.endswith("b_0"))),
    Mode("l1-l2-attrs", lambda ps, s, mt: triton_adam.Adam(
        0.01, parameters=ps, weight_decay=triton_adam.L2Decay(0.03), use_multi_tensor=mt),
         attrs=_l1_l2_attrs),
    Mode("clip-global-norm", lambda ps, s, mt: triton_adam.Adam(
        0.01, parameters=ps, grad_clip=triton_adam.ClipGradByGlobalNorm(0.5),
        use_multi_tensor=mt), attrs=_no_clip_bias),
    Mode("groups-clip-amsgrad", lambda ps, s, mt: triton_adam.Adam(
        0.01, parameters=_groups(ps), grad_clip=triton_adam.ClipGradByGlobalNorm(0.8),
        amsgrad=True, use_multi_tensor=mt)),
    Mode("tensor-betas", lambda ps, s, mt: triton_adam.Adam(
        0.01, beta1=torch.tensor([0.85]), beta2=torch.tensor([0.995]), parameters=ps,
        use_multi_tensor=mt)),
    Mode("step-decay", lambda ps, s, mt: triton_adam.Adam(s, parameters=ps,
                                                           use_multi_tensor=mt),
         scheduler=lambda: lr.StepDecay(0.05, step_size=2, gamma=0.5)),
    Mode("cosine-warm-restarts-adamw", lambda ps, s, mt: triton_adam.AdamW(
        s, parameters=ps, weight_decay=0.05, use_multi_tensor=mt),
         scheduler=lambda: lr.CosineAnnealingWarmRestarts(0.05, T_0=2, T_mult=2)),
    Mode("fp16-master", lambda ps, s, mt: triton_adam.Adam(
        0.01, parameters=ps, multi_precision=True, use_multi_tensor=mt), dtype=torch.float16),
    Mode("bf16-master-adamw-amsgrad", lambda ps, s, mt: triton_adam.AdamW(
        0.01, parameters=ps, multi_precision=True, amsgrad=True, name="myopt",
        use_multi_tensor=mt), dtype=torch.bfloat16),
    Mode("lazy-sparse", lambda ps, s, mt: triton_adam.Adam(
        0.01, parameters=ps, lazy_mode=True, amsgrad=True, use_multi_tensor=mt),
         make_grad=sparse_grad),
]


def _with_multi_tensor(modes: list[Mode]) -> dict[str, Mode]:
    out = {}
    for m in modes:
        out[m.name] = m
        if m.multi_tensor_variant:
            mt = dataclasses.replace(m, name=m.name + "/multi-tensor", multi_tensor=True)
            out[mt.name] = mt
    return out


MODES: dict[str, Mode] = _with_multi_tensor(BASE_MODES)


# ------------------------------------------------------------------------------ training
def _rng(mode: Mode, *key: int) -> np.random.Generator:
    # A seed from the base mode's name: both paths of a mode see the same problem.
    base = mode.name.split("/")[0]
    return np.random.default_rng([sum(map(ord, base)), len(base), *key])


def make_params(mode: Mode, fill: float | None = None) -> list[torch.Tensor]:
    """The mode's named parameters: its initial values, or every element ``fill``."""
    params = []
    for i, (name, shape) in enumerate(zip(NAMES, SHAPES)):
        if fill is None:
            t = torch.from_numpy(_rng(mode, 1000, i).standard_normal(shape)).to(mode.dtype)
        else:
            t = torch.full(shape, fill, dtype=mode.dtype)
        p = torch.nn.Parameter(t)
        triton_adam.set_param_attr(p, name=name)
        if mode.attrs is not None:
            mode.attrs(i, p)
        params.append(p)
    return params


def make_optimizer(mode: Mode, params: list[torch.Tensor]):
    """``(optimizer, scheduler or None)`` of the mode, fresh."""
    sched = mode.scheduler() if mode.scheduler is not None else None
    return mode.make_optimizer(params, sched, mode.multi_tensor), sched


def train(mode: Mode, params: list[torch.Tensor], opt, sched, steps: range) -> None:
    """Steps ``steps`` of the mode's problem (gradients regenerated from the step number)."""
    for step in steps:
        for i, p in enumerate(params):
            p.grad = (None if (step, i) in mode.skip
                      else mode.make_grad(_rng(mode, step, i), p))
        opt.step()
        if sched is not None:
            sched.step()
        opt.clear_grad(set_to_zero=False)


def param_dict(params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {triton_adam.param_name(p): p.detach() for p in params}


def resume(mode: Mode, directory: str) -> None:
    """Load the mode's checkpoint into a fresh optimizer, train on, write the result."""
    stem = os.path.join(directory, mode.file)
    params = make_params(mode, fill=float("nan"))
    saved = triton_adam.load(stem + ".pdparams")
    with torch.no_grad():
        for p in params:
            p.copy_(saved[triton_adam.param_name(p)])
    opt, sched = make_optimizer(mode, params)
    opt.set_state_dict(triton_adam.load(stem + ".pdopt"))  # before the first step
    train(mode, params, opt, sched, range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER))
    triton_adam.save(param_dict(params), stem + ".resumed.pdparams")
    triton_adam.save(opt.state_dict(), stem + ".resumed.pdopt")


def main(argv: list[str]) -> int:
    directory, names = argv[0], argv[1:]
    failed = 0
    for name in names:
        mode = MODES[name]
        try:
            resume(mode, directory)
        except Exception:
            failed += 1
            with open(os.path.join(directory, mode.file + ".error"), "w") as f:
                f.write(traceback.format_exc())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
