"""How do I save triton_adam state so that real Paddle reads it, and read what Paddle wrote?

``save`` writes the file ``paddle.save`` (dygraph mode, Paddle 3.3.1) writes for the same
content, with torch tensors in place of Paddle tensors; ``load`` reads such files, from either
side, back into torch tensors. Reading never executes code from the file: the unpickler
accepts only the few globals Paddle's format needs, called only as numpy and Paddle call them
(anything else is an :class:`UnsafePickleError`; a truncated or foreign file is a
:class:`CorruptFileError`), and a hostile file cannot make it work or allocate far beyond the
file's size (see ``_scan`` and ``_LoadWalk``). Saving replaces the file atomically (temporary
file, fsync, rename), so a crash or a full disk leaves the previous file intact; the file
replaced keeps its permission bits, and one the caller could not write is not replaced.

Paddle's format in brief (``paddle/framework/io.py`` and ``io_utils.py``): one pickle
(protocol 2, 3 or 4; default 4) of plain Python data and ``numpy.ndarray`` values.

* A **state dict** (a dict whose every value is a tensor, or a dict holding no tensor at any
  depth, such as ``'LR_Scheduler'``) is written as a plain dict with every tensor replaced by
  ``np.ndarray`` plus an entry ``'StructuredToParameterName@@'`` mapping each tensor's key to
  the tensor's name. ``paddle.load`` turns the ndarrays named in that table back into Tensors
  and drops the table.
* **Anything else** (notably an optimizer state dict with a ``'master_weights'`` dict of
  tensors, or a dict mixing tensors with ints, or a list) is pickled as is, with every tensor
  replaced by the tuple ``(tensor_name, ndarray)``. ``paddle.load`` then turns every
  ``(str, ndarray)`` tuple, at any depth, into a Tensor named ``tensor_name``, and leaves any
  other ndarray an ndarray; when the object holds no such tuple at all, every ndarray becomes a
  Tensor instead.
* With protocol 2 or 3 (which cannot pickle 4 GiB), each top-level ndarray of a state dict of
  more than ``2**30 - 1`` bytes (Paddle: more than ``int((2**30 - 1) / itemsize)`` elements,
  an inline literal in ``io_utils._unpack_saved_dict``) is flattened and cut into pieces
  ``'{key}@@.{i}'`` of at most that many elements, described by
  ``'UnpackBigParamInfor@@': {key: {'OriginShape': shape, 'slices': [piece keys]}}``.
  ``paddle.load`` concatenates them back. Here the threshold is :data:`SPLIT_BYTES`.
* bfloat16 has no numpy dtype: Paddle writes its bit pattern as ``uint16`` and reads any
  ``uint16`` array back as bfloat16. So does this module, both ways; hence a torch ``uint16``
  tensor cannot be saved (it would come back as bfloat16) and is refused.

Tensor names. Torch tensors have no name, so ``save`` names each tensor after its dict key
(Paddle's optimizer accumulators are named exactly their keys), ``'{key}_{i}'`` for the i-th
item of a list / tuple under ``key``, and ``'tensor'`` for a bare tensor. The tensors of a
``'master_weights'`` dict are named as Paddle names master weights,
``'{param_name}_fp32_master_{n}'``, with ``n`` taken from the sibling accumulator keys
``'{param_name}_fp32_master_{n}_..._0'`` (0 when there are none): Paddle's ``set_state_dict``
looks the accumulators of a master weight up by that name, so it must be right. ``load`` drops
the names.
"""

from __future__ import annotations

import _compat_pickle
import collections
import errno
import io as stdio
import math
import os
import pickle
import pickletools
import re
import secrets
import stat
import sys
import warnings
from collections.abc import Iterable
from typing import IO, Any, Callable

import numpy as np
import torch

__all__ = [
    "MAX_DEPTH",
    "SPLIT_BYTES",
    "CorruptFileError",
    "UnsafePickleError",
    "load",
    "save",
]

#: Protocol 2/3 files: a top-level array of more than ``SPLIT_BYTES // itemsize`` elements is
#: cut into pieces of at most that many elements, as Paddle does with ``2**30 - 1`` (pickle
#: protocols below 4 cannot hold a bytes object of 4 GiB). Tests lower it.
SPLIT_BYTES: int = 2**30 - 1

#: Containers (dicts, lists, tuples) nested deeper than this are refused by ``save``
#: (``ValueError``) and ``load`` (``CorruptFileError``): a checkpoint nests a few levels, and
#: the walks over a structure are recursive, as Paddle's are.
MAX_DEPTH: int = 100

NAME_TABLE_KEY = "StructuredToParameterName@@"
SPLIT_INFO_KEY = "UnpackBigParamInfor@@"  # sic: Paddle's spelling
MASTER_WEIGHTS_KEY = "master_weights"


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks the unpickler for a global outside Paddle's format; nothing was run."""


class CorruptFileError(pickle.UnpicklingError, ValueError):
    """The file is empty, truncated, or not a Paddle / triton_adam pickle."""


# ------------------------------------------------------------------------------ dtypes
# Paddle's dtypes that numpy and torch share. bfloat16 travels as its uint16 bit pattern.
_TORCH_TO_NUMPY: dict[torch.dtype, np.dtype] = {
    torch.bool: np.dtype(np.bool_),
    torch.uint8: np.dtype(np.uint8),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
}
_NUMPY_TO_TORCH: dict[np.dtype, torch.dtype] = {v: k for k, v in _TORCH_TO_NUMPY.items()}
_BF16_BITS = np.dtype(np.uint16)


def _without_values(t: torch.Tensor) -> str | None:
    """Why tensor ``t`` has no values of its own to write, or None if it has."""
    if t.device.type == "meta":
        return "a tensor on the meta device (it holds no values)"
    fake = getattr(sys.modules.get("torch._subclasses.fake_tensor"), "FakeTensor", None)
    if fake is not None and isinstance(t, fake):
        return "a FakeTensor (it holds no values)"
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    if dtensor is not None and isinstance(t, dtensor):
        return ("a DTensor (save its full_tensor(), or each rank's shard with "
                "torch.distributed.checkpoint)")
    return None


def _tensor_to_numpy(t: torch.Tensor, where: str) -> np.ndarray:
    """A C-contiguous CPU ndarray of ``t`` (bfloat16 as uint16 bits), as Paddle stores it."""
    if t.layout != torch.strided:
        raise TypeError(f"{where}: cannot save a {t.layout} tensor; Paddle's format holds "
                        "dense tensors only (call .to_dense() first)")
    no_values = _without_values(t)
    if no_values is not None:
        raise TypeError(f"{where}: cannot save {no_values}")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_BF16_BITS)
    dtype = _TORCH_TO_NUMPY.get(t.dtype)
    if dtype is None:
        why = (" (Paddle's format reads every uint16 array as bfloat16)"
               if t.dtype == torch.uint16 else "")
        raise TypeError(f"{where}: cannot save a {t.dtype} tensor{why}; supported: bfloat16, "
                        + ", ".join(str(d).removeprefix("torch.") for d in _TORCH_TO_NUMPY))
    # .numpy() shares memory: no copy for CPU tensors; pickling copies the bytes anyway.
    return t.numpy()


def _numpy_to_tensor(a: np.ndarray, device: torch.device | None) -> torch.Tensor:
    """The torch tensor of an array read from a file (uint16 is bfloat16, as in Paddle)."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))  # torch only takes native byte order
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = a.copy(order="C")
    if a.dtype == _BF16_BITS:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    elif a.dtype in _NUMPY_TO_TORCH:
        t = torch.from_numpy(a)
    else:
        raise TypeError(f"an array of dtype {a.dtype} has no Paddle tensor equivalent "
                        "(pass return_numpy=True to get the arrays)")
    return t if device is None else t.to(device)


# ------------------------------------------------------------------------------ save
# bytes and frozenset pickle fine, but paddle.load refuses them (NotImplementedError) outside a
# state dict, so save refuses them everywhere.
_SCALARS = (type(None), bool, int, float, complex, str)
_MASTER_OF = re.compile(r"(.*)_fp32_master_(\d+)_")


_CONTAINERS = (dict, collections.OrderedDict, list, tuple)


def _contains_tensor(obj: Any, seen: set[int]) -> bool:
    """Paddle's ``_contain_x`` with a tensor test: dicts, lists and tuples, by exact type.

    Iterative, and each container is looked into once (``seen``, shared by the calls of one
    walk): a structure that shares or nests itself costs its size, not its unfolded size.
    """
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            return True
        if type(x) in _CONTAINERS and id(x) not in seen:
            seen.add(id(x))
            stack.extend(x.values() if isinstance(x, dict) else x)
    return False


def _is_state_dict(obj: Any) -> bool:
    """Paddle's ``_is_state_dict``: every value a tensor or a dict holding no tensor."""
    if not isinstance(obj, dict):
        return False
    seen: set[int] = set()
    for value in obj.values():
        if isinstance(value, dict):
            if any(_contains_tensor(v, seen) for v in value.values()):
                return False
        elif not isinstance(value, torch.Tensor):
            return False
    return True


class _SaveWalk:
    """State of one ``_convert`` walk: every container is converted once (a structure that
    shares a part is written once, with pickle's references, in time linear in its size)
    and a container inside itself (a cycle) or nesting deeper than ``MAX_DEPTH`` is a
    ``ValueError`` naming where, before anything is written."""

    def __init__(self) -> None:
        self.done: dict[int, Any] = {}  # id(container) -> its converted copy
        self.open: set[int] = set()  # the containers being converted (the current path)

    def enter(self, obj: Any, where: str) -> None:
        if id(obj) in self.open:
            raise ValueError(f"{where} contains itself (a reference cycle); Paddle's format "
                             "holds trees of dicts, lists and tuples")
        if len(self.open) >= MAX_DEPTH:
            raise ValueError(f"{where} is nested more than {MAX_DEPTH} containers deep")
        self.open.add(id(obj))

    def leave(self, obj: Any, out: Any) -> Any:
        self.open.discard(id(obj))
        self.done[id(obj)] = out
        return out


def _master_names(keys: Iterable[Any]) -> dict[str, str]:
    """``{param_name: master_name}`` from accumulator keys ``{param}_fp32_master_{n}_..``."""
    names: dict[str, str] = {}
    for key in keys:
        m = _MASTER_OF.match(key) if isinstance(key, str) else None
        if m:
            names.setdefault(m.group(1), f"{m.group(1)}_fp32_master_{m.group(2)}")
    return names


def _check_plain(obj: Any, where: str) -> None:
    """Refuse what ``load`` would refuse, before anything touches the disk."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError(f"{where}: cannot save an object array (it holds arbitrary "
                            "Python objects, which load refuses)")
    elif not (type(obj) in _SCALARS or isinstance(obj, np.generic)):
        raise TypeError(f"{where}: cannot save an object of type {type(obj).__qualname__}; "
                        "Paddle's format holds tensors, ndarrays, numbers, strings, None and "
                        "dict / OrderedDict / list / tuple / set of those")
    if isinstance(obj, np.generic) and obj.dtype.hasobject:
        raise TypeError(f"{where}: cannot save a numpy object scalar")


def _check_key(key: Any, where: str) -> None:
    """Dict keys and set members: hashable plain data (tuples of it included). Iterative and
    each tuple looked at once: a key of shared tuples costs its size, not its unfolded size."""
    stack, seen = [(key, 0)], set()
    while stack:
        k, depth = stack.pop()
        if type(k) is tuple:
            if id(k) in seen:
                continue
            seen.add(id(k))
            if depth >= MAX_DEPTH:
                raise ValueError(f"{where}: a dict key or set member is a tuple nested more "
                                 f"than {MAX_DEPTH} deep")
            stack.extend((x, depth + 1) for x in k)
        elif not (type(k) in _SCALARS or isinstance(k, np.generic)):
            raise TypeError(f"{where}: cannot save a dict key or set member of type "
                            f"{type(k).__qualname__}")


def _convert(obj: Any, name: str, where: str, tensor: Callable[[np.ndarray, str], Any],
             walk: _SaveWalk) -> Any:
    """``obj`` with every tensor replaced by ``tensor(ndarray, name)``, checked for ``load``.

    ``name`` is the name a tensor at this position gets (see the module docstring); a
    container met again (shared) keeps what it got at its first position.
    """
    if isinstance(obj, torch.Tensor):
        return tensor(_tensor_to_numpy(obj, where), name)
    kind = type(obj)
    if kind in _CONTAINERS or kind is set:
        if id(obj) in walk.done:
            return walk.done[id(obj)]
        walk.enter(obj, where)
        return walk.leave(obj, _convert_container(obj, name, where, tensor, walk))
    _check_plain(obj, where)
    return obj


def _convert_container(obj: Any, name: str, where: str,
                       tensor: Callable[[np.ndarray, str], Any], walk: _SaveWalk) -> Any:
    kind = type(obj)
    if kind in (dict, collections.OrderedDict):
        out = kind()
        masters: dict[str, str] | None = None
        for key, value in obj.items():
            here = f"{where}[{key!r}]"
            _check_key(key, where)
            if key == MASTER_WEIGHTS_KEY and type(value) in (dict, collections.OrderedDict):
                if masters is None:
                    masters = _master_names(obj.keys())
                if id(value) in walk.done:
                    out[key] = walk.done[id(value)]
                    continue
                walk.enter(value, here)
                out[key] = walk.leave(value, type(value)(
                    (p, _convert(v, masters.get(p, f"{p}_fp32_master_0"), f"{here}[{p!r}]",
                                 tensor, walk))
                    for p, v in value.items()))
            else:
                out[key] = _convert(value, key if isinstance(key, str) else f"{name}.{key}",
                                    here, tensor, walk)
        return out
    if kind is set:
        # Paddle's format cannot hold a tensor in a set (its arrays are unhashable).
        for v in obj:
            _check_key(v, where)
        return obj
    return kind(_convert(v, f"{name}_{i}", f"{where}[{i}]", tensor, walk)
                for i, v in enumerate(obj))


def _split_big_arrays(saved: dict, protocol: int) -> dict:
    """Paddle's ``_unpack_saved_dict``: protocol 2/3 cut top-level arrays over SPLIT_BYTES."""
    if protocol >= 4:
        return saved
    info: dict[str, dict] = {}
    pieces: dict[str, np.ndarray] = {}
    for key, value in saved.items():
        if not isinstance(value, np.ndarray):
            continue
        most = SPLIT_BYTES // value.dtype.itemsize  # Paddle: int((2**30 - 1) / itemsize)
        if value.size > most:
            flat = value.reshape(-1)  # a view: the pieces pickle only their own bytes
            names = [f"{key}@@.{i}" for i in range(-(-value.size // most))]
            info[key] = {"OriginShape": value.shape, "slices": names}
            for i, piece in enumerate(names):
                pieces[piece] = flat[i * most:(i + 1) * most]
    if info:
        # Same order as Paddle: the whole arrays leave, the pieces and the index go last.
        for key, entry in info.items():
            del saved[key]
            for piece in entry["slices"]:
                saved[piece] = pieces[piece]
        saved[SPLIT_INFO_KEY] = info
    return saved


def _to_saved(obj: Any, protocol: int) -> Any:
    """What ``paddle.save`` pickles for ``obj``, given torch tensors (dygraph mode)."""
    if _is_state_dict(obj):
        if not obj:
            warnings.warn("The input state dict is empty, no need to save.", stacklevel=3)
        saved: dict = {}
        names: dict = {}
        walk = _SaveWalk()
        walk.open.add(id(obj))  # a value that is the dict itself is a cycle
        for key, value in obj.items():
            where = f"obj[{key!r}]"
            if isinstance(value, torch.Tensor):
                saved[key] = _tensor_to_numpy(value, where)
                names[key] = key if isinstance(key, str) else str(key)
            else:
                saved[key] = _convert(value, str(key), where, lambda a, n: a, walk)
        saved[NAME_TABLE_KEY] = names
        return _split_big_arrays(saved, protocol)
    return _convert(obj, "tensor", "obj", lambda a, n: (n, a), _SaveWalk())


def _write_pickle(obj: Any, f: IO[bytes], protocol: int) -> None:
    """The one place bytes are written (tests replace it to simulate a full disk)."""
    pickle.dump(obj, f, protocol=protocol)


def _fsync_dir(dirname: str) -> None:
    """Make the rename durable; some platforms / file systems cannot, which is fine."""
    if os.name == "nt":
        return
    try:
        fd = os.open(dirname or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_temp(target: str) -> tuple[int, str]:
    """A new file next to ``target``; mode 0o666 less the umask, as ``open(path, 'wb')``."""
    dirname, base = os.path.split(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(dirname, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _replaceable(target: str) -> os.stat_result | None:
    """The status of the file ``target`` names, or None if there is none; raises if ``save``
    must not replace it. Renaming onto a file needs write access to its directory only, so
    without this check a read-only file (``chmod a-w``) would be replaced silently."""
    try:
        old = os.stat(target)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(old.st_mode):
        raise IsADirectoryError(errno.EISDIR, "cannot save over a directory", target)
    effective = os.access in getattr(os, "supports_effective_ids", ())
    if not os.access(target, os.W_OK, effective_ids=effective):
        raise PermissionError(errno.EACCES, "refusing to replace a file this process could "
                              "not write (open(path, 'wb') would fail); make it writable or "
                              "save elsewhere", target)
    return old


def _take_over(fd: int, tmp: str, old: os.stat_result) -> None:
    """Give the new file (``tmp``, open as ``fd``) the replaced file's permission bits and,
    where this process may, its owner, as writing into the old file would have kept them."""
    mode = stat.S_IMODE(old.st_mode)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:
        os.chmod(tmp, mode)
    if hasattr(os, "fchown") and hasattr(os, "geteuid") and os.geteuid() == 0:
        try:  # only root may give a file away; others keep their own files anyway
            os.fchown(fd, old.st_uid, old.st_gid)
        except OSError:
            pass


def save(obj: Any, path: str | os.PathLike[str] | IO[bytes], protocol: int = 4) -> None:
    """Write ``obj`` in ``paddle.save``'s format, atomically; real ``paddle.load`` reads it.

    Args:
        obj: typically an optimizer ``state_dict()`` (``str -> torch.Tensor``, optionally
            ``'LR_Scheduler'`` -> dict of Python scalars and ``'master_weights'`` -> dict of
            tensors) or a ``.pdparams``-style dict of tensors; in general tensors, ndarrays,
            numbers, strings and None in dicts / OrderedDicts / lists / tuples / sets (not
            bytes or frozenset, which ``paddle.load`` refuses).
            Tensors may live on any device and be of any dtype Paddle shares with numpy, or
            bfloat16 (see the module docstring for how each is written and named).
        path: the file name (``str`` or ``os.PathLike``; no suffix is required or added, and
            ``.pdopt`` / ``.pdparams`` are Paddle's conventions), or a binary file object such
            as ``io.BytesIO`` (written in place at its position, not atomically). Missing
            parent directories are created, as ``paddle.save`` does. A symlink is written
            through, as ``open`` would.
        protocol: pickle protocol, 2, 3 or 4 (Paddle's range). 2 and 3 split arrays of more
            than :data:`SPLIT_BYTES` bytes.

    The file is written to a temporary file in the same directory, flushed, fsynced and
    renamed onto ``path`` (then the directory is fsynced): a reader sees the old file or the
    new one, never a part, and on any error (a full disk, an object that cannot be saved) the
    old file is intact and the temporary file removed. A file replaced keeps its permission
    bits (and, saving as root, its owner), as writing into it would; a file this process
    could not write is not replaced (``PermissionError``), although the rename could.

    A part of ``obj`` shared by several places (the same dict twice) is written once and
    read back shared; containers nested more than :data:`MAX_DEPTH` deep, or inside
    themselves, are refused.

    Raises:
        ValueError: bad ``protocol``, a path whose file name is empty (as Paddle), or ``obj``
            contains itself (a reference cycle) or nests more than :data:`MAX_DEPTH` deep.
        TypeError: ``obj`` holds something Paddle's format or :func:`load` cannot carry,
            a tensor without values among them (meta, fake, a DTensor), checked before
            anything is written.
        PermissionError: ``path`` exists and this process could not write it.
        OSError: from the file system; ``path`` is then unchanged.
    """
    if type(protocol) is not int:  # noqa: E721 - bool is not a protocol
        raise ValueError(f"The 'protocol' MUST be `int`, but received {type(protocol)}")
    if not 2 <= protocol <= 4:
        raise ValueError(f"Expected 1<'protocol'<5, but received protocol={protocol}")
    if hasattr(path, "write"):
        _write_pickle(_to_saved(obj, protocol), path, protocol)  # type: ignore[arg-type]
        path.flush()  # type: ignore[union-attr]
        return
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, an os.PathLike or a binary file object, "
                        f"not {type(path).__qualname__}")
    target = os.fspath(path)
    if not isinstance(target, str):
        raise TypeError("path must be a text path, not bytes")
    if os.path.basename(target) == "":
        raise ValueError("The input path MUST be format of dirname/filename "
                         f"[dirname\\filename in Windows system], but received {target!r} "
                         "whose filename is empty string.")
    saved = _to_saved(obj, protocol)  # every TypeError before the disk is touched

    dirname = os.path.dirname(target)
    if dirname:
        os.makedirs(dirname, exist_ok=True)
    if os.path.islink(target):
        target = os.path.realpath(target)  # replace the file, keep the link
        dirname = os.path.dirname(target)
    old = _replaceable(target)
    fd, tmp = _open_temp(target)
    try:
        if old is not None:
            _take_over(fd, tmp, old)
        with os.fdopen(fd, "wb") as f:
            _write_pickle(saved, f, protocol)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        # fdopen owns (and closed) fd; only the temporary file is left to clean up.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(dirname)


# ------------------------------------------------------------------------------ load
def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for ``bytes`` (latin-1 text), nothing else."""
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower().replace(
            "_", "-") not in (
            "latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"refusing _codecs.encode({type(text).__name__}, "
                                f"{encoding!r}): Paddle's format uses it only for latin-1 bytes")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes`` as protocol 2 uses it: ``bytes()`` for an empty bytes (an empty array's data)."""
    if args:
        raise UnsafePickleError("refusing bytes(...) with arguments: Paddle's format uses "
                                "only bytes() for an empty bytes object")
    return b""


def _numpy_multiarray() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


_MA = _numpy_multiarray()


# The numpy and builtin callables a file may call, as numpy and Paddle call them and no
# other way: each would otherwise build what a few bytes of the file claim (an array of a
# huge shape, an object array, a scalar of a huge dtype) before anything checks it.
class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a file: only ever the first argument of
    ``_reconstruct`` (calling it, as ``ndarray(shape)``, is refused: it would allocate)."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayType()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` as numpy pickles every array, ``(ndarray, (0,), b'b')``: an
    empty array that BUILD then fills from the bytes the file holds (numpy checks their
    length)."""
    if subtype is _NDARRAY and shape == (0,) and dtype == b"b":  # numpy's own call
        return _MA._reconstruct(np.ndarray, shape, dtype)
    if subtype is not _NDARRAY:
        raise UnsafePickleError(f"refusing numpy _reconstruct of {subtype!r}: Paddle's format "
                                "reconstructs numpy.ndarray only")
    if not (type(shape) is tuple and len(shape) <= 64
            and all(type(d) is int and d >= 0 for d in shape) and math.prod(shape) == 0):
        raise UnsafePickleError("refusing numpy _reconstruct of a non-empty shape: numpy "
                                "pickles an empty array and fills it from the file's bytes")
    if not (type(dtype) in (bytes, str) and len(dtype) == 1 and not np.dtype(dtype).hasobject):
        raise UnsafePickleError(f"refusing numpy _reconstruct with dtype {dtype!r}")
    return _MA._reconstruct(np.ndarray, shape, dtype)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` as numpy pickles one, ``dtype('f4', False, True)``. Object dtypes are
    refused: their arrays hold arbitrary Python objects (and ``save`` never writes them)."""
    if type(spec) is not str or len(spec) > 16:
        raise UnsafePickleError(f"refusing numpy.dtype({type(spec).__name__}): numpy pickles "
                                "a dtype by its short type string")
    dtype = np.dtype(spec, bool(align), bool(copy))
    if dtype.hasobject:
        raise UnsafePickleError(f"refusing numpy.dtype({spec!r}): arrays of Python objects "
                                "are not part of Paddle's format")
    return dtype


def _scalar(dtype: Any, *data: Any) -> Any:
    """numpy's ``scalar(dtype, raw bytes)``: a numpy scalar made of bytes the file holds."""
    if not (isinstance(dtype, np.dtype) and len(data) == 1 and type(data[0]) is bytes
            and len(data[0]) == dtype.itemsize):
        raise UnsafePickleError("refusing numpy scalar(...) other than (dtype, its bytes)")
    return _MA.scalar(dtype, data[0])


def _tuple(*args: Any) -> tuple:
    """``tuple`` as ``paddle.save`` calls it for a Tensor: ``tuple((name, ndarray))``."""
    if len(args) != 1 or type(args[0]) is not tuple:
        raise UnsafePickleError("refusing tuple(...) of anything but a tuple: Paddle's format "
                                "uses tuple((name, array)) only")
    return args[0]


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    """``OrderedDict()`` as pickle writes one (its items follow as SETITEMS)."""
    if args:
        raise UnsafePickleError("refusing OrderedDict(...) with arguments: pickle writes "
                                "OrderedDict() and then its items")
    return collections.OrderedDict()


# Every global a Paddle file needs, mapped to the object to use (never imported by name).
# Functions, not the types themselves: NEWOBJ (``cls.__new__(cls, *args)``) needs a type, so
# each can only be called, with the arguments its function checks.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # ndarray and numpy scalar reconstruction, under numpy 1's and numpy 2's module names, so
    # that a file from either numpy loads with the other.
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    # paddle.save pickles a Tensor as REDUCE(tuple, ((name, ndarray),)).
    ("builtins", "tuple"): _tuple,
    # Every protocol spells a complex as a call (and protocols 2/3 a set: builtins.set is
    # the unpickler's own, _RestrictedUnpickler._set); plain data.
    ("builtins", "complex"): complex,
    # Layer.state_dict() is an OrderedDict, kept as such in nested structures.
    ("collections", "OrderedDict"): _ordered_dict,
    # Protocol 2 writes bytes (the ndarray data) as _codecs.encode(latin-1 text, 'latin1'),
    # and an empty one as bytes().
    ("_codecs", "encode"): _latin1_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


def _global_name(module: str, name: str) -> tuple[str, str]:
    """A global as Python 3 names it: protocol 2 files (Python 3 with fix_imports, or Python
    2) use Python 2 names such as __builtin__.set; mapped back as pickle's own find_class."""
    return _compat_pickle.NAME_MAPPING.get(
        (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))


# Hashing work a load may do per byte of its file, plus a floor for tiny files: a checkpoint
# hashes each key and set member once, a handful of items per key.
_HASH_WORK_PER_BYTE = 8
_HASH_WORK_FLOOR = 1 << 16


def _hash_budget(size: int) -> int:
    return _HASH_WORK_PER_BYTE * max(size, 0) + _HASH_WORK_FLOOR


def _hash_cost(x: Any, costs: dict[int, int], cap: int) -> int:
    """What hashing ``x`` costs: a tuple's unfolded size (hashing a tuple hashes its items, and
    a shared item once per reference), 1 for anything else. Each tuple is weighed once
    (``costs``, by id; the tuples are alive in the structure being built)."""
    if type(x) is not tuple:
        return 1
    todo = [(x, False)]
    while todo:
        t, ready = todo.pop()
        if id(t) in costs:
            continue
        if ready:
            costs[id(t)] = min(cap, 1 + sum(costs[id(c)] if type(c) is tuple else 1
                                            for c in t))
        else:
            todo.append((t, True))
            todo.extend((c, False) for c in t if type(c) is tuple and id(c) not in costs)
    return costs[id(x)]


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals are :data:`_ALLOWED_GLOBALS` and nothing else.

    ``set`` is this unpickler's own: building a set hashes its members, which ``_scan`` cannot
    weigh (they are a list's, filled later), so the set weighs them itself, against what is
    left of the file's hashing budget.
    """

    def __init__(self, file: IO[bytes], size: int) -> None:
        super().__init__(file, encoding="latin1")
        self._hash_left = _hash_budget(size)
        self._costs: dict[int, int] = {}

    def _set(self, *args: Any) -> set:
        """``set`` as protocols 2 and 3 spell one: ``set([members])``."""
        if not args:
            return set()
        if len(args) != 1 or type(args[0]) not in (list, tuple):
            raise UnsafePickleError("refusing set(...) of anything but a list")
        for member in args[0]:
            self._hash_left -= _hash_cost(member, self._costs, self._hash_left + 1)
            if self._hash_left < 0:
                raise ValueError("building a set would hash far more items than the file "
                                 "holds (members are tuples shared many times over)")
        return set(args[0])

    def find_class(self, module: str, name: str) -> Any:
        lookup = _global_name(module, name)
        if lookup == ("builtins", "set"):
            return self._set
        try:
            return _ALLOWED_GLOBALS[lookup]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {lookup[0]}.{name}: not part of Paddle's save format "
                "(the file may be malicious; nothing from it was executed)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a persistent id: not part of Paddle's save format")


# ------------------------------------------------------------------------------ the opcode scan
# Before the C unpickler runs, one pass over the opcodes (skipping the bytes of strings and
# arrays: it reads little more than the opcodes) checks what the unpickler cannot afford to
# find out by doing it:
#
# * every length the file claims (bytes, strings, big ints, frames) fits in what is left of
#   the file: the C unpickler allocates a claimed length before it reads the bytes, so ten
#   bytes claiming 2**40 would allocate a terabyte;
# * building the dicts costs time linear in the file. Hashing a tuple hashes its items, and
#   tuples may share items through the memo: forty bytes nest a tuple 2**40 items wide when
#   unfolded. The scan follows the unpickler's stack, weighs each tuple by its unfolded size
#   and adds up the hashing that dict keys, frozenset and set members and BUILD states cost.
#
# Lists and dicts that share parts cost nothing here (the unpickler builds each once); the
# walks after unpickling (``_LoadWalk``) look at each object once.
#
# The scan's stack holds, per object: an int (what hashing it costs: 1 for a scalar, its
# size for a big int, whose hash is not cached as a str's is), a list
# ``[key cost]`` for a dict, list or set being filled (mutable: the memo shares it), or a
# tuple ``(cost, dicts directly inside)`` for a tuple. MARKs are positions, as in the C
# unpickler. Where a hostile file breaks the unpickler's rules (popping below a MARK, say) the
# scan may follow it differently, but only past the point where the unpickler itself fails.
# One loop with the frequent opcodes first: a file of many small arrays is mostly opcodes.
(_K_PUSH1, _K_MEMOIZE, _K_GET, _K_PUT, _K_TUPLE1, _K_TUPLE2, _K_TUPLE3, _K_TUPLE0, _K_TUPLE,
 _K_MARK, _K_REDUCE, _K_BUILD, _K_EMPTY, _K_SETITEMS, _K_SETITEM, _K_APPENDS, _K_APPEND,
 _K_DICT, _K_LIST, _K_ADDITEMS, _K_FROZENSET, _K_POP, _K_POP_MARK, _K_DUP, _K_STOP, _K_FRAME,
 _K_MARKED, _K_INT, _K_OTHER) = range(29)
_KINDS = {"MEMOIZE": _K_MEMOIZE, "GET": _K_GET, "BINGET": _K_GET, "LONG_BINGET": _K_GET,
          "PUT": _K_PUT, "BINPUT": _K_PUT, "LONG_BINPUT": _K_PUT, "TUPLE1": _K_TUPLE1,
          "TUPLE2": _K_TUPLE2, "TUPLE3": _K_TUPLE3, "EMPTY_TUPLE": _K_TUPLE0, "TUPLE": _K_TUPLE,
          "MARK": _K_MARK, "REDUCE": _K_REDUCE, "BUILD": _K_BUILD, "EMPTY_LIST": _K_EMPTY,
          "EMPTY_DICT": _K_EMPTY, "EMPTY_SET": _K_EMPTY, "SETITEMS": _K_SETITEMS,
          "SETITEM": _K_SETITEM, "APPENDS": _K_APPENDS, "APPEND": _K_APPEND, "DICT": _K_DICT,
          "LIST": _K_LIST, "ADDITEMS": _K_ADDITEMS, "FROZENSET": _K_FROZENSET, "POP": _K_POP,
          "POP_MARK": _K_POP_MARK, "DUP": _K_DUP, "STOP": _K_STOP, "FRAME": _K_FRAME,
          "INST": _K_MARKED, "OBJ": _K_MARKED,
          # ints whose size the file chooses: hashing an int reads all its digits (uncached)
          "LONG1": _K_INT, "LONG4": _K_INT, "INT": _K_INT, "LONG": _K_INT}
# How an opcode's argument is stored, in _SCAN_ARG: 0 none; > 0 a number of that many bytes;
# else a length of 1, 4 (signed or not) or 8 bytes and that many bytes, or one or two lines.
_ARG_COUNT1, _ARG_COUNT4S, _ARG_COUNT4, _ARG_COUNT8, _ARG_LINE, _ARG_LINES2 = (
    -1, -2, -3, -4, -5, -6)
_COUNTED = {pickletools.TAKEN_FROM_ARGUMENT1: _ARG_COUNT1,
            pickletools.TAKEN_FROM_ARGUMENT4: _ARG_COUNT4S,
            pickletools.TAKEN_FROM_ARGUMENT4U: _ARG_COUNT4,
            pickletools.TAKEN_FROM_ARGUMENT8U: _ARG_COUNT8}


def _scan_tables() -> tuple[list[int], list[int], list[int], list[int]]:
    """Per opcode byte: its kind (-1: no opcode), argument storage, and for ``_K_OTHER`` the
    items it pops and pushes, from ``pickletools``' description of every opcode."""
    kinds, args, below, push = [-1] * 256, [0] * 256, [0] * 256, [0] * 256
    for op in pickletools.opcodes:
        code, arg = ord(op.code), op.arg
        if arg is None:
            args[code] = 0
        elif arg.n in _COUNTED:
            args[code] = _COUNTED[arg.n]
        elif arg.n == pickletools.UP_TO_NEWLINE:
            args[code] = _ARG_LINES2 if arg.name.endswith("_pair") else _ARG_LINE
        else:
            args[code] = arg.n
        kind = _KINDS.get(op.name, _K_OTHER)
        if kind == _K_OTHER and not op.stack_before and len(op.stack_after) == 1:
            kind = _K_PUSH1  # a number, a string, None, a global: costs 1 to hash
        kinds[code] = kind
        below[code], push[code] = len(op.stack_before), len(op.stack_after)
    return kinds, args, below, push


_SCAN_KIND, _SCAN_ARG, _SCAN_BELOW, _SCAN_PUSH = _scan_tables()
_SCAN_CHUNK = 1 << 16


def _cost(x: Any) -> int:
    """What hashing the object scan entry ``x`` stands for costs."""
    return x if x.__class__ is int else (x[0] if x.__class__ is tuple else 1)


def _scan(f: IO[bytes], end: int) -> None:
    """Check the pickle at ``f``'s position (a seekable file ending at byte ``end``), as said
    above, up to its STOP. Raises ``ValueError`` / ``EOFError`` / ``KeyError`` /
    ``IndexError`` for a file the unpickler must not be given."""
    kinds, args = _SCAN_KIND, _SCAN_ARG
    budget = _hash_budget(end - f.tell())
    cap = budget + 1  # costs saturate: an unfolded size can have thousands of digits
    stack: list[Any] = []
    push, pop = stack.append, stack.pop
    marks: list[int] = []
    memo: dict[int, Any] = {}
    hashing = 0
    base = f.tell()  # the file offset of buf[0]; f is at base + len(buf)
    buf = b""
    i = limit = nbuf = 0  # nbuf: len(buf)
    while True:
        if i >= limit:  # keep 16 bytes ahead: an opcode, its fixed argument or length
            base += i
            buf = buf[i:] + f.read(_SCAN_CHUNK)
            i, nbuf = 0, len(buf)
            limit = nbuf - 16 if base + nbuf < end else nbuf
            if not buf:
                raise EOFError("the file ends before the pickle's STOP")
        code = buf[i]
        i += 1
        kind = kinds[code]
        width = args[code]
        if width > 0:
            if i + width > nbuf:
                raise EOFError("the file ends inside an opcode's argument")
            if kind == _K_GET or kind == _K_PUT or kind == _K_FRAME:
                arg = int.from_bytes(buf[i:i + width], "little")
            i += width
        elif width < 0:
            if width >= _ARG_COUNT8:  # a length, then that many bytes, skipped
                n = (1, 4, 4, 8)[_ARG_COUNT1 - width]
                if i + n > nbuf:
                    raise EOFError("the file ends inside a length")
                size = int.from_bytes(buf[i:i + n], "little", signed=width == _ARG_COUNT4S)
                digits = size
                i += n
                if not 0 <= size <= end - base - i:
                    raise ValueError(f"the opcode at byte {base + i - n - 1} claims {size} "
                                     f"bytes where {end - base - i} are left")
                i += size
                if i > nbuf:  # skip on the disk, not through memory
                    base += i
                    f.seek(base)
                    buf, i, limit, nbuf = b"", 0, 0, 0
            else:
                f.seek(base + i)
                line = f.readline()
                if width == _ARG_LINES2 and line.endswith(b"\n"):
                    line = f.readline()
                if not line.endswith(b"\n"):
                    raise EOFError("the file ends inside a line")
                base, buf, i, limit, nbuf = f.tell(), b"", 0, 0, 0
                arg = int(line) if kind == _K_GET or kind == _K_PUT else None
                digits = len(line)
        if kind == _K_PUSH1:
            push(1)
        elif kind == _K_MEMOIZE:
            memo[len(memo)] = stack[-1]
        elif kind == _K_GET:
            push(memo[arg])
        elif kind == _K_TUPLE1:
            x = stack[-1]
            k = x.__class__
            cost = 1 + (x if k is int else x[0] if k is tuple else 1)
            stack[-1] = (cost if cost < cap else cap, (x,) if k is list else ())
        elif kind == _K_MARK:
            marks.append(len(stack))
        elif kind == _K_TUPLE3 or kind == _K_TUPLE2 or kind == _K_TUPLE or kind == _K_TUPLE0:
            if kind == _K_TUPLE:
                at = marks.pop()
            else:
                at = len(stack) - (3 if kind == _K_TUPLE3 else 2 if kind == _K_TUPLE2 else 0)
                if at < 0:
                    raise IndexError("stack underflow")
            cost = 1
            dicts: tuple = ()
            for x in stack[at:]:
                k = x.__class__
                if k is int:
                    cost += x
                elif k is tuple:
                    cost += x[0]
                else:
                    cost += 1
                    dicts += (x,)
            del stack[at:]
            push((cost if cost < cap else cap, dicts))
        elif kind == _K_REDUCE:
            call = pop()
            stack[-1] = call[0] if call.__class__ is tuple else 1  # its result costs at most that
        elif kind == _K_BUILD:
            state = pop()
            # The state's items are set one by one (dict keys hashed again) unless the object
            # has a __setstate__ (numpy's); a state the file computed is refused.
            if state.__class__ is list:
                hashing += state[0]
            elif state.__class__ is tuple:
                hashing += sum(d[0] for d in state[1])
            else:
                raise ValueError("BUILD with a state that is not a dict or tuple literal")
            if not stack:
                raise IndexError("BUILD without an object to build")
        elif kind == _K_EMPTY:
            push([0])
        elif kind == _K_PUT:
            memo[arg] = stack[-1]
        elif kind in (_K_SETITEMS, _K_APPENDS, _K_DICT, _K_LIST, _K_ADDITEMS, _K_FROZENSET,
                      _K_POP_MARK, _K_MARKED):
            # the items above the last MARK
            at = marks.pop()
            items = stack[at:]
            del stack[at:]
            keys = (items[::2] if kind in (_K_SETITEMS, _K_DICT)
                    else items if kind in (_K_ADDITEMS, _K_FROZENSET) else ())
            work = sum(map(_cost, keys))
            hashing += work
            if kind == _K_SETITEMS:
                if stack[-1].__class__ is list:
                    stack[-1][0] = min(stack[-1][0] + work, cap)
            elif kind in (_K_APPENDS, _K_ADDITEMS):
                if not stack:
                    raise IndexError("nothing to add the items to")
            elif kind == _K_DICT or kind == _K_LIST:
                push([min(work, cap)])
            elif kind != _K_POP_MARK:  # FROZENSET, INST, OBJ
                push(1)
        elif kind == _K_SETITEM:
            work = _cost(stack[-2])
            hashing += work
            del stack[-2:]
            if stack[-1].__class__ is list:
                stack[-1][0] = min(stack[-1][0] + work, cap)
        elif kind == _K_APPEND:
            pop()
            if not stack:
                raise IndexError("APPEND without a list")
        elif kind == _K_POP:
            if marks and marks[-1] == len(stack):
                marks.pop()  # POP on a MARK pops the MARK, as the C unpickler does
            else:
                pop()
        elif kind == _K_DUP:
            push(stack[-1])
        elif kind == _K_FRAME:
            if not 0 <= arg <= end - base - i:
                raise ValueError(f"a frame of {arg} bytes where {end - base - i} are left")
        elif kind == _K_INT:
            push(1 + digits // 4)
        elif kind == _K_STOP:
            if not stack:
                raise IndexError("STOP with an empty stack")
            return
        elif kind < 0:
            raise ValueError(f"unknown opcode {bytes([code])!r} at byte {base + i - 1}")
        else:  # the rest: what they pop and push costs 1 to hash
            below = _SCAN_BELOW[code]
            if below:
                if len(stack) < below:
                    raise IndexError("stack underflow")
                del stack[-below:]
            stack.extend((1,) * _SCAN_PUSH[code])
        if hashing > budget:
            raise ValueError(f"building its dicts would hash more than {budget} items (keys "
                             "that are shared tuples or big ints, used many times over, cost "
                             "far more than the file holds)")


def _describe(path: Any) -> str:
    return repr(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else repr(path)


def _unpickle(f: IO[bytes], where: str, whole_file: bool) -> Any:
    """The object pickled at ``f``'s position (a seekable file), checked by ``_scan`` first."""
    start = f.tell()
    head = f.read(2)
    if not head:
        raise CorruptFileError(f"{where} is empty, not a Paddle / triton_adam file")
    if len(head) < 2 or head[0] != 0x80 or head[1] not in (2, 3, 4):
        raise CorruptFileError(
            f"{where} is not a Paddle / triton_adam file: it does not start with a "
            f"pickle header of protocol 2-4 (found {head!r})")
    end = f.seek(0, os.SEEK_END)
    try:
        f.seek(start)
        _scan(f, end)
    except (EOFError, ValueError, KeyError, IndexError, AttributeError, TypeError,
            OverflowError) as e:
        raise CorruptFileError(f"{where} is truncated or corrupt (not a complete Paddle / "
                               f"triton_adam pickle): {type(e).__name__}: {e}") from e
    f.seek(start)
    try:
        obj = _RestrictedUnpickler(f, end - start).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{where}: {e}") from None
    except OSError:
        raise
    except Exception as e:  # EOFError, UnpicklingError, and what a garbled opcode raises
        raise CorruptFileError(f"{where} is truncated or corrupt (not a complete Paddle / "
                               f"triton_adam pickle): {type(e).__name__}: {e}") from e
    if whole_file and f.read(1):
        raise CorruptFileError(f"{where} is corrupt: data follows the end of the pickle")
    return obj


class _LoadWalk:
    """The walks over what was unpickled, each object looked at once: memo references make a
    file of a few hundred bytes hold a list nested in itself 2**40 times over (a "billion
    laughs"), which a plain recursive walk would unfold. A container inside itself (a cycle)
    and nesting deeper than ``MAX_DEPTH`` are a ``CorruptFileError``: ``paddle.save`` writes
    trees. Each array becomes one tensor, however many places hold it."""

    def __init__(self, where: str, tensor: Callable[[np.ndarray], Any]) -> None:
        self.where = where
        self.tensor = tensor
        self.tensors: dict[int, Any] = {}  # id(array) -> its tensor
        self.done: dict[int, Any] = {}  # id(container) -> its mapped copy
        self.open: set[int] = set()

    def array(self, a: np.ndarray) -> Any:
        if id(a) not in self.tensors:
            self.tensors[id(a)] = self.tensor(a)
        return self.tensors[id(a)]

    def has_named_array(self, obj: Any) -> bool:
        """Whether a saved Tensor, ``(name, ndarray)``, is anywhere in ``obj``."""
        stack, seen = [obj], set()
        while stack:
            x = stack.pop()
            if _is_named_array(x):
                return True
            if type(x) in _CONTAINERS and id(x) not in seen:
                seen.add(id(x))
                stack.extend(x.values() if isinstance(x, dict) else x)
        return False

    def map(self, obj: Any, match: Callable[[Any], bool], fn: Callable[[Any], Any],
            depth: int = 0) -> Any:
        """Paddle's ``_parse_every_object``: ``fn`` on every match inside dicts, lists and
        tuples (a new container for each, shared ones once)."""
        if match(obj):
            return fn(obj)
        kind = type(obj)
        if kind not in _CONTAINERS:
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.open:
            raise CorruptFileError(f"{self.where} is corrupt: a container holds itself (a "
                                   "reference cycle, which Paddle's format never holds)")
        if depth >= MAX_DEPTH:
            raise CorruptFileError(f"{self.where} is corrupt: containers nested more than "
                                   f"{MAX_DEPTH} deep")
        self.open.add(key)
        if isinstance(obj, dict):
            out = kind((k, self.map(v, match, fn, depth + 1)) for k, v in obj.items())
        else:
            out = kind(self.map(v, match, fn, depth + 1) for v in obj)
        self.open.discard(key)
        self.done[key] = out
        return out


def _join_split_arrays(obj: dict, where: str) -> dict:
    """Paddle's ``_pack_loaded_dict``: reassemble ``key@@.i`` pieces, checking the index.

    Each piece must be a distinct entry holding a distinct array: a piece listed twice (or
    two entries sharing one array through the memo) would join into more than the file
    holds."""
    info = obj.get(SPLIT_INFO_KEY)
    if info is None:
        return obj
    try:
        used: list[str] = []
        arrays: set[int] = set()
        for key, entry in info.items():
            names = entry["slices"]
            if type(names) not in (list, tuple) or not all(type(n) is str for n in names):
                raise TypeError("'slices' is not a list of entry names")
            pieces = [obj[name] for name in names]
            if not all(isinstance(p, np.ndarray) and p.ndim == 1 for p in pieces):
                raise TypeError("a piece is not a 1-D ndarray")
            for name, piece in zip(names, pieces):
                if name in used or id(piece) in arrays:
                    raise ValueError(f"piece {name!r} is used twice")
                used.append(name)
                arrays.add(id(piece))
            obj[key] = np.concatenate(pieces).reshape(tuple(entry["OriginShape"]))
    except Exception as e:
        raise CorruptFileError(f"{where} is corrupt: bad {SPLIT_INFO_KEY} entry "
                               f"({type(e).__name__}: {e})") from e
    for name in used:
        obj.pop(name, None)
    del obj[SPLIT_INFO_KEY]
    return obj


def _is_named_array(obj: Any) -> bool:
    """Paddle's ``_transformed_from_varbase``: the ``(name, ndarray)`` of a saved Tensor."""
    return (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str)
            and isinstance(obj[1], np.ndarray))


def load(path: str | os.PathLike[str] | IO[bytes], *, device: str | torch.device | None = None,
         return_numpy: bool = False) -> Any:
    """Read a file written by ``paddle.save`` or :func:`save`, into torch tensors.

    Args:
        path: the file (``str`` / ``os.PathLike``), or a binary file object such as
            ``io.BytesIO`` read from its position (on an error the position is restored). A
            file object that cannot seek (a pipe) is read to its end first.
        device: where to put the tensors; CPU when None.
        return_numpy: return the ndarrays themselves, as ``paddle.load(..., return_numpy=True)``
            (bfloat16 then stays its uint16 bit pattern).

    Returns:
        What ``paddle.load`` returns, with torch tensors for Paddle Tensors: for a state dict,
        the dict without ``'StructuredToParameterName@@'``, its tensors as tensors, split
        arrays reassembled; otherwise the saved structure with every ``(name, ndarray)`` tuple
        (a saved Tensor) as a tensor, the name dropped, and other ndarrays left as ndarrays,
        or, when there is no such tuple, every ndarray as a tensor. ``uint16`` arrays become
        bfloat16 tensors. An array the file holds in several places becomes one tensor.

    Time and memory are linear in the file's size, whatever the file claims: lengths are
    checked against the file before anything is allocated, arrays are built only as numpy
    pickles them (an empty array filled from bytes the file holds), each object is walked
    once however many references share it, and the hashing that building dicts and sets
    costs is bounded (see ``_scan``).

    Raises:
        UnsafePickleError: the file names a global outside Paddle's format (numpy arrays,
            dtypes and scalars, ``tuple``, ``set``, ``complex``, ``OrderedDict``, ``bytes``
            as protocol 2 writes them) or calls one otherwise than numpy and Paddle do;
            nothing from the file is executed. This also refuses the ``eval`` Paddle pickles
            a raw static-graph ``DenseTensor`` with, and arrays of Python objects.
        CorruptFileError: (a ``pickle.UnpicklingError`` and a ``ValueError``) the file is
            empty, truncated, not a pickle of protocol 2-4, claims more bytes than it holds,
            holds a reference cycle or nests more than :data:`MAX_DEPTH` deep, or would
            cost far more to build than its size (shared tuples as dict keys).
        TypeError: an array whose dtype no tensor has (unless ``return_numpy``).
        OSError: the file cannot be read.
    """
    where = _describe(path)
    dev = None if device is None else torch.device(device)
    if hasattr(path, "read"):
        source = path
        if not getattr(path, "seekable", lambda: False)():
            # The scan goes over the pickle before the unpickler does: hold a stream's bytes.
            source = stdio.BytesIO(path.read())  # type: ignore[union-attr]
        start = source.tell()  # type: ignore[union-attr]
        try:
            obj = _unpickle(source, where, whole_file=False)  # type: ignore[arg-type]
        except BaseException:
            source.seek(start)  # type: ignore[union-attr]
            raise
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str, an os.PathLike or a binary file object, "
                            f"not {type(path).__qualname__}")
        with open(path, "rb") as f:
            obj = _unpickle(f, where, whole_file=True)

    def tensor(a: np.ndarray) -> Any:
        if return_numpy:
            return a
        try:
            return _numpy_to_tensor(a, dev)
        except TypeError as e:
            raise TypeError(f"{where}: {e}") from None

    walk = _LoadWalk(where, tensor)
    if isinstance(obj, dict):
        obj = _join_split_arrays(obj, where)
        if NAME_TABLE_KEY in obj:
            # paddle.save's state dict: exactly the arrays named in the table are tensors.
            table = obj.pop(NAME_TABLE_KEY)
            if not isinstance(table, dict) or not all(k in obj for k in table):
                raise CorruptFileError(f"{where} is corrupt: its {NAME_TABLE_KEY} names "
                                       "entries the file does not have")
            for key in table:
                if isinstance(obj[key], np.ndarray):
                    obj[key] = walk.array(obj[key])
            return obj
    if walk.has_named_array(obj):
        return walk.map(obj, _is_named_array, lambda t: walk.array(t[1]))
    return walk.map(obj, lambda a: isinstance(a, np.ndarray), walk.array)
