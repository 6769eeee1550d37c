"""What does one optimizer step cost the host: kernel launches, device syncs, and aten operations?

Instruments for a CPU-only machine, where the GPU's costs are counted rather than timed
(``docs/performance.md`` section 3):

* ``TritonLaunches``: counts launches of every ``@triton.jit`` kernel of
  ``triton_adam.kernels`` (found by walking the package, so new kernels are counted without
  edits) and can turn the launch into a no-op, which leaves the host's own work to time.
* ``DeviceOps``: a ``TorchDispatchMode`` counting the dispatched aten operations that would be
  GPU kernel launches, and the calls (``.item()``, ``bool(t)``, ``.cpu()``...) that would be
  device-to-host syncs. Everything runs on the CPU here, so which tensors would live on the
  host on a GPU machine (torch's non-capturable ``state["step"]``) is told to it; results of
  operations on host tensors only are host tensors too.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections import Counter
from collections.abc import Iterable

import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from triton.runtime.interpreter import InterpretedFunction

import triton_adam.kernels

# Aten operations that launch no kernel on a GPU: allocation without initialisation,
# aliasing, and the scalar read-back (counted as a sync instead). View operations are
# recognised from their schema (``OpOverload.is_view``).
_NO_KERNEL = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::detach",
              "aten::alias", "aten::lift_fresh", "aten::_local_scalar_dense"}

# Tensor methods that wait for the device when called on a GPU tensor. ``.to(device)`` is
# left out: with every tensor on the CPU here, a copy to the host cannot be told from a copy
# to "the grads' device" (clip_grad_norm_ makes one per tensor, on the GPU device-to-device).
_SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__float__",
                 "__int__", "__index__", "__complex__")


def triton_kernels() -> list[object]:
    """Every ``@triton.jit`` function defined in the ``triton_adam.kernels`` package."""
    kinds = (triton.runtime.JITFunction, InterpretedFunction)
    found = []
    for info in pkgutil.iter_modules(triton_adam.kernels.__path__):
        module = importlib.import_module(f"triton_adam.kernels.{info.name}")
        # A module that imports another's helpers holds the same objects: count them once.
        found += [v for v in vars(module).values()
                  if isinstance(v, kinds) and all(v is not f for f in found)]
    return found


class TritonLaunches:
    """Context manager counting (and optionally skipping) launches of the package's kernels.

    ``kernel[grid](...)`` calls ``kernel.run``, compiled or interpreted; an instance attribute
    ``run`` shadows it for the duration. Helpers called from inside kernels are inlined and
    never reach ``run``.
    """

    def __init__(self, execute: bool = True) -> None:
        self.execute = execute
        self.count = 0
        self._kernels = triton_kernels()

    def __enter__(self) -> TritonLaunches:
        for kernel in self._kernels:
            original = kernel.run

            @functools.wraps(original)
            def run(*args, _original=original, **kwargs):
                self.count += 1
                return _original(*args, **kwargs) if self.execute else None

            kernel.run = run
        return self

    def __exit__(self, *exc: object) -> None:
        for kernel in self._kernels:
            del kernel.run  # uncovers the class's method again


class DeviceOps(TorchDispatchMode):
    """Counts would-be GPU kernel launches and device syncs of the aten calls in its scope.

    ``host_tensors``: tensors that live on the host on a GPU machine too. Counts are totals
    over the scope: ``launches`` (by operation name in ``ops``) and ``syncs``.
    """

    def __init__(self, host_tensors: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        # id -> tensor: holding the tensor keeps ids unique while the mode is active
        self._host = {id(t): t for t in host_tensors}
        self.ops: Counter[str] = Counter()
        self.syncs = 0
        self._saved: dict[str, object | None] = {}

    @property
    def launches(self) -> int:
        return sum(self.ops.values())

    def _on_device(self, t: object) -> bool:
        return isinstance(t, torch.Tensor) and id(t) not in self._host

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        device = any(self._on_device(t) for t in inputs)
        if not device:  # host-only inputs (or a factory): host-only outputs
            self._host.update((id(t), t) for t in tree_leaves(out)
                              if isinstance(t, torch.Tensor))
        elif (func.namespace == "aten" and not func.is_view
              and func._schema.name not in _NO_KERNEL):
            self.ops[func._schema.name.removeprefix("aten::")] += 1
        return out

    def __enter__(self) -> DeviceOps:
        for name in _SYNC_METHODS:
            original = getattr(torch.Tensor, name)
            # None: inherited from the C base class, so restoring means deleting the wrapper
            self._saved[name] = vars(torch.Tensor).get(name)

            @functools.wraps(original)
            def wrapper(tensor, *args, _original=original, **kwargs):
                if self._on_device(tensor):
                    self.syncs += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, wrapper)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)
        self._saved.clear()
        return super().__exit__(*exc)
