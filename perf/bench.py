"""How fast is a step on a GPU, in GB/s of floor bytes, against torch's Adam and a device copy?

On a CUDA machine, for 1e6 to 1e9 fp32 parameters (the sizes that fit in memory), measures
the median step time with ``triton.testing.do_bench`` (which flushes L2 before each run) for
every row of ``IMPLEMENTATIONS`` and a device-to-device copy of the same size, all in one run,
and prints time, GB/s computed from the floor of each row's mode (``perf/floors.py``) and the
ratio to the copy's GB/s. Ratios are only meaningful within one run::

    python perf/bench.py                         # table; JSON to perf/out/bench.json
    python perf/bench.py --max-params 1e8 --plot perf/out/bandwidth.png

Without a CUDA device it says so and exits 0, measuring nothing. Importing it never touches
the CUDA driver (``torch.cuda`` and Triton's driver are used inside ``main`` only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from floors import FLOORS

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "bench.json")
SIZES = [10**6, 10**7, 10**8, 10**9]
COPY_BYTES_PER_ELEMENT = 8  # fp32 read + write


@dataclass(frozen=True)
class Implementation:
    """One measured row: builds a step over ``params`` (grads set) and names its floor mode."""

    name: str
    build: Callable[[list[torch.Tensor]], Callable[[], None]]
    floor_mode: str  # FLOORS key whose bytes turn the time into GB/s
    extra_grad_passes: int = 0  # the mode's extra reads of g (clipping: +1 at the floor)
    state_bytes_per_param: int = 8  # memory its state takes beside p and g (m, v)


def _triton_adam_per_tensor(params: list[torch.Tensor]) -> Callable[[], None]:
    import triton_adam

    return triton_adam.Adam(parameters=params).step


def _torch_adam(clip: bool, **kwargs: bool) -> Callable[[list[torch.Tensor]],
                                                        Callable[[], None]]:
    def build(params: list[torch.Tensor]) -> Callable[[], None]:
        optimizer = torch.optim.Adam(params, **kwargs)

        def step() -> None:
            if clip:
                torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            optimizer.step()

        return step

    return build


# Add rows here as modes land (do not add a row before its implementation exists):
#   "triton_adam multi-tensor"        -> triton_adam.Adam(..., use_multi_tensor=True), "fp32"
#   "triton_adam clip (global norm)"  -> triton_adam.Adam(..., grad_clip=ClipGradByGlobalNorm(1.0)),
#                                        "fp32" with extra_grad_passes=1
#   "triton_adam bf16 + master"       -> bf16 params with multi_precision=True, "bf16 master"
IMPLEMENTATIONS = [
    Implementation("triton_adam per-tensor", _triton_adam_per_tensor, "fp32"),
    Implementation("torch Adam fused", _torch_adam(False, fused=True), "fp32"),
    Implementation("torch Adam foreach", _torch_adam(False, foreach=True), "fp32"),
    Implementation("clip_grad_norm_ + torch Adam fused", _torch_adam(True, fused=True), "fp32",
                   extra_grad_passes=1),
    Implementation("clip_grad_norm_ + torch Adam foreach", _torch_adam(True, foreach=True),
                   "fp32", extra_grad_passes=1),
]


def floor_bytes(impl: Implementation) -> int:
    """Bytes per parameter a step of ``impl``'s mode must move (clipping reads g once more)."""
    floor = FLOORS[impl.floor_mode]
    return floor.total + impl.extra_grad_passes * floor.grad_bytes


def fits(n: int, free_bytes: int) -> bool:
    """p, g, the largest optimizer state and the copy's two buffers, with 10 % headroom."""
    per_param = 4 + 4 + max(i.state_bytes_per_param for i in IMPLEMENTATIONS) + 8
    return n * per_param * 1.1 < free_bytes


def bench_size(n: int, warmup_ms: int, rep_ms: int) -> list[dict]:
    """Rows for one size: the copy first, then every implementation, same process and run."""
    from triton.testing import do_bench

    rows = []
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src), warmup=warmup_ms, rep=rep_ms,
                       return_mode="median")
    copy_gbs = n * COPY_BYTES_PER_ELEMENT / copy_ms / 1e6
    rows.append({"impl": "device copy", "params": n, "ms": copy_ms, "gb_per_s": copy_gbs,
                 "bytes_per_param": COPY_BYTES_PER_ELEMENT, "vs_copy": 1.0})
    del src, dst
    for impl in IMPLEMENTATIONS:
        param = torch.nn.Parameter(torch.randn(n, device="cuda") * 0.02)
        param.grad = torch.randn_like(param) * 1e-3
        step = impl.build([param])
        step()  # creates the state and compiles
        torch.cuda.synchronize()
        ms = do_bench(step, warmup=warmup_ms, rep=rep_ms, return_mode="median")
        gbs = n * floor_bytes(impl) / ms / 1e6
        rows.append({"impl": impl.name, "params": n, "ms": ms, "gb_per_s": gbs,
                     "bytes_per_param": floor_bytes(impl), "vs_copy": gbs / copy_gbs})
        del step, param
        torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| params | implementation | floor B/param | median ms | GB/s (floor) | vs copy |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['params']:.0e} | {r['impl']} | {r['bytes_per_param']} | {r['ms']:.3f} | "
              f"{r['gb_per_s']:.0f} | {r['vs_copy']:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-params", type=float, default=1e9)
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=200)
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"default: {DEFAULT_JSON}")
    parser.add_argument("--plot", metavar="PNG", help="also draw GB/s against size")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        print("perf/bench.py needs a CUDA device (and TRITON_INTERPRET unset): nothing measured")
        return 0
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    for n in SIZES:
        free, _ = torch.cuda.mem_get_info()
        if n > args.max_params or not fits(n, free):
            print(f"skipping {n:.0e} params (limit or memory)")
            continue
        rows += bench_size(n, args.warmup_ms, args.rep_ms)
    print(table(rows))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    if args.plot:
        import plot

        plot.bandwidth(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
