"""Counting host syncs: every Tensor method that waits for the device, wrapped to record calls.

On a GPU each of these reads a value back to the host and stalls the stream; the tests run on
the CPU, where they are cheap, so they are counted instead (``.to()`` is left out: with every
tensor on the CPU a copy to the host cannot be told from a device copy).
"""

from __future__ import annotations

import torch

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "nonzero")


def count_host_syncs(patcher, calls: list[str]) -> None:
    """Wrap the sync methods with ``patcher`` (pytest's ``monkeypatch`` or one of its
    contexts, which undoes it) so that each call appends the method's name to ``calls``."""
    for method in SYNC_METHODS:
        original = getattr(torch.Tensor, method)

        def counting(self, *a, _original=original, _method=method, **k):
            calls.append(_method)
            return _original(self, *a, **k)

        patcher.setattr(torch.Tensor, method, counting)
