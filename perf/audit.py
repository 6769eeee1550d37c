"""Does every compiled kernel specialization move exactly its floor, with 16-byte accesses and no spills?

Compiles every specialization of ``perf/compile_check.py`` for sm_80 and sm_90 (no GPU
needed), reads the SASS with the ``cuobjdump`` shipped with Triton (``perf/sass.py``) and
prints one row per specialization and target: bytes loaded and stored per element on the
full-block path, the floor of its mode (``perf/floors.py``), their ratio, the narrowest and
widest per-element access there, the scalar per-program traffic (parameter row, pows), the
masked tail's access width, registers per thread and spills. Run it without
``TRITON_INTERPRET=1``::

    python perf/audit.py                              # table; JSON to perf/out/audit.json
    python perf/audit.py --json out.json --plot perf/out/bytes_per_param.png

Exits 1 when a specialization moves more (or, which would mean an access the analysis could
not attribute, fewer) bytes per element than its floor, loses 16-byte access on its
full-block path, spills, or cannot be analysed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import compile_check
from floors import FLOORS
from sass import audit_cubin

VECTOR_BYTES = 16  # LDG.E.128 / STG.E.128
DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "audit.json")


def audit(spec: compile_check.Specialization, target: str, workdir: str) -> dict:
    """One row of the audit: compile ``spec`` for ``target`` and measure its SASS."""
    compiled = compile_check.compile_specialization(spec, compile_check.TARGETS[target])
    cubin = os.path.join(workdir, "kernel.cubin")
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    kernel = compiled.metadata.name
    result = audit_cubin(cubin, kernel)
    threads = spec.num_warps * 32
    elements = [a for a in result.main if a.per_element]
    per_program = [a for a in result.main if not a.per_element]

    def per_element(kind: str) -> float:
        return sum(a.width for a in elements if getattr(a, kind)) * threads \
            / spec.elements_per_program

    floor = FLOORS[spec.floor_mode]
    row = {
        "kernel": kernel,
        "mode": spec.name,
        "target": target,
        "floor_mode": spec.floor_mode,
        "load_bytes_per_element": per_element("load"),
        "store_bytes_per_element": per_element("store"),
        "floor_load": floor.read,
        "floor_store": floor.write,
        "floor": floor.total,
        "per_program_load_bytes": sum(a.width for a in per_program if a.load),
        "per_program_store_bytes": sum(a.width for a in per_program if a.store),
        "narrowest_access": min((a.width for a in elements), default=0),
        "widest_access": max((a.width for a in elements), default=0),
        "tail_narrowest_access": min((a.width for a in result.tail), default=None),
        "registers": result.registers,
        "spill_bytes": result.local_bytes,
        "spill_instructions": result.spill_instructions,
        "problems": list(result.problems),
        # The scalar-only specialization promises no 16-byte access: scalar access is its design.
        "vector_required": spec.vector_access,
        "note": spec.note,
    }
    row["bytes_per_element"] = row["load_bytes_per_element"] + row["store_bytes_per_element"]
    row["ratio"] = row["bytes_per_element"] / floor.total
    row["violations"] = violations(row)
    return row


def violations(row: dict) -> list[str]:
    """Why a row fails the audit (empty when it passes)."""
    out = list(row["problems"])
    for kind, floor in (("load", row["floor_load"]), ("store", row["floor_store"])):
        got = row[f"{kind}_bytes_per_element"]
        if got > floor:
            out.append(f"{kind}s {got:g} B/element, above the floor of {floor}")
        elif got < floor:
            out.append(f"{kind}s {got:g} B/element, below the floor of {floor}: an access "
                       "was not attributed")
    if row.get("vector_required", True) and row["narrowest_access"] < VECTOR_BYTES:
        out.append(f"full-block path has {row['narrowest_access']}-byte accesses "
                   f"(not all {VECTOR_BYTES}-byte vectors)")
    if row["spill_bytes"] or row["spill_instructions"]:
        out.append(f"spills: {row['spill_bytes']} B local/stack, "
                   f"{row['spill_instructions']} LDL/STL")
    return out


COLUMNS = [  # (header, row -> cell)
    ("kernel", lambda r: r["kernel"]),
    ("mode", lambda r: r["mode"].removeprefix("adam ")),
    ("target", lambda r: r["target"]),
    ("load B/elem", lambda r: f"{r['load_bytes_per_element']:g}"),
    ("store B/elem", lambda r: f"{r['store_bytes_per_element']:g}"),
    ("floor", lambda r: f"{r['floor_load']}+{r['floor_store']}={r['floor']}"),
    ("ratio", lambda r: f"{r['ratio']:.2f}"),
    ("per-program B ld/st", lambda r: f"{r['per_program_load_bytes']}/"
                                      f"{r['per_program_store_bytes']}"),
    ("access B (min-max)", lambda r: f"{r['narrowest_access']}-{r['widest_access']}"),
    ("tail B", lambda r: str(r["tail_narrowest_access"])),
    ("regs", lambda r: str(r["registers"])),
    ("spill B", lambda r: f"{r['spill_bytes']}" + (f" ({r['spill_instructions']} LDL/STL)"
                                                   if r["spill_instructions"] else "")),
    ("ok", lambda r: "ok" if not r["violations"] else "FAIL"),
]


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table, one per specialization and target."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(r) for _, cell in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """One Markdown row per kernel and floor mode (what docs/performance.md shows): every distinct
    bytes-per-element pair and access width among its variants, max registers, spills."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["kernel"], r["floor_mode"], r.get("note", ""))
        groups.setdefault(key, []).append(r)
    lines = ["| kernel | floor mode | variants x targets | load+store B/elem | floor | "
             "access B, full blocks | regs (max) | spill B | ok |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (kernel, mode, note), rs in groups.items():
        moved = ", ".join(f"{ld:g}+{st:g}" for ld, st in sorted(
            {(x["load_bytes_per_element"], x["store_bytes_per_element"]) for x in rs}))
        widths = ", ".join(f"{a}-{b}" for a, b in sorted(
            {(x["narrowest_access"], x["widest_access"]) for x in rs}))
        f = rs[0]
        lines.append(f"| {kernel} | {mode}{f' ({note})' if note else ''} | "
                     f"{len(rs)} | {moved} | {f['floor_load']}+{f['floor_store']}="
                     f"{f['floor']} | {widths} | {max(x['registers'] for x in rs)} | "
                     f"{sum(x['spill_bytes'] for x in rs)} | "
                     f"{sum(not x['violations'] for x in rs)}/{len(rs)} |")
    return "\n".join(lines)


def worst_bytes_per_mode(rows: list[dict]) -> dict[str, float]:
    """floor mode -> the most bytes per element any of its specializations moves."""
    worst: dict[str, float] = {}
    for r in rows:
        worst[r["floor_mode"]] = max(worst.get(r["floor_mode"], 0.0), r["bytes_per_element"])
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"default: {DEFAULT_JSON}")
    parser.add_argument("--target", choices=sorted(compile_check.TARGETS), action="append",
                        help="audit for this target only (repeatable; default: all)")
    parser.add_argument("--plot", metavar="PNG", help="also draw bytes per parameter per mode")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for spec in compile_check.specializations():
            for target in args.target or sorted(compile_check.TARGETS):
                rows.append(audit(spec, target, workdir))
    print(table(rows))
    print()
    print(summary(rows))
    failed = [r for r in rows if r["violations"]]
    for r in failed:
        print(f"FAIL {r['target']} {r['mode']}: " + "; ".join(r["violations"]))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"rows": rows, "failed": len(failed)}, f, indent=1)
    if args.plot:
        import plot

        plot.bytes_per_param(worst_bytes_per_mode(rows), args.plot)
    print(f"{len(rows)} audited, {len(failed)} failed ({time.perf_counter() - start:.0f}s); "
          f"JSON: {args.json}" + (f"; plot: {args.plot}" if args.plot else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
