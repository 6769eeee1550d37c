"""The clipping kernels compile for sm_80 and sm_90 (no GPU needed), and their SASS moves the
floor: one read of every gradient element, with 16-byte loads on full blocks.

The compiler runs in a subprocess (this test session interprets kernels, and interpreted
``@triton.jit`` functions cannot be compiled): the subprocess is this file run as a script,
which compiles every specialization, reads the SASS with ``perf/sass.py`` (``cuobjdump``
ships with Triton) and prints one JSON line per specialization and target::

    python tests/test_compile_norm.py          # without TRITON_INTERPRET=1

Bytes per gradient element on the full-block path:

* one block per chunk (the Adam chunk table): the kernel is straight-line code, so
  ``perf/sass.py``'s path analysis applies: the per-element loads of the unmasked path, times
  the threads of a program, over the elements of a program;
* several blocks per chunk (``NORM_CHUNK_SIZE``): ptxas unrolls the block loop, which the path
  analysis does not follow; the loop bodies are read directly instead: every load in a loop
  is a gradient load of a full block, so its bytes per element are the loaded bytes over the
  distinct bytes the loop's addresses cover (1.0x means each element is loaded once).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

SIZE = {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}


def _specializations():
    """(kernel name, mode, signature, constexprs, pointer args, facts) of every variant."""
    import torch

    from triton_adam.kernels import norm as N

    ty = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
          torch.float64: "fp64"}
    specs = []
    pointers = ("tensor_table_ptr", "chunk_table_ptr", "partials_ptr")
    variants = [(g, torch.float32, True) for g in (torch.float16, torch.bfloat16, torch.float32)]
    variants += [(torch.float64, torch.float64, True), (torch.float32, torch.float64, True),
                 (torch.float32, torch.float32, False), (torch.float64, torch.float64, False)]
    for chunk_size in sorted({N.CHUNK_SIZE, N.NORM_CHUNK_SIZE}):
        for grad, acc, aligned in variants:
            if chunk_size != N.CHUNK_SIZE and (grad, acc) not in (
                    (torch.float32, torch.float32), (torch.float64, torch.float64),
                    (torch.bfloat16, torch.float32)):
                continue  # the loop variant: one per load width is enough
            constexprs = N.sum_squares_constexprs(grad_dtype=grad, acc_dtype=acc,
                                                  aligned=aligned, chunk_size=chunk_size)
            signature = {"tensor_table_ptr": "*i64", "chunk_table_ptr": "*i32",
                         "partials_ptr": f"*{ty[acc]}", **{k: "constexpr" for k in constexprs}}
            mode = (f"sum-squares grad:{ty[grad]} acc:{ty[acc]} chunk:{chunk_size}"
                    + ("" if aligned else " unaligned"))
            specs.append(("_sum_squares_kernel", N._sum_squares_kernel, mode, signature,
                          constexprs, pointers,
                          dict(grad=ty[grad], aligned=aligned,
                               blocks_per_chunk=constexprs["BLOCKS_PER_CHUNK"],
                               block=constexprs["BLOCK"])))
    # Every phase: the one-launch finalize and the two halves of a distributed norm.
    phases = {N.PHASE_ALL: "", N.PHASE_SUMS: " sums", N.PHASE_SCALES: " scales"}
    for acc in (torch.float32, torch.float64):
        for phase, suffix in phases.items():
            constexprs = N.finalize_constexprs(acc_dtype=acc, phase=phase)
            signature = {"partials_ptr": f"*{ty[acc]}", "segments_ptr": "*i64",
                         "outputs_ptr": "*i64", "clip_norms_ptr": "*fp64",
                         "norms_ptr": f"*{ty[acc]}", "scales_ptr": f"*{ty[acc]}",
                         **{k: "constexpr" for k in constexprs}}
            specs.append(("_clip_finalize_kernel", N._clip_finalize_kernel,
                          f"finalize acc:{ty[acc]}{suffix}", signature, constexprs,
                          ("partials_ptr", "segments_ptr", "outputs_ptr", "clip_norms_ptr",
                           "norms_ptr", "scales_ptr"), dict(finalize=True, phase=phase)))
    return specs


# "/*0440*/  @!P0 LDG.E.128 R4, desc[UR14][R26.64+0x800] ;": address, guard, opcode, base, offset
_LDG = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\d\s+)?(LDG[.\w]*)\s+[^;]*?"
                  r"\[(R\d+)\.64(?:\+(0x[0-9a-f]+))?\]")
# "/*0730*/  @!P0 BRA 0x430 ;": address, target
_BRA_BACK = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\d\s+)?BRA\s+(?:!?U?P\d,\s*)?"
                       r"(0x[0-9a-f]+)")


def _loop_loads(sass: str) -> list[dict]:
    """The global loads inside each loop (a backward branch's target up to the branch)."""
    lines = sass.splitlines()
    loops = []
    for line in lines:
        m = _BRA_BACK.search(line)
        if m and int(m[2], 16) < int(m[1], 16):
            start, end = int(m[2], 16), int(m[1], 16)
            loads = []
            for other in lines:
                ld = _LDG.search(other)
                if ld and start <= int(ld[1], 16) <= end:
                    width = {"128": 16, "64": 8, "U16": 2, "U8": 1}.get(ld[3].split(".")[-1], 4)
                    loads.append(dict(opcode=ld[3], predicated=bool(ld[2]), base=ld[4],
                                      offset=int(ld[5] or "0", 16), width=width))
            loops.append(dict(start=start, end=end, loads=loads))
    return loops


def _audit(spec, target_name: str, workdir: str) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from sass import audit_cubin, resource_usage, run_tool  # noqa: E402 (perf/ is not a package)

    from triton_adam.kernels.adam import FP_FUSION, NUM_WARPS

    function, kernel, mode, signature, constexprs, pointers, facts = spec
    names = kernel.arg_names
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in pointers}
    target = GPUTarget("cuda", int(target_name[3:]), 32)
    row = dict(mode=mode, target=target_name, **facts)
    try:
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs,
                                            attrs=attrs),
                                  target=target, options={"num_warps": NUM_WARPS,
                                                           "enable_fp_fusion": FP_FUSION})
    except Exception as exc:  # reported, then failed by the test
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return row
    cubin = os.path.join(workdir, re.sub(r"\W+", "_", f"{mode}-{target_name}") + ".cubin")
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    threads = NUM_WARPS * 32
    if facts.get("blocks_per_chunk", 1) > 1:
        # The unrolled block loop: read the loop bodies (cuobjdump takes ~0.5 s a call, so
        # each tool runs once per cubin).
        sass = run_tool("cuobjdump", "-sass", cubin)
        usage = resource_usage(run_tool("cuobjdump", "-res-usage", cubin),
                               compiled.metadata.name)
        row.update(registers=usage.get("REG", 0),
                   local_bytes=usage.get("LOCAL", 0) + usage.get("STACK", 0),
                   spills=len(re.findall(r"\b(?:LDL|STL)\b", sass)))
        loops = [loop for loop in _loop_loads(sass) if loop["loads"]]
        main = loops[0]["loads"] if loops else []
        distinct = {(ld["base"], ld["offset"]) for ld in main}
        loaded = sum(ld["width"] for ld in main) * threads
        covered = len(distinct) * (main[0]["width"] if main else 0) * threads
        row.update(
            problems=[] if loops else ["no loop with loads found"],
            main_loads=[ld["opcode"] for ld in main],
            blocks_per_iteration=loaded / (facts["block"] * SIZE[facts["grad"]]) if main else 0,
            load_bytes_per_element=SIZE[facts["grad"]] * loaded / covered if covered else 0.0,
            loop_loads_predicated=any(ld["predicated"] for ld in main),
            other_loops=[[ld["opcode"] for ld in loop["loads"]] for loop in loops[1:]],
        )
        return row
    result = audit_cubin(cubin, compiled.metadata.name)
    row.update(registers=result.registers, local_bytes=result.local_bytes,
               spills=result.spill_instructions)
    if facts.get("finalize"):
        ptx = compiled.asm["ptx"]
        # PHASE_SUMS stops before the root and the division: it only must not approximate.
        needed = () if facts.get("phase") == 1 else ("sqrt.rn", "div.rn")
        row["ptx_rn"] = (all(op in ptx for op in needed)
                         and not any(op in ptx for op in ("sqrt.approx", "div.full", "div.approx")))
        return row
    elements = [a for a in result.main if a.per_element and a.load]
    row.update(
        problems=result.problems,
        main_loads=[a.opcode for a in elements],
        load_bytes_per_element=sum(a.width for a in elements) * threads / facts["block"],
        tail_loads=sorted({a.opcode for a in result.tail}),
    )
    return row


def _audit_job(args):
    index, target_name, workdir = args
    return _audit(_specializations()[index], target_name, workdir)


def main() -> int:
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("tests/test_compile_norm.py compiles kernels: run it without TRITON_INTERPRET=1")
    jobs = []
    with tempfile.TemporaryDirectory() as workdir:
        for index in range(len(_specializations())):
            for target_name in ("sm_80", "sm_90"):
                jobs.append((index, target_name, workdir))
        with ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            for row in pool.map(_audit_job, jobs):
                print(json.dumps(row), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------

def test_norm_kernels_compile_and_read_each_gradient_once():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "perf"),
                                                      env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve())], env=env,
                            capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2 * len(_specializations()) >= 2 * 9
    assert {r["target"] for r in rows} == {"sm_80", "sm_90"}
    for row in rows:
        print(row)
        assert "error" not in row, row
        assert row["spills"] == 0 and row["local_bytes"] == 0, row
        if "finalize" in row:
            assert row["ptx_rn"], row  # IEEE sqrt and division, not the approximate ones
            continue
        assert not row["problems"], row
        # Each gradient element is loaded exactly once on the full-block path: the floor.
        assert row["load_bytes_per_element"] == SIZE[row["grad"]], row
        if row["aligned"]:
            assert row["main_loads"] and all(op.endswith(".128") for op in row["main_loads"]), row
        if row["blocks_per_chunk"] > 1:
            assert not row["loop_loads_predicated"], row


if __name__ == "__main__":
    sys.exit(main())
