"""How fast is a step on a GPU, in GB/s of floor bytes, against torch's AdamW and a device copy?

On a CUDA machine, for single fp32 tensors of 1e6 to 1e9 parameters (the sizes that fit in
memory) and, with ``--lists``, for the real GPT-2-small parameter list and a Llama-shaped one,
measures every row of ``IMPLEMENTATIONS`` and a device-to-device copy of the same size, all in
one run:

* ``gpu_ms``: the device time of one step, from a burst of steps queued behind a spin kernel
  (the host enqueues them while the GPU sleeps, so host time is off the critical path); when
  the host could not keep ahead of the spin, ``triton.testing.do_bench``'s median instead
  (``gpu_ms_exact`` false);
* ``bench_ms``: ``triton.testing.do_bench``'s median (one step between CUDA events, L2
  flushed before each);
* ``wall_ms``: the whole step as a user sees it, host included: back-to-back steps timed on the
  host, then a synchronize;
* GB/s from the floor bytes of the row's mode (``perf/floors.py``: 28 B/param for fp32 AdamW,
  + 4 for the clipping norm pass) over ``gpu_ms``, its ratio to the copy's GB/s, and the
  ratio of torch's time to this row's (``vs_torch``: fused AdamW, with ``clip_grad_norm_`` for
  the clipped rows; above 1 is faster than torch), on GPU and wall time.

Ratios are only meaningful within one run::

    python perf/bench.py                         # table; JSON to perf/out/bench.json
    python perf/bench.py --max-params 1e8 --lists --plot perf/out/bandwidth.png

Without a CUDA device it says so and exits 0, measuring nothing. Importing it never touches
the CUDA driver (``torch.cuda`` and Triton's driver are used inside functions only).
``perf/gpu_check.py`` runs the same functions (and, in its dry run, the same code on the CPU
with ``CpuTimer``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from floors import FLOORS

DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "bench.json")
SIZES = [10**6, 10**7, 10**8, 10**9]
COPY_BYTES_PER_ELEMENT = 8  # fp32 read + write
LR, WEIGHT_DECAY, CLIP_NORM = 1e-3, 0.01, 1.0

Shape = tuple[int, ...]
Step = Callable[[], None]


@dataclass(frozen=True)
class Implementation:
    """One measured row: builds a step over ``params`` (grads set) and names its floor mode."""

    name: str
    build: Callable[[list[torch.Tensor]], Step]
    floor_mode: str = "fp32"  # FLOORS key whose bytes turn the time into GB/s
    extra_grad_passes: int = 0  # the mode's extra reads of g (clipping: +1 at the floor)
    peer: str = "torch AdamW fused"  # the torch row its time is compared with
    # memory beside p and g: m, v and the temporaries of torch's foreach implementation
    state_bytes_per_param: int = 8
    param_dtype: torch.dtype = torch.float32  # the params' and grads' dtype


def _triton_adamw(multi_tensor: bool, clip: bool) -> Callable[[list[torch.Tensor]], Step]:
    def build(params: list[torch.Tensor]) -> Step:
        import triton_adam

        return triton_adam.AdamW(
            LR, parameters=params, weight_decay=WEIGHT_DECAY, per_tensor_launches=not multi_tensor,
            grad_clip=triton_adam.ClipGradByGlobalNorm(CLIP_NORM) if clip else None).step

    return build


def _triton_adamw_graph(params: list[torch.Tensor]) -> Step:
    """A capturable AdamW step captured in a CUDA graph: the step is ``graph.replay`` (one
    eager warm-up step on a side stream first, as torch's capture recipe does). Off CUDA
    (the GPU check's dry run) the eager capturable step."""
    import triton_adam

    optimizer = triton_adam.AdamW(LR, parameters=params, weight_decay=WEIGHT_DECAY,
                                  capturable=True)
    if params[0].device.type != "cuda":
        return optimizer.step
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        optimizer.step()
    return graph.replay


def _triton_adamw_bf16(**options: object) -> Callable[[list[torch.Tensor]], Step]:
    """bf16 params and grads with the byte-saving options (master weights as remainders,
    bf16 moments, stochastic rounding)."""
    def build(params: list[torch.Tensor]) -> Step:
        import triton_adam

        return triton_adam.AdamW(LR, parameters=params, weight_decay=WEIGHT_DECAY,
                                 **options).step

    return build


def _torch_face_adamw(params: list[torch.Tensor]) -> Step:
    """``triton_adam.optim.AdamW``: the same kernels behind torch.optim's API."""
    import triton_adam.optim

    return triton_adam.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY).step


def _torch_adamw(clip: bool, **flags: bool) -> Callable[[list[torch.Tensor]], Step]:
    def build(params: list[torch.Tensor]) -> Step:
        optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, **flags)

        def step() -> None:
            if clip:
                torch.nn.utils.clip_grad_norm_(params, CLIP_NORM, foreach=True)
            optimizer.step()

        return step

    return build


CLIPPED_PEER = "clip_grad_norm_ + torch AdamW fused"
IMPLEMENTATIONS = [
    Implementation("triton_adam AdamW per-tensor", _triton_adamw(False, False)),
    Implementation("triton_adam AdamW multi-tensor", _triton_adamw(True, False)),
    Implementation("triton_adam AdamW multi-tensor + ClipGradByGlobalNorm",
                   _triton_adamw(True, True), extra_grad_passes=1, peer=CLIPPED_PEER),
    Implementation("triton_adam AdamW capturable, CUDA-graph replay", _triton_adamw_graph),
    Implementation("triton_adam.optim AdamW (PyTorch face)", _torch_face_adamw),
    Implementation("triton_adam AdamW bf16, fp32 master weights",
                   _triton_adamw_bf16(multi_precision=True), floor_mode="half master",
                   peer="torch AdamW fused bf16", param_dtype=torch.bfloat16),
    Implementation("triton_adam AdamW bf16, remainder master weights",
                   _triton_adamw_bf16(multi_precision=True, master_weight_format="remainder"),
                   floor_mode="half remainder", peer="torch AdamW fused bf16",
                   param_dtype=torch.bfloat16),
    Implementation("triton_adam AdamW bf16, remainder + bf16 moments",
                   _triton_adamw_bf16(multi_precision=True, master_weight_format="remainder",
                                      moment_dtype=torch.bfloat16),
                   floor_mode="half remainder bf16-moments", peer="torch AdamW fused bf16",
                   param_dtype=torch.bfloat16),
    Implementation("triton_adam AdamW bf16, stochastic rounding + bf16 moments",
                   _triton_adamw_bf16(stochastic_rounding=True, moment_dtype=torch.bfloat16),
                   floor_mode="half stochastic bf16-moments", peer="torch AdamW fused bf16",
                   param_dtype=torch.bfloat16),
    Implementation("torch AdamW fused", _torch_adamw(False, fused=True)),
    # torch keeps bf16 moments for bf16 params and rounds to nearest: 14 B, no master.
    Implementation("torch AdamW fused bf16", _torch_adamw(False, fused=True),
                   floor_mode="half stochastic bf16-moments", peer="torch AdamW fused bf16",
                   param_dtype=torch.bfloat16),
    Implementation("torch AdamW foreach", _torch_adamw(False, foreach=True),
                   state_bytes_per_param=16),
    Implementation(CLIPPED_PEER, _torch_adamw(True, fused=True), extra_grad_passes=1,
                   peer=CLIPPED_PEER),
    Implementation("clip_grad_norm_ + torch AdamW foreach", _torch_adamw(True, foreach=True),
                   extra_grad_passes=1, peer=CLIPPED_PEER, state_bytes_per_param=16),
]


def floor_bytes(impl: Implementation) -> int:
    """Bytes per parameter a step of ``impl``'s mode must move (clipping reads g once more)."""
    floor = FLOORS[impl.floor_mode]
    return floor.total + impl.extra_grad_passes * floor.grad_bytes


def fits(n: int, free_bytes: int) -> bool:
    """p, g and the largest optimizer state (the copy's two buffers are freed before), with
    10 % headroom."""
    per_param = 4 + 4 + max(i.state_bytes_per_param for i in IMPLEMENTATIONS)
    return max(per_param, COPY_BYTES_PER_ELEMENT) * n * 1.1 < free_bytes


# ------------------------------------------------------------------ parameter lists
def gpt2_small(divisor: int = 1) -> list[Shape]:
    """GPT-2 small's 148 parameter shapes (HF ``GPT2LMHeadModel``, tied head; 124.4M at
    divisor 1), every dimension divided by ``divisor`` (the same list as perf/step_cost.py)."""
    d, vocab, ctx = 768 // divisor, 50257 // divisor, 1024 // divisor
    layer = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,),
             (4 * d, d), (d,)]  # ln_1, attn c_attn, c_proj, ln_2, mlp c_fc, c_proj
    return [(vocab, d), (ctx, d)] + layer * 12 + [(d,), (d,)]


def llama_7b(divisor: int = 1, layers: int = 32) -> list[Shape]:
    """Llama-7B's parameter shapes (HF ``LlamaForCausalLM``: 291 tensors with its 32 layers),
    ``layers`` of them, every dimension divided by ``divisor``."""
    d, ff, vocab = 4096 // divisor, 11008 // divisor, 32000 // divisor
    layer = [(d, d)] * 4 + [(ff, d), (ff, d), (d, ff), (d,), (d,)]  # q k v o, gate up down, norms
    return [(vocab, d)] + layer * layers + [(d,), (vocab, d)]


def numel(shapes: Sequence[Shape]) -> int:
    total = 0
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        total += n
    return total


# ------------------------------------------------------------------ timers
class CudaTimer:
    """``gpu_ms``, ``bench_ms`` and ``wall_ms`` of a step on the current CUDA device (see the
    module docstring)."""

    def __init__(self, warmup_ms: int = 25, rep_ms: int = 100, wall_target_ms: float = 100.0,
                 max_burst: int = 5) -> None:
        # max_burst: steps queued behind the spin. A GPU accepts about a thousand pending
        # launches before the host blocks; 5 steps of 148 launches (GPT-2 small, one launch
        # per tensor) stay below.
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms
        self.wall_target_ms, self.max_burst = wall_target_ms, max_burst

    def __call__(self, step: Step) -> dict:
        from triton.testing import do_bench

        bench_ms = do_bench(step, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median")
        k = max(3, min(50, int(self.wall_target_ms / max(bench_ms, 1e-3))))
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(k):
            step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3 / k
        gpu_ms, exact = self._queued(step, wall_ms)
        return {"gpu_ms": gpu_ms if exact else bench_ms, "gpu_ms_exact": exact,
                "bench_ms": bench_ms, "wall_ms": wall_ms}

    def _queued(self, step: Step, wall_ms: float) -> tuple[float, bool]:
        """Device time per step of a burst queued behind ``torch.cuda._sleep``: exact when the
        host finished queueing before the spin ended."""
        if not hasattr(torch.cuda, "_sleep"):
            return float("nan"), False
        k = max(2, min(self.max_burst, int(self.wall_target_ms / max(wall_ms, 1e-3))))
        # Spin for longer than queueing the burst takes the host (at most the wall time),
        # in cycles of a clock of at most 2 GHz (H100/H200: 1.98): longer is harmless.
        spin_ms = 1.5 * k * wall_ms + 2.0
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        torch.cuda.synchronize()
        events[0].record()
        torch.cuda._sleep(int(spin_ms * 2e6))
        events[1].record()
        start = time.perf_counter()
        for _ in range(k):
            step()
        queued_ms = (time.perf_counter() - start) * 1e3
        events[2].record()
        torch.cuda.synchronize()
        spun_ms = events[0].elapsed_time(events[1])
        return events[1].elapsed_time(events[2]) / k, queued_ms < spun_ms


class CpuTimer:
    """The same fields from host timing alone (``perf/gpu_check.py --dry-run``: the code runs
    on the CPU under the interpreter; the numbers measure nothing about a GPU)."""

    def __init__(self, repeats: int = 1) -> None:
        self.repeats = repeats

    def __call__(self, step: Step) -> dict:
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        ms = statistics.median(times)
        return {"gpu_ms": ms, "gpu_ms_exact": False, "bench_ms": ms, "wall_ms": ms}


# ------------------------------------------------------------------ measurements
def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _time_copy(n: int, timer: Callable[[Step], dict], device: torch.device) -> dict:
    """A device-to-device copy of ``n`` fp32 elements (its buffers freed on return)."""
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return timer(lambda: dst.copy_(src))


def bench_case(case: str, shapes: Sequence[Shape], timer: Callable[[Step], dict],
               device: str | torch.device = "cuda",
               impls: Sequence[Implementation] = IMPLEMENTATIONS) -> list[dict]:
    """Rows for one parameter list (``case`` names it): a copy of its size first, then every
    implementation, in one process and run; GB/s and ratios filled in by ``add_ratios``."""
    device = torch.device(device)
    n = numel(shapes)
    rows = [dict(case=case, impl="device copy", params=n, tensors=len(shapes),
                 bytes_per_param=COPY_BYTES_PER_ELEMENT, **_time_copy(n, timer, device))]
    _free(device)
    for impl in impls:
        params = [torch.nn.Parameter((torch.randn(s, device=device) * 0.02).to(impl.param_dtype))
                  for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        step = impl.build(params)
        step()  # creates the state and compiles
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = timer(step)
        rows.append(dict(case=case, impl=impl.name, params=n, tensors=len(shapes),
                         bytes_per_param=floor_bytes(impl), peer=impl.peer, **t))
        del step, params
        _free(device)
    return add_ratios(rows)


def add_ratios(rows: list[dict]) -> list[dict]:
    """GB/s from the floor bytes, and the ratios to the copy and to each row's torch peer
    (rows of one ``case``)."""
    for r in rows:
        r["gb_per_s"] = r["params"] * r["bytes_per_param"] / r["gpu_ms"] / 1e6
        r["wall_gb_per_s"] = r["params"] * r["bytes_per_param"] / r["wall_ms"] / 1e6
    by_name = {r["impl"]: r for r in rows}
    copy = by_name.get("device copy")
    for r in rows:
        r["vs_copy"] = r["gb_per_s"] / copy["gb_per_s"] if copy else None
        peer = by_name.get(r.get("peer"))
        r["vs_torch"] = peer["gpu_ms"] / r["gpu_ms"] if peer else None
        r["wall_vs_torch"] = peer["wall_ms"] / r["wall_ms"] if peer else None
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = ["| case | implementation | floor B/param | GPU ms | wall ms | GB/s (floor) | "
             "vs copy | vs torch (GPU) | vs torch (wall) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        exact = "" if r.get("gpu_ms_exact", True) else "*"
        lines.append(f"| {r['case']} | {r['impl']} | {r['bytes_per_param']} | "
                     f"{r['gpu_ms']:.3f}{exact} | {r['wall_ms']:.3f} | {r['gb_per_s']:.0f} | "
                     f"{num(r['vs_copy'], '.2f')} | {num(r['vs_torch'], '.2f')} | "
                     f"{num(r['wall_vs_torch'], '.2f')} |")
    return "\n".join(lines)


def size_case(n: int) -> str:
    return f"{n:.0e} params"


LISTS: dict[str, Callable[[], list[Shape]]] = {
    "gpt2-small (148 tensors)": gpt2_small,
    # 7B's layer shapes with 8 of its 32 layers (75 tensors, 1.88B parameters): the full
    # 6.7B list with torch's foreach temporaries does not fit beside the copies on one GPU.
    "llama-7b shapes, 8 layers (75 tensors)": lambda: llama_7b(layers=8),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-params", type=float, default=1e9)
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=100)
    parser.add_argument("--lists", action="store_true",
                        help="also the GPT-2-small and Llama-shaped parameter lists")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"default: {DEFAULT_JSON}")
    parser.add_argument("--plot", metavar="PNG", help="also draw GB/s against size")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        print("perf/bench.py needs a CUDA device (and TRITON_INTERPRET unset): nothing measured")
        return 0
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    timer = CudaTimer(args.warmup_ms, args.rep_ms)
    rows = []
    for n in SIZES:
        free, _ = torch.cuda.mem_get_info()
        if n > args.max_params or not fits(n, free):
            print(f"skipping {n:.0e} params (limit or memory)")
            continue
        rows += bench_case(size_case(n), [(n,)], timer)
    for name, shapes in (LISTS.items() if args.lists else ()):
        shapes = shapes()
        if not fits(numel(shapes), torch.cuda.mem_get_info()[0]):
            print(f"skipping {name} (memory)")
            continue
        rows += bench_case(name, shapes, timer)
    print(table(rows))
    print("* GPU time from do_bench (the host did not stay ahead of the queued burst)")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    if args.plot:
        import plot

        plot.bandwidth([r for r in rows if r["tensors"] == 1], args.plot)  # single tensors
    return 0


if __name__ == "__main__":
    sys.exit(main())
