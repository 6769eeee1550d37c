"""Does every error name the argument or key at fault and what was expected, and change
nothing?

Arguments that once failed deep inside torch or pickle with a message naming nothing: a beta
on the meta device, a group whose ``params`` is None, AdamW's ``weight_decay`` as a
several-element tensor, an AMP ``grad_scale`` / ``found_inf`` on the meta device, ``save`` of
a cyclic or too deep structure or of a meta tensor, pickling the optimizer, the distributed
state helpers given None or ``_1``-counter keys, and an ``lr_ratio`` that returns no number.
Each test checks the exception type, that the message names the culprit, and that the
parameters, the optimizer state and the files are as they were.
"""

from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest
import torch

import triton_adam
from devices import CUDA_MODE, DEVICE
from triton_adam import distributed as D
from triton_adam import io as tio


def make_params(n=2, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3 + i, generator=gen).to(DEVICE, dtype))
            for i in range(n)]


def set_grads(params, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(DEVICE, p.dtype)


def state_copy(opt):
    return {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in opt.state_dict().items()}


def assert_unchanged(params, before_params, opt=None, before_state=None):
    assert all(torch.equal(p, q) for p, q in zip(params, before_params))
    if opt is not None:
        after = opt.state_dict()
        assert after.keys() == before_state.keys()
        for k, v in before_state.items():
            assert torch.equal(after[k], v) if isinstance(v, torch.Tensor) else after[k] == v


META = torch.tensor(0.9, device="meta")


# ----------------------------------------------------------------------------- constructor
@pytest.mark.parametrize("arg", ["beta1", "beta2", "epsilon"])
def test_hyper_parameter_on_the_meta_device(arg):
    with pytest.raises(ValueError, match=rf"{arg} is a tensor on the meta device.*1-element"):
        triton_adam.Adam(parameters=make_params(), **{arg: META})
    with pytest.raises(ValueError, match=rf"parameters\[0\]\['{arg}'\] is a tensor on the meta "
                                         "device"):
        triton_adam.AdamW(parameters=[{"params": make_params(), arg: META}])
    sparse = torch.tensor([0.9]).to_sparse()
    with pytest.raises((TypeError, ValueError), match=arg):
        triton_adam.Adam(parameters=make_params(), **{arg: sparse})


@pytest.mark.parametrize("params", [None, 3, "abc", {"w": 1}])
def test_group_params_that_are_no_tensors(params):
    with pytest.raises(TypeError, match=r"parameters\[1\]\['params'\] is a .*expected a tensor"):
        triton_adam.Adam(parameters=[{"params": make_params()}, {"params": params}])


@pytest.mark.parametrize("value, words", [
    (torch.tensor([0.1, 0.2]), r"weight_decay given as a tensor.*one element.*shape \(2,\)"),
    (torch.zeros(0), r"weight_decay given as a tensor.*shape \(0,\)"),
    (torch.tensor(0.1, device="meta"), r"weight_decay given as a tensor.*meta"),
    ("0.1", r"weight_decay should be .*got str"),
])
def test_adamw_weight_decay_that_is_no_number(value, words):
    with pytest.raises(TypeError, match=words):
        triton_adam.AdamW(parameters=make_params(), weight_decay=value)


# ----------------------------------------------------------------------------- step
@pytest.mark.parametrize("which", ["grad_scale", "found_inf"])
@pytest.mark.parametrize("multi_tensor", [False, True])
def test_amp_tensor_on_the_meta_device(which, multi_tensor):
    params = make_params()
    opt = triton_adam.Adam(0.01, parameters=params, per_tensor_launches=not multi_tensor)
    set_grads(params)
    opt.step()
    set_grads(params, seed=2)
    before, state = [p.detach().clone() for p in params], state_copy(opt)
    good = torch.ones((), device=DEVICE)
    amp = {"grad_scale": good, "found_inf": torch.zeros((), device=DEVICE)}
    amp[which] = torch.ones((), device="meta")
    with pytest.raises(ValueError, match=rf"{which} is a tensor on meta.*{DEVICE.type}"):
        opt.step(**amp)
    assert_unchanged(params, before, opt, state)
    # Set as attributes, as torch.amp.GradScaler does: the same check.
    setattr(opt, which, amp[which])
    with pytest.raises(ValueError, match=which):
        opt.step()
    assert_unchanged(params, before, opt, state)


@pytest.mark.skipif(not CUDA_MODE, reason="needs parameters on a CUDA device")
def test_amp_tensor_on_another_kind_of_device():
    params = make_params()
    opt = triton_adam.Adam(0.01, parameters=params)
    set_grads(params)
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"grad_scale is a tensor on cpu.*cuda"):
        opt.step(grad_scale=torch.ones(()))
    assert_unchanged(params, before)


@pytest.mark.parametrize("ratio, words", [
    (True, r"a bool \(True\)"), ("0.5", r"a str \('0.5'\)"), (None, "a NoneType"),
    (torch.ones(2), r"a tensor of shape \(2,\)"), ([0.5], "a list"),
    (np.array([0.5, 0.5]), r"a numpy ndarray of shape \(2,\)"), (1j, "a complex"),
    (torch.tensor(True), r"a tensor of shape \(\) \(torch.bool"),
])
def test_lr_ratio_that_returns_no_number(ratio, words):
    params = make_params()
    names = ["enc.w", "enc.b"]
    opt = triton_adam.AdamW(0.01, parameters=list(zip(names, params)),
                            lr_ratio=lambda p: ratio)
    set_grads(params)
    before = [p.detach().clone() for p in params]
    with pytest.raises(TypeError, match=rf"lr_ratio returned {words}.* for parameter "
                                        r"'enc\.w'; expected a float"):
        opt.step()
    assert_unchanged(params, before)
    assert opt.state_dict() == {}


@pytest.mark.parametrize("ratio", [0.5, 2, np.float32(0.5), torch.tensor(0.5),
                                   np.array([0.5])])
def test_lr_ratio_numbers_are_taken(ratio):
    params = make_params()
    opt = triton_adam.AdamW(0.01, parameters=params, lr_ratio=lambda p: ratio)
    set_grads(params)
    opt.step()
    assert len(opt.state_dict()) == 8


# ----------------------------------------------------------------------------- pickling
def test_pickling_or_copying_the_optimizer_says_to_save_its_state_dict():
    params = make_params()
    opt = triton_adam.Adam(0.01, parameters=params)
    set_grads(params)
    opt.step()
    for call in (lambda: pickle.dumps(opt), lambda: copy.deepcopy(opt),
                 lambda: copy.copy(opt), lambda: torch.save(opt, os.devnull)):
        with pytest.raises(TypeError, match=r"Adam optimizer cannot be pickled.*state_dict\(\)"):
            call()
    # What it points to works.
    state = pickle.loads(pickle.dumps({k: v.cpu() for k, v in opt.state_dict().items()}))
    assert len(state) == 8


# ----------------------------------------------------------------------------- save
def test_save_of_a_cyclic_structure(tmp_path):
    cyclic: dict = {"a": torch.ones(1)}
    cyclic["self"] = cyclic
    looped: list = [1]
    looped.append([looped])
    path = tmp_path / "sub" / "x.pd"
    for obj, where in ((cyclic, r"obj\['self'\]"), (looped, r"obj\[1\]\[0\]"),
                       ({"w_moment1_0": torch.ones(1), "opts": {"l": looped}},
                        r"obj\['opts'\]\['l'\]\[1\]\[0\]")):
        with pytest.raises(ValueError, match=rf"{where} contains itself"):
            tio.save(obj, path)
    assert os.listdir(tmp_path) == []


def test_save_of_a_too_deep_structure(tmp_path):
    deep: list = [torch.ones(1)]
    for _ in range(tio.MAX_DEPTH + 1):
        deep = [deep]
    key: tuple = ()
    for _ in range(tio.MAX_DEPTH + 1):
        key = (key,)
    path = tmp_path / "x.pd"
    path.write_bytes(b"old")
    for obj in (deep, {"t": torch.ones(1), "s": {key: 1}}):
        with pytest.raises(ValueError, match=rf"obj.*nested more than {tio.MAX_DEPTH}"):
            tio.save(obj, path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.pd"]
    # MAX_DEPTH itself is fine, both ways.
    ok: list = [torch.ones(1)]
    for _ in range(tio.MAX_DEPTH - 2):
        ok = [ok]
    tio.save(ok, path)
    back = tio.load(path)
    for _ in range(tio.MAX_DEPTH - 2):
        back = back[0]
    assert torch.equal(back[0], torch.ones(1))


@pytest.mark.parametrize("where, obj", [
    ("obj['w_moment1_0']", {"w_moment1_0": torch.empty(3, device="meta")}),
    ("obj['master_weights']['w']", {"w_moment1_0": torch.ones(3),
                                    "master_weights": {"w": torch.empty(3, device="meta")}}),
    ("obj[1]", [torch.ones(1), torch.empty(2, device="meta")]),
])
def test_save_of_a_meta_tensor(tmp_path, where, obj):
    path = tmp_path / "x.pd"
    with pytest.raises(TypeError, match=rf"{ __import__('re').escape(where)}: cannot save a "
                                        r"tensor on the meta device"):
        tio.save(obj, path)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- distributed
@pytest.mark.parametrize("helper", [D.gather_full_state, D.shard_full_state,
                                    D.state_as_dtensors])
def test_distributed_helpers_name_what_they_got(helper):
    params = dict(zip(["w", "b"], make_params()))
    state = {"w_moment1_0": torch.zeros(3), "LR_Scheduler": {"last_epoch": 1}}
    with pytest.raises(TypeError, match=r"state must be an optimizer state dict.*NoneType"):
        helper(None, params)
    with pytest.raises(TypeError, match=r"params must be a Mapping.*NoneType"):
        helper(state, None)
    with pytest.raises(TypeError, match=r"params must be a Mapping.*list"):
        helper(state, list(params.values()))
    with pytest.raises(TypeError, match=r"params\['x'\] must map a str name to a parameter"):
        helper(state, {"x": None})
    with pytest.raises(ValueError, match=r"key 'v_moment1_0' names no parameter"):
        helper({"v_moment1_0": torch.zeros(3)}, params)
    with pytest.raises(TypeError, match=r"\['master_weights'\]\['w'\] is a NoneType"):
        helper({"master_weights": {"w": None}}, params)


@pytest.mark.parametrize("helper", [D.gather_full_state, D.shard_full_state,
                                    D.state_as_dtensors])
def test_distributed_helpers_take_the_counters_set_state_dict_takes(helper):
    """A file from a process that had built an optimizer before ends its keys in ``_1``:
    set_state_dict takes them, and so do the helpers (plain tensors pass as they are)."""
    params = make_params()
    opt = triton_adam.Adam(0.01, parameters=list(zip(["w", "w_b"], params)), amsgrad=True,
                           name="opt")
    set_grads(params)
    opt.step()
    state = {(k[:-2] + "_1" if k.endswith("_0") else k): v
             for k, v in opt.state_dict().items()}
    state["w_b_opt_moment1_12"] = state.pop("w_b_opt_moment1_1")
    out = helper(state, {"w": params[0], "w_b": params[1]})
    assert out.keys() == state.keys()
    assert all(out[k] is state[k] for k in state)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    other = triton_adam.Adam(0.01, parameters=list(zip(["w", "w_b"], copies)), amsgrad=True,
                             name="opt")
    other.set_state_dict(out)
    want = opt.state_dict()
    assert all(torch.equal(other.state_dict()[k], want[k]) for k in want)
