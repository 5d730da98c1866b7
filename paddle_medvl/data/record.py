"""What every data-set reader yields, and how readers treat bad input.

A reader turns the official files of a data set into :class:`Record` objects. Bad input is
reported through :class:`Problems`: with ``on_error: raise`` (the default) the first problem is a
:class:`DataError` naming the file and the line or ID; with ``on_error: skip`` the record is
dropped, counted by kind, and summarised once loading ends. A record that is well formed but has
nothing to learn from (a caption of only spaces, as the official 2023 validation file has one) is
not bad input: it is left out in either mode, counted, and summarised as a warning
(:meth:`Problems.leave_out`).

Every image a reader hands on lies inside the data root once symlinks are resolved
(:func:`resolve_image`, shared by :func:`image_for_id` and :func:`resolve_under`).
"""
from __future__ import annotations

import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MedVLError


class DataError(MedVLError, ValueError):
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
        self.left_out: Counter[str] = Counter()
        self.left_out_examples: dict[str, str] = {}

    def __call__(self, kind: str, message: str) -> None:
        """Report one problem; ``message`` names the file and the line or ID. Returns if skipping."""
        if self.on_error == "raise":
            raise DataError(message)
        self.counts[kind] += 1
        self.examples.setdefault(kind, message)

    def leave_out(self, kind: str, message: str) -> None:
        """Count a record left out in either mode: well formed, but without text to learn from.

        Official releases hold a few (a caption of one U+202F); failing on them would stop the
        default configuration on the files as released, and they carry nothing to train on.
        """
        self.left_out[kind] += 1
        self.left_out_examples.setdefault(kind, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def left_out_total(self) -> int:
        return sum(self.left_out.values())

    def summary(self) -> str:
        """One line per kind of problem, with its count and first example."""
        return _summary(self.counts, self.examples) or "no problems"

    def left_out_summary(self) -> str:
        """The same for the records left out by :meth:`leave_out`."""
        return _summary(self.left_out, self.left_out_examples) or "none left out"


def _summary(counts: Counter[str], examples: dict[str, str]) -> str:
    return "; ".join(f"{n} x {kind} (first: {examples[kind]})" for kind, n in counts.most_common())


def visible(text: str) -> str:
    """``text`` without the whitespace and invisible format characters around it.

    ``str.strip`` already removes Unicode spaces (U+00A0, U+202F); zero-width characters such as
    U+200B or U+FEFF are format characters (category Cf) that it keeps, yet they show nothing.
    """
    start, end = 0, len(text)
    while start < end and _invisible(text[start]):
        start += 1
    while end > start and _invisible(text[end - 1]):
        end -= 1
    return text[start:end]


def _invisible(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) == "Cf"


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def resolve_image(path: Path, root: Path, folder: Path, where: str) -> Path:
    """``path`` with every symlink resolved, when that still lies inside the data root.

    Why: a data set is often unpacked from an archive, and a link in it (``x.jpg -> /etc/...``)
    must not make the loader read, and a model learn or print, a file from elsewhere. The
    image folder (``Data.image_dir``) counts as inside even when it is itself a link to another
    disk: the user chose it, not the data files. Links between files of the root are fine.
    """
    real = path.resolve()
    bounds = [Path(root).resolve(), Path(folder).resolve()]
    if not any(_within(real, bound) for bound in bounds):
        raise DataError(f"{where}: {path} leads through a symlink to {real}, outside the data root {root}")
    return real


def resolve_under(folder: str | Path, relative: str, where: str, root: str | Path | None = None) -> Path:
    """``folder / relative``, symlinks resolved, for a path written in a data file.

    The path must be relative and stay in ``folder`` as written (no ``..`` out of it), and what it
    leads to must lie inside the data root ``root`` (default ``folder``; see :func:`resolve_image`).
    """
    if not relative or os.path.isabs(relative) or relative.startswith(("/", "\\")) or ":" in Path(relative).parts[0]:
        raise DataError(f"{where}: image path {relative!r} must be relative to the data root {folder}")
    normal = os.path.normpath(relative)
    if normal == ".." or normal.startswith(".." + os.sep):
        raise DataError(f"{where}: image path {relative!r} escapes the data root {folder}")
    return resolve_image(Path(folder) / normal, Path(root if root is not None else folder), Path(folder), where)


def image_for_id(
    root: Path, folder: Path, image_id: str, suffix: str, where: str, problems: Problems
) -> Path | None:
    """The image an ID names in ``folder`` (symlinks resolved), or None once the problem is reported.

    An ID is a plain file name, so it cannot lead out of ``folder`` as written; a symlink may,
    and must still end inside the data root ``root``. The image must exist.
    """
    if not image_id or image_id in (".", "..") or Path(image_id).name != image_id or "\\" in image_id:
        problems("path outside the data root", f"{where}: the ID is not a plain file name and would leave the data root")
        return None
    path = folder / f"{image_id}{suffix}"
    try:
        real = resolve_image(path, root, folder, where)
    except DataError as e:
        problems("path outside the data root", str(e))
        return None
    if not real.is_file():
        problems("missing image", f"{where}: no image for this ID (expected {path})")
        return None
    return real


def read_json(path: Path):
    """A JSON file's content; a syntax error names the file, line and column."""
    import json

    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if not text.strip():
        raise DataError(f"{path}: empty file (no JSON content)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None


def read_rows(
    path: Path, delimiter: str, problems: Problems, header: list[str] | None = None, width: int | None = None
) -> list[tuple[int, list[str]]]:
    """Rows of a delimited text file with their 1-based line numbers, cells stripped (:func:`visible`).

    Line ends may be "\\n" or "\\r\\n" (the official 2023 validation captions have the latter). A
    file without any text is an error naming it, not a data set that merely has no usable records.
    ``header`` is checked against the first line when given (otherwise the file has none) and sets
    the expected width. A row with the wrong number of fields is a problem naming the file
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
    if not visible(text):
        raise DataError(f"{path}: empty file (no header, no rows)")
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    rows: list[tuple[int, list[str]]] = []
    width = len(header) if header else width
    try:
        for row in reader:
            line = reader.line_num
            cells = [visible(cell) for cell in row]
            if not any(cells):
                continue
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
