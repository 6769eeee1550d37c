"""The SASS audit: every specialization at its floor, 16-byte accesses, no spills; and the audit
itself catches a kernel that loses its vector access.

The audit compiles kernels, so it runs in a subprocess without TRITON_INTERPRET (this session
interprets them).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

# (target, mode) -> what is wrong, for defects found by the audit and reported, not yet fixed.
# Strict xfail: once fixed, the test fails until the entry is removed.
KNOWN_DEFECTS: dict = {}


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    result = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "audit.py"), "--json", str(out / "audit.json"),
         "--plot", str(out / "bytes.png")],
        env=ENV, capture_output=True, text=True, timeout=1800)
    assert (out / "audit.json").exists(), result.stdout[-4000:] + result.stderr[-4000:]
    return result, json.loads((out / "audit.json").read_text()), out


def test_audit_covers_every_specialization_and_plots(audit):
    result, report, out = audit
    rows = report["rows"]
    # dense update: 32 + 4 clipped + 10 fp16/bf16 + 3 bf16 remainder + 9 low-byte (bf16
    # moments, stochastic rounding) + 4 capturable + 4 PyTorch face; multi-tensor: 18 (16 +
    # 2 scalar-only) + 2 mixed-alignment + 4 clipped + 10 fp16/bf16 + 3 bf16 remainder + 9
    # low-byte + 4 capturable + 4 PyTorch face; 4 norm passes; x sm_80, sm_90
    assert len(rows) == 2 * (66 + 54 + 4), len(rows)
    assert {r["target"] for r in rows} == {"sm_80", "sm_90"}
    assert (out / "bytes.png").stat().st_size > 10_000
    # exit status 1 exactly when some row fails, and the failures are printed
    assert result.returncode == (1 if report["failed"] else 0), result.stderr[-4000:]
    assert report["failed"] == sum(bool(r["violations"]) for r in rows)


def _param(target: str, mode: str):
    """One test id per specialization and target; a known defect is a strict xfail."""
    marks = ([pytest.mark.xfail(strict=True, reason=KNOWN_DEFECTS[(target, mode)])]
             if (target, mode) in KNOWN_DEFECTS else [])
    return pytest.param(target, mode, marks=marks, id=f"{target}-{mode}")


# The low-byte rows (bf16 moments, bf16 params rounded stochastically): mode words after the
# kernel name and param dtype -> (floor mode, the floor in bytes per element, derived by hand
# in perf/floors.py: each input read once, each output written once).
EVERYTHING = "amsgrad coupled-decay decoupled-decay clip"
LOW_BYTE_ROWS = {
    "bf16 master remainder moments:bf16": ("half remainder bf16-moments", 18),
    f"bf16 master remainder moments:bf16 {EVERYTHING}":
        ("half remainder bf16-moments amsgrad", 22),
    "bf16 stochastic-rounding moments:bf16": ("half stochastic bf16-moments", 14),
    f"bf16 stochastic-rounding moments:bf16 {EVERYTHING}":
        ("half stochastic bf16-moments amsgrad", 18),
    "bf16 stochastic-rounding": ("half stochastic", 22),
    "fp32 moments:bf16": ("fp32 bf16-moments", 20),
    f"fp32 moments:bf16 {EVERYTHING}": ("fp32 bf16-moments amsgrad", 24),
    "bf16 master moments:bf16": ("half master bf16-moments", 20),
    f"bf16 master moments:bf16 {EVERYTHING}": ("half master bf16-moments amsgrad", 24),
}


def _low_byte_rows():
    for rest in LOW_BYTE_ROWS:
        for target in ("sm_80", "sm_90"):
            for kernel, suffix in (("adam", " n:i32"), ("tensor-list", "")):
                yield _param(target, f"{kernel} {rest}{suffix}")


def _rows():
    # one test id per specialization and target, without compiling at collection time
    from itertools import product
    dtypes, flags = ("fp32", "fp64"), (False, True)
    for dtype, ams, coupled, decoupled, n, target in product(
            dtypes, flags, flags, flags, ("i32", "i64"), ("sm_80", "sm_90")):
        mode = " ".join(["adam", dtype] + ["amsgrad"] * ams + ["coupled-decay"] * coupled
                        + ["decoupled-decay"] * decoupled + [f"n:{n}"])
        yield _param(target, mode)
    for dtype, ams, coupled, decoupled, target in product(
            dtypes, flags, flags, flags, ("sm_80", "sm_90")):
        mode = " ".join(["tensor-list", dtype] + ["amsgrad"] * ams
                        + ["coupled-decay"] * coupled + ["decoupled-decay"] * decoupled)
        yield pytest.param(target, mode, id=f"{target}-{mode}")
    for dtype, ams, target in product(dtypes, flags, ("sm_80", "sm_90")):
        for kernel, suffix in (("adam", " n:i32"), ("tensor-list", "")):
            mode = " ".join([kernel, dtype] + ["amsgrad"] * ams + ["clip"]) + suffix
            yield pytest.param(target, mode, id=f"{target}-{mode}")
    for grad, target in product(("fp32", "bf16", "fp16", "fp64"), ("sm_80", "sm_90")):
        yield pytest.param(target, f"norm {grad}", id=f"{target}-norm {grad}")
    # fp16/bf16 params: fp32 master weights (the floor: 28 B with bf16 grads), with
    # fp32 grads, with AMP's scale and skip flag, with everything, and without master.
    for half, target in product(("bf16", "fp16"), ("sm_80", "sm_90")):
        for kernel, suffix in (("adam", " n:i32"), ("tensor-list", "")):
            for rest in ("master", "master amsgrad coupled-decay decoupled-decay clip",
                         "grad:fp32 master", "master amp", "no-master"):
                mode = f"{kernel} {half} {rest}{suffix}"
                yield pytest.param(target, mode, id=f"{target}-{mode}")
    # bf16 params with the master as a remainder (26 B with bf16 grads).
    for target in ("sm_80", "sm_90"):
        for kernel, suffix in (("adam", " n:i32"), ("tensor-list", "")):
            for rest in ("master remainder", "master remainder amp",
                         "master remainder amsgrad coupled-decay decoupled-decay clip"):
                mode = f"{kernel} bf16 {rest}{suffix}"
                yield pytest.param(target, mode, id=f"{target}-{mode}")
    # bf16 moments and stochastic rounding (18, 14, 20... B: LOW_BYTE_ROWS).
    yield from _low_byte_rows()


@pytest.mark.parametrize("target,mode", list(_rows()))
def test_specialization_at_floor_vectorized_no_spills(audit, target, mode):
    rows = {(r["target"], r["mode"]): r for r in audit[1]["rows"]}
    row = rows[(target, mode)]
    assert row["load_bytes_per_element"] == row["floor_load"], row
    assert row["store_bytes_per_element"] == row["floor_store"], row
    assert row["narrowest_access"] == row["widest_access"] == 16, row
    assert row["per_program_load_bytes"] > 0  # the hyper row and pows are found, apart
    assert row["registers"] > 0
    assert row["violations"] == [], row["violations"]


def test_audit_flags_a_kernel_without_vector_access():
    """Negative control: without the JIT's 16-divisibility facts every access is scalar."""
    code = (
        "import dataclasses, tempfile, audit, compile_check\n"
        "spec = compile_check.specializations()[0]\n"
        "spec = dataclasses.replace(spec, divisible_by_16=())\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    row = audit.audit(spec, 'sm_90', d)\n"
        "print(row['widest_access'], row['load_bytes_per_element'], row['violations'])\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "perf", env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.startswith("4 16.0 "), result.stdout
    assert "not all 16-byte vectors" in result.stdout


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_unaligned_tensor_list_fallback_at_floor(audit, target, dtype):
    """Tables with an address that is not 16-byte aligned take the scalar specialization: the
    same bytes per element, no vector access promised (and none required)."""
    row = {(r["target"], r["mode"]): r for r in audit[1]["rows"]}[
        (target, f"tensor-list {dtype} unaligned")]
    assert row["load_bytes_per_element"] == row["floor_load"], row
    assert row["store_bytes_per_element"] == row["floor_store"], row
    assert row["narrowest_access"] < 16 and not row["vector_required"], row
    assert row["violations"] == [], row["violations"]


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("kernel", ["adam", "tensor-list"])
def test_bf16_master_update_moves_28_bytes(audit, target, kernel):
    """The mixed-precision issue's figure: bf16 params and grads, fp32 master, m, v."""
    suffix = " n:i32" if kernel == "adam" else ""
    row = {(r["target"], r["mode"]): r for r in audit[1]["rows"]}[
        (target, f"{kernel} bf16 master{suffix}")]
    assert row["load_bytes_per_element"] + row["store_bytes_per_element"] == 28, row


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("kernel", ["adam", "tensor-list"])
def test_bf16_master_remainder_update_moves_26_bytes(audit, target, kernel):
    """Master weights as remainders: bf16 params and grads, int16 remainder, fp32 m, v:
    g, p, rem, m, v read (14), p, rem, m, v written (12), 2 B less than the fp32 master."""
    suffix = " n:i32" if kernel == "adam" else ""
    row = {(r["target"], r["mode"]): r for r in audit[1]["rows"]}[
        (target, f"{kernel} bf16 master remainder{suffix}")]
    assert row["floor_load"] == 14 and row["floor_store"] == 12, row
    assert row["load_bytes_per_element"] + row["store_bytes_per_element"] == 26, row


def test_low_byte_floors_are_the_hand_derived_bytes():
    """The floors of the bf16-moment and stochastic-rounding modes (perf/floors.py) are the
    byte counts of each stream read once and written once, counted here stream by stream:
    a change to either side fails this test."""
    from floors import FLOORS

    g, p, rem, m = 2, 2, 2, 2  # bf16 gradient, param, int16 remainder, bf16 moment
    expected = {  # floor mode -> (read, write)
        "half remainder bf16-moments": (g + p + rem + 2 * m, p + rem + 2 * m),  # 10 + 8
        "half stochastic bf16-moments": (g + p + 2 * m, p + 2 * m),  # 8 + 6
        "half stochastic": (g + p + 2 * 4, p + 2 * 4),  # fp32 moments: 12 + 10
        "fp32 bf16-moments": (4 + 4 + 2 * m, 4 + 2 * m),  # fp32 p, g: 12 + 8
        "half master bf16-moments": (g + 4 + 2 * m, 4 + p + 2 * m),  # fp32 master: 10 + 10
    }
    for mode, (read, write) in list(expected.items()):
        if mode != "half stochastic":  # amsgrad: moment2_max read and written, 2 + 2
            expected[f"{mode} amsgrad"] = (read + m, write + m)
    for mode, (read, write) in expected.items():
        assert (FLOORS[mode].read, FLOORS[mode].write) == (read, write), mode
    assert {mode: total for mode, total in LOW_BYTE_ROWS.values()} == {
        mode: read + write for mode, (read, write) in expected.items()}
    # The figures: 26 (remainder, fp32 moments), 18 (+ bf16 moments), 14 (no master).
    assert [FLOORS[k].total for k in ("half remainder", "half remainder bf16-moments",
                                      "half stochastic bf16-moments")] == [26, 18, 14]


@pytest.mark.parametrize("rest", list(LOW_BYTE_ROWS))
@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("kernel", ["adam", "tensor-list"])
def test_low_byte_update_moves_its_floor(audit, kernel, target, rest):
    """bf16 moments (rounded stochastically) and bf16 params without masters rounded
    stochastically: the compiled kernel loads and stores exactly its mode's floor per element
    (the Philox bits are computed, not loaded), on both kernels. The 16-byte access and spill
    checks of each row are test_specialization_at_floor_vectorized_no_spills's."""
    floor_mode, total = LOW_BYTE_ROWS[rest]
    suffix = " n:i32" if kernel == "adam" else ""
    row = {(r["target"], r["mode"]): r for r in audit[1]["rows"]}[
        (target, f"{kernel} {rest}{suffix}")]
    assert row["floor_mode"] == floor_mode and row["floor"] == total, row
    assert row["load_bytes_per_element"] == row["floor_load"], row
    assert row["store_bytes_per_element"] == row["floor_store"], row


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_aligned_members_of_a_mixed_bucket_keep_vector_access(audit, target, dtype):
    """A bucket with one unaligned member launches the per-row specialization: its aligned
    members' full blocks are still 16-byte loads and stores, at the floor (the alignment is
    decided per table row on the device, not once for the whole bucket)."""
    row = {(r["target"], r["mode"]): r for r in audit[1]["rows"]}[
        (target, f"tensor-list {dtype} mixed-alignment")]
    assert row["vector_required"] and row["narrowest_access"] == 16, row
    assert row["load_bytes_per_element"] == row["floor_load"], row
    assert row["store_bytes_per_element"] == row["floor_store"], row
    assert row["violations"] == [], row["violations"]


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
@pytest.mark.parametrize("kind", ["capturable", "torch"])
def test_capturable_and_torch_face_updates_stay_at_the_floor(audit, target, kind):
    """Capturable steps read the learning rate from device memory, the PyTorch face's also
    compute torch's bias corrections from the step count (scalar work per program): every
    element still moves exactly its mode's floor, with 16-byte access."""
    rows = [r for r in audit[1]["rows"]
            if r["target"] == target and kind in r["mode"].split()]
    assert len(rows) == 8, [r["mode"] for r in rows]  # 4 dense + 4 multi-tensor
    for row in rows:
        assert row["load_bytes_per_element"] == row["floor_load"], row
        assert row["store_bytes_per_element"] == row["floor_store"], row
        assert row["narrowest_access"] == 16 and row["violations"] == [], row
