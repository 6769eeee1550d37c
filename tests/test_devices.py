"""The test-mode switch (``tests/devices.py``): CUDA mode without a CUDA device stops at once with
a message, yet every test module imports and collects in that mode; a bad value is refused;
the CPU mode's tolerances are the ones each test states."""

import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

import devices

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pytest(*args: str, mode: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env[devices.ENV_VAR] = mode
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_mode_without_a_device_stops_with_a_message():
    result = _pytest("-q", "tests/test_kernel_adam.py", mode="cuda")
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output[-2000:]
    assert "sees none" in output and "unset TRITON_ADAM_TEST_DEVICE" in output


def test_every_module_collects_in_cuda_mode():
    """No module creates device tensors or imports kernels wrongly at collection time."""
    result = _pytest("--collect-only", "-q", mode="cuda")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\d+ tests collected", result.stdout)
    assert not re.search(r"\d+ errors?\b|ERROR collecting", result.stdout), result.stdout[-4000:]


def test_unknown_mode_is_refused():
    result = _pytest("--collect-only", "-q", "tests/test_kernel_adam.py", mode="tpu")
    assert result.returncode != 0
    assert "TRITON_ADAM_TEST_DEVICE='tpu'" in result.stdout + result.stderr


@pytest.mark.skipif(devices.CUDA_MODE, reason="checks the CPU mode")
def test_cpu_mode_keeps_each_tests_tolerance():
    assert devices.DEVICE == torch.device("cpu") and os.environ["TRITON_INTERPRET"] == "1"
    assert devices.fma_tol(torch.float32, rtol=1e-6, atol=0.0) == dict(rtol=1e-6, atol=0.0)
    assert devices.fma_tol("float64", rtol=1e-13, atol=0.0) == dict(rtol=1e-13, atol=0.0)
