"""Test session setup: which device the kernels run on (``tests/devices.py``).

By default (what CI runs) the kernels run under the Triton interpreter on CPU tensors.
``TRITON_ADAM_TEST_DEVICE=cuda python -m pytest`` runs the same tests on a CUDA device with the
kernels compiled; without a CUDA device that mode stops at once with a message (collecting
only, ``--collect-only``, still works, to check that every module imports in that mode).

TRITON_INTERPRET must be set (CPU) or absent (CUDA) before triton is first imported (triton
decides at decoration time whether a @triton.jit function is compiled or interpreted), so
``devices`` is imported here, at the top of the first file pytest imports.
"""

import devices  # noqa: I001  (first: it sets TRITON_INTERPRET before triton is imported)

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    if not devices.CUDA_MODE or config.option.collectonly:
        return
    if not torch.cuda.is_available():
        pytest.exit(f"{devices.ENV_VAR}=cuda runs the tests on a CUDA device, but torch "
                    f"{torch.__version__} sees none (torch.cuda.is_available() is False); unset "
                    f"{devices.ENV_VAR} to run them on the CPU under the Triton interpreter",
                    returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_report_header(config: pytest.Config) -> str:
    if not devices.CUDA_MODE:
        return "triton_adam tests: CPU tensors, kernels under the Triton interpreter"
    if not torch.cuda.is_available():
        return "triton_adam tests: CUDA mode, collecting only (no CUDA device here)"
    return (f"triton_adam tests: CUDA mode, compiled kernels on {torch.cuda.get_device_name()} "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda})")


@pytest.fixture(autouse=True)
def _seed():
    """Fresh but reproducible random data for every test."""
    torch.manual_seed(0)
    yield
    if devices.CUDA_MODE and torch.cuda.is_initialized():
        # An asynchronous device error (an illegal address) then fails the test that caused
        # it, not a later one.
        torch.cuda.synchronize()
