"""The training runs behind tests/test_resume.py, and the fresh process that resumes them.

A *mode* is one configuration of the shared table (``tests/configs.py``) on one update path
(``MODES``: every configuration, per-tensor and multi-tensor). ``train`` runs it on a fixed
problem: deterministic parameters and gradients (a function of the configuration, the step
and the parameter, so any process can regenerate them), some gradients None so that step
counts and pows differ per parameter, one parameter without a gradient until after the
checkpoint (absent from the saved state, it must start fresh after the resume).

Run as a script, ``python resume_worker.py DIR MODE [MODE ...]``: for each mode, build the
parameters (filled with NaN, so that only loaded values can make the result right) and the
optimizer afresh, load ``DIR/{file}.pdparams`` and ``DIR/{file}.pdopt`` (``triton_adam.load``,
``set_state_dict`` before the first step), train the remaining steps and write
``DIR/{file}.resumed.pdparams`` / ``.pdopt``; a failure is written to ``DIR/{file}.error``
and the next mode runs. One process serves every mode (the interpreter start-up is the
expensive part). It runs on the device of the test session (``tests/devices.py``: the CPU
under the interpreter, or ``TRITON_ADAM_TEST_DEVICE=cuda``).

A configuration added to the table is resumed here too, with nothing to edit.
"""

from __future__ import annotations

import devices  # noqa: I001  (first: it sets TRITON_INTERPRET before triton is imported)

import os
import sys
import traceback
from dataclasses import dataclass

import numpy as np
import torch

import triton_adam
from configs import CONFIGS, Config

STEPS_BEFORE = 3  # steps before the checkpoint
STEPS_AFTER = 3  # steps after it, in the fresh process
NAMES = ("fc.w_0", "fc.b_0", "emb.w_0", "head.w_0")
SHAPES = ((5, 3), (3,), (4, 2, 2), (7,))
LATE = 3  # the parameter whose first gradient comes after the checkpoint
# (step, parameter) pairs whose gradient is None: param 1 misses a step on each side of the
# checkpoint, param LATE every step before it.
SKIP = frozenset({(0, 1), (4, 1)} | {(s, LATE) for s in range(STEPS_BEFORE)})


@dataclass(frozen=True)
class Mode:
    """One configuration of the table on one update path."""

    config: Config
    multi_tensor: bool = False

    @property
    def name(self) -> str:
        return self.config.name + ("/multi-tensor" if self.multi_tensor else "")

    @property
    def file(self) -> str:
        """The file-name stem of this mode's checkpoint."""
        return self.name.replace("/", "-")


MODES: dict[str, Mode] = {m.name: m for c in CONFIGS.values()
                          for m in (Mode(c), Mode(c, multi_tensor=True))}


# ------------------------------------------------------------------------------ training
def _rng(mode: Mode, *key: int) -> np.random.Generator:
    # A seed from the configuration's name: both paths of a mode see the same problem.
    name = mode.config.name
    return np.random.default_rng([sum(map(ord, name)), len(name), *key])


def make_params(mode: Mode, fill: float | None = None) -> list[torch.Tensor]:
    """The mode's named parameters: its initial values, or every element ``fill``."""
    dtype = mode.config.dtype
    params = []
    for i, (name, shape) in enumerate(zip(NAMES, SHAPES)):
        if fill is None:
            t = torch.from_numpy(_rng(mode, 1000, i).standard_normal(shape)).to(dtype)
        else:
            t = torch.full(shape, fill, dtype=dtype)
        p = torch.nn.Parameter(t.to(devices.DEVICE))
        triton_adam.set_param_attr(p, name=name)
        params.append(p)
    mode.config.set_attrs(params)
    return params


def make_optimizer(mode: Mode, params: list[torch.Tensor]):
    """``(optimizer, scheduler or None)`` of the mode, fresh."""
    return mode.config.start(params, per_tensor_launches=not mode.multi_tensor)


def train(mode: Mode, params: list[torch.Tensor], opt, sched, steps: range) -> None:
    """Steps ``steps`` of the mode's problem (gradients regenerated from the step number)."""
    for step in steps:
        for i, p in enumerate(params):
            p.grad = (None if (step, i) in SKIP
                      else mode.config.grad(_rng(mode, step, i), p))
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
