"""What does one optimizer step cost the host on realistic parameter lists, against torch's Adam?

For a GPT-2-small-shaped list (148 tensors) and a Llama-7B-shaped list (291 tensors), with
the real tensor counts and shape structure but every dimension divided (the counts are what
matter; see ``docs/performance.md`` section 3), and for every mode triton_adam
supports now, prints one table with, per step:

* **launches**: Triton kernel launches plus aten operations that would launch a GPU kernel
  (``perf/counters.py``); a foreach or fused aten operation launches at least one kernel on
  a GPU (torch packs at most 36 tensors or 320 chunks of 65536 elements per launch);
* **syncs**: calls that would wait for the GPU (``.item()``, ``bool(t)``, ``.cpu()``...);
* **host time**: the median wall time of ``step()`` with the Triton launches replaced by
  no-ops, after a warm-up step (triton_adam rows only: the torch rows do their arithmetic on
  the CPU here, so their time is not host overhead).

The torch rows (for-loop, foreach, fused, each also after ``clip_grad_norm_``) run for real
on the CPU; their counts are what the same calls dispatch on a GPU. Run it with::

    python perf/step_cost.py                     # the table of docs/performance.md
    python perf/step_cost.py --steps 3 --shrink 4 --json perf/out/step_cost.json

It runs with or without ``TRITON_INTERPRET=1`` (it sets it: triton_adam accepts CPU tensors
only under the interpreter, and no kernel is actually run).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: see the docstring

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402

import triton_adam  # noqa: E402
from counters import DeviceOps, TritonLaunches  # noqa: E402

Shape = tuple[int, ...]
MIN_TIMED_S = 0.3  # timed host work per row, at least (see measure)
MAX_TIMED_STEPS = 5000


def gpt2_small(divisor: int) -> list[Shape]:
    """GPT-2 small's 148 parameter shapes (HF ``GPT2LMHeadModel``, tied head), dims / divisor."""
    d, vocab, ctx = 768 // divisor, 50257 // divisor, 1024 // divisor
    layer = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,),
             (4 * d, d), (d,)]  # ln_1, attn c_attn, c_proj, ln_2, mlp c_fc, c_proj
    return [(vocab, d), (ctx, d)] + layer * 12 + [(d,), (d,)]


def llama_7b(divisor: int) -> list[Shape]:
    """Llama-7B's 291 parameter shapes (HF ``LlamaForCausalLM``), dims / divisor."""
    d, ff, vocab = 4096 // divisor, 11008 // divisor, 32000 // divisor
    layer = [(d, d)] * 4 + [(ff, d), (ff, d), (d, ff), (d,), (d,)]  # q k v o, gate up down, norms
    return [(vocab, d)] + layer * 32 + [(d,), (vocab, d)]


# name -> (shapes for a divisor, the real tensor count, default divisor)
MODELS: dict[str, tuple[Callable[[int], list[Shape]], int, int]] = {
    "gpt2-small": (gpt2_small, 148, 8),
    "llama-7b": (llama_7b, 291, 32),
}


@dataclass(frozen=True)
class Stepper:
    """One row of the table: how to build an optimizer step for a parameter list."""

    name: str
    build: Callable[[list[torch.Tensor]], object]  # params -> optimizer
    clip: bool = False  # clip_grad_norm_(params, 1.0) before each step
    host_time: bool = False  # its step does no arithmetic on the host once launches are no-ops
    new_grads: bool = False  # every step gets new gradient tensors (zero_grad(set_to_none))


# Modes of triton_adam (the default path, Paddle's use_multi_tensor=True, clipping,
# capturable steps, one launch per tensor), then torch's implementations on the same list.
_CLIP = triton_adam.ClipGradByGlobalNorm
STEPPERS = [
    Stepper("triton_adam Adam (default)", lambda ps: triton_adam.Adam(parameters=ps),
            host_time=True),
    Stepper("triton_adam Adam use_multi_tensor=True",
            lambda ps: triton_adam.Adam(parameters=ps, use_multi_tensor=True), host_time=True),
    Stepper("triton_adam Adam amsgrad",
            lambda ps: triton_adam.Adam(parameters=ps, amsgrad=True), host_time=True),
    Stepper("triton_adam Adam L2Decay",
            lambda ps: triton_adam.Adam(parameters=ps, weight_decay=triton_adam.L2Decay(1e-4)),
            host_time=True),
    Stepper("triton_adam AdamW", lambda ps: triton_adam.AdamW(parameters=ps), host_time=True),
    Stepper("triton_adam Adam, new grads each step",
            lambda ps: triton_adam.Adam(parameters=ps), host_time=True, new_grads=True),
    Stepper("triton_adam AdamW amsgrad + ClipGradByGlobalNorm",
            lambda ps: triton_adam.AdamW(parameters=ps, amsgrad=True, grad_clip=_CLIP(1.0)),
            host_time=True),
    Stepper("triton_adam Adam capturable",
            lambda ps: triton_adam.Adam(parameters=ps, capturable=True), host_time=True),
    Stepper("triton_adam AdamW capturable amsgrad + ClipGradByGlobalNorm",
            lambda ps: triton_adam.AdamW(parameters=ps, amsgrad=True, grad_clip=_CLIP(1.0),
                                         capturable=True), host_time=True),
    Stepper("triton_adam Adam per_tensor_launches=True",
            lambda ps: triton_adam.Adam(parameters=ps, per_tensor_launches=True),
            host_time=True),
    Stepper("triton_adam.optim AdamW (PyTorch face)",
            lambda ps: triton_adam.optim.AdamW(ps), host_time=True),
    Stepper("triton_adam.optim AdamW + OneCycleLR (lr and betas change every step)",
            lambda ps: _with_one_cycle(triton_adam.optim.AdamW(ps)), host_time=True),
    Stepper("torch Adam for-loop", lambda ps: torch.optim.Adam(ps, foreach=False)),
    Stepper("torch Adam foreach", lambda ps: torch.optim.Adam(ps, foreach=True)),
    Stepper("torch Adam fused", lambda ps: torch.optim.Adam(ps, fused=True)),
    Stepper("clip_grad_norm_ + torch Adam foreach",
            lambda ps: torch.optim.Adam(ps, foreach=True), clip=True),
    Stepper("clip_grad_norm_ + torch Adam fused",
            lambda ps: torch.optim.Adam(ps, fused=True), clip=True),
]


class _Scheduled:
    """An optimizer whose step is followed by its scheduler's (what a training loop does)."""

    def __init__(self, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.optimizer, self.scheduler = optimizer, scheduler

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()


def _with_one_cycle(optimizer: torch.optim.Optimizer) -> _Scheduled:
    return _Scheduled(optimizer, torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1e-3, total_steps=10_000))


def host_tensors(optimizer: object) -> list[torch.Tensor]:
    """State that stays on the host on a GPU machine: torch's non-capturable step counts."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return []  # triton_adam keeps all of its state on the parameters' device
    if optimizer.defaults.get("fused") or optimizer.defaults.get("capturable"):
        return []
    return [s["step"] for s in optimizer.state.values() if "step" in s]


def measure(model: str, stepper: Stepper, divisor: int, steps: int) -> dict:
    """One row: counts of one steady-state step and the median host time of ``steps``."""
    shapes_for, _, _ = MODELS[model]
    params = [torch.nn.Parameter(torch.randn(shape) * 0.02) for shape in shapes_for(divisor)]
    # Two sets of gradients: alternating them gives every step new gradient objects at new
    # addresses (what zero_grad(set_to_none=True) + backward does), outside the timed region.
    grad_sets = [[torch.randn_like(p) * 1e-3 for p in params] for _ in range(2)]
    for p, g in zip(params, grad_sets[0]):
        p.grad = g
    optimizer = stepper.build(params)

    def step() -> None:
        if stepper.clip:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    with TritonLaunches(execute=False):
        # Warm-up: the first step creates the state and the launch tables; a few more let
        # one-time costs of the process (first calls, allocator growth) pass before timing,
        # which otherwise fall on whichever row is measured first.
        for _ in range(5 if stepper.host_time else 1):
            step()
        times = []
        # At least ``steps`` timed steps and at least MIN_TIMED_S of them, so that the
        # median of a fast row (small lists) is not one burst of a shared machine's noise.
        i = 0
        while stepper.host_time and (i < steps or (sum(times) < MIN_TIMED_S
                                                   and i < MAX_TIMED_STEPS)):
            i += 1
            if stepper.new_grads:
                for p, g in zip(params, grad_sets[i % 2]):  # i from 1: new ones first
                    p.grad = g
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    with TritonLaunches(execute=False) as triton_launches, \
            DeviceOps(host_tensors(optimizer)) as device:
        step()
    host_ms = statistics.median(times) * 1e3 if times else None
    return {
        "model": model, "optimizer": stepper.name, "tensors": len(params),
        "params": sum(p.numel() for p in params),
        "triton_launches": triton_launches.count, "aten_launches": device.launches,
        "launches": triton_launches.count + device.launches, "aten_ops": dict(device.ops),
        "syncs": device.syncs, "host_ms": host_ms,
        "host_us_per_tensor": host_ms * 1e3 / len(params) if host_ms is not None else None,
    }


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| model | optimizer | tensors | launches/step (Triton + aten) | syncs/step | "
             "host ms/step | host µs/tensor |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        host = ("-", "-") if r["host_ms"] is None else (f"{r['host_ms']:.2f}",
                                                        f"{r['host_us_per_tensor']:.1f}")
        lines.append(f"| {r['model']} | {r['optimizer']} | {r['tensors']} | {r['launches']} "
                     f"({r['triton_launches']} + {r['aten_launches']}) | {r['syncs']} | "
                     f"{host[0]} | {host[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps (median)")
    parser.add_argument("--shrink", type=int, default=1,
                        help="divide the dimensions by this much more (faster)")
    parser.add_argument("--model", choices=sorted(MODELS), action="append",
                        help="this model only (repeatable; default: all)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    rows = []
    # One discarded row first: the process's one-time costs (first launches through each
    # code path, allocator growth) otherwise land on whichever row is timed first.
    first = (args.model or list(MODELS))[0]
    measure(first, STEPPERS[0], MODELS[first][2] * args.shrink, args.steps)
    for model in args.model or list(MODELS):
        _, count, divisor = MODELS[model]
        for stepper in STEPPERS:
            row = measure(model, stepper, divisor * args.shrink, args.steps)
            assert row["tensors"] == count, (model, row["tensors"])
            rows.append(row)
    print(table(rows))
    print(f"torch {torch.__version__} (CPU); a foreach/fused aten op is >= 1 GPU launch")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
