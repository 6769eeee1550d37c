"""Where and how a launch runs: the device guard every launcher enters, and asynchronous
uploads of host-built tables.

Triton launches a kernel on ``torch.cuda.current_device()`` and on that device's current
stream, whatever device the tensor arguments live on. A launch for parameters on ``cuda:1``
while ``cuda:0`` is current would run on the wrong device (reading addresses it cannot map) or
race with the work that produced the gradients on ``cuda:1``'s stream. So every launcher runs
its kernels inside ``device_guard(device)``: the tensors' device is made current (PyTorch's
``torch.cuda.device``), which also makes Triton pick that device's current stream, the one
PyTorch queued the gradients' producers on. The guard also refuses CUDA tensors when the
process interprets its kernels (``TRITON_INTERPRET=1``): the interpreter runs programs on the
host and would read device addresses as host memory.

Host tables (launch tables, hyper-parameter rows) reach the device through ``upload``: a
pinned staging copy and a non-blocking host-to-device copy, so that rebuilding a table never
stalls the host on the device. Nothing here touches the CUDA driver at import time.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import triton


def interpreting() -> bool:
    """Whether this process runs ``@triton.jit`` kernels under the interpreter (decided when
    the kernels are defined, from ``TRITON_INTERPRET``)."""
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_INTERPRETING = interpreting()

# The devices of the guards currently entered, innermost last: what the tests read to check
# that each launch runs on its tensors' device (a list append/pop costs well under a µs).
_GUARDED: list[torch.device] = []


def check_interpretable(device: torch.device, what: str = "the tensors") -> None:
    """Raise when ``device`` cannot run kernels in this process: under the interpreter only
    CPU tensors can (a CUDA address read as host memory is a segfault, not an error)."""
    if _INTERPRETING and device.type != "cpu":
        raise RuntimeError(
            f"{what} are on {device}, but this process runs Triton kernels under the "
            "interpreter (TRITON_INTERPRET=1), which executes them on the host: unset "
            "TRITON_INTERPRET to run compiled kernels on the GPU, or keep the tensors on the CPU")


class device_guard:  # noqa: N801 (used as a function: ``with device_guard(device):``)
    """Run the enclosed launches on ``device`` and its current stream (see the module
    docstring); refuse devices the process cannot run kernels on. A class rather than a
    generator-based context manager: it is entered at every launch, and this costs less."""

    __slots__ = ("device", "_cuda")

    def __init__(self, device: torch.device) -> None:
        check_interpretable(device)
        self.device = device
        self._cuda = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self) -> None:
        _GUARDED.append(self.device)
        if self._cuda is not None:
            self._cuda.__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            if self._cuda is not None:
                self._cuda.__exit__(*exc)
        finally:
            _GUARDED.pop()


def guarded_device() -> torch.device | None:
    """The device of the innermost ``device_guard`` entered, or None outside any."""
    return _GUARDED[-1] if _GUARDED else None


def upload(host: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of the host array ``host`` on ``device``, without a host sync.

    On CUDA the values go through a fresh pinned buffer and a non-blocking copy, queued on the
    device's current stream; PyTorch's caching host allocator keeps that buffer alive until the
    copy has run (it records an event on the stream), so the caller may rebuild its host table
    at once. On the CPU it is a plain copy.
    """
    if isinstance(host, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(host).copy())
    else:
        tensor = host.detach().clone(memory_format=torch.contiguous_format)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device, non_blocking=True)
