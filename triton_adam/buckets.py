"""How tensors are grouped into launches: buckets, their flat state, and the launch tables.

A ``Bucket`` holds the parameters of one ``(device, param dtype)`` combination. It owns

* the optimizer state of its members in flat buffers, one allocation per buffer per bucket
  (``moment1``, ``moment2``, ``moment2_max``, and the fp16/bf16 master weights: float32
  ``master``, or with ``master_weight_format="remainder"`` the int16 ``remainder`` of bf16
  params, whose master is the param and its remainder together), each member's state a view
  of its region; every region starts at a multiple of ``STATE_ALIGN`` elements, so every view
  is 16-byte aligned;
* a device table of per-member hyper-parameters (``HYPER_*`` columns: learning-rate scale,
  betas, epsilon, decay coefficients) and a two-slot table of beta pows;
* for ``use_multi_tensor=True``, the launch tables of the multi-tensor kernel: an int64 row per
  member (param and grad addresses, numel, state offset, active flag) and an int32 row per
  program (member, chunk).

The tables are built once and rebuilt only when something they describe changed. Each step
compares, per member, the gradient object (held through a weak reference, so a gradient the
user dropped is freed and a new object at a recycled address is noticed), its address and
the param's address and strides with what the tables were built from; a change re-validates
that member and re-uploads the address table (one small host-to-device copy). The chunk table
depends only on which members are active and is rebuilt when that set changes.

DTensor parameters (FSDP2 ``fully_shard``) are members like any other, through their local
shards (``triton_adam.distributed.local_tensor``): the state, the tables and the kernels see
only the shard this rank holds, so a sharded run updates shard-locally with the same kernels.
Buckets without a DTensor never look for one at step time.

With ``use_multi_tensor=False`` the same state is updated by one launch of the dense kernel
per member (``adam_update_``); both kernels run the same ``_adam_math``, with the same decay
switches per bucket, so the two paths give bitwise identical results.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from triton_adam import backend
from triton_adam import dtensor as D
from triton_adam.kernels import adam as K
from triton_adam.kernels import common as C
from triton_adam.kernels import lazy as L


@dataclass
class MemberConfig:
    """What the optimizer decided for one parameter of a bucket.

    ``hyper`` is the member's hyper-parameter row (``HYPER_*`` columns) with 0 where a value
    comes from a tensor; ``tensor_hypers`` maps a column to the 1-element tensor read at every
    step (tensor ``beta1``/``beta2``/``epsilon``). ``what`` names the member in errors.
    """

    hyper: list[float]
    tensor_hypers: dict[int, torch.Tensor]
    what: str
    # Gradient clipping: ``clip_index`` > 0 selects the entry of the step's clip-scale buffer
    # that multiplies the gradient (a global-norm group's or the tensor's own norm output;
    # entry 0 holds 1); ``clip_value`` clamps to the row's HYPER_CLIP_MIN/MAX.
    clip_index: int = 0
    clip_value: bool = False
    lazy: bool = False  # lazy_mode: a sparse gradient updates only its rows
    # Whether this rank adds the member's sum of squares to its norm outputs: False for the
    # replicas of a sharded run that another rank counts (triton_adam.distributed
    # .norm_reduction); always True in one process and under DDP. The member is still
    # updated and scaled either way.
    norm_owner: bool = True
    # The random stream of stochastic rounding (kernels/common.py, ``philox_bits``): the
    # parameter's index in its optimizer, and its local tensor's first element in the whole
    # tensor (an FSDP2 shard's; 0 otherwise), so every element has its own bits.
    rng_stream: int = 0
    rng_offset: int = 0


@dataclass
class StepPlan:
    """A validated, launch-ready step of one bucket (no device work done yet)."""

    grads: list[torch.Tensor | None]  # per member; contiguous when not None
    active: tuple[bool, ...]
    created: list[int]  # members whose state is created by this step
    changed: list[int]  # active members whose gradient or param is not the one last seen
    sparse: list[tuple[int, torch.Tensor]] = dataclasses.field(default_factory=list)
    # ^ lazy_mode members with a non-empty sparse gradient: updated by the row kernel
    sparse_seen: bool = False  # some gradient of this step was sparse (lazy or densified)
    # Members with fp32 master weights whose param was written outside the optimizer since
    # its last step (``p.copy_``, ``p.data = ...``, a loaded state dict): their master is
    # taken from the param again before the update, so the written values are not lost.
    reload_master: list[int] = dataclasses.field(default_factory=list)


_TENSOR = torch.Tensor  # the exact type of a plain gradient (a module constant: no lookup)


def _pad(n: int) -> int:
    return -(-n // K.STATE_ALIGN) * K.STATE_ALIGN


class Bucket:
    """The parameters of one launch, their flat state and their launch tables."""

    def __init__(self, params: Sequence[torch.Tensor], configs: Sequence[MemberConfig], *,
                 amsgrad: bool, multi_tensor: bool, grad_dtype: torch.dtype | None = None,
                 multi_precision: bool = False, capturable: bool = False,
                 bias_from_step: bool = False, master_remainder: bool = False,
                 moment_dtype: torch.dtype | None = None, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        if not params:
            raise ValueError("a bucket needs at least one parameter")
        self.params = list(params)  # what the user holds: .grad, .requires_grad, names
        # What the kernels update: a DTensor param's local shard (FSDP2), else the param
        # itself (the same object). Shapes, numels, addresses, devices and the state layout
        # are the locals'; a DTensor's own data_ptr() is 0.
        self.locals = [D.local_tensor(p) for p in self.params]
        self.has_dtensors = any(t is not p for t, p in zip(self.locals, self.params))
        self.configs = list(configs)
        self.device = self.locals[0].device
        self.param_dtype = self.params[0].dtype
        self.grad_dtype = grad_dtype or self.param_dtype
        self.compute_dtype = K.compute_dtype_for(self.param_dtype)
        # fp32 master weights for fp16/bf16 params (multi_precision); without them fp16/bf16
        # params are still computed in fp32 with fp32 moments, and rounded at every step.
        self.has_master = multi_precision and self.param_dtype in K.LOW_PRECISION
        # ``master_weight_format="remainder"``: a bf16 bucket keeps each master as its param
        # plus an int16 remainder (kernels/common.py), not as a float32 copy. (fp16 params are
        # refused by the engine: an fp16 value and 16 bits cannot hold every fp32 master.)
        self.master_remainder = (self.has_master and master_remainder
                                 and self.param_dtype == torch.bfloat16)
        self.amsgrad = amsgrad
        self.multi_tensor = multi_tensor
        # Capturable: every step passes the same launch arguments (see ``launch``).
        self.capturable = capturable
        # torch's bias corrections (from the step count and the current betas)
        self.bias_from_step = bias_from_step
        # bf16 moments (``moment_dtype``) apply to buckets computed in float32; the kernels
        # compute in float32 and store them rounded stochastically. (The engine refuses
        # float64 params with bf16 moments.)
        self.moment_dtype = (moment_dtype if moment_dtype is not None
                             and self.compute_dtype == torch.float32 else self.compute_dtype)
        # Stochastic rounding of the params themselves: bf16 params without master weights.
        self.stochastic_rounding = (stochastic_rounding and not self.has_master
                                    and self.param_dtype == torch.bfloat16)
        self.seed = seed  # the Philox key of both (kernels/common.py)
        self._retired: list[object] = []  # see _retire
        self._fill_index: dict[tuple[int, ...], torch.Tensor] = {}  # see fill_columns
        self._derive()

        n = len(self.params)
        self.numels = [p.numel() for p in self.locals]
        # What the state layout was built for: a param (its local shard) whose shape, dtype,
        # device or storage changes later is refused until it is restored.
        self.shapes = [p.shape for p in self.locals]
        self.offsets = []
        total = 0
        for numel in self.numels:
            self.offsets.append(total)
            total += _pad(numel)
        self.total = total
        self.created = [False] * n  # state exists (Paddle: the member has had a step)
        self._created_key: tuple[bool, ...] | None = None  # an active set fully created

        dev, cdt, mdt = self.device, self.compute_dtype, self.moment_dtype
        self.moment1 = torch.zeros(total, dtype=mdt, device=dev)
        self.moment2 = torch.zeros(total, dtype=mdt, device=dev)
        self.moment2_max = torch.zeros(total, dtype=mdt, device=dev) if amsgrad else None
        self.master = (torch.zeros(total, dtype=torch.float32, device=dev)
                       if self.has_master and not self.master_remainder else None)
        # The low halves of the masters of a remainder bucket (the params are the high halves).
        self.remainder = (torch.zeros(total, dtype=torch.int16, device=dev)
                          if self.master_remainder else None)
        # Host-built rows reach the device asynchronously: a bucket is also built mid-run,
        # when a parameter first gets a gradient (an MoE expert's first tokens).
        self.hyper = self._upload_hyper()
        pows = torch.zeros(2, n, K.POW_SLOT_WIDTH, dtype=cdt)
        for j, c in enumerate(self.configs):
            pows[:, j, 0] = c.hyper[K.HYPER_BETA1]
            pows[:, j, 1] = c.hyper[K.HYPER_BETA2]
        self.pows = C.upload(pows, dev)
        # The current pow slot: one for the whole bucket with multi-tensor launches (the
        # kernel writes every member's pows), one per member otherwise. Capturable buckets
        # always read slot 0 and copy the advanced pows back into it after the update (one
        # small device copy), so that a replayed step reads and writes the same addresses.
        self.slot = 0
        self.slots = None if multi_tensor else [0] * n

        self._tensor_hypers = self._tensor_hyper_rows()
        # Each param's version counter as the optimizer last left it (master-weight buckets
        # only): a different value at the next step means the param was written from outside.
        self._seen_version = [p._version for p in self.locals] if self.has_master else None
        self._seen_ptr = [p.data_ptr() for p in self.locals] if self.has_master else None

        # Multi-tensor launch tables and what they were built from.
        self._host_table = np.zeros((n, K.TABLE_WIDTH), dtype=np.int64)
        self._host_table[:, K.COL_NUMEL] = self.numels
        self._host_table[:, K.COL_STATE_OFFSET] = self.offsets
        self._host_table[:, K.COL_CLIP_INDEX] = self.clip_index
        self._host_table[:, K.COL_RNG_STREAM] = [c.rng_stream for c in configs]
        self._host_table[:, K.COL_RNG_OFFSET] = [c.rng_offset for c in configs]
        self._built_grads: list[weakref.ref | None] = [None] * n
        self._built_gptr = [0] * n
        self._built_pptr = [-1] * n
        self._device_table: torch.Tensor | None = None
        self._chunk_key: tuple[bool, ...] | None = None
        self._chunk_table: torch.Tensor | None = None
        self._synced: StepPlan | None = None  # the plan the device tables describe
        self._launched = False  # some step of this bucket has launched a kernel

    # ---------------------------------------------------------------------- configuration
    def _derive(self) -> None:
        """The bucket-wide switches and per-member lists that follow from the configs."""
        # Decay switches per bucket, the same for both paths (bitwise identity): a member
        # without decay has zero coefficients, which leave its values unchanged.
        self.coupled_decay = any(c.hyper[K.HYPER_L2] != 0.0 or c.hyper[K.HYPER_L1] != 0.0
                                 for c in self.configs)
        self.decoupled_decay = any(c.hyper[K.HYPER_WD] != 0.0 for c in self.configs)
        self.clip_scale = any(c.clip_index > 0 for c in self.configs)
        self.clip_value = any(c.clip_value for c in self.configs)
        self.maximize = any(c.hyper[K.HYPER_SIGN] != 1.0 for c in self.configs)
        self.clip_index = [c.clip_index for c in self.configs]
        self.norm_owner = [c.norm_owner for c in self.configs]

    def _upload_hyper(self) -> torch.Tensor:
        rows = torch.tensor([c.hyper for c in self.configs], dtype=self.compute_dtype)
        return C.upload(rows, self.device)

    def _tensor_hyper_rows(self) -> list[tuple[int, torch.Tensor, torch.Tensor,
                                               torch.Tensor | None]]:
        """Tensor-valued betas/epsilon: (column, tensor, member rows, conversion buffer)
        refreshed every step with one device copy per (tensor, column) (two when the tensor's
        dtype is not the compute dtype: it is converted into a buffer of its own, not a new
        allocation per step), never a host read."""
        groups: dict[tuple[int, int], tuple[int, torch.Tensor, list[int]]] = {}
        for j, c in enumerate(self.configs):
            for col, t in c.tensor_hypers.items():
                groups.setdefault((col, id(t)), (col, t, []))[2].append(j)
        return [(col, t, C.upload(np.asarray(rows, dtype=np.int64), self.device),
                 None if t.dtype == self.compute_dtype
                 else torch.empty(1, dtype=self.compute_dtype, device=self.device))
                for col, t, rows in groups.values()]

    def set_configs(self, members: dict[int, MemberConfig]) -> None:
        """Replace the configs of ``members`` (member -> config): the hyper-parameter rows
        are uploaded again (asynchronously), the switches re-derived, and the address table
        re-uploaded at its next use when a clip index changed. The pows go on from their
        current values (with new betas they advance by the new betas, as in Paddle)."""
        for j, config in members.items():
            self.configs[j] = config
        old_clip = self.clip_index
        self._derive()
        self.hyper = self._replace(self.hyper, self._upload_hyper())
        self._retire(self._tensor_hypers)
        self._tensor_hypers = self._tensor_hyper_rows()
        if self.clip_index != old_clip:
            self._host_table[:, K.COL_CLIP_INDEX] = self.clip_index
            self._device_table = None  # stale: sync_tables uploads it again

    def fill_columns(self, members: Sequence[int], values: dict[int, float]) -> None:
        """Set hyper-parameter columns (``HYPER_*`` -> a float) of ``members`` to the same
        values, in their configs and on the device (one fill per column, through an index
        tensor uploaded once per member set), without rebuilding the rows."""
        for j in members:
            row = self.configs[j].hyper
            for col, value in values.items():
                row[col] = value
        key = tuple(members)
        index = self._fill_index.get(key)
        if index is None:
            if len(self._fill_index) > 16:  # a few member sets (parameter groups) recur
                self._retire(list(self._fill_index.values()))
                self._fill_index.clear()
            index = C.upload(np.asarray(members, dtype=np.int64), self.device)
            self._fill_index[key] = index
        with C.device_guard(self.device):
            for col, value in values.items():
                self.hyper[:, col].index_fill_(0, index, value)

    def _replace(self, old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        """The device tensor of hyper-parameter rows from now on. A capturable bucket writes
        ``new`` into ``old`` (an asynchronous device copy; the layout never changes), so
        that a CUDA graph captured before reads the new values at its next replay."""
        if self.capturable and old is not None:
            return old.copy_(new)
        return new

    def _retire(self, old: object) -> None:
        """Capturable buckets keep alive the device tensors a captured graph may still
        address: launch tables describe the gradient addresses of their time, which a graph
        captured with them goes on using (its backward writes those gradients), and
        tensor-beta rows. A graph the user should have captured again then reads what it
        was captured with, never freed memory."""
        if self.capturable and old is not None:
            self._retired.append(old)

    # ------------------------------------------------------------------------------ state
    def current_slot(self, j: int) -> int:
        return self.slot if self.slots is None else self.slots[j]

    def capture_blockers(self, plan: StepPlan) -> list[str]:
        """What in ``plan`` a step being captured in a CUDA graph cannot do (the work would
        be recorded once and replayed, or would upload host data): an empty list when the
        step only launches with the arguments of the last step."""
        def named(members: Sequence[int]) -> str:
            names = [self.configs[j].what for j in members[:3]]
            return ", ".join(names) + (f" and {len(members) - 3} more" if len(members) > 3
                                       else "")

        why = []
        if plan.created:
            why.append(f"{named(plan.created)} would get its first step (state is created "
                       "and initialised by an eager step)")
        if plan.changed:
            why.append(f"{named(plan.changed)} has a gradient tensor (or a parameter storage) "
                       "other than at the last step, so the launch tables would be rebuilt")
        if plan.sparse_seen:
            why.append("a gradient is sparse (sparse updates sort row ids into new tensors)")
        if plan.reload_master:
            why.append(f"{named(plan.reload_master)} was written outside the optimizer, so "
                       "its master weights would be reloaded from it")
        if self.needs_tables() and (plan.active != self._chunk_key
                                    or self._device_table is None):
            why.append("the set of parameters with a gradient (or a clip setting) changed "
                       "since the last step, so the launch tables would be rebuilt")
        return why

    def state_view(self, buffer: torch.Tensor, j: int) -> torch.Tensor:
        """Member ``j``'s region of a flat state buffer, shaped like its param (its local
        shard for a DTensor param)."""
        off = self.offsets[j]
        return buffer[off:off + self.numels[j]].view(self.shapes[j])

    def beta_pow(self, j: int, which: int) -> torch.Tensor:
        """Member ``j``'s current ``beta{which+1}_pow`` as a 1-element view (shape [1])."""
        return self.pows[self.current_slot(j), j, which:which + 1]

    # ------------------------------------------------------------------------- validation
    def _check_param(self, j: int, p: torch.Tensor) -> None:
        """Member ``j``'s param (its local shard) is still what its state was laid out for."""
        if (p.shape != self.shapes[j] or p.dtype != self.param_dtype
                or p.device != self.device):
            raise ValueError(
                f"{self.configs[j].what} changed since the optimizer first saw it: its state "
                f"was laid out for {tuple(self.shapes[j])} {self.param_dtype} on {self.device}, "
                f"it is now {tuple(p.shape)} {p.dtype} on {p.device} (e.g. `p.data = t` with "
                "another shape, or a re-initialised module). Restore it, or build a new "
                "optimizer for the new parameter; nothing was updated")
        if not p.is_contiguous():
            raise ValueError(f"{self.configs[j].what} is no longer contiguous (the kernels update "
                             "a parameter in place over its storage); nothing was updated")

    def _validate(self, j: int, g: torch.Tensor) -> torch.Tensor:
        """Check member ``j``'s param and gradient ``g`` (a DTensor for a DTensor param) and
        return what the kernels read: the contiguous local gradient."""
        what = self.configs[j].what
        # A plain gradient is exactly a torch.Tensor: the type test spares plain buckets the
        # DTensor lookup (their validation costs what it did before DTensors were supported).
        if self.has_dtensors or (type(g) is not _TENSOR and D.is_dtensor(g)):
            # The local grad must line up element for element with the local param: same
            # mesh and placements, no Partial (unreduced) gradient. (A DTensor gradient of a
            # plain param is rejected here too.)
            D.check_grad_placement(self.params[j], g, what)
            g = D.local_tensor(g)
            p = self.locals[j]
        else:
            p = self.params[j]
        # The param first: a param replaced by one of another dtype or shape is reported as
        # such, not as a gradient that does not match it.
        self._check_param(j, p)
        if g.layout != torch.strided:
            raise TypeError(f"{what}: a {g.layout} gradient; sparse gradients must be sparse "
                            "COO tensors (as Embedding(sparse=True) makes)")
        allowed = K.grad_dtype_allowed(p.dtype, g.dtype)
        if g.dtype != self.grad_dtype and allowed and not self._launched:
            # Built before any gradient was seen (set_state_dict before the first step): the
            # first gradients decide the launch group's gradient dtype.
            self.grad_dtype = g.dtype
        if g.dtype != self.grad_dtype:
            if allowed:
                raise TypeError(f"{what}: gradient dtype {g.dtype}, but its launch group was "
                                f"built for {self.grad_dtype} gradients: a parameter's gradient "
                                "dtype must not change between steps")
            raise TypeError(f"{what}: gradient dtype {g.dtype} does not go with the "
                            f"parameter's {p.dtype} (fp16/bf16 parameters take their own "
                            "dtype or float32 gradients; others their own dtype)")
        if g.shape != p.shape or g.device != p.device:
            raise ValueError(f"{what}: gradient {tuple(g.shape)} on {g.device} does not match "
                             f"the parameter {tuple(p.shape)} on {p.device}")
        backend.check_runnable(p, what)
        # A gradient with other strides than its parameter (rare: a user-assigned view) is
        # read through a contiguous copy, since the kernels walk both over one flat range.
        return g if g.is_contiguous() else g.contiguous()

    def prepare(self, grads: Sequence[torch.Tensor | None]) -> StepPlan:
        """Validate this step's gradients (None = member not updated); no device work.

        A member whose gradient is the same object at the same address, with its param at the
        same address, both still contiguous, as when it was last launched, is not validated
        again: those five cheap reads are all a step costs per tensor on the host. Anything
        else (a new gradient object, even at a recycled address; a param whose storage was
        replaced) is validated and marked changed, so its table row is rebuilt.

        DTensor members (FSDP2) are checked the same way on their local shards (the grad's
        and the param's ``_local_tensor``); a DTensor gradient's layout (mesh, placements) is
        validated against its param's whenever the member is validated.
        """
        out: list[torch.Tensor | None] = list(grads)
        dgrads: list[torch.Tensor | None] | None = None
        if self.has_dtensors:
            # Sharded members (FSDP2): the kernels see the local shards. The DTensor grads are
            # kept to validate their layout when a member changed; the locals are re-read
            # since FSDP may swap a param's shard (reset_sharded_param, load_state_dict).
            # Plain buckets skip this: their per-tensor work is unchanged.
            dgrads = out
            out = [None if g is None else D.local_tensor(g) for g in dgrads]
            self.locals = [D.local_tensor(p) for p in self.params]
        refs, gptrs, pptrs, params = (self._built_grads, self._built_gptr, self._built_pptr,
                                      self.locals)
        numels = self.numels
        changed = []
        sparse: list[tuple[int, torch.Tensor]] = []
        sparse_seen = False
        for j, g in enumerate(out):
            if g is None:
                continue
            # The steady state first: the gradient the table row describes (a sparse
            # gradient is never remembered), at the same address, its param at the same
            # address with the same size, both contiguous. Anything else (a param whose data
            # was replaced: another storage, dtype or size, a smaller view of its own
            # storage; another gradient) is validated again (shape included) before anything
            # runs.
            ref = refs[j]
            if ref is not None and ref() is g and g.data_ptr() == gptrs[j]:
                p = params[j]
                if (p.data_ptr() == pptrs[j] and p.numel() == numels[j]
                        and g.is_contiguous() and p.is_contiguous()):
                    continue
            if g.is_sparse:
                sparse_seen = True
                g = self._validate_sparse(j, g)
                if g._nnz() == 0:
                    out[j] = None  # an empty sparse gradient changes nothing, pows included
                elif self.configs[j].lazy:
                    out[j] = None  # not in the dense launch: the row kernel updates it
                    sparse.append((j, g))
                else:
                    # lazy_mode=False: absent rows count as zero gradient (Paddle), i.e. the
                    # dense update of the densified gradient (deterministic, no host sync).
                    out[j] = L.dense_grad(g)
                    changed.append(j)
                continue
            out[j] = self._validate(j, g if dgrads is None else dgrads[j])
            changed.append(j)
        active = tuple([g is not None for g in out])
        created = ([j for j, a in enumerate(active) if a and not self.created[j]]
                   if active != self._created_key else [])
        created += [j for j, _ in sparse if not self.created[j]]
        reload_master = []
        if self._seen_version is not None:
            # A param written outside the optimizer (its version counter moved, or its
            # storage was replaced) is the new truth: its master is re-read from it.
            seen, seen_ptr = self._seen_version, self._seen_ptr
            updated = [j for j, g in enumerate(out) if g is not None] + [j for j, _ in sparse]
            reload_master = [j for j in updated if self.created[j] and (
                params[j]._version != seen[j] or params[j].data_ptr() != seen_ptr[j])]
        return StepPlan(out, active, created, changed, sparse, sparse_seen, reload_master)

    def _validate_sparse(self, j: int, g: torch.Tensor) -> torch.Tensor:
        """Check member ``j``'s sparse COO gradient; returns it with contiguous values."""
        p = self.params[j]
        what = self.configs[j].what
        if self.has_dtensors and D.is_dtensor(p):
            raise NotImplementedError(f"{what} is a DTensor (sharded) parameter with a sparse "
                                      "gradient: sparse gradients of DTensor parameters are not "
                                      "supported")
        self._check_param(j, p)
        if g.shape != p.shape or g.device != p.device:
            raise ValueError(f"{what}: sparse gradient {tuple(g.shape)} on {g.device} does "
                             f"not match the parameter {tuple(p.shape)} on {p.device}")
        if g.sparse_dim() != 1:
            raise ValueError(f"{what}: a sparse gradient must be row-sparse (sparse_dim 1, as "
                             f"Embedding(sparse=True) makes), got sparse_dim {g.sparse_dim()}")
        if g.dtype != self.grad_dtype and not (p.dtype in K.LOW_PRECISION
                                               and g.dtype == torch.float32):
            raise TypeError(f"{what}: sparse gradient dtype {g.dtype} does not go with the "
                            f"parameter's {p.dtype}")
        backend.check_runnable(p, what)
        indices = g._indices()
        if indices.dtype != torch.int64:
            raise TypeError(f"{what}: sparse gradient indices are {indices.dtype}, expected "
                            "int64")
        L.check_launchable(p, g)
        if indices.device.type == "cpu" and indices.numel():
            # Row ids outside the table would be skipped by the kernels (they cannot raise);
            # on the host they can be checked for free. (On a GPU that check would be a host
            # sync: there they are skipped, as torch leaves them unchecked too.)
            low, high = torch.aminmax(indices)
            if int(low) < 0 or int(high) >= p.shape[0]:
                raise IndexError(f"{what}: sparse gradient row ids must be in [0, "
                                 f"{p.shape[0]}), got ids from {int(low)} to {int(high)}")
        values = g._values()
        if not values.is_contiguous():
            # A view of the same entries with contiguous values (no host sync, no check).
            g = torch.sparse_coo_tensor(indices, values.contiguous(), g.shape,
                                        is_coalesced=g.is_coalesced())
        return g

    # ---------------------------------------------------------------------------- launches
    def _refresh_tensor_hypers(self) -> None:
        for col, t, rows, buffer in self._tensor_hypers:
            src = t.detach().reshape(1)
            if buffer is not None:
                src = buffer.copy_(src)
            self.hyper[:, col].index_copy_(0, rows, src.expand(rows.numel()))

    def _create(self, members: list[int]) -> None:
        """First step of ``members``: pows of tensor betas start at the tensor's value, and
        master weights are the param cast to float32 (Paddle's ``cast(param, float32)``)."""
        for j in members:
            self._reload_master(j)
            for col, t in self.configs[j].tensor_hypers.items():
                if col in (K.HYPER_BETA1, K.HYPER_BETA2):
                    which = col - K.HYPER_BETA1
                    self.pows[self.current_slot(j), j, which:which + 1].copy_(
                        t.detach().reshape(1))
            self.created[j] = True

    def _reload_master(self, j: int) -> None:
        """Member ``j``'s master becomes its param's value: the param cast to float32, or a
        zero remainder (the pair is then exactly the param)."""
        if self.master is not None:
            self.state_view(self.master, j).copy_(self.locals[j])
        elif self.remainder is not None:
            self.state_view(self.remainder, j).zero_()

    def master_state(self, j: int | None = None) -> torch.Tensor | None:
        """What the kernels take as ``master``: the float32 masters, or the int16 remainders
        of a remainder bucket; member ``j``'s region (shaped like its param), or the flat
        buffer when ``j`` is None; None without master weights."""
        buffer = self.master if self.master is not None else self.remainder
        if buffer is None or j is None:
            return buffer
        return self.state_view(buffer, j)

    def master_of(self, j: int) -> torch.Tensor:
        """Member ``j``'s float32 master weights, shaped like its param: a live view of the
        master buffer, or (remainder buckets) a new tensor rebuilt from the param and its
        remainder, which later steps do not update."""
        if self.master is not None:
            return self.state_view(self.master, j)
        assert self.remainder is not None
        return C.join_master_host(self.locals[j].detach(), self.state_view(self.remainder, j))

    def load_master(self, j: int, master: torch.Tensor) -> None:
        """Make ``master`` (float32, shaped like member ``j``'s param) member ``j``'s
        master. A remainder bucket splits it: the param is written too (it is the master's
        high half, rounded to nearest with ties away from zero), so a load changes the param
        as the next step of the fp32-master mode would."""
        if self.master is not None:
            self.state_view(self.master, j).copy_(master)
            return
        assert self.remainder is not None
        param, rem = C.split_master_host(master.detach().to(self.device))
        with torch.no_grad():
            self.locals[j].copy_(param.view(self.shapes[j]))
        self.state_view(self.remainder, j).copy_(rem.view(self.shapes[j]))

    def needs_tables(self) -> bool:
        """Whether a step uses the device tables (multi-tensor update or a norm pass)."""
        return self.multi_tensor or self.clip_scale

    def launch(self, plan: StepPlan, lr: float | torch.Tensor,
               clip_scales: torch.Tensor | None = None,
               grad_scale: torch.Tensor | None = None,
               found_inf: torch.Tensor | None = None) -> None:
        """Run the step planned by ``prepare`` (the plan must be this step's).

        ``lr`` is a float, or (capturable buckets) the float64 device tensor holding it.
        ``clip_scales`` is the step's clip-scale buffer (entry 0 holds 1), required when a
        member clips by a norm; ``grad_scale`` and ``found_inf`` are AMP's device loss scale
        and overflow flag (a set flag changes nothing but the pow slot, whose pows are
        copied).
        """
        if not any(plan.active) and not plan.sparse:
            return  # no launch, no pow advance: nothing of this bucket had a gradient
        if self.clip_scale and clip_scales is None:
            raise ValueError("this bucket clips by norm: the step's clip scales are needed")
        with C.device_guard(self.device):
            if self._tensor_hypers:
                self._refresh_tensor_hypers()
            if plan.created:
                self._create(plan.created)
            for j in plan.reload_master:
                self._reload_master(j)
            self._created_key = plan.active
            if self.multi_tensor:
                self._launch_multi(plan, lr, clip_scales, grad_scale, found_inf)
            else:
                self._launch_each(plan, lr, clip_scales, grad_scale, found_inf)
        self._launched = True
        self._written(plan)

    def _written(self, plan: StepPlan) -> None:
        """Tell autograd that the kernels wrote the updated params and the state in place
        (their version counters move, so a backward through a graph that saved a param
        before the step raises, as with torch.optim), and remember the params' versions
        after this write (master-weight buckets: the next step compares them)."""
        updated = [p for p, g in zip(self.locals, plan.grads) if g is not None]
        updated += [self.locals[j] for j, _ in plan.sparse]
        buffers = [b for b in (self.moment1, self.moment2, self.moment2_max, self.master,
                               self.remainder, self.pows) if b is not None]
        _increment_version(updated + buffers)
        if self._seen_version is not None:
            for j in [j for j, g in enumerate(plan.grads) if g is not None] + \
                    [j for j, _ in plan.sparse]:
                self._seen_version[j] = self.locals[j]._version
                self._seen_ptr[j] = self.locals[j].data_ptr()

    def adopt_params(self) -> None:
        """Take the params as they are now as the optimizer's own last write: called after
        the state (master weights included) was loaded, so that a param written before the
        load (the model's own checkpoint) does not override the loaded master."""
        if self._seen_version is not None:
            self._seen_version = [p._version for p in self.locals]
            self._seen_ptr = [p.data_ptr() for p in self.locals]

    def _launch_each(self, plan: StepPlan, lr: float | torch.Tensor,
                     clip_scales: torch.Tensor | None, grad_scale: torch.Tensor | None,
                     found_inf: torch.Tensor | None) -> None:
        assert self.slots is not None
        for j, g in enumerate(plan.grads):
            if g is None:
                continue
            s = self.slots[j]
            c = self.clip_index[j]
            K.adam_update_(
                self.locals[j], g, self.state_view(self.moment1, j),
                self.state_view(self.moment2, j),
                None if self.moment2_max is None else self.state_view(self.moment2_max, j),
                self.hyper[j], self.pows[s, j], self.pows[1 - s, j], lr=lr,
                coupled_decay=self.coupled_decay, decoupled_decay=self.decoupled_decay,
                clip_scale=clip_scales[c:c + 1] if self.clip_scale else None,
                clip_value=self.clip_value,
                master=self.master_state(j), grad_scale=grad_scale, found_inf=found_inf,
                maximize=self.maximize,
                bias_from_step=self.bias_from_step,
                stochastic_rounding=self.stochastic_rounding, seed=self.seed,
                rng_stream=self.configs[j].rng_stream, rng_offset=self.configs[j].rng_offset)
            self._advance_slot(j)
            self._remember(j, g)
        for j, g in plan.sparse:
            if self._launch_sparse(j, g, self.slots[j], lr, clip_scales, grad_scale,
                                   found_inf):
                self._advance_slot(j)

    def _advance_slot(self, j: int) -> None:
        """Member ``j``'s pows were written to its other slot (one launch per tensor): flip
        its slot, or (capturable) copy them back into slot 0."""
        assert self.slots is not None
        if self.capturable:
            self.pows[0, j].copy_(self.pows[1, j])
        else:
            self.slots[j] = 1 - self.slots[j]

    def _launch_sparse(self, j: int, g: torch.Tensor, s: int, lr: float | torch.Tensor,
                       clip_scales: torch.Tensor | None, grad_scale: torch.Tensor | None,
                       found_inf: torch.Tensor | None) -> bool:
        """The row kernel for member ``j``: reads pows slot ``s``, writes the other. Clipping
        and AMP act on each row's gradient after its duplicates are summed."""
        c = self.clip_index[j]
        return L.sparse_adam_update_(
            self.locals[j], g, self.state_view(self.moment1, j), self.state_view(self.moment2, j),
            None if self.moment2_max is None else self.state_view(self.moment2_max, j),
            self.hyper[j], self.pows[s, j], self.pows[1 - s, j], lr=lr,
            coupled_decay=self.coupled_decay, decoupled_decay=self.decoupled_decay,
            master=self.master_state(j),
            clip_scale=clip_scales[c:c + 1] if c > 0 else None,
            clip_value=self.configs[j].clip_value, grad_scale=grad_scale, found_inf=found_inf,
            maximize=self.maximize, bias_from_step=self.bias_from_step)

    def _remember(self, j: int, g: torch.Tensor) -> None:
        self._built_grads[j] = weakref.ref(g)
        self._built_gptr[j] = g.data_ptr()
        self._built_pptr[j] = self.locals[j].data_ptr()

    def sync_tables(self, plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """The launch tables for ``plan``, rebuilt only where something changed."""
        if self._synced is plan:
            assert self._device_table is not None and self._chunk_table is not None
            return self._device_table, self._chunk_table
        self._synced = plan
        table = self._host_table
        stale = self._device_table is None or bool(plan.changed)
        for j in plan.changed:
            g = plan.grads[j]
            table[j, K.COL_PARAM_ADDR] = self.locals[j].data_ptr()
            table[j, K.COL_GRAD_ADDR] = g.data_ptr()
            self._remember(j, g)
        if plan.active != self._chunk_key:
            stale = True
            active = np.fromiter(plan.active, dtype=bool, count=len(plan.active))
            table[:, K.COL_ACTIVE] = active
            # An inactive member's gradient may be gone: forget its address.
            table[~active, K.COL_GRAD_ADDR] = 0
            for j in np.flatnonzero(~active):
                self._built_grads[j] = None
            self._retire(self._chunk_table)
            self._chunk_table = upload_table(_chunk_rows(self.numels, plan.active),
                                             self.device)
            self._chunk_key = plan.active
        if stale:
            self._retire(self._device_table)
            self._device_table = upload_table(table, self.device)
        assert self._device_table is not None and self._chunk_table is not None
        return self._device_table, self._chunk_table

    def _launch_multi(self, plan: StepPlan, lr: float | torch.Tensor,
                      clip_scales: torch.Tensor | None, grad_scale: torch.Tensor | None,
                      found_inf: torch.Tensor | None) -> None:
        table, chunks = self.sync_tables(plan)
        s = self.slot
        K.adam_update_tensor_list_(
            table, chunks, self.moment1, self.moment2, self.moment2_max, self.hyper,
            self.pows[s], self.pows[1 - s], lr=lr, param_dtype=self.param_dtype,
            grad_dtype=self.grad_dtype, aligned=True,  # each row's addresses decide, on the device
            coupled_decay=self.coupled_decay, decoupled_decay=self.decoupled_decay,
            clip_scales=clip_scales if self.clip_scale else None, clip_value=self.clip_value,
            master=self.master_state(), grad_scale=grad_scale, found_inf=found_inf,
            maximize=self.maximize, bias_from_step=self.bias_from_step,
            stochastic_rounding=self.stochastic_rounding, seed=self.seed)
        # Sparse (lazy) members after the dense launch, whose pow pass copied their pows into
        # slot 1 - s: the row kernel overwrites them there with the advanced ones.
        for j, g in plan.sparse:
            self._launch_sparse(j, g, s, lr, clip_scales, grad_scale, found_inf)
        if self.capturable:
            self.pows[0].copy_(self.pows[1])  # every member's row of slot 1 was written
        else:
            self.slot = 1 - s

    def norm_chunks(self, active: Sequence[bool], chunk_size: int
                    ) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
        """The norm pass's chunk rows (chunks of ``chunk_size`` elements) for the active
        members that clip by a norm, grouped by clip index, and each clip index's
        ``(start, end)`` range of those rows. Members this rank does not own
        (``MemberConfig.norm_owner``: a replica another rank counts) get no rows; they are
        still scaled by their output's scale."""
        members = [j for j in range(len(self.params)) if active[j] and self.clip_index[j] > 0
                   and self.norm_owner[j]]
        members.sort(key=lambda j: self.clip_index[j])  # stable: parameter order within one
        table = _chunk_rows(self.numels, members, chunk_size)
        ends = np.cumsum(-(-np.asarray(self.numels, dtype=np.int64)[members] // chunk_size))
        ranges: dict[int, tuple[int, int]] = {}
        start = 0
        for j, end in zip(members, ends.tolist()):
            c = self.clip_index[j]
            ranges[c] = (ranges.get(c, (start, start))[0], end)
            start = end
        return table, ranges


def sparse_norm_members(bucket: Bucket, plan: StepPlan) -> list[tuple[int, torch.Tensor]]:
    """The lazy (row-sparse) members of ``plan`` whose gradient enters a norm output this rank
    adds: ``(member, sparse gradient)`` in member order."""
    return [(j, g) for j, g in plan.sparse
            if bucket.clip_index[j] > 0 and bucket.norm_owner[j]]


def _chunk_rows(numels: Sequence[int], members: Sequence[bool] | Sequence[int],
                chunk_size: int = K.CHUNK_SIZE) -> np.ndarray:
    """int32 ``[n_chunks, 2]``: (member, chunk index) for every chunk of ``chunk_size``
    elements of the given members (a boolean mask over all members, or their indices, in the
    order the rows should follow)."""
    members = np.asarray(members)
    if members.dtype == bool:
        members = np.flatnonzero(members)
    members = members.astype(np.int64)
    counts = -(-np.asarray(numels, dtype=np.int64)[members] // chunk_size)
    rows = np.repeat(members, counts)
    firsts = np.repeat(np.cumsum(counts) - counts, counts)
    chunk = np.arange(rows.size, dtype=np.int64) - firsts
    return np.stack([rows, chunk], axis=1).astype(np.int32)


def upload_table(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A launch table on ``device``, uploaded without a host sync (``kernels.common.upload``);
    one function, so that tests can count table rebuilds."""
    return C.upload(array, device)


def _increment_version(tensors: list[torch.Tensor]) -> None:
    """Bump the autograd version counters of ``tensors`` (one call for all of them)."""
    try:
        torch.autograd.graph.increment_version(tensors)
    except TypeError:  # torch releases whose increment_version takes one tensor
        for t in tensors:
            torch.autograd.graph.increment_version(t)


def grad_dtype_of(param: torch.Tensor) -> torch.dtype:
    """The dtype of ``param``'s gradients: its gradient's if it has one, else torch's
    ``grad_dtype`` attribute when set (fp32 gradients of bf16 params), else its own."""
    if param.grad is not None:
        return param.grad.dtype
    return getattr(param, "grad_dtype", None) or param.dtype


def bucket_key(param: torch.Tensor) -> tuple[torch.device, torch.dtype, torch.dtype]:
    """What must be equal for two params to share a launch (the device of a DTensor param is
    its local shard's)."""
    return (D.local_tensor(param).device, param.dtype, grad_dtype_of(param))


def group_into_buckets(params: Sequence[torch.Tensor],
                       make: Callable[[list[int]], Bucket]) -> list[Bucket]:
    """One bucket per ``bucket_key``, members in parameter order, built by ``make(indices)``."""
    by_key: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        by_key.setdefault(bucket_key(p), []).append(i)
    return [make(indices) for indices in by_key.values()]
