"""Do the low-precision modes of issue 19 work with everything else the optimizer does?

The modes (``MODES``): bf16 parameters whose fp32 masters are kept as the parameter plus an
int16 remainder (``master_weight_format="remainder"``), with fp32 or bf16 moments; fp32
masters with bf16 moments; fp32 parameters with bf16 moments; bf16 parameters without masters
written with stochastic rounding (``stochastic_rounding=True``), with fp32 or bf16 moments;
amsgrad on every bf16-moment mode; AdamW's decoupled decay on some. Checked in each mode:

* the bucketed launch (the default) against ``per_tensor_launches=True``: params and the
  whole state (moments, masters, pows, step counts) bitwise equal after every step, on
  tensors of 1025 (one block and one element), 1, 17 and 15 elements;
* clipping, all three classes at once (a parameter group each: ``ClipGradByGlobalNorm`` over
  two tensors, ``ClipGradByNorm``, ``ClipGradByValue``, every one active at every step) under
  AMP (a power-of-two ``grad_scale``), step by step against the float64 reference
  (``triton_adam.reference`` with ``reference_clip``) started from the optimizer's own state
  before the step: a value stored in float32 within a few float32 roundings, a value stored
  in bf16 (stochastically rounded moments and parameters) within one bf16 ulp of the
  reference (it is one of the two bf16 neighbours of the float32 result), a bf16 parameter
  with a master exactly the master rounded as its format rounds (ties away from zero for the
  remainder format, to even for fp32 masters);
* the AMP skip (``found_inf`` set, the gradients holding an inf): params and state, the step
  count that keys the random stream included, bitwise unchanged; the bucketed run skips
  before its second gradient and the per-tensor run before its third, and the two agree
  bitwise after every gradient, so the step after a skipped one is the step of a run without
  it;
* ``state_dict`` / ``set_state_dict`` through ``.pdopt`` and ``.pdparams`` files
  (``triton_adam.save`` / ``load``), saved mid-run (just after the skipped step) and loaded
  into a fresh optimizer of the same mode over fresh parameters: the rest of the run bitwise
  equal to the uninterrupted one; the same for the PyTorch face (``torch.save`` of its
  ``state_dict``, fused ``max_grad_norm`` clipping, GradScaler's attributes);
* states crossing modes: fp32 masters -> remainder masters -> fp32 masters with bf16 moments
  continue bitwise (the two formats keep the same masters and moments); float32 moments load
  into bf16 moments rounded to nearest even (the documented rule), and bf16 moments into
  float32 ones exactly.

Capturable steps of these modes are in ``test_capturable.py`` (its ``MODES``), FSDP2 shards in
``test_distributed.py`` and ``test_torch_ecosystem.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import pytest
import torch

import triton_adam
from devices import CUDA_MODE, DEVICE
from triton_adam import optim as topt
from triton_adam import reference as R
from triton_adam import reference_clip as RC
from triton_adam.kernels import adam as K
from triton_adam.kernels.common import split_master_host

pytestmark = pytest.mark.filterwarnings("ignore:Accumulating with FP16 or BF16")

BF16 = torch.bfloat16
SIZES = ((K.BLOCK_SIZE + 1,), (1,), (17,), (3, 5))  # groups: [0, 1] global norm, [2], [3]
LR, BETA1, BETA2, EPS, WD = 1e-2, 0.9, 0.999, 1e-8, 0.05
SEED = 20261130
GRAD_SCALE = 8.0  # a power of two: unscaling is exact
GLOBAL_CLIP, NORM_CLIP, VALUE_MIN, VALUE_MAX = 1.0, 0.5, -0.375, 0.25  # all active (checked)
# A few float32 roundings of the operands (more in CUDA mode: FMA contraction, devices.py).
REL32 = 2e-5 if CUDA_MODE else 1e-6


@dataclass(frozen=True)
class Mode:
    dtype: torch.dtype  # the parameters'
    options: dict = field(default_factory=dict)  # the Paddle face's keyword arguments
    adamw: bool = False  # AdamW (decoupled decay WD) instead of Adam

    @property
    def bf16_moments(self) -> bool:
        return self.options.get("moment_dtype") == BF16

    @property
    def remainder(self) -> bool:
        return self.options.get("master_weight_format") == "remainder"

    @property
    def stochastic_params(self) -> bool:
        return bool(self.options.get("stochastic_rounding"))

    @property
    def random(self) -> bool:
        """Whether the mode draws random bits (its stream is keyed by the step count)."""
        return self.bf16_moments or self.stochastic_params

    def torch_options(self) -> dict:
        names = {"multi_precision": "master_weights"}
        return {names.get(k, k): v for k, v in self.options.items()}


_REM = dict(multi_precision=True, master_weight_format="remainder")
_FP32M = dict(multi_precision=True)
_SR = dict(stochastic_rounding=True)
_M16 = dict(moment_dtype=BF16)
MODES = {
    "remainder": Mode(BF16, _REM),
    "remainder, bf16 moments": Mode(BF16, {**_REM, **_M16}, adamw=True),
    "remainder, bf16 moments, amsgrad": Mode(BF16, {**_REM, **_M16, "amsgrad": True}),
    "fp32 masters, bf16 moments": Mode(BF16, {**_FP32M, **_M16}),
    "fp32 masters, bf16 moments, amsgrad": Mode(BF16, {**_FP32M, **_M16, "amsgrad": True},
                                                adamw=True),
    "fp32 params, bf16 moments": Mode(torch.float32, _M16, adamw=True),
    "fp32 params, bf16 moments, amsgrad": Mode(torch.float32, {**_M16, "amsgrad": True}),
    "stochastic rounding": Mode(BF16, _SR, adamw=True),
    "stochastic rounding, bf16 moments": Mode(BF16, {**_SR, **_M16}),
    "stochastic rounding, bf16 moments, amsgrad": Mode(BF16, {**_SR, **_M16, "amsgrad": True},
                                                       adamw=True),
}
# The PyTorch face: every kind of state once, amsgrad with every bf16-moment kind.
TORCH_MODES = ["remainder", "remainder, bf16 moments, amsgrad", "fp32 masters, bf16 moments",
               "fp32 params, bf16 moments, amsgrad", "stochastic rounding",
               "stochastic rounding, bf16 moments, amsgrad"]

# The calls of a run: a gradient step k (gradients of seed k), or SKIP (an overflow: inf in
# the gradients, found_inf set). Both runs apply gradients 0, 1, 2, skipping at another place.
SKIP = None
SCHEDULES = {"bucketed": (0, SKIP, 1, 2), "per-tensor": (0, 1, SKIP, 2)}
SAVE_AFTER = 2  # the bucketed run's state is saved after its first two calls (0 and SKIP)



def _bits(t: torch.Tensor) -> torch.Tensor:
    ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float64: torch.int64}
    return t.detach().view(ints[t.dtype]) if t.dtype in ints else t.detach()


def _params(mode: Mode, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=gen) + 0.5).to(mode.dtype).to(DEVICE))
            for s in SIZES]


def _grads(params, k) -> list[torch.Tensor]:
    """Gradient step ``k``'s gradients times GRAD_SCALE (exact); SKIP's hold an inf."""
    gen = torch.Generator().manual_seed(1000 + (77 if k is SKIP else k))
    out = []
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen) * (1.0 + (k or 0))
        if k is SKIP and i == 0:
            g.view(-1)[3] = float("inf")
        out.append((g.to(p.dtype) * GRAD_SCALE).to(DEVICE))
    return out


def _amp(skip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.full((1,), GRAD_SCALE, device=DEVICE),
            torch.full((1,), 1.0 if skip else 0.0, device=DEVICE))


def _paddle_opt(mode: Mode, params, **extra):
    groups = [{"params": params[:2], "grad_clip": triton_adam.ClipGradByGlobalNorm(GLOBAL_CLIP)},
              {"params": params[2:3], "grad_clip": triton_adam.ClipGradByNorm(NORM_CLIP)},
              {"params": params[3:],
               "grad_clip": triton_adam.ClipGradByValue(VALUE_MAX, VALUE_MIN)}]
    cls, decay = (triton_adam.AdamW, WD) if mode.adamw else (triton_adam.Adam, None)
    return cls(learning_rate=LR, beta1=BETA1, beta2=BETA2, epsilon=EPS, parameters=groups,
               weight_decay=decay, seed=SEED, **mode.options, **extra)


def _torch_opt(mode: Mode, params):
    cls = topt.AdamW if mode.adamw else topt.Adam
    return cls(params, lr=LR, betas=(BETA1, BETA2), eps=EPS,
               weight_decay=WD if mode.adamw else 0.0, max_grad_norm=GLOBAL_CLIP, seed=SEED,
               **mode.torch_options())


def _snapshot(opt, params) -> list[dict[str, torch.Tensor]]:
    """Each parameter and its whole state (``engine.state``: moments widened to float32,
    masters rebuilt, pows, step), cloned to the CPU."""
    out = []
    for i, p in enumerate(params):
        entry = {k: v.detach().cpu().clone() for k, v in opt.engine.state(i).items()}
        entry["param"] = p.detach().cpu().clone()
        out.append(entry)
    return out


def _initial(mode: Mode, params) -> list[dict[str, torch.Tensor]]:
    """What the first step starts from: zero moments, pows at the betas, the param (and its
    master) as given."""
    out = []
    for p in params:
        p = p.detach().cpu().clone()
        entry = {"param": p, "exp_avg": torch.zeros(p.shape), "exp_avg_sq": torch.zeros(p.shape),
                 "beta1_pow": torch.tensor([BETA1]), "beta2_pow": torch.tensor([BETA2]),
                 "step": torch.zeros(1)}
        if mode.options.get("amsgrad"):
            entry["max_exp_avg_sq"] = torch.zeros(p.shape)
        if mode.options.get("multi_precision"):
            entry["master"] = p.float()
        out.append(entry)
    return out


def _assert_same(a, b, what: str, pows: bool = True, step: bool = True) -> None:
    """Snapshots bitwise equal; without ``pows`` / ``step`` those entries are left out."""
    def keys(entry):
        return sorted(k for k in entry if (pows or not k.endswith("_pow"))
                      and (step or k != "step"))

    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b)):
        assert keys(x) == keys(y), (what, i)
        for k in keys(x):
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, (what, i, k)
            assert torch.equal(_bits(x[k]), _bits(y[k])), f"{what}: params[{i}] {k} differs"


# ------------------------------------------------------------------- the float64 reference
def _ulp_bf16(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 numbers at ``|x|`` (float64 ``x``): 2^(e-8) for |x| in
    [2^(e-1), 2^e); 2^-133 (bf16's subnormal spacing) below the normal range."""
    _, e = torch.frexp(x.abs())
    ulp = torch.ldexp(torch.ones_like(x), e - 8)
    return torch.where(x.abs() < 2.0 ** -126, torch.full_like(x, 2.0 ** -133), ulp)


def _near(actual: torch.Tensor, old: torch.Tensor, ref: torch.Tensor, bf16: bool,
          what: str) -> None:
    """``actual`` (the stored result) against the float64 ``ref`` computed from ``old``: a
    few float32 roundings of the operands, plus 1e-4 of the change (the device's float32
    clip norms against the float64 ones); a bf16 value (stochastically rounded) may be
    either bf16 neighbour of the float32 result: one bf16 ulp more."""
    actual = actual.detach().cpu().double()
    tol = REL32 * (old.abs() + ref.abs()) + 1e-4 * (ref - old).abs() + 1e-30
    if bf16:
        tol = tol + _ulp_bf16(ref.abs() + tol)
    excess = (actual - ref).abs() - tol
    assert (excess <= 0).all(), (f"{what}: off the float64 reference by more than the "
                                 f"tolerance at {int(excess.argmax())} (excess "
                                 f"{float(excess.max()):.3g})")


def _clipped(grads) -> list[torch.Tensor]:
    """The float64 gradients the update should see: unscaled, then each group's clip."""
    g = [x.detach().cpu().double() / GRAD_SCALE for x in grads]
    assert float(RC.global_norm(g[:2])) > GLOBAL_CLIP
    assert float(RC.global_norm(g[2:3])) > NORM_CLIP
    assert bool((g[3] > VALUE_MAX).any() and (g[3] < VALUE_MIN).any())
    return (RC.clip_by_global_norm(g[:2], GLOBAL_CLIP) + RC.clip_by_norm(g[2:3], NORM_CLIP)
            + RC.clip_by_value(g[3:], VALUE_MIN, VALUE_MAX))


def _check_step(mode: Mode, before, after, grads: list[torch.Tensor], what: str) -> None:
    """One applied step, from the state ``before`` to ``after``, against the reference step
    with the float64 gradients ``grads`` (unscaled, clipped)."""
    for i, (b, a, g) in enumerate(zip(before, after, grads)):
        where = f"{what}, params[{i}]"
        has_master = "master" in b
        old = (b["master"] if has_master else b["param"]).double()
        state = R.AdamTensorState(
            param=old, moment1=b["exp_avg"].double(), moment2=b["exp_avg_sq"].double(),
            moment2_max=b["max_exp_avg_sq"].double() if "max_exp_avg_sq" in b else None,
            beta1_pow=float(b["beta1_pow"]), beta2_pow=float(b["beta2_pow"]))
        ref = R.adam_step(state, g, lr=LR, beta1=BETA1, beta2=BETA2, epsilon=EPS,
                          weight_decay=WD if mode.adamw else 0.0)
        for name, old_v, new_v in (("exp_avg", state.moment1, ref.moment1),
                                   ("exp_avg_sq", state.moment2, ref.moment2),
                                   ("max_exp_avg_sq", state.moment2_max, ref.moment2_max)):
            if old_v is not None:
                _near(a[name], old_v, new_v, mode.bf16_moments, f"{where} {name}")
                if mode.bf16_moments:  # bf16 values, widened
                    assert torch.equal(a[name], a[name].to(BF16).float()), (where, name)
        if has_master:
            _near(a["master"], old, ref.param, False, f"{where} master")
            expected = (split_master_host(a["master"])[0] if mode.remainder
                        else a["master"].to(BF16))
            assert torch.equal(_bits(a["param"]), _bits(expected)), f"{where}: param"
        else:
            _near(a["param"], old, ref.param, mode.stochastic_params, f"{where} param")
        # The pows advance by one float32 product each, the step count by one.
        for name, beta in (("beta1_pow", BETA1), ("beta2_pow", BETA2)):
            assert torch.equal(a[name], b[name] * torch.tensor(beta, dtype=torch.float32)), \
                (where, name)
        assert torch.equal(a["step"], b["step"] + 1), where


# ----------------------------------------------------------------- the Paddle face's runs
@dataclass
class Run:
    calls: list  # (k, state before, state after, gradients) per call
    after: dict  # gradient step -> state after it
    saved: tuple | None = None  # (state_dict, {param name: param}) after SAVE_AFTER calls


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    return obj


def _apply(opt, params, schedule, on_call=None) -> None:
    for n, k in enumerate(schedule):
        grads = _grads(params, k)
        for p, g in zip(params, grads):
            p.grad = g
        grad_scale, found_inf = _amp(k is SKIP)
        opt.step(grad_scale=grad_scale, found_inf=found_inf)
        if on_call is not None:
            on_call(n, k, grads)


@functools.lru_cache(maxsize=None)
def _paddle_run(name: str, path: str) -> Run:
    """A run of mode ``name`` on the bucketed or the per-tensor path (cached: the tests of a
    mode share it)."""
    mode = MODES[name]
    params = _params(mode)
    opt = _paddle_opt(mode, params, per_tensor_launches=path == "per-tensor")
    run = Run([], {})
    last = [_initial(mode, params)]

    def record(n, k, grads):
        snap = _snapshot(opt, params)
        run.calls.append((k, last[0], snap, grads))
        last[0] = snap
        if k is not SKIP:
            run.after[k] = snap
        if path == "bucketed" and n + 1 == SAVE_AFTER:
            run.saved = (_clone(opt.state_dict()),
                         {f"param_{i}": p.detach().clone() for i, p in enumerate(params)})

    _apply(opt, params, SCHEDULES[path], record)
    return run


@pytest.mark.parametrize("name", list(MODES))
def test_bucketed_equals_per_tensor_and_a_skipped_step_leaves_no_trace(name):
    """Bucketed (skip before gradient 1) and per-tensor launches (skip before gradient 2):
    params and state bitwise equal after every gradient; each skipped call changed nothing."""
    runs = {path: _paddle_run(name, path) for path in SCHEDULES}
    for k in range(3):
        _assert_same(runs["bucketed"].after[k], runs["per-tensor"].after[k],
                     f"{name}: after gradient {k}, bucketed vs per-tensor")
    for path, run in runs.items():
        skips = [(before, after) for k, before, after, _ in run.calls if k is SKIP]
        assert len(skips) == 1
        _assert_same(skips[0][1], skips[0][0], f"{name} {path}: the skipped step")


@pytest.mark.parametrize("name", list(MODES))
def test_clipping_under_amp_tracks_the_float64_reference(name):
    """Every applied step of both runs against the float64 reference step from the state
    before it: three clip classes, AMP unscaling, decay, amsgrad, the rounding of each
    stored value (see the module docstring)."""
    mode = MODES[name]
    for path in SCHEDULES:
        for n, (k, before, after, grads) in enumerate(_paddle_run(name, path).calls):
            if k is not SKIP:
                _check_step(mode, before, after, _clipped(grads), f"{name} {path} call {n}")


@pytest.mark.parametrize("name", list(MODES))
def test_pdopt_resume_is_bitwise(name, tmp_path):
    """``state_dict`` after the skipped step -> ``.pdopt`` (and the params -> ``.pdparams``)
    -> fresh parameters and a fresh optimizer of the same mode -> ``set_state_dict`` -> the
    remaining gradients: params and state bitwise equal to the uninterrupted run."""
    mode = MODES[name]
    whole = _paddle_run(name, "bucketed")
    state, weights = whole.saved
    triton_adam.save(state, str(tmp_path / "opt.pdopt"))
    triton_adam.save(weights, str(tmp_path / "model.pdparams"))
    loaded_state = triton_adam.load(str(tmp_path / "opt.pdopt"))
    loaded_weights = triton_adam.load(str(tmp_path / "model.pdparams"))
    assert all(v.dtype == torch.float32 for k, v in loaded_state.items()
               if isinstance(v, torch.Tensor) and "moment" in k)  # bf16 moments widened
    params = _params(mode, seed=5)  # another init: the file must restore the params
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(loaded_weights[f"param_{i}"].to(DEVICE))
    opt = _paddle_opt(mode, params)
    opt.set_state_dict(loaded_state)
    _apply(opt, params, SCHEDULES["bucketed"][SAVE_AFTER:])
    # Paddle's format carries the step counts only where they key a random stream (the
    # other modes' bias corrections come from the pows, which it carries).
    _assert_same(_snapshot(opt, params), whole.after[2], f"{name}: resumed from .pdopt",
                 step=mode.random)


# ---------------------------------------------------------------------- the PyTorch face
def _torch_apply(opt, params, schedule) -> None:
    for k in schedule:
        for p, g in zip(params, _grads(params, k)):
            p.grad = g
        opt.grad_scale, opt.found_inf = _amp(k is SKIP)  # GradScaler's fused protocol
        opt.step()


@pytest.mark.parametrize("name", TORCH_MODES)
def test_torch_face_checkpoint_resume_is_bitwise(name, tmp_path):
    """The PyTorch face (``max_grad_norm``, GradScaler's ``grad_scale`` / ``found_inf``):
    ``torch.save`` of the params and ``state_dict()`` after the skipped step, loaded into
    fresh parameters and a fresh optimizer: the rest of the run bitwise equal to the
    uninterrupted one (the pows are rebuilt from the step on load and not read by this
    face's kernels: left out)."""
    mode = MODES[name]
    schedule = SCHEDULES["bucketed"]
    whole_params = _params(mode)
    whole = _torch_opt(mode, whole_params)
    _torch_apply(whole, whole_params, schedule[:SAVE_AFTER])
    torch.save({"model": [p.detach() for p in whole_params], "optim": whole.state_dict()},
               tmp_path / "checkpoint.pt")
    _torch_apply(whole, whole_params, schedule[SAVE_AFTER:])  # on, uninterrupted
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(entry["step"] == 1 for entry in checkpoint["optim"]["state"].values())
    fresh = _params(mode, seed=5)
    with torch.no_grad():
        for p, saved in zip(fresh, checkpoint["model"]):
            p.copy_(saved)
    resumed = _torch_opt(mode, fresh)
    resumed.load_state_dict(checkpoint["optim"])
    _torch_apply(resumed, fresh, schedule[SAVE_AFTER:])
    _assert_same(_snapshot(resumed, fresh), _snapshot(whole, whole_params),
                 f"{name}: torch face resumed", pows=False)


# -------------------------------------------------------------------- crossing modes
CROSS = dict(moment_dtype=BF16, amsgrad=True)


def _plain(params, face: str, fmt: str, **options):
    """An optimizer without clipping over ``params`` with master weights kept as ``fmt``."""
    if face == "paddle":
        return triton_adam.Adam(learning_rate=LR, parameters=params, seed=SEED,
                                multi_precision=True, master_weight_format=fmt, **options)
    return topt.Adam(params, lr=LR, seed=SEED, master_weights=True, master_weight_format=fmt,
                     **options)


def _steps(opt, params, ks) -> None:
    for k in ks:
        for p, g in zip(params, _grads(params, k)):
            p.grad = g / GRAD_SCALE
        opt.step()


def _load(opt, face: str, state) -> None:
    if face == "paddle":
        opt.set_state_dict(state)
    else:
        opt.load_state_dict(state)


@pytest.mark.parametrize("face", ["paddle", "torch"])
def test_master_formats_cross_both_ways_with_bf16_moments(face):
    """bf16 moments, amsgrad: fp32 masters (1 step) -> remainder (1 step) -> fp32 masters
    (1 step), each stage a fresh optimizer over fresh parameters loading the last one's
    state dict: masters, moments and step counts bitwise those of one fp32-master run (the
    formats keep the same masters, so the same moments and random bits), the params each
    format's rounding of the master."""
    mode = Mode(BF16)
    whole_params = _params(mode)
    whole = _plain(whole_params, face, "fp32", **CROSS)
    _steps(whole, whole_params, [0, 1, 2])
    state = None
    for stage, fmt in enumerate(["fp32", "remainder", "fp32"]):
        params = _params(mode, seed=10 * stage)  # after a load, the loaded masters must win
        opt = _plain(params, face, fmt, **CROSS)
        if state is not None:
            _load(opt, face, state)
        _steps(opt, params, [stage])
        state = _clone(opt.state_dict())
        if fmt == "remainder":
            for i, p in enumerate(params):
                assert torch.equal(_bits(p), _bits(split_master_host(
                    opt.engine.state(i)["master"])[0])), i
    _assert_same(_snapshot(opt, params), _snapshot(whole, whole_params),
                 f"{face}: fp32 -> remainder -> fp32", pows=face == "paddle")


@pytest.mark.parametrize("face", ["paddle", "torch"])
def test_float32_moments_load_into_bf16_moments_rounded_to_nearest_even(face):
    """A float32-moment checkpoint (fp32 params, amsgrad, 2 steps) loads into a bf16-moment
    optimizer as its moments rounded to nearest even (not stochastically), pows and step
    carried where the format has them; the next step equals that of an optimizer given the
    rounded moments themselves (bitwise) and the float64 reference (within bf16 rounding).
    Back into float32 moments, bf16 moments load exactly."""
    mode = Mode(torch.float32, dict(moment_dtype=BF16, amsgrad=True))

    def build(params, **options):
        if face == "paddle":
            return triton_adam.Adam(learning_rate=LR, parameters=params, seed=SEED,
                                    amsgrad=True, **options)
        return topt.Adam(params, lr=LR, seed=SEED, amsgrad=True, **options)

    def moments(state):
        if face == "paddle":
            return {k: v for k, v in state.items() if "moment" in k}
        return {(i, k): v for i, entry in state["state"].items() for k, v in entry.items()
                if k != "step"}

    def with_moments(state, fn):
        state = _clone(state)
        if face == "paddle":
            return {k: fn(v) if "moment" in k else v for k, v in state.items()}
        for entry in state["state"].values():
            for k in entry:
                if k != "step":
                    entry[k] = fn(entry[k])
        return state

    source_params = _params(mode)
    source = build(source_params)
    _steps(source, source_params, [0, 1])
    saved = _clone(source.state_dict())
    assert all(v.dtype == torch.float32 for v in moments(saved).values())

    runs = []
    for state in (saved, with_moments(saved, lambda v: v.to(BF16).float())):
        params = [torch.nn.Parameter(p.detach().clone()) for p in source_params]
        opt = build(params, moment_dtype=BF16)
        _load(opt, face, state)
        before = _snapshot(opt, params)
        if not runs:  # the loaded moments: the saved ones rounded to nearest even
            rounded = [0, 0]
            for i, entry in enumerate(before):
                src = source.engine.state(i)
                for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                    want = src[k].detach().cpu().to(BF16).float()
                    assert torch.equal(entry[k], want), (i, k)
                    rounded[0] += int((want != src[k].cpu()).sum())
                    rounded[1] += want.numel()
                if face == "paddle":  # the pows carried (the torch face rebuilds them)
                    assert torch.equal(entry["beta1_pow"], src["beta1_pow"].cpu())
                else:  # the step carried (Paddle's dict of a float32-moment run has none)
                    assert float(entry["step"]) == 2.0
            assert rounded[0] > rounded[1] // 2  # they did need rounding
        _steps(opt, params, [2])
        after = _snapshot(opt, params)
        unscaled = [g.cpu().double() / GRAD_SCALE for g in _grads(params, 2)]
        _check_step(mode, before, after, unscaled, f"{face} loaded")
        runs.append(after)
    _assert_same(runs[0], runs[1], f"{face}: float32 moments vs their rounding, loaded")

    # bf16 moments back into float32 ones: exact.
    params = [torch.nn.Parameter(p.detach().clone()) for p in source_params]
    back = build(params)
    _load(back, face, _clone(opt.state_dict()))
    for i in range(len(params)):
        for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert torch.equal(back.engine.state(i)[k].cpu(), after[i][k]), (i, k)
