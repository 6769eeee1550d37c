"""perf/bench.py: without a GPU it says so, measures nothing and exits 0; with one (CUDA mode on
a GPU machine) a tiny run writes every row; importing it never initialises CUDA; its parameter
lists are the real models' (the measuring code itself runs in test_gpu_check.py's dry run)."""

import json
import os
import pathlib
import subprocess
import sys

import torch

import bench  # perf/bench.py (pytest's pythonpath); imports torch only: no triton, no CUDA

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_bench_without_gpu_says_so_and_with_one_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "perf" / "bench.py"), "--max-params",
                             "1e6", "--warmup-ms", "5", "--rep-ms", "10", "--json", str(out)],
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    if not torch.cuda.is_available():
        assert "needs a CUDA device" in result.stdout
        assert not out.exists()
        return
    rows = json.loads(out.read_text())
    assert [r["impl"] for r in rows] == ["device copy"] + [i.name for i in bench.IMPLEMENTATIONS]
    assert all(r["gpu_ms"] > 0 and r["wall_ms"] > 0 and r["gb_per_s"] > 0 for r in rows)


def test_bench_import_does_not_touch_cuda():
    code = ("import sys, torch; import bench; "
            "assert bench.IMPLEMENTATIONS and not torch.cuda.is_initialized(); "
            "assert 'triton' not in sys.modules; print('ok')")
    env = dict(ENV, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "perf"),
                                                             ENV.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "ok", result.stderr[-4000:]


def test_rows_and_parameter_lists():
    names = [i.name for i in bench.IMPLEMENTATIONS]
    for required in ("triton_adam AdamW per-tensor", "triton_adam AdamW multi-tensor",
                     "triton_adam AdamW capturable, CUDA-graph replay", "torch AdamW fused", "torch AdamW foreach",
                     "clip_grad_norm_ + torch AdamW fused",
                     "clip_grad_norm_ + torch AdamW foreach"):
        assert required in names
    assert all(i.peer in names for i in bench.IMPLEMENTATIONS)
    # GPT-2 small: 148 tensors, 124,439,808 parameters (tied head); Llama-7B: 291, 6.74B
    assert len(bench.gpt2_small()) == 148 and bench.numel(bench.gpt2_small()) == 124_439_808
    assert len(bench.llama_7b()) == 291 and bench.numel(bench.llama_7b()) == 6_738_415_616
    clipped = next(i for i in bench.IMPLEMENTATIONS if "ClipGradByGlobalNorm" in i.name)
    assert bench.floor_bytes(clipped) == 32  # 28 + the norm pass's read of g
