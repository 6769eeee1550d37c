"""Is ``set_state_dict`` all-or-nothing against any bad value, and does every name round-trip?

* every kind of bad value (wrong type, wrong shape or dtype, a tensor without values: meta,
  fake, sparse, nested) raises a ``StateDictError`` naming the key, before anything is
  written: params, master weights, moments, pows, the scheduler and the set of parameters
  with state are what they were. Mismatches are ``AssertionError`` too, as in Paddle;
* good values in other forms load the same: numpy arrays of either byte order, read-only or
  strided ones, views of the optimizer's own state under other keys;
* keys that would collide (a parameter named like another's master weight) are an error in
  ``state_dict()`` and ``set_state_dict()``; names that look like keys
  (``x_fp32_master_1``, ``a_moment1_0``) round-trip, also with other counters;
* the same, as properties (hypothesis): random mutations of a valid state dict, random names.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import triton_adam
from devices import DEVICE, import_paddle, needs_paddle
from triton_adam import state as S

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
# fp32 parameters of these shapes and one bf16 parameter with fp32 master weights (the last
# in creation order, so a bad value there comes after everything else was checked).
SHAPES = [(3,), (2, 5), (3,)]
LOW = (7,)


# ----------------------------------------------------------------------------- helpers
def make_params(names, dtypes=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dtypes = dtypes or [torch.float32] * len(names)
    shapes = (SHAPES + [LOW] * len(names))[:len(names)]
    return [(name, torch.nn.Parameter(torch.randn(shape, generator=gen).to(DEVICE, dtype)))
            for name, shape, dtype in zip(names, shapes, dtypes)]


def step(opt, params, seed):
    gen = torch.Generator().manual_seed(seed)
    for _, p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(DEVICE, p.dtype)
    opt.step()
    opt.clear_grad(set_to_zero=False)


def make_run(steps=2, seed=0, amsgrad=True, multi_tensor=False, schedule=True, names=None,
             **kw):
    """``(params, opt, scheduler)`` after ``steps`` steps."""
    names = names or ["a", "b", "c", "low"]
    dtypes = [torch.float32] * (len(names) - 1) + [torch.bfloat16]
    params = make_params(names, dtypes, seed)
    sched = triton_adam.lr.StepDecay(0.01, step_size=1, gamma=0.5) if schedule else 0.01
    opt = triton_adam.Adam(sched, parameters=params, amsgrad=amsgrad, multi_precision=True,
                           per_tensor_launches=not multi_tensor, **kw)
    for s in range(steps):
        step(opt, params, seed * 100 + s)
        if schedule:
            sched.step()
    return params, opt, sched if schedule else None


def snapshot(opt, params=()):
    """Everything a failed load must leave as it was: a deep copy of the state dict, the
    params, and which parameters have state."""
    return {"state": copy.deepcopy({k: v.detach().clone() if isinstance(v, torch.Tensor)
                                    else v for k, v in opt.state_dict().items()}),
            "params": [p.detach().clone() for _, p in params],
            "created": [list(b.created) for b in opt.engine.buckets],
            "lr": opt.get_lr()}


def assert_same(a, b, where=""):
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    else:
        assert a == b, where


def key_of(opt, name, acc):
    """The key of ``acc`` of parameter ``name`` in ``opt.state_dict()``."""
    matches = [k for k in opt.state_dict() if k.startswith(name + "_") and k.endswith(
        f"_{acc}_0") and S._ACC_KEY.fullmatch(k).group(2) == acc]
    assert len(matches) == 1, matches
    return matches[0]


def fake_of(t):
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode().from_tensor(t)


# Bad values, by how they are bad: (make the value from the good one, exception type).
BAD_VALUES = {
    "meta tensor": (lambda v: torch.empty(v.shape, dtype=v.dtype, device="meta"),
                    S.StateDictTypeError),
    "fake tensor": (fake_of, S.StateDictTypeError),
    "sparse tensor": (lambda v: v.to_sparse(), S.StateDictTypeError),
    "nested tensor": (lambda v: torch.nested.nested_tensor([v.reshape(-1)]),
                      S.StateDictTypeError),
    "list": (lambda v: v.tolist(), S.StateDictTypeError),
    "None": (lambda v: None, S.StateDictTypeError),
    "float": (lambda v: 0.5, S.StateDictTypeError),
    "str": (lambda v: "0.5", S.StateDictTypeError),
    "dict": (lambda v: {"value": v}, S.StateDictTypeError),
    "numpy scalar": (lambda v: np.float32(0.5), S.StateDictTypeError),
    "wrong shape": (lambda v: v.reshape(-1)[:-1].clone() if v.numel() > 1
                    else torch.zeros(2, dtype=v.dtype), S.StateDictError),
    "extra dimension": (lambda v: v[None].clone(), S.StateDictError),
    "float64": (lambda v: v.double(), S.StateDictError),
    "float16 numpy": (lambda v: v.cpu().numpy().astype(np.float16), S.StateDictError),
    "int32": (lambda v: v.int(), S.StateDictError),
    "complex": (lambda v: v.to(torch.complex64), S.StateDictError),
    "object array": (lambda v: np.array(v.cpu().tolist(), dtype=object), S.StateDictError),
    "str array": (lambda v: np.full(tuple(v.shape), "x"), S.StateDictError),
}
# Values that hold the right numbers in another form: they load exactly.
GOOD_FORMS = {
    "big-endian numpy": lambda v: v.cpu().numpy().astype(v.cpu().numpy().dtype.newbyteorder(">")),
    "read-only numpy": lambda v: np.lib.stride_tricks.as_strided(
        v.cpu().numpy().copy(), writeable=False),
    "strided numpy": lambda v: np.repeat(v.cpu().numpy()[..., None], 2, axis=-1)[..., 0],
    "strided tensor": lambda v: torch.stack([v, v], dim=-1)[..., 0],
    "requires_grad tensor": lambda v: v.clone().requires_grad_(True),
    "nn.Parameter": lambda v: torch.nn.Parameter(v.clone()),
    "cpu tensor": lambda v: v.cpu(),
}


# ----------------------------------------------------------------------------- item 3
@pytest.mark.parametrize("acc", ["moment1", "moment2_max", "beta2_pow_acc", "master"])
@pytest.mark.parametrize("bad", list(BAD_VALUES))
def test_bad_value_raises_naming_the_key_and_changes_nothing(bad, acc):
    params, opt, sched = make_run(steps=2, seed=1)
    _, source, _ = make_run(steps=3, seed=2)  # other values for every key
    state = source.state_dict()
    if acc == "master":
        key = "master_weights/low"
        state["master_weights"] = dict(state["master_weights"])
        good = state["master_weights"]["low"]
        state["master_weights"]["low"] = BAD_VALUES[bad][0](good)
    else:
        key = key_of(source, "low", acc)
        state[key] = BAD_VALUES[bad][0](state[key])
    before = snapshot(opt, params)
    with pytest.raises(BAD_VALUES[bad][1]) as info:
        opt.set_state_dict(state)
    assert key in str(info.value)
    assert isinstance(info.value, AssertionError)  # Paddle asserts on the same mismatches
    assert_same(snapshot(opt, params), before)
    # Before the first step: no state is created either.
    fresh_params = make_params(["a", "b", "c", "low"], [torch.float32] * 3 + [torch.bfloat16])
    sched = triton_adam.lr.StepDecay(0.01, step_size=1)
    fresh = triton_adam.Adam(sched, amsgrad=True, parameters=fresh_params,
                             multi_precision=True)
    with pytest.raises(BAD_VALUES[bad][1]):
        fresh.set_state_dict(state)
    assert fresh.engine.buckets == [] and set(fresh.state_dict()) == {"LR_Scheduler"}
    assert sched.last_epoch == 0  # the scheduler driving the optimizer: not loaded either


@pytest.mark.parametrize("form", list(GOOD_FORMS))
@pytest.mark.parametrize("multi_tensor", [False, True])
def test_values_in_other_forms_load_exactly(form, multi_tensor):
    params, opt, _ = make_run(steps=1, seed=3, multi_tensor=multi_tensor)
    _, source, _ = make_run(steps=3, seed=4)
    want = snapshot(source)["state"]
    state = {k: GOOD_FORMS[form](v) if isinstance(v, torch.Tensor) else v
             for k, v in want.items()}
    state["master_weights"] = {k: GOOD_FORMS[form](v)
                               for k, v in want["master_weights"].items()}
    opt.set_state_dict(state)
    assert_same(snapshot(opt)["state"], want)


@needs_paddle
def test_mismatch_exception_types_are_paddles():
    """Paddle raises AssertionError for a shape or dtype mismatch and for a list value; ours
    are AssertionErrors as well (and our own StateDictError types)."""
    paddle = import_paddle()
    p = paddle.create_parameter([3], dtype="float32")
    popt = paddle.optimizer.Adam(0.01, parameters=[p])
    (p * 2).sum().backward()
    popt.step()
    theirs = {k: v.numpy() for k, v in popt.state_dict().items() if hasattr(v, "numpy")}
    pkey = next(k for k in theirs if k.endswith("moment1_0"))
    params, opt, _ = make_run(steps=1, schedule=False)
    ours = snapshot(opt)["state"]
    okey = key_of(opt, "a", "moment1")
    for make in (lambda v: v[None], lambda v: v.astype(np.float64), lambda v: v.tolist()):
        with pytest.raises(AssertionError):
            popt.set_state_dict({**theirs, pkey: make(theirs[pkey])})
        with pytest.raises(AssertionError) as info:
            opt.set_state_dict({**ours, okey: make(ours[okey].cpu().numpy())})
        assert isinstance(info.value, S.StateDictError)


def test_nothing_is_written_before_everything_is_checked():
    """The bad value is the last one checked: the parameters before it keep their state, the
    scheduler its epoch (a loader that wrote as it checked would have changed them)."""
    params, opt, sched = make_run(steps=1, seed=5)
    _, source, _ = make_run(steps=3, seed=6)
    state = dict(source.state_dict())
    key = key_of(source, "low", "beta2_pow_acc")
    state[key] = torch.empty(1, device="meta")
    before = snapshot(opt, params)
    with pytest.raises(S.StateDictTypeError, match=key):
        opt.set_state_dict(state)
    assert_same(snapshot(opt, params), before)
    assert sched.last_epoch == 1


def test_scheduler_values_are_checked_and_restored():
    params, opt, sched = make_run(steps=1, seed=7)
    _, source, _ = make_run(steps=2, seed=8)
    before = snapshot(opt, params)
    for bad, error in (({"last_epoch": "2", "last_lr": 0.1}, S.StateDictTypeError),
                       ({"last_epoch": 2, "last_lr": [0.1]}, S.StateDictTypeError),
                       ({"last_epoch": 2, "last_lr": float("nan")}, S.StateDictError),
                       ({"last_epoch": 2}, RuntimeError)):  # the scheduler's own check
        with pytest.raises(error, match="LR_Scheduler|last_lr"):
            opt.set_state_dict({**source.state_dict(), "LR_Scheduler": bad})
        assert_same(snapshot(opt, params), before)


def test_failure_while_building_state_restores_the_scheduler():
    """Loading before the first step builds the buckets, which reads per-parameter options
    (lr_ratio): an error there leaves the scheduler where it was and no state."""
    _, source, _ = make_run(steps=2, seed=9, schedule=True)
    state = source.state_dict()
    params = make_params(["a", "b", "c", "low"], [torch.float32] * 3 + [torch.bfloat16])
    sched = triton_adam.lr.StepDecay(0.01, step_size=1, gamma=0.5)
    opt = triton_adam.AdamW(sched, parameters=params, multi_precision=True, amsgrad=True,
                            lr_ratio=lambda p: "fast")
    with pytest.raises(TypeError, match="lr_ratio"):
        opt.set_state_dict(state)
    assert sched.last_epoch == 0 and sched.last_lr == 0.01
    assert opt.state_dict() == {"LR_Scheduler": sched.state_dict()}


@pytest.mark.parametrize("multi_tensor", [False, True])
def test_own_views_under_other_keys_are_read_before_writing(multi_tensor):
    """``opt.state_dict()`` holds views of the live state: loading it with two parameters'
    keys swapped swaps their state (a loader copying view to view in order would copy the
    first overwritten value into the second); loading it as it is changes nothing."""
    params, opt, _ = make_run(steps=2, seed=10, multi_tensor=multi_tensor)
    want = snapshot(opt)["state"]
    opt.set_state_dict(opt.state_dict())
    assert_same(snapshot(opt)["state"], want)
    live = opt.state_dict()
    swapped = dict(live)
    for acc in ("moment1", "moment2", "moment2_max", "beta1_pow_acc", "beta2_pow_acc"):
        ka, kc = key_of(opt, "a", acc), key_of(opt, "c", acc)  # a and c: both shaped (3,)
        swapped[ka], swapped[kc] = live[kc], live[ka]
    opt.set_state_dict(swapped)
    got = snapshot(opt)["state"]
    for acc in ("moment1", "moment2", "moment2_max", "beta1_pow_acc", "beta2_pow_acc"):
        ka, kc = key_of(opt, "a", acc), key_of(opt, "c", acc)
        assert torch.equal(got[ka], want[kc]) and torch.equal(got[kc], want[ka]), acc


# ----------------------------------------------------------------------------- item 6
def test_parameter_named_like_a_master_weight_is_an_error():
    """bf16 ``w`` with master weights keys its state ``w_fp32_master_0_...``: an fp32 parameter
    named ``w_fp32_master_0`` would have the same keys and overwrite it in state_dict()."""
    params = make_params(["w_fp32_master_0", "w"], [torch.float32, torch.bfloat16])
    opt = triton_adam.Adam(0.01, parameters=params, multi_precision=True)
    step(opt, params, 0)
    before = [p.detach().clone() for _, p in params]
    for call in (opt.state_dict, lambda: opt.set_state_dict({})):
        with pytest.raises(ValueError, match=r"'w_fp32_master_0'.*'w'") as info:
            call()
        assert "master weight" in str(info.value)
    assert all(torch.equal(p, q) for (_, p), q in zip(params, before))
    # Without master weights the names do not meet: both keys exist, each with its state.
    params = make_params(["w_fp32_master_0", "w"], [torch.float32, torch.bfloat16])
    with pytest.warns(UserWarning, match="multi_precision"):
        opt = triton_adam.Adam(0.01, parameters=params)
        step(opt, params, 0)
    assert {k.rsplit("_moment1_0", 1)[0] for k in opt.state_dict()
            if k.endswith("_moment1_0")} == {"w_fp32_master_0", "w"}


NAMES_LIKE_KEYS = ["x_fp32_master_1", "a_moment1_0", "b_beta1_pow_acc_0", "m_moment2",
                   "w_fp32_master_0_moment1", "odd.name*+?[", "line\nbreak", "é_1", "_0"]


@pytest.mark.parametrize("opt_name", [None, "opt"])
@pytest.mark.parametrize("counter", [0, 1])
def test_names_that_look_like_keys_round_trip(opt_name, counter):
    names = NAMES_LIKE_KEYS + ["x", "opt", "x_opt"]
    dtypes = [torch.bfloat16 if n in ("x", "é_1") else torch.float32 for n in names]
    params = make_params(names, dtypes, seed=11)
    kw = dict(multi_precision=True, amsgrad=True, name=opt_name)
    opt = triton_adam.Adam(0.01, parameters=params, **kw)
    step(opt, params, 1)
    want = snapshot(opt)["state"]
    assert len(want) == 5 * len(names) + 1  # no key lost to another
    saved = opt.state_dict()
    if counter:  # as a second optimizer in one Paddle process writes them
        saved = {(k[:-2] + "_1" if k.endswith("_0") else k): v for k, v in saved.items()}
    copies = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in params]
    other = triton_adam.Adam(0.01, parameters=copies, **kw)
    other.set_state_dict(saved)
    assert_same(snapshot(other)["state"], want)


def test_a_key_that_is_another_parameters_is_not_taken_for_a_counter():
    """``x`` (bf16, master) and ``x_fp32_master_1`` (fp32): a dict from another process keys
    x's master state ``x_fp32_master_2_...`` and every key ends in ``_1``;
    ``x_fp32_master_1_..._1`` is the fp32 parameter's key with another counter, never x's."""
    params = make_params(["x_fp32_master_1", "x"], [torch.float32, torch.bfloat16], seed=12)
    opt = triton_adam.Adam(0.01, parameters=params, multi_precision=True)
    step(opt, params, 2)
    want = snapshot(opt)["state"]
    saved = {k.replace("x_fp32_master_0_", "x_fp32_master_2_")[:-1] + "1"
             if k.endswith("_0") else k: v for k, v in opt.state_dict().items()}
    copies = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in params]
    other = triton_adam.Adam(0.01, parameters=copies, multi_precision=True)
    other.set_state_dict(saved)
    got = snapshot(other)["state"]
    assert_same(got, want)


# ----------------------------------------------------------------------------- properties
# A mutation of one entry: (name, function of (key, value) -> new value or _DROP).
_DROP = object()
MUTATIONS = {**{f"bad: {k}": v[0] for k, v in BAD_VALUES.items() if k != "fake tensor"},
             **{f"good: {k}": v for k, v in GOOD_FORMS.items()}, "drop": lambda v: _DROP}


@pytest.fixture(scope="module")
def runs():
    """A source state and a target optimizer with other state (built once: stepping runs
    kernels under the interpreter)."""
    _, source, _ = make_run(steps=3, seed=13, amsgrad=True)
    params, target, sched = make_run(steps=1, seed=14, amsgrad=True)
    return snapshot(source)["state"], params, target, snapshot(target, params)


@PROPERTY
@given(data=st.data())
def test_property_random_mutations_load_exactly_or_change_nothing(runs, data):
    source, params, target, original = runs
    target.set_state_dict(original["state"])  # back to its own state (an earlier example
    before = snapshot(target, params)         # may have loaded the source)
    state = dict(source)
    state["master_weights"] = dict(source["master_weights"])
    entries = [("top", k) for k in state if k not in ("master_weights", "LR_Scheduler")]
    entries += [("master", k) for k in state["master_weights"]]
    changes = data.draw(st.lists(st.tuples(st.sampled_from(entries),
                                           st.sampled_from(sorted(MUTATIONS))),
                                 min_size=1, max_size=3), label="mutations")
    for (where, key), mutation in changes:
        holder = state if where == "top" else state["master_weights"]
        if key not in holder:
            continue
        new = MUTATIONS[mutation](holder[key]) if isinstance(holder[key], torch.Tensor) \
            else _DROP
        if new is _DROP:
            del holder[key]
        else:
            holder[key] = new
    extra = data.draw(st.sampled_from([None, "junk", "zz_moment1_0"]), label="extra key")
    if extra == "zz_moment1_0":  # an accumulator key of no parameter: harmless when all
        state[extra] = torch.zeros(3)  # the parameters are found
    elif extra:
        state[extra] = object()
    try:
        target.set_state_dict(state)
    except (S.StateDictError, RuntimeError) as e:
        assert str(e)
        assert_same(snapshot(target, params), before)
    else:
        assert_same(snapshot(target, params)["state"], source)
        assert all(not m.startswith("bad") for _, m in changes if m != "drop")


_FRAGMENTS = ["w", "x", "_", "0", "1", "fp32", "master", "moment1", "moment2", "max", "beta1",
              "pow", "acc", ".", "é", "\n", "opt"]


@PROPERTY
@given(names=st.lists(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=6).map(
           "".join), min_size=1, max_size=4, unique=True),
       low=st.lists(st.booleans(), min_size=4, max_size=4),
       opt_name=st.sampled_from([None, "opt", "0"]), counter=st.sampled_from([0, 3]))
def test_property_every_name_round_trips_or_collides_clearly(names, low, opt_name, counter):
    dtypes = [torch.bfloat16 if b else torch.float32 for b in low[:len(names)]]
    params = make_params(names, dtypes, seed=15)
    opt = triton_adam.Adam(0.01, parameters=params, multi_precision=True, name=opt_name)
    bases = [n + "_fp32_master_0" if d == torch.bfloat16 else n for n, d in zip(names, dtypes)]
    step(opt, params, 3)
    if len(set(bases)) < len(bases):
        with pytest.raises(ValueError, match="master weight"):
            opt.state_dict()
        return
    want = snapshot(opt)["state"]
    assert len([k for k in want if k.endswith("_moment1_0")]) == len(names)
    saved = opt.state_dict()
    if counter:
        saved = {(k[:-2] + f"_{counter}" if k.endswith("_0") else k): v
                 for k, v in saved.items()}
    copies = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in params]
    other = triton_adam.Adam(0.01, parameters=copies, multi_precision=True, name=opt_name)
    try:
        other.set_state_dict(saved)
    except S.StateDictError as e:  # other counters can be ambiguous: then nothing loads
        assert counter and "ambiguous" in str(e)
        assert other.engine.buckets == []
    else:
        assert_same(snapshot(other)["state"], want)
