"""The master-remainder split, checked on a stratified subset of the 2^32 float32 patterns.

``perf/check_master_split.py`` checks all 2^32 patterns (minutes); this is its CI-sized run of
the same ``check_patterns``: every high half with the low halves where rounding and the
remainder's sign change (and random ones), and every low half with the high halves where
the exponent or the sign carry is special (zeros, subnormals, the largest finite value, inf,
NaN) and random ones. Then the kernels' Triton ``split_master`` / ``join_master`` (run here
under the interpreter) against the host twins, bit for bit, on a sample of those patterns.
"""

import torch
import triton
import triton.language as tl

import check_master_split as cms
from triton_adam.kernels.common import (
    join_master,
    join_master_host,
    split_master,
    split_master_host,
)

# Low halves where the split changes behaviour: exact (0), the smallest and largest remainders
# that round down (1, 0x7FFF), the tie (0x8000), the first and last that round up.
SPECIAL_LOWS = (0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF)
# High halves: +-0, subnormals (smallest, largest), the smallest normal, 1.0 and its odd
# neighbour, the largest finite (odd: a tie above it rounds to inf), its even predecessor,
# +-inf (with a nonzero low half: a NaN), the quiet NaN, and the all-ones NaN highs where the
# carry would wrap to -0.0 / +0.0.
SPECIAL_HIGHS = (0x0000, 0x8000, 0x0001, 0x007F, 0x8001, 0x807F, 0x0080, 0x3F80, 0x3F81,
                 0x7F7F, 0x7F7E, 0xFF7F, 0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7FFF, 0xFFFF)
RANDOM_PER_STRATUM = 8


def _combine(highs: torch.Tensor, lows: torch.Tensor) -> torch.Tensor:
    """Every (high, low) pair as a pattern ``high << 16 | low``, int64."""
    return ((highs[:, None] << 16) | lows[None, :]).reshape(-1)


def _random_halves(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1 << 16, (n,), generator=torch.Generator().manual_seed(seed))


ALL_HALVES = torch.arange(1 << 16, dtype=torch.int64)


def test_every_high_half_with_special_and_random_low_halves():
    fixed = cms.check_patterns(cms.from_bits(_combine(ALL_HALVES, torch.tensor(SPECIAL_LOWS))))
    assert fixed.ok, cms.summary(fixed)
    # Exactly the ties (low 0x8000) with an even, non-NaN high half differ from RNE: 32768
    # even highs, less the 128 whose exponent is all ones (with a nonzero low half, a NaN).
    assert fixed.rne_differences == fixed.even_ties == 32768 - 128, cms.summary(fixed)
    # NaN patterns: the 256 all-ones-exponent highs with each nonzero low half (5), and with
    # low half 0 the 254 of them with a nonzero mantissa (not +-inf).
    assert fixed.nan == 256 * 5 + 254
    randoms = cms.check_patterns(cms.from_bits(_combine(ALL_HALVES,
                                                        _random_halves(RANDOM_PER_STRATUM, 1))))
    assert randoms.ok and randoms.patterns == RANDOM_PER_STRATUM << 16, cms.summary(randoms)


def test_every_low_half_with_special_and_random_high_halves():
    highs = torch.cat([torch.tensor(SPECIAL_HIGHS), _random_halves(RANDOM_PER_STRATUM, 2)])
    counts = cms.check_patterns(cms.from_bits(_combine(highs, ALL_HALVES)))
    assert counts.ok, cms.summary(counts)
    assert counts.patterns == len(highs) << 16
    # The NaN highs (0x7FC0, 0xFFC0, 0x7FFF, 0xFFFF) are NaN with every low half, the inf
    # highs with all but low half 0: the NaN handling ran on every low half.
    assert counts.nan >= 4 * (1 << 16) + 2 * ((1 << 16) - 1)


def test_the_check_catches_a_wrong_split(monkeypatch):
    """Negative controls: a split that rounds the param to nearest even (the remainder then
    cannot rebuild the ties it rounds down), and one that lets a NaN's carry wrap to a zero,
    are reported, with the failing patterns."""
    def nearest_even(master):
        param = master.to(torch.bfloat16)
        return param, master.view(torch.int32).to(torch.int16)  # the low half, signed

    w = cms.from_bits(_combine(ALL_HALVES, torch.tensor(SPECIAL_LOWS)))
    monkeypatch.setattr(cms, "split_master_host", nearest_even)
    counts = cms.check_patterns(w)
    assert not counts.ok
    assert counts.roundtrip_failures == counts.rounding_failures == 32768 - 128
    assert all((v & 0xFFFF) == 0x8000 and ((v >> 16) & 1) == 0
               for v in counts.examples["roundtrip"])
    assert "FAILED" in cms.summary(counts)

    def carry_into_nan(master):
        bits = master.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        param = ((bits >> 16) + ((bits & 0xFFFF) >= 0x8000).to(torch.int64)) & 0xFFFF
        param = torch.where(param >= 0x8000, param - 0x10000, param)  # no NaN case
        return param.to(torch.int16).view(torch.bfloat16), master.view(torch.int32).to(
            torch.int16)

    monkeypatch.setattr(cms, "split_master_host", carry_into_nan)
    counts = cms.check_patterns(cms.from_bits(torch.tensor([0x7FFFFFFF, 0xFFFFFFFF,
                                                            0x3F808000])))
    assert counts.nan_failures == 2 and counts.examples["nan"] == [0x7FFFFFFF, 0xFFFFFFFF]
    assert counts.roundtrip_failures == counts.rounding_failures == 0


@triton.jit
def _split_join_kernel(w_ptr, host_param_ptr, host_rem_ptr, param_ptr, rem_ptr, back_ptr, n,
                       BLOCK: tl.constexpr):
    # The kernels' split of w, and their join of the host's split (each checked on its own).
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    param, rem = split_master(tl.load(w_ptr + offs, mask=mask))
    tl.store(param_ptr + offs, param, mask=mask)
    tl.store(rem_ptr + offs, rem, mask=mask)
    back = join_master(tl.load(host_param_ptr + offs, mask=mask),
                       tl.load(host_rem_ptr + offs, mask=mask))
    tl.store(back_ptr + offs, back, mask=mask)


def test_triton_split_and_join_match_the_host_bitwise():
    """``split_master`` / ``join_master`` as the kernels run them (here interpreted) give the
    host twins' bits: the special highs x special lows, and random patterns of both strata
    (3000 and more). NaN included: the split's NaN param (its high half with the quiet bit)
    and remainder are one formula on both sides."""
    special = _combine(torch.tensor(SPECIAL_HIGHS), torch.tensor(SPECIAL_LOWS))
    g = torch.Generator().manual_seed(3)
    sampled = torch.cat([
        _combine(torch.randint(0, 1 << 16, (1500,), generator=g),
                 torch.tensor(SPECIAL_LOWS))[torch.randperm(9000, generator=g)[:1500]],
        _combine(torch.tensor(SPECIAL_HIGHS), torch.randint(0, 1 << 16, (90,), generator=g)),
        torch.randint(0, 1 << 32, (1000,), generator=g)])
    w = cms.from_bits(torch.cat([special, sampled]))
    n = w.numel()
    host_param, host_rem = split_master_host(w)
    param = torch.empty(n, dtype=torch.bfloat16)
    rem = torch.empty(n, dtype=torch.int16)
    back = torch.empty(n, dtype=torch.float32)
    block = 1024
    _split_join_kernel[(triton.cdiv(n, block),)](w, host_param, host_rem, param, rem, back, n,
                                                 BLOCK=block)
    assert n > 3000
    assert torch.equal(param.view(torch.int16), host_param.view(torch.int16))
    assert torch.equal(rem, host_rem)
    assert torch.equal(back.view(torch.int32), join_master_host(host_param, host_rem).view(
        torch.int32))
    # and the pair rebuilds w wherever w is not a NaN
    keep = ~torch.isnan(w)
    assert torch.equal(back.view(torch.int32)[keep], w.view(torch.int32)[keep])
