"""Atomic writes: a file appears complete under its name, or not at all.

An interrupted run (a crash, SIGKILL, a full disk) must never leave a half-written checkpoint,
prediction or metrics file where a complete one is expected, nor destroy the previous one.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TextIO


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed onto ``path`` only if the block succeeds.

    If the block raises, the target keeps its previous content and the temporary file is removed
    (after a crash it stays behind under a hidden ``.name.PID.tmp`` name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the data is on disk before the name points at it
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[TextIO], None]) -> Path:
    """Write a UTF-8 text file through ``write(f)``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        write(f)
    return Path(path)


def strict(obj):
    """``obj`` with every non-finite float replaced by None (JSON has no NaN or Infinity) and NumPy
    scalars as Python numbers."""
    import math

    import numpy as np

    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> Path:
    """Strict JSON (non-finite floats become null; ``default=str`` for paths and the like), atomically."""
    import json

    text = json.dumps(strict(obj), indent=indent, ensure_ascii=False, allow_nan=False, default=str)
    return atomic_write(path, lambda f: f.write(text + "\n"))


def replace_folder(filled: Path, final: Path, old: Path) -> Path:
    """Put the complete folder ``filled`` at ``final``; a folder already there is swapped out (moved
    to ``old``, then deleted), never merged with the new one."""
    import shutil

    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(filled, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(filled, final)
    return final
