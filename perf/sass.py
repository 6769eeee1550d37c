"""Which global memory accesses does a compiled kernel make per element and which per program?

Reads the SASS that ``cuobjdump -sass`` prints for a cubin (the tools ship with Triton, under
``triton/backends/nvidia/bin/``) and answers, without running anything:

* which accesses are **per element**: their address depends on the thread index
  (``SR_TID``), found by a forward taint analysis over the control-flow graph; the others
  (a parameter row, the beta pows, a pointer table entry) have one address per program and
  are **per program**;
* which accesses lie on the **main path**: the path a program takes for a full block, on
  which no per-element access is masked (neither predicated on a thread-dependent predicate
  nor behind a thread-dependent branch). The masked tail block is the rest;
* resource usage: registers per thread, local/stack bytes, spill instructions.

Only uniform branches (whose predicate is the same for every thread of the program: the
full-block test, ``pid == 0``) split a program's path; thread-dependent branches (fp64 slow
paths of division and square root, masked tail stores) are followed both ways. Subroutines
(``CALL.REL``) are summarised: the registers they write are thread-dependent when a register
they read is. A kernel with a loop, an indirect branch or a memory access inside a
subroutine is reported as not analysable rather than guessed at.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field

import triton

BIN_DIR = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")

# Special registers that differ between the threads of a program; everything else it can
# read (SR_CTAID, SR_NCTAID, constants, parameters) is the same for all of them.
_UNIFORM_SPECIALS = ("SR_CTAID", "SR_NCTAID", "SR_NTID", "SR_GRIDID", "SR_CgaCtaId",
                     "SR_SWINHI", "SR_SWINLO")

# Global memory opcodes: (loads?, stores?). Atomics and reductions read and write.
_GLOBAL_ACCESS = {"LDG": (True, False), "STG": (False, True), "LD": (True, False),
                  "ST": (False, True), "ATOMG": (True, True), "ATOM": (True, True),
                  "RED": (True, True), "REDG": (True, True), "LDGSTS": (True, False)}
_SPILL_OPCODES = ("LDL", "STL")
# Opcodes whose first operand is read, not written.
_NO_DEST = {"STG", "ST", "STS", "STL", "RED", "REDG", "BRA", "BRX", "JMP", "JMX", "EXIT",
            "RET", "CALL", "BSSY", "BSYNC", "BAR", "NOP", "WARPSYNC", "MEMBAR", "DEPBAR",
            "ERRBAR", "CCTL", "YIELD", "BREAK", "BPT", "KILL", "LDGDEPBAR", "WARPGROUP",
            "FENCE", "CGAERRBAR", "ACQBULK", "UCGABAR_ARV", "UCGABAR_WAIT"}
_WIDTH_BYTES = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}

_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_REGISTER = re.compile(r"\b(U?R)(\d+)(\.64)?\b|\b(U?P)([0-6])\b|\b(SR_\w+)")
_BRACKET = re.compile(r"(desc)?\[([^\]]*)\]")


@dataclass(frozen=True)
class Instruction:
    address: int
    guard: str | None  # the predicate of "@P0"/"@!P0", without "!"
    opcode: str  # with modifiers, e.g. "LDG.E.128"
    operands: tuple[str, ...]

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def modifiers(self) -> tuple[str, ...]:
        return tuple(self.opcode.split(".")[1:])


@dataclass(frozen=True)
class Access:
    """One global load or store instruction, as one thread executes it."""

    address: int
    opcode: str
    width: int  # bytes per thread
    load: bool
    store: bool
    per_element: bool  # its address depends on the thread index
    masked: bool  # thread-dependent predicate, or behind a thread-dependent branch


@dataclass
class KernelSass:
    """What the audit needs from one kernel's SASS."""

    main: list[Access]  # accesses of the full-block path (per element and per program)
    tail: list[Access]  # per-element accesses off the main path (the masked tail)
    spill_instructions: int  # LDL / STL anywhere in the kernel
    registers: int = 0
    local_bytes: int = 0  # LOCAL + STACK of `cuobjdump -res-usage`
    problems: list[str] = field(default_factory=list)  # why the analysis could not finish


def run_tool(tool: str, *args: str) -> str:
    """Run one of the CUDA binary tools shipped with Triton and return its stdout."""
    return subprocess.run([os.path.join(BIN_DIR, tool), *args], check=True,
                          capture_output=True, text=True).stdout


def parse(sass: str, function: str) -> list[Instruction]:
    """The instructions of ``function`` in ``cuobjdump -sass`` output."""
    sections = re.split(r"\n\s*Function : ", sass)
    body = next((s for s in sections[1:] if s.split()[0] == function), None)
    if body is None:
        raise ValueError(f"function {function} not in the SASS")
    out = []
    for address, text in _INSTRUCTION.findall(body):
        guard = None
        if text.startswith("@"):
            pred, text = text.split(None, 1)
            guard = pred.lstrip("@!")
        opcode, _, rest = text.partition(" ")
        operands = tuple(o.strip() for o in rest.split(",")) if rest.strip() else ()
        out.append(Instruction(int(address, 16), guard, opcode, operands))
    return out


def _names(operand: str, pair: bool = False) -> set[str]:
    """Register, predicate and special-register names an operand reads (pairs as two)."""
    names = set()
    for kind, num, wide, pkind, pnum, special in _REGISTER.findall(operand):
        if special:
            names.add(special)
        elif pkind:
            names.add(f"{pkind}{pnum}")
        else:
            count = 2 if (wide or pair) else 1
            names.update(f"{kind}{int(num) + i}" for i in range(count))
    return names


def _dest_width(ins: Instruction) -> int:
    """How many consecutive registers the first (destination) operand covers."""
    mods = ins.modifiers
    if "128" in mods:
        return 4
    if ins.base in ("F2F", "I2F", "F2I", "FRND") and mods:
        return 2 if mods[0] in ("F64", "S64", "U64") else 1
    if "64" in mods or "WIDE" in mods or ins.base == "CS2R" or (
            ins.base.startswith("D") and ins.base != "DEPBAR" and not ins.base.endswith("SETP")):
        return 2
    return 1


def _is_64bit_arith(ins: Instruction) -> bool:
    return ins.base.startswith("D") or "F64" in ins.modifiers


def _dests(ins: Instruction) -> set[str]:
    """Registers and predicates the instruction writes."""
    if ins.base in _NO_DEST or not ins.operands:
        return set()
    first = ins.operands[0]
    match = re.fullmatch(r"(U?R)(\d+)", first)
    dests = ({f"{match[1]}{int(match[2]) + i}" for i in range(_dest_width(ins))} if match
             else _names(first))
    for operand in ins.operands[1:]:  # carry-out / second predicate results follow the first
        if not re.fullmatch(r"!?U?P[0-6T]", operand):
            break
        dests |= _names(operand)
    return {d for d in dests if not d.endswith(("RZ", "PT"))}


def _sources(ins: Instruction) -> set[str]:
    """Registers, predicates and special registers the instruction reads (guard included)."""
    operands = ins.operands if ins.base in _NO_DEST else ins.operands[1:]
    names = set()
    for operand in operands:
        names |= _names(operand, pair=_is_64bit_arith(ins))
    if ins.guard:
        names |= _names(ins.guard)
    return names


def _address_names(ins: Instruction) -> set[str]:
    """What the address of a memory instruction is computed from (not its descriptor)."""
    names = set()
    for operand in ins.operands:
        for desc, inside in _BRACKET.findall(operand):
            if not desc:
                names |= _names(inside)
    return names


def _tainted(names: set[str], taint: set[str]) -> bool:
    return any(n in taint or (n.startswith("SR_") and not n.startswith(_UNIFORM_SPECIALS))
               for n in names)


def _target(ins: Instruction) -> int:
    return int(ins.operands[-1].split()[-1], 16)


@dataclass
class _Graph:
    """Basic blocks of the kernel body (subroutines apart) and their successors."""

    blocks: dict[int, list[Instruction]]  # start address -> instructions
    succs: dict[int, list[int]]  # start address -> successor starts; -1 is the kernel's exit
    subroutines: dict[int, list[Instruction]]  # CALL target -> instructions up to RET


def _graph(code: list[Instruction]) -> _Graph:
    index = {ins.address: i for i, ins in enumerate(code)}
    calls = {_target(ins) for ins in code if ins.base == "CALL"}
    leaders = {code[0].address} | calls
    for i, ins in enumerate(code):
        if ins.base in ("BRA", "EXIT", "RET", "BRX", "JMP", "JMX"):
            if ins.base == "BRA":
                leaders.add(_target(ins))
            if i + 1 < len(code):
                leaders.add(code[i + 1].address)
    starts = sorted(leaders)
    blocks = {}
    for s, e in zip(starts, starts[1:] + [code[-1].address + 1]):
        blocks[s] = [ins for ins in code[index[s]:] if ins.address < e]
    succs: dict[int, list[int]] = {}
    for start, body in blocks.items():
        last = body[-1]
        after = [a for a in starts if a > last.address][:1]
        conditional = last.guard is not None or len(last.operands) > 1
        if last.base == "BRA":
            succs[start] = [_target(last)] + (after if conditional else [])
        elif last.base == "EXIT":
            succs[start] = [-1] + (after if last.guard else [])
        elif last.base == "RET":
            succs[start] = []
        elif last.base in ("BRX", "JMP", "JMX"):
            raise _Unanalysable(f"indirect branch {last.opcode} at {last.address:#x}")
        else:
            succs[start] = after
    subroutines = {}
    for entry in calls:
        body = []
        for ins in code[index[entry]:]:
            body.append(ins)
            if ins.base == "RET":
                break
        subroutines[entry] = body
    return _Graph(blocks, succs, subroutines)


class _Unanalysable(Exception):
    pass


def _reachable(graph: _Graph) -> list[int]:
    """Blocks reachable from the entry, in topological order; raises on a loop."""
    order: list[int] = []
    state: dict[int, int] = {}  # 1 = on the DFS stack, 2 = done

    def visit(block: int) -> None:
        if state.get(block) == 2:
            return
        if state.get(block) == 1:
            raise _Unanalysable(f"loop through the block at {block:#x}")
        state[block] = 1
        for succ in graph.succs[block]:
            if succ != -1:
                visit(succ)
        state[block] = 2
        order.append(block)

    visit(min(graph.blocks))
    return order[::-1]


def _subroutine_summary(body: list[Instruction]) -> tuple[set[str], set[str]]:
    """(registers read, registers written) anywhere in a subroutine."""
    reads, writes = set(), set()
    for ins in body:
        if ins.base in _GLOBAL_ACCESS or ins.base in _SPILL_OPCODES:
            raise _Unanalysable(f"memory access {ins.opcode} inside a subroutine")
        reads |= _sources(ins) | (_names(ins.operands[0]) if ins.base in _NO_DEST
                                  and ins.operands else set())
        writes |= _dests(ins)
    return reads, writes


def _taint(graph: _Graph, order: list[int]) -> tuple[dict[int, bool], dict[int, bool]]:
    """Forward taint analysis from the thread index over the (acyclic) block graph.

    Returns, by instruction address, whether each global access's address is thread-dependent
    and whether each instruction's guard/branch condition is.
    """
    summaries = {entry: _subroutine_summary(body) for entry, body in graph.subroutines.items()}
    preds: dict[int, list[int]] = {b: [] for b in order}
    for b in order:
        for s in graph.succs[b]:
            if s != -1:
                preds[s].append(b)
    out: dict[int, set[str]] = {}
    per_element: dict[int, bool] = {}
    divergent: dict[int, bool] = {}
    for b in order:
        taint = set().union(*(out[p] for p in preds[b])) if preds[b] else set()
        for ins in graph.blocks[b]:
            condition = _names(ins.guard) if ins.guard else set()
            if ins.base == "BRA":
                for operand in ins.operands[:-1]:
                    condition |= _names(operand)
            divergent[ins.address] = _tainted(condition, taint)
            if ins.base in _GLOBAL_ACCESS:
                per_element[ins.address] = _tainted(_address_names(ins), taint)
            if ins.base == "CALL":
                reads, writes = summaries[_target(ins)]
                dests, hot = writes, _tainted(reads, taint)
            else:
                dests = _dests(ins)
                # A load's value varies by thread only if its address does. The guard is left
                # out: the compiler writes a uniform value under a thread-dependent guard
                # (``@!P0 LDC.64 R4, c[..]``, P0 = tid != 0) for a use under the same guard.
                # Were a per-element address ever built that way, it would count as
                # per-program and the audit would report bytes below the floor.
                sources = (_address_names(ins) if ins.base in _GLOBAL_ACCESS
                           else _sources(ins) - _names(ins.guard or ""))
                hot = _tainted(sources, taint)
            if hot:
                taint |= dests
            else:
                taint -= dests
        out[b] = taint
    return per_element, divergent


def _regions(graph: _Graph, divergent: dict[int, bool]) -> list[set[int]]:
    """The block sets of each program-level path: one choice per uniform branch."""
    def walk(decisions: dict[int, int]) -> tuple[set[int], int | None]:
        seen, stack = set(), [min(graph.blocks)]
        while stack:
            b = stack.pop()
            if b in seen or b == -1:
                continue
            seen.add(b)
            last = graph.blocks[b][-1]
            succs = graph.succs[b]
            if len(succs) == 2 and not divergent[last.address]:
                if b not in decisions:
                    return seen, b
                succs = [succs[decisions[b]]]
            stack.extend(succs)
        return seen, None

    regions, pending = [], [{}]
    while pending:
        decisions = pending.pop()
        seen, undecided = walk(decisions)
        if undecided is None:
            regions.append(seen)
        else:
            pending += [{**decisions, undecided: 0}, {**decisions, undecided: 1}]
    return regions


def _unconditional(graph: _Graph, region: set[int], order: list[int]) -> set[int]:
    """Blocks of a region that every path of the region from entry to exit goes through."""
    topo = [b for b in order if b in region]
    into = {b: 0 for b in topo}
    into[topo[0]] = 1
    for b in topo:
        for s in graph.succs[b]:
            if s in region:
                into[s] += into[b]
    onward: dict[int, int] = {}
    for b in reversed(topo):
        onward[b] = sum(1 if s == -1 else onward.get(s, 0) for s in graph.succs[b]
                        if s == -1 or s in region)
    total = onward[topo[0]]
    return {b for b in topo if into[b] * onward[b] == total}


def _access(ins: Instruction, per_element: bool, masked: bool) -> Access:
    load, store = _GLOBAL_ACCESS[ins.base]
    width = next((_WIDTH_BYTES[m] for m in ins.modifiers if m in _WIDTH_BYTES), 4)
    return Access(ins.address, ins.opcode, width, load, store, per_element, masked)


def analyse(sass: str, function: str) -> KernelSass:
    """Classify the global accesses of ``function`` (see the module docstring)."""
    code = parse(sass, function)
    spills = sum(ins.base in _SPILL_OPCODES for ins in code)
    try:
        graph = _graph(code)
        order = _reachable(graph)
        per_element, divergent = _taint(graph, order)
        main: dict[int, Access] = {}
        main_element_sets, tail = [], {}
        for region in _regions(graph, divergent):
            always = _unconditional(graph, region, order)
            accesses = [
                _access(ins, per_element[ins.address],
                        divergent[ins.address] or b not in always)
                for b in sorted(region) for ins in graph.blocks[b] if ins.base in _GLOBAL_ACCESS]
            elements = [a for a in accesses if a.per_element]
            if elements and not any(a.masked for a in elements):
                main_element_sets.append(frozenset(a.address for a in elements))
                main.update((a.address, a) for a in accesses)
            else:
                tail.update((a.address, a) for a in elements)
        problems = []
        if not main_element_sets:
            problems.append("no path with unmasked per-element accesses (no full-block path)")
        elif len(set(main_element_sets)) > 1:
            problems.append("full-block paths differ in their per-element accesses")
        tail = {k: v for k, v in tail.items() if k not in main}
        return KernelSass(sorted(main.values(), key=lambda a: a.address),
                          sorted(tail.values(), key=lambda a: a.address), spills,
                          problems=problems)
    except _Unanalysable as exc:
        return KernelSass([], [], spills, problems=[f"not analysable: {exc}"])


def resource_usage(res_usage: str, function: str) -> dict[str, int]:
    """``REG``, ``LOCAL``, ``STACK``... of ``function`` in ``cuobjdump -res-usage`` output."""
    match = re.search(rf"Function {re.escape(function)}:\s*\n\s*(.*)", res_usage)
    if match is None:
        raise ValueError(f"function {function} not in the resource usage")
    return {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", match[1])}


def audit_cubin(cubin_path: str, function: str) -> KernelSass:
    """Disassemble a cubin and analyse ``function`` in it, with its resource usage."""
    result = analyse(run_tool("cuobjdump", "-sass", cubin_path), function)
    usage = resource_usage(run_tool("cuobjdump", "-res-usage", cubin_path), function)
    result.registers = usage.get("REG", 0)
    result.local_bytes = usage.get("LOCAL", 0) + usage.get("STACK", 0)
    return result
