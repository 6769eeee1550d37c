"""The main job, ``python -m triton_adam``, as a user runs it (on a machine with a GPU the demo
runs there, whatever ``TRITON_ADAM_TEST_DEVICE`` says)."""

import os
import subprocess
import sys

import pytest

from devices import HAVE_PADDLE


@pytest.mark.parametrize("extra", [[], ["--per-tensor-launches", "--optimizer", "adamw"],
                                   ["--capturable", "--amsgrad"]],
                         ids=["default", "per-tensor-launches-adamw", "capturable-amsgrad"])
def test_demo_runs_and_matches_reference_and_paddle(extra):
    # Launched without TRITON_INTERPRET: the demo must set the interpreter up itself.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "triton_adam", "--steps", "20", "--dtype",
                             "float64", *extra], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()
            if line.startswith(("triton_adam", "reference", "paddle"))]
    # The demo compares with Paddle when it is installed.
    assert [r[0] for r in rows] == ["triton_adam", "reference"] + ["paddle"] * HAVE_PADDLE
    for row in rows:
        initial, final, diff = float(row[-4]), float(row[-3]), float(row[-2])
        assert final < initial  # it trained
        assert diff <= 1e-12  # float64: every implementation agrees with the reference


@pytest.mark.parametrize("extra", [[], ["--optimizer", "adamw", "--amsgrad", "--capturable"]],
                         ids=["adam", "adamw-amsgrad-capturable"])
def test_demo_torch_api_matches_reference_and_torch(extra):
    """``--api torch``: triton_adam.optim against the float64 reference and torch.optim (no
    Paddle row, even when Paddle is installed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "triton_adam", "--api", "torch", "--steps",
                             "20", "--dtype", "float64", *extra], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()
            if line.startswith(("triton_adam", "reference", "paddle", "torch"))]
    cls = "AdamW" if "adamw" in extra else "Adam"
    assert [r[0] for r in rows] == ["triton_adam.optim", "reference", f"torch.optim.{cls}"]
    for row in rows:
        initial, final, diff = float(row[-4]), float(row[-3]), float(row[-2])
        assert final < initial  # it trained
        # float64, 20 steps: a few roundings per step apart (tests/test_torch_ecosystem.py)
        assert diff <= 1e-12


def test_demo_torch_api_refuses_per_tensor_launches():
    """An option of the Paddle API only: refused before anything trains."""
    import torch

    from triton_adam import demo

    args = demo.build_parser().parse_args(["--api", "torch", "--per-tensor-launches"])
    with pytest.raises(SystemExit, match="--per-tensor-launches is an option of the Paddle"):
        demo.run(args, torch.device("cpu"))


# ------------------------------------------------------------- bf16 parameters (issue 19)
def _run_demo(argv):
    """``demo.run`` in this process (the interpreter is already set up here) on the tests'
    device: the rows and the printed table."""
    from triton_adam import demo
    from devices import DEVICE

    rows = demo.run(demo.build_parser().parse_args(argv), DEVICE)
    return rows, demo.format_table(rows)


# Weights of the demo's MLP stay below 2 in magnitude, where a bf16 ulp is at most 2^-7. A
# bf16 run's rounding puts a weight at most an ulp from the float64 path per step (half of one
# to nearest, one stochastically); the gradients, taken at the rounded weights, differ by as
# little, which barely turns Adam's early, nearly sign-sized steps in STEPS steps: within
# STEPS ulps of the reference.
STEPS = 8
BF16_DIFF = STEPS * 2.0 ** -7


@pytest.mark.parametrize("argv, names", [
    (["--dtype", "bfloat16"],
     ["triton_adam (bfloat16, fp32 masters, {dev})", "reference (float64)"]),
    (["--dtype", "bfloat16", "--master-weight-format", "remainder", "--moment-dtype",
      "bfloat16"],
     ["triton_adam (bfloat16, remainder masters, bf16 moments, {dev})",
      "triton_adam (bfloat16, fp32 masters, {dev})", "reference (float64)"]),
    (["--dtype", "bfloat16", "--stochastic-rounding", "--optimizer", "adamw"],
     ["triton_adam (bfloat16, no masters, stochastic rounding, {dev})",
      "triton_adam (bfloat16, fp32 masters, {dev})", "reference (float64)"]),
    (["--api", "torch", "--dtype", "bfloat16", "--master-weights", "none", "--moment-dtype",
      "bfloat16"],
     ["triton_adam.optim (bfloat16, no masters, bf16 moments, round to nearest, {dev})",
      "triton_adam.optim (bfloat16, fp32 masters, {dev})", "reference (float64)",
      "torch.optim.Adam"]),
], ids=["fp32-masters", "remainder-bf16-moments", "sr-adamw", "torch-rne-bf16-moments"])
def test_demo_bfloat16_modes(argv, names):
    """Each bf16 mode trains; a mode other than fp32 masters with float32 moments is shown
    beside the fp32-master run of the same face, and the table ends with the gap between
    their final losses."""
    from devices import DEVICE

    rows, table = _run_demo([*argv, "--steps", str(STEPS), "--no-paddle"])
    want = [n.format(dev=DEVICE.type) for n in names]
    got = [r["implementation"] for r in rows]
    # torch.optim's row names torch's version: compared by its first word
    assert [g.split(" ")[0] if g.startswith("torch.optim") else g for g in got] == want
    for r in rows:
        assert r["final_loss"] < r["initial_loss"]  # it trained
        assert r["max_param_diff"] <= BF16_DIFF, (r["implementation"], r["max_param_diff"])
    assert len({r["initial_loss"] for r in rows}) == 1  # one start: the bf16-rounded weights
    gap_lines = [line for line in table.splitlines() if line.startswith("final loss gap")]
    if "fp32 masters" in want[0]:  # the fp32-master run itself: nothing to compare with
        assert "fp32_master_loss" not in rows[0] and gap_lines == []
        return
    assert rows[0]["fp32_master_loss"] == rows[1]["final_loss"]
    # "final loss gap to fp32 masters: A - B = C (D%)": A and B the two rows' final losses as
    # the table prints them, C their difference (each printed value rounded to 5e-7).
    (line,) = gap_lines
    final, base, gap = (float(v) for v in
                        line.split(": ")[1].split(" (")[0].replace(" = ", " - ").split(" - "))
    assert final == float(f"{rows[0]['final_loss']:.6f}")
    assert base == float(f"{rows[1]['final_loss']:.6f}")
    assert abs(gap - (final - base)) <= 1.01e-6


def test_demo_fp32_master_row_is_the_plain_bfloat16_run():
    """The fp32-master row a mode is compared with is the plain ``--dtype bfloat16`` run: same
    data, start and gradients, so the same final loss bit for bit."""
    plain, _ = _run_demo(["--dtype", "bfloat16", "--steps", str(STEPS), "--no-paddle"])
    mode, _ = _run_demo(["--dtype", "bfloat16", "--master-weight-format", "remainder",
                         "--steps", str(STEPS), "--no-paddle"])
    assert mode[1]["final_loss"] == plain[0]["final_loss"]
    assert mode[1]["max_param_diff"] == plain[0]["max_param_diff"]


def test_demo_float32_params_with_bf16_moments():
    """--moment-dtype bfloat16 with float32 parameters: no fp32-master comparison (that is for
    bf16 parameters), and the weights stay near the reference. Bound: a stored moment is off
    by less than a bf16 ulp (2^-7 relative) per rounding, and a moment carries its earlier
    roundings decayed by beta, so over STEPS steps m is off by less than 2^-7 / (1 - 0.9) and
    v by less than STEPS * 2^-7 (relative): each step (at most 7.27 lr: Adam's largest step
    at b1 = 0.9, b2 = 0.999) is off by less than 2^-7 * (10 + STEPS / 2) of itself."""
    from devices import DEVICE

    from triton_adam import demo

    rows, table = _run_demo(["--moment-dtype", "bfloat16", "--steps", str(STEPS),
                             "--no-paddle"])
    assert [r["implementation"] for r in rows] == [
        f"triton_adam (float32, bf16 moments, {DEVICE.type})", "reference (float64)"]
    assert "final loss gap" not in table and "fp32_master_loss" not in rows[0]
    assert rows[0]["final_loss"] < rows[0]["initial_loss"]
    lr = demo.build_parser().get_default("lr")
    bound = STEPS * 7.27 * lr * 2.0 ** -7 * (10 + STEPS / 2)
    assert rows[0]["max_param_diff"] <= bound, rows[0]["max_param_diff"]


@pytest.mark.parametrize("argv, message", [
    (["--stochastic-rounding"], "--stochastic-rounding rounds bfloat16 parameters: add "
                                "--dtype bfloat16"),
    (["--master-weight-format", "remainder"], "applies to --dtype bfloat16"),
    (["--dtype", "float64", "--master-weights", "none"], "applies to --dtype bfloat16"),
    (["--dtype", "bfloat16", "--master-weights", "fp32", "--stochastic-rounding"],
     "--stochastic-rounding rounds bfloat16 parameters that have no master weights"),
    (["--dtype", "bfloat16", "--master-weight-format", "remainder", "--stochastic-rounding"],
     "--stochastic-rounding rounds bfloat16 parameters that have no master weights"),
    (["--dtype", "float64", "--moment-dtype", "bfloat16"],
     "--moment-dtype bfloat16 needs --dtype float32 or bfloat16"),
    (["--dtype", "bfloat16", "--stochastic-rounding", "--seed", "-1"], "must be in [0, 2**63)"),
    (["--dtype", "bfloat16", "--master-weights", "half"], "invalid choice: 'half'"),
], ids=["sr-float32", "format-float32", "none-float64", "sr-fp32-masters",
        "sr-remainder-masters", "bf16-moments-float64", "negative-seed", "bad-choice"])
def test_demo_refuses_bad_combinations(argv, message, capsys):
    """Refused as argparse refuses (usage, the message, exit status 2) before anything runs."""
    from triton_adam import demo

    with pytest.raises(SystemExit) as exc:
        demo.build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m triton_adam") and message in err, err


def test_demo_bfloat16_remainder_command():
    """The issue's command, as a user runs it: bf16 parameters with remainder masters,
    compared with fp32 masters (no Paddle row: Paddle's CPU Adam has no bf16 kernel)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "triton_adam", "--dtype", "bfloat16",
                             "--master-weight-format", "remainder", "--steps", str(STEPS)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "No Paddle row" in out
    rows = [line for line in out.splitlines() if line.startswith(("triton_adam", "reference",
                                                                  "paddle"))]
    assert [r.split(" (")[0] for r in rows] == ["triton_adam", "triton_adam", "reference"]
    assert "remainder masters" in rows[0] and "fp32 masters" in rows[1]
    assert sum(line.startswith("final loss gap to fp32 masters: ") for line in
               out.splitlines()) == 1
