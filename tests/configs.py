"""The optimizer configurations the generic checks run: one table, ``CONFIGS``.

A ``Config`` is one way of building ``triton_adam.Adam`` / ``AdamW`` (its builder, for our
library or, where Paddle's CPU build runs it too, for Paddle) together with the facts the
generic checks need about it: the parameters' dtype, per-parameter attributes, whether its
gradients are sparse, the learning-rate scheduler, and what the float64 reference
(``triton_adam.reference`` and ``reference_clip``) is given for each parameter. The checks
that iterate the table:

* ``test_reference.py``: every configuration against the float64 reference, both paths;
* ``test_multi_tensor.py``: the bucketed launch bitwise equal to one launch per parameter;
* ``test_resume.py`` (``resume_worker.py``): a checkpoint resumed in a new process continues
  bit for bit, both paths;
* ``test_paddle_parity.py``: the configurations marked ``paddle`` against real Paddle;
  ``test_state_dict.py`` builds its configurations from the table too, in both libraries.

A configuration works on any list of at least four parameters (named or not): what it does
per parameter is decided by the parameter's index (groups ``[:2]``, ``[2:3]``, ``[3:]``;
``apply_decay_param_fun`` exempts parameter 1; ``need_clip=False`` on parameter 2). Adding a
configuration here adds it to every check above.
"""

from __future__ import annotations

import devices  # noqa: I001  (first: it sets TRITON_INTERPRET before triton is imported)

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

import triton_adam
from triton_adam import reference_clip as RC


# ------------------------------------------------------------------------------- libraries
@dataclass(frozen=True)
class Lib:
    """What a builder takes from a library: triton_adam (``OURS``) or Paddle (``paddle_lib``)."""

    optimizer: object  # the namespace of Adam and AdamW
    regularizer: object  # of L1Decay and L2Decay
    clip: object  # of ClipGradByGlobalNorm, ClipGradByNorm, ClipGradByValue
    lr: object  # the schedulers
    tensor: Callable[[float, Sequence], object]  # a 1-element tensor beside the params
    name_of: Callable[[Sequence, int], str]  # the name the optimizer gives params[i]


def _our_tensor(value: float, params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([value], dtype=params[0].dtype, device=params[0].device)


def _our_name(params: Sequence[torch.Tensor], i: int) -> str:
    # set_param_attr(name=...), else param_{index} (README: "Parameter names")
    return triton_adam.param_name(params[i]) or f"param_{i}"


OURS = Lib(optimizer=triton_adam, regularizer=triton_adam, clip=triton_adam, lr=triton_adam.lr,
           tensor=_our_tensor, name_of=_our_name)


def paddle_lib() -> Lib:
    """Paddle's classes (call only where paddlepaddle is installed: ``needs_paddle``)."""
    paddle = devices.import_paddle()
    return Lib(optimizer=paddle.optimizer, regularizer=paddle.regularizer, clip=paddle.nn,
               lr=paddle.optimizer.lr,
               tensor=lambda value, params: paddle.to_tensor([value], dtype=params[0].dtype),
               name_of=lambda params, i: params[i].name)


# ------------------------------------------------------------------------------- gradients
def dense_grad(rng: np.random.Generator, param: torch.Tensor) -> torch.Tensor:
    """A dense gradient of ``param``'s shape and dtype, on its device (scaled by 0.7: norms
    of a few units, so that every clip of the table bites)."""
    g = rng.standard_normal(tuple(param.shape)) * 0.7
    return torch.from_numpy(g).to(param.dtype).to(param.device)


def sparse_grad(rng: np.random.Generator, param: torch.Tensor) -> torch.Tensor:
    """A row-sparse COO gradient (unsorted ids with a duplicate), as Embedding(sparse=True)."""
    rows = param.shape[0]
    ids = rng.integers(0, rows, size=3)
    ids = np.concatenate([ids, ids[:1]])
    values = rng.standard_normal((len(ids), *param.shape[1:])) * 0.7
    return torch.sparse_coo_tensor(torch.from_numpy(ids).reshape(1, -1),
                                   torch.from_numpy(values).to(param.dtype),
                                   tuple(param.shape), check_invariants=True).to(param.device)


# ------------------------------------------------------------------------------- reference
Grads = list  # per parameter: a gradient, or None (no gradient this step)


def hyper(lr_scale: float = 1.0, beta1: float = 0.9, beta2: float = 0.999,
          epsilon: float = 1e-8, l2: float = 0.0, l1: float = 0.0,
          weight_decay: float = 0.0) -> dict[str, float]:
    """``reference.adam_step``'s keyword arguments but the step's learning rate."""
    return dict(lr_scale=lr_scale, beta1=beta1, beta2=beta2, epsilon=epsilon, l2=l2, l1=l1,
                weight_decay=weight_decay)


def f32(x: float) -> float:
    """``x`` rounded to float32: AdamW keeps its coefficient as Paddle does, in float32."""
    return float(np.float32(x))


def in_dtype(x: float, param: torch.Tensor) -> float:
    """``x`` as a 1-element tensor of ``param``'s dtype holds it (tensor hyper-parameters)."""
    return float(torch.tensor(x, dtype=param.dtype))


@dataclass(frozen=True)
class Reference:
    """What the float64 reference is given for a configuration.

    ``hyper(i, param)``: ``reference.adam_step``'s keyword arguments for ``params[i]`` (but the
    learning rate, which is the step's: the constant or the scheduler's value);
    ``amsgrad``: keep ``moment2_max``; ``clip(grads)``: the float64 gradients after clipping
    (``reference_clip``; None stays None), or None when the configuration does not clip.
    """

    hyper: Callable[[int, torch.Tensor], dict[str, float]] = lambda i, p: hyper()
    amsgrad: bool = False
    clip: Callable[[Grads], Grads] | None = None


def _f64(g):
    """A gradient as the reference clips it: float64 on the CPU; a sparse one with its
    duplicate rows summed (each row enters a norm once, a value clip clamps the sum)."""
    if g is None:
        return None
    g = g.detach().cpu().to(torch.float64)
    return g.coalesce() if g.is_sparse else g


def clip_global(clip_norm: float, no_clip: Sequence[int] = (), auto_skip: bool = False,
                groups: Callable[[int], list[tuple[range, float]]] | None = None
                ) -> Callable[[Grads], Grads]:
    """``ClipGradByGlobalNorm(clip_norm)``: one norm over the gradients present, parameters
    ``no_clip`` left out of it and unclipped. ``groups(n)``: one norm per group instead,
    ``[(indices, clip_norm), ...]`` (group mode: each group clips by its own norm)."""
    def clip(grads: Grads) -> Grads:
        out = [_f64(g) for g in grads]
        for group, c in (groups(len(grads)) if groups else [(range(len(grads)), clip_norm)]):
            members = [i for i in group if out[i] is not None and i not in no_clip]
            norm = RC.global_norm([out[i] for i in members])
            scale = RC.global_norm_scale(norm, c, auto_skip_clip=auto_skip)
            for i in members:
                out[i] = out[i] * scale
        return out
    return clip


def clip_each(clip_one: Callable[[torch.Tensor], torch.Tensor],
              no_clip: Sequence[int] = ()) -> Callable[[Grads], Grads]:
    """A clip applied to each gradient alone (``ClipGradByNorm``, ``ClipGradByValue``)."""
    return lambda grads: [g if g is None or i in no_clip else clip_one(g)
                          for i, g in enumerate(_f64(g) for g in grads)]


# ------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Config:
    """One optimizer configuration and the facts the generic checks need about it.

    ``build(lib, params, learning_rate, **kw)`` builds it with ``lib``'s classes (``kw``:
    ``per_tensor_launches=``, for ours); ``lr``: the learning rate, a float or a scheduler
    factory ``lr(lib)``; ``dtype``: the parameters' dtype in the generic checks;
    ``attrs(i, param)``: per-parameter attributes (``set_param_attr``) to set before the
    optimizer is built; ``sparse``: gradients are row-sparse (``sparse_grad``), else dense;
    ``reference``: the float64 reference's view of it; ``paddle``: compared with Paddle
    3.3.1 step by step in ``test_paddle_parity.py`` (float32 and float64; constant learning
    rate, unnamed optimizer). Builders take Paddle's classes for every configuration Paddle's
    CPU build has (test_state_dict.py builds its scheduled and named ones in both).
    """

    name: str
    build: Callable[..., object]
    lr: float | Callable[[Lib], object] = 0.01
    dtype: torch.dtype = torch.float32
    attrs: Callable[[int, torch.Tensor], None] | None = None
    sparse: bool = False
    reference: Reference = field(default_factory=Reference)
    paddle: bool = False

    def scheduler(self, lib: Lib = OURS):
        """A fresh scheduler of this configuration, None for a constant learning rate."""
        return self.lr(lib) if callable(self.lr) else None

    def make(self, params: Sequence, *, lib: Lib = OURS, learning_rate=None, **kw):
        """The optimizer over ``params`` (``kw``: e.g. ``use_multi_tensor=True``). A
        scheduled configuration is driven by ``learning_rate`` (made with ``scheduler()``,
        stepped by the caller), or by a fresh scheduler nobody steps."""
        if learning_rate is None:
            learning_rate = self.scheduler(lib) if callable(self.lr) else self.lr
        return self.build(lib, list(params), learning_rate, **kw)

    def start(self, params: Sequence, *, lib: Lib = OURS, **kw) -> tuple[object, object]:
        """``(optimizer, scheduler or None)``: ``make`` with a scheduler to step."""
        sched = self.scheduler(lib)
        return self.make(params, lib=lib, learning_rate=sched, **kw), sched

    def set_attrs(self, params: Sequence[torch.Tensor]) -> None:
        """Give ``params`` this configuration's per-parameter attributes."""
        if self.attrs is not None:
            for i, p in enumerate(params):
                self.attrs(i, p)

    def grad(self, rng: np.random.Generator, param: torch.Tensor) -> torch.Tensor:
        """A random gradient of ``param`` in this configuration's form."""
        return (sparse_grad if self.sparse else dense_grad)(rng, param)

    @property
    def amsgrad(self) -> bool:
        return self.reference.amsgrad


# Builders: ``lambda lib, ps, lr, **kw`` (kw: our extensions, e.g. per_tensor_launches).
def _adam(**options):
    return lambda lib, ps, lr, **kw: lib.optimizer.Adam(lr, parameters=ps, **options, **kw)


def _adamw(**options):
    return lambda lib, ps, lr, **kw: lib.optimizer.AdamW(lr, parameters=ps, **options, **kw)


def _not_param_1(lib, ps):
    """``apply_decay_param_fun`` exempting ``params[1]`` (a bias, say), whatever its name."""
    exempt = lib.name_of(ps, 1)
    return lambda name: name != exempt


def _no_clip_2(i: int, p: torch.Tensor) -> None:
    if i == 2:
        triton_adam.set_param_attr(p, need_clip=False)


def _l1_l2_attrs(i: int, p: torch.Tensor) -> None:
    if i == 0:
        triton_adam.set_param_attr(p, regularizer=triton_adam.L1Decay(0.02))
    if i == 2:
        triton_adam.set_param_attr(p, learning_rate=0.5)


def _lr_ratio(p) -> float:
    return 0.5 if p.ndim == 1 else 1.0


def _groups_hyper(i: int, p: torch.Tensor) -> dict[str, float]:
    if i < 2:
        return hyper(lr_scale=0.5, beta1=0.8, l2=0.01)
    if i == 2:
        return hyper(beta2=0.99, epsilon=1e-6, l1=0.01)
    return hyper(lr_scale=2.0, l2=0.05)  # the optimizer's weight_decay


_TABLE = [
    # ---- flat lists; the first eight run against Paddle too
    Config("adam", _adam(), paddle=True),
    Config("adam-weight_decay-float", _adam(weight_decay=0.05), lr=0.02, dtype=torch.float64,
           reference=Reference(lambda i, p: hyper(l2=0.05)), paddle=True),
    Config("adam-L2Decay", lambda lib, ps, lr, **kw: lib.optimizer.Adam(
        lr, beta1=0.8, beta2=0.99, epsilon=1e-6, parameters=ps,
        weight_decay=lib.regularizer.L2Decay(0.1), **kw), lr=0.02,
        reference=Reference(lambda i, p: hyper(beta1=0.8, beta2=0.99, epsilon=1e-6, l2=0.1)),
        paddle=True),
    Config("adam-L1Decay", lambda lib, ps, lr, **kw: lib.optimizer.Adam(
        lr, parameters=ps, weight_decay=lib.regularizer.L1Decay(0.03), **kw), lr=0.02,
        reference=Reference(lambda i, p: hyper(l1=0.03)), paddle=True),
    Config("adam-amsgrad", _adam(amsgrad=True), lr=0.05, reference=Reference(amsgrad=True),
           paddle=True),
    Config("adamw", lambda lib, ps, lr, **kw: lib.optimizer.AdamW(
        lr, parameters=ps, weight_decay=0.1, apply_decay_param_fun=_not_param_1(lib, ps),
        **kw), lr=0.03,
        reference=Reference(lambda i, p: hyper(weight_decay=0.0 if i == 1 else f32(0.1))),
        paddle=True),
    Config("adamw-amsgrad", _adamw(beta1=0.7, amsgrad=True), lr=0.03,
           reference=Reference(lambda i, p: hyper(beta1=0.7, weight_decay=f32(0.01)),
                               amsgrad=True), paddle=True),
    # Tensor betas at Paddle's defaults: a tensor beta starts its pow at the tensor's value
    # (Paddle: at 0.9 / 0.999), so only these values agree with Paddle from the first step.
    Config("adam-betas-as-tensors", lambda lib, ps, lr, **kw: lib.optimizer.Adam(
        lr, beta1=lib.tensor(0.9, ps), beta2=lib.tensor(0.999, ps),
        epsilon=lib.tensor(1e-7, ps), parameters=ps, **kw),
        reference=Reference(lambda i, p: hyper(beta1=in_dtype(0.9, p),
                                               beta2=in_dtype(0.999, p),
                                               epsilon=in_dtype(1e-7, p))), paddle=True),
    # ---- AdamW's per-parameter learning rate (Paddle: GPU only)
    Config("adamw-lr-ratio", lambda lib, ps, lr, **kw: lib.optimizer.AdamW(
        lr, parameters=ps, weight_decay=0.1, lr_ratio=_lr_ratio,
        apply_decay_param_fun=_not_param_1(lib, ps), **kw), lr=0.02,
        reference=Reference(lambda i, p: hyper(lr_scale=_lr_ratio(p),
                                               weight_decay=0.0 if i == 1 else f32(0.1)))),
    # ---- groups with their own learning-rate scale, betas, epsilon and decay (L2, L1, or
    # the optimizer's), per-parameter attributes
    Config("groups-amsgrad", lambda lib, ps, lr, **kw: lib.optimizer.Adam(
        lr, parameters=[
            {"params": ps[:2], "learning_rate": 0.5, "beta1": 0.8, "weight_decay": 0.01},
            {"params": ps[2:3], "beta2": 0.99, "epsilon": 1e-6,
             "weight_decay": lib.regularizer.L1Decay(0.01)},
            {"params": ps[3:], "learning_rate": 2.0}],
        weight_decay=0.05, amsgrad=True, **kw), lr=0.02,
        reference=Reference(_groups_hyper, amsgrad=True)),
    Config("l1-l2-attrs", lambda lib, ps, lr, **kw: lib.optimizer.Adam(
        lr, parameters=ps, weight_decay=lib.regularizer.L2Decay(0.03), **kw),
        attrs=_l1_l2_attrs,
        reference=Reference(lambda i, p: hyper(l1=0.02) if i == 0 else
                            hyper(lr_scale=0.5 if i == 2 else 1.0, l2=0.03))),
    # ---- clipping, with a parameter left out (need_clip=False)
    Config("clip-global-norm", _adam(amsgrad=True,
                                     grad_clip=triton_adam.ClipGradByGlobalNorm(0.8)),
           lr=0.05, attrs=_no_clip_2,
        reference=Reference(amsgrad=True, clip=clip_global(0.8, no_clip=(2,)))),
    Config("clip-global-norm-auto-skip", _adam(
        amsgrad=True, grad_clip=triton_adam.ClipGradByGlobalNorm(0.8, auto_skip_clip=True)),
        lr=0.05, attrs=_no_clip_2,
        reference=Reference(amsgrad=True, clip=clip_global(0.8, no_clip=(2,),
                                                           auto_skip=True))),
    Config("clip-by-norm", _adam(amsgrad=True, grad_clip=triton_adam.ClipGradByNorm(0.3)),
           lr=0.05, attrs=_no_clip_2,
           reference=Reference(amsgrad=True, clip=clip_each(
               lambda g: RC.clip_by_norm([g], 0.3)[0], no_clip=(2,)))),
    Config("clip-by-value", _adam(amsgrad=True, grad_clip=triton_adam.ClipGradByValue(0.2)),
           lr=0.05, attrs=_no_clip_2,
           reference=Reference(amsgrad=True, clip=clip_each(
               lambda g: RC.clip_by_value([g], -0.2, 0.2)[0], no_clip=(2,)))),
    Config("groups-clip", lambda lib, ps, lr, **kw: lib.optimizer.Adam(
        lr, parameters=[
            {"params": ps[:2], "grad_clip": lib.clip.ClipGradByGlobalNorm(0.7)},
            {"params": ps[2:], "learning_rate": 2.0}],  # the optimizer's clip
        grad_clip=lib.clip.ClipGradByGlobalNorm(0.4), amsgrad=True, **kw), lr=0.05,
        reference=Reference(lambda i, p: hyper(lr_scale=1.0 if i < 2 else 2.0), amsgrad=True,
                            clip=clip_global(None, groups=lambda n: [(range(2), 0.7),
                                                                     (range(2, n), 0.4)]))),
    # ---- a named optimizer (its name is in the state dict's keys)
    Config("amsgrad-named-l2", _adam(amsgrad=True, name="myopt", weight_decay=0.01), lr=0.02,
           reference=Reference(lambda i, p: hyper(l2=0.01), amsgrad=True)),
    # ---- schedulers (the user steps them after each optimizer step)
    Config("adam-stepdecay", _adam(), lr=lambda lib: lib.lr.StepDecay(0.05, step_size=2,
                                                                       gamma=0.5)),
    Config("adamw-cosine", lambda lib, ps, lr, **kw: lib.optimizer.AdamW(
        lr, parameters=ps, weight_decay=0.1, apply_decay_param_fun=_not_param_1(lib, ps),
        **kw), lr=lambda lib: lib.lr.CosineAnnealingDecay(0.03, T_max=4),
        reference=Reference(lambda i, p: hyper(weight_decay=0.0 if i == 1 else f32(0.1)))),
    Config("cosine-warm-restarts-adamw", _adamw(weight_decay=0.05),
           lr=lambda lib: lib.lr.CosineAnnealingWarmRestarts(0.05, T_0=2, T_mult=2),
           reference=Reference(lambda i, p: hyper(weight_decay=f32(0.05)))),
    # ---- fp16/bf16 parameters with fp32 master weights (the reference is the masters')
    Config("fp16-master-clip", _adam(multi_precision=True,
                                     grad_clip=triton_adam.ClipGradByGlobalNorm(0.5)),
           dtype=torch.float16, reference=Reference(clip=clip_global(0.5))),
    Config("bf16-master-clip", _adam(multi_precision=True,
                                     grad_clip=triton_adam.ClipGradByGlobalNorm(0.5)),
           dtype=torch.bfloat16, reference=Reference(clip=clip_global(0.5))),
    Config("bf16-master-adamw-amsgrad", _adamw(multi_precision=True, amsgrad=True,
                                               name="myopt"),
           dtype=torch.bfloat16,
           reference=Reference(lambda i, p: hyper(weight_decay=f32(0.01)), amsgrad=True)),
    # ---- sparse gradients, lazy rows
    Config("lazy-sparse", _adam(lazy_mode=True, amsgrad=True), sparse=True,
           reference=Reference(amsgrad=True)),
    # Sparse gradients with clipping or AMP: tests/test_sparse_clip_amp_optimizer.py (the
    # sparse norm pass launches a fixed grid of row programs, a few hundred: seconds per step
    # under the interpreter on these checks' problems). A configuration for them here works
    # as it is (the reference sums a sparse gradient's duplicate rows before clipping).
]

CONFIGS: dict[str, Config] = {c.name: c for c in _TABLE}
assert len(CONFIGS) == len(_TABLE), "configuration names must be unique"

PADDLE_CONFIGS = [name for name, c in CONFIGS.items() if c.paddle]
