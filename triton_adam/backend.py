"""Where the kernels run: compiled on CUDA tensors, interpreted on CPU tensors.

Triton chooses between compiling and interpreting when a ``@triton.jit`` function is defined,
from the ``TRITON_INTERPRET`` environment variable, so the choice belongs to the whole process
and has to be made before ``triton_adam`` (or triton) is imported. Nothing here touches the
CUDA driver: the check looks at tensors' devices and at the kernel objects only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from triton_adam.kernels import common as _common
from triton_adam.kernels.common import check_interpretable

INTERPRET_HINT = (
    "set the environment variable TRITON_INTERPRET=1 before triton or triton_adam is imported "
    "(e.g. `TRITON_INTERPRET=1 python train.py`), or move the parameters to a CUDA device"
)


def interpreting() -> bool:
    """True when this process runs Triton kernels under the interpreter (TRITON_INTERPRET=1)."""
    return _common.interpreting()


def check_runnable(tensor: torch.Tensor, what: str) -> None:
    """Raise a clear error if the kernels cannot run on ``tensor``'s device in this process."""
    if tensor.device.type == "cuda":
        # Under the interpreter a CUDA address would be read as host memory (a segfault).
        check_interpretable(tensor.device, what)
        return
    if tensor.device.type == "cpu":
        if interpreting():
            return
        raise RuntimeError(
            f"{what} is a CPU tensor: triton_adam runs its Triton kernels on CPU tensors only "
            f"under the Triton interpreter; {INTERPRET_HINT}")
    raise RuntimeError(f"{what} is on device '{tensor.device}': triton_adam runs on CUDA "
                       "tensors (and on CPU tensors under TRITON_INTERPRET=1)")


def check_not_capturing(devices: Iterable[torch.device]) -> None:
    """Refuse a step while a CUDA graph is being captured on the current device or on one of
    ``devices`` (the parameters').

    A captured step would replay with this step's learning rate and beta-pow slot baked in
    (both are host values chosen at launch): silently wrong from the second replay on. Costs
    nothing when CUDA was never initialised (then nothing can be capturing)."""
    if not torch.cuda.is_initialized():
        return
    where = [None] + sorted({d for d in devices if d.type == "cuda"}, key=str)
    for device in where:
        if device is None:
            capturing = torch.cuda.is_current_stream_capturing()
        else:
            with torch.cuda.device(device):
                capturing = torch.cuda.is_current_stream_capturing()
        if capturing:
            raise RuntimeError(
                f"step() called while a CUDA graph is being captured"
                f"{'' if device is None else f' on {device}'}: this step is not capturable "
                "(its learning rate and beta-pow slot are host values, and a replay would "
                "repeat them). Run the optimizer step outside the captured region; nothing "
                "was updated")
