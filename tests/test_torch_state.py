"""Does the PyTorch face's state travel in ``torch.optim.AdamW``'s format, both ways, and is
loading all-or-nothing?

* a checkpoint of ``torch.optim.AdamW`` (saved and loaded through ``torch.save``) loads into
  ``triton_adam.optim.AdamW`` and the run continues as torch's does; ours loads into
  ``torch.optim.AdamW`` and continues as ours does (float64, to ~1e-15);
* our own round trip is bitwise: the state dict after a load is the saved one, and two runs
  continue bit for bit (master weights, amsgrad, several groups, capturable);
* the layout is torch's: ``step`` a float32 scalar tensor (on the CPU, or the parameters'
  device when capturable), torch's group keys, parameter ids matched by position (ints, or
  the names ``torch.distributed.checkpoint`` uses); ``master`` is the one extra entry;
* torch's rules: saved group options replace the current ones, a parameter without saved
  state starts afresh, ``optimizer.state[p] = entry`` (as Lightning writes it) loads one
  entry;
* every bad input raises a ``StateDictError`` naming what is wrong, and changes nothing
  (params, state, which parameters have state, param_groups): a list of cases, and random
  corruptions of a valid dict (hypothesis).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import DEVICE, fma_tol
from triton_adam import StateDictError, optim

F64 = fma_tol(torch.float64, rtol=1e-12, atol=1e-13)  # short float64 runs (~1e-15 measured)
SHAPES = [(17,), (3, 5), (1,)]


# ------------------------------------------------------------------------------ helpers
def _params(dtype=torch.float64, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE)
            .requires_grad_() for s in shapes]


def _saved(state_dict):
    """``state_dict`` as another process would read it: through torch.save / torch.load."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _step(opt, params, seed, skip=()):
    gen = torch.Generator().manual_seed(seed)
    for k, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        p.grad = None if k in skip else g.to(p.device)
    opt.step()


def _groups(params):
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.02, "betas": (0.8, 0.9)}]


def _assert_same_run(ours, theirs, tol):
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach().cpu(), q.detach().cpu(), **tol)


def snapshot(opt, params):
    """What a failed load must leave as it was."""
    sd = opt.state_dict()
    return {"params": [p.detach().clone() for p in params],
            "state": {i: {k: v.detach().clone() for k, v in entry.items()}
                      for i, entry in sd["state"].items()},
            "groups": copy.deepcopy([{k: v for k, v in g.items() if k != "params"}
                                     for g in opt.param_groups]),
            "group_params": [[id(p) for p in g["params"]] for g in opt.param_groups],
            "has_state": [opt.engine.has_state(i) for i in range(len(params))]}


def assert_unchanged(opt, params, before):
    after = snapshot(opt, params)
    assert all(torch.equal(a, b) for a, b in zip(after["params"], before["params"]))
    assert after["has_state"] == before["has_state"]
    assert after["state"].keys() == before["state"].keys()
    for i, entry in before["state"].items():
        assert after["state"][i].keys() == entry.keys()
        for k, v in entry.items():
            assert torch.equal(after["state"][i][k], v), (i, k)
    assert after["groups"] == before["groups"]
    assert after["group_params"] == before["group_params"]


# ------------------------------------------------------------------ both ways with torch
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adamw", "amsgrad"])
def test_a_torch_checkpoint_loads_and_continues_as_torch(amsgrad):
    """torch.optim.AdamW, two groups (other lr and betas than ours are built with), three
    steps in which one parameter has no gradient; its checkpoint loads into ours over copies
    of the parameters, and four more steps give torch's results (the late parameter's first
    steps included)."""
    theirs = _params(seed=1)
    ref = torch.optim.AdamW(_groups([p.detach().cpu().clone().requires_grad_()
                                     for p in theirs]), lr=0.01, weight_decay=0.05,
                            amsgrad=amsgrad, foreach=False)
    ref_params = [p for g in ref.param_groups for p in g["params"]]
    for s in range(3):
        _step(ref, ref_params, s, skip={2})
    checkpoint = _saved(ref.state_dict())
    assert set(checkpoint["state"]) == {0, 1}  # the third parameter never had a gradient

    ours_params = [p.detach().clone().to(DEVICE).requires_grad_() for p in ref_params]
    opt = optim.AdamW([{"params": ours_params[:2]}, {"params": ours_params[2:]}],
                      lr=0.5, amsgrad=amsgrad)  # other options: the checkpoint's win
    opt.load_state_dict(checkpoint)
    for key in ("lr", "betas", "weight_decay", "eps"):
        assert [g[key] for g in opt.param_groups] == [g[key] for g in ref.param_groups]
    assert not opt.state[ours_params[2]]
    for s in range(3, 7):
        _step(ref, ref_params, s)
        _step(opt, ours_params, s)
    _assert_same_run(ours_params, ref_params, F64)
    for p, q in zip(ours_params, ref_params):
        ours, theirs_state = opt.state[p], ref.state[q]
        assert ours.keys() == theirs_state.keys()
        assert float(ours["step"]) == float(theirs_state["step"])
        for k in ours.keys() - {"step"}:
            torch.testing.assert_close(ours[k].cpu(), theirs_state[k], **F64)


def test_our_checkpoint_loads_into_torch_and_continues_as_ours():
    """Ours (AdamW, amsgrad, two groups, a parameter without state) saved, loaded into
    torch.optim.AdamW: four more steps give our results."""
    params = _params(seed=2)
    opt = optim.AdamW(_groups(params), lr=0.01, weight_decay=0.05, amsgrad=True)
    for s in range(3):
        _step(opt, params, s, skip={2})
    checkpoint = _saved(opt.state_dict())
    step = checkpoint["state"][0]["step"]
    assert step.dtype == torch.float32 and step.shape == () and step.device.type == "cpu"
    assert set(checkpoint["state"]) == {0, 1}

    twins = [p.detach().cpu().clone().requires_grad_() for p in params]
    ref = torch.optim.AdamW([{"params": twins[:2]}, {"params": twins[2:]}], amsgrad=True,
                            foreach=False)
    ref.load_state_dict(checkpoint)
    assert ref.param_groups[1]["betas"] == (0.8, 0.9)
    for s in range(3, 7):
        _step(opt, params, s)
        _step(ref, twins, s)
    _assert_same_run(params, twins, F64)


# ----------------------------------------------------------------------------- our own
@pytest.mark.parametrize("capturable", [False, True], ids=["eager", "capturable"])
def test_round_trip_is_bitwise(capturable):
    """bf16 parameters with master weights beside float32 ones, amsgrad, two groups: the
    state dict of an optimizer that loaded a checkpoint is the checkpoint bit for bit, and it
    continues bit for bit as the run that saved it (the bias corrections follow from the
    step count, which the format holds)."""
    def build(seed):
        params = (_params(torch.float32, seed, [(17,), (3, 5)])
                  + _params(torch.bfloat16, seed + 7, [(9,)]))
        return params, optim.AdamW(_groups(params), lr=0.01, amsgrad=True,
                                   master_weights=True, capturable=capturable)

    params, opt = build(3)
    for s in range(2):
        _step(opt, params, s)
    saved = _saved(opt.state_dict())
    entry = saved["state"][2]
    assert entry["master"].dtype == torch.float32 and entry["exp_avg"].dtype == torch.float32
    assert entry["step"].dtype == torch.float32 and entry["step"].shape == ()
    assert entry["step"].device.type == (DEVICE.type if capturable else "cpu")
    assert torch.equal(opt.state[params[2]]["master"].to(torch.bfloat16), params[2].detach())

    twins, other = build(4)  # other values: the model's checkpoint is loaded into them
    with torch.no_grad():
        for t, p in zip(twins, params):
            t.copy_(p)
    other.load_state_dict(saved)
    again = other.state_dict()
    assert [{k: v for k, v in g.items() if k != "params"} for g in again["param_groups"]] \
        == [{k: v for k, v in g.items() if k != "params"} for g in saved["param_groups"]]
    assert again["state"].keys() == saved["state"].keys()
    for i, entry in saved["state"].items():
        assert again["state"][i].keys() == entry.keys()
        for k, v in entry.items():
            assert torch.equal(again["state"][i][k].cpu(), v.cpu()), (i, k)
    for s in range(2, 4):
        _step(opt, params, s)
        _step(other, twins, s)
    for p, t in zip(params, twins):
        assert torch.equal(p, t)
        for k, v in opt.state[p].items():
            assert torch.equal(v, other.state[t][k]), k


def test_a_torch_bf16_checkpoint_loads_with_master_weights_from_the_parameters():
    """torch keeps a bf16 parameter's moments in bf16 and has no master weights: they load
    (widened exactly), the master is the parameter; ours with a master into an optimizer
    without master weights is refused, naming the entry."""
    p = _params(torch.bfloat16, 5, [(9,)])[0]
    ref_p = p.detach().cpu().clone().requires_grad_()
    ref = torch.optim.AdamW([ref_p], lr=0.01, foreach=False)
    _step(ref, [ref_p], 0)
    checkpoint = _saved(ref.state_dict())
    assert checkpoint["state"][0]["exp_avg"].dtype == torch.bfloat16
    with torch.no_grad():
        p.copy_(ref_p)
    opt = optim.AdamW([p], lr=0.01, master_weights=True)
    opt.load_state_dict(checkpoint)
    state = opt.state[p]
    assert state["exp_avg"].dtype == torch.float32
    assert torch.equal(state["exp_avg"].cpu(), checkpoint["state"][0]["exp_avg"].float())
    assert torch.equal(state["master"].cpu(), ref_p.detach().float())
    _step(opt, [p], 1)

    plain = optim.AdamW([_params(torch.bfloat16, 6, [(9,)])[0]], lr=0.01)
    with pytest.raises(StateDictError, match=r"keep: .master.*master_weights=False"):
        plain.load_state_dict(_saved(opt.state_dict()))
    assert not plain.state


def test_ids_are_matched_by_position_as_torch_and_dcp_do():
    """``torch.distributed.checkpoint`` loads with parameter names as ids: matched by
    position in the groups, as torch matches its int ids."""
    params = _params(seed=8)
    opt = optim.AdamW(_groups(params), lr=0.01)
    for s in range(2):
        _step(opt, params, s)
    saved = _saved(opt.state_dict())
    names = ["w", "b", "head.w"]
    renamed = {"state": {names[i]: v for i, v in saved["state"].items()},
               "param_groups": [dict(g, params=[names[i] for i in g["params"]])
                                for g in saved["param_groups"]]}
    twins = [p.detach().clone().requires_grad_() for p in params]
    other = optim.AdamW(_groups(twins), lr=0.01)
    other.load_state_dict(renamed)
    for p, t in zip(params, twins):
        for k, v in opt.state[p].items():
            assert torch.equal(v.cpu(), other.state[t][k].cpu())


def test_a_parameter_without_saved_state_starts_afresh_as_in_torch():
    """Ours has state for every parameter; the checkpoint (torch's) has none for one: after
    the load that parameter starts from zero moments at step 1, as torch's does."""
    params = _params(seed=9)
    ref_params = [p.detach().cpu().clone().requires_grad_() for p in params]
    ref = torch.optim.AdamW(ref_params, lr=0.01, foreach=False)
    _step(ref, ref_params, 0, skip={1})
    checkpoint = _saved(ref.state_dict())
    opt = optim.AdamW(params, lr=0.01)
    for s in range(3):
        _step(opt, params, 10 + s)
    with torch.no_grad():
        for p, r in zip(params, ref_params):
            p.copy_(r)
    opt.load_state_dict(checkpoint)
    assert float(opt.state[params[1]]["step"]) == 0
    for s in range(1, 3):
        _step(ref, ref_params, s)
        _step(opt, params, s)
    _assert_same_run(params, ref_params, F64)


def test_state_entries_can_be_written_one_parameter_at_a_time():
    """``optimizer.state[p] = entry`` (Lightning moves the state to the device that way) loads
    that entry with the load rules; deleting one raises; hooks of load_state_dict run."""
    params = _params(seed=10)
    opt = optim.AdamW(params, lr=0.01)
    _step(opt, params, 0)
    entry = {k: (v.to(DEVICE) if k != "step" else v) for k, v in opt.state[params[0]].items()}
    entry["exp_avg"] = entry["exp_avg"] * 2
    opt.state[params[0]] = entry
    assert torch.equal(opt.state[params[0]]["exp_avg"], entry["exp_avg"])
    with pytest.raises(StateDictError, match=r"has no \['exp_avg_sq'\]"):
        opt.state[params[1]] = {"step": torch.tensor(1.0), "exp_avg": entry["exp_avg"]}
    with pytest.raises(TypeError, match="cannot be deleted"):
        del opt.state[params[0]]
    calls = []
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("post"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("saved"))
    opt.load_state_dict(opt.state_dict())
    assert calls == ["saved", "pre", "post"]


def test_loading_before_the_first_step_creates_the_state():
    params = _params(seed=11)
    opt = optim.AdamW(params, lr=0.01)
    _step(opt, params, 0)
    saved = _saved(opt.state_dict())
    fresh = optim.AdamW([p.detach().clone().requires_grad_() for p in params], lr=0.01)
    assert not fresh.state
    fresh.load_state_dict(saved)
    assert len(fresh.state) == 3
    assert float(fresh.state_dict()["state"][1]["step"]) == 1


# ------------------------------------------------------------------------- all or nothing
def _valid_run():
    """An optimizer with state (two groups, amsgrad, one parameter never updated) and a valid
    state dict of another run of the same layout."""
    def build(seed):
        params = _params(seed=seed)
        opt = optim.AdamW(_groups(params), lr=0.01, amsgrad=True)
        _step(opt, params, seed, skip={2})
        return params, opt

    params, opt = build(12)
    _, source = build(13)
    return params, opt, _saved(source.state_dict())


def _entry(sd, i=0):
    return sd["state"][i]


# (description, corruption of a valid state dict, the error's message)
CORRUPTIONS = [
    ("not a dict", lambda sd: [sd], "must be a dict"),
    ("no 'state'", lambda sd: sd.pop("state"), r"has no \['state'\]"),
    ("an extra key", lambda sd: sd.update(extra=1), "keys other than"),
    ("one group less", lambda sd: sd["param_groups"].pop(), "different number of parameter"),
    ("a group without a parameter", lambda sd: sd["param_groups"][0]["params"].pop(),
     "doesn't match the size"),
    ("a parameter listed twice", lambda sd: sd["param_groups"][1]["params"].__setitem__(0, 0),
     "listed twice"),
    ("state of an unknown id", lambda sd: sd["state"].update({7: _entry(sd)}),
     "which no group"),
    ("state not a dict", lambda sd: sd["state"].update({0: [1, 2]}), "must be a dict"),
    ("no step", lambda sd: _entry(sd).pop("step"), r"has no \['step'\]"),
    ("no exp_avg", lambda sd: _entry(sd).pop("exp_avg"), r"has no \['exp_avg'\]"),
    ("no max_exp_avg_sq", lambda sd: _entry(sd, 1).pop("max_exp_avg_sq"),
     "amsgrad=True"),
    ("an unknown key", lambda sd: _entry(sd).update(momentum=torch.zeros(17)),
     "does not keep"),
    ("master of a float64 parameter", lambda sd: _entry(sd).update(
        master=torch.zeros(17)), "master_weights=False"),
    ("wrong shape", lambda sd: _entry(sd).update(exp_avg=torch.zeros(18,
                                                                      dtype=torch.float64)),
     r"has shape \[18\], expected \[17\]"),
    ("wrong dtype", lambda sd: _entry(sd, 1).update(
        exp_avg_sq=_entry(sd, 1)["exp_avg_sq"].float()), "has dtype torch.float32"),
    ("a list", lambda sd: _entry(sd).update(exp_avg=[0.0] * 17), "is a list"),
    ("a sparse tensor", lambda sd: _entry(sd).update(
        exp_avg=torch.zeros(17, dtype=torch.float64).to_sparse()), "sparse"),
    ("a meta tensor", lambda sd: _entry(sd).update(
        exp_avg=torch.zeros(17, dtype=torch.float64, device="meta")), "meta device"),
    ("step nan", lambda sd: _entry(sd).update(step=torch.tensor(float("nan"))),
     "finite whole number"),
    ("step inf", lambda sd: _entry(sd, 1).update(step=torch.tensor(float("inf"))),
     "finite whole number"),
    ("step negative", lambda sd: _entry(sd).update(step=torch.tensor(-1.0)),
     "finite whole number"),
    ("step fractional", lambda sd: _entry(sd).update(step=torch.tensor(1.5)),
     "finite whole number"),
    ("step of two elements", lambda sd: _entry(sd).update(step=torch.ones(2)),
     "one element"),
    ("step a string", lambda sd: _entry(sd).update(step="1"), "is a str"),
    ("negative lr", lambda sd: sd["param_groups"][1].update(lr=-1.0),
     "Invalid learning rate"),
    ("a beta of 1", lambda sd: sd["param_groups"][0].update(betas=(1.0, 0.9)),
     "Invalid beta parameter at index 0"),
    ("three betas", lambda sd: sd["param_groups"][0].update(betas=(0.9, 0.9, 0.9)),
     "must be a pair"),
    ("amsgrad flipped", lambda sd: sd["param_groups"][1].update(amsgrad=False),
     "amsgrad=True"),
    ("no lr", lambda sd: sd["param_groups"][0].pop("lr"), "has no 'lr'"),
]


@pytest.mark.parametrize("name, corrupt, match", CORRUPTIONS,
                         ids=[c[0] for c in CORRUPTIONS])
def test_a_bad_state_dict_raises_and_changes_nothing(name, corrupt, match):
    params, opt, sd = _valid_run()
    before = snapshot(opt, params)
    result = corrupt(sd)
    bad = result if isinstance(result, list) else sd
    with pytest.raises(StateDictError, match=match):
        opt.load_state_dict(bad)
    assert_unchanged(opt, params, before)


def _mutations():
    """Random corruptions: a value replaced in an entry or a group (hypothesis)."""
    bad_values = st.sampled_from([
        None, 1.5, "x", [1.0], torch.zeros(2, dtype=torch.float64),
        torch.zeros(17, dtype=torch.float16), torch.full((), float("nan")),
        torch.zeros(3, 5, dtype=torch.float64).t(), torch.zeros(1, dtype=torch.int64)])
    entry = st.tuples(st.just("state"), st.sampled_from([0, 1]),
                      st.sampled_from(["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
                      bad_values)
    group = st.tuples(st.just("group"), st.sampled_from([0, 1]),
                      st.sampled_from(["lr", "betas", "eps", "weight_decay", "amsgrad",
                                       "maximize", "params"]),
                      st.sampled_from([None, -1.0, "x", (0.5,), (2.0, 0.5), True,
                                       float("inf"), [0]]))
    return st.lists(st.one_of(entry, group), min_size=1, max_size=3)


@given(mutations=_mutations())
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
def test_random_corruptions_raise_or_load_and_never_half_load(mutations):
    """Random bad values in entries and groups: either the load raises a StateDictError and
    nothing changed, or (a value that happens to be valid, e.g. ``maximize=True``) it loads
    completely. A fractional or wrong-shaped step, a moment of the wrong shape or dtype, an
    invalid option: always an error."""
    params, opt, sd = _valid_run()
    before = snapshot(opt, params)
    for where, index, key, value in mutations:
        if where == "state":
            sd["state"][index][key] = value
        else:
            sd["param_groups"][index][key] = value
    try:
        opt.load_state_dict(sd)
    except StateDictError:
        assert_unchanged(opt, params, before)
        return
    # Loaded: every mutation was a valid value, and the state is the dict's.
    loaded = opt.state_dict()
    for i, entry in sd["state"].items():
        for k, v in entry.items():
            assert torch.equal(loaded["state"][i][k].cpu().to(v.dtype), v.reshape(
                loaded["state"][i][k].shape)), (i, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("step", [2.0 ** 24 - 2, 2.0 ** 24 - 1, 2.0 ** 24])
def test_a_step_count_at_the_float32_limit_keeps_torchs_bias_correction(dtype, step):
    """A checkpoint whose step count is at float32's 2^24 (where torch's float32 step stalls)
    continues as torch.optim.AdamW does: the bias corrections are 1 (beta ** t is 0 to the
    last bit), never the wrapped power of a truncated count (which made them 0, a NaN step).
    Tolerance: the dtype's (the same operations as torch's up to their order)."""
    ours, theirs = _params(dtype), _params(dtype)
    torch_opt = torch.optim.AdamW(theirs, lr=0.01, foreach=False)
    _step(torch_opt, theirs, 0)
    sd = torch_opt.state_dict()
    for entry in sd["state"].values():
        entry["step"] = torch.tensor(step)
    torch_opt.load_state_dict(sd)
    opt = optim.AdamW(ours, lr=0.01)
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            p.copy_(q)
    opt.load_state_dict(_saved(torch_opt.state_dict()))
    for seed in (1, 2):
        _step(opt, ours, seed)
        _step(torch_opt, theirs, seed)
    assert all(torch.isfinite(p).all() for p in ours)
    # The bound of tests/test_torch_optim.py's docstring for 3 steps at lr=0.01 and the
    # default betas (u: the unit roundoff): the rounded 1 - beta constants dominate.
    u = torch.finfo(dtype).eps / 2
    per_update = (3 * u / 0.1 + 2 * u / 0.001) + 4 * u / (0.1 * 0.001 ** 0.5)
    _assert_same_run(ours, theirs, fma_tol(dtype, rtol=6 * u, atol=3 * 0.01 * per_update))
