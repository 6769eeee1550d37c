"""Counting host syncs: every call that makes the host wait for the device, wrapped to record it.

On a GPU each of these stalls the host: reading a value back (``.item()``, ``bool(t)``, ...),
and copying host data to the device with a blocking copy (``t.to(device)`` without
``non_blocking=True``, ``t.cuda()``, ``torch.tensor(data, device=...)`` and
``torch.as_tensor(data, device=...)``, which copy from pageable host memory). The tests run on
the CPU, where all of these are cheap, so they are counted instead: a ``.to()`` or a creation
that names a device counts whatever that device is, since on a GPU machine the same call with
the parameters' device would be a blocking host-to-device copy. ``.to()`` without a device (a
dtype conversion on the tensor's own device) does not count.
"""

from __future__ import annotations

import torch

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "nonzero")


def _names_a_device(args: tuple, kwargs: dict) -> bool:
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (torch.device, str)) or
               (isinstance(a, int) and not isinstance(a, bool)) for a in args[:1])


def count_host_syncs(patcher, calls: list[str]) -> None:
    """Wrap the sync methods and the blocking host-to-device copies with ``patcher`` (pytest's
    ``monkeypatch`` or one of its contexts, which undoes it) so that each call appends its
    name to ``calls``."""
    for method in SYNC_METHODS:
        original = getattr(torch.Tensor, method)

        def counting(self, *a, _original=original, _method=method, **k):
            calls.append(_method)
            return _original(self, *a, **k)

        patcher.setattr(torch.Tensor, method, counting)

    original_to = torch.Tensor.to

    def counting_to(self, *a, **k):
        if _names_a_device(a, k) and not k.get("non_blocking", False) and not (
                len(a) > 1 and isinstance(a[1], bool) and a[1]):
            calls.append("to(device) blocking")
        return original_to(self, *a, **k)

    patcher.setattr(torch.Tensor, "to", counting_to)

    original_cuda = torch.Tensor.cuda

    def counting_cuda(self, *a, **k):
        if not k.get("non_blocking", False):
            calls.append("cuda() blocking")
        return original_cuda(self, *a, **k)

    patcher.setattr(torch.Tensor, "cuda", counting_cuda)

    for name in ("tensor", "as_tensor"):
        original_new = getattr(torch, name)

        def counting_new(*a, _original=original_new, _name=name, **k):
            if k.get("device") is not None:
                calls.append(f"torch.{_name}(device=...)")
            return _original(*a, **k)

        patcher.setattr(torch, name, counting_new)
