"""What a step does to a set of parameters, whatever API drives it: the optimizer engine.

The engine knows Adam's math and how to launch it, and nothing of any front end's names,
argument rules or state formats. A front end (``triton_adam.Adam``, Paddle's API) gives it

* the parameters, once, and a function ``configure(index) -> ParamConfig`` that says how each
  one is updated (learning-rate scale, betas, epsilon, decay, clipping, lazy rows), in the
  engine's own terms; the engine asks when it first needs a parameter's configuration, and
  again when the front end reports a change (``reconfigure``): hyper-parameters are live;
* per step, the learning rate (a host float) and AMP's device loss scale and overflow flag.

A capturable engine (``capturable=True``) can run its step inside ``torch.cuda.graph``
capture and be replayed: the learning rate lives in a float64 device tensor per device that
``set_lr`` writes (outside capture; a replay reads the current value), the pows stay in one
slot, and a step being captured refuses, before any launch, whatever would be recorded once and
replayed wrongly or would upload host data (``Bucket.capture_blockers``).

It owns everything else: the parameters' slots in buckets by (device, dtypes)
(``triton_adam.buckets``), the flat state storage of each bucket under plain accumulator names
(``ACCUMULATORS``), the per-tensor hyper-parameter rows on the device, the launch tables and
their staleness checks, the norm outputs of clipping (``triton_adam.clip_plan``), the launch
sequence of a step (norm pass, finalize, update), master weights and DTensor local shards.

Master weights come in two formats (``master_format``), the same numbers either way: float32
copies (``"fp32"``), or for bf16 parameters the parameter itself plus an int16 remainder per
element (``"remainder"``, ``kernels/common.py``: 2 B less state and 2 B less traffic per
parameter and step, the masters, moments and pows bit-identical to ``"fp32"``; the parameter is
the master rounded to nearest with ties away from zero, where ``"fp32"`` rounds ties to even).
Front ends see float32 masters in both: ``state(i)["master"]`` rebuilds them (a new tensor in
the remainder format, not a live view) and ``load_state`` splits loaded ones (writing the
parameter, the master's high half).

Moments may be kept in bfloat16 (``moment_dtype``: parameters computed in float32; float64 ones
are refused), and bf16 parameters without master weights may be written with stochastic
rounding (``stochastic_rounding``); both round stochastically with Philox bits keyed by
``seed``, each tensor's step count and each element's offset (``kernels/common.py``), so
steps are deterministic, per-tensor and bucketed launches agree bit for bit, and a resumed run
continues the same stream. Front ends still see float32 moments: ``state(i)`` widens bf16
moments (new tensors, exact), ``load_state`` rounds loaded ones to nearest even.

A step, as data::

    grads (param.grad, or given)     -> every bucket validates its members (no device work)
    -> clipping by norm: one norm pass per bucket, one finalize: device clip scales
    -> one update launch per bucket (or one per tensor): p, m, v (+ master, vmax), the pows

Everything is checked before the first launch, so a step that raises changes nothing; no value
is read back from the device; every launch runs on its tensors' device and current stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from triton_adam import backend
from triton_adam import dtensor as D
from triton_adam.buckets import Bucket, MemberConfig, StepPlan, grad_dtype_of, group_into_buckets
from triton_adam.clip_plan import DeviceClipper
from triton_adam.kernels import adam as K
from triton_adam.kernels import norm as N

__all__ = ["ACCUMULATORS", "MASTER_FORMATS", "MOMENT_DTYPES", "Engine", "NormClip", "ParamConfig",
           "ValueClip", "check_storage_options", "zero_in_place"]

# How master weights are kept (see the module docstring).
MASTER_FORMATS = ("fp32", "remainder")
# The dtypes moments may be kept in (see the module docstring).
MOMENT_DTYPES = (torch.float32, torch.bfloat16)


def check_storage_options(*, master_format: object, master_weights: bool, moment_dtype: object,
                          stochastic_rounding: object, seed: object, lazy: bool = False,
                          master_flag: str = "master_weights=True",
                          lazy_flag: str = "lazy_sparse=True") -> None:
    """``master_weight_format``, ``moment_dtype``, ``stochastic_rounding`` and ``seed`` as
    every front end takes them, with its master-weight and lazy switches (``master_flag`` and
    ``lazy_flag`` name them in the messages); raises ValueError / TypeError, changes nothing."""
    if not isinstance(master_format, str) or master_format not in MASTER_FORMATS:
        raise ValueError(f"master_weight_format must be one of {MASTER_FORMATS}, got "
                         f"{master_format!r}")
    if master_format == "remainder" and not master_weights:
        raise ValueError("master_weight_format='remainder' is a way to keep master weights: "
                         f"it needs {master_flag}")
    if moment_dtype not in MOMENT_DTYPES:
        raise ValueError(f"moment_dtype must be torch.float32 or torch.bfloat16, got "
                         f"{moment_dtype!r}")
    if not isinstance(stochastic_rounding, bool):
        raise TypeError(f"stochastic_rounding must be a bool, got "
                        f"{type(stochastic_rounding).__name__}")
    if stochastic_rounding and master_weights:
        raise ValueError("stochastic_rounding=True rounds bfloat16 parameters that have no "
                         "master weights; with master weights the parameter is a rounded copy "
                         "of the master (turn one of them off)")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < K.SEED_LIMIT:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    if lazy and (moment_dtype != torch.float32 or stochastic_rounding):
        # The sparse-row kernel (kernels/lazy.py) has no stochastic rounding yet.
        raise ValueError(f"{lazy_flag} does not support moment_dtype=torch.bfloat16 or "
                         "stochastic_rounding=True yet")


# The engine's names of a parameter's state: the moments (``max_exp_avg_sq`` with amsgrad),
# fp32 master weights (fp16/bf16 parameters with master weights), and the bias-correction
# pows beta1^t, beta2^t and the step count t (shape [1]; t counts the steps applied, and a
# front end that loads pows from a format without it loads it too). Front ends map them to
# their own state formats.
ACCUMULATORS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master", "beta1_pow", "beta2_pow",
                "step")
_BUFFER_OF = {"exp_avg": "moment1", "exp_avg_sq": "moment2", "max_exp_avg_sq": "moment2_max",
              "master": "master"}
_POW_OF = {"beta1_pow": K.POW_BETA1, "beta2_pow": K.POW_BETA2, "step": K.POW_STEP}

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True, eq=False)
class NormClip:
    """Multiply the gradient by a norm's clip scale, computed on the device.

    Parameters whose configurations carry the same ``key`` share one norm, the norm over all
    their gradients (a global norm); ``per_tensor`` parameters each have their own (the key
    then names the parameter). Scale: ``c / max(norm, c)`` for a shared norm (with
    ``auto_skip``: ``c / norm`` only when ``norm > c``, else 1), ``1 if norm <= c else
    c / norm`` per tensor, with ``c = clip_norm``.
    """

    key: Hashable
    clip_norm: float
    per_tensor: bool = False
    auto_skip: bool = False

    @property
    def mode(self) -> int:
        if self.per_tensor:
            return N.MODE_BY_NORM
        return N.MODE_GLOBAL_AUTO_SKIP if self.auto_skip else N.MODE_GLOBAL


@dataclass(frozen=True, eq=False)
class ValueClip:
    """Clamp every gradient element to ``[min, max]`` as the update reads it."""

    min: float
    max: float


@dataclass(frozen=True, eq=False)
class ParamConfig:
    """How one parameter is updated (see ``kernels/adam.py`` for the math).

    ``beta1``, ``beta2`` and ``eps`` are floats or 1-element tensors on the parameter's device
    (read on the device at every step). ``l2``/``l1`` are coupled decay coefficients added to
    the gradient (``l2 * p + l1 * sign(p)``), ``decoupled_decay`` is AdamW's
    ``p -= lr * lr_scale * wd * p``. ``lazy``: a sparse gradient updates only its rows.
    ``label`` names the parameter in error messages. ``maximize``: step along the gradient
    (its sign flipped after clipping, before the decay terms). ``lr_index``: with a device
    learning rate (``Engine(lr_slots=...)``), the entry of the learning-rate vector this
    parameter reads (a parameter group's own rate).
    """

    lr_scale: float = 1.0
    beta1: float | torch.Tensor = 0.9
    beta2: float | torch.Tensor = 0.999
    eps: float | torch.Tensor = 1e-8
    l2: float = 0.0
    l1: float = 0.0
    decoupled_decay: float = 0.0
    clip: NormClip | ValueClip | None = None
    lazy: bool = False
    label: str = "a parameter"
    maximize: bool = False
    lr_index: int = 0


class Engine:
    """The state and the step of one optimizer over ``params``.

    Args:
        params: the tensors to update (contiguous float32/float64/float16/bfloat16, or
            DTensors whose local shards are).
        configure: ``configure(index) -> ParamConfig`` for ``params[index]``.
        amsgrad: keep ``max_exp_avg_sq`` and use it in the denominator.
        master_weights: fp32 master weights for fp16/bf16 parameters.
        master_format: how they are kept (``MASTER_FORMATS``): ``"fp32"`` float32 copies;
            ``"remainder"`` (bf16 parameters only; fp16 ones are refused) the parameter plus
            an int16 remainder, the same master bits (see the module docstring).
        multi_tensor: one launch per bucket instead of one per tensor (same results).
        label_of: ``label_of(index)`` names a parameter in errors raised before any
            configuration exists (default: ``params[index]``).
        capturable: steps may be captured in a CUDA graph and replayed (see the module
            docstring); eager steps give the same results bit for bit.
        lr_slots: with more than one, the learning rate lives on the device (as for
            capturable engines) as a vector of that many float64 entries; each parameter reads
            the entry of its ``ParamConfig.lr_index`` (``set_lr(value, slot)``,
            ``copy_lr(tensor, slot)``).
        device_lr: keep the learning rate on the device even with one slot (a front end
            whose rates change with each group's options).
        bias_from_step: bias corrections ``1 - beta ** t`` from the current betas and the
            step number (torch's), computed in the kernels, instead of the stored pows, the
            product of the betas of every step (Paddle's). Either way the state keeps both.
        moment_dtype: ``torch.float32`` (default: the compute dtype) or ``torch.bfloat16``:
            the moments of parameters computed in float32, stored rounded stochastically.
        stochastic_rounding: write bfloat16 parameters (without master weights) rounded
            stochastically instead of to nearest even; refused with master weights or
            float16 parameters.
        seed: the key of the stochastic rounding's random stream, an int in ``[0, 2^63)``.
    """

    def __init__(self, params: Sequence[torch.Tensor],
                 configure: Callable[[int], ParamConfig], *, amsgrad: bool = False,
                 master_weights: bool = False, multi_tensor: bool = False,
                 label_of: Callable[[int], str] | None = None,
                 capturable: bool = False, lr_slots: int = 1, device_lr: bool = False,
                 bias_from_step: bool = False, master_format: str = "fp32",
                 moment_dtype: torch.dtype = torch.float32, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        check_storage_options(master_format=master_format, master_weights=master_weights,
                              moment_dtype=moment_dtype,
                              stochastic_rounding=stochastic_rounding, seed=seed)
        self.master_format = master_format
        self.moment_dtype = moment_dtype
        self.stochastic_rounding = stochastic_rounding
        self.seed = seed
        self.params = list(params)
        self._configure = configure
        self._label_of = label_of or (lambda i: f"params[{i}]")
        self.amsgrad = bool(amsgrad)
        self.master_weights = bool(master_weights)
        self.multi_tensor = bool(multi_tensor)
        self.capturable = bool(capturable)
        self.bias_from_step = bool(bias_from_step)
        if isinstance(lr_slots, bool) or not isinstance(lr_slots, int) or lr_slots < 1:
            raise ValueError(f"lr_slots must be a positive int, got {lr_slots!r}")
        self.lr_slots = lr_slots
        # The kernels read the learning rate from the device (capturable engines, or one rate
        # per parameter group): a float64 vector per device.
        self.device_lr = self.capturable or lr_slots > 1 or bool(device_lr)
        self._check_params(range(len(self.params)))
        self.devices = {D.local_tensor(p).device for p in self.params}
        self._index_of = {id(p): i for i, p in enumerate(self.params)}
        # Norms over sharded (DTensor) parameters: the process group their sums of squares
        # are all-reduced over and which parameters this rank adds (replicas once). Decided
        # from all the parameters, so that it never depends on which have a gradient.
        self._norm_rule = D.norm_reduction(self.params)
        self._clipper = DeviceClipper(group=self._norm_rule.group, keep_retired=self.capturable)
        self._clip_entries: dict[Hashable, int] = {}  # NormClip.key -> scale-buffer entry
        # Buckets are built when parameters first need state (their first gradient, or a
        # loaded state), from the trainable parameters of that time.
        self._buckets: list[Bucket] = []
        self._where: dict[int, tuple[Bucket, int]] = {}  # index -> (bucket, member)
        self._unbucketed: list[int] = list(range(len(self.params)))
        # Device learning rate: the vector the kernels read, per device, and the value last
        # written into each entry (None: not yet written, or copied from a tensor).
        self._lr_tensors: dict[torch.device, torch.Tensor] = {}
        self._lr_values: list[float | None] = [None] * lr_slots
        self._retired_lr: list[torch.Tensor] = []
        # AMP tensors given in another dtype or on another GPU: converted into buffers of
        # their own, not new tensors at every step.
        self._amp_buffers: dict[tuple[str, torch.device], torch.Tensor] = {}

    def _check_params(self, indices: Iterable[int]) -> None:
        for i in indices:
            p = self.params[i]
            if p.dtype not in SUPPORTED_DTYPES:
                raise TypeError(f"{self._label_of(i)} has dtype {p.dtype}; Adam updates "
                                "float32, float64, float16 and bfloat16 parameters")
            # A DTensor (FSDP2) parameter is updated through its local shard.
            if not D.local_tensor(p).is_contiguous():
                raise ValueError(f"{self._label_of(i)} is not contiguous: the kernels update a "
                                 "parameter in place over its storage")
            if (self.master_weights and self.master_format == "remainder"
                    and p.dtype == torch.float16):
                # bf16 shares fp32's exponent, so (bf16, low 16 bits) is any fp32 value; an
                # fp16 value has 5 exponent bits and cannot be the high half of every master.
                raise TypeError(f"{self._label_of(i)} is float16: master weights as remainders "
                                "are for bfloat16 parameters (an fp16 value and 16 more bits "
                                "cannot hold every float32 master); use master_weight_format="
                                "'fp32' or bfloat16 parameters")
            if self.moment_dtype == torch.bfloat16 and p.dtype == torch.float64:
                raise TypeError(f"{self._label_of(i)} is float64: bfloat16 moments are for "
                                "parameters computed in float32 (float32, bfloat16, float16)")
            if self.stochastic_rounding and p.dtype == torch.float16:
                raise TypeError(f"{self._label_of(i)} is float16: stochastic_rounding writes "
                                "bfloat16 parameters (use bfloat16, or master weights)")
        self._check_no_shared_memory()

    @property
    def draws_random_bits(self) -> bool:
        """Whether steps round stochastically (bf16 moments, or ``stochastic_rounding``):
        then each parameter's step count keys its random stream and is part of its state."""
        return self.moment_dtype != torch.float32 or self.stochastic_rounding

    def add_params(self, params: Sequence[torch.Tensor], lr_slots: int | None = None) -> None:
        """Take more parameters (indices ``len(self.params)`` on, in order), e.g. a new
        parameter group; ``lr_slots``: the new size of the device learning-rate vector (its
        existing entries are kept). Checked before anything changes: a parameter already
        here, or one overlapping another's memory, raises."""
        params = list(params)
        known = set(self._index_of)
        if any(id(p) in known for p in params) or len({id(p) for p in params}) < len(params):
            raise ValueError("a parameter given to add_params is already in this optimizer "
                             "(or given twice)")
        if lr_slots is not None and (isinstance(lr_slots, bool) or not isinstance(lr_slots, int)
                                     or lr_slots < self.lr_slots):
            raise ValueError(f"lr_slots can only grow (from {self.lr_slots}), got {lr_slots!r}")
        first = len(self.params)
        old = self.params
        self.params = old + params
        try:
            self._check_params(range(first, len(self.params)))
            rule = D.norm_reduction(self.params)
            if rule.group is not self._norm_rule.group and self._clipper.outputs:
                raise NotImplementedError("new parameters change the process group of the "
                                          "gradient norm: build a new optimizer")
        except Exception:
            self.params = old
            raise
        self._norm_rule = rule
        self._clipper._group = rule.group
        self.devices = {D.local_tensor(p).device for p in self.params}
        self._index_of.update((id(p), first + k) for k, p in enumerate(params))
        self._unbucketed += list(range(first, len(self.params)))
        if lr_slots is not None and lr_slots > self.lr_slots:
            # From now on the rates live on the device (set_lr / copy_lr for every slot).
            self.device_lr = True
            for device, t in list(self._lr_tensors.items()):
                grown = torch.zeros(lr_slots, dtype=torch.float64, device=device)
                grown[:self.lr_slots].copy_(t)
                self._lr_tensors[device] = grown
                if self.capturable:
                    self._retired_lr.append(t)  # a graph captured before may still read it
            self._lr_values += [None] * (lr_slots - self.lr_slots)
            self.lr_slots = lr_slots
        missing = self.devices - set(self._lr_tensors)
        if self._lr_tensors and missing:
            for device in missing:
                src = next(iter(self._lr_tensors.values()))
                self._lr_tensors[device] = src.to(device, non_blocking=True)

    def _check_no_shared_memory(self) -> None:
        """Two parameters whose storage overlaps would race in one multi-tensor launch (and
        update the shared elements twice per step): refuse them, naming both."""
        spans = []
        for i, p in enumerate(self.params):
            t = D.local_tensor(p)
            size = t.numel() * t.element_size()
            if size and t.device.type != "meta":
                spans.append(((t.device.type, t.device.index or 0), t.data_ptr(),
                              t.data_ptr() + size, i))
        spans.sort(key=lambda span: (span[0], span[1]))
        reach: tuple | None = None  # (device, end, index) of the span reaching furthest
        for device, start, end, i in spans:
            if reach is not None and reach[0] == device and start < reach[1]:
                raise ValueError(
                    f"{self._label_of(reach[2])} and {self._label_of(i)} share memory (one is "
                    "a view of the other, or both view one storage): their updates would "
                    "race. Pass each storage once (tied weights as one parameter)")
            if reach is None or reach[0] != device or end > reach[1]:
                reach = (device, end, i)

    # ------------------------------------------------------------------------ configuration
    def _clip_entry(self, clip: NormClip) -> int:
        """The scale-buffer entry of ``clip``'s norm output (made at its key's first use; a
        later ``clip_norm`` or mode for the same key updates it)."""
        entry = self._clip_entries.get(clip.key)
        if entry is None:
            entry = self._clipper.add_output(clip.mode, clip.clip_norm)
            self._clip_entries[clip.key] = entry
        else:
            self._clipper.set_output(entry, clip.mode, clip.clip_norm)
        return entry

    def _member_config(self, index: int, config: ParamConfig) -> MemberConfig:
        """The bucket's view of ``config``: the hyper-parameter row and the clip entry."""
        param = self.params[index]
        row = [0.0] * K.HYPER_WIDTH
        if not math.isfinite(config.lr_scale):
            raise ValueError(f"{config.label}: its learning-rate scale is {config.lr_scale}")
        row[K.HYPER_LR_SCALE] = config.lr_scale
        tensors: dict[int, torch.Tensor] = {}
        for col, value, name in ((K.HYPER_BETA1, config.beta1, "beta1"),
                                 (K.HYPER_BETA2, config.beta2, "beta2"),
                                 (K.HYPER_EPS, config.eps, "epsilon")):
            if isinstance(value, torch.Tensor):
                if value.device != D.local_tensor(param).device:
                    raise ValueError(f"{name} is a tensor on {value.device} but {config.label} "
                                     f"is on {D.local_tensor(param).device}: keep tensor "
                                     "hyper-parameters on the parameters' device (a "
                                     "cross-device copy would sync)")
                tensors[col] = value
            else:
                row[col] = float(value)
        row[K.HYPER_L2] = config.l2
        row[K.HYPER_L1] = config.l1
        row[K.HYPER_WD] = config.decoupled_decay
        row[K.HYPER_CLIP_MIN] = -math.inf
        row[K.HYPER_CLIP_MAX] = math.inf
        row[K.HYPER_SIGN] = -1.0 if config.maximize else 1.0
        if not 0 <= config.lr_index < self.lr_slots:
            raise ValueError(f"{config.label}: learning-rate index {config.lr_index} is not "
                             f"in [0, {self.lr_slots})")
        row[K.HYPER_LR_INDEX] = float(config.lr_index)
        clip_index, clip_value = 0, False
        if isinstance(config.clip, ValueClip):
            row[K.HYPER_CLIP_MIN] = config.clip.min
            row[K.HYPER_CLIP_MAX] = config.clip.max
            clip_value = True
        elif isinstance(config.clip, NormClip):
            clip_index = self._clip_entry(config.clip)
        return MemberConfig(hyper=row, tensor_hypers=tensors, what=config.label,
                            clip_index=clip_index, clip_value=clip_value, lazy=config.lazy,
                            norm_owner=self._norm_rule.owners[index], rng_stream=index,
                            rng_offset=D.global_offset(param))

    def reconfigure(self, indices: Iterable[int]) -> None:
        """Ask ``configure`` again for ``params[indices]`` (their options changed): the new
        values take effect at the next step, uploaded asynchronously (no host sync, no
        recompile unless a decay or clip switch of a bucket turns on). Every new
        configuration is built before any is applied, so a bad one changes nothing.

        The pows go on from their values (Paddle: a new beta multiplies them from the next
        step on); an engine with ``bias_from_step`` computes its bias corrections from the
        current betas and the step count, so new betas need nothing more."""
        indices = list(indices)
        if self.capturable and any(i in self._where for i in indices) \
                and backend.capturing(self.devices):
            raise RuntimeError(
                "the options of some parameters changed while a CUDA graph is being captured: "
                "their hyper-parameter rows would be uploaded inside the graph. Change them "
                "before the capture (an eager step applies them); nothing was updated")
        fresh: dict[int, MemberConfig] = {}
        for i in indices:
            if i in self._where:
                fresh[i] = self._member_config(i, self._configure(i))
        by_bucket: dict[int, tuple[Bucket, dict[int, MemberConfig]]] = {}
        for i, member in fresh.items():
            bucket, j = self._where[i]
            by_bucket.setdefault(id(bucket), (bucket, {}))[1][j] = member
        for bucket, members in by_bucket.values():
            bucket.set_configs(members)
        if by_bucket:
            self._clipper.invalidate()

    def set_betas(self, indices: Iterable[int], beta1: float, beta2: float) -> None:
        """What ``reconfigure`` does when only the (float) betas of ``params[indices]``
        changed, to the same values for all of them (a scheduler that cycles momentum every
        step, as torch's OneCycleLR does): the two hyper-parameter columns are filled on the
        device (two fills per bucket), no row is rebuilt or uploaded. ``configure`` must give
        these betas from now on (the rows are rebuilt from it at the next reconfigure)."""
        beta1, beta2 = float(beta1), float(beta2)
        if self.capturable and backend.capturing(self.devices):
            raise RuntimeError(
                "the betas of some parameters changed while a CUDA graph is being captured: "
                "the write would be recorded in the graph. Change them before the capture "
                "(an eager step applies them); nothing was updated")
        by_bucket: dict[int, tuple[Bucket, list[int]]] = {}
        where = self._where
        for i in indices:
            found = where.get(i)
            if found is not None:
                by_bucket.setdefault(id(found[0]), (found[0], []))[1].append(found[1])
        for bucket, members in by_bucket.values():
            bucket.fill_columns(members, {K.HYPER_BETA1: beta1, K.HYPER_BETA2: beta2})

    # -------------------------------------------------------------------------- buckets
    def _build_buckets(self, indices: list[int]) -> None:
        """Buckets for parameters ``indices`` (none of them in a bucket yet)."""
        configs = {i: self._member_config(i, self._configure(i)) for i in indices}

        def make(members: list[int]) -> Bucket:
            chosen = [indices[m] for m in members]
            first = self.params[chosen[0]]
            return Bucket([self.params[i] for i in chosen], [configs[i] for i in chosen],
                          amsgrad=self.amsgrad, multi_tensor=self.multi_tensor,
                          grad_dtype=grad_dtype_of(first),
                          multi_precision=self.master_weights, capturable=self.capturable,
                          bias_from_step=self.bias_from_step,
                          master_remainder=self.master_format == "remainder",
                          moment_dtype=self.moment_dtype,
                          stochastic_rounding=self.stochastic_rounding, seed=self.seed)

        for bucket in group_into_buckets([self.params[i] for i in indices], make):
            for j, p in enumerate(bucket.params):
                self._where[self._index_of[id(p)]] = (bucket, j)
            self._buckets.append(bucket)
        self._unbucketed = [i for i in range(len(self.params)) if i not in self._where]

    def ensure_state(self, indices: Iterable[int]) -> None:
        """Make sure ``params[indices]`` have their slots (state storage, not yet created):
        new buckets take every trainable parameter not in one yet (so a model normally has
        one bucket per dtype), plus the given ones."""
        wanted = [i for i in indices if i not in self._where]
        if not wanted:
            return
        rest = [i for i in self._unbucketed
                if self.params[i].requires_grad or self.params[i].grad is not None]
        rest += [i for i in wanted if i not in set(rest)]
        self._build_buckets(sorted(rest))

    # ----------------------------------------------------------------------- learning rate
    def set_lr(self, lr: float, slot: int = 0) -> None:
        """Write the learning rate that the next steps (and graph replays) read from the
        device (capturable engines, or ``lr_slots`` > 1): entry ``slot`` of the vector, one
        asynchronous device fill per device, no host sync. Not allowed while a graph is being
        captured (the fill would be recorded with this value)."""
        self._check_lr_slot(slot)
        lr = float(lr)
        if not math.isfinite(lr):
            raise ValueError(f"the learning rate must be finite, got {lr}")
        if backend.capturing(self.devices):
            raise RuntimeError(
                "the learning rate was set while a CUDA graph is being captured: the write "
                "would be recorded in the graph with this value. Set it (set_lr(), or "
                "scheduler.step()) outside the captured region, before each replay")
        for t in self._lr_storage().values():
            t[slot:slot + 1].fill_(lr)  # a kernel argument, not a copy from the host
        self._lr_values[slot] = lr

    def copy_lr(self, source: torch.Tensor, slot: int = 0) -> None:
        """Copy a one-element tensor learning rate into entry ``slot`` on every device: a
        device copy (allowed during capture, where it is recorded and reads ``source`` at
        each replay). ``source`` must be on a device of the parameters (a host tensor's value
        is plain data: pass ``float(source)`` to ``set_lr``)."""
        self._check_lr_slot(slot)
        if not isinstance(source, torch.Tensor) or source.numel() != 1 \
                or not source.is_floating_point():
            raise TypeError("copy_lr takes a floating tensor with one element")
        if source.device not in self.devices:
            raise ValueError(f"the learning-rate tensor is on {source.device}, the parameters "
                             f"on {sorted(map(str, self.devices))}: a copy from elsewhere "
                             "would sync")
        for t in self._lr_storage().values():
            t[slot:slot + 1].copy_(source.detach().reshape(1), non_blocking=True)
        self._lr_values[slot] = None

    def _check_lr_slot(self, slot: int) -> None:
        if not self.device_lr:
            raise RuntimeError("this engine takes the learning rate as an argument of step(); "
                               "a device learning rate is for capturable engines or lr_slots")
        if not 0 <= slot < self.lr_slots:
            raise IndexError(f"learning-rate slot {slot} is not in [0, {self.lr_slots})")

    def _lr_storage(self) -> dict[torch.device, torch.Tensor]:
        if not self._lr_tensors:
            for device in sorted(self.devices, key=str):
                self._lr_tensors[device] = torch.zeros(self.lr_slots, dtype=torch.float64,
                                                       device=device)
        return self._lr_tensors

    @property
    def lr_tensors(self) -> dict[torch.device, torch.Tensor]:
        """Device learning rate: the float64 vector of each device (empty until the first
        ``set_lr``/``copy_lr``); what the kernels read at every step and replay."""
        return dict(self._lr_tensors)

    # ----------------------------------------------------------------------------- step
    def step(self, lr: float | None, *, grads: Mapping[int, torch.Tensor] | None = None,
             grad_scale: torch.Tensor | None = None, found_inf: torch.Tensor | None = None,
             refuse_sparse: str | None = None) -> None:
        """One step: update every parameter that has a gradient.

        Args:
            lr: the learning rate of this step; with a device learning rate, the value of
                slot 0 (written when it changed; None: the slots are already set).
            grads: ``{index: gradient}`` of the parameters to update; by default each
                trainable parameter's ``.grad`` (None: not updated).
            grad_scale, found_inf: AMP's loss scale and overflow flag (1-element tensors on
                the parameters' device; see ``Adam.step``).
            refuse_sparse: if given, a sparse gradient raises ``RuntimeError(refuse_sparse)``
                (before anything changes).

        A capturable engine writes ``lr`` to its device tensors when it differs from the last
        value written (eagerly; during capture it must not differ: see ``set_lr``).
        """
        capturing = False
        if self.capturable:
            capturing = backend.capturing(self.devices)
            if capturing:
                self._check_capturable_start(lr, grads)
        else:
            backend.check_not_capturing(self.devices)
        if self.device_lr and not capturing and lr is not None \
                and (lr != self._lr_values[0] or not self._lr_tensors):
            self.set_lr(lr)
        if grads is None:
            # After the first step only the (usually no) parameters outside every bucket
            # are looked at here: the buckets check their own members.
            params = self.params
            new = [i for i in self._unbucketed
                   if params[i].requires_grad and params[i].grad is not None]
            if new:
                self.ensure_state(new)
            plans = [(b, b.prepare([p.grad if p.requires_grad else None for p in b.params]))
                     for b in self._buckets]
        else:
            self.ensure_state(grads)
            plans = [(b, b.prepare([grads.get(self._index_of[id(p)]) for p in b.params]))
                     for b in self._buckets]
        self._launch(plans, lr, grad_scale, found_inf, refuse_sparse, capturing)

    def _check_capturable_start(self, lr: float,
                                grads: Mapping[int, torch.Tensor] | None) -> None:
        """A step being captured: the learning rate on the device must be this step's, and
        every parameter with a gradient must have its slot already (a warm-up step)."""
        if not self._lr_tensors or (lr is not None and lr != self._lr_values[0]):
            raise RuntimeError(
                f"a step is being captured with learning rate {lr}, but the device holds "
                f"{self._lr_values[0]}: a capturable step reads the learning rate from the "
                "device, "
                "and writing it during capture would record this value in the graph. Set it "
                "before the capture (an eager warm-up step, set_lr(), scheduler.step())")
        if grads is None:
            new = [i for i in self._unbucketed
                   if self.params[i].requires_grad and self.params[i].grad is not None]
        else:
            new = [i for i in grads if i not in self._where]
        if new:
            raise RuntimeError(
                f"{self._label_of(new[0])} gets its first step while a CUDA graph is being "
                "captured: its state would be allocated and initialised inside the graph. Run "
                "an eager warm-up step with the gradients of the captured step first; nothing "
                "was updated")

    def _launch(self, plans: list[tuple[Bucket, StepPlan]], lr: float,
                grad_scale: torch.Tensor | None, found_inf: torch.Tensor | None,
                refuse_sparse: str | None, capturing: bool = False) -> None:
        # Every bucket was validated (prepare) before this first launch: bad input changes
        # nothing.
        if refuse_sparse is not None and any(plan.sparse_seen for _, plan in plans):
            raise RuntimeError(refuse_sparse)
        clipped = [(b, plan) for b, plan in plans
                   if b.clip_scale and (any(plan.active) or plan.sparse)]
        if capturing:
            self._check_capturable_plans(plans, clipped, grad_scale, found_inf)
        scales = None
        if clipped:
            # Norm clipping: the norm passes and the finalize run before any update reads a
            # gradient; the updates multiply each gradient by its scale as they read it.
            for bucket, plan in clipped:
                bucket.sync_tables(plan)
            scales = self._clipper.scales(clipped, self._on(grad_scale, "grad_scale",
                                                            clipped[0][0]))
        for bucket, plan in plans:
            bucket.launch(plan, self._lr_tensors[bucket.device] if self.device_lr else lr,
                          scales, self._on(grad_scale, "grad_scale", bucket),
                          self._on(found_inf, "found_inf", bucket))

    def _check_capturable_plans(self, plans: list[tuple[Bucket, StepPlan]],
                                clipped: list[tuple[Bucket, StepPlan]],
                                grad_scale: torch.Tensor | None,
                                found_inf: torch.Tensor | None) -> None:
        """Refuse a step being captured that would do more than launch with the arguments of
        the last step (every reason, in one error, before any launch)."""
        why = [reason for bucket, plan in plans for reason in bucket.capture_blockers(plan)]
        if clipped and not self._clipper.is_current(clipped):
            why.append("the clipped gradients differ from the last step's, so the norm "
                       "tables would be rebuilt")
        for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
            if t is not None and any((t.dtype != torch.float32 or t.device != b.device)
                                     and (name, b.device) not in self._amp_buffers
                                     for b, _ in plans):
                why.append(f"{name} is not a float32 tensor on the parameters' device and was "
                           "not given to an eager step before (its conversion buffer would be "
                           "allocated)")
        if why:
            raise RuntimeError(
                "this step cannot be captured in a CUDA graph: " + "; ".join(why) + ". Run an "
                "eager warm-up step with the same gradient tensors and options first (and "
                "keep the gradients between steps: clear_grad() zeroes them in place); "
                "nothing was updated")

    def check_amp(self, grad_scale: object, found_inf: object, where: str = "") -> None:
        """Refuse AMP inputs the kernels cannot read without a host sync: each must be None
        or a dense 1-element tensor on the parameters' kind of device (``where`` prefixes
        the names in the message, e.g. ``"optimizer."``)."""
        kinds = sorted({d.type for d in self.devices})
        for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or t.numel() != 1:
                got = (f"a tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor)
                       else f"a {type(t).__name__}")
                raise TypeError(f"{where}{name} must be a 1-element tensor on the "
                                f"parameters' device (no host sync), got {got}")
            # The kernels read it from device memory: a meta tensor has none, and a tensor on
            # another kind of device would be copied (a host sync) at every step.
            if t.device.type == "meta" or t.layout != torch.strided \
                    or (kinds and t.device.type not in kinds):
                got = (f"a {t.layout} tensor" if t.layout != torch.strided
                       else f"a tensor on {t.device}")
                raise ValueError(f"{where}{name} is {got}; expected a dense 1-element tensor "
                                 f"on the parameters' device ({', '.join(kinds)})")

    def _on(self, t: torch.Tensor | None, name: str, bucket: Bucket) -> torch.Tensor | None:
        """An AMP tensor as the bucket's kernels read it (float32, one element, on its
        device): GradScaler's own tensors as they are; others converted into a buffer kept
        per (name, device), without a host sync (the front end has checked that it is on the
        parameters' kind of device; a copy between two GPUs is asynchronous)."""
        if t is None:
            return None
        t = t.reshape(1)
        if t.dtype == torch.float32 and t.device == bucket.device:
            return t
        buffer = self._amp_buffers.get((name, bucket.device))
        if buffer is None:
            buffer = torch.empty(1, dtype=torch.float32, device=bucket.device)
            self._amp_buffers[(name, bucket.device)] = buffer
        return buffer.copy_(t, non_blocking=True)

    @property
    def buckets(self) -> list[Bucket]:
        """The launch groups built so far (``triton_adam.buckets.Bucket``), for tests and
        tools that inspect the flat state buffers and launch tables."""
        return list(self._buckets)

    def norms(self) -> torch.Tensor | None:
        """The norms of the last clipped step, one per norm output (a device tensor)."""
        return self._clipper.norms()

    # ---------------------------------------------------------------------------- state
    def has_state(self, index: int) -> bool:
        """Whether ``params[index]`` has state (it was updated, or its state was loaded)."""
        where = self._where.get(index)
        return where is not None and where[0].created[where[1]]

    def has_master(self, index: int) -> bool:
        """Whether ``params[index]`` keeps fp32 master weights."""
        return self.master_weights and self.params[index].dtype in K.LOW_PRECISION

    def state_dtype(self, index: int) -> torch.dtype:
        """The dtype of ``params[index]``'s moments and pows (float64 for float64
        parameters, else float32)."""
        return K.compute_dtype_for(self.params[index].dtype)

    def accumulators(self, index: int) -> tuple[str, ...]:
        """The names of ``params[index]``'s state (``ACCUMULATORS`` that apply to it)."""
        names = ["exp_avg", "exp_avg_sq"] + ["max_exp_avg_sq"] * self.amsgrad
        names += ["master"] * self.has_master(index)
        return tuple(names) + ("beta1_pow", "beta2_pow", "step")

    def state(self, index: int) -> dict[str, torch.Tensor]:
        """``params[index]``'s state by accumulator name, empty before it has any.

        Moments and master weights are live views, shaped like the parameter (its local shard
        for a DTensor), except bfloat16 moments (``moment_dtype``), which are widened to
        float32 (new tensors, exact; load them to change the state); the pows are ``[1]`` views of the slot the next step reads, which
        alternates between steps: copy them to keep them. Writing into the views (a load)
        changes the state. Exception: with ``master_format="remainder"`` the master of a bf16
        parameter is a new float32 tensor rebuilt from the parameter and its remainder (the
        value now; later steps do not change it, writing into it changes nothing: load it).
        """
        if not self.has_state(index):
            return {}
        return self._views(index)

    def _views(self, index: int, rebuild_master: bool = True) -> dict[str, torch.Tensor]:
        """The state of ``params[index]`` by name (see ``state``); without
        ``rebuild_master`` (a load's destinations) a remainder-format master is left out (not
        rebuilt) and bf16 moments are the live views (not widened)."""
        bucket, j = self._where[index]
        out = {}
        for name in self.accumulators(index):
            if name == "master" and bucket.master_remainder and not rebuild_master:
                continue
            if name in _POW_OF:
                which = _POW_OF[name]
                out[name] = bucket.pows[bucket.current_slot(j), j, which:which + 1]
            elif name == "master":
                out[name] = bucket.master_of(j)
            else:
                view = bucket.state_view(getattr(bucket, _BUFFER_OF[name]), j)
                if rebuild_master and view.dtype != bucket.compute_dtype:
                    view = view.to(bucket.compute_dtype)  # bf16 moments, widened exactly
                out[name] = view
        return out

    def load_state(self, values: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        """Copy ``values[index][accumulator]`` into the state of those parameters and mark it
        created (the next step continues from it), creating their slots first. The caller
        has checked names, shapes and dtypes (``state_dtype``, the parameter's local shape);
        a value that overlaps this engine's own state is read before anything is written.
        Loaded master weights win over the parameters' current values; a remainder-format
        master is split, and the parameter written (it is the master's high half)."""
        self.ensure_state(values)
        copies = []
        masters = []  # (bucket, member, float32 master) of remainder buckets
        for index, accs in values.items():
            names = self.accumulators(index)
            views = self._views(index, rebuild_master=False)
            bucket, j = self._where[index]
            for name, value in accs.items():
                if name not in names:
                    raise KeyError(f"{self.params_label(index)} has no accumulator {name!r}")
                if name == "master" and bucket.master_remainder:
                    masters.append((bucket, j, value))
                else:
                    copies.append((views[name], value))
        with torch.no_grad():
            # The masters are split (read) before any copy writes the state they may overlap.
            splits = [(bucket, j, value.detach().to(torch.float32).clone())
                      for bucket, j, value in masters]
            for dst, src in self._unalias(copies):
                dst.copy_(src)
            for bucket, j, value in splits:
                bucket.load_master(j, value)
        for index in values:
            bucket, j = self._where[index]
            bucket.created[j] = True  # the first step must not re-initialize what was loaded
        for bucket in self._buckets:
            bucket.adopt_params()

    def params_label(self, index: int) -> str:
        where = self._where.get(index)
        return where[0].configs[where[1]].what if where else self._label_of(index)

    def _unalias(self, copies: list[tuple[torch.Tensor, torch.Tensor]]
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(destination, source)`` pairs safe to copy in any order: a source that overlaps
        this engine's state memory (views of it loaded under other names) is read into a
        copy first, or dropped when it is its own destination."""
        spans = [_span(b) for bucket in self._buckets
                 for b in (bucket.moment1, bucket.moment2, bucket.moment2_max, bucket.master,
                           bucket.remainder, bucket.pows) if b is not None]
        out = []
        for dst, src in copies:
            device, lo, hi = _span(src)
            if not any(device == d and lo < e and s < hi for d, s, e in spans):
                out.append((dst, src))
            elif not (src.data_ptr() == dst.data_ptr() and src.dtype == dst.dtype
                      and src.shape == dst.shape and src.stride() == dst.stride()):
                out.append((dst, src.clone()))
        return out


def zero_in_place(tensors: Iterable[torch.Tensor]) -> None:
    """Zero ``tensors`` (gradients) in place with one ``torch._foreach_zero_`` per (device,
    dtype) group, whatever their number (a sparse tensor is emptied on its own)."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    with torch.no_grad():
        for t in tensors:
            if t.layout != torch.strided:
                t.zero_()
            else:
                groups.setdefault((t.device, t.dtype), []).append(t)
        for group in groups.values():
            torch._foreach_zero_(group)


def _span(t: torch.Tensor) -> tuple[torch.device, int, int]:
    storage = t.untyped_storage()
    return t.device, storage.data_ptr(), storage.data_ptr() + storage.nbytes()


