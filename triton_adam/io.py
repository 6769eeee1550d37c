"""How do I save triton_adam state so that real Paddle reads it, and read what Paddle wrote?

``save`` writes the file ``paddle.save`` (dygraph mode, Paddle 3.3.1) writes for the same
content, with torch tensors in place of Paddle tensors; ``load`` reads such files, from either
side, back into torch tensors. Reading never executes code from the file: the unpickler
accepts only the few globals Paddle's format needs (anything else is an
:class:`UnsafePickleError`; a truncated or foreign file is a :class:`CorruptFileError`).
Saving replaces the file atomically (temporary file, fsync, rename), so a crash or a full disk
leaves the previous file intact.

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
import os
import pickle
import re
import secrets
import warnings
from collections.abc import Iterable
from typing import IO, Any, Callable

import numpy as np
import torch

__all__ = [
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


def _tensor_to_numpy(t: torch.Tensor, where: str) -> np.ndarray:
    """A C-contiguous CPU ndarray of ``t`` (bfloat16 as uint16 bits), as Paddle stores it."""
    if t.layout != torch.strided:
        raise TypeError(f"{where}: cannot save a {t.layout} tensor; Paddle's format holds "
                        "dense tensors only (call .to_dense() first)")
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


def _contains_tensor(obj: Any) -> bool:
    """Paddle's ``_contain_x`` with a tensor test: dicts, lists and tuples, by exact type."""
    if isinstance(obj, torch.Tensor):
        return True
    if type(obj) in (dict, collections.OrderedDict):
        return any(_contains_tensor(v) for v in obj.values())
    if type(obj) in (list, tuple):
        return any(_contains_tensor(v) for v in obj)
    return False


def _is_state_dict(obj: Any) -> bool:
    """Paddle's ``_is_state_dict``: every value a tensor or a dict holding no tensor."""
    if not isinstance(obj, dict):
        return False
    for value in obj.values():
        if isinstance(value, dict):
            if any(_contains_tensor(v) for v in value.values()):
                return False
        elif not isinstance(value, torch.Tensor):
            return False
    return True


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
    """Dict keys and set members: hashable plain data (tuples of it included)."""
    if type(key) is tuple:
        for k in key:
            _check_key(k, where)
    elif not (type(key) in _SCALARS or isinstance(key, np.generic)):
        raise TypeError(f"{where}: cannot save a dict key or set member of type "
                        f"{type(key).__qualname__}")


def _convert(obj: Any, name: str, where: str, tensor: Callable[[np.ndarray, str], Any]) -> Any:
    """``obj`` with every tensor replaced by ``tensor(ndarray, name)``, checked for ``load``.

    ``name`` is the name a tensor at this position gets (see the module docstring).
    """
    if isinstance(obj, torch.Tensor):
        return tensor(_tensor_to_numpy(obj, where), name)
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
                out[key] = type(value)(
                    (p, _convert(v, masters.get(p, f"{p}_fp32_master_0"), f"{here}[{p!r}]",
                                 tensor))
                    for p, v in value.items())
            else:
                out[key] = _convert(value, key if isinstance(key, str) else f"{name}.{key}",
                                    here, tensor)
        return out
    if kind is set:
        # Paddle's format cannot hold a tensor in a set (its arrays are unhashable).
        for v in obj:
            _check_key(v, where)
        return obj
    if kind in (list, tuple):
        return kind(_convert(v, f"{name}_{i}", f"{where}[{i}]", tensor)
                    for i, v in enumerate(obj))
    _check_plain(obj, where)
    return obj


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
        for key, value in obj.items():
            where = f"obj[{key!r}]"
            if isinstance(value, torch.Tensor):
                saved[key] = _tensor_to_numpy(value, where)
                names[key] = key if isinstance(key, str) else str(key)
            else:
                saved[key] = _convert(value, str(key), where, lambda a, n: a)
        saved[NAME_TABLE_KEY] = names
        return _split_big_arrays(saved, protocol)
    return _convert(obj, "tensor", "obj", lambda a, n: (n, a))


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
    old file is intact and the temporary file removed.

    Raises:
        ValueError: bad ``protocol``, or a path whose file name is empty (as Paddle).
        TypeError: ``obj`` holds something Paddle's format or :func:`load` cannot carry
            (checked before anything is written).
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
    fd, tmp = _open_temp(target)
    try:
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

# Every global a Paddle file needs, mapped to the object to use (never imported by name):
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # ndarray and numpy scalar reconstruction, under numpy 1's and numpy 2's module names, so
    # that a file from either numpy loads with the other.
    ("numpy.core.multiarray", "_reconstruct"): _MA._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _MA._reconstruct,
    ("numpy.core.multiarray", "scalar"): _MA.scalar,
    ("numpy._core.multiarray", "scalar"): _MA.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # paddle.save pickles a Tensor as REDUCE(tuple, ((name, ndarray),)).
    ("builtins", "tuple"): tuple,
    # Protocols 2/3 spell a set, and every protocol a complex, as a call; plain data.
    ("builtins", "set"): set,
    ("builtins", "complex"): complex,
    # Layer.state_dict() is an OrderedDict, kept as such in nested structures.
    ("collections", "OrderedDict"): collections.OrderedDict,
    # Protocol 2 writes bytes (the ndarray data) as _codecs.encode(latin-1 text, 'latin1'),
    # and an empty one as bytes().
    ("_codecs", "encode"): _latin1_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals are :data:`_ALLOWED_GLOBALS` and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 2 files (Python 3 with fix_imports, or Python 2) use Python 2 names such as
        # __builtin__.set; map them back as pickle's own find_class does.
        lookup = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        try:
            return _ALLOWED_GLOBALS[lookup]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {lookup[0]}.{name}: not part of Paddle's save format "
                "(the file may be malicious; nothing from it was executed)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a persistent id: not part of Paddle's save format")


def _describe(path: Any) -> str:
    return repr(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else repr(path)


def _unpickle(f: IO[bytes], where: str, whole_file: bool) -> Any:
    seekable = getattr(f, "seekable", lambda: False)()
    if seekable:  # check the header first, for a clearer message than pickle's
        head = f.read(2)
        if not head:
            raise CorruptFileError(f"{where} is empty, not a Paddle / triton_adam file")
        if len(head) < 2 or head[0] != 0x80 or head[1] not in (2, 3, 4):
            raise CorruptFileError(
                f"{where} is not a Paddle / triton_adam file: it does not start with a "
                f"pickle header of protocol 2-4 (found {head!r})")
        f.seek(-len(head), os.SEEK_CUR)
    try:
        obj = _RestrictedUnpickler(f, encoding="latin1").load()
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


def _join_split_arrays(obj: dict, where: str) -> dict:
    """Paddle's ``_pack_loaded_dict``: reassemble ``key@@.i`` pieces, checking the index."""
    info = obj.get(SPLIT_INFO_KEY)
    if info is None:
        return obj
    try:
        used: list[str] = []
        for key, entry in info.items():
            pieces = [obj[name] for name in entry["slices"]]
            if not all(isinstance(p, np.ndarray) and p.ndim == 1 for p in pieces):
                raise TypeError("a piece is not a 1-D ndarray")
            obj[key] = np.concatenate(pieces).reshape(tuple(entry["OriginShape"]))
            used += entry["slices"]
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


def _has_named_array(obj: Any) -> bool:
    if _is_named_array(obj):
        return True
    if type(obj) in (dict, collections.OrderedDict):
        return any(_has_named_array(v) for v in obj.values())
    if type(obj) in (list, tuple):
        return any(_has_named_array(v) for v in obj)
    return False


def _map(obj: Any, match: Callable[[Any], bool], fn: Callable[[Any], Any]) -> Any:
    """Paddle's ``_parse_every_object``: ``fn`` on every match inside dicts, lists, tuples."""
    if match(obj):
        return fn(obj)
    kind = type(obj)
    if kind in (dict, collections.OrderedDict):
        return kind((k, _map(v, match, fn)) for k, v in obj.items())
    if kind in (list, tuple):
        return kind(_map(v, match, fn) for v in obj)
    return obj


def load(path: str | os.PathLike[str] | IO[bytes], *, device: str | torch.device | None = None,
         return_numpy: bool = False) -> Any:
    """Read a file written by ``paddle.save`` or :func:`save`, into torch tensors.

    Args:
        path: the file (``str`` / ``os.PathLike``), or a binary file object such as
            ``io.BytesIO`` read from its position (on an error the position is restored).
        device: where to put the tensors; CPU when None.
        return_numpy: return the ndarrays themselves, as ``paddle.load(..., return_numpy=True)``
            (bfloat16 then stays its uint16 bit pattern).

    Returns:
        What ``paddle.load`` returns, with torch tensors for Paddle Tensors: for a state dict,
        the dict without ``'StructuredToParameterName@@'``, its tensors as tensors, split
        arrays reassembled; otherwise the saved structure with every ``(name, ndarray)`` tuple
        (a saved Tensor) as a tensor, the name dropped, and other ndarrays left as ndarrays,
        or, when there is no such tuple, every ndarray as a tensor. ``uint16`` arrays become
        bfloat16 tensors.

    Raises:
        UnsafePickleError: the file names a global outside Paddle's format (numpy arrays,
            dtypes and scalars, ``tuple``, ``set``, ``complex``, ``OrderedDict``, ``bytes``
            as protocol 2 writes them); nothing from the file is executed. This also refuses
            the ``eval`` Paddle pickles a raw static-graph ``DenseTensor`` with.
        CorruptFileError: (a ``pickle.UnpicklingError`` and a ``ValueError``) the file is
            empty, truncated, or not a pickle of protocol 2-4.
        TypeError: an array whose dtype no tensor has (unless ``return_numpy``).
        OSError: the file cannot be read.
    """
    where = _describe(path)
    dev = None if device is None else torch.device(device)
    if hasattr(path, "read"):
        seekable = getattr(path, "seekable", lambda: False)()
        start = path.tell() if seekable else None  # type: ignore[union-attr]
        try:
            obj = _unpickle(path, where, whole_file=False)  # type: ignore[arg-type]
        except BaseException:
            if start is not None:
                path.seek(start)  # type: ignore[union-attr]
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

    try:
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
                        obj[key] = tensor(obj[key])
                return obj
        if _has_named_array(obj):
            return _map(obj, _is_named_array, lambda t: tensor(t[1]))
        return _map(obj, lambda a: isinstance(a, np.ndarray), tensor)
    except RecursionError as e:
        raise CorruptFileError(f"{where} is corrupt: nested too deeply") from e

