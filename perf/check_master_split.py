"""Do the master-remainder split and join rebuild every float32 master, for all 2^32 patterns?

``master_weight_format="remainder"`` keeps the fp32 master of a bf16 param as the param and
an int16 remainder (``kernels/common.py``: ``split_master_host`` / ``join_master_host``, the
torch twins of the kernels' ``split_master`` / ``join_master``). This script checks, for
every float32 bit pattern ``w`` (or a given subset, see ``check_patterns``):

* round trip: ``join(split(w))`` has the bits of ``w`` for every non-NaN ``w`` (zeros of
  either sign, subnormals, infinities included); a NaN ``w`` gives a NaN master back and a
  NaN param of the same sign;
* rounding: the param is ``w`` rounded to the nearest bf16 with ties away from zero (values
  from half an ulp above bf16's largest finite value on round to inf), computed here
  independently of the bit trick, in float64 arithmetic;
* the difference from round-to-nearest-even (torch's float32 -> bfloat16 conversion, what the
  fp32-master mode writes): only the exact ties whose high half is even may differ, and every
  one of them must (ties away and ties to even pick different neighbours there).

Run it with::

    python perf/check_master_split.py             # all 2^32 patterns, a few minutes
    python perf/check_master_split.py --threads 1 # on a shared machine

It prints a summary and exits 1 on any failure. ``tests/test_master_split.py`` runs the same
``check_patterns`` on a stratified subset in CI, and the Triton twins on a sample of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import torch

from triton_adam.kernels.common import join_master_host, split_master_host

PATTERNS = 1 << 32
_EXAMPLES = 8  # failing patterns kept per kind, for the report


@dataclass
class Counts:
    """What ``check_patterns`` found; ``ok`` when nothing failed. Adding two sums them."""

    patterns: int = 0
    nan: int = 0  # NaN patterns (round trip to a NaN, not to the same bits)
    roundtrip_failures: int = 0  # non-NaN w with join(split(w)) != w bitwise
    nan_failures: int = 0  # NaN w whose param or rebuilt master is not a NaN of w's sign
    rounding_failures: int = 0  # non-NaN w whose param is not round-to-nearest-ties-away
    rne_differences: int = 0  # non-NaN w whose param differs from round-to-nearest-even
    even_ties: int = 0  # non-NaN w exactly halfway between two bf16 with an even high half
    unexpected_rne_differences: int = 0  # differences from RNE that are not such a tie
    examples: dict = field(default_factory=dict)  # kind -> a few failing patterns (uint32)

    @property
    def ok(self) -> bool:
        return (self.roundtrip_failures == self.nan_failures == self.rounding_failures
                == self.unexpected_rne_differences == 0
                and self.rne_differences == self.even_ties)

    def __add__(self, other: "Counts") -> "Counts":
        out = Counts(**{k: getattr(self, k) + getattr(other, k) for k in
                        ("patterns", "nan", "roundtrip_failures", "nan_failures",
                         "rounding_failures", "rne_differences", "even_ties",
                         "unexpected_rne_differences")})
        out.examples = {k: list(v) for k, v in self.examples.items()}
        for kind, values in other.examples.items():
            out.examples[kind] = (out.examples.get(kind, []) + values)[:_EXAMPLES]
        return out


def patterns(start: int, stop: int) -> torch.Tensor:
    """The float32 values with the bit patterns ``start, start + 1, ..., stop - 1`` (unsigned,
    in [0, 2^32]), a range that does not cross 2^31 (the int32 view's sign flip)."""
    if not (0 <= start <= stop <= PATTERNS and (stop <= 1 << 31 or start >= 1 << 31)):
        raise ValueError(f"pattern range [{start:#x}, {stop:#x}) crosses 2^31 or leaves 2^32")
    offset = 1 << 32 if start >= 1 << 31 else 0
    return torch.arange(start - offset, stop - offset, dtype=torch.int32).view(torch.float32)


def from_bits(bits: torch.Tensor) -> torch.Tensor:
    """float32 values with the bit patterns ``bits`` (any integer dtype, values in
    [0, 2^32))."""
    bits = bits.to(torch.int64)
    return torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32).view(
        torch.float32)


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """``2.0 ** k`` in float64 for int64 ``k`` in [-1022, 1023] (a normal float64: its biased
    exponent field; ``torch.ldexp`` computes a power and costs 4x more here)."""
    return ((k + 1023) << 52).view(torch.float64)


def round_nearest_ties_away_bf16(w: torch.Tensor) -> torch.Tensor:
    """float32 ``w`` rounded to the nearest bf16, ties away from zero, by float64 arithmetic
    rather than the split's bit trick (the reference it is checked against); NaN in, NaN out.

    bf16 has 8 significant bits and fp32's exponent range: for a normal ``w`` with biased
    exponent ``e`` (``|w|`` in ``[2^(e-127), 2^(e-126))``) its spacing is ``q = 2^(e-134)``,
    and for subnormals (e = 0) the subnormal spacing 2^-133, that of e = 1. ``|w| / q`` is
    exact (a power-of-two scaling, below 2^8), as are ``+ 0.5``, ``floor`` and the scaling
    back; a result of 2^128 or more (half an ulp or more above the largest finite bf16,
    0x7F7F) is inf, as IEEE round-to-nearest defines overflow. The result is a bf16 value (or
    inf), so the final conversion to bfloat16 is exact whatever its rounding mode.
    """
    e = (w.view(torch.int32) >> 23) & 0xFF
    q_exp = torch.clamp(e, min=1).to(torch.int64) - 134  # in [-133, 121]
    a = w.to(torch.float64).abs()
    r = torch.floor(a * _pow2(-q_exp) + 0.5) * _pow2(q_exp)
    r = torch.where(r >= 2.0 ** 128, float("inf"), r)  # also keeps inf (and NaN) as they are
    return torch.copysign(r, w.to(torch.float64)).to(torch.bfloat16)


def _note(counts: Counts, kind: str, w: torch.Tensor, bad: torch.Tensor) -> int:
    n = int(bad.sum())
    if n:
        kept = counts.examples.setdefault(kind, [])
        found = w.view(torch.int32)[bad][:_EXAMPLES - len(kept)].to(torch.int64) & 0xFFFFFFFF
        kept += found.tolist()
    return n


def check_patterns(w: torch.Tensor) -> Counts:
    """Check the split and join of the float32 masters ``w`` (a 1-D float32 tensor, any bit
    patterns: ``patterns``, ``from_bits``); see the module docstring."""
    bits = w.view(torch.int32)
    param, rem = split_master_host(w)
    back = join_master_host(param, rem)
    nan = torch.isnan(w)
    ok = ~nan
    counts = Counts(patterns=w.numel(), nan=int(nan.sum()))
    counts.roundtrip_failures = _note(counts, "roundtrip", w,
                                      ok & (back.view(torch.int32) != bits))
    param_bits = param.view(torch.int16)
    counts.nan_failures = _note(counts, "nan", w, nan & (
        ~torch.isnan(param.to(torch.float32)) | ~torch.isnan(back)
        | ((param_bits < 0) != (bits < 0))))
    # The references (NaN has no rounding to check: masked off).
    rna = round_nearest_ties_away_bf16(w).view(torch.int16)
    counts.rounding_failures = _note(counts, "rounding", w, ok & (param_bits != rna))
    rne = w.to(torch.bfloat16).view(torch.int16)  # torch's round-to-nearest-even
    differs = ok & (param_bits != rne)
    # An exact tie: the low half is 0x8000, so w is halfway between its truncation (the high
    # half) and the next bf16 up in magnitude; ties to even and ties away part where the high
    # half is even. (An infinite high half has a zero low half: never a tie.)
    even_tie = ok & ((bits & 0x1FFFF) == 0x8000)
    counts.rne_differences = int(differs.sum())
    counts.even_ties = int(even_tie.sum())
    counts.unexpected_rne_differences = _note(counts, "rne", w, differs ^ even_tie)
    return counts


def check_all(chunk_bits: int = 16, progress: bool = True) -> Counts:
    """``check_patterns`` over all 2^32 patterns, ``2^chunk_bits`` at a time."""
    chunk = 1 << chunk_bits
    starts = range(0, PATTERNS, chunk)
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=PATTERNS, unit="pattern", unit_scale=True, smoothing=0)
        except ImportError:  # tqdm is optional: print a line per 1/16 instead
            pass
    total = Counts()
    started = time.perf_counter()
    for i, start in enumerate(starts):
        total = total + check_patterns(patterns(start, start + chunk))
        if bar is not None:
            bar.update(chunk)
        elif progress and (i + 1) % max(1, len(starts) // 16) == 0:
            print(f"  {start + chunk:#011x} patterns, {time.perf_counter() - started:.0f}s",
                  flush=True)
    if bar is not None:
        bar.close()
    return total


def summary(counts: Counts) -> str:
    lines = [
        f"patterns checked:                     {counts.patterns}",
        f"NaN patterns (rebuilt as NaN):        {counts.nan} "
        f"({counts.nan_failures} failures)",
        f"round-trip failures (non-NaN):        {counts.roundtrip_failures}",
        f"params not nearest/ties-away:         {counts.rounding_failures}",
        f"params differing from nearest-even:   {counts.rne_differences} "
        f"(exact ties with an even high half: {counts.even_ties}; "
        f"unexpected: {counts.unexpected_rne_differences})",
    ]
    for kind, values in counts.examples.items():
        lines.append(f"  {kind} failures, e.g.: " + ", ".join(f"{v:#010x}" for v in values))
    lines.append("OK" if counts.ok else "FAILED")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 2^16 patterns at a time keep each step's tensors (under 1 MB) in cache: measured 1.6x
    # faster than 2^20 and 3x faster than 2^22 with one thread.
    parser.add_argument("--chunk-bits", type=int, default=16,
                        help="check 2^N patterns at a time (default 16)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not 10 <= args.chunk_bits <= 31:  # a chunk must not cross 2^31 (patterns())
        parser.error("--chunk-bits must be in [10, 31]")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    counts = check_all(args.chunk_bits, progress=not args.quiet)
    print(summary(counts))
    print(f"({time.perf_counter() - start:.0f}s)")
    return 0 if counts.ok else 1


if __name__ == "__main__":
    sys.exit(main())
