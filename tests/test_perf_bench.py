"""perf/bench.py needs a GPU: without one it says so, measures nothing and exits 0; importing
it never initialises CUDA."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_bench_without_gpu_exits_0_and_says_it_needs_one():
    result = subprocess.run([sys.executable, str(ROOT / "perf" / "bench.py")], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "needs a CUDA device" in result.stdout


def test_bench_import_does_not_touch_cuda():
    code = ("import sys, torch; sys.path.insert(0, 'perf'); import bench; "
            "assert bench.IMPLEMENTATIONS and not torch.cuda.is_initialized(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "ok", result.stderr[-4000:]
