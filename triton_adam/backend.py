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


def capturing(devices: Iterable[torch.device]) -> bool:
    """Whether a CUDA graph is being captured on the current stream of the current device or
    of one of ``devices`` (the parameters'). Costs nothing when CUDA was never initialised
    (then nothing can be capturing)."""
    if not torch.cuda.is_initialized():
        return False
    if torch.cuda.is_current_stream_capturing():
        return True
    for device in {d for d in devices if d.type == "cuda"}:
        with torch.cuda.device(device):
            if torch.cuda.is_current_stream_capturing():
                return True
    return False


def check_not_capturing(devices: Iterable[torch.device]) -> None:
    """Refuse a step of a non-capturable optimizer while a CUDA graph is being captured.

    Its launches take the learning rate as a host value and choose the beta-pow slot on the
    host: a replay would repeat both, silently wrong from the second replay on."""
    if capturing(devices):
        raise RuntimeError(
            "step() called while a CUDA graph is being captured, by an optimizer built without "
            "capturable=True: its learning rate and beta-pow slot are host values, and a "
            "replay would repeat them. Build it with capturable=True, or run the step outside "
            "the captured region; nothing was updated")
