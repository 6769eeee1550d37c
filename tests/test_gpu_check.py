"""perf/gpu_check.py's plumbing on a machine without a GPU: its dry run collects the CUDA-mode
test subset, steps every kernel of the sanitizer's program and runs the sweep's and the
benchmark's code under the interpreter, writes JSON, Markdown and PNG saying the GPU parts
were skipped, and exits 0; importing it touches neither CUDA nor triton."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_dry_run_writes_every_output_and_says_the_gpu_parts_were_skipped(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run([sys.executable, str(ROOT / "perf" / "gpu_check.py"), "--dry-run",
                             "--out", str(out)], env=ENV, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] and report["ok"]
    parts = report["parts"]
    assert set(parts) == {"tests", "sanitizer", "sweep", "bench"}
    for name, part in parts.items():
        assert part["status"] == "skipped" and part["reason"].startswith("dry run"), name
        assert part["plumbing"]["status"] == "passed", (name, part["plumbing"])
    tests = parts["tests"]["plumbing"]
    assert tests["collected"] > 100 and "test_kernel_adam.py" in tests["files"]
    assert "test_compile.py" not in tests["files"]  # compile-only: left to CI
    assert tests["runner"]["totals"]["passed"] == 2
    assert "10/10 cases stepped" in parts["sanitizer"]["plumbing"]["output"]
    sweep = parts["sweep"]["plumbing"]
    assert len(sweep["dense"]) == len(sweep["multi_tensor"]) == len(sweep["configs"]) == 12
    assert sum(r["shipped"] for r in sweep["dense"]) == 1 and len(sweep["norm"]) == 4
    assert sweep["verdicts"]["update"]["text"].startswith("dry run")
    rows = parts["bench"]["plumbing"]["rows"]
    assert {r["impl"] for r in rows} >= {"device copy", "torch AdamW fused",
                                         "triton_adam AdamW multi-tensor"}
    assert any("148 tensors" in r["case"] for r in rows)
    markdown = (out / "gpu_check.md").read_text()
    assert "**Dry run**" in markdown and "| tests | skipped | dry run" in markdown
    assert (out / "gpu_check.png").stat().st_size > 10_000


def test_import_touches_neither_cuda_nor_triton():
    code = ("import sys, torch; import gpu_check; "
            "assert not torch.cuda.is_initialized() and 'triton' not in sys.modules; "
            "print('ok')")
    env = dict(ENV, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "perf"),
                                                             ENV.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "ok", result.stderr[-4000:]
