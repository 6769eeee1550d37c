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
