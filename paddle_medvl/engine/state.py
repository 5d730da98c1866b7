"""Training states on disk in formats that cannot run code: tensors as safetensors, the rest as JSON.

paddlenlp writes the optimizer, scheduler, loss-scaler and RNG states with ``paddle.save`` (pickle),
and reads them back with ``paddle.load``: a checkpoint someone hands you would run its payload on
resume. Here a state ``NAME`` is ``NAME.json`` (its structure: dicts, lists, tuples, numbers, strings,
with each array replaced by a reference) and, when it holds arrays, ``NAME.safetensors`` (the arrays,
keyed by their path in the structure). Non-finite floats are written as tagged strings: the JSON
stays strict.

A checkpoint written before this format (``optimizer.pdopt``, ``scheduler.pdparams``,
``rng_state.pth``) is read through the allow-list unpickler of ``convert/safe_pickle.py``, which
refuses any class that is not a plain container, number or array, naming it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedVLError

_ARRAY, _TUPLE, _FLOAT = "__array__", "__tuple__", "__float__"


class StateError(MedVLError, ValueError):
    """A training-state file that is missing, malformed or unsafe; the message names the file."""


def _encode(obj: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    import paddle

    if isinstance(obj, paddle.Tensor):
        obj = obj.numpy()
    if isinstance(obj, np.ndarray):
        arrays[path] = np.ascontiguousarray(obj)
        return {_ARRAY: path}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {_FLOAT: repr(obj)}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise StateError(f"{path or '<root>'}: only string keys can be saved, got {list(obj)[:3]}")
        return {k: _encode(v, f"{path}/{k}" if path else k, arrays) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(obj)]
    raise StateError(f"{path or '<root>'}: cannot save a {type(obj).__name__} in a training state")


def _decode(obj: Any, arrays: dict[str, np.ndarray], where: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {_ARRAY}:
        if obj[_ARRAY] not in arrays:
            raise StateError(f"{where}: names the array {obj[_ARRAY]!r}, which its .safetensors file lacks")
        return arrays[obj[_ARRAY]]
    if set(obj) == {_TUPLE}:
        return tuple(_decode(v, arrays, where) for v in obj[_TUPLE])
    if set(obj) == {_FLOAT}:
        return float(obj[_FLOAT])
    return {k: _decode(v, arrays, where) for k, v in obj.items()}


def save_state(folder: str | Path, name: str, state: Any) -> list[Path]:
    """Write ``state`` as ``folder/name.json`` (+ ``name.safetensors`` for its arrays); returns the files."""
    from safetensors.numpy import save_file

    from ..atomic import write_json

    folder = Path(folder)
    arrays: dict[str, np.ndarray] = {}
    structure = _encode(state, "", arrays)
    files = [write_json(folder / f"{name}.json", structure, indent=None)]
    if arrays:
        save_file(arrays, str(folder / f"{name}.safetensors"))
        files.append(folder / f"{name}.safetensors")
    return files


def has_state(folder: str | Path, name: str, legacy: str = "") -> bool:
    folder = Path(folder)
    return (folder / f"{name}.json").is_file() or bool(legacy and (folder / legacy).is_file())


def load_state(folder: str | Path, name: str, legacy: str = "") -> Any:
    """The state ``save_state`` wrote; arrays come back as numpy arrays.

    ``legacy``: the pickle file a checkpoint of an earlier version holds instead (read without
    executing anything, see the module docstring)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    path = folder / f"{name}.json"
    if not path.is_file():
        if legacy and (folder / legacy).is_file():
            return _load_legacy(folder / legacy)
        raise StateError(f"{path}: missing (the checkpoint is incomplete)")
    try:
        structure = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateError(f"{path}: cannot read: {e}") from None
    tensors = folder / f"{name}.safetensors"
    arrays = load_file(str(tensors)) if tensors.is_file() else {}
    return _decode(structure, arrays, path)


def _load_legacy(path: Path) -> Any:
    from ..convert.safe_pickle import CheckpointFormatError, load_paddle_pickle

    try:
        return load_paddle_pickle(path)
    except CheckpointFormatError as e:  # an unsafe class (named) or a file that is not a Paddle pickle
        raise StateError(str(e)) from None


# ------------------------------------------------------------------ RNG states as plain data


def rng_to_data(rng: dict) -> dict:
    """The RNG states (Python, NumPy, Paddle's generators) as containers, numbers and arrays.

    Paddle's ``GeneratorState`` is a C++ object; its pickle state is a tuple of ints and a list."""
    return {key: _generator_data(value) for key, value in rng.items()}


def _generator_data(value: Any) -> Any:
    if isinstance(value, list):
        return [_generator_data(v) for v in value]
    if hasattr(value, "current_seed") and hasattr(value, "__getstate__"):
        return {"generator_state": list(value.__getstate__())}
    return value


def rng_from_data(data: dict) -> dict:
    """Inverse of :func:`rng_to_data`: Paddle's generator states as ``GeneratorState`` objects again."""
    return {key: _generator_object(value) for key, value in data.items()}


def _generator_object(value: Any) -> Any:
    import paddle

    if isinstance(value, list):
        return [_generator_object(v) for v in value]
    if isinstance(value, dict) and set(value) == {"generator_state"}:
        cls = type(paddle.framework.core.default_cpu_generator().get_state())
        state = cls.__new__(cls)
        state.__setstate__(tuple(value["generator_state"]))
        return state
    return value
