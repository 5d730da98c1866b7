"""Checkpoint folders that are either complete or absent.

A checkpoint is written into ``.tmp-checkpoint-<step>/`` and renamed to ``checkpoint-<step>/``
only once every file in it is on disk (fsync'd), so a kill at any moment leaves the previous
checkpoints intact and no half-written folder under a checkpoint name. ``trainer_state.json`` is
written last; a folder without it is not a checkpoint.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable

from ..atomic import replace_folder

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.json"  # paddlenlp's TRAINER_STATE_NAME
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = checkpoints(output_dir)
    return found[-1] if found else None


def remove_partial(output_dir: str | Path) -> list[Path]:
    """Delete what an interrupted save left (``.tmp-*`` folders); returns them."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    partial = [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir()]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary(final: str | Path) -> Path:
    """Where ``write_folder`` fills ``final`` before renaming it."""
    final = Path(final)
    return final.with_name(TMP_PREFIX + final.name)


def write_folder(final: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary sibling folder, then rename it to ``final``.

    A folder already at ``final`` (a save repeated at the same step) is swapped out, not merged.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write(tmp)
    _fsync_tree(tmp)
    replace_folder(tmp, final, final.with_name(TMP_PREFIX + "old-" + final.name))
    _fsync_dir(final.parent)
    return final


def rotate(output_dir: str | Path, keep_last: int, keep: Path | str | None = None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints and ``keep`` (the best); returns the deleted.
    ``keep_last <= 0`` keeps everything."""
    found = checkpoints(output_dir)
    if keep_last <= 0:
        return []
    protected = {p.resolve() for p in found[-keep_last:]}
    if keep:
        protected.add(Path(keep).resolve())
    deleted = [p for p in found if p.resolve() not in protected]
    for path in deleted:
        shutil.rmtree(path, ignore_errors=True)
    return deleted
