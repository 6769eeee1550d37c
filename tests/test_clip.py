"""Gradient clipping: the configurations against real Paddle, the norm kernels against float64.

Tolerances:
* Clip methods vs Paddle, float32: both sides sum float32 squares per tensor and add the
  per-tensor sums in float32, in different orders (torch's cascade sum vs Eigen's packets).
  For the tensors here (at most a few hundred elements) the rounding of such a sum is a random
  walk of a few ulp; the square root halves it and the division and multiply add an ulp each
  (measured: at most 2.4e-7 relative over 30 seeds), so rtol 1e-6 (atol 1e-7 for values near
  zero). float64: the same argument at 2^-53: 1e-12 is far above rounding, far below any
  mistake. ClipGradByValue is exact (the same comparisons with the same rounded bounds).
* Kernels vs the float64 reference, float32 accumulation: a partial is, per lane, a sequential
  sum of at most 16 squares followed by a tree over the 1024 lanes (10 levels), so its
  relative error is at most (1 + 15 + 10) u = 26 * 2^-24 = 1.6e-6 (all terms positive);
  the finalize adds the same kind of bound for its sum. rtol 4e-6 covers both with margin and
  is still 100x below the error of a wrong chunk (a missing 1/1000 of the elements).
  float64 accumulation: the same count at 2^-53, rtol 1e-13 (float32 squares are exact in
  float64, so float32 grads into float64 partials meet it too). Compiled (CUDA mode), a
  contracted ``acc + x * x`` rounds once where the interpreter rounds twice, and ``tl.sum``
  adds each thread's 8 lanes in sequence before a 7-level tree over 128 threads: at most
  16 + 7 + 7 = 30 roundings, 1.8e-6 in float32, still under 4e-6.
* CUDA mode (``tests/devices.py``): the clip methods run torch's CUDA reductions, which sum in
  another order than Paddle's (and torch's) CPU ones; their comparisons with Paddle and the
  reference use at least ``devices.FMA_FLOOR`` (2e-5 in float32 covers a worst-case ordering
  of the 300-element sums here, 300 u = 1.8e-5).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from devices import DEVICE, fma_tol, import_paddle, needs_paddle
from triton_adam import reference_clip as ref
from triton_adam.clip import ClipGradBase, ClipGradByGlobalNorm, ClipGradByNorm, ClipGradByValue
from triton_adam.kernels import adam as K
from triton_adam.kernels import norm as N
from host_syncs import count_host_syncs

paddle = import_paddle()

INF, NAN = float("inf"), float("nan")
PADDLE_CLASSES = {"global": paddle.nn.ClipGradByGlobalNorm, "norm": paddle.nn.ClipGradByNorm,
                  "value": paddle.nn.ClipGradByValue} if paddle else {}
OUR_CLASSES = {"global": ClipGradByGlobalNorm, "norm": ClipGradByNorm, "value": ClipGradByValue}
METHOD_TOL = {"float32": fma_tol("float32", rtol=1e-6, atol=1e-7),
              "float64": fma_tol("float64", rtol=1e-12, atol=1e-14)}
KERNEL_TOL = {torch.float32: dict(rtol=4e-6, atol=0.0), torch.float64: dict(rtol=1e-13, atol=0.0)}


# ---------------------------------------------------------------------------------------------
# Constructor validation: the same outcome (error type or attribute values) as Paddle.

CONSTRUCTOR_CASES = [
    ("global", (1.0,), {}), ("global", (2,), {}), ("global", ("1.5",), {}),
    ("global", (True,), {}), ("global", (np.float32(0.5),), {}), ("global", (-1.0,), {}),
    ("global", (0.0,), {}), ("global", (NAN,), {}), ("global", (None,), {}),
    ("global", ("abc",), {}), ("global", ([1.0],), {}), ("global", (1 + 2j,), {}),
    ("global", (1.0,), dict(auto_skip_clip=True)), ("global", (1.0,), dict(auto_skip_clip=1)),
    ("global", (1.0,), dict(auto_skip_clip=None)), ("global", (1.0,), dict(group_name="g1")),
    ("global", (1.0,), dict(group_name=3)),
    ("norm", (1.0,), {}), ("norm", (3,), {}), ("norm", (0,), {}), ("norm", (-1.0,), {}),
    ("norm", ("2.5",), {}), ("norm", (None,), {}), ("norm", ("abc",), {}), ("norm", ([1.0],), {}),
    ("value", (1.0,), {}), ("value", (2,), dict(min=-3)), ("value", (1.0, None), {}),
    ("value", (-1.0, 1.0), {}), ("value", (-1.0,), {}), ("value", (0.0,), {}),
    ("value", (NAN,), {}), ("value", (None,), {}), ("value", (None, -1.0), {}),
    ("value", ("abc",), {}), ("value", ("2",), {}), ("value", ("2", "-1"), {}),
    ("value", (1.0, "x"), {}), ("value", (np.float64(0.25),), {}),
]
ATTRS = {"global": ("clip_norm", "group_name", "auto_skip_clip"), "norm": ("clip_norm",),
         "value": ("max", "min")}


def construct(cls, args, kwargs):
    try:
        return cls(*args, **kwargs), None
    except Exception as exc:  # the outcome under test
        return None, exc


def same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@needs_paddle
@pytest.mark.parametrize("kind,args,kwargs", CONSTRUCTOR_CASES,
                         ids=[f"{k}-{a!r}-{kw!r}" for k, a, kw in CONSTRUCTOR_CASES])
def test_constructor_validation_matches_paddle(kind, args, kwargs):
    theirs, their_exc = construct(PADDLE_CLASSES[kind], args, kwargs)
    ours, our_exc = construct(OUR_CLASSES[kind], args, kwargs)
    if their_exc is not None:
        assert our_exc is not None, f"Paddle raised {their_exc!r}, we accepted"
        assert isinstance(our_exc, type(their_exc)), (our_exc, their_exc)
    else:
        assert our_exc is None, f"Paddle accepted, we raised {our_exc!r}"
        assert isinstance(ours, ClipGradBase)
        for attr in ATTRS[kind]:
            assert same_value(getattr(ours, attr), getattr(theirs, attr)), attr
        assert str(ours) == str(theirs)


def test_configurations_hold_no_tensors():
    for obj in (ClipGradByGlobalNorm(torch.tensor(2.0), auto_skip_clip=True),
                ClipGradByNorm(torch.tensor(1.5)), ClipGradByValue(torch.tensor(1.0))):
        assert not any(isinstance(v, torch.Tensor) for v in vars(obj).values())


# ---------------------------------------------------------------------------------------------
# The out-of-place clip methods against paddle.nn.ClipGradBy* on the same (param, grad) lists.

def make_pairs(specs, seed=0):
    """``specs``: (numel, dtype, need_clip, grad) with grad None, "rand" or a list of values.

    Returns (paddle pairs, torch pairs on DEVICE) holding equal gradient values.
    """
    rng = np.random.default_rng(seed)
    p_pairs, t_pairs = [], []
    for numel, dtype, need_clip, grad in specs:
        pp = paddle.create_parameter([numel], dtype)
        tp = torch.zeros(numel, dtype=getattr(torch, dtype), device=DEVICE)
        if need_clip is not None:
            pp.need_clip = need_clip
            tp.need_clip = need_clip
        if grad is None:
            p_pairs.append((pp, None))
            t_pairs.append((tp, None))
            continue
        if isinstance(grad, str):
            values = (rng.standard_normal(numel) * rng.uniform(0.1, 3.0)).astype(dtype)
        else:
            values = np.array(grad, dtype=dtype)
        p_pairs.append((pp, paddle.to_tensor(values.copy())))
        t_pairs.append((tp, torch.from_numpy(values.copy()).to(DEVICE)))
    return p_pairs, t_pairs


def index_of(items, x) -> int:
    return next(i for i, item in enumerate(items) if item is x)


def assert_same_clip(ours, theirs, t_params, p_params, exact=False, tol=None):
    """Same pairs (params matched by position), same gradient values."""
    assert len(ours) == len(theirs)
    for (tp, tg), (pp, pg) in zip(ours, theirs):
        assert index_of(t_params, tp) == index_of(p_params, pp)
        if pg is None:
            assert tg is None
            continue
        expected = torch.from_numpy(pg.numpy().copy())
        tg = tg.cpu()
        assert tg.dtype == expected.dtype
        if exact:
            assert torch.equal(tg.isnan(), expected.isnan())
            assert torch.equal(tg.nan_to_num(), expected.nan_to_num())
        else:
            torch.testing.assert_close(
                tg, expected, equal_nan=True,
                **(tol or METHOD_TOL[str(expected.dtype).split(".")[-1]]))


def run_both(kind, ctor_kwargs, specs, seed=0):
    """Clip the same pairs with Paddle and with ours and compare. When float32 grads enter a
    global norm with float64 ones, the float64 results carry the float32 sum's rounding
    (Paddle sums float32 squares in float32 before the float64 total), so the float32
    tolerance applies to every gradient."""
    p_pairs, t_pairs = make_pairs(specs, seed)
    t_inputs = [None if g is None else g.clone() for _, g in t_pairs]
    theirs = PADDLE_CLASSES[kind](**ctor_kwargs)(p_pairs)
    ours = OUR_CLASSES[kind](**ctor_kwargs).clip(t_pairs)
    # Out of place: the inputs are unchanged (Paddle's global-norm clip writes them).
    for (_, g), before in zip(t_pairs, t_inputs):
        if g is not None:
            assert torch.equal(g.nan_to_num(), before.nan_to_num())
    mixed = kind == "global" and len({dtype for _, dtype, _, g in specs if g is not None}) > 1
    assert_same_clip(ours, theirs, [p for p, _ in t_pairs], [p for p, _ in p_pairs],
                     exact=kind == "value", tol=METHOD_TOL["float32"] if mixed else None)
    return ours


def random_specs(dtypes, sizes=(1, 17, 300, 5)):
    return [(n, dtypes[i % len(dtypes)], None, "rand") for i, n in enumerate(sizes)]


def reference_global_norm(specs, seed=0):
    """float64 norm of the gradients that enter the global norm (chooses clip_norm)."""
    _, t_pairs = make_pairs(specs, seed)
    return float(ref.global_norm([g.cpu() for p, g in t_pairs
                                  if g is not None and getattr(p, "need_clip", True) is not False]))


@needs_paddle
@pytest.mark.parametrize("dtypes", [["float32"], ["float64"], ["float32", "float64"]],
                         ids=["fp32", "fp64", "mixed"])
@pytest.mark.parametrize("auto_skip", [False, True], ids=["always", "auto-skip"])
@pytest.mark.parametrize("ratio", [0.3, 3.0], ids=["clips", "below-threshold"])
def test_global_norm_clip_matches_paddle(dtypes, auto_skip, ratio):
    specs = random_specs(dtypes)
    clip_norm = ratio * reference_global_norm(specs)
    ours = run_both("global", dict(clip_norm=clip_norm, auto_skip_clip=auto_skip), specs)
    if auto_skip and ratio > 1:  # no multiply at all: the very same tensors come back
        _, t_pairs = make_pairs(specs)
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(ours, t_pairs))


@needs_paddle
def test_global_norm_clip_need_clip_and_none_grads():
    # The need_clip=False grad is large: counted in the norm it would change every scale.
    specs = [(40, "float32", None, "rand"), (7, "float32", False, [100.0] * 7),
             (9, "float32", True, "rand"), (3, "float32", None, None),
             (5, "float64", False, "rand")]
    clip_norm = 0.5 * reference_global_norm(specs)
    ours = run_both("global", dict(clip_norm=clip_norm), specs)
    assert len(ours) == 4  # the None grad is dropped


@needs_paddle
def test_global_norm_clip_all_filtered_returns_the_input_pairs():
    specs = [(4, "float32", False, "rand"), (3, "float32", None, None)]
    p_pairs, t_pairs = make_pairs(specs)
    theirs = paddle.nn.ClipGradByGlobalNorm(0.1)(p_pairs)
    ours = ClipGradByGlobalNorm(0.1).clip(t_pairs)
    assert len(theirs) == len(ours) == 2 and theirs[1][1] is None
    assert all(a is b and c is d for (a, c), (b, d) in zip(ours, t_pairs))


BY_NORM_SPECS = [(30, None, "rand"), (17, None, [0.01] * 17), (300, True, "rand"),
                 (4, False, [50.0] * 4), (2, None, None), (3, None, [0.0] * 3)]


@needs_paddle
def test_by_norm_clip_matches_paddle():
    # Tensors on both sides of the threshold, a need_clip=False one and a None grad.
    run_both("norm", dict(clip_norm=1.0), [(n, "float32", nc, g) for n, nc, g in BY_NORM_SPECS])


@needs_paddle
def test_by_norm_clip_float64_matches_reference():
    """Paddle 3.3.1 has no float64 clip_by_norm kernel on CPU (RuntimeError); we clip float64
    gradients with a float64 norm, checked against the float64 reference."""
    specs = [(n, "float64", nc, g) for n, nc, g in BY_NORM_SPECS]
    p_pairs, t_pairs = make_pairs(specs)
    with pytest.raises(RuntimeError, match="float64"):
        paddle.nn.ClipGradByNorm(1.0)(p_pairs)
    ours = ClipGradByNorm(1.0).clip(t_pairs)
    kept = [(p, g) for p, g in t_pairs if g is not None]
    assert len(ours) == len(kept)
    for (p, g), (q, out) in zip(kept, ours):
        assert q is p
        g = g.cpu()
        expected = g if getattr(p, "need_clip", True) is False else ref.clip_by_norm([g], 1.0)[0]
        torch.testing.assert_close(out.cpu(), expected, **METHOD_TOL["float64"])


@needs_paddle
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bounds", [dict(max=0.5), dict(max=0.1 + 1e-12, min=-0.3),
                                    dict(max=2.0, min=1.0)], ids=["symmetric", "fine", "positive"])
def test_by_value_clip_matches_paddle(dtype, bounds):
    specs = [(30, dtype, None, "rand"), (4, dtype, False, "rand"), (2, dtype, None, None),
             (5, dtype, None, [0.1, 0.1 + 1e-12, -0.3, NAN, INF])]
    run_both("value", bounds, specs)


@needs_paddle
@pytest.mark.parametrize("bad", [INF, -INF, NAN], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("kind,kwargs", [
    ("global", dict(clip_norm=1.0)), ("global", dict(clip_norm=1.0, auto_skip_clip=True)),
    ("norm", dict(clip_norm=1.0)), ("value", dict(max=1.0))],
    ids=["global", "global-auto-skip", "norm", "value"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_finite_grads_match_paddle(kind, kwargs, bad, dtype):
    specs = [(3, dtype, None, [1.0, bad, 2.0]), (2, dtype, None, [3.0, 4.0]),
             (6, dtype, None, "rand")]
    if kind == "norm" and dtype == "float64":  # no Paddle kernel: the float64 reference
        _, t_pairs = make_pairs(specs)
        grads = [g.cpu() for _, g in t_pairs]
        for (_, out), expected in zip(ClipGradByNorm(**kwargs).clip(t_pairs),
                                      ref.clip_by_norm(grads, kwargs["clip_norm"])):
            torch.testing.assert_close(out.cpu(), expected, equal_nan=True,
                                       **METHOD_TOL["float64"])
        return
    run_both(kind, kwargs, specs)


@needs_paddle
def test_mixed_precision_global_norm_sums_in_float64():
    """With a float64 grad present the float32 grads' sum enters a float64 norm; the scale is
    cast to each grad's dtype."""
    specs = [(100, "float32", None, "rand"), (3, "float64", None, "rand"),
             (50, "float32", None, "rand")]
    _, t_pairs = make_pairs(specs)
    clip = ClipGradByGlobalNorm(0.2)
    norm = clip.global_norm(t_pairs)
    assert norm.dtype == torch.float64
    torch.testing.assert_close(norm.cpu(), ref.global_norm([g.cpu() for _, g in t_pairs]),
                               **fma_tol("float32", rtol=1e-7, atol=0))
    run_both("global", dict(clip_norm=0.2), specs)


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)],
                         ids=["fp16", "bf16"])
def test_half_precision_grads_use_float32_norms(dtype, rtol):
    """Paddle's CPU build has no fp16/bf16 clip kernels; ours sums their squares in float32.
    Against the float64 reference the result differs by the rounding of the scale and of the
    product to the grad's dtype (2^-11 each for fp16, 2^-8 for bf16), hence rtol 4 ulp."""
    grads = random_grads([300, 17, 1], dtype)
    pairs = [(torch.zeros(g.shape, device=DEVICE), g) for g in grads]
    norm = ClipGradByGlobalNorm(1.0).global_norm(pairs)
    assert norm.dtype == torch.float32
    host = [g.cpu() for g in grads]
    torch.testing.assert_close(norm.cpu().double(), ref.global_norm(host),
                               **fma_tol("float32", rtol=1e-6, atol=0))
    for clip, expected in [(ClipGradByGlobalNorm(1.0), ref.clip_by_global_norm(host, 1.0)),
                           (ClipGradByNorm(1.0), ref.clip_by_norm(host, 1.0)),
                           (ClipGradByValue(0.5), ref.clip_by_value(host, -0.5, 0.5))]:
        for (_, out), e in zip(clip.clip(pairs), expected):
            assert out.dtype == dtype
            torch.testing.assert_close(out.cpu().double(), e, rtol=rtol, atol=1e-6)


@needs_paddle
@pytest.mark.parametrize("kind,kwargs", [("norm", dict(clip_norm=0.0)),
                                         ("norm", dict(clip_norm=-2.0)),
                                         ("value", dict(max=-1.0, min=1.0))])
def test_clip_time_errors_match_paddle(kind, kwargs):
    p_pairs, t_pairs = make_pairs([(3, "float32", None, "rand")])
    with pytest.raises(ValueError):
        PADDLE_CLASSES[kind](**kwargs)(p_pairs)
    with pytest.raises(ValueError):
        OUR_CLASSES[kind](**kwargs).clip(t_pairs)
    # Nothing to clip, nothing checked (Paddle too).
    p_pairs, t_pairs = make_pairs([(3, "float32", False, "rand"), (2, "float32", None, None)])
    assert len(PADDLE_CLASSES[kind](**kwargs)(p_pairs)) == 1
    assert len(OUR_CLASSES[kind](**kwargs)(t_pairs)) == 1


# ---------------------------------------------------------------------------------------------
# The norm kernels against the float64 reference.

def build_tables(grads, chunk_size):
    """The multi-tensor tables, built by hand: one tensor row per grad, one chunk row per
    ``chunk_size`` elements. Returns (tensor_table, chunk_table, per-tensor chunk ranges),
    the tables on DEVICE."""
    table = torch.zeros(len(grads), K.TABLE_WIDTH, dtype=torch.int64)
    rows, ranges = [], []
    for i, g in enumerate(grads):
        table[i, K.COL_GRAD_ADDR] = g.data_ptr()
        table[i, K.COL_NUMEL] = g.numel()
        first = len(rows)
        rows += [[i, c] for c in range(-(-g.numel() // chunk_size))]
        ranges.append((first, len(rows)))
    chunks = torch.tensor(rows, dtype=torch.int32).reshape(-1, 2)
    return table.to(DEVICE), chunks.to(DEVICE), ranges


def aligned(grads) -> bool:
    return all(g.data_ptr() % 16 == 0 for g in grads)


class Buckets:
    """Several buckets of grads (one dtype each) writing slices of one partials buffer."""

    def __init__(self, buckets, acc_dtype, chunk_size=K.CHUNK_SIZE, poison=True):
        self.buckets = buckets
        self.tables = [build_tables(grads, chunk_size) for grads in buckets]
        self.offsets = [0]
        for _, chunks, _ in self.tables:
            self.offsets.append(self.offsets[-1] + chunks.shape[0])
        self.chunk_size = chunk_size
        self.partials = torch.full((self.offsets[-1] + 3,), NAN if poison else 0.0,
                                   dtype=acc_dtype, device=DEVICE)  # 3 spares stay untouched

    def tensor_range(self, b, i):
        """The partial range of tensor ``i`` of bucket ``b``."""
        lo, hi = self.tables[b][2][i]
        return (self.offsets[b] + lo, self.offsets[b] + hi)

    def run_pass(self):
        for b, grads in enumerate(self.buckets):
            table, chunks, _ = self.tables[b]
            N.sum_squares_tensor_list_(
                table, chunks, self.partials[self.offsets[b]:self.offsets[b + 1]],
                grad_dtype=grads[0].dtype, aligned=aligned(grads), chunk_size=self.chunk_size)


def finalize(partials, outputs, clip_norms):
    segments, out_table = N.finalize_tables(outputs, partials.device)
    norms = torch.full((len(outputs),), NAN, dtype=partials.dtype, device=partials.device)
    scales = torch.full((len(outputs),), NAN, dtype=partials.dtype, device=partials.device)
    N.clip_scales_(partials, segments, out_table,
                   torch.tensor(clip_norms, dtype=torch.float64, device=partials.device),
                   norms, scales)
    return norms.cpu(), scales.cpu()


def random_grads(sizes, dtype, scale=1.0):
    """Gradients on DEVICE (drawn on the CPU: the same values on every device)."""
    return [(torch.randn(n, dtype=torch.float64) * scale * (1 + i)).to(dtype).to(DEVICE)
            for i, n in enumerate(sizes)]


BLOCK = K.BLOCK_SIZE
CHUNK_SIZES = sorted({K.CHUNK_SIZE, N.NORM_CHUNK_SIZE})


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES, ids=[f"chunk{c}" for c in CHUNK_SIZES])
@pytest.mark.parametrize("grad_dtype,acc_dtype", [
    (torch.float16, torch.float32), (torch.bfloat16, torch.float32),
    (torch.float32, torch.float32), (torch.float64, torch.float64),
    (torch.float32, torch.float64)], ids=["fp16", "bf16", "fp32", "fp64", "fp32-into-fp64"])
def test_partials_match_float64_reference(grad_dtype, acc_dtype, chunk_size):
    sizes = [1, 17, BLOCK + 1, chunk_size + 3, 2 * BLOCK]
    grads = random_grads(sizes, grad_dtype)
    run = Buckets([grads], acc_dtype, chunk_size)
    run.run_pass()
    expected = torch.cat([torch.stack([ref.sum_of_squares(g[c * chunk_size:(c + 1) * chunk_size])
                                       for c in range(-(-g.numel() // chunk_size))])
                          for g in (g.cpu() for g in grads)])
    n = run.offsets[-1]
    assert run.partials[n:].isnan().all(), "wrote past its slice"
    torch.testing.assert_close(run.partials[:n].cpu().to(torch.float64), expected,
                               **KERNEL_TOL[acc_dtype])


@pytest.mark.parametrize("acc_dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_several_groups_and_per_tensor_norms(acc_dtype):
    sizes = [5, BLOCK + 1, 17, 1, 2 * BLOCK + 7, 300, 64]
    grads = random_grads(sizes, acc_dtype)
    run = Buckets([grads], acc_dtype)
    run.run_pass()
    grads = [g.cpu() for g in grads]  # the reference's, on the CPU
    groups = [[0, 1], [2, 3, 4], [5, 6]]  # consecutive rows: one segment per group
    ref_norms = [float(ref.global_norm([grads[i] for i in g])) for g in groups]
    outputs, clip_norms, expected = [], [], []
    # Group 0 clips always, group 1 auto-skips below the threshold, group 2 auto-skip clips.
    for g, mode, ratio in zip(groups, (N.MODE_GLOBAL, N.MODE_GLOBAL_AUTO_SKIP,
                                       N.MODE_GLOBAL_AUTO_SKIP), (0.4, 2.0, 0.7)):
        lo, hi = run.tensor_range(0, g[0])[0], run.tensor_range(0, g[-1])[1]
        outputs.append(([(lo, hi)], mode))
        c = ratio * ref_norms[len(clip_norms)]
        expected.append((ref.global_norm([grads[i] for i in g]),
                         ref.global_norm_scale(ref.global_norm([grads[i] for i in g]), c,
                                               auto_skip_clip=mode == N.MODE_GLOBAL_AUTO_SKIP)))
        clip_norms.append(c)
    # ClipGradByNorm outputs, one per tensor, on both sides of clip_norm = 3.
    for i, g in enumerate(grads):
        outputs.append(([run.tensor_range(0, i)], N.MODE_BY_NORM))
        clip_norms.append(3.0)
        norm = ref.sum_of_squares(g).sqrt()
        expected.append((norm, ref.by_norm_scale(norm, 3.0)))
    assert any(float(n) > 3 for n, _ in expected[3:]) and any(float(n) < 3 for n, _ in expected[3:])
    norms, scales = finalize(run.partials, outputs, clip_norms)
    torch.testing.assert_close(norms.to(torch.float64), torch.stack([e[0] for e in expected]),
                               **KERNEL_TOL[acc_dtype])
    torch.testing.assert_close(scales.to(torch.float64), torch.stack([e[1] for e in expected]),
                               **KERNEL_TOL[acc_dtype])
    assert scales[1] == 1.0  # below the threshold: exactly 1, not c / c
    assert all(scales[3 + i] == 1.0 for i, (n, _) in enumerate(expected[3:]) if float(n) < 3)


@pytest.mark.parametrize("dtypes,acc_dtype", [
    ((torch.float32, torch.float64, torch.bfloat16), torch.float64),
    ((torch.float16, torch.bfloat16, torch.float32), torch.float32)],
    ids=["into-fp64", "into-fp32"])
def test_buckets_combine_into_one_global_norm(dtypes, acc_dtype):
    buckets = [random_grads(sizes, d) for sizes, d in
               zip(([BLOCK + 1, 3], [17, 2 * BLOCK + 5], [1, 100]), dtypes)]
    run = Buckets(buckets, acc_dtype)
    run.run_pass()
    buckets = [[g.cpu() for g in bucket] for bucket in buckets]  # the reference's
    all_grads = [g for bucket in buckets for g in bucket]
    c = 0.25 * float(ref.global_norm(all_grads))
    # One output summing every bucket's slice, a second one over a group spanning two buckets.
    outputs = [([(run.offsets[b], run.offsets[b + 1]) for b in range(3)], N.MODE_GLOBAL),
               ([run.tensor_range(0, 1), run.tensor_range(2, 0)], N.MODE_GLOBAL)]
    norms, scales = finalize(run.partials, outputs, [c, c])
    group = [buckets[0][1], buckets[2][0]]
    expected_norms = torch.stack([ref.global_norm(all_grads), ref.global_norm(group)])
    torch.testing.assert_close(norms.to(torch.float64), expected_norms, **KERNEL_TOL[acc_dtype])
    torch.testing.assert_close(
        scales.to(torch.float64),
        torch.stack([ref.global_norm_scale(n, c) for n in expected_norms]), **KERNEL_TOL[acc_dtype])


@pytest.mark.parametrize("bad", [INF, NAN, None], ids=["inf", "nan", "finite"])
@pytest.mark.parametrize("acc_dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_non_finite_norms_give_paddles_scales(acc_dtype, bad):
    grads = random_grads([BLOCK + 3, 9], acc_dtype)
    if bad is not None:
        grads[0][BLOCK + 1] = bad
    run = Buckets([grads], acc_dtype)
    run.run_pass()
    whole = [(0, run.offsets[-1])]
    outputs = [(whole, N.MODE_GLOBAL), (whole, N.MODE_GLOBAL_AUTO_SKIP),
               ([run.tensor_range(0, 0)], N.MODE_BY_NORM),
               ([run.tensor_range(0, 1)], N.MODE_BY_NORM)]
    c = 1.0
    norms, scales = finalize(run.partials, outputs, [c] * 4)
    grads = [g.cpu() for g in grads]
    gn = ref.global_norm(grads)
    n0, n1 = (ref.sum_of_squares(g).sqrt() for g in grads)
    expected = torch.stack([ref.global_norm_scale(gn, c),
                            ref.global_norm_scale(gn, c, auto_skip_clip=True),
                            ref.by_norm_scale(n0, c), ref.by_norm_scale(n1, c)])
    torch.testing.assert_close(scales.to(torch.float64), expected, equal_nan=True,
                               **KERNEL_TOL[acc_dtype])
    torch.testing.assert_close(norms.to(torch.float64), torch.stack([gn, gn, n0, n1]),
                               equal_nan=True, **KERNEL_TOL[acc_dtype])


def test_empty_output_and_zero_grads():
    grads = [torch.zeros(BLOCK + 2, device=DEVICE)]
    run = Buckets([grads], torch.float32)
    run.run_pass()
    outputs = [([], N.MODE_GLOBAL), ([(0, run.offsets[-1])], N.MODE_GLOBAL),
               ([(0, run.offsets[-1])], N.MODE_BY_NORM),
               ([(0, run.offsets[-1])], N.MODE_GLOBAL_AUTO_SKIP)]
    norms, scales = finalize(run.partials, outputs, [0.5] * 4)
    assert torch.equal(norms, torch.zeros(4)) and torch.equal(scales, torch.ones(4))


@needs_paddle
@pytest.mark.parametrize("kind,auto_skip,bad,dtype", [
    ("global", False, None, "float64"), ("global", True, None, "float64"),
    ("global", False, INF, "float64"), ("global", True, NAN, "float64"),
    ("global", False, None, "float32"), ("norm", False, None, "float32"),
    ("norm", False, NAN, "float32")])
def test_kernel_scales_reproduce_paddle_clip(kind, auto_skip, bad, dtype):
    """g * scale from the kernels equals what paddle.nn.ClipGradBy* returns (METHOD_TOL: in
    float32 both sides sum float32 squares, in different orders)."""
    rng = np.random.default_rng(1)
    values = [(rng.standard_normal(n) * (i + 1)).astype(dtype)
              for i, n in enumerate([BLOCK + 1, 17, 3])]
    if bad is not None:
        values[1][4] = bad
    grads = [torch.from_numpy(v.copy()).to(DEVICE) for v in values]
    run = Buckets([grads], grads[0].dtype)
    run.run_pass()
    finite = [v[np.isfinite(v)].astype(np.float64) for v in values]
    clip_norm = 0.5 * float(np.sqrt(sum((v ** 2).sum() for v in finite)))
    if kind == "global":
        mode = N.MODE_GLOBAL_AUTO_SKIP if auto_skip else N.MODE_GLOBAL
        outputs = [([(0, run.offsets[-1])], mode)]
        theirs = paddle.nn.ClipGradByGlobalNorm(clip_norm, auto_skip_clip=auto_skip)
    else:
        outputs = [([run.tensor_range(0, i)], N.MODE_BY_NORM) for i in range(len(grads))]
        theirs = paddle.nn.ClipGradByNorm(clip_norm)
    _, scales = finalize(run.partials, outputs, [clip_norm] * len(outputs))
    clipped = theirs([(paddle.create_parameter([v.size], dtype), paddle.to_tensor(v))
                      for v in values])
    for i, (g, (_, pg)) in enumerate(zip(grads, clipped)):
        scale = scales[0] if kind == "global" else scales[i]
        torch.testing.assert_close(g.cpu() * scale, torch.from_numpy(pg.numpy()), equal_nan=True,
                                   **METHOD_TOL[dtype])


def test_same_bits_on_every_run():
    grads = random_grads([BLOCK * 3 + 1, 17, 1], torch.float32) + \
        random_grads([N.NORM_CHUNK_SIZE + 5], torch.float32)
    results = []
    for _ in range(2):
        run = Buckets([grads], torch.float32, chunk_size=N.NORM_CHUNK_SIZE)
        run.run_pass()
        outputs = [([(0, run.offsets[-1])], N.MODE_GLOBAL)] + [
            ([run.tensor_range(0, i)], N.MODE_BY_NORM) for i in range(len(grads))]
        norms, scales = finalize(run.partials, outputs, [1.0] * len(outputs))
        results.append((run.partials[:run.offsets[-1]].clone(), norms, scales))
    for a, b in zip(*results):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_unaligned_views_take_the_safe_path():
    storage = torch.randn(2 * BLOCK + 40, dtype=torch.float64).to(DEVICE)
    grads = [storage[1:BLOCK + 2], storage[BLOCK + 3:2 * BLOCK + 30]]  # odd offsets
    assert not aligned(grads)
    run = Buckets([grads], torch.float64)
    run.run_pass()
    norms, _ = finalize(run.partials, [([(0, run.offsets[-1])], N.MODE_GLOBAL)], [1.0])
    torch.testing.assert_close(norms.to(torch.float64),
                               ref.global_norm([g.cpu() for g in grads]).reshape(1),
                               **KERNEL_TOL[torch.float64])


def test_launch_path_makes_no_host_sync(monkeypatch):
    """Neither launcher reads a tensor back to the host (each read would stall a GPU)."""
    grads = random_grads([BLOCK + 5, 17], torch.float32)
    table, chunks, _ = build_tables(grads, K.CHUNK_SIZE)
    partials = torch.zeros(chunks.shape[0] + 1, device=DEVICE)
    segments, outputs = N.finalize_tables([([(0, chunks.shape[0])], N.MODE_GLOBAL)], DEVICE)
    clip_norms = torch.tensor([1.0], dtype=torch.float64, device=DEVICE)
    norms, scales = torch.zeros(1, device=DEVICE), torch.zeros(1, device=DEVICE)
    calls = []
    count_host_syncs(monkeypatch, calls)
    for _ in range(2):
        N.sum_squares_tensor_list_(table, chunks, partials[1:], grad_dtype=torch.float32,
                                   aligned=True)
        N.clip_scales_(partials[1:], segments, outputs, clip_norms, norms, scales)
    monkeypatch.undo()
    assert calls == []
    torch.testing.assert_close(norms.cpu().double(),
                               ref.global_norm([g.cpu() for g in grads]).reshape(1),
                               **KERNEL_TOL[torch.float32])


def test_launchers_reject_bad_arguments():
    grads = random_grads([10], torch.float64)
    table, chunks, _ = build_tables(grads, K.CHUNK_SIZE)
    ok = dict(grad_dtype=torch.float64, aligned=True)
    p64 = torch.zeros(1, dtype=torch.float64, device=DEVICE)
    bad_pass = [
        ((table, chunks, torch.zeros(1, device=DEVICE)), ok, "float64 partials"),
        ((table, chunks, torch.zeros(2, dtype=torch.float64, device=DEVICE)), ok, "1-D buffer"),
        ((table, chunks, torch.zeros(1, dtype=torch.float16, device=DEVICE)), ok,
         "float32 or float64"),
        ((table[:, :4].contiguous(), chunks, p64), ok, "tensor_table"),
        ((table, chunks.long(), p64), ok, "chunk_table"),
        ((table, chunks, p64), dict(ok, chunk_size=100), "chunk_size"),
        ((table, chunks, p64), dict(ok, grad_dtype=torch.int32), "grad dtype"),
    ]
    for args, kwargs, message in bad_pass:
        with pytest.raises(ValueError, match=message):
            N.sum_squares_tensor_list_(*args, **kwargs)
    partials = torch.zeros(4, device=DEVICE)
    segments, outputs = N.finalize_tables([([(0, 4)], N.MODE_GLOBAL)], DEVICE)
    c64 = torch.ones(1, dtype=torch.float64, device=DEVICE)
    one = torch.zeros(1, device=DEVICE)
    bad_finalize = [
        ((partials, segments, outputs, c64.float(), one, one.clone()), "clip_norms"),
        ((partials, segments, outputs, c64, one.double(), one.clone()), "norms"),
        ((partials, segments, outputs[:, :2].contiguous(), c64, one, one.clone()), "outputs"),
        ((partials, segments.int(), outputs, c64, one, one.clone()), "segments"),
        ((partials, segments, outputs, c64, one, one), "must differ"),
    ]
    for args, message in bad_finalize:
        with pytest.raises(ValueError, match=message):
            N.clip_scales_(*args)
    with pytest.raises(ValueError, match="mode"):
        N.finalize_tables([([(0, 1)], 7)], "cpu")
    with pytest.raises(ValueError, match="range"):
        N.finalize_tables([([(3, 1)], N.MODE_GLOBAL)], "cpu")
    assert N.accumulation_dtype_for([torch.bfloat16, torch.float32]) == torch.float32
    assert N.accumulation_dtype_for([torch.float32, torch.float64]) == torch.float64
