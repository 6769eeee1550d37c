"""Does triton_adam pass its tests on this GPU, run clean under compute-sanitizer, and how fast is
it, with which launch configuration?

One command for a machine with NVIDIA GPUs, torch and triton already installed and no network
(it installs nothing from anywhere; if this checkout is not importable it tries an offline
``pip install --no-deps --no-build-isolation -e .``, else puts it on the path itself)::

    python perf/gpu_check.py --out DIR           # about 8 minutes on one H100 / H200

In that time budget (``--budget-s``, default 480) it:

1. **tests**: runs the CUDA test mode (``TRITON_ADAM_TEST_DEVICE=cuda``, ``tests/devices.py``)
   over every ``tests/test_*.py`` except ``EXCLUDED_TESTS`` (compile-only checks CI runs
   anyway, CPU-only files, this script's own plumbing), one pytest process per file, several
   at once, each stopped at the phase's deadline;
2. **sanitizer**: meanwhile, ``compute-sanitizer --tool memcheck`` and ``--tool racecheck``
   (when found on PATH or under /usr/local/cuda*/bin) over ``perf/sanitize_steps.py``, which
   steps every kernel (dense, multi-tensor, amsgrad, fp64, bf16 with master weights, AMP
   skip, global-norm clipping's norm pass and finalize, lazy rows with duplicates);
3. **sweep**: times the update kernel for every ``BLOCK_SIZE`` x ``NUM_WARPS`` of
   ``SWEEP_BLOCKS`` x ``SWEEP_WARPS`` (one 2^28-element tensor, and the multi-tensor kernel on
   GPT-2 small's 148 tensors) and the norm pass + finalize for every chunk of
   ``SWEEP_NORM_CHUNKS`` blocks, and says whether the configuration the library ships is
   the one the measurements pick (within ``SWEEP_TOLERANCE``), or which one to ship instead;
4. **bench**: ``perf/bench.py``'s rows in one run: a device-to-device copy, triton_adam
   per-tensor and multi-tensor (and with global-norm clipping), ``torch.optim.AdamW``
   ``fused=True`` and ``foreach=True`` with and without ``clip_grad_norm_``, on single fp32
   tensors of 1e6 to 1e9 elements (as memory and time allow), the real GPT-2-small list
   (148 tensors, 124M) and Llama-7B's shapes with 8 of its 32 layers (75 tensors, 1.9B):
   GPU time, whole-step wall time, GB/s from the floor bytes, ratios to the copy and to torch;
5. writes ``DIR/gpu_check.json`` (everything), ``DIR/gpu_check.md`` (the summary),
   ``DIR/gpu_check.png`` (the plots) and the logs (``tests.log``, ``memcheck.log``,
   ``racecheck.log``), and exits 1 when a test or a sanitizer check fails or a part could not
   complete (0 otherwise).

Without a CUDA device, or with ``--dry-run``, it checks its plumbing on the CPU and says so:
the CUDA-mode test subset is collected (not run), ``sanitize_steps.py`` steps every kernel
under the Triton interpreter, the sweep and the benchmark run their code on tiny tensors
under the interpreter (their numbers measure nothing), the outputs are written with every GPU
part marked skipped, and it exits 0 unless the plumbing itself failed. Importing this module
never touches CUDA or imports triton.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

import bench

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "perf"
TESTS = ROOT / "tests"

# tests/ files the GPU run leaves out, and why (the subset the check states).
EXCLUDED_TESTS = {
    "test_compile.py": "compiles for sm_80/sm_90 without a GPU: device-independent, CI runs it",
    "test_compile_lazy.py": "compile-only (SASS), device-independent: CI runs it",
    "test_compile_norm.py": "compile-only (SASS), device-independent: CI runs it",
    "test_perf_audit.py": "the SASS audit, device-independent: CI runs it",
    "test_distributed.py": "gloo processes on the CPU (skipped in CUDA mode)",
    "test_lr.py": "learning-rate schedulers only: no kernel, no device",
    "test_perf_bench.py": "perf/bench.py, which this check runs itself",
    "test_gpu_check.py": "this script's dry run",
    "test_devices.py": "the test-mode switch itself (collection, CPU-side checks)",
}

SWEEP_BLOCKS = (512, 1024, 2048, 4096)  # elements per program (BLOCK_SIZE)
SWEEP_WARPS = (2, 4, 8)  # NUM_WARPS
SWEEP_NORM_CHUNKS = (1, 4, 16, 64)  # blocks per norm chunk (NORM_CHUNK_SIZE / BLOCK_SIZE)
SWEEP_DENSE_N = 2**28  # one tensor, 7.5 GB moved per step: far beyond L2
SWEEP_TOLERANCE = 0.03  # a configuration within 3 % of the fastest is as fast (run-to-run noise)

# The share of the budget for the tests and the sanitizer, which run together (meanwhile this
# process compiles the sweep's configurations); the sweep and the benchmark, which need the
# GPU to themselves, take the rest but RESERVE_S, kept for writing the outputs.
SHARE_TESTS = 0.58
RESERVE_S = 15.0  # kept for writing the outputs


# ------------------------------------------------------------------ small helpers
def _now() -> float:
    return time.monotonic()


def _tail(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def _kill(proc: subprocess.Popen) -> None:
    """Stop a process this check started, with everything it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run(cmd: Sequence[str], env: dict, timeout: float, cwd: Path = ROOT) -> dict:
    """Run ``cmd``; its exit status (None when stopped at ``timeout``), output, duration."""
    start = _now()
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
        return {"rc": proc.returncode, "output": out, "seconds": _now() - start,
                "timed_out": False}
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, _ = proc.communicate()
        return {"rc": None, "output": out or "", "seconds": _now() - start, "timed_out": True}


def _part(status: str, **fields) -> dict:
    return {"status": status, **fields}


def _guarded(name: str, fn: Callable[[], dict]) -> dict:
    """A part's result; an exception becomes an 'error' result naming it."""
    try:
        return fn()
    except Exception as exc:  # the check reports every part, whatever happens in one
        import traceback

        return _part("error", reason=f"{type(exc).__name__}: {exc}",
                     traceback=_tail(traceback.format_exc(), 4000), part=name)


@contextlib.contextmanager
def launch_config(module, **values) -> Iterator[None]:
    """Temporarily set module constants a launcher reads at call time (``BLOCK_SIZE``,
    ``NUM_WARPS`` as kernels/adam.py's launchers see them): the sweep launches the shipped
    launchers with other values, without editing the library."""
    old = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


# ------------------------------------------------------------------ environment
def base_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    return env


def _import_probe() -> str | None:
    """Where this process imports ``triton_adam`` from (None: not with its kernels). The
    processes this check starts find it the same way (site-packages, PYTHONPATH)."""
    import importlib

    try:
        module = importlib.import_module("triton_adam")
        importlib.import_module("triton_adam.kernels.adam")
        return os.path.realpath(module.__file__)
    except ImportError:
        for name in [n for n in sys.modules if n == "triton_adam" or n.startswith("triton_adam.")]:
            del sys.modules[name]  # a half-imported package must not shadow the next try
        return None


def _shim() -> Path:
    """A package directory mapping ``triton_adam`` to this checkout and
    ``triton_adam.kernels`` to its ``kernels/`` (what the editable install maps)."""
    root = Path(tempfile.mkdtemp(prefix="triton_adam_path_"))
    pkg = root / "triton_adam"
    pkg.mkdir()
    for entry in (ROOT / "triton_adam").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "kernels").symlink_to(ROOT / "kernels")
    return root


def ensure_importable(env: dict, allow_install: bool) -> tuple[dict, str]:
    """Make this checkout's ``triton_adam`` importable by the processes this check starts;
    returns their environment and how."""
    inside = os.path.realpath(ROOT / "triton_adam")
    where = _import_probe()
    if where is not None and where.startswith(inside):
        return env, "installed (this checkout)"
    if where is not None:  # another copy is installed: the shim must come first
        for name in [n for n in sys.modules if n.split(".")[0] == "triton_adam"]:
            del sys.modules[name]
        allow_install = False
    note = ""
    if allow_install:
        result = _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                       "--no-build-isolation", "--no-index", "-e", str(ROOT)], env, 300)
        import importlib

        importlib.invalidate_caches()
        import site

        for path in site.getsitepackages():  # the editable install's .pth, in this process
            site.addsitedir(path)
        where = _import_probe()
        if where is not None and where.startswith(inside):
            return env, "installed now (offline pip install --no-deps -e .)"
        note = f"pip install failed: {_tail(result['output'], 300)!r}; "
    shim = _shim()
    env = dict(env, PYTHONPATH=os.pathsep.join(
        [str(shim)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
    sys.path.insert(0, str(shim))
    if _import_probe() is None:
        raise RuntimeError(f"{note}triton_adam is not importable from {ROOT}")
    return env, f"{note}on PYTHONPATH through {shim} (not installed)"


def machine_info(cuda: bool) -> dict:
    import triton

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda_runtime": torch.version.cuda,
            "host": platform.node(), "cpus": os.cpu_count()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                    sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}")
    smi = shutil.which("nvidia-smi")
    if smi:
        r = _run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], os.environ, 20)
        if r["rc"] == 0:
            info["driver"] = r["output"].strip().splitlines()[0]
    return info


# ------------------------------------------------------------------ 1. tests
def test_files(patterns: Sequence[str] | None) -> list[Path]:
    files = sorted(TESTS.glob("test_*.py"))
    if patterns:
        files = [f for f in files if any(re.search(p, f.name) for p in patterns)]
    else:
        files = [f for f in files if f.name not in EXCLUDED_TESTS]
    # the biggest files first: they take longest, and start while others queue
    return sorted(files, key=lambda f: -f.stat().st_size)


def _junit(path: Path) -> dict:
    """Counts and failed test ids from a pytest junit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            node = case.find(kind)
            if node is not None:
                message = (node.get("message") or "").splitlines()[:1]
                failed.append(f"{case.get('classname', '')}::{case.get('name', '')} ({kind}: "
                              f"{message[0][:200] if message else ''})")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = failed
    return counts


def run_tests(files: list[Path], env: dict, deadline: float, jobs: int, log: Path,
              junit_dir: Path, device: str = "cuda", extra: Sequence[str] = ()) -> dict:
    """The test mode of ``device`` (CUDA; the dry run tries the runner on the CPU), one pytest
    process per file, ``jobs`` at a time, each stopped at ``deadline``."""
    env = dict(env, TRITON_ADAM_TEST_DEVICE=device)
    queue = list(files)
    running: dict[Path, tuple] = {}  # file -> (process, start, junit xml, output, its handle)
    results: dict[str, dict] = {}
    with open(log, "w") as log_f:
        while queue or running:
            while queue and len(running) < jobs and _now() < deadline:
                f = queue.pop(0)
                xml, out = junit_dir / f"{f.stem}.xml", junit_dir / f"{f.stem}.out"
                cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
                       f"--junitxml={xml}", *extra, str(f.relative_to(ROOT))]
                handle = open(out, "w")
                running[f] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle,
                                               stderr=subprocess.STDOUT,
                                               start_new_session=True), _now(), xml, out,
                              handle)
            for f, (proc, start, xml, out, handle) in list(running.items()):
                timed_out = proc.poll() is None and _now() > deadline
                if proc.poll() is None and not timed_out:
                    continue
                if timed_out:
                    _kill(proc)  # with the helper processes its tests started
                handle.close()
                del running[f]
                entry = {"file": f.name, "rc": proc.returncode, "seconds": _now() - start}
                if xml.exists() and not timed_out:
                    entry.update(_junit(xml))
                ok = proc.returncode in (0, 5) and not timed_out  # 5: everything skipped
                entry["status"] = "timeout" if timed_out else ("passed" if ok else "failed")
                results[f.name] = entry
                text = out.read_text(errors="replace")
                log_f.write(f"===== {f.name}: {entry['status']} ({entry['seconds']:.0f} s)\n")
                log_f.write(_tail(text, 20000) + "\n")
                log_f.flush()
            if _now() > deadline and queue:
                for f in queue:
                    results[f.name] = {"file": f.name, "status": "timeout", "seconds": 0.0,
                                       "reason": "not started before the deadline"}
                queue = []
            time.sleep(0.2)
    entries = [results[f.name] for f in files]
    totals = {k: sum(e.get(k, 0) for e in entries)
              for k in ("tests", "passed", "failures", "errors", "skipped")}
    status = "passed" if all(e["status"] == "passed" for e in entries) else "failed"
    return _part(status, files=entries, totals=totals, jobs=jobs,
                 excluded=EXCLUDED_TESTS, env={"TRITON_ADAM_TEST_DEVICE": device})


def collect_tests(files: list[Path], env: dict, timeout: float) -> dict:
    """Dry run: collect the subset in CUDA mode (which works without a device), and try the
    runner (processes, deadline, junit counts) on two quick tests on the CPU."""
    start = _now()
    env_cuda = dict(env, TRITON_ADAM_TEST_DEVICE="cuda")
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
           *[str(f.relative_to(ROOT)) for f in files]]
    r = _run(cmd, env_cuda, timeout)
    match = re.search(r"(\d+) tests? collected", r["output"])
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        runner = run_tests([TESTS / "test_kernel_adam.py"], env, _now() + timeout, 1,
                           Path(tmp) / "tests.log", Path(tmp), device="cpu",
                           extra=["-k", "float64_learning_rate or empty_tensor"])
    ok = (r["rc"] == 0 and match is not None and runner["status"] == "passed"
          and runner["totals"]["passed"] == 2)
    return _part("passed" if ok else "failed", files=[f.name for f in files],
                 collected=int(match.group(1)) if match else None, runner=runner,
                 seconds=_now() - start, output=_tail(r["output"], 3000) if not ok else None)


# ------------------------------------------------------------------ 2. sanitizer
def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for pattern in ("/usr/local/cuda/bin/compute-sanitizer",
                    "/usr/local/cuda-*/bin/compute-sanitizer",
                    "/usr/local/cuda/compute-sanitizer/compute-sanitizer"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


SANITIZER_TOOLS = ("memcheck", "racecheck")
SANITIZER_EXIT = 97  # --error-exitcode: the sanitizer found something


def sanitizer_command(tool_path: str, tool: str) -> list[str]:
    return [tool_path, "--tool", tool, "--error-exitcode", str(SANITIZER_EXIT),
            "--print-limit", "50", sys.executable, str(PERF / "sanitize_steps.py"),
            "--device", "cuda"]


def run_sanitizer(tool_path: str, env: dict, deadline: float, out_dir: Path) -> dict:
    """memcheck and racecheck at once (each its own process), each stopped at ``deadline``."""
    # One allocation per tensor: an access past a tensor's end leaves every allocation.
    env = dict(env, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    runs, threads = {}, []

    def one(tool: str) -> None:
        r = _run(sanitizer_command(tool_path, tool), env, deadline - _now())
        (out_dir / f"{tool}.log").write_text(r["output"])
        summary = [line.strip() for line in r["output"].splitlines()
                   if "SUMMARY" in line or "cases stepped" in line or "FAILED" in line]
        if r["timed_out"]:
            status = "timeout"
        elif r["rc"] == 0:
            status = "passed"
        else:
            status = "failed"
        runs[tool] = {"tool": tool, "status": status, "rc": r["rc"], "seconds": r["seconds"],
                      "summary": summary[-6:], "log": f"{tool}.log",
                      "sanitizer_found_errors": r["rc"] == SANITIZER_EXIT}

    for tool in SANITIZER_TOOLS:
        threads.append(threading.Thread(target=one, args=(tool,)))
        threads[-1].start()
    for t in threads:
        t.join()
    entries = [runs[t] for t in SANITIZER_TOOLS]
    status = "passed" if all(e["status"] == "passed" for e in entries) else "failed"
    return _part(status, tool_path=tool_path, runs=entries,
                 command=" ".join(sanitizer_command(tool_path, "TOOL")),
                 env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})


def sanitize_steps_on_cpu(env: dict, timeout: float) -> dict:
    """Dry run: the sanitizer's program, under the interpreter (it must step every case)."""
    r = _run([sys.executable, str(PERF / "sanitize_steps.py"), "--device", "cpu"],
             dict(env, TRITON_INTERPRET="1"), timeout)
    return _part("passed" if r["rc"] == 0 else "failed", seconds=r["seconds"],
                 output=_tail(r["output"], 2000))


# ------------------------------------------------------------------ 3. sweep
def _fp32_state(shapes: Sequence[tuple[int, ...]], device: torch.device):
    """Params and grads of ``shapes`` and the bucket-style flat moments and tables of the
    multi-tensor kernel (kernels/adam.py's layout), for the sweep's direct launches."""
    from triton_adam.kernels import adam as K

    params = [torch.randn(s, device=device) * 0.02 for s in shapes]
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    align = K.STATE_ALIGN
    offsets, total = [], 0
    for p in params:
        offsets.append(total)
        total += -(-p.numel() // align) * align
    table = torch.zeros(len(params), K.TABLE_WIDTH, dtype=torch.int64)
    for i, (p, g, off) in enumerate(zip(params, grads, offsets)):
        table[i, K.COL_PARAM_ADDR], table[i, K.COL_GRAD_ADDR] = p.data_ptr(), g.data_ptr()
        table[i, K.COL_NUMEL], table[i, K.COL_STATE_OFFSET] = p.numel(), off
        table[i, K.COL_ACTIVE] = 1
    return {"params": params, "grads": grads, "table": table.to(device),
            "m": torch.zeros(total, device=device), "v": torch.zeros(total, device=device),
            "hyper": _hyper_rows(len(params), device),
            "pows": _pows(len(params), device)}


def _hyper_rows(n: int, device: torch.device) -> torch.Tensor:
    from triton_adam.kernels import adam as K

    row = torch.zeros(K.HYPER_WIDTH)
    for name, value in [("LR_SCALE", 1.0), ("BETA1", 0.9), ("BETA2", 0.999), ("EPS", 1e-8),
                        ("WD", bench.WEIGHT_DECAY), ("CLIP_MIN", -float("inf")),
                        ("CLIP_MAX", float("inf"))]:
        if hasattr(K, f"HYPER_{name}"):
            row[getattr(K, f"HYPER_{name}")] = value
    return row.repeat(n, 1).to(device)


def _pows(n: int, device: torch.device) -> torch.Tensor:
    from triton_adam.kernels import adam as K

    pows = torch.zeros(2, n, K.POW_SLOT_WIDTH)
    pows[0, :, getattr(K, "POW_BETA1", 0)] = 0.9
    pows[0, :, getattr(K, "POW_BETA2", 1)] = 0.999
    return pows.to(device)


def _chunk_table(numels: Sequence[int], chunk: int, device: torch.device) -> torch.Tensor:
    """int32 ``[n_chunks, 2]``: (tensor row, chunk index) for every ``chunk`` elements."""
    counts = torch.tensor([-(-n // chunk) for n in numels], dtype=torch.int64)
    rows = torch.repeat_interleave(torch.arange(len(numels)), counts)
    firsts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    index = torch.arange(rows.numel()) - firsts
    return torch.stack([rows, index], 1).to(torch.int32).to(device)


def _verdict(rows: list[dict], key: str, shipped: object, knob: str) -> dict:
    """The fastest row, the shipped one, and what that says (``key``: the configuration)."""
    timed = [r for r in rows if r.get("ms")]
    best = min(timed, key=lambda r: r["ms"])
    ship = next((r for r in timed if r[key] == shipped), None)
    if ship is None:
        return {"best": best[key], "shipped": shipped,
                "text": f"shipped {knob} {shipped} not measured"}
    gain = ship["ms"] / best["ms"] - 1
    same = gain <= SWEEP_TOLERANCE
    text = (f"shipped {knob} {shipped} is the fastest measured" if best is ship else
            f"shipped {knob} {shipped} is within {gain:.1%} of the fastest ({best[key]}): kept"
            if same else
            f"the measurements pick {knob} {best[key]}: {gain:.1%} faster than the shipped "
            f"{shipped}")
    return {"best": best[key], "shipped": shipped, "shipped_is_best": same, "gain": gain,
            "text": text}


FLOOR = bench.floor_bytes(bench.IMPLEMENTATIONS[0])  # fp32 AdamW: 28 B/param per step


def _update_rows(name: str, n: int, launch: Callable[[], None], timer: Callable, dry: bool,
                 prepare: Callable[[int], None] | None = None) -> list[dict]:
    """``launch`` timed under every (BLOCK_SIZE, NUM_WARPS) of the sweep; ``prepare(block)``
    builds what depends on the block first (a chunk table)."""
    from triton_adam.kernels import adam as K

    shipped = (K.BLOCK_SIZE, K.NUM_WARPS)
    rows = []
    for block, warps in sweep_configs(shipped):
        with launch_config(K, BLOCK_SIZE=block, NUM_WARPS=warps):
            if prepare is not None:
                prepare(block)
            if not dry:
                launch()  # compiles this configuration, outside the timing
            t = timer(launch)
        rows.append({"kernel": name, "config": f"{block}x{warps}", "block": block,
                     "warps": warps, "ms": t["gpu_ms"], "gb_per_s": n * FLOOR / t["gpu_ms"] / 1e6,
                     "shipped": (block, warps) == shipped})
    return rows


def sweep_configs(shipped: tuple[int, int]) -> list[tuple[int, int]]:
    """(BLOCK_SIZE, NUM_WARPS) pairs of the sweep, the shipped one always among them."""
    configs = [(b, w) for b in SWEEP_BLOCKS for w in SWEEP_WARPS]
    return configs if shipped in configs else configs + [shipped]


def _sweep_dense(n: int, timer: Callable, device: torch.device, dry: bool) -> list[dict]:
    """The dense kernel (one launch per tensor) on one fp32 tensor of ``n`` elements."""
    from triton_adam.kernels import adam as K

    s = _fp32_state([(n,)], device)

    def dense() -> None:
        K.adam_update_(s["params"][0], s["grads"][0], s["m"][:n], s["v"][:n], None,
                       s["hyper"][0], s["pows"][0, 0], s["pows"][1, 0], lr=bench.LR,
                       coupled_decay=False, decoupled_decay=True)

    return _update_rows(f"dense update, 1 x {n:,} fp32", n, dense, timer, dry)


def _sweep_multi(shapes: list, timer: Callable, device: torch.device, dry: bool) -> list[dict]:
    """The multi-tensor kernel on ``shapes``: a chunk is a block, so its chunk table is
    rebuilt for each BLOCK_SIZE."""
    from triton_adam.kernels import adam as K

    s = _fp32_state(shapes, device)
    numels = [q.numel() for q in s["params"]]
    chunks: dict[str, torch.Tensor] = {}

    def prepare(block: int) -> None:
        chunks["table"] = _chunk_table(numels, block, device)

    def multi() -> None:
        K.adam_update_tensor_list_(
            s["table"], chunks["table"], s["m"], s["v"], None, s["hyper"], s["pows"][0],
            s["pows"][1], lr=bench.LR, param_dtype=torch.float32, grad_dtype=torch.float32,
            aligned=True, coupled_decay=False, decoupled_decay=True)

    return _update_rows(f"multi-tensor update, {len(numels)} tensors, {sum(numels):,} fp32",
                        sum(numels), multi, timer, dry, prepare)


def _sweep_norm(shapes: list, timer: Callable, device: torch.device, dry: bool) -> list[dict]:
    """The norm pass and its finalize on the gradients of ``shapes``, per chunk size (the
    shipped block)."""
    from triton_adam.kernels import adam as K
    from triton_adam.kernels import norm as N

    grads = [torch.randn(shape, device=device) for shape in shapes]
    table = torch.zeros(len(grads), K.TABLE_WIDTH, dtype=torch.int64)
    for i, g in enumerate(grads):
        table[i, K.COL_GRAD_ADDR], table[i, K.COL_NUMEL] = g.data_ptr(), g.numel()
    table = table.to(device)
    numels = [g.numel() for g in grads]
    clip_norms = torch.ones(1, dtype=torch.float64, device=device)
    norms, scales = torch.empty(1, device=device), torch.empty(1, device=device)
    rows = []
    shipped_blocks = N.NORM_CHUNK_SIZE // K.BLOCK_SIZE
    for blocks in sorted(set(SWEEP_NORM_CHUNKS) | {shipped_blocks}):
        chunk = blocks * K.BLOCK_SIZE
        chunks = _chunk_table(numels, chunk, device)
        partials = torch.empty(chunks.shape[0], device=device)
        segments, outputs = N.finalize_tables([([(0, chunks.shape[0])], N.MODE_GLOBAL)], device)

        def norm_step() -> None:
            N.sum_squares_tensor_list_(table, chunks, partials, grad_dtype=torch.float32,
                                       aligned=True, chunk_size=chunk)
            N.clip_scales_(partials, segments, outputs, clip_norms, norms, scales)

        if not dry:
            norm_step()  # compiles, outside the timing
        t = timer(norm_step)
        rows.append({"kernel": f"norm pass + finalize, {len(numels)} tensors, "
                               f"{sum(numels):,} fp32", "config": chunk,
                     "chunk_blocks": blocks, "partials": chunks.shape[0], "ms": t["gpu_ms"],
                     "gb_per_s": sum(numels) * 4 / t["gpu_ms"] / 1e6,
                     "shipped": chunk == N.NORM_CHUNK_SIZE})
    return rows


def run_sweep(timer: Callable, device: torch.device, dry: bool) -> dict:
    """Time the update kernel per (BLOCK_SIZE, NUM_WARPS) and the norm pass per chunk size."""
    from triton_adam.kernels import adam as K
    from triton_adam.kernels import norm as N

    shipped = (K.BLOCK_SIZE, K.NUM_WARPS)
    out: dict = {"shipped": {"BLOCK_SIZE": shipped[0], "NUM_WARPS": shipped[1],
                             "NORM_CHUNK_SIZE": N.NORM_CHUNK_SIZE},
                 "configs": [list(c) for c in sweep_configs(shipped)],
                 "tolerance": SWEEP_TOLERANCE}
    # Each part frees its tensors when it returns.
    out["dense"] = _sweep_dense(3 * 1024 + 5 if dry else SWEEP_DENSE_N, timer, device, dry)
    bench._free(device)
    out["multi_tensor"] = _sweep_multi([(1030,), (17, 3), (2048,), (5,)] if dry
                                       else bench.gpt2_small(), timer, device, dry)
    bench._free(device)
    norm_rows = out["norm"] = _sweep_norm([(4100,), (300,), (64, 70)] if dry
                                          else bench.llama_7b(layers=8), timer, device, dry)
    bench._free(device)

    shipped_key = f"{shipped[0]}x{shipped[1]}"
    out["verdicts"] = verdicts = {
        "dense": _verdict(out["dense"], "config", shipped_key, "BLOCK_SIZE x NUM_WARPS"),
        "multi_tensor": _verdict(out["multi_tensor"], "config", shipped_key,
                                 "BLOCK_SIZE x NUM_WARPS"),
        "norm": _verdict(norm_rows, "config", N.NORM_CHUNK_SIZE, "NORM_CHUNK_SIZE"),
    }
    # One configuration serves both update kernels: the one with the least summed slowdown.
    best_total = {}
    for name in ("dense", "multi_tensor"):
        fastest = min(r["ms"] for r in out[name])
        for r in out[name]:
            best_total[r["config"]] = best_total.get(r["config"], 0.0) + r["ms"] / fastest - 1
    pick = min(best_total, key=best_total.get)
    loss = best_total[shipped_key] - best_total[pick]
    out["verdicts"]["update"] = {
        "best": pick, "shipped": shipped_key, "shipped_is_best": loss <= SWEEP_TOLERANCE,
        "text": (f"BLOCK_SIZE x NUM_WARPS = {shipped_key} (shipped) is what the measurements "
                 f"pick for both update kernels (within {SWEEP_TOLERANCE:.0%})"
                 if loss <= SWEEP_TOLERANCE else
                 f"the measurements pick BLOCK_SIZE x NUM_WARPS = {pick} for the update kernels "
                 f"(the shipped {shipped_key} is {loss:.1%} slower, summed over the dense and "
                 f"multi-tensor runs): change the kernels' BLOCK_SIZE / NUM_WARPS")}
    if dry:
        for v in verdicts.values():
            v["text"] = "dry run, not a measurement: " + v["text"]
    return _part("passed", **out)


# ------------------------------------------------------------------ 4. benchmark
def run_bench(timer: Callable, device: torch.device, dry: bool, deadline: float,
              max_params: float) -> dict:
    """perf/bench.py's rows: single tensors of each size, then the two parameter lists, while
    memory and time allow."""
    cases: list[tuple[str, list]] = []
    if dry:
        cases.append((bench.size_case(4096), [(4096,)]))
        for name, shapes in bench.LISTS.items():
            full = shapes()
            # the real list is built (its counts are reported); tiny tensors of its first
            # shapes are stepped under the interpreter
            cases.append((f"{name} [dry run: {len(full)} tensors, {bench.numel(full):,} "
                          "params; 12 tiny ones stepped]",
                          [tuple(max(1, d // 256) for d in s) for s in full[:12]]))
    else:
        cases += [(bench.size_case(n), [(n,)]) for n in bench.SIZES if n <= max_params]
        cases += [(name, shapes()) for name, shapes in bench.LISTS.items()]
    rows, skipped = [], []
    for case, shapes in cases:
        n = bench.numel(shapes)
        # at ~2.5 TB/s effective over every row and the timer's repeats: 1e9 is ~20 s
        needed = 5.0 + n * 2e-8
        if _now() + needed > deadline:
            skipped.append({"case": case, "reason": "time budget"})
            continue
        if not dry and not bench.fits(n, torch.cuda.mem_get_info()[0]):
            skipped.append({"case": case, "reason": "memory"})
            continue
        rows += bench.bench_case(case, shapes, timer, device)
    status = "passed" if rows else "error"
    return _part(status, rows=rows, skipped=skipped,
                 timer=("CUDA: queued-burst device time, do_bench median, host wall time"
                        if not dry else "CPU host time (dry run: measures nothing)"))


# ------------------------------------------------------------------ outputs
def _fmt_status(part: dict) -> str:
    s = part.get("status", "?")
    return {"passed": "passed", "failed": "**FAILED**", "error": "**ERROR**",
            "timeout": "**TIMEOUT**", "skipped": "skipped"}.get(s, s)


def markdown(report: dict) -> str:
    m, parts, dry = report["machine"], report["parts"], report["dry_run"]
    lines = ["# triton_adam GPU check", ""]
    if dry:
        lines += [f"**Dry run** ({report['why_dry']}): the GPU parts were skipped; the plumbing "
                  "ran on the CPU under the Triton interpreter. Nothing below is a GPU "
                  "measurement.", ""]
    gpu = (f"{m.get('gpu')} ({m.get('sms')} SMs, {m.get('memory_gib')} GiB, sm_"
           f"{m.get('capability', '').replace('.', '')}), driver {m.get('driver', '?')}"
           if m.get("gpu") else "no CUDA device")
    lines += [f"- machine: {gpu}; {m['cpus']} CPUs",
              f"- software: Python {m['python']}, torch {m['torch']} (CUDA {m['cuda_runtime']}),"
              f" triton {m['triton']}; triton_adam {report['importable']}",
              f"- started {report['started']}, {report['elapsed_s']:.0f} s of a "
              f"{report['budget_s']:.0f} s budget",
              f"- result: **{'PASSED' if report['ok'] else 'FAILED'}**", "",
              "| part | status | |", "|---|---|---|"]
    for name, part in parts.items():
        lines.append(f"| {name} | {_fmt_status(part)} | {part.get('reason', '') or ''} |")
    lines.append("")

    t = parts["tests"]
    lines += ["## Tests in CUDA mode", "",
              "`TRITON_ADAM_TEST_DEVICE=cuda python -m pytest tests/FILE`, one process per "
              "file. Left out: " + "; ".join(f"`{k}` ({v})" for k, v in EXCLUDED_TESTS.items())
              + ".", ""]
    if t.get("files") and isinstance(t["files"][0], dict):
        lines += ["| file | status | passed | failed | errors | skipped | s |",
                  "|---|---|---|---|---|---|---|"]
        for e in t["files"]:
            lines.append(f"| {e['file']} | {e['status']} | {e.get('passed', '-')} | "
                         f"{e.get('failures', '-')} | {e.get('errors', '-')} | "
                         f"{e.get('skipped', '-')} | {e.get('seconds', 0):.0f} |")
        tot = t["totals"]
        lines += ["", f"Total: {tot['passed']} passed, {tot['failures']} failed, "
                      f"{tot['errors']} errors, {tot['skipped']} skipped.", ""]
        failed = [f for e in t["files"] for f in e.get("failed_tests", [])]
        if failed:
            lines += ["Failed:", ""] + [f"- `{f}`" for f in failed[:40]] + [""]
    if t.get("plumbing"):
        p = t["plumbing"]
        lines += [f"Dry run: the subset ({len(p['files'])} files) collects in CUDA mode: "
                  f"{p.get('collected')} tests ({_fmt_status(p)}).", ""]

    s = parts["sanitizer"]
    lines += ["## compute-sanitizer", ""]
    if s.get("runs"):
        lines += [f"`{s['command']}` (tool: memcheck, racecheck), "
                  "`PYTORCH_NO_CUDA_MEMORY_CACHING=1`.", "",
                  "| tool | status | summary | s |", "|---|---|---|---|"]
        for r in s["runs"]:
            lines.append(f"| {r['tool']} | {r['status']} | {'; '.join(r['summary'][-2:])} | "
                         f"{r['seconds']:.0f} |")
        lines.append("")
    if s.get("plumbing"):
        lines += [f"Dry run: `perf/sanitize_steps.py --device cpu` "
                  f"({_fmt_status(s['plumbing'])}): "
                  f"{(s['plumbing'].get('output') or '').strip().splitlines()[-1:]}", ""]

    w = parts["sweep"]
    lines += ["## Launch configuration sweep", ""]
    data = w if w.get("dense") else w.get("plumbing") or {}
    if data.get("dense"):
        if dry:
            lines += ["(dry run: every configuration built and launched under the interpreter; "
                      "times are meaningless)", ""]
        for key in ("dense", "multi_tensor", "norm"):
            rows = data[key]
            lines += [f"**{rows[0]['kernel']}**", "", "| config | ms | GB/s (floor) | |",
                      "|---|---|---|---|"]
            lines += [f"| {r['config']} | {r['ms']:.3f} | {r['gb_per_s']:.0f} | "
                      f"{'shipped' if r['shipped'] else ''} |" for r in rows]
            lines += ["", f"-> {data['verdicts'][key]['text']}", ""]
        lines += [f"**Verdict**: {data['verdicts']['update']['text']}; norm pass: "
                  f"{data['verdicts']['norm']['text']}.", ""]

    b = parts["bench"]
    lines += ["## Benchmark", ""]
    data = b if b.get("rows") else b.get("plumbing") or {}
    if data.get("rows"):
        if dry:
            lines += ["(dry run: the rows' code ran on the CPU; numbers are not measurements)",
                      ""]
        lines += [bench.table(data["rows"]), "",
                  "GPU ms: device time per step from a burst queued behind a spin kernel (* "
                  "do_bench's median where the host could not stay ahead); wall ms: "
                  "back-to-back steps timed on the host; GB/s: floor bytes "
                  "(perf/floors.py) / GPU ms; vs torch: torch's time / this row's (fused "
                  "AdamW, with clip_grad_norm_ for the clipped rows).", ""]
        for sk in data.get("skipped", []):
            lines.append(f"- skipped {sk['case']}: {sk['reason']}")
        lines.append("")
    for name, part in parts.items():
        if part.get("status") in ("error",) and part.get("traceback"):
            lines += [f"## {name}: error", "", "```", part["traceback"], "```", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dry = report["dry_run"]
    b, w = report["parts"]["bench"], report["parts"]["sweep"]
    bench_rows = (b if b.get("rows") else b.get("plumbing") or {}).get("rows", [])
    sweep = w if w.get("dense") else w.get("plumbing") or {}
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    title = (f"triton_adam GPU check on {report['machine'].get('gpu')}" if not dry else
             "triton_adam GPU check: DRY RUN on the CPU (nothing measured)")
    fig.suptitle(title)

    ax = axes[0]
    singles = [r for r in bench_rows if r["tensors"] == 1]
    for name in dict.fromkeys(r["impl"] for r in singles):
        pts = sorted((r["params"], r["gb_per_s"]) for r in singles if r["impl"] == name)
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("fp32 parameters (one tensor)")
    ax.set_ylabel("GB/s (floor bytes / GPU time)")
    ax.set_title("bandwidth against size")
    ax.grid(True, alpha=0.3)
    if singles:
        ax.legend(fontsize=7)

    ax = axes[1]
    lists = [r for r in bench_rows if r["tensors"] > 1 and r["impl"] != "device copy"]
    labels = [f"{r['case'].split(' ')[0]}: {r['impl']}" for r in lists]
    ys = range(len(lists))
    ax.barh([y - 0.2 for y in ys], [r["gpu_ms"] for r in lists], 0.4, label="GPU ms")
    ax.barh([y + 0.2 for y in ys], [r["wall_ms"] for r in lists], 0.4, label="wall ms")
    ax.set_yticks(list(ys), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("ms per step")
    ax.set_title("parameter lists: GPU and whole-step time")
    if lists:
        ax.legend(fontsize=7)

    ax = axes[2]
    for key in ("dense", "multi_tensor"):
        rows = sweep.get(key) or []
        if rows:
            ax.plot([r["config"] for r in rows], [r["gb_per_s"] for r in rows], marker="o",
                    label=key.replace("_", "-"))
            for r in rows:
                if r["shipped"]:
                    ax.annotate("shipped", (r["config"], r["gb_per_s"]), fontsize=7)
    ax.set_xlabel("BLOCK_SIZE x NUM_WARPS")
    ax.set_ylabel("GB/s (floor)")
    ax.set_title("update kernel launch configurations")
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    if sweep.get("dense"):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the outputs")
    parser.add_argument("--dry-run", action="store_true",
                        help="plumbing only, on the CPU (automatic without a CUDA device)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="default: 480")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: "
                        "tests, sanitizer, sweep, bench")
    parser.add_argument("--tests", nargs="*", metavar="REGEX",
                        help="only test files whose name matches (default: all but "
                             "EXCLUDED_TESTS)")
    parser.add_argument("--jobs", type=int, default=max(2, min(8, (os.cpu_count() or 4) // 2)),
                        help="pytest processes at once")
    parser.add_argument("--max-params", type=float, default=1e9)
    parser.add_argument("--no-install", action="store_true",
                        help="do not try an offline pip install of this checkout")
    args = parser.parse_args(argv)
    start, started = _now(), datetime.datetime.now().isoformat(timespec="seconds")
    end = start + args.budget_s
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.out.mkdir(parents=True, exist_ok=True)

    # Decide the mode before triton is imported: the dry run interprets the kernels.
    cuda = torch.cuda.is_available() and not args.dry_run
    dry = not cuda
    why_dry = "--dry-run" if args.dry_run else "no CUDA device"
    env = base_env()
    if dry:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    env, importable = ensure_importable(env, allow_install=not args.no_install)
    device = torch.device("cuda" if cuda else "cpu")
    print(f"gpu_check: {'CUDA' if cuda else 'dry run (' + why_dry + ')'}; triton_adam "
          f"{importable}", flush=True)

    report = {"dry_run": dry, "why_dry": why_dry if dry else None, "started": started,
              "budget_s": args.budget_s, "importable": importable,
              "machine": machine_info(cuda), "parts": {}}
    parts = report["parts"]
    files = test_files(args.tests)
    skipped = _part("skipped", reason="dry run: no CUDA device" if dry else "--skip")

    # 1 + 2: tests and sanitizer together (they do not time anything)
    phase_end = start + SHARE_TESTS * args.budget_s
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        results: dict[str, dict] = {}
        threads = []

        def background(name: str, fn: Callable[[], dict]) -> None:
            def target() -> None:
                results[name] = _guarded(name, fn)

            threads.append(threading.Thread(target=target))
            threads[-1].start()

        tool = find_sanitizer()
        if cuda and "tests" not in skip:
            background("tests", lambda: run_tests(files, env, phase_end, args.jobs,
                                                  args.out / "tests.log", Path(tmp)))
        if cuda and "sanitizer" not in skip and tool:
            background("sanitizer", lambda: run_sanitizer(tool, env, phase_end, args.out))
        if cuda and "sweep" not in skip:
            # Compile every configuration of the sweep now, while the tests run: the timed
            # sweep then launches from the JIT's cache (this process's).
            report["sweep_warm_up"] = _guarded("sweep warm-up", lambda: run_sweep(
                lambda step: (step(), {"gpu_ms": 1.0})[1], device, False))["status"]
        if dry:  # the plumbing's subprocesses, while this one runs the sweep's and bench's
            background("tests", lambda: dict(skipped, plumbing=_guarded(
                "tests", lambda: collect_tests(files, env, 300))))
            background("sanitizer", lambda: dict(skipped, tool_path=tool, plumbing=_guarded(
                "sanitizer", lambda: sanitize_steps_on_cpu(env, 300))))
            timer = bench.CpuTimer()
            parts["sweep"] = dict(skipped, plumbing=_guarded(
                "sweep", lambda: run_sweep(timer, device, True)))
            parts["bench"] = dict(skipped, plumbing=_guarded(
                "bench", lambda: run_bench(timer, device, True, float("inf"), args.max_params)))
        for t in threads:
            t.join()
    parts["tests"] = results.get("tests", skipped)
    if "sanitizer" in results:
        parts["sanitizer"] = results["sanitizer"]
    elif cuda and "sanitizer" not in skip:
        parts["sanitizer"] = _part("skipped", reason="compute-sanitizer not found (PATH, "
                                   "/usr/local/cuda*/bin)")
    else:
        parts["sanitizer"] = skipped

    # 3: sweep, then 4: benchmark, the GPU to themselves
    if cuda:
        timer = bench.CudaTimer(warmup_ms=10, rep_ms=50, wall_target_ms=30, max_burst=5)
        parts["sweep"] = (_guarded("sweep", lambda: run_sweep(timer, device, False))
                          if "sweep" not in skip else skipped)
        bench_deadline = end - RESERVE_S
        parts["bench"] = (_guarded("bench", lambda: run_bench(
            bench.CudaTimer(), device, False, bench_deadline, args.max_params))
            if "bench" not in skip else skipped)

    report["parts"] = parts = {k: parts[k] for k in ("tests", "sanitizer", "sweep", "bench")}
    # ok: every part that ran passed (GPU run; compute-sanitizer may be absent), or every
    # plumbing check passed (dry run)
    if dry:
        checked = [p.get("plumbing", {}) for p in parts.values()]
    else:
        checked = [p for p in parts.values() if p.get("status") != "skipped"]
    report["ok"] = all(p.get("status") == "passed" for p in checked)
    report["elapsed_s"] = _now() - start
    with open(args.out / "gpu_check.json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    (args.out / "gpu_check.md").write_text(markdown(report))
    try:
        plot(report, args.out / "gpu_check.png")
    except Exception as exc:  # the plot is the one output a missing matplotlib may cost
        print(f"gpu_check: no plot ({type(exc).__name__}: {exc})", file=sys.stderr)
    print((args.out / "gpu_check.md").read_text())
    print(f"gpu_check: {'PASSED' if report['ok'] else 'FAILED'} in {report['elapsed_s']:.0f} s; "
          f"outputs in {args.out}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
