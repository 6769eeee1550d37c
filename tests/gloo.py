"""Running test cases in several gloo processes: the launcher (test side) and the loop of one
rank (worker side), shared by ``tests/dist_worker.py`` (the Paddle face under DDP/FSDP2) and
``tests/torch_dist_worker.py`` (the PyTorch face under FSDP2).

Each rank runs the cases one after the other and saves each result to
``{out}/{case}.rank{rank}.pt`` (a dict; ``"error"`` holds the traceback of a case that raised,
so that the next cases still run); the ranks meet at a barrier after every case. The workers
run the kernels under the Triton interpreter on CPU tensors.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import torch


def launch(script: pathlib.Path, world: int, out: pathlib.Path, cases: Sequence[str],
           timeout_s: float) -> dict:
    """Run ``script`` as ``world`` ranks over ``cases``; returns ``{case: [result of each
    rank, or None]}`` plus ``"_log"`` (each rank's output tail) and ``"_seconds"``."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    start = time.monotonic()
    procs = [subprocess.Popen(
        [sys.executable, str(script), str(r), str(world), str(out / "store"), str(out),
         *cases], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(world)]
    log = []
    deadline = start + timeout_s
    for r, p in enumerate(procs):
        try:
            text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    q.kill()
            text, _ = p.communicate()
            text += f"\n[rank {r} killed after {timeout_s} s]"
        log.append(f"--- rank {r} exit code {p.returncode} ---\n{text[-4000:]}")
    results: dict = {"_log": "\n".join(log), "_seconds": time.monotonic() - start}
    for case in cases:
        files = [out / f"{case}.rank{r}.pt" for r in range(world)]
        results[case] = [torch.load(f, weights_only=False) if f.exists() else None
                         for f in files]
    return results


def serve(argv: list[str], run_case: Callable[[str, int, int, str], dict]) -> int:
    """One rank: ``argv`` is ``rank world store out case...`` (as ``launch`` passes it);
    ``run_case(case, rank, world, out)`` returns the case's result dict."""
    import torch.distributed as dist

    rank, world, store, out_dir = int(argv[0]), int(argv[1]), argv[2], argv[3]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=180))
    try:
        for case in argv[4:]:
            start = time.monotonic()
            try:
                result = run_case(case, rank, world, out_dir)
                result["error"] = None
            except Exception:  # recorded for the test; the next case still runs
                result = {"error": traceback.format_exc()}
            result["seconds"] = time.monotonic() - start
            torch.save(result, os.path.join(out_dir, f"{case}.rank{rank}.pt"))
            dist.barrier()  # the ranks stay in step even if one case failed on one rank
    finally:
        dist.destroy_process_group()
    return 0
