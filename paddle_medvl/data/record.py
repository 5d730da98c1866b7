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


def image_for_id(folder: Path, image_id: str, suffix: str, where: str, problems: Problems) -> Path | None:
    """The image an ID names, or None once the problem is reported.

    An ID is a plain file name, so it cannot lead out of ``folder``; its image must exist.
    """
    if not image_id or image_id in (".", "..") or Path(image_id).name != image_id or "\\" in image_id:
        problems("path outside the data root", f"{where}: the ID is not a plain file name and would leave the data root")
        return None
    path = folder / f"{image_id}{suffix}"
    if not path.is_file():
        problems("missing image", f"{where}: no image for this ID (expected {path})")
        return None
    return path


def read_json(path: Path):
    """A JSON file's content; a syntax error names the file, line and column."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None


def read_rows(
    path: Path, delimiter: str, problems: Problems, header: list[str] | None = None, width: int | None = None
) -> list[tuple[int, list[str]]]:
    """Rows of a delimited text file with their 1-based line numbers, cells stripped.

    ``header`` is checked against the first line when given (otherwise the file has none) and
    sets the expected width. A row with the wrong number of fields is a problem naming the file
    and line. Tab-separated files are read without quoting (ImageCLEF captions contain bare
    quotes); comma-separated ones with CSV quoting (ROCOv2 captions contain commas).
    """
    import csv
    import io

    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    rows: list[tuple[int, list[str]]] = []
    width = len(header) if header else width
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            cells = [cell.strip() for cell in row]
            if header is not None and not rows and line == 1:
                if cells != header:
                    raise DataError(f"{path}:1: expected the header {delimiter.join(header)!r}, found {delimiter.join(cells)!r}")
                continue
            if width is not None and len(cells) != width:
                problems("malformed row", f"{path}:{line}: expected {width} fields, found {len(cells)}")
                continue
            rows.append((line, cells))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None
    return rows
