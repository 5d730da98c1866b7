"""What every data-set reader yields, and how readers treat bad input.

A reader turns the official files of a data set into :class:`Record` objects. Bad input is
reported through :class:`Problems`: with ``on_error: raise`` (the default) the first problem is a
:class:`DataError` naming the file and the line or ID; with ``on_error: skip`` the record is
dropped, counted by kind, and summarised once loading ends.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Bad input; the message starts with the file and the line or ID it is about."""


@dataclass
class Record:
    """One training or evaluation example."""

    id: str  # the data set's own ID (image ID, study ID, or "<image ID>#<question index>")
    images: list[str]  # absolute paths, all inside the data root; several views for one study
    prompt: str  # the text the model is conditioned on (may be "")
    target: str  # the text the model must produce
    extras: dict = field(default_factory=dict)  # format-specific: concepts, question, answer type, ...


class Problems:
    """Raise on the first problem, or count problems and skip their records."""

    def __init__(self, on_error: str = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise DataError(f"Data.on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def __call__(self, kind: str, message: str) -> None:
        """Report one problem; ``message`` names the file and the line or ID. Returns if skipping."""
        if self.on_error == "raise":
            raise DataError(message)
        self.counts[kind] += 1
        self.examples.setdefault(kind, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line per kind of problem, with its count and first example."""
        if not self.counts:
            return "no problems"
        return "; ".join(f"{n} x {kind} (first: {self.examples[kind]})" for kind, n in self.counts.most_common())


def resolve_under(root: str | Path, relative: str, where: str) -> Path:
    """``root / relative`` when it stays inside ``root``; a path from a data file never escapes it."""
    if not relative or os.path.isabs(relative) or relative.startswith(("/", "\\")) or ":" in Path(relative).parts[0]:
        raise DataError(f"{where}: image path {relative!r} must be relative to the data root {root}")
    root_path = Path(root).resolve()
    path = (root_path / relative).resolve()
    if root_path != path and root_path not in path.parents:
        raise DataError(f"{where}: image path {relative!r} escapes the data root {root}")
    return path
