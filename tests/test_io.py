"""triton_adam.io against real Paddle 3.3.1: files each side writes, the other reads.

Every expected value comes from Paddle (``paddle.save`` / ``paddle.load`` of the same content,
or a Paddle optimizer continuing from the file) or from the input itself.

Paddle's CPU build has no float16 / bfloat16 ``adam`` kernel, but an optimizer with
``multi_precision=True`` creates its master weights and accumulators before it launches the
kernel: the failed step leaves a real multi_precision state dict, which the tests fill with
random values (``set_value``) so that equality means something.

Without paddlepaddle (a GPU machine may lack it) the module is skipped. Files are written and
read on the CPU in every mode; the one optimizer run here steps on ``devices.DEVICE``.
"""

from __future__ import annotations

import collections
import errno
import io as stdio
import os
import pathlib
import pickle
import re
import types

import numpy as np
import pytest
import torch

import triton_adam
from devices import DEVICE, to_numpy
from triton_adam import io as tio

paddle = pytest.importorskip("paddle")
import paddle.framework.io_utils as paddle_io_utils  # noqa: E402

paddle.set_device("cpu")

# ----------------------------------------------------------------------------- helpers


def to_torch(obj):
    """A Paddle structure with torch tensors in place of Paddle's (bfloat16 via its bits)."""
    if isinstance(obj, paddle.Tensor):
        if obj.dtype == paddle.bfloat16:  # .numpy() of bf16 is its uint16 bit pattern
            return torch.from_numpy(obj.numpy().view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(obj.numpy().copy())
    if isinstance(obj, dict):
        return type(obj)((k, to_torch(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_torch(v) for v in obj)
    return obj


def bits(t: torch.Tensor) -> np.ndarray:
    """Comparable numpy of a torch tensor (bfloat16 as the uint16 Paddle uses)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def assert_matches_paddle(ours, theirs, where="obj"):
    """``ours`` (from tio.load) is ``theirs`` (from paddle.load) with torch tensors."""
    if isinstance(theirs, paddle.Tensor):
        assert isinstance(ours, torch.Tensor), where
        assert str(ours.dtype).split(".")[-1] == str(theirs.dtype).split(".")[-1], where
        assert list(ours.shape) == list(theirs.shape), where
        a, b = bits(ours), theirs.numpy()
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray) and ours.dtype == theirs.dtype, where
        assert np.array_equal(ours, theirs), where
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs) and list(ours) == list(theirs), where
        for k in theirs:
            assert_matches_paddle(ours[k], theirs[k], f"{where}[{k!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_matches_paddle(a, b, f"{where}[{i}]")
    else:
        assert type(ours) is type(theirs) and ours == theirs, where


def assert_same_tree(a, b, where="obj", ordered=True):
    """Equal structures, types, dtypes, shapes and values (torch tensors, ndarrays, data)."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, where
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b) if ordered else set(a) == set(b), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}[{k!r}]", ordered)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]", ordered)
    else:
        assert a == b, where


def raw(path):
    """What the file holds, unpickled by plain pickle (the format as Paddle defines it)."""
    with open(path, "rb") as f:
        return pickle.load(f)


def make_params(rng, dtypes):
    shapes = [(3, 2), (2,), (1,)]
    out = []
    for shape, dtype in zip(shapes, dtypes):
        init = rng.standard_normal(shape).astype("float32")
        p = paddle.create_parameter(list(shape), dtype="float32",
                                    default_initializer=paddle.nn.initializer.Assign(init))
        if dtype != "float32":
            p = paddle.create_parameter(list(shape), dtype=dtype,
                                        default_initializer=paddle.nn.initializer.Constant(0.5))
            p.set_value(paddle.to_tensor(init).astype(dtype))
        out.append(p)
    return out


def paddle_grad_step(params, opt, grads):
    """Give each param the gradient ``g`` (d/dp sum(p*g) = g) and step; False if no kernel."""
    loss = sum((p.astype("float32") * paddle.to_tensor(g)).sum() for p, g in zip(params, grads))
    loss.backward()
    try:
        opt.step()
    except RuntimeError as e:  # no float16 / bfloat16 adam kernel on Paddle's CPU
        assert "not registered" in str(e)
        opt.clear_grad()
        return False
    opt.clear_grad()
    return True


VARIANTS = {
    "plain": dict(dtypes=["float32"] * 3, kw={}),
    "fp64": dict(dtypes=["float64"] * 3, kw={}),
    "named": dict(dtypes=["float32"] * 3, kw=dict(name="myopt")),
    "amsgrad": dict(dtypes=["float32"] * 3, kw=dict(amsgrad=True)),
    "scheduler": dict(dtypes=["float32"] * 3, kw={}, sched=True),
    "fp16-master": dict(dtypes=["float16", "float32", "float16"],
                        kw=dict(multi_precision=True, name="myopt"), sched=True),
    "bf16-master": dict(dtypes=["bfloat16", "float32", "float32"],
                        kw=dict(multi_precision=True, amsgrad=True)),
}


def make_optimizer(params, variant):
    spec = VARIANTS[variant]
    lr = paddle.optimizer.lr.StepDecay(0.01, step_size=1, gamma=0.5) if spec.get("sched") else 0.01
    return paddle.optimizer.Adam(lr, parameters=params, **spec["kw"])


def paddle_run(variant, seed=0):
    """A real Paddle optimizer after 2 steps: (params, optimizer, grads of one more step)."""
    rng = np.random.default_rng(seed)
    params = make_params(rng, VARIANTS[variant]["dtypes"])
    grads = [[rng.standard_normal(p.shape).astype("float32") for p in params] for _ in range(3)]
    opt = make_optimizer(params, variant)
    with paddle.utils.unique_name.guard():  # accumulator names end in _0 for every run
        for g in grads[:2]:
            stepped = paddle_grad_step(params, opt, g)
            if isinstance(opt._learning_rate, paddle.optimizer.lr.LRScheduler):
                opt._learning_rate.step()
    if not stepped:  # multi_precision on CPU: real state, but zeros; make it non-trivial
        assert "master_weights" in opt.state_dict()
        for value in list(opt._master_weights.values()) + [
                v for acc in opt._accumulators.values() for v in acc.values()]:
            value.set_value(paddle.to_tensor(
                rng.uniform(0.1, 1.0, value.shape).astype("float32")))
    return params, opt, grads[2]


# ----------------------------------------------------------------------------- round trips
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
          torch.int32, torch.int8, torch.uint8, torch.bool, torch.complex64]
SHAPES = [(), (1,), (7,), (2, 3), (0, 4)]


@pytest.mark.parametrize("protocol", [2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_round_trip_dtypes_and_shapes(tmp_path, dtype, protocol):
    obj = {f"t{i}": (torch.randn(s) * 50).abs().to(dtype) if dtype == torch.uint8
           else (torch.randn(s) * 50).to(dtype) for i, s in enumerate(SHAPES)}
    path = tmp_path / "x.pdparams"
    tio.save(obj, path, protocol=protocol)
    assert_same_tree(tio.load(path), obj)
    # and real Paddle reads the same values, with Paddle's dtype of the same name
    assert_matches_paddle(tio.load(path), paddle.load(str(path)))


def test_round_trip_optimizer_structure(tmp_path):
    """Accumulators, master weights, scheduler state, nested containers, views."""
    storage = torch.randn(2, 1)  # triton_adam's pows are views into a slot pair
    obj = {
        "param_0_moment1_0": torch.randn(3, 2),
        "param_0_beta1_pow_acc_0": storage[1],
        "param_0_fp32_master_0_moment2_0": torch.randn(4, 3).t(),  # not contiguous
        "master_weights": {"param_0": torch.randn(3, 2, requires_grad=True)},
        "LR_Scheduler": {"last_epoch": 3, "last_lr": 0.125, "milestones": [1, 2]},
        "extra": collections.OrderedDict(a=[torch.arange(3), (1, "s", None)], b={1.5, 2}),
        "z": 1 + 2j, "n": np.float64(0.5), "arr": np.arange(4.0),
    }
    for protocol in (2, 3, 4):
        tio.save(obj, tmp_path / "s.pdopt", protocol=protocol)
        back = tio.load(tmp_path / "s.pdopt")
        # tensors come back as tensors (names dropped); a saved ndarray stays an ndarray,
        # exactly as paddle.load does when the file holds saved Tensors
        expect = dict(obj, master_weights={"param_0": obj["master_weights"]["param_0"].detach()},
                      param_0_beta1_pow_acc_0=storage[1].clone(),
                      param_0_fp32_master_0_moment2_0=obj["param_0_fp32_master_0_moment2_0"]
                      .contiguous())
        assert_same_tree(back, expect)
        assert_matches_paddle(back, paddle.load(str(tmp_path / "s.pdopt")))


def test_empty_state_dict_warns_like_paddle(tmp_path):
    with pytest.warns(UserWarning, match="state dict is empty"):
        paddle.save({}, str(tmp_path / "p.pdopt"))
    with pytest.warns(UserWarning, match="state dict is empty"):
        tio.save({}, tmp_path / "o.pdopt")
    assert raw(tmp_path / "o.pdopt") == raw(tmp_path / "p.pdopt")
    assert tio.load(tmp_path / "o.pdopt") == paddle.load(str(tmp_path / "p.pdopt")) == {}


def test_device_and_return_numpy(tmp_path):
    params, opt, _ = paddle_run("bf16-master")
    path = str(tmp_path / "a.pdopt")
    paddle.save(opt.state_dict(), path)
    ours = tio.load(path, device="meta")
    assert all(t.device.type == "meta" for t in ours["master_weights"].values())
    theirs_np = paddle.load(path, return_numpy=True)
    assert_matches_paddle(tio.load(path, return_numpy=True), theirs_np)
    paddle.save({p.name: p for p in params}, path)
    assert_matches_paddle(tio.load(path, return_numpy=True), paddle.load(path, return_numpy=True))


# ----------------------------------------------------------------------------- Paddle -> us
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loads_what_paddle_saves(tmp_path, variant):
    params, opt, _ = paddle_run(variant)
    state = opt.state_dict()
    assert ("master_weights" in state) == ("master" in variant)
    assert ("LR_Scheduler" in state) == bool(VARIANTS[variant].get("sched"))
    model = collections.OrderedDict((f"layer.{i}", p) for i, p in enumerate(params))
    for name, obj in [("opt.pdopt", state), ("model.pdparams", model),
                      ("both.pd", {"model": model, "opt": state, "epoch": 2})]:
        path = str(tmp_path / name)
        paddle.save(obj, path)
        assert_matches_paddle(tio.load(path), paddle.load(path), name)


# ----------------------------------------------------------------------------- us -> Paddle
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_paddle_loads_what_we_save(tmp_path, variant):
    """Same bytes-level structure as paddle.save of the same content; same paddle.load."""
    params, opt, _ = paddle_run(variant)
    state = opt.state_dict()
    model = {f"layer.{i}": p for i, p in enumerate(params)}
    for name, obj in [("opt.pdopt", state), ("model.pdparams", model),
                      ("both.pd", {"opt": state, "epoch": 2})]:
        theirs, ours = str(tmp_path / f"paddle-{name}"), tmp_path / f"ours-{name}"
        paddle.save(obj, theirs)
        tio.save(to_torch(obj), ours)
        r_ours, r_theirs = raw(ours), raw(theirs)
        if name == "model.pdparams":
            # torch tensors have no names: a param is named after its key, not Paddle's
            # 'create_parameter_3.w_0'; only the name table's values differ
            assert r_ours[tio.NAME_TABLE_KEY] == {k: k for k in model}
            r_ours[tio.NAME_TABLE_KEY] = r_theirs[tio.NAME_TABLE_KEY]
        assert_same_tree(r_ours, r_theirs)  # includes the (name, ndarray) tuples' names
        loaded = paddle.load(str(ours))
        assert_same_tree(to_torch(loaded), to_torch(paddle.load(theirs)))  # Tensor where Tensor
        assert_matches_paddle(tio.load(ours), loaded)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_paddle_optimizer_continues_from_our_file(tmp_path, variant):
    """paddle.load(our file) -> set_state_dict: the next step equals the original's."""
    params, opt, grads = paddle_run(variant)
    tio.save(to_torch(opt.state_dict()), tmp_path / "opt.pdopt")
    before = [p.numpy().copy() for p in params]

    def step(o):
        for p, b in zip(params, before):
            p.set_value(paddle.to_tensor(b))
        with paddle.utils.unique_name.guard():
            paddle_grad_step(params, o, grads)
        return [p.numpy().copy() for p in params], to_torch(o.state_dict())

    expect_params, expect_state = step(opt)
    resumed = make_optimizer(params, variant)
    resumed.set_state_dict(paddle.load(str(tmp_path / "opt.pdopt")))
    got_params, got_state = step(resumed)
    for a, b in zip(got_params, expect_params):
        assert np.array_equal(a, b)
    assert_same_tree(got_state, expect_state)
    if "master" in variant:  # the kernel never ran: the state is exactly what we saved
        assert_same_tree(got_state, tio.load(tmp_path / "opt.pdopt"))


def test_paddle_continues_a_triton_adam_run(tmp_path):
    """A triton_adam run saved with tio.save; Paddle resumes it and matches triton_adam."""
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s) for s in [(4, 3), (3,)]]
    grads = [[rng.standard_normal(a.shape) for a in init] for _ in range(3)]
    tp = [torch.tensor(a, device=DEVICE, requires_grad=True) for a in init]
    topt = triton_adam.Adam(0.01, parameters=tp, amsgrad=True, name="myopt")
    for g in grads[:2]:
        for p, gi in zip(tp, g):
            p.grad = torch.from_numpy(gi.copy()).to(DEVICE)
        topt.step()
    pp = [paddle.create_parameter(list(a.shape), dtype="float64",
                                  default_initializer=paddle.nn.initializer.Assign(
                                      to_numpy(p))) for a, p in zip(init, tp)]
    # our param_{i} names -> Paddle's parameter names (the only translation needed)
    rename = {f"param_{i}_": f"{p.name}_" for i, p in enumerate(pp)}
    state = {rename[k[:len("param_0_")]] + k[len("param_0_"):]: v
             for k, v in topt.state_dict().items()}
    tio.save(state, tmp_path / "run.pdopt")
    popt = paddle.optimizer.Adam(0.01, parameters=pp, amsgrad=True, name="myopt")
    popt.set_state_dict(paddle.load(str(tmp_path / "run.pdopt")))
    with paddle.utils.unique_name.guard():
        loss = sum((p * paddle.to_tensor(g)).sum() for p, g in zip(pp, grads[2]))
        loss.backward()
        popt.step()
    for p, g in zip(tp, grads[2]):
        p.grad = torch.from_numpy(g.copy()).to(DEVICE)
    topt.step()
    for p_t, p_p in zip(tp, pp):
        np.testing.assert_allclose(to_numpy(p_t), p_p.numpy(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- big arrays
def lowered_paddle_split(monkeypatch, split_bytes):
    """Paddle's split threshold is the literal 2**30 - 1 inside _unpack_saved_dict."""
    fn = paddle_io_utils._unpack_saved_dict
    consts = tuple(split_bytes if c == 2**30 - 1 else c for c in fn.__code__.co_consts)
    assert consts != fn.__code__.co_consts, "Paddle's threshold literal moved"
    monkeypatch.setattr(fn, "__code__", fn.__code__.replace(co_consts=consts))
    monkeypatch.setattr(tio, "SPLIT_BYTES", split_bytes)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_big_arrays_split_like_paddle(tmp_path, monkeypatch, protocol):
    lowered_paddle_split(monkeypatch, 63)  # odd on purpose: pieces of 31 fp16, 15 fp32
    content = {  # name -> numpy array; 63 bytes hold 7 float64
        "w_moment1_0": np.random.default_rng(0).standard_normal((5, 7)).astype("float32"),
        "exact": np.arange(7, dtype="float64"),        # at the threshold: not split
        "over": np.arange(8, dtype="float64"),         # one over: split 7 + 1
        "half": np.arange(100, dtype="float16").reshape(2, 5, 10),
        "small": np.ones(2, "float32"),
    }
    pd_obj = {k: paddle.to_tensor(v) for k, v in content.items()}
    for k, t in pd_obj.items():
        t.name = k  # the name torch tensors get: their key
    theirs, ours = str(tmp_path / "paddle.pdparams"), tmp_path / "ours.pdparams"
    paddle.save(pd_obj, theirs, protocol=protocol)
    tio.save({k: torch.from_numpy(v) for k, v in content.items()}, ours, protocol=protocol)
    r_theirs, r_ours = raw(theirs), raw(ours)
    split = tio.SPLIT_INFO_KEY in r_theirs
    assert split == (protocol < 4)
    if split:
        assert sorted(r_theirs[tio.SPLIT_INFO_KEY]) == ["half", "over", "w_moment1_0"]
    assert_same_tree(r_ours, r_theirs)  # same pieces, same index, same key order
    expect = {k: torch.from_numpy(v) for k, v in content.items()}
    # reassembled arrays move to the end of the dict, in Paddle as here
    assert_same_tree(tio.load(theirs), expect, ordered=False)  # we reassemble Paddle's pieces
    assert_same_tree(to_torch(paddle.load(str(ours))), expect, ordered=False)  # and vice versa
    assert list(tio.load(theirs)) == list(paddle.load(str(ours)))


def test_split_index_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(tio, "SPLIT_BYTES", 16)
    tio.save({"a": torch.arange(10.0)}, tmp_path / "a.pd", protocol=2)
    data = raw(tmp_path / "a.pd")
    del data["a@@.1"]
    with open(tmp_path / "b.pd", "wb") as f:
        pickle.dump(data, f, protocol=2)
    with pytest.raises(tio.CorruptFileError, match="UnpackBigParamInfor"):
        tio.load(tmp_path / "b.pd")


# ----------------------------------------------------------------------------- unpickler
class Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _evil_payloads(marker):
    import subprocess
    cmd = f"touch {marker}"
    return {
        "os.system": Evil(os.system, cmd),
        "builtins.eval": Evil(eval, f"open({str(marker)!r}, 'w')"),
        "builtins.exec": Evil(exec, f"open({str(marker)!r}, 'w')"),
        "subprocess.Popen": Evil(subprocess.Popen, ["touch", str(marker)]),
        "builtins.open": Evil(open, str(marker), "w"),
        "torch.load": Evil(torch.load, str(marker)),
        "numpy.load": Evil(np.load, str(marker)),
        "builtins.getattr": Evil(getattr, "x", "upper"),
        "importlib.import_module": Evil(__import__("importlib").import_module, "os"),
    }


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("payload", list(_evil_payloads("x")))
def test_refuses_foreign_globals(tmp_path, payload, protocol):
    marker = tmp_path / "pwned"
    evil = _evil_payloads(marker)[payload]
    # hidden inside an otherwise valid optimizer file
    obj = {"w_moment1_0": np.zeros(2, "float32"), "LR_Scheduler": {"x": evil},
           tio.NAME_TABLE_KEY: {"w_moment1_0": "w_moment1_0"}}
    path = tmp_path / "evil.pdopt"
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    qualified = f"{evil.fn.__module__}.{evil.fn.__qualname__}"  # os.system is posix.system
    with pytest.raises(tio.UnsafePickleError, match=re.escape(qualified)) as info:
        tio.load(path)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_refuses_inst_opcode_persistent_ids_and_codecs_tricks(tmp_path):
    marker = tmp_path / "pwned"
    # INST (a protocol 0 opcode) inside a protocol 2 stream: still goes through find_class
    inst = b"\x80\x02(X" + len(f"touch {marker}").to_bytes(4, "little") + \
        f"touch {marker}".encode() + b"ios\nsystem\n."
    persistent = b"\x80\x02X\x01\x00\x00\x00xQ."  # BINUNICODE 'x', BINPERSID
    codecs_rot = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    for name, data in [("inst", inst), ("persid", persistent), ("rot13", codecs_rot)]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(tio.UnsafePickleError):
            tio.load(tmp_path / name)
    assert not marker.exists()


def test_refuses_paddles_dense_tensor_eval(tmp_path):
    """Paddle pickles a raw static-graph DenseTensor as eval('data', {...}): refused."""
    t = paddle.base.core.DenseTensor()
    t.set(np.arange(3, dtype="float32"), paddle.CPUPlace())
    paddle.save({"t": t, "n": 1}, str(tmp_path / "d.pd"))
    with pytest.raises(tio.UnsafePickleError, match="builtins.eval"):
        tio.load(tmp_path / "d.pd")


# ----------------------------------------------------------------------------- corrupt files
def test_truncated_and_foreign_files(tmp_path):
    params, opt, _ = paddle_run("fp16-master")
    good = tmp_path / "good.pdopt"
    tio.save(to_torch(opt.state_dict()), good)
    data = good.read_bytes()
    cases = {"empty": b"", "one byte": data[:1], "header only": data[:2],
             "half": data[:len(data) // 2], "all but one": data[:-1],
             "text": b"not a checkpoint\n", "protocol 0": pickle.dumps({}, protocol=0),
             "trailing garbage": data + b"\x00", "garbled": data[:40] + b"\xfe" * 20 + data[60:]}
    for name, content in cases.items():
        path = tmp_path / f"{name}.pdopt"
        path.write_bytes(content)
        with pytest.raises(tio.CorruptFileError) as info:
            tio.load(path)
        assert isinstance(info.value, ValueError) and isinstance(info.value, pickle.UnpicklingError)
        assert str(path) in str(info.value), name
    assert_same_tree(tio.load(good), to_torch(paddle.load(str(good))))


def test_unsupported_array_dtype_is_a_clear_error(tmp_path):
    with open(tmp_path / "u.pd", "wb") as f:
        pickle.dump({"a": np.arange(3, dtype=np.uint32)}, f, protocol=4)
    with pytest.raises(TypeError, match="uint32"):
        tio.load(tmp_path / "u.pd")
    assert tio.load(tmp_path / "u.pd", return_numpy=True)["a"].dtype == np.uint32


# ----------------------------------------------------------------------------- atomic save
def _listing(d):
    return sorted(os.listdir(d))


class _FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            self.f.write(bytes(b[:self.room]))
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)


def test_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "opt.pdopt"
    old = {"w_moment1_0": torch.randn(5)}
    tio.save(old, path)
    old_bytes = path.read_bytes()
    real = tio._write_pickle
    written = []

    def full_disk(obj, f, protocol):
        written.append(True)
        real(obj, _FullDisk(f, room=300), protocol)

    monkeypatch.setattr(tio, "_write_pickle", full_disk)
    with pytest.raises(OSError) as info:
        tio.save({"w_moment1_0": torch.randn(1000)}, path)
    assert info.value.errno == errno.ENOSPC and written
    assert path.read_bytes() == old_bytes
    assert _listing(tmp_path) == ["opt.pdopt"]
    assert_same_tree(tio.load(path), old)


@pytest.mark.parametrize("stage", ["fsync", "replace", "interrupt"])
def test_failure_after_writing_keeps_the_old_file(tmp_path, monkeypatch, stage):
    path = tmp_path / "opt.pdopt"
    tio.save({"a": torch.ones(2)}, path)
    old_bytes = path.read_bytes()

    def boom(*args, **kwargs):
        if stage == "interrupt":
            raise KeyboardInterrupt
        raise OSError(errno.EIO, "simulated")

    fake_os = types.SimpleNamespace(**{n: getattr(os, n) for n in dir(os)
                                       if not n.startswith("__")})
    setattr(fake_os, {"fsync": "fsync", "replace": "replace", "interrupt": "fsync"}[stage], boom)
    monkeypatch.setattr(tio, "os", fake_os)
    with pytest.raises(KeyboardInterrupt if stage == "interrupt" else OSError):
        tio.save({"a": torch.zeros(3)}, path)
    assert path.read_bytes() == old_bytes
    assert _listing(tmp_path) == ["opt.pdopt"]


def test_bad_objects_fail_before_touching_the_disk(tmp_path):
    path = tmp_path / "sub" / "opt.pdopt"
    bad = [{"a": torch.ones(2), "b": object()},
           {"a": torch.zeros(3, dtype=torch.uint16)},  # would come back as bfloat16
           {"a": torch.ones(2).to_sparse()},
           {"a": np.array([object()])},
           [collections.defaultdict(list)],
           {"s": {torch.ones(1)}},
           {"a": torch.ones(1), "LR_Scheduler": {"blob": b"x"}},  # paddle.load refuses these
           [torch.ones(1), frozenset([1])]]
    for obj in bad:
        with pytest.raises(TypeError):
            tio.save(obj, path)
    assert _listing(tmp_path) == []  # not even the parent directory


# ----------------------------------------------------------------------------- paths
def test_paths_as_paddle(tmp_path):
    t = {"a": torch.arange(3.0)}
    # str and os.PathLike (Paddle: str only); no suffix required or added
    tio.save(t, str(tmp_path / "plain"))
    tio.save(t, pathlib.Path(tmp_path / "x" / "y" / "deep.pdopt"))  # parents created, as Paddle
    assert sorted(os.listdir(tmp_path)) == ["plain", "x"]
    assert_same_tree(tio.load(pathlib.Path(tmp_path / "x" / "y" / "deep.pdopt")), t)
    assert_matches_paddle(tio.load(str(tmp_path / "plain")), paddle.load(str(tmp_path / "plain")))
    # an empty file name and bad protocols: ValueError, as Paddle
    for call in (lambda: paddle.save({"a": paddle.ones([1])}, str(tmp_path) + os.sep),
                 lambda: tio.save(t, str(tmp_path) + os.sep),
                 lambda: tio.save(t, tmp_path / "p", protocol=5),
                 lambda: tio.save(t, tmp_path / "p", protocol=1),
                 lambda: tio.save(t, tmp_path / "p", protocol="4")):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(TypeError):
        tio.save(t, 3)


def test_file_mode_and_symlinks_as_open(tmp_path):
    with open(tmp_path / "by_open", "wb"):
        pass
    tio.save({"a": torch.ones(1)}, tmp_path / "ours")
    assert (tmp_path / "ours").stat().st_mode == (tmp_path / "by_open").stat().st_mode
    (tmp_path / "link").symlink_to(tmp_path / "ours")
    tio.save({"b": torch.zeros(2)}, tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert list(tio.load(tmp_path / "ours")) == ["b"]


def test_memory_buffers_as_paddle(tmp_path):
    buf = stdio.BytesIO()
    state = {"w_moment1_0": torch.randn(3), "master_weights": {"w": torch.randn(3)}}
    tio.save(state, buf)
    tio.save({"b": torch.ones(1)}, buf)  # two objects in one buffer, as Paddle allows
    buf.seek(0)
    assert_same_tree(tio.load(buf), state)
    assert_same_tree(tio.load(buf), {"b": torch.ones(1)})
    buf.seek(0)
    assert_matches_paddle(tio.load(stdio.BytesIO(buf.getvalue())), paddle.load(buf))
    bad = stdio.BytesIO(b"\x80\x04garbage")
    with pytest.raises(tio.CorruptFileError):
        tio.load(bad)
    assert bad.tell() == 0  # position restored, as Paddle's buffer reader does
