"""Read pickled checkpoints without running them: torch zip files (LAVIS ``.pth``, THUDM ``.bin``)
and ``paddle.save`` pickles (optimizer, scheduler and scaler states of earlier checkpoints).

A pickle is a program: ``pickle.load`` calls whatever callable the file names (``os.system``
included). Here every name the file asks for goes through an allow-list, and nothing the file
names is ever called:

* containers and numbers come from pickle's own opcodes, plus ``collections.OrderedDict``,
  ``builtins.{set, frozenset, tuple, complex}`` and ``_codecs.encode`` for latin-1 only (how
  protocol 2 writes ``bytes``);
* numpy arrays, dtypes and scalars are rebuilt by this module from their raw bytes (numpy's own
  ``_reconstruct``/``__setstate__`` are never reached; object, structured and datetime dtypes are
  refused);
* torch tensors (``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` over
  ``torch.<Type>Storage`` persistent ids) become :class:`TensorRef` handles: shape, dtype, offset
  and strides only; their bytes are read later, one tensor at a time, from the zip's
  ``<archive>/data/<key>`` records, so an 8 x 1.7 GB ChatGLM-6B checkpoint converts within a few GB.

Anything else (``os.system``, ``builtins.eval``, ``argparse.Namespace``, an omegaconf config,
Paddle's ``GeneratorState``) raises :class:`UnsafePickleError`, which names the file and the
refused ``module.name``. bfloat16 tensors: :meth:`TensorRef.read` widens them to float32 (exact),
:meth:`TensorRef.read_bits` keeps the raw uint16 bits (for writing them back as bfloat16).
``paddle.save`` writes bfloat16 tensors as numpy uint16 (Paddle's own convention); they come back so.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..errors import MedVLError

__all__ = [
    "CheckpointFormatError", "UnsafePickleError", "SafeUnpickler", "TensorRef", "TorchZip", "open_torch_zip",
    "load_torch_zip", "iter_torch_zip", "load_paddle_pickle", "bfloat16_bits_to_float32",
]


class CheckpointFormatError(MedVLError, ValueError):
    """A checkpoint file that cannot be read (not the format, truncated, inconsistent); names the file."""


class UnsafePickleError(CheckpointFormatError):
    """The pickle asks for something outside the allow-list; names the file and the refused ``module.name``."""


# ---------------------------------------------------------------------------- inert stand-ins


class _Inert:
    """Base of every object this module hands to the unpickler: no ``__dict__``, and a pickle's
    BUILD opcode on it is refused (it could otherwise set attributes on our objects)."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"refused: BUILD (setting state) on {type(self).__name__}")


class _Allowed(_Inert):
    """An allow-listed callable, wrapped so that the pickle cannot modify it."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn: Callable, name: str) -> None:
        self._fn, self._name = fn, name

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __repr__(self) -> str:
        return f"<allowed {self._name}>"


class _Marker(_Inert):
    """A name the pickle may refer to but never call (``numpy.ndarray``, ``torch.FloatStorage``)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str = "") -> None:
        self.name, self.dtype = name, dtype

    def __call__(self, *args: Any) -> Any:
        raise UnsafePickleError(f"refused: calling {self.name}")


# torch storage classes -> (numpy dtype of the stored elements, our dtype name)
_STORAGES = {
    "DoubleStorage": ("<f8", "float64"), "FloatStorage": ("<f4", "float32"), "HalfStorage": ("<f2", "float16"),
    "BFloat16Storage": ("<u2", "bfloat16"), "LongStorage": ("<i8", "int64"), "IntStorage": ("<i4", "int32"),
    "ShortStorage": ("<i2", "int16"), "CharStorage": ("|i1", "int8"), "ByteStorage": ("|u1", "uint8"),
    "BoolStorage": ("|b1", "bool"), "ComplexFloatStorage": ("<c8", "complex64"),
    "ComplexDoubleStorage": ("<c16", "complex128"), "UInt16Storage": ("<u2", "uint16"),
    "UInt32Storage": ("<u4", "uint32"), "UInt64Storage": ("<u8", "uint64"),
}
_SIMPLE_KINDS = "biufcSU"  # numpy dtype kinds that hold no Python objects, fields or units


class _DtypeBuilder(_Inert):
    """``numpy.dtype(spec, align, copy)`` + its BUILD state, resolved without numpy's unpickling code."""

    __slots__ = ("dtype",)

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(spec, str):
            raise UnsafePickleError(f"refused: numpy.dtype({spec!r}): only a type code string is allowed")
        try:
            dtype = np.dtype(spec)
        except TypeError as e:
            raise UnsafePickleError(f"refused: numpy.dtype({spec!r}): {e}") from None
        if dtype.kind not in _SIMPLE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise UnsafePickleError(f"refused: numpy.dtype({spec!r}) (only numbers, bools and fixed strings)")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 8:
            raise UnsafePickleError(f"refused: a numpy dtype state {state!r:.80}")
        order, subarray, names, fields, elsize = state[1], state[2], state[3], state[4], state[5]
        if subarray is not None or names is not None or fields is not None or order not in ("<", ">", "|", "="):
            raise UnsafePickleError("refused: a structured or sub-array numpy dtype")
        dtype = self.dtype
        if dtype.kind in "SU" and isinstance(elsize, int) and elsize > 0:  # flexible: the size is in the state
            dtype = np.dtype(f"{dtype.kind}{elsize // (4 if dtype.kind == 'U' else 1)}")
        if order in "<>":
            dtype = dtype.newbyteorder(order)
        self.dtype = dtype


def _dtype_of(value: Any) -> np.dtype:
    if isinstance(value, _DtypeBuilder):
        return value.dtype
    raise UnsafePickleError(f"refused: {type(value).__name__} where a numpy dtype belongs")


class _ArrayBuilder(_Inert):
    """``numpy.core.multiarray._reconstruct(ndarray, ...)`` + BUILD: an array from its raw bytes."""

    __slots__ = ("array",)

    def __init__(self, subtype: Any, shape: Any = (0,), code: Any = b"b") -> None:
        if not (isinstance(subtype, _Marker) and subtype.name == "numpy.ndarray"):
            raise UnsafePickleError(f"refused: reconstructing an array of type {subtype!r:.80}")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError(f"refused: a numpy array state {type(state).__name__}")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _array_from_bytes(raw, _dtype_of(dtype), shape, "F" if fortran else "C")


def _array_from_bytes(raw: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
    if isinstance(raw, str):  # protocol 0/1 text
        raw = raw.encode("latin1")
    if not isinstance(raw, (bytes, bytearray)):
        raise UnsafePickleError(f"refused: numpy array data of type {type(raw).__name__} (object arrays are not read)")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise UnsafePickleError(f"refused: numpy array shape {shape!r:.80}")
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != count * dtype.itemsize:
        raise CheckpointFormatError(f"numpy array of shape {shape} {dtype}: {len(raw)} data bytes, expected "
                                    f"{count * dtype.itemsize}")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape, order=order)
    return array.astype(dtype.newbyteorder("="), copy=True)  # writable, native byte order


def _numpy_scalar(dtype: Any, raw: Any) -> np.generic:
    return _array_from_bytes(raw, _dtype_of(dtype), (), "C")[()]


def _numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Protocol 5's ``numpy.core.numeric._frombuffer`` with the buffer in band."""
    return _array_from_bytes(bytes(buffer), _dtype_of(dtype), tuple(shape), "F" if order == "F" else "C")


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode``, the way protocol 2 writes ``bytes``; no other codec is reached."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused: _codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


# ---------------------------------------------------------------------------- torch tensors


class _Storage(_Inert):
    """One ``<archive>/data/<key>`` record: ``numel`` elements of ``dtype``."""

    __slots__ = ("key", "np_dtype", "dtype", "numel", "archive")

    def __init__(self, key: str, np_dtype: str, dtype: str, numel: int, archive: "TorchZip") -> None:
        self.key, self.np_dtype, self.dtype, self.numel, self.archive = key, np_dtype, dtype, numel, archive


class TensorRef(_Inert):
    """A tensor of a torch zip checkpoint, not yet read: ``shape``, ``dtype`` (numpy-style name;
    ``"bfloat16"`` for bfloat16) and where its elements lie in its storage record."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    @property
    def dtype(self) -> str:
        return self.storage.dtype

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.storage.np_dtype).itemsize

    def same_data(self, other: "TensorRef") -> bool:
        """True when both are the same view of the same storage (tied weights are saved so)."""
        return (self.storage.key, self.storage.dtype, self.offset, self.shape, self.stride) == (
            other.storage.key, other.storage.dtype, other.offset, other.shape, other.stride)

    def read_bits(self) -> np.ndarray:
        """The elements as stored, C-contiguous and in native byte order; bfloat16 as uint16 bits."""
        return self.storage.archive._read(self)

    def read(self) -> np.ndarray:
        """The tensor as a numpy array; bfloat16 widened to float32 (exact: every bfloat16 is a float32)."""
        bits = self.read_bits()
        return bfloat16_bits_to_float32(bits) if self.dtype == "bfloat16" else bits

    def __repr__(self) -> str:
        return f"TensorRef({self.dtype}, {list(self.shape)})"


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits -> the float32 values they stand for."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, tuple) and all(type(n) is int and n >= 0 for n in value):
        return value
    raise UnsafePickleError(f"refused: tensor {what} {value!r:.80}")


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """C order (torch ignores the stride of a dimension of size 1, and so does this)."""
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> TensorRef:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])``."""
    if not isinstance(storage, _Storage):
        raise UnsafePickleError(f"refused: a tensor over {type(storage).__name__}, not a storage record")
    if type(offset) is not int or offset < 0:
        raise UnsafePickleError(f"refused: tensor storage offset {offset!r:.80}")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise CheckpointFormatError(f"tensor size {shape} and stride {strides} differ in length")
    if rest and rest[0] not in (True, False):
        raise UnsafePickleError(f"refused: requires_grad {rest[0]!r:.80}")
    if len(rest) > 1 and not (isinstance(rest[1], OrderedDict) and not rest[1]):
        raise UnsafePickleError("refused: a tensor with backward hooks")
    ref = TensorRef(storage, offset, shape, strides)
    if ref.numel:
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.numel:
            raise CheckpointFormatError(f"a tensor {list(shape)} at offset {offset}, stride {list(strides)} reaches "
                                        f"element {last} of storage {storage.key}, which holds {storage.numel}")
    return ref


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, *state: Any) -> TensorRef:
    """``torch._utils._rebuild_parameter[_with_state]``: an ``nn.Parameter`` is its tensor here."""
    if not isinstance(data, TensorRef):
        raise UnsafePickleError(f"refused: a parameter over {type(data).__name__}")
    if state and state[0]:
        raise UnsafePickleError("refused: a parameter with Python state")
    return data


# ---------------------------------------------------------------------------- the unpickler

_BASE_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _Allowed(OrderedDict, "collections.OrderedDict"),
    ("builtins", "set"): _Allowed(set, "builtins.set"),
    ("builtins", "frozenset"): _Allowed(frozenset, "builtins.frozenset"),
    ("builtins", "tuple"): _Allowed(tuple, "builtins.tuple"),
    ("builtins", "complex"): _Allowed(complex, "builtins.complex"),
    ("_codecs", "encode"): _Allowed(_latin1, "_codecs.encode"),
    ("numpy", "ndarray"): _Marker("numpy.ndarray"),
    ("numpy", "dtype"): _Allowed(_DtypeBuilder, "numpy.dtype"),
}
for _numpy_core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 names
    _BASE_ALLOWED[(f"{_numpy_core}.multiarray", "_reconstruct")] = _Allowed(_ArrayBuilder, "_reconstruct")
    _BASE_ALLOWED[(f"{_numpy_core}.multiarray", "scalar")] = _Allowed(_numpy_scalar, "scalar")
    _BASE_ALLOWED[(f"{_numpy_core}.numeric", "_frombuffer")] = _Allowed(_numpy_frombuffer, "_frombuffer")

_TORCH_ALLOWED: dict[tuple[str, str], Any] = {
    **_BASE_ALLOWED,
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(_rebuild_tensor, "torch._utils._rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"): _Allowed(_rebuild_tensor, "torch._utils._rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter, "torch._utils._rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"): _Allowed(_rebuild_parameter, "_rebuild_parameter_with_state"),
    **{("torch", name): _Marker(f"torch.{name}", name) for name in _STORAGES},
}

_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # protocol 2's Python 2 names


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` hands out only allow-listed objects (never the
    real class or function the file names) and whose ``persistent_load`` takes only ids that
    ``persistent`` understands; everything else raises :class:`UnsafePickleError`."""

    def __init__(self, file: io.BufferedIOBase, source: str, allowed: Mapping[tuple[str, str], Any],
                 persistent: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file)
        self._source, self._allowed, self._persistent = source, allowed, persistent

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"{self._source}: refused {module}.{name}: this reader only rebuilds tensors, arrays, numbers, "
                "strings and containers, and never runs a class or function a checkpoint names"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafePickleError(f"{self._source}: refused persistent id {pid!r:.80} (this format has none)")
        return self._persistent(pid)


def _unpickle(data: io.BufferedIOBase, source: str, allowed: Mapping[tuple[str, str], Any],
              persistent: Callable[[Any], Any] | None = None) -> Any:
    try:
        obj = SafeUnpickler(data, source, allowed, persistent).load()
    except CheckpointFormatError as e:
        message = str(e)
        raise type(e)(message if message.startswith(source) else f"{source}: {message}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError, struct.error) as e:
        raise CheckpointFormatError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None
    return _map_containers(obj, _built, {})


def _map_containers(obj: Any, leaf: Callable[[Any], Any], seen: dict[int, Any]) -> Any:
    """``leaf(x)`` for every value, through lists, dicts and tuples (each container once: shared
    and self-referencing ones stay so). ``leaf`` returns its input to leave a value as it is; it sees
    tuples before their items (a Paddle tensor is a tuple)."""
    replaced = leaf(obj)
    if replaced is not obj or not isinstance(obj, (list, dict, tuple)):
        return replaced
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, tuple):
        seen[id(obj)] = obj  # a tuple cannot contain itself except through a list or dict
        resolved = tuple(_map_containers(v, leaf, seen) for v in obj)
        seen[id(obj)] = resolved
        return resolved
    seen[id(obj)] = obj
    items = enumerate(obj) if isinstance(obj, list) else list(obj.items())
    for key, value in items:
        obj[key] = _map_containers(value, leaf, seen)
    return obj


def _built(obj: Any) -> Any:
    """The array or dtype a builder built; anything else as it is."""
    if isinstance(obj, _ArrayBuilder):
        if obj.array is None:
            raise UnsafePickleError("refused: a numpy array without its data")
        return obj.array
    if isinstance(obj, _DtypeBuilder):
        return obj.dtype
    return obj


# ---------------------------------------------------------------------------- torch zip files


def _not_a_torch_zip(path: Path) -> CheckpointFormatError:
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:1] == b"\x80" or head[:2] == b"\x8a\x0a":
        return CheckpointFormatError(
            f"{path}: torch's legacy (pre-1.6, non-zip) format, which is not read: load it once where torch runs "
            "and save it again with a current torch.save (the zip format), or as safetensors")
    if len(head) > 262 and head[257:262] == b"ustar":
        return CheckpointFormatError(f"{path}: torch's tar format (torch < 0.4), which is not read")
    return CheckpointFormatError(f"{path}: not a torch checkpoint (a torch.save zip file)")


class TorchZip:
    """An open torch zip checkpoint (``torch.save`` since 1.6): ``root`` is its unpickled content
    with every tensor a :class:`TensorRef`; a tensor's bytes are read when it is asked for.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        if not zipfile.is_zipfile(self.path):
            raise _not_a_torch_zip(self.path)
        self._file = open(self.path, "rb")
        try:
            self._zip = zipfile.ZipFile(self._file)
            self._records = {info.filename: info for info in self._zip.infolist()}
            pickles = [name for name in self._records if name.endswith("/data.pkl") and name.count("/") == 1]
            if len(pickles) != 1:
                raise CheckpointFormatError(f"{self.path}: a torch zip file has one <archive>/data.pkl; found "
                                            f"{pickles or 'none'}")
            self._prefix = pickles[0][: -len("data.pkl")]
            order = self._records.get(self._prefix + "byteorder")
            self._big_endian = order is not None and self._zip.read(order).strip() == b"big"
            self._storages: dict[tuple[str, str], _Storage] = {}
            with self._zip.open(pickles[0]) as data:
                self.root = _unpickle(data, str(self.path), _TORCH_ALLOWED, self._storage)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
            self.close()
            raise CheckpointFormatError(f"{self.path}: a damaged zip file ({type(e).__name__}: {e})") from None
        except BaseException:
            self.close()
            raise

    def _storage(self, pid: Any) -> _Storage:
        """The persistent id of a storage: ``("storage", torch.<Type>Storage, key, location, numel)``."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Marker)
                and pid[1].dtype in _STORAGES and isinstance(pid[2], str) and isinstance(pid[3], str)
                and type(pid[4]) is int and pid[4] >= 0):
            raise UnsafePickleError(f"{self.path}: refused persistent id {pid!r:.120}")
        np_dtype, dtype = _STORAGES[pid[1].dtype]
        key = pid[2]
        if (key, dtype) in self._storages:
            return self._storages[(key, dtype)]
        record = self._records.get(f"{self._prefix}data/{key}")
        if record is None or "/" in key:
            raise CheckpointFormatError(f"{self.path}: storage {key!r} has no record {self._prefix}data/{key}")
        if record.file_size < pid[4] * np.dtype(np_dtype).itemsize:
            raise CheckpointFormatError(f"{self.path}: storage {key} holds {record.file_size} bytes, fewer than its "
                                        f"{pid[4]} {dtype} elements")
        storage = _Storage(key, np_dtype, dtype, pid[4], self)
        self._storages[(key, dtype)] = storage
        return storage

    # -- reading tensors

    def _data_offset(self, info: zipfile.ZipInfo) -> int | None:
        """Where a stored (uncompressed) record's bytes start in the file; None if compressed."""
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        header = os.pread(self._file.fileno(), 30, info.header_offset)
        signature, *_, name_len, extra_len = struct.unpack("<IHHHHHIIIHH", header)
        if signature != 0x04034B50:
            raise CheckpointFormatError(f"{self.path}: broken zip entry {info.filename}")
        return info.header_offset + 30 + name_len + extra_len

    def _read_bytes(self, info: zipfile.ZipInfo, start: int, size: int) -> np.ndarray:
        out = np.empty(size, dtype=np.uint8)
        offset = self._data_offset(info)
        if offset is None:  # compressed (torch never writes these): read through zipfile
            with self._zip.open(info) as f:
                f.seek(start)
                out[:] = np.frombuffer(f.read(size), dtype=np.uint8)
            return out
        view, done = memoryview(out), 0
        while done < size:  # pread returns at most ~2 GB per call
            n = os.preadv(self._file.fileno(), [view[done:]], offset + start + done)
            if n <= 0:
                raise CheckpointFormatError(f"{self.path}: {info.filename} ends early")
            done += n
        return out

    def _read(self, ref: TensorRef) -> np.ndarray:
        if self._file.closed:
            raise ValueError(f"{self.path}: the checkpoint is closed")
        storage = ref.storage
        dtype = np.dtype(storage.np_dtype)
        if self._big_endian and dtype.itemsize > 1:
            dtype = dtype.newbyteorder(">")
        info = self._records[f"{self._prefix}data/{storage.key}"]
        if ref.numel == 0:
            return np.zeros(ref.shape, dtype=dtype.newbyteorder("="))
        span = 1 + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))  # elements from the first to the last
        raw = self._read_bytes(info, ref.offset * dtype.itemsize, span * dtype.itemsize).view(dtype)
        if _is_contiguous(ref.shape, ref.stride):
            array = raw.reshape(ref.shape)
        else:  # a view (a transpose, a slice, an expanded buffer): gather it into its own array
            strides = [s * dtype.itemsize for s in ref.stride]
            array = np.ascontiguousarray(np.lib.stride_tricks.as_strided(raw, ref.shape, strides, writeable=False))
        return array.astype(dtype.newbyteorder("="), copy=False) if self._big_endian else array

    # -- the tensors of a state dict

    def state_dict(self, entry: str | None = None) -> dict[str, TensorRef]:
        """The ``{name: TensorRef}`` mapping at the top of the file, or under ``root[entry]``
        (LAVIS checkpoints are ``{"model": state_dict, "optimizer": ..., "epoch": ...}``)."""
        obj = self.root
        if entry is not None:
            if not isinstance(obj, dict) or entry not in obj:
                keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
                raise CheckpointFormatError(f"{self.path}: has no entry {entry!r} (it holds {keys})")
            obj = obj[entry]
        where = f"{self.path}" + (f"[{entry!r}]" if entry is not None else "")
        if not isinstance(obj, dict):
            raise CheckpointFormatError(f"{where}: holds a {type(obj).__name__}, not a state dict")
        others = [f"{k!s} ({type(v).__name__})" for k, v in obj.items() if not isinstance(k, str) or
                  not isinstance(v, TensorRef)]
        if others:
            hint = " (choose the state dict with entry='model')" if "model" in obj else ""
            raise CheckpointFormatError(f"{where}: not a state dict of tensors: {', '.join(others[:8])}{hint}")
        return dict(obj)

    def close(self) -> None:
        if hasattr(self, "_zip"):
            self._zip.close()
        if hasattr(self, "_file"):
            self._file.close()

    def __enter__(self) -> "TorchZip":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_torch_zip(path: str | os.PathLike) -> TorchZip:
    """A :class:`TorchZip` over ``path`` (the streaming form: list first, read tensor by tensor)."""
    return TorchZip(path)


def load_torch_zip(path: str | os.PathLike, entry: str | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a torch zip state dict as numpy arrays (``entry``: see :meth:`TorchZip.state_dict`)."""
    with TorchZip(path) as archive:
        return {name: ref.read() for name, ref in archive.state_dict(entry).items()}


def iter_torch_zip(path: str | os.PathLike, entry: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, array)`` one tensor at a time, never more than one in memory on our side."""
    with TorchZip(path) as archive:
        for name, ref in archive.state_dict(entry).items():
            yield name, ref.read()


# ---------------------------------------------------------------------------- paddle.save pickles


def load_paddle_pickle(path: str | os.PathLike) -> Any:
    """What ``paddle.save`` wrote to ``path``, with tensors as numpy arrays.

    Paddle 3.x pickles (protocol 4) a tensor as ``builtins.tuple((name, ndarray))`` and an array
    through ``numpy.core.multiarray._reconstruct`` / ``numpy.ndarray`` / ``numpy.dtype`` (and numpy
    scalars through ``numpy.core.multiarray.scalar``); exactly those are allowed. A ``(name, array)``
    pair comes back as the array, as ``paddle.load`` gives the tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        raise CheckpointFormatError(f"{path}: a zip file (torch.save?), not a paddle.save pickle")
    with open(path, "rb") as f:
        obj = _unpickle(f, str(path), _BASE_ALLOWED)
    return _map_containers(obj, _paddle_tensor, {})


def _paddle_tensor(obj: Any) -> Any:
    """A ``(name, array)`` pair, Paddle's pickled tensor, as its array."""
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return obj[1]
    return obj
