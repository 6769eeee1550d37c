"""Test session setup: the kernels run under the Triton interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton is first imported (triton decides at decoration
time whether a @triton.jit function is compiled or interpreted), so it is set here, at the top
of the first file pytest imports.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    """Fresh but reproducible random data for every test."""
    torch.manual_seed(0)
