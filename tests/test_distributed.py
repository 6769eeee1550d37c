"""Distributed training: DDP and FSDP2 (``fully_shard``) on 2 CPU processes with gloo.

Each launch starts two worker processes (``tests/dist_worker.py``, kernels under the Triton
interpreter) that run several cases one after the other; every case's model, data and
optimizer are defined in the worker and rerun here in one process on the whole batch
(``dist_worker.reference``). Launches: one for DDP and the ``triton_adam.distributed`` probes
and one for FSDP2 (the optimizer updates DTensor parameters through their local shards and
all-reduces the norms' sums of squares: see ``triton_adam/distributed.py``).

Tolerance, fp32: ``rtol=1e-5, atol=1e-6``. The distributed gradient is the single process's up
to float32 rounding of a different summation order (two half-batch matmuls averaged by the
all-reduce / reduce-scatter instead of one full-batch matmul; ~1e-7 relative), and so is the
global norm. Adam's step ``lr * m_hat / (sqrt(v_hat) + eps)`` is a ratio: a relative error
``d`` of the gradient moves it by about ``lr * d`` (1e-9 at lr=0.01) unless a gradient entry
is as small as ``eps`` (the seeded tanh MLP has none). Measured over the 5 steps: params
differ by at most 6e-8 (an ulp or two at their magnitude), moments by 3.5e-10 (``pytest -s``
prints them), 15x below the tolerance; a wrong norm (no all-reduce, or replicas counted twice)
fails by far, through the moments the clip scale enters.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from devices import CUDA_MODE

if CUDA_MODE:  # before dist_worker is imported: it sets TRITON_INTERPRET for this process
    pytest.skip("CPU mode only: gloo processes under the Triton interpreter, against a "
                "single-process run on CPU tensors", allow_module_level=True)

import dist_worker as W  # noqa: E402
import gloo  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
WORLD = 2
TIMEOUT_S = 600  # a whole launch; generous for a loaded 2-core machine
RTOL, ATOL = 1e-5, 1e-6

DDP_CASES = ["ddp_adam", "ddp_clip", "ddp_clip_mt", "ddp_bucket_view_clip_mt"]
HELPER_CASES = ["helpers_fsdp", "helpers_hsdp", "helpers_fsdp_mixed"]
ERROR_CASES = list(W.ERROR_CASES)
FSDP_CASES = ["fsdp_adam", "fsdp_clip", "fsdp_clip_mt", "hsdp_clip", "fsdp_mixed_clip_mt",
              "fsdp_resume_clip_mt", "fsdp_dcp_clip_mt"]
LOWP_CASES = list(W.LOWP_CASES)

def _launch(cases: list[str], out: pathlib.Path) -> dict:
    """Run ``cases`` in two worker processes; ``{case: [result of rank 0, rank 1]}`` with
    None for a result a crashed worker never wrote, plus ``'_log'`` and ``'_seconds'``."""
    out.mkdir(parents=True, exist_ok=True)
    return gloo.launch(HERE / "dist_worker.py", WORLD, out, cases, TIMEOUT_S)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    return _launch(DDP_CASES + HELPER_CASES + ERROR_CASES, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    return _launch(FSDP_CASES + LOWP_CASES, tmp_path_factory.mktemp("fsdp"))


def _results(runs: dict, case: str) -> list[dict]:
    ranks = runs[case]
    for r, res in enumerate(ranks):
        if res is None:
            raise AssertionError(f"{case}: rank {r} wrote no result (worker crashed or timed "
                                 f"out)\n{runs['_log']}")
        if res["error"] is not None:
            raise AssertionError(f"{case}: rank {r} raised\n{res['error']}")
    return ranks


def _close(actual: dict, expected: dict, what: str) -> None:
    assert list(actual) == list(expected), f"{what}: keys {list(actual)} != {list(expected)}"
    worst = 0.0
    for key, exp in expected.items():
        if not isinstance(exp, torch.Tensor):
            continue
        act = actual[key]
        assert act.shape == exp.shape and act.dtype == exp.dtype, \
            f"{what} {key}: {act.dtype} {tuple(act.shape)} != {exp.dtype} {tuple(exp.shape)}"
        worst = max(worst, float((act - exp).abs().max()) if exp.numel() else 0.0)
        torch.testing.assert_close(act, exp, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what} "
                                   f"{key}: {m}")
    print(f"{what}: largest abs difference {worst:.3g}")


def _check_training(runs: dict, case: str) -> None:
    ranks = _results(runs, case)
    ref = W.reference(case)
    clip = W.OPT_CASES[case].clip
    if clip is not None:  # the case exercises clipping at every step
        assert min(ref["norms"]) > clip, ref["norms"]
    for r, res in enumerate(ranks):
        _close(res["params"], ref["params"], f"{case} rank {r} params")
        _close(res["full_state"], ref["state"], f"{case} rank {r} gathered state")
    # Every rank ends with the same parameters, bit for bit (replicas must not drift).
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), f"{case}: ranks differ on {name}"


# ------------------------------------------------------------------------------------- DDP
@pytest.mark.parametrize("case", DDP_CASES)
def test_ddp_matches_single_process(ddp_runs, case):
    """DDP averages the gradients before the step; triton_adam sees plain tensors (with
    ``gradient_as_bucket_view``, views into DDP's flat buckets) and a replicated global norm:
    5 steps match the single-process run, state included."""
    _check_training(ddp_runs, case)
    for r, res in enumerate(ddp_runs[case]):
        assert list(res["state"]) == list(res["full_state"])  # nothing sharded: no-op gather


# ----------------------------------------------------------- triton_adam.distributed alone
@pytest.mark.parametrize("case", HELPER_CASES)
def test_norm_reduction_counts_every_element_once(ddp_runs, case):
    """Owned local sums of squares + one all-reduce give the single process's gradient norm,
    the same on every rank; HSDP replicas and a replicated plain param are counted once."""
    ranks = _results(ddp_runs, case)
    ref = W.reference(case)["norm0"]
    for r, res in enumerate(ranks):
        assert res["distributed"], f"{case}: sharded params need an all-reduce"
        assert res["norm0"] == pytest.approx(ref, rel=RTOL), (r, res["norm0"], ref)
    assert ranks[0]["norm0"] == ranks[1]["norm0"]  # the same bits: the same clip scale
    if case == "helpers_fsdp":  # no replicas: every rank owns its shards
        assert all(all(res["owners"]) for res in ranks)
        assert ranks[0]["naive_norm0"] == pytest.approx(ref, rel=RTOL)
    else:  # replicas exist: adding every local sum would count them twice
        assert ranks[0]["naive_norm0"] > ref * (1 + 1e-3)
        assert [any(res["owners"]) for res in ranks] == [True, case == "helpers_fsdp_mixed"]


@pytest.mark.parametrize("case", ["helpers_fsdp", "helpers_hsdp"])
def test_state_shard_gather_and_checkpoint_round_trip(ddp_runs, case):
    """shard_full_state -> local shapes of the params; gather_full_state -> the full state
    bit for bit; torch.distributed.checkpoint save/load through state_as_dtensors in place."""
    for res in _results(ddp_runs, case):
        assert res["local_shapes_ok"]
        assert res["round_trip_ok"]
        assert res["dtensor_views_ok"]
        assert res["dcp_round_trip_ok"]


# ------------------------------------------------------------------------------------ FSDP2
@pytest.mark.parametrize("case", FSDP_CASES)
def test_fsdp_matches_single_process(fsdp_runs, case):
    """fully_shard per layer then root: shard-local updates by the same kernels, the true
    global norm (one all-reduce), 5 steps equal to the single-process run; each rank's
    state_dict gathers to the single-process state. Cases: per-tensor and multi-tensor
    launches, gradients zeroed or set to None, HSDP replicas, a plain replicated parameter
    beside the shards, a resume from a single-process state split by
    ``shard_full_state`` and loaded with ``set_state_dict``, and a torch.distributed.checkpoint
    save / stray step / load in place (``state_as_dtensors`` + ``set_state_dict``)."""
    _check_training(fsdp_runs, case)


def test_fsdp_state_dict_is_the_shard_state(fsdp_runs):
    """A sharded run's state_dict: Paddle's keys (the single process's), every moment shaped
    like the rank's local shard (rank 1's shard of the last layer is empty)."""
    ref = W.reference("fsdp_clip")
    ranks = _results(fsdp_runs, "fsdp_clip")
    for r, res in enumerate(ranks):
        assert list(res["state"]) == list(ref["state"])
        for key, value in res["state"].items():
            name = key.rsplit("_", 2)[0]
            if key.endswith(("moment1_0", "moment2_0")):
                assert tuple(value.shape) == res["local_shapes"][name], (r, key)
            else:
                assert tuple(value.shape) == (1,), (r, key)
    assert ranks[0]["local_shapes"]["4.weight"] == (1, W.HIDDEN2)
    assert ranks[1]["local_shapes"]["4.weight"] == (0, W.HIDDEN2)


def _bitwise(actual, expected, what: str) -> None:
    """Nested dicts of tensors: the same keys, dtypes, shapes and bits."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected), \
            f"{what}: keys {list(actual) if isinstance(actual, dict) else actual} != " \
            f"{list(expected)}"
        for key in expected:
            _bitwise(actual[key], expected[key], f"{what}[{key!r}]")
    elif isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, \
            f"{what}: {actual.dtype} {tuple(actual.shape)} != {expected.dtype} " \
            f"{tuple(expected.shape)}"
        ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16}
        a, e = (t.view(ints[t.dtype]) if t.dtype in ints else t for t in (actual, expected))
        differ = int((a != e).sum())
        assert differ == 0, f"{what}: {differ} of {e.numel()} elements differ"
    else:
        assert actual == expected, f"{what}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("case", LOWP_CASES)
def test_fsdp_low_precision_modes_equal_the_single_process_bitwise(fsdp_runs, case):
    """issue 19's modes on FSDP2 shards of a bf16 model (uneven shards, an empty one on rank
    1), with the gradients set to the single process's bits (``dist_worker.lowp_grads``):
    remainder masters (amsgrad, value clipping), stochastic rounding with bf16 moments (its
    random bits keyed by each element's offset in the whole tensor, so a shard draws the bits
    the whole tensor would); an AMP skip; resumed from a single-process state split by
    ``shard_full_state`` and through a torch.distributed.checkpoint detour. Params and the
    gathered state (masters, moments, pows, step counts) bitwise those of one process."""
    ranks = _results(fsdp_runs, case)
    ref = W.lowp_reference(case)
    assert ranks[1]["local_shapes"]["4.weight"] == (0, W.HIDDEN2)
    # The skipped step (its gradients hold an inf) left no NaN behind.
    assert all(bool(torch.isfinite(p.float()).all()) for p in ref["params"].values())
    for r, res in enumerate(ranks):
        _bitwise(res["params"], ref["params"], f"{case} rank {r} params")
        _bitwise(res["full_state"], ref["state"], f"{case} rank {r} gathered state")


@pytest.mark.parametrize("case", ERROR_CASES)
def test_fsdp_bad_gradients_are_rejected_before_any_change(ddp_runs, case):
    """A gradient laid out otherwise than its DTensor parameter (replicated instead of
    sharded, unreduced Partial sums) or a DTensor gradient of a plain parameter: a clear
    ValueError at step(), on every rank (so no rank is left in a collective), with nothing
    updated and no state created; the good gradient still steps afterwards. A full state
    loaded into the shards unsliced is a StateDictError naming the fix."""
    for r, res in enumerate(_results(ddp_runs, case)):
        errors = res["errors"]
        for label in ("replicated_grad", "partial_grad"):
            assert errors[label] is not None, (r, label)
            assert errors[label].startswith("ValueError: parameter '0.weight': gradient "
                                            "placements"), (r, errors[label])
            assert "redistribute the gradient like the parameter" in errors[label]
        assert "Partial" in errors["partial_grad"]
        assert errors["dtensor_grad_of_plain_param"] == (
            "ValueError: parameter 'plain': the parameter is a plain tensor but its gradient "
            "is a DTensor"), (r, errors)
        assert res["unchanged"] and res["no_state"] and res["stepped"], (r, res)
        # An unsliced full state: the shape error points to shard_full_state.
        assert errors["full_state_into_shards"].startswith("StateDictError: "), errors
        assert "shard_full_state" in errors["full_state_into_shards"], errors


# ------------------------------------------------------------ the two-phase finalize, alone
@pytest.mark.parametrize("acc", [torch.float32, torch.float64])
def test_two_phase_finalize_equals_one_launch(acc):
    """output_sums_ + scales_from_sums_ (with no other rank: the all-reduce is the identity)
    give clip_scales_'s norms and scales bit for bit, for every mode, also for an output with
    no partials, an infinite and a NaN norm."""
    from triton_adam.kernels import norm as N

    partials = torch.rand(40, dtype=acc) * 3
    partials[30] = float("inf")
    partials[35] = float("nan")
    ranges_modes = [([(0, 7), (12, 20)], N.MODE_GLOBAL), ([(7, 12)], N.MODE_GLOBAL_AUTO_SKIP),
                    ([(20, 21)], N.MODE_BY_NORM), ([], N.MODE_GLOBAL),
                    ([(21, 25)], N.MODE_BY_NORM), ([(28, 32)], N.MODE_GLOBAL),
                    ([(28, 32)], N.MODE_GLOBAL_AUTO_SKIP), ([(33, 40)], N.MODE_BY_NORM),
                    ([(33, 40)], N.MODE_GLOBAL_AUTO_SKIP)]
    segments, outputs = N.finalize_tables(ranges_modes, "cpu")
    n = len(ranges_modes)
    clip_norms = torch.tensor([1.0, 0.5, 2.0, 1.0, 100.0, 1.0, 1.0, 1.0, 1.0],
                              dtype=torch.float64)
    norms, scales = torch.empty(n, dtype=acc), torch.empty(n, dtype=acc)
    N.clip_scales_(partials, segments, outputs, clip_norms, norms, scales)
    sums, scales2 = torch.empty(n, dtype=acc), torch.empty(n, dtype=acc)
    N.output_sums_(partials, segments, outputs, sums)
    N.scales_from_sums_(sums, outputs, clip_norms, scales2)  # sums -> norms in place
    for a, b in ((sums, norms), (scales2, scales)):  # NaN where NaN, else the same bits
        assert torch.equal(a.nan_to_num(nan=-7.0), b.nan_to_num(nan=-7.0)), (a, b)
        assert torch.equal(a.isnan(), b.isnan())
    with pytest.raises(ValueError, match="sums must be contiguous"):
        N.output_sums_(partials, segments, outputs, torch.empty(n, dtype=torch.float16))
