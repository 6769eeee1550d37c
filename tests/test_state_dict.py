"""Is ``state_dict`` / ``set_state_dict`` Paddle's, and does loading follow Paddle's rules?

* keys, shapes and dtypes equal real Paddle 3.3.1's for the same parameters and settings;
* a ``.pdopt`` written by Paddle loads here and training continues to Paddle's values, and a
  file written here loads in Paddle and continues there the same way (float64, 1e-12: both
  sides compute in float64 and differ only in algebraic form, as in test_paddle_parity.py);
* the rules of ``triton_adam.state`` (missing, extra, mismatched, foreign and counter keys,
  the scheduler, loading before the first step, overwriting, all-or-nothing), next to the
  Paddle behaviour each one mirrors where Paddle has one.

Expected values come from Paddle or from an optimizer of this library that never saved and
loaded (bitwise equal then: the same kernels on the same inputs). Our optimizers run on
``devices.DEVICE`` (``tests/devices.py``), Paddle on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import triton_adam
from configs import CONFIGS as TABLE
from configs import OURS, paddle_lib
from devices import DEVICE, import_paddle, needs_paddle
from test_paddle_parity import TOL, random_problem
from triton_adam import state as S
from triton_adam.io import CorruptFileError

paddle = import_paddle()
PADDLE = paddle_lib() if paddle is not None else None

K_STEPS, N_STEPS = 3, 3
LATE = 4  # no gradient before the checkpoint: absent from the saved dict on both sides
SKIP = {(0, 1)} | {(s, LATE) for s in range(K_STEPS)}


# ----------------------------------------------------------------------------- helpers
def make_opt(mod, config: str, params, **kw):
    """``(optimizer, scheduler or None)`` of the shared table's ``config``
    (``tests/configs.py``) in Paddle or here."""
    return TABLE[config].start(params, lib=PADDLE if mod is paddle else OURS, **kw)


CONFIGS = ["adam-stepdecay", "amsgrad-named-l2", "adamw-cosine"]


def paddle_params(arrays):
    return [paddle.create_parameter(list(a.shape), dtype=str(a.dtype),
                                    default_initializer=paddle.nn.initializer.Assign(a))
            for a in arrays]


def torch_params(arrays, names):
    out = []
    for a, name in zip(arrays, names):
        p = torch.nn.Parameter(torch.tensor(a, device=DEVICE))
        triton_adam.set_param_attr(p, name=name)
        out.append(p)
    return out


def paddle_train(params, opt, sched, grads, first_step=0, skip=SKIP):
    for s, g in enumerate(grads, start=first_step):
        active = [i for i in range(len(params)) if (s, i) not in skip]
        sum((params[i] * paddle.to_tensor(g[i])).sum() for i in active).backward()
        opt.step()
        opt.clear_grad(set_to_zero=False)
        if sched is not None:
            sched.step()


def torch_train(params, opt, sched, grads, first_step=0, skip=SKIP):
    for s, g in enumerate(grads, start=first_step):
        for i, p in enumerate(params):
            p.grad = None if (s, i) in skip else torch.from_numpy(g[i].copy()).to(DEVICE)
        opt.step()
        opt.clear_grad(set_to_zero=False)
        if sched is not None:
            sched.step()


def to_numpy(v):
    """numpy of a torch tensor (on any device), a Paddle tensor or an array."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return v.numpy() if hasattr(v, "numpy") else np.asarray(v)


def assert_state_close(ours: dict, theirs: dict, tol: dict) -> None:
    """Our state dict against Paddle's: same keys, values within ``tol``."""
    assert set(ours) == set(theirs)
    for key, want in theirs.items():
        if key == "LR_Scheduler":
            assert ours[key] == pytest.approx(want, rel=1e-15), key
            continue
        np.testing.assert_allclose(to_numpy(ours[key]), to_numpy(want), **tol, err_msg=key)


def assert_bitwise(ours: dict, expected: dict) -> None:
    assert set(ours) == set(expected)
    for key, want in expected.items():
        if isinstance(want, dict):
            assert_bitwise(ours[key], want)
        elif isinstance(want, torch.Tensor):
            assert ours[key].dtype == want.dtype and torch.equal(ours[key], want), key
        else:
            assert ours[key] == want, key


def snapshot(opt) -> dict:
    """A deep copy of ``opt.state_dict()`` (the moments in it are live views)."""
    out = {}
    for k, v in opt.state_dict().items():
        if isinstance(v, torch.Tensor):
            out[k] = v.clone()
        elif isinstance(v, dict):
            out[k] = {kk: vv.clone() if isinstance(vv, torch.Tensor) else vv
                      for kk, vv in v.items()}
        else:
            out[k] = v
    return out


def trained(config="adam", steps=2, multi_tensor=False, dtype="float32", seed=0, skip=()):
    """Our optimizer after ``steps`` steps: (params, opt, sched, names, grads for later)."""
    init, grads = random_problem(dtype, seed=seed, steps=steps + 2)
    names = [f"layer{i}.w" for i in range(len(init))]
    params = torch_params(init, names)
    opt, sched = make_opt(triton_adam, config, params, per_tensor_launches=not multi_tensor)
    torch_train(params, opt, sched, grads[:steps], skip=set(skip))
    return params, opt, sched, names, grads[steps:]


def fresh_like(params, names, config="adam", multi_tensor=False):
    """A fresh optimizer over copies of ``params`` (same names)."""
    copies = torch_params([to_numpy(p).copy() for p in params], names)
    opt, sched = make_opt(triton_adam, config, copies, per_tensor_launches=not multi_tensor)
    return copies, opt, sched


# ------------------------------------------------------------------ format against Paddle
def _step_both_and_compare(params, opt, copies, other, grads) -> None:
    """One more step of both optimizers on the same gradients: params and state stay equal."""
    for p, q, g in zip(params, copies, grads):
        p.grad, q.grad = (torch.from_numpy(g.copy()).to(DEVICE),
                          torch.from_numpy(g.copy()).to(DEVICE))
    opt.step()
    other.step()
    assert all(torch.equal(p, q) for p, q in zip(params, copies))
    assert_bitwise(snapshot(other), snapshot(opt))


@needs_paddle
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", ["adam"] + CONFIGS)
def test_keys_shapes_dtypes_match_paddle(config, dtype):
    init, grads = random_problem(dtype, seed=3, steps=K_STEPS)
    pp = paddle_params(init)
    names = [p.name for p in pp]
    tp = torch_params(init, names)
    popt, psched = make_opt(paddle, config, pp)
    topt, tsched = make_opt(triton_adam, config, tp)
    # Before the first step: empty, or the scheduler only.
    assert topt.state_dict().keys() == popt.state_dict().keys()
    paddle_train(pp, popt, psched, grads)
    torch_train(tp, topt, tsched, grads)
    ours, theirs = topt.state_dict(), popt.state_dict()
    assert set(ours) == set(theirs)
    assert not any(k.startswith(names[LATE]) for k in ours)  # never stepped: no state
    for key, want in theirs.items():
        if key == "LR_Scheduler":
            assert ours[key] == want
            continue
        assert tuple(ours[key].shape) == tuple(want.shape), key
        assert to_numpy(ours[key]).dtype == want.numpy().dtype, key
    assert_state_close(ours, theirs, TOL[dtype])


def _paddle_fp16_state(seed=0):
    """A real Paddle multi_precision state dict (float16 and float32 params, name='myopt').

    Paddle's CPU build has no float16 adam kernel, but the step creates the master weights and
    accumulators before it fails; they are then filled with random values (as test_io.py does).
    """
    rng = np.random.default_rng(seed)
    shapes, dtypes = [(3, 2), (2,), (4,)], ["float16", "float32", "float16"]
    params = []
    for shape, dtype in zip(shapes, dtypes):
        p = paddle.create_parameter(list(shape), dtype=dtype,
                                    default_initializer=paddle.nn.initializer.Constant(0.5))
        p.set_value(paddle.to_tensor(rng.standard_normal(shape).astype(dtype)))
        params.append(p)
    opt = paddle.optimizer.Adam(0.01, parameters=params, multi_precision=True, name="myopt")
    sum((p.astype("float32") * 1.5).sum() for p in params).backward()
    with pytest.raises(RuntimeError, match="not registered"):
        opt.step()
    for value in list(opt._master_weights.values()) + [
            v for acc in opt._accumulators.values() for v in acc.values()]:
        value.set_value(paddle.to_tensor(rng.uniform(0.1, 0.9, value.shape).astype("float32")))
    return params, opt


@needs_paddle
def test_master_weight_keys_match_paddle_and_load():
    """fp16 + multi_precision: accumulators under the master's name and 'master_weights', as
    Paddle writes them; a Paddle dict loads with every value in place."""
    pp, popt = _paddle_fp16_state()
    names = [p.name for p in pp]
    tp = [triton_adam.set_param_attr(torch.nn.Parameter(torch.from_numpy(p.numpy()).to(DEVICE)),
                                     name=n) for p, n in zip(pp, names)]
    topt = triton_adam.Adam(0.01, parameters=tp, multi_precision=True, name="myopt")
    theirs = popt.state_dict()
    topt.set_state_dict(theirs)  # paddle Tensors as values
    ours = topt.state_dict()
    assert set(ours) == set(theirs) and set(ours["master_weights"]) == set(
        theirs["master_weights"])
    for key, want in theirs.items():
        if key == "master_weights":
            for name, w in want.items():
                assert ours[key][name].dtype == torch.float32
                np.testing.assert_array_equal(to_numpy(ours[key][name]), w.numpy())
            continue
        assert to_numpy(ours[key]).dtype == want.numpy().dtype, key
        np.testing.assert_array_equal(to_numpy(ours[key]), want.numpy(), err_msg=key)

    # Our own state of the same kind round-trips bitwise, and the continuation is exact.
    for p in tp:
        p.grad = torch.randn_like(p)
    topt.step()
    saved = snapshot(topt)
    copies = [triton_adam.set_param_attr(torch.nn.Parameter(p.detach().clone()), name=n)
              for p, n in zip(tp, names)]
    other = triton_adam.Adam(0.01, parameters=copies, multi_precision=True, name="myopt")
    other.set_state_dict(saved)
    assert_bitwise(snapshot(other), saved)
    for p, q in zip(tp, copies):
        q.grad = p.grad = torch.randn_like(p)
    topt.step()
    other.step()
    assert all(torch.equal(p, q) for p, q in zip(tp, copies))
    assert_bitwise(snapshot(other), snapshot(topt))

    # The master is required with its accumulators (no silent rebuild from the fp16 value).
    no_master = {k: v for k, v in saved.items() if k != "master_weights"}
    fresh = triton_adam.Adam(0.01, parameters=copies, multi_precision=True, name="myopt")
    with pytest.raises(S.MissingStateError, match=f"master_weights.*{names[0]}"):
        fresh.set_state_dict(no_master)


# -------------------------------------------------------------- files across the libraries
def _read_triton(path):
    return triton_adam.load(path)


def _read_numpy(path):
    return triton_adam.load(path, return_numpy=True)


def _read_paddle(path):
    return paddle.load(str(path))  # paddle Tensors as values


READERS = {"triton_adam.load": _read_triton, "numpy": _read_numpy, "paddle.load": _read_paddle}


@needs_paddle
@pytest.mark.parametrize("config,reader", [(c, "triton_adam.load") for c in CONFIGS]
                         + [("adam-stepdecay", "numpy"), ("adam-stepdecay", "paddle.load")])
def test_paddle_file_continues_here(tmp_path, config, reader):
    init, grads = random_problem("float64", seed=11, steps=K_STEPS + N_STEPS)
    pp = paddle_params(init)
    names = [p.name for p in pp]
    popt, psched = make_opt(paddle, config, pp)
    paddle_train(pp, popt, psched, grads[:K_STEPS])
    path = tmp_path / "paddle.pdopt"
    paddle.save(popt.state_dict(), str(path))

    tp = torch_params([p.numpy() for p in pp], names)
    topt, tsched = make_opt(triton_adam, config, tp)
    topt.set_state_dict(READERS[reader](path))  # before our first step
    paddle_train(pp, popt, psched, grads[K_STEPS:], first_step=K_STEPS)
    torch_train(tp, topt, tsched, grads[K_STEPS:], first_step=K_STEPS)
    for p_t, p_pd, name in zip(tp, pp, names):
        np.testing.assert_allclose(to_numpy(p_t), p_pd.numpy(), **TOL["float64"], err_msg=name)
    assert_state_close(topt.state_dict(), popt.state_dict(), TOL["float64"])


@needs_paddle
@pytest.mark.parametrize("config", CONFIGS)
def test_our_file_continues_in_paddle(tmp_path, config):
    init, grads = random_problem("float64", seed=12, steps=K_STEPS + N_STEPS)
    pp = paddle_params(init)
    names = [p.name for p in pp]
    tp = torch_params(init, names)
    topt, tsched = make_opt(triton_adam, config, tp)
    torch_train(tp, topt, tsched, grads[:K_STEPS])
    path = tmp_path / "ours.pdopt"
    triton_adam.save(topt.state_dict(), path)

    for p_pd, p_t in zip(pp, tp):
        p_pd.set_value(to_numpy(p_t))
    popt, psched = make_opt(paddle, config, pp)
    # The late parameter is last, so Paddle has drained its dict when it creates that
    # parameter's state (see triton_adam.state on Paddle's order-dependent rule).
    popt.set_state_dict(paddle.load(str(path)))
    paddle_train(pp, popt, psched, grads[K_STEPS:], first_step=K_STEPS)
    torch_train(tp, topt, tsched, grads[K_STEPS:], first_step=K_STEPS)
    for p_t, p_pd, name in zip(tp, pp, names):
        np.testing.assert_allclose(to_numpy(p_t), p_pd.numpy(), **TOL["float64"], err_msg=name)
    assert_state_close(topt.state_dict(), popt.state_dict(), TOL["float64"])


@needs_paddle
def test_counter_suffix_from_another_process(tmp_path):
    """Paddle names accumulators with a per-process counter: a file saved by the second
    optimizer over some parameters has keys ``..._1``, which a fresh Paddle process (here:
    a fresh ``unique_name`` scope) refuses at its first step. We accept the other counter."""
    init, grads = random_problem("float64", seed=13, steps=2 * K_STEPS + N_STEPS)
    path = str(tmp_path / "second.pdopt")
    with paddle.utils.unique_name.guard():
        pp = paddle_params(init)
        names = [p.name for p in pp]
        first = paddle.optimizer.Adam(0.01, parameters=pp)
        paddle_train(pp, first, None, grads[:K_STEPS], skip=set())
        second = paddle.optimizer.Adam(0.01, parameters=pp)
        paddle_train(pp, second, None, grads[K_STEPS:2 * K_STEPS], skip=set())
        paddle.save(second.state_dict(), path)
    assert all(k.endswith("_1") for k in second.state_dict())
    values = [p.numpy() for p in pp]

    with paddle.utils.unique_name.guard():  # what a fresh process builds: the same names
        fresh = paddle_params(values)
        assert [p.name for p in fresh] == names
        popt = paddle.optimizer.Adam(0.01, parameters=fresh)
        popt.set_state_dict(paddle.load(path))
        with pytest.raises(AssertionError, match=r"_moment1_0 should in state dict"):
            paddle_train(fresh, popt, None, grads[2 * K_STEPS:2 * K_STEPS + 1], skip=set())

    tp = torch_params(values, names)
    topt, _ = make_opt(triton_adam, "adam", tp)
    topt.set_state_dict(triton_adam.load(path))
    rest = grads[2 * K_STEPS:]
    paddle_train(pp, second, None, rest, skip=set())
    torch_train(tp, topt, None, rest, skip=set())
    for p_t, p_pd in zip(tp, pp):
        np.testing.assert_allclose(to_numpy(p_t), p_pd.numpy(), **TOL["float64"])
    # Our keys are always _0 (what a fresh Paddle process expects).
    assert all(k.endswith("_0") for k in topt.state_dict())


def test_ambiguous_counters_raise():
    params, opt, _, names, _ = trained()
    state = snapshot(opt)
    moved = {}
    for k, v in state.items():
        stem = k[:-len("_0")]
        moved[stem + "_1"], moved[stem + "_2"] = v, v
    copies, fresh, _ = fresh_like(params, names)
    with pytest.raises(S.StateDictError, match=r"_1.*_2|ambiguous"):
        fresh.set_state_dict(moved)
    assert fresh.state_dict() == {}
    # With the _0 key present, _0 is the one used, whatever other counters exist.
    fresh.set_state_dict({**{k[:-2] + "_1": torch.zeros_like(v) for k, v in state.items()},
                          **state})
    assert_bitwise(snapshot(fresh), state)


# ------------------------------------------------------------- Paddle's rules, and ours
def _paddle_trained():
    """A Paddle optimizer after one step, its state as numpy, and a fresh twin's maker."""
    init, grads = random_problem("float32", seed=5, steps=2)
    pp = paddle_params(init)
    popt = paddle.optimizer.Adam(0.01, parameters=pp)
    paddle_train(pp, popt, None, grads[:1], skip=set())
    state = {k: v.numpy() for k, v in popt.state_dict().items()}

    def twin():
        qq = paddle_params([p.numpy() for p in pp])
        renamed = {k.replace(p.name, q.name): v for k, v in state.items()
                   for p, q in zip(pp, qq) if k.startswith(p.name + "_")}
        return qq, paddle.optimizer.Adam(0.01, parameters=qq), renamed

    return pp, popt, state, twin, grads[1:]


@needs_paddle
def test_paddle_rules_we_mirror():
    """The Paddle 3.3.1 behaviours triton_adam.state's rules come from."""
    pp, popt, state, twin, grads = _paddle_trained()
    key = f"{pp[0].name}_moment2_0"
    # A stepped optimizer: a missing key, a wrong shape or dtype raise at load.
    with pytest.raises(AssertionError, match=f"{key} not found"):
        popt.set_state_dict({k: v for k, v in state.items() if k != key})
    with pytest.raises(AssertionError, match="Shape not match"):
        popt.set_state_dict({**state, key: state[key][..., None]})
    with pytest.raises(AssertionError, match="dtype not match"):
        popt.set_state_dict({**state, key: state[key].astype("float64")})
    popt.set_state_dict({**state, "junk": np.zeros(3), "other_moment1_0": np.zeros(2)})
    # Before the first step: nothing is checked until the accumulator is created.
    qq, fresh, renamed = twin()
    missing = f"{qq[0].name}_moment2_0"
    fresh.set_state_dict({k: v for k, v in renamed.items() if k != missing})
    with pytest.raises(AssertionError, match=f"{missing} should in state dict"):
        paddle_train(qq, fresh, None, grads, skip=set())


def test_missing_accumulator_raises_and_changes_nothing():
    params, opt, _, names, grads = trained()
    state = snapshot(opt)
    key = f"{names[2]}_moment2_0"
    partial = {k: v for k, v in state.items() if k != key}
    # Fresh optimizer: nothing loaded, no state created.
    copies, fresh, _ = fresh_like(params, names)
    with pytest.raises(S.MissingStateError, match=key) as info:
        fresh.set_state_dict(partial)
    assert isinstance(info.value, KeyError) and key in str(info.value)
    assert fresh.state_dict() == {} and fresh.engine.buckets == []
    # Stepped optimizer: its state is untouched (it would be half-loaded in Paddle).
    params2, other, _, _, _ = trained(steps=1)
    before = snapshot(other)
    with pytest.raises(S.MissingStateError, match=key):
        other.set_state_dict({k: torch.zeros_like(v) for k, v in partial.items()})
    assert_bitwise(snapshot(other), before)


def test_amsgrad_needs_moment2_max():
    params, opt, _, names, _ = trained()  # saved without amsgrad
    copies = torch_params([to_numpy(p) for p in params], names)
    ams = triton_adam.Adam(0.01, parameters=copies, amsgrad=True)
    with pytest.raises(S.MissingStateError, match="moment2_max.*amsgrad"):
        ams.set_state_dict(opt.state_dict())


@pytest.mark.parametrize("what", ["shape", "dtype", "pow-shape", "type"])
def test_mismatch_raises_naming_key_expected_got(what):
    params, opt, sched, names, _ = trained(config="adam-stepdecay")
    state = snapshot(opt)
    key = f"{names[0]}_moment1_0"
    if what == "shape":
        state[key] = state[key].reshape(-1)
        expected = ", ".join(map(str, params[0].shape))
        match = rf"{key}.*shape \[{state[key].numel()}\].*expected \[{expected}\]"
    elif what == "dtype":
        state[key] = to_numpy(state[key].double())
        match = rf"{key}.*dtype torch.float64.*expected torch.float32"
    elif what == "pow-shape":
        key = f"{names[0]}_beta1_pow_acc_0"
        state[key] = state[key].reshape(())
        match = rf"{key}.*shape \[\].*expected \[1\]"
    else:
        state[key] = state[key].tolist()
        match = rf"{key}.*list"
    state["LR_Scheduler"] = {"last_epoch": 40, "last_lr": 1e-5}
    # Into a stepped optimizer with a scheduler: nothing changes, the scheduler neither.
    params2, other, sched2, _, _ = trained(config="adam-stepdecay", steps=1)
    before, sched_before = snapshot(other), sched2.state_dict()
    error = TypeError if what == "type" else S.StateDictError
    with pytest.raises(error, match=match):
        other.set_state_dict(state)
    assert_bitwise(snapshot(other), before)
    assert sched2.state_dict() == sched_before


def test_extra_keys_are_ignored():
    params, opt, _, names, grads = trained()
    state = snapshot(opt)
    extra = {"junk": 3, "StructuredToParameterName@@": {"a": "b"},
             "ghost.w_moment1_0": torch.zeros(3), f"{names[0]}_moment2_max_0": torch.zeros(1),
             f"{names[0]}_moment1_0.SCALE_VALUE": -1.0, "master_weights": {}}
    copies, fresh, _ = fresh_like(params, names)
    fresh.set_state_dict({**state, **extra})
    assert_bitwise(snapshot(fresh), state)


def test_absent_parameter_starts_fresh_unless_keys_are_foreign():
    """A parameter with none of its keys had never been updated when the dict was saved: it
    starts fresh, as in the uninterrupted run. But if the dict has accumulator keys that
    match no parameter (a name mismatch), its absence is an error."""
    params, opt, _, names, grads = trained(skip={(0, 2), (1, 2)})
    state = snapshot(opt)
    assert not any(k.startswith(names[2]) for k in state)
    copies, fresh, _ = fresh_like(params, names)
    fresh.set_state_dict(state)
    _step_both_and_compare(params, opt, copies, fresh, grads[0])

    # The same dict with one parameter's keys under another name: foreign keys.
    renamed = {k.replace(names[1], "encoder.w"): v for k, v in state.items()}
    copies, fresh, _ = fresh_like(params, names)
    with pytest.raises(S.MissingStateError, match=rf"{names[1]}.*encoder\.w"):
        fresh.set_state_dict(renamed)
    assert fresh.state_dict() == {}
    # Another optimizer name: every key is foreign.
    named, _ = make_opt(triton_adam, "adam", copies, name="myopt")
    with pytest.raises(S.MissingStateError, match="optimizer's name"):
        named.set_state_dict(state)


def test_absent_parameter_with_state_raises():
    params, opt, _, names, _ = trained()
    state = snapshot(opt)
    without = {k: v for k, v in state.items() if not k.startswith(names[3] + "_")}
    with pytest.raises(S.MissingStateError, match=f"{names[3]}.*already has state"):
        opt.set_state_dict(without)
    assert_bitwise(snapshot(opt), state)


def test_scheduler_state_restored_or_required():
    params, opt, sched, names, _ = trained(config="adam-stepdecay", steps=3)
    state = snapshot(opt)
    copies, fresh, fresh_sched = fresh_like(params, names, config="adam-stepdecay")
    assert fresh_sched.state_dict() != sched.state_dict()
    fresh.set_state_dict(state)
    assert fresh_sched.state_dict() == sched.state_dict()
    assert fresh.get_lr() == opt.get_lr()
    # Required with a scheduler (as Paddle asserts) ...
    copies, fresh, _ = fresh_like(params, names, config="adam-stepdecay")
    with pytest.raises(S.MissingStateError, match="LR_Scheduler"):
        fresh.set_state_dict({k: v for k, v in state.items() if k != "LR_Scheduler"})
    assert fresh.state_dict().keys() == {"LR_Scheduler"}
    # ... except LambdaDecay (Paddle's exception), and ignored without a scheduler.
    lam = triton_adam.lr.LambdaDecay(0.01, lambda e: 0.9 ** e)
    triton_adam.Adam(lam, parameters=copies).set_state_dict(
        {k: v for k, v in state.items() if k != "LR_Scheduler"})
    plain = triton_adam.Adam(0.01, parameters=copies)
    plain.set_state_dict(state)
    assert "LR_Scheduler" not in plain.state_dict()


@pytest.mark.parametrize("multi_tensor", [False, True], ids=["per-tensor", "multi-tensor"])
def test_load_before_first_step(multi_tensor):
    """The loaded values are the state at once (Paddle's state_dict() returns its held dict
    too), copied, and used by the first step."""
    params, opt, _, names, grads = trained(multi_tensor=multi_tensor, skip={(0, 1)})
    state = snapshot(opt)
    source = {k: v.clone() for k, v in state.items()}
    copies, fresh, _ = fresh_like(params, names, multi_tensor=multi_tensor)
    fresh.set_state_dict(source)
    for v in source.values():  # never aliased: changing the source changes nothing
        v.fill_(7.0)
    assert_bitwise(snapshot(fresh), state)
    _step_both_and_compare(params, opt, copies, fresh, grads[0])


@pytest.mark.parametrize("multi_tensor", [False, True], ids=["per-tensor", "multi-tensor"])
def test_load_overwrites_a_stepped_optimizer(multi_tensor):
    params, opt, _, names, grads = trained(multi_tensor=multi_tensor, steps=3,
                                           skip={(1, 0), (2, 0)})
    state = snapshot(opt)
    # Another optimizer over copies that took a different number of steps (other pow slots).
    copies, other, _ = fresh_like(params, names, multi_tensor=multi_tensor)
    torch_train(copies, other, None, [grads[1]] * 2, skip=set())
    with torch.no_grad():
        for p, q in zip(params, copies):
            q.copy_(p)
    other.set_state_dict(state)
    assert_bitwise(snapshot(other), state)
    _step_both_and_compare(params, opt, copies, other, grads[0])


def test_state_dict_moments_live_pows_snapshot():
    """The documented contract: moments are views of the live state (no copy of model-sized
    buffers, like Paddle's live accumulators); pows are copies taken by the call."""
    params, opt, _, names, grads = trained()
    sd = opt.state_dict()
    m_key, pow_key = f"{names[0]}_moment1_0", f"{names[0]}_beta1_pow_acc_0"
    pow_before = sd[pow_key].clone()
    for p, g in zip(params, grads[0]):
        p.grad = torch.from_numpy(g.copy()).to(DEVICE)
    opt.step()
    now = opt.state_dict()
    assert torch.equal(sd[m_key], now[m_key])
    assert torch.equal(sd[pow_key], pow_before) and not torch.equal(now[pow_key], pow_before)


def test_duplicate_names_raise():
    a = torch.nn.Parameter(torch.ones(2, device=DEVICE))
    b = torch.nn.Parameter(torch.ones(2, device=DEVICE))
    opt = triton_adam.Adam(0.01, parameters=[("weight", a), ("weight", b)])
    with pytest.raises(ValueError, match="both named 'weight'"):
        opt.state_dict()
    with pytest.raises(ValueError, match="both named 'weight'"):
        opt.set_state_dict({})


def test_truncated_file_is_a_clear_error(tmp_path):
    params, opt, _, _, _ = trained()
    path = tmp_path / "opt.pdopt"
    triton_adam.save(opt.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        triton_adam.load(path)
