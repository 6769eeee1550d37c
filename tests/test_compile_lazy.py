"""The lazy sparse-row kernel compiles for sm_80 and sm_90 (no GPU needed), and its SASS moves
the floor per updated element with 16-byte accesses and no spills, with and without clipping
and AMP; the sparse sum of squares of a norm clip reads each gradient entry once.

The compiler runs in subprocesses (one per target, in parallel): this test session interprets
kernels (TRITON_INTERPRET=1), and interpreted ``@triton.jit`` functions cannot be compiled.
The same file is the subprocess's script::

    python tests/test_compile_lazy.py --target sm_90     # one JSON line per specialization

Bytes per element come from the SASS (``cuobjdump`` shipped with Triton), not the source:
``perf/sass.py``'s path analysis refuses kernels with loops (the duplicate-summing loop), so
this file classifies accesses itself: an access is **per element** when its address depends on
the thread index (``perf/sass.py``'s taint from ``SR_TID``, iterated over the control-flow
graph to a fixpoint so the loop's back edge is followed), and it lies **in the loop** when it
sits between a backward branch and its target. Per-element bytes outside the loop are the cost
of an updated element whose row appears once; the loop adds the gradient row of each further
duplicate. The PTX shows how the param of fp16/bf16 tables is rounded (``cvt.rn``: to nearest
even). The sum of squares nests the duplicate loop in a loop over sorted positions: its
per-element loads are counted by loop depth (the run's head at depth 1, each further
duplicate at depth 2).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET_NAMES = ("sm_80", "sm_90")

_SIZE = {"fp32": 4, "fp64": 8, "fp16": 2, "bf16": 2}

# (param, grad values, master) dtype configurations the launcher accepts; master is False,
# True (fp32 masters) or "remainder" (the master as the bf16 param and an int16 remainder,
# MASTER_REMAINDER). bf16 moments and stochastic rounding are refused in lazy mode.
DTYPE_CONFIGS = [
    ("fp32", "fp32", False), ("fp64", "fp64", False),
    ("bf16", "bf16", True), ("bf16", "fp32", True), ("fp16", "fp16", True),
    ("fp16", "fp32", True), ("bf16", "bf16", False), ("fp16", "fp16", False),
    ("bf16", "bf16", "remainder"), ("bf16", "fp32", "remainder"),
]
ALL_MODES = [(a, c, d) for a in (False, True) for c in (False, True) for d in (False, True)]


def expected_bytes(param: str, grad: str, master: bool | str,
                   amsgrad: bool) -> tuple[int, int, int]:
    """(loads, stores, loop loads) per updated element at the memory floor."""
    c = 8 if param == "fp64" else 4  # compute dtype: moments (and the master)
    if master == "remainder":
        # The master is the param and its int16 remainder, each read and written (2 + 2).
        p_read, master_write = _SIZE[param] + 2, 2
    else:
        p_read, master_write = (c if master else _SIZE[param]), c * master
    loads = _SIZE[grad] + p_read + 2 * c + c * amsgrad
    stores = _SIZE[param] + 2 * c + c * amsgrad + master_write
    return loads, stores, _SIZE[grad]


def specializations():
    """Every dtype configuration x mode at the widest block with a 16-divisible width (the
    common embedding case), and the other column blocks / odd widths / 64-bit sizes on a few
    modes. Returns (Specialization, info) pairs; info says what the SASS must show."""
    import compile_check  # noqa: E402  (exits under TRITON_INTERPRET=1: subprocess only)

    from triton_adam.kernels import lazy

    kernel = lazy._lazy_adam_kernel
    out = []

    def add(param, grad, master, amsgrad, coupled, decoupled, width, divisible, int_type="i32",
            clip=False, amp=False):
        block_w, num_warps = lazy.row_block_config(width)
        c = "fp64" if param == "fp64" else "fp32"
        # clip: a norm clip's scale and the value clip; amp: the loss scale and the skip flag.
        remainder = master == "remainder"
        constexprs = lazy.lazy_kernel_constexprs(block_w=block_w, amsgrad=amsgrad,
                                                 coupled_decay=coupled,
                                                 decoupled_decay=decoupled, master=bool(master),
                                                 master_remainder=remainder,
                                                 clip_scale=clip, clip_value=clip,
                                                 unscale=amp, skip_on_inf=amp)
        signature = {
            "param_ptr": f"*{param}", "master_ptr": "*i16" if remainder else "*fp32",
            "values_ptr": f"*{grad}",
            "sorted_rows_ptr": "*i64", "perm_ptr": "*i64", "exp_avg_ptr": f"*{c}",
            "exp_avg_sq_ptr": f"*{c}", "max_exp_avg_sq_ptr": f"*{c}", "hyper_ptr": f"*{c}",
            "pows_in_ptr": f"*{c}", "pows_out_ptr": f"*{c}", "clip_scale_ptr": f"*{c}",
            "grad_scale_ptr": "*fp32", "found_inf_ptr": "*fp32", "lr": "fp64", "lr_ptr": "*fp64",
            "nnz": int_type, "n_rows": int_type, "width": "i32",
            **{k: "constexpr" for k in constexprs},
        }
        pointers = [k for k, v in signature.items() if v.startswith("*")]
        divisible_args = tuple(pointers) + (("width",) if divisible else ())
        mode = " ".join([param, f"g:{grad}"] + ["master"] * bool(master)
                        + ["remainder"] * remainder + ["amsgrad"] * amsgrad
                        + ["coupled"] * coupled + ["decoupled"] * decoupled
                        + ["clip"] * clip + ["amp"] * amp
                        + [f"width:{width}", f"BLOCK_W:{block_w}", f"ints:{int_type}"])
        spec = compile_check.Specialization(
            kernel, f"lazy {mode}", signature, constexprs, divisible_args,
            num_warps=num_warps, elements_per_program=block_w, floor_mode=param)
        loads, stores, loop = expected_bytes(param, grad, master, amsgrad)
        threads = 32 * num_warps
        out.append((spec, dict(
            mode=mode, threads=threads, block_w=block_w, loads=loads, stores=stores, loop=loop,
            # 16-byte accesses for every stream need 8 contiguous elements per thread (the
            # 2-byte streams) and row starts known to be 16-byte aligned (width % 16 == 0).
            vector=divisible and block_w // threads >= 8)))

    for param, grad, master in DTYPE_CONFIGS:
        full = param in ("fp32",) or (param == "bf16" and grad == "bf16" and master)
        for amsgrad, coupled, decoupled in (ALL_MODES if full else ALL_MODES[::7]):
            add(param, grad, master, amsgrad, coupled, decoupled, 1024, True)
    for width in (1, 48, 100, 256, 500, 1000):  # every column block, odd and 16k widths
        add("fp32", "fp32", False, False, False, False, width, width % 16 == 0)
    add("fp32", "fp32", False, True, True, True, 4096, True, int_type="i64")  # > 2^31 rows
    # Clipping (norm scale + value bounds) and AMP (unscale + skip) of sparse gradients: every
    # dtype configuration, plain and with every mode (the most registers), and an odd width.
    for param, grad, master in DTYPE_CONFIGS:
        for amsgrad, coupled, decoupled in ALL_MODES[::7]:
            add(param, grad, master, amsgrad, coupled, decoupled, 1024, True, clip=True,
                amp=True)
    add("fp32", "fp32", False, False, False, False, 1024, True, clip=True)
    add("fp32", "fp32", False, False, False, False, 1024, True, amp=True)
    add("fp32", "fp32", False, True, True, True, 100, False, clip=True, amp=True)
    return out


def sum_squares_specializations():
    """The sparse sum of squares of a norm clip (``lazy.sparse_sum_squares_``): every values
    dtype with its accumulation dtypes at the widest block, and the other column blocks / odd
    widths on fp32. Returns (Specialization, info) pairs, as ``specializations``."""
    import compile_check  # noqa: E402

    from triton_adam.kernels import lazy

    import torch

    dtypes = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16,
              "fp16": torch.float16}
    out = []

    def add(grad, acc, width, divisible, int_type="i32"):
        block_w, num_warps = lazy.row_block_config(width)
        constexprs = lazy.sparse_sum_squares_constexprs(
            values_dtype=dtypes[grad], acc_dtype=dtypes[acc], block_w=block_w)
        signature = {"values_ptr": f"*{grad}", "sorted_rows_ptr": "*i64", "perm_ptr": "*i64",
                     "partials_ptr": f"*{acc}", "nnz": int_type, "n_rows": int_type,
                     "width": "i32", "row_programs": "i32",
                     **{k: "constexpr" for k in constexprs}}
        pointers = [k for k, v in signature.items() if v.startswith("*")]
        divisible_args = tuple(pointers) + (("width",) if divisible else ())
        mode = (f"sum-squares g:{grad} acc:{acc} width:{width} BLOCK_W:{block_w} "
                f"ints:{int_type}")
        spec = compile_check.Specialization(
            lazy._sparse_sum_squares_kernel, mode, signature, constexprs, divisible_args,
            num_warps=num_warps, elements_per_program=block_w, floor_mode=f"norm {grad}")
        threads = 32 * num_warps
        out.append((spec, dict(mode=mode, kernel="sum-squares", threads=threads,
                               block_w=block_w, loads=_SIZE[grad], stores=0, loop=_SIZE[grad],
                               vector=divisible and block_w // threads >= 8)))

    for grad, acc in (("fp32", "fp32"), ("fp32", "fp64"), ("fp64", "fp64"), ("bf16", "fp32"),
                      ("fp16", "fp32"), ("bf16", "fp64")):
        add(grad, acc, 1024, True)
    for width in (1, 48, 100, 256, 500):
        add("fp32", "fp32", width, width % 16 == 0)
    add("fp32", "fp32", 4096, True, int_type="i64")
    return out


def _sources(ins) -> set[str]:
    """What an instruction reads, without the predicates it writes.

    ``perf/sass.py``'s ``_sources`` counts every operand after the first as read, including a
    carry-out or second result predicate (``LEA R4, P0, R5, ...``; ``ISETP P0, PT, ...``),
    which ``_dests`` rightly counts as written. In straight-line code that rarely matters;
    around a loop's back edge a predicate tainted by the previous iteration then taints a
    per-program address (the next sorted id). Those leading predicates are skipped here.
    """
    import sass  # noqa: E402

    if ins.base in sass._NO_DEST:
        return sass._sources(ins)
    operands = list(ins.operands[1:])
    while operands and re.fullmatch(r"!?U?P[0-6T]", operands[0]):
        operands.pop(0)
    names = set()
    for operand in operands:
        names |= sass._names(operand, pair=sass._is_64bit_arith(ins))
    return names


def _per_element_addresses(code) -> set[int]:
    """Addresses of global accesses whose address depends on the thread index.

    The forward taint of ``perf/sass.py`` (from ``SR_TID``; a load's value is thread-dependent
    only if its address is; guards are not data), iterated over the control-flow graph to a
    fixpoint so that the loop's back edge is followed: a may-analysis (union at joins), so it
    can only over-approximate what is per element.
    """
    import sass  # perf/ is on the path (pyproject: pythonpath)

    graph = sass._graph(code)
    summaries = {entry: sass._subroutine_summary(body)
                 for entry, body in graph.subroutines.items()}
    preds: dict[int, list[int]] = {b: [] for b in graph.blocks}
    for b, succs in graph.succs.items():
        for s in succs:
            if s != -1:
                preds[s].append(b)
    out: dict[int, set[str]] = {b: set() for b in graph.blocks}
    per_element: set[int] = set()
    changed = True
    while changed:
        changed = False
        for b in sorted(graph.blocks):
            taint = set().union(*(out[p] for p in preds[b]))
            for ins in graph.blocks[b]:
                if ins.base in sass._GLOBAL_ACCESS and sass._tainted(
                        sass._address_names(ins), taint):
                    per_element.add(ins.address)
                if ins.base == "CALL":
                    reads, dests = summaries[sass._target(ins)]
                    hot = sass._tainted(reads, taint)
                else:
                    dests = sass._dests(ins)
                    sources = (sass._address_names(ins) if ins.base in sass._GLOBAL_ACCESS
                               else _sources(ins))
                    hot = sass._tainted(sources, taint)
                taint = taint | dests if hot else taint - dests
            if taint != out[b]:
                out[b], changed = taint, True
    return per_element


def analyse(spec, info: dict, target: str, workdir: str) -> dict:
    """Compile one specialization for one target and measure its SASS."""
    import compile_check  # noqa: E402
    import sass  # noqa: E402
    import triton

    from triton_adam.kernels import lazy

    # As the launcher compiles it: compile_check's options plus the register budget.
    compiled = triton.compile(spec.source(), target=compile_check.TARGETS[target],
                              options={"num_warps": spec.num_warps,
                                       "maxnreg": lazy.MAX_REGISTERS,
                                       "enable_fp_fusion": lazy.FP_FUSION})
    cubin = os.path.join(workdir, f"{target}.cubin")
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    name = compiled.metadata.name
    # fp32 -> fp16/bf16 conversions of the param store: their rounding modifier (rn = to
    # nearest even, what the interpreter path of kernels/lazy.py reproduces bit for bit).
    narrowing = sorted(set(re.findall(r"cvt\.(\w+)\.(?:bf16|f16)(?:x2)?\.f32",
                                      compiled.asm["ptx"])))
    code = sass.parse(sass.run_tool("cuobjdump", "-sass", cubin), name)
    usage = sass.resource_usage(sass.run_tool("cuobjdump", "-res-usage", cubin), name)
    loops = [(sass._target(i), i.address) for i in code
             if i.base == "BRA" and sass._target(i) < i.address]
    per_element = _per_element_addresses(code)
    threads, block_w = info["threads"], info["block_w"]
    row = dict(info, target=target, registers=usage.get("REG", 0),
               spill_bytes=usage.get("LOCAL", 0) + usage.get("STACK", 0),
               spill_instructions=sum(i.base in sass._SPILL_OPCODES for i in code),
               loops=len(loops), narrowing_rounding=narrowing, load=0.0, store=0.0,
               loop_load=0.0, loop_store=0.0, load_by_depth={}, store_by_depth={},
               widths=[], per_program_widths=[])
    for ins in code:
        if ins.base not in sass._GLOBAL_ACCESS:
            continue
        load, store = sass._GLOBAL_ACCESS[ins.base]
        width = next((sass._WIDTH_BYTES[m] for m in ins.modifiers if m in sass._WIDTH_BYTES), 4)
        if ins.address not in per_element:
            row["per_program_widths"].append(width)
            continue
        row["widths"].append(width)
        # How many loops the access lies in (the sum of squares nests the duplicate loop in
        # its loop over sorted positions).
        depth = sum(start <= ins.address <= end for start, end in loops)
        prefix = "loop_" if depth else ""
        per_elem = width * threads / block_w
        if load:
            row[prefix + "load"] += per_elem
            row["load_by_depth"][str(depth)] = row["load_by_depth"].get(str(depth), 0) + per_elem
        if store:
            row[prefix + "store"] += per_elem
            row["store_by_depth"][str(depth)] = (row["store_by_depth"].get(str(depth), 0)
                                                 + per_elem)
    return row


def main(argv: list[str]) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--target", choices=TARGET_NAMES, action="append")
    args = parser.parse_args(argv)
    failures = 0
    with tempfile.TemporaryDirectory() as workdir:
        for spec, info in specializations() + sum_squares_specializations():
            for target in args.target or TARGET_NAMES:
                try:
                    row = analyse(spec, info, target, workdir)
                except Exception as exc:  # report every failure, then fail the run
                    failures += 1
                    row = dict(info, target=target,
                               error=f"{type(exc).__name__}: {exc}".splitlines()[0])
                print(json.dumps(row), flush=True)
    return 1 if failures else 0


def _run_targets() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # The script imports perf/'s tools (pytest puts perf/ on the path; a script needs it
    # said).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "perf"), str(ROOT),
                                                      env.get("PYTHONPATH")]))
    procs = [subprocess.Popen([sys.executable, __file__, "--target", t], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for t in TARGET_NAMES]
    rows = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        assert proc.returncode == 0, out[-4000:] + err[-4000:]
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rows


_ROWS: list[dict] = []


def _rows() -> list[dict]:
    """Every row of both targets, compiled once per session (both tests read them)."""
    if not _ROWS:
        _ROWS.extend(_run_targets())
    return _ROWS


def test_lazy_kernel_compiles_and_moves_the_floor_per_element():
    rows = [r for r in _rows() if r.get("kernel") != "sum-squares"]
    for target in TARGET_NAMES:
        print(f"\n{target}: mode | loads+stores B/elem (floor) | per duplicate | widths | regs")
        for r in (r for r in rows if r["target"] == target):
            print(f"  {r['mode']:<62} {r['load']:g}+{r['store']:g} "
                  f"({r['loads']}+{r['stores']}) | +{r['loop_load']:g} | "
                  f"{min(r['widths'])}-{max(r['widths'])} B | {r['registers']}")
    assert len(rows) == 2 * len({r["mode"] for r in rows}) >= 2 * 40
    assert any("clip amp" in r["mode"] for r in rows)
    # The master as a remainder: bf16 g, p, rem 2 each + fp32 m, v read, p, rem + m, v written
    # (14 + 12 B; 16 + 12 with fp32 gradient values), every mode.
    remainder = [r for r in rows if "remainder" in r["mode"].split()]
    assert len(remainder) == 2 * 14, [r["mode"] for r in remainder]
    assert {(r["loads"], r["stores"]) for r in remainder if "g:bf16" in r["mode"]} == {
        (14, 12), (18, 16)}
    for r in rows:
        what = f"{r['target']} {r['mode']}"
        assert "error" not in r, f"{what}: {r.get('error')}"
        assert r["spill_bytes"] == 0 and r["spill_instructions"] == 0, f"{what}: spills"
        assert r["loops"] == 1, f"{what}: {r['loops']} loops (expected the duplicate loop)"
        assert r["loop_store"] == 0, f"{what}: stores inside the duplicate loop"
        # One read of each input and one write of each output per updated element; each
        # further duplicate of a row reads one more gradient row, nothing else.
        assert (r["load"], r["store"], r["loop_load"]) == (r["loads"], r["stores"], r["loop"]), (
            f"{what}: {r['load']}+{r['store']} B/elem (+{r['loop_load']} per duplicate), "
            f"floor {r['loads']}+{r['stores']} (+{r['loop']})")
        if r["vector"]:
            widths = sorted(set(r["widths"]))
            assert widths == [16], f"{what}: per-element access widths {widths}"
        if "remainder" in r["mode"].split():
            # The param is the master's high half, rounded by integer arithmetic (ties away:
            # kernels/common.py split_master), not by a conversion.
            assert r["narrowing_rounding"] == [], f"{what}: {r['narrowing_rounding']}"
        elif r["mode"].split()[0] in ("fp16", "bf16"):
            # The param is the fp32 value rounded to nearest even (cvt.rn), never truncated.
            assert r["narrowing_rounding"] == ["rn"], f"{what}: {r['narrowing_rounding']}"
        # Per-program traffic is scalar (ids, perm, hyper, pows): never a 16-byte vector.
        assert max(r["per_program_widths"]) <= 8, what


def test_sparse_sum_squares_compiles_and_reads_each_entry_once():
    """The norm pass of a sparse gradient: one read of every gradient entry (the run's head in
    the loop over sorted positions, each further duplicate in the nested duplicate loop), no
    per-element store (one partial per program), 16-byte loads, no spills."""
    rows = [r for r in _rows() if r.get("kernel") == "sum-squares"]
    for target in TARGET_NAMES:
        print(f"\n{target}: mode | loads B/elem by loop depth | widths | regs")
        for r in (r for r in rows if r["target"] == target):
            print(f"  {r['mode']:<62} {r.get('load_by_depth')} | "
                  f"{min(r['widths'], default=0)}-{max(r['widths'], default=0)} B | "
                  f"{r.get('registers')}")
    assert len(rows) == 2 * len({r["mode"] for r in rows}) >= 2 * 12
    for r in rows:
        what = f"{r['target']} {r['mode']}"
        assert "error" not in r, f"{what}: {r.get('error')}"
        assert r["spill_bytes"] == 0 and r["spill_instructions"] == 0, f"{what}: spills"
        assert r["loops"] == 2, f"{what}: {r['loops']} loops (positions, duplicates)"
        assert r["store_by_depth"] == {}, f"{what}: per-element stores {r['store_by_depth']}"
        # The head's row in the positions loop, every further duplicate in the nested loop.
        assert r["load_by_depth"] == {"1": r["loads"], "2": r["loop"]}, (
            f"{what}: {r['load_by_depth']} B/elem, expected one read of each entry "
            f"({r['loads']} B)")
        if r["vector"]:
            widths = sorted(set(r["widths"]))
            assert widths == [16], f"{what}: per-element access widths {widths}"
        assert max(r["per_program_widths"]) <= 8, what


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
