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
KNOWN_DEFECTS: dict = {}  # (target, mode) -> reason, for a strict xfail


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
    # dense update: 32 + 4 clipped + 10 fp16/bf16 + 3 bf16 remainder + 4 capturable + 4
    # PyTorch face; multi-tensor: 18 (16 + 2 scalar-only) + 2 mixed-alignment + 4 clipped +
    # 10 fp16/bf16 + 3 bf16 remainder + 4 capturable + 4 PyTorch face; 4 norm passes; x sm_80,
    # sm_90
    assert len(rows) == 2 * (57 + 45 + 4), len(rows)
    assert {r["target"] for r in rows} == {"sm_80", "sm_90"}
    assert (out / "bytes.png").stat().st_size > 10_000
    # exit status 1 exactly when some row fails, and the failures are printed
    assert result.returncode == (1 if report["failed"] else 0), result.stderr[-4000:]
    assert report["failed"] == sum(bool(r["violations"]) for r in rows)


def _rows():
    # one test id per specialization and target, without compiling at collection time
    from itertools import product
    dtypes, flags = ("fp32", "fp64"), (False, True)
    for dtype, ams, coupled, decoupled, n, target in product(
            dtypes, flags, flags, flags, ("i32", "i64"), ("sm_80", "sm_90")):
        mode = " ".join(["adam", dtype] + ["amsgrad"] * ams + ["coupled-decay"] * coupled
                        + ["decoupled-decay"] * decoupled + [f"n:{n}"])
        marks = ([pytest.mark.xfail(strict=True, reason=KNOWN_DEFECTS[(target, mode)])]
                 if (target, mode) in KNOWN_DEFECTS else [])
        yield pytest.param(target, mode, marks=marks, id=f"{target}-{mode}")
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
