"""Where the kernels run: compiled on CUDA tensors, interpreted on CPU tensors.

Triton chooses between compiling and interpreting when a ``@triton.jit`` function is defined,
from the ``TRITON_INTERPRET`` environment variable, so the choice belongs to the whole process
and has to be made before ``triton_adam`` (or triton) is imported. Nothing here touches the
CUDA driver: the check looks at tensors' devices and at the kernel objects only.
"""

from __future__ import annotations

import torch
from triton.runtime.interpreter import InterpretedFunction

from triton_adam.kernels import adam as _adam_kernels

INTERPRET_HINT = (
    "set the environment variable TRITON_INTERPRET=1 before triton or triton_adam is imported "
    "(e.g. `TRITON_INTERPRET=1 python train.py`), or move the parameters to a CUDA device"
)


def interpreting() -> bool:
    """True when this process runs Triton kernels under the interpreter (TRITON_INTERPRET=1)."""
    return isinstance(_adam_kernels._adam_kernel, InterpretedFunction)


def check_runnable(tensor: torch.Tensor, what: str) -> None:
    """Raise a clear error if the kernels cannot run on ``tensor``'s device in this process."""
    if tensor.device.type == "cuda":
        return
    if tensor.device.type == "cpu":
        if interpreting():
            return
        raise RuntimeError(
            f"{what} is a CPU tensor: triton_adam runs its Triton kernels on CPU tensors only "
            f"under the Triton interpreter; {INTERPRET_HINT}")
    raise RuntimeError(f"{what} is on device '{tensor.device}': triton_adam runs on CUDA "
                       "tensors (and on CPU tensors under TRITON_INTERPRET=1)")
