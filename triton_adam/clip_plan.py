"""How a step clips gradients by norm on the device: the norm outputs and their launches.

A norm clip (``ClipGradByGlobalNorm`` per parameter group, ``ClipGradByNorm`` per tensor) is
an *output* of ``triton_adam.kernels.norm``: a norm over some gradients and the scale that
multiplies them. ``DeviceClipper`` owns the outputs of an optimizer and, per step,

1. one sum-of-squares pass per bucket that has norm-clipped tensors with a gradient (the
   bucket's address table, a chunk table of those tensors ordered by output, in chunks of
   ``NORM_CHUNK_SIZE`` = 16 blocks so the finalize has 16x fewer partials to reduce than one
   per block (427k for 7B fp32 parameters), and a slice of one partials buffer in the
   accumulation dtype: float64 if any clipped gradient is float64, else float32, as Paddle
   sums);
2. one finalize launch that reduces each output's partial ranges, in a fixed order, to its
   norm and scale;

and hands the update kernels the scale buffer, whose entry 0 is 1 (unclipped tensors) and
entry ``o + 1`` output ``o``'s scale. Nothing returns to the host. The chunk and finalize
tables depend only on which tensors have a gradient, so they are rebuilt when that changes.
``param.grad`` is never modified (Paddle multiplies it in place): the update kernels apply
the scale as they read each gradient.

Sharded parameters (FSDP2 DTensors; ``triton_adam.distributed.norm_reduction``): the passes
read this rank's local gradient shards, only of the members this rank owns, and the finalize
is split in two launches around one all-reduce of the ``[n_outputs]`` per-output sums of
squares over the optimizer's group (a device collective: no host sync). The summed vector is
the same on every rank, so every rank takes the same scales. Every rank of the group must
run a clipped step whenever one does (true when all ranks get gradients for the same
parameters, as under FSDP and DDP): a rank that skips it leaves the others waiting in the
all-reduce.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from triton_adam import dtensor as D
from triton_adam.buckets import Bucket, StepPlan, sparse_norm_members, upload_table
from triton_adam.kernels import common as C
from triton_adam.kernels import lazy as L
from triton_adam.kernels import norm as N


class DeviceClipper:
    """The norm-clip outputs of one optimizer and the device work of a clipped step."""

    def __init__(self, group: object = None, keep_retired: bool = False) -> None:
        """``group``: the process group whose ranks' sums of squares add up to each norm
        (a ``torch.distributed.ProcessGroup``), or None for local norms (one process, DDP).
        ``keep_retired`` (capturable optimizers): tables and buffers replaced by a rebuild are
        kept alive, so that a CUDA graph captured before never addresses freed memory."""
        self._group = group
        self._keep_retired = keep_retired
        self._retired: list[object] = []
        self.outputs: list[tuple[int, float]] = []  # (norm.MODE_*, clip_norm) per output
        self._key: tuple | None = None
        self._passes: list[tuple[Bucket, torch.Tensor, slice]] = []
        self._partials: torch.Tensor | None = None
        self._tables: tuple[torch.Tensor, ...] = ()
        self._scales: torch.Tensor | None = None
        self._unscale: torch.Tensor | None = None  # 1 / grad_scale^2, written each step
        self._sparse_passes: list[tuple[Bucket, int, slice]] = []
        self._version = 0  # bumped by invalidate(): part of the tables' key

    def add_output(self, mode: int, clip_norm: float) -> int:
        """A new output; returns its entry in the scale buffer (``index + 1``)."""
        self.outputs.append((mode, float(clip_norm)))
        self.invalidate()
        return len(self.outputs)

    def set_output(self, entry: int, mode: int, clip_norm: float) -> None:
        """Change the mode or ``clip_norm`` of the output at scale-buffer ``entry``."""
        if self.outputs[entry - 1] != (mode, float(clip_norm)):
            self.outputs[entry - 1] = (mode, float(clip_norm))
            self.invalidate()

    def invalidate(self) -> None:
        """The outputs or the members' clip settings changed: rebuild the tables at the next
        step (host work and asynchronous uploads only)."""
        self._version += 1

    def _rebuild(self, work: Sequence[tuple[Bucket, StepPlan]]) -> None:
        devices = {b.device for b, _ in work}
        if len(devices) > 1:
            raise NotImplementedError(f"norm clipping over parameters on several devices "
                                      f"({sorted(map(str, devices))}) is not supported")
        device = devices.pop()
        if self._keep_retired:
            self._retired.append((self._passes, self._partials, self._tables, self._scales,
                                  self._unscale))
        acc = N.accumulation_dtype_for([b.grad_dtype for b, _ in work])
        ranges: dict[int, list[tuple[int, int]]] = {}
        passes = []
        offset = 0
        sparse_passes = []
        for bucket, plan in work:
            rows, by_entry = bucket.norm_chunks(plan.active, N.NORM_CHUNK_SIZE)
            if len(rows):
                for entry, (start, end) in by_entry.items():
                    ranges.setdefault(entry, []).append((offset + start, offset + end))
                passes.append((bucket, upload_table(rows, device),
                               slice(offset, offset + len(rows))))
                offset += len(rows)
            # Row-sparse (lazy) gradients: each row counts once, after its duplicates are
            # summed; a fixed number of partials per tensor (its shape decides it).
            for j, _ in sparse_norm_members(bucket, plan):
                size = L.sparse_sum_squares_size(tuple(bucket.locals[j].shape))
                ranges.setdefault(bucket.clip_index[j], []).append((offset, offset + size))
                sparse_passes.append((bucket, j, slice(offset, offset + size)))
                offset += size
        segments, outputs = N.finalize_tables(
            [(ranges.get(o + 1, []), mode) for o, (mode, _) in enumerate(self.outputs)], device)
        self._passes = passes
        self._sparse_passes = sparse_passes
        self._partials = torch.empty(offset, dtype=acc, device=device)
        clip_norms = C.upload(np.asarray([c for _, c in self.outputs], dtype=np.float64),
                              device)
        norms = torch.empty(len(self.outputs), dtype=acc, device=device)
        self._tables = (segments, outputs, clip_norms, norms)
        self._scales = torch.ones(len(self.outputs) + 1, dtype=acc, device=device)
        self._unscale = torch.empty((), dtype=acc, device=device)

    @staticmethod
    def _key_of(version: int, work: Sequence[tuple[Bucket, StepPlan]]) -> tuple:
        return (version, tuple((id(b), plan.active, tuple(j for j, _ in plan.sparse))
                               for b, plan in work))

    def is_current(self, work: Sequence[tuple[Bucket, StepPlan]]) -> bool:
        """Whether a step over ``work`` launches with the tables of the last one (nothing to
        rebuild or upload: what a step captured in a CUDA graph needs)."""
        return self._key_of(self._version, work) == self._key

    def scales(self, work: Sequence[tuple[Bucket, StepPlan]],
               grad_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Launch this step's norm passes and finalize; return the scale buffer.

        ``work``: the buckets that clip by a norm, with this step's plans (their tables
        synced). ``grad_scale``: AMP's loss scale when the gradients are still scaled; the
        sums of squares are divided by its square before the norms are taken (exact for
        GradScaler's powers of two). The returned buffer is overwritten by the next step.
        """
        key = self._key_of(self._version, work)
        if key != self._key:
            self._rebuild(work)
            self._key = key
        assert self._partials is not None and self._scales is not None
        with C.device_guard(self._partials.device):
            for bucket, rows, part in self._passes:
                N.sum_squares_tensor_list_(
                    bucket.sync_tables(_plan_of(work, bucket))[0], rows, self._partials[part],
                    grad_dtype=bucket.grad_dtype,
                    aligned=True,  # each row's address decides, on the device
                    chunk_size=N.NORM_CHUNK_SIZE)
            for bucket, j, part in self._sparse_passes:
                grad = dict(_plan_of(work, bucket).sparse)[j]
                L.sparse_sum_squares_(grad, self._partials[part])
            if grad_scale is not None and len(self._partials):
                # grad_scale is already on the partials' device (the optimizer moved it). The
                # factor goes through a buffer of its own: no allocation at step time.
                assert self._unscale is not None
                unscale = self._unscale.copy_(grad_scale.reshape(()))
                self._partials.mul_(unscale.reciprocal_().square_())
            segments, outputs, clip_norms, norms = self._tables
            if self._group is None:
                N.clip_scales_(self._partials, segments, outputs, clip_norms, norms,
                               self._scales[1:])
            else:
                # norms first receives this rank's sums of squares (owned members only), then
                # their sum over the ranks, from which the second half writes the global norms
                # (in place) and the scales. The unscaling above is linear, so it commutes.
                N.output_sums_(self._partials, segments, outputs, norms)
                D.all_reduce_sum_(norms, self._group)
                N.scales_from_sums_(norms, outputs, clip_norms, self._scales[1:])
        return self._scales

    def norms(self) -> torch.Tensor | None:
        """The norms of the last clipped step, per output (a device tensor; for tests)."""
        return self._tables[3] if self._tables else None


def _plan_of(work: Sequence[tuple[Bucket, StepPlan]], bucket: Bucket) -> StepPlan:
    return next(plan for b, plan in work if b is bucket)
