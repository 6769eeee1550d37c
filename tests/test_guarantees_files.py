"""Do ``save`` and ``load`` keep files and memory safe from careless and hostile use?

* ``save`` over an existing file keeps its permission bits, refuses to replace a file the
  caller could not write (the rename could: it needs the directory only) or a directory, and
  then leaves the file as it was;
* ``load`` takes time and memory linear in the file's size whatever the file claims or
  shares: memo references nesting a list in itself 2**40 times over (a "billion laughs"), a
  dict keyed by shared tuples that unfold to 2**60 items (or by one big int many times),
  lengths of a terabyte in a file of ten bytes, numpy reconstructions of a huge shape, object
  arrays, a huge void scalar, split arrays listing one piece many times; each is a clear
  error (or, for plain sharing, loads, shared) within a couple of seconds and a few MiB;
* properties (hypothesis): random bytes, truncations and byte mutations of a valid file
  load, or raise one of ``load``'s documented errors with a message naming the file.

Hostile files are written opcode by opcode (``pickle`` itself would not write them).
"""

from __future__ import annotations

import io as stdio
import os
import pickle
import stat
import struct
import time
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triton_adam import io as tio

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
# What a hostile file may cost: far below its claims, far above a small file's real cost.
SECONDS = 2.0
BYTES = 16 << 20


def load_bounded(data: bytes):
    """``load`` of ``data`` (in memory): ``(result or exception, seconds, peak bytes)``."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        out = tio.load(stdio.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - the caller checks which
        out = e
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, elapsed, peak


def opcodes(*parts: bytes) -> bytes:
    """A protocol 4 pickle of the given opcodes (and STOP)."""
    return b"\x80\x04" + b"".join(parts) + b"."


def get(i: int) -> bytes:
    return b"h" + bytes([i])  # BINGET


MEMOIZE, MARK, APPENDS, SETITEMS, SETITEM = b"\x94", b"(", b"e", b"u", b"s"
EMPTY_LIST, EMPTY_DICT, EMPTY_TUPLE, TUPLE2, NONE = b"]", b"}", b")", b"\x86", b"N"


def short_str(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def laughs(levels: int, kind: str) -> bytes:
    """Level k + 1 holds level k twice, through the memo: 2**levels leaves unfolded."""
    parts = [EMPTY_LIST, MEMOIZE]
    for k in range(levels):
        if kind == "list":
            parts += [EMPTY_LIST, MEMOIZE, MARK, get(k), get(k), APPENDS]
        else:
            parts += [EMPTY_DICT, MEMOIZE, MARK, short_str("a"), get(k), short_str("b"),
                      get(k), SETITEMS]
    return opcodes(*parts)


def tuple_keys(levels: int) -> bytes:
    """A dict keyed by a tuple that holds the level below twice: hashing it visits every
    one of its 2**levels leaves."""
    parts = [EMPTY_TUPLE, MEMOIZE]
    for k in range(levels):
        parts += [get(k), get(k), TUPLE2, MEMOIZE]
    return opcodes(*parts, EMPTY_DICT, MEMOIZE, get(levels), NONE, SETITEM)


# ----------------------------------------------------------------------------- save
def _tmp_files(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".tmp"))


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604, 0o660, 0o755])
def test_save_over_a_file_keeps_its_permission_bits(tmp_path, mode):
    path = tmp_path / "opt.pdopt"
    tio.save({"a": torch.ones(2)}, path)
    os.chmod(path, mode)
    tio.save({"a": torch.zeros(3)}, path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert torch.equal(tio.load(path)["a"], torch.zeros(3))
    assert _tmp_files(tmp_path) == []


def _refused(tmp_path, path, before_bytes, before_mode):
    with pytest.raises(PermissionError) as info:
        tio.save({"a": torch.zeros(3)}, path)
    assert str(path) in str(info.value) and "could not write" in str(info.value)
    assert path.read_bytes() == before_bytes
    assert stat.S_IMODE(path.stat().st_mode) == before_mode
    assert _tmp_files(tmp_path) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root may write any file: the check then finds nothing to refuse")
def test_save_refuses_a_read_only_file(tmp_path):
    path = tmp_path / "opt.pdopt"
    tio.save({"a": torch.ones(2)}, path)
    os.chmod(path, 0o444)
    _refused(tmp_path, path, path.read_bytes(), 0o444)


def test_save_refuses_a_file_the_process_could_not_write(tmp_path, monkeypatch):
    """As the previous test, for any user (root included): the access check says no."""
    path = tmp_path / "opt.pdopt"
    tio.save({"a": torch.ones(2)}, path)
    os.chmod(path, 0o444)
    real = os.access
    monkeypatch.setattr(tio.os, "access", lambda p, m, **kw: False if os.fspath(p) == str(
        path) and m == os.W_OK else real(p, m, **kw))
    _refused(tmp_path, path, path.read_bytes(), 0o444)
    # Through a symlink: the file linked to is the one checked (and kept).
    (tmp_path / "link").symlink_to(path)
    _refused(tmp_path, path, path.read_bytes(), 0o444)


def test_save_refuses_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        tio.save({"a": torch.ones(1)}, tmp_path / "d")
    assert os.listdir(tmp_path / "d") == [] and _tmp_files(tmp_path) == []


def test_save_of_shared_parts_is_linear_and_loads_shared(tmp_path):
    """A list holding the level below twice, 60 levels: written once per object."""
    obj = ["leaf", torch.ones(1)]
    for _ in range(60):
        obj = [obj, obj]
    start = time.perf_counter()
    tio.save({"nested": obj, "t": torch.zeros(1)}, tmp_path / "x.pd")
    assert time.perf_counter() - start < SECONDS
    assert (tmp_path / "x.pd").stat().st_size < 10_000
    back = tio.load(tmp_path / "x.pd")["nested"]
    for _ in range(60):
        assert back[0] is back[1]
        back = back[0]
    assert back[0] == "leaf" and torch.equal(back[1], torch.ones(1))


# ----------------------------------------------------------------------------- load: sharing
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_billion_laughs_load_in_linear_time(kind):
    out, elapsed, peak = load_bounded(laughs(40, kind))
    assert not isinstance(out, Exception), out
    assert elapsed < SECONDS and peak < BYTES
    for _ in range(40):  # still shared: 41 objects, not 2**40
        inner = out[0] if kind == "list" else out["a"]
        assert inner is (out[1] if kind == "list" else out["b"])
        out = inner


def test_shared_tuples_as_dict_keys_are_refused():
    out, elapsed, peak = load_bounded(tuple_keys(60))
    assert isinstance(out, tio.CorruptFileError) and "hash" in str(out)
    assert elapsed < SECONDS and peak < BYTES
    # A few levels are fine: what a file holds, unfolded, stays within its budget.
    out, _, _ = load_bounded(tuple_keys(8))
    assert isinstance(out, dict) and len(out) == 1


def test_a_big_int_as_a_key_many_times_is_refused():
    """An int's hash reads all its digits, every time (a str caches its hash)."""
    data = opcodes(b"\x8b" + struct.pack("<i", 100_000) + b"\x01" * 100_000, MEMOIZE,
                   EMPTY_DICT, MARK, (get(0) + NONE) * 50_000, SETITEMS)
    out, elapsed, _ = load_bounded(data)
    assert isinstance(out, tio.CorruptFileError) and "hash" in str(out)
    assert elapsed < SECONDS


def test_shared_tuples_as_set_members_are_refused():
    """Protocol 2 spells a set ``set([members])``: the members are hashed by the call."""
    big = [EMPTY_TUPLE, MEMOIZE]
    for k in range(50):
        big += [get(k), get(k), TUPLE2, MEMOIZE]
    data = opcodes(*big, global_("builtins", "set"), EMPTY_LIST, MARK, get(50), get(50),
                   APPENDS, b"\x85R")
    out, elapsed, _ = load_bounded(data)
    assert isinstance(out, tio.CorruptFileError) and "set" in str(out)
    assert elapsed < SECONDS


# ----------------------------------------------------------------------------- load: claims
HUGE = 2**40
CLAIMS = {
    "BINBYTES8": b"\x8e" + struct.pack("<Q", HUGE) + b"ab",
    "BYTEARRAY8": b"\x96" + struct.pack("<Q", HUGE) + b"ab",
    "BINUNICODE8": b"\x8d" + struct.pack("<Q", HUGE) + b"ab",
    "BINUNICODE": b"X" + struct.pack("<I", 2**31) + b"ab",
    "BINBYTES": b"B" + struct.pack("<I", 2**32 - 1) + b"ab",
    "LONG4": b"\x8b" + struct.pack("<i", 2**31 - 1) + b"ab",
    "BINSTRING negative": b"T" + struct.pack("<i", -5) + b"ab",
    "FRAME": b"\x95" + struct.pack("<Q", HUGE) + b"N",
}


@pytest.mark.parametrize("opcode", list(CLAIMS))
def test_lengths_beyond_the_file_are_refused_before_allocating(opcode):
    out, elapsed, peak = load_bounded(b"\x80\x04" + CLAIMS[opcode] + b".")
    assert isinstance(out, tio.CorruptFileError) and "left" in str(out), out
    assert elapsed < SECONDS and peak < BYTES


def _reconstruct(shape: int, dtype: bytes = b"b") -> bytes:
    return opcodes(global_("numpy.core.multiarray", "_reconstruct"), global_("numpy", "ndarray"),
                   b"\x8a\x08" + struct.pack("<q", shape), b"\x85",
                   b"C" + bytes([len(dtype)]) + dtype, b"\x87R")


NUMPY_CLAIMS = {
    # numpy pickles every array as _reconstruct(ndarray, (0,), b'b') + BUILD from its bytes
    "_reconstruct of a huge shape": (_reconstruct(2**40), "non-empty shape"),
    "_reconstruct of an object array": (_reconstruct(0, b"O"), "dtype"),
    "ndarray(shape)": (opcodes(global_("numpy", "ndarray"), b"\x8a\x08" + struct.pack(
        "<q", 2**40), b"\x85\x85R"), "not callable"),
    "object dtype": (opcodes(global_("numpy", "dtype"), short_str("O8"), b"\x89\x88\x87R"),
                     "objects"),
    "void scalar without bytes": (opcodes(global_("numpy.core.multiarray", "scalar"),
                                          global_("numpy", "dtype"), short_str("V1000000000"),
                                          b"\x89\x88\x87R\x85R"), "scalar"),
    "tuple of a list": (opcodes(global_("builtins", "tuple"), EMPTY_LIST, b"\x85R"), "tuple"),
    "OrderedDict of items": (opcodes(global_("collections", "OrderedDict"), EMPTY_LIST,
                                     b"\x85R"), "OrderedDict"),
}


@pytest.mark.parametrize("case", list(NUMPY_CLAIMS))
def test_calls_other_than_numpys_and_paddles_are_refused(case):
    data, words = NUMPY_CLAIMS[case]
    out, elapsed, peak = load_bounded(data)
    assert isinstance(out, (tio.UnsafePickleError, tio.CorruptFileError)), out
    assert words in str(out)
    assert elapsed < SECONDS and peak < BYTES


def test_object_array_in_a_valid_looking_file_is_refused(tmp_path):
    with open(tmp_path / "o.pd", "wb") as f:
        pickle.dump({"a": np.array([1, "x", None], dtype=object)}, f, protocol=4)
    with pytest.raises(tio.UnsafePickleError, match="objects"):
        tio.load(tmp_path / "o.pd")


def test_split_pieces_used_twice_are_refused(tmp_path, monkeypatch):
    """``key@@.i`` pieces listed twice (or two names for one array through the memo) would
    join into more than the file holds."""
    piece = np.arange(1000, dtype=np.float32)
    for obj in ({"w@@.0": piece, tio.SPLIT_INFO_KEY: {"w": {"OriginShape": (2000,),
                                                          "slices": ["w@@.0", "w@@.0"]}}},
                {"w@@.0": piece, "w@@.1": piece,  # one object: pickled once, memo twice
                 tio.SPLIT_INFO_KEY: {"w": {"OriginShape": (2000,),
                                            "slices": ["w@@.0", "w@@.1"]}}}):
        with open(tmp_path / "s.pd", "wb") as f:
            pickle.dump(obj, f, protocol=2)
        with pytest.raises(tio.CorruptFileError, match="used twice"):
            tio.load(tmp_path / "s.pd")


def test_cycles_and_deep_nesting_are_corrupt_files(tmp_path):
    cyclic = []
    cyclic.append(cyclic)
    deep: list = []
    for _ in range(tio.MAX_DEPTH + 5):
        deep = [deep]
    for obj, words in ((cyclic, "cycle"), (deep, "deep")):
        with open(tmp_path / "c.pd", "wb") as f:
            pickle.dump(obj, f, protocol=4)
        with pytest.raises(tio.CorruptFileError, match=words):
            tio.load(tmp_path / "c.pd")


def test_a_stream_that_cannot_seek_is_read_whole(tmp_path):
    tio.save({"a": torch.arange(3.0)}, tmp_path / "x.pd")
    r, w = os.pipe()
    os.write(w, (tmp_path / "x.pd").read_bytes())
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as stream:
        assert torch.equal(tio.load(stream)["a"], torch.arange(3.0))


# ----------------------------------------------------------------------------- properties
def _valid_file() -> bytes:
    buf = stdio.BytesIO()
    tio.save({"w_moment1_0": torch.arange(5.0), "w_beta1_pow_acc_0": torch.ones(1),
              "master_weights": {"w": torch.arange(5.0)},
              "LR_Scheduler": {"last_epoch": 3, "last_lr": 0.1}}, buf, protocol=2)
    return buf.getvalue()


VALID = _valid_file()
DOCUMENTED = (tio.UnsafePickleError, tio.CorruptFileError, TypeError)


def _load_or_clear_error(data: bytes) -> None:
    f = stdio.BytesIO(data)
    start = time.perf_counter()
    try:
        tio.load(f)
    except DOCUMENTED as e:
        assert str(e) and "BytesIO" in str(e)  # names the file it read
        assert f.tell() == 0  # the position is restored
    assert time.perf_counter() - start < SECONDS


@PROPERTY
@given(st.binary(max_size=200))
def test_property_random_bytes(data):
    _load_or_clear_error(data)
    _load_or_clear_error(b"\x80\x04" + data)


@PROPERTY
@given(st.integers(0, len(VALID)))
def test_property_truncated_files(cut):
    _load_or_clear_error(VALID[:cut])


@PROPERTY
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1,
                max_size=4))
def test_property_mutated_files(changes):
    data = bytearray(VALID)
    for at, value in changes:
        data[at] = value
    _load_or_clear_error(bytes(data))


@PROPERTY
@given(st.lists(st.sampled_from([EMPTY_LIST, EMPTY_DICT, EMPTY_TUPLE, TUPLE2, b"\x85", b"\x87",
                                 MEMOIZE, get(0), get(1), get(2), MARK, APPENDS, SETITEMS,
                                 SETITEM, NONE, short_str("k"), b"R", b"b", b"0", b"1",
                                 b"2", global_("builtins", "set"),
                                 global_("builtins", "tuple"), global_("numpy", "dtype"),
                                 global_("collections", "OrderedDict")]),
                max_size=40))
def test_property_random_opcode_sequences(ops):
    _load_or_clear_error(opcodes(*ops))
