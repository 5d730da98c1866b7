"""Prediction files in the tasks' official submission formats: writers and readers.

Every writer is atomic: it writes a temporary sibling and renames it over the target only when
the whole file is written, so a failure (a bad ID, a full disk, Ctrl-C) leaves the previous file
as it was. Every reader checks what the organizers' checkers check (one entry per ID, the fields
they need) and names the file and line or ID of anything wrong.

Formats (``FORMATS``):

``imageclef``
    ImageCLEFmedical Caption 2023 caption-prediction run file: one ``<image ID>|<caption>`` line
    per image, no header, no quoting. Sources: the organizers' AIcrowd evaluators, as copied into
    participants' repositories. The 2022 caption evaluator (``# IMAGECLEF 2022 CAPTION - CAPTION
    PREDICTION``, class ``AIcrowdEvaluator``; its concept-detection sibling, same convention, is in
    github.com/karthik-d/ImageCLEFmedical-captioning-2023 evaluators/evaluator.py) reads runs
    with ``csv.reader(f, delimiter='|', quoting=csv.QUOTE_NONE)`` and refuses a line without the
    ``|`` ("Each line must consist of an image ID followed by a '|' (vertical line) and a
    caption"), an unknown or repeated image ID, and a file that misses test images. The 2023
    evaluator (``# IMAGECLEF 2023 CAPTION - CAPTION PREDICTION``, ``CaptionEvaluator``, BERTScore
    primary / ROUGE-1 secondary; as shipped in github.com/TiagoFilipeSousaGoncalves/
    ImageCLEFmedical2023VCMI caption_prediction/evaluator.py) keeps the same checks and also
    accepts a tab as separator (chosen by whether the first line contains ``|``) and skips a
    header row whose first cell contains "ID" -- so it reads both its tab-separated ground truth
    (``ID<TAB>caption``) and ``|`` run files. We could not see the 2023 task page itself; the
    ``|`` file without header is what both evaluators read. (The 2024/2025 evaluators read
    comma-separated ``ID,caption`` CSV instead; not this format.) With ``QUOTE_NONE`` a ``|`` or a
    line break inside a caption would cut it, so the writer replaces them by a space (and counts
    them); an image ID containing "ID" is refused, as the 2023 evaluator would skip its row.
    The reader also reads the 2023 ground-truth layout (tab-separated with an ``ID<TAB>caption``
    header), so a labels file can serve as references.

``medvqa``
    ImageCLEFmed MEDVQA-GI 2023 task 1 submission (github.com/simula/ImageCLEFmed-MEDVQA-GI-2023,
    README "Submission Instructions" and ``verify_task_1_submission.py``): a JSON object
    ``{image_id: [{"QuestionID", "Question", "Answer"}, ...]}``, one entry per test image with
    the 18 required questions. ``QuestionID`` is not a position in the image's label list but the
    task's fixed question number (``MEDVQA_QUESTIONS``: 0 "What type of procedure is the image
    taken from?" ... 17 "What type of polyp is present?"; 18 and 19 are the segmentation
    questions of task 3), an integer, checked by the verifier against that table. The format of
    ``Answer`` is not specified (the repository's sample_submission.json was not readable in our
    snapshot); we write a list of strings, as ``gt.json`` holds its answers, and read a string or
    a list.

``json``
    Reports (or captions): ``[{"id", "report", "reference"?}, ...]``; ``reference`` is the
    ground truth when the predictions were made on a labelled split (informational).

``csv``
    Reports (or captions): comma-separated with the header ``id,report`` and CSV quoting
    (reports contain commas and may contain line breaks).
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, TextIO

from ..atomic import atomic_write, write_json
from ..data.medvqa import ANSWER_SEPARATOR
from ..errors import MedVLError

FORMATS = ("imageclef", "medvqa", "json", "csv")
# Which formats can hold which task's predictions.
TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "caption": ("imageclef", "json", "csv"),
    "vqa": ("medvqa",),
    "report": ("json", "csv"),
}
# The task each format holds when nothing else says (tools/eval.py without Eval.task or Data.format).
FORMAT_DEFAULT_TASK = {"imageclef": "caption", "medvqa": "vqa", "json": "report", "csv": "report"}

# MEDVQA-GI 2023's fixed question numbers, typos included ("artefact", "instrumnets"), from the
# organizers' verify_task_1_submission.py / verify_task_3_submission.py. 0-17 are required in a
# task 1 (VQA) submission; 18 and 19 are task 3's segmentation questions.
MEDVQA_QUESTIONS: tuple[str, ...] = (
    "What type of procedure is the image taken from?",
    "Have all polyps been removed?",
    "Is this finding easy to detect?",
    "Is there a green/black box artefact?",
    "Is there text?",
    "What color is the abnormality?",
    "What color is the anatomical landmark?",
    "How many findings are present?",
    "How many polyps are in the image?",
    "How many instrumnets are in the image?",
    "Where in the image is the abnormality?",
    "Where in the image is the instrument?",
    "Are there any abnormalities in the image?",
    "Are there any anatomical landmarks in the image?",
    "Are there any instruments in the image?",
    "Where in the image is the anatomical landmark?",
    "What is the size of the polyp?",
    "What type of polyp is present?",
    "Where exactly in the image is the polyp located?",
    "Where exactly in the image is the instrument located?",
)
MEDVQA_REQUIRED = range(18)  # the text questions a task 1 submission answers for every image
MEDVQA_QUESTION_IDS = {q: i for i, q in enumerate(MEDVQA_QUESTIONS)}

REPORT_HEADER = ["id", "report"]


class FormatError(MedVLError, ValueError):
    """A prediction file (or data for one) that breaks its format; the message names file and line or ID."""


@dataclass(frozen=True)
class Prediction:
    """One generated text, with what the formats need to file it."""

    id: str  # the record's key: its ID, or for VQA ``vqa_key(image_id, question_id)``
    text: str  # the generated text (VQA: answers joined by "; ")
    reference: str | None = None  # the ground truth, when known (written by the json format)
    image_id: str = ""  # VQA: the image
    question_id: int | None = None  # VQA: the task's question number
    question: str = ""  # VQA: the question text


@dataclass
class PredictionFile:
    """What a reader found: texts by key (VQA: answer lists) and, for VQA, the questions."""

    format: str
    texts: dict[str, str | list[str]]
    questions: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- shared


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot read: {e}") from None


def _read_json(path: Path):
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None


def _check_id(path: Path, key: object, what: str = "ID") -> str:
    if not isinstance(key, str) or not key or key != key.strip() or any(c in key for c in "\r\n"):
        raise FormatError(f"{path}: {what} {key!r} must be a non-empty string without surrounding spaces or line breaks")
    return key


def vqa_key(image_id: str, question_id: int) -> str:
    """The key of one (image, question) pair: ``<image ID>#<QuestionID>``."""
    return f"{image_id}#{question_id}"


def medvqa_question_id(question: str, fallback: int) -> int:
    """The task's number for an official question; ``fallback`` (the label's index) for any other."""
    return MEDVQA_QUESTION_IDS.get(question, fallback)


def split_answers(text: str) -> list[str]:
    """A generated answer text -> its answers ("a; b" -> ["a", "b"]; empty parts dropped)."""
    return [a.strip() for a in text.split(ANSWER_SEPARATOR.strip()) if a.strip()]


# ---------------------------------------------------------------------------- ImageCLEF caption run


def write_imageclef(path: str | os.PathLike, captions: Iterable[tuple[str, str]]) -> int:
    """``<image ID>|<caption>`` lines; returns how many captions had a ``|`` or line break replaced."""
    path = Path(path)
    replaced = 0

    def write(f: TextIO) -> None:
        nonlocal replaced
        seen: set[str] = set()
        for image_id, caption in captions:
            _check_id(path, image_id, "image ID")
            if "|" in image_id:
                raise FormatError(f"{path}: image ID {image_id!r} contains '|', the run file's separator")
            if "ID" in image_id:
                raise FormatError(f"{path}: image ID {image_id!r} contains 'ID': the 2023 evaluator skips such a "
                                  "row as a header; use the json or csv format for such IDs")
            if image_id in seen:
                raise FormatError(f"{path}: image ID {image_id!r} given twice (the evaluator refuses repeated IDs)")
            seen.add(image_id)
            clean = " ".join(caption.replace("|", " ").splitlines())  # no separator, no line break
            replaced += clean != caption
            f.write(f"{image_id}|{clean}\n")

    atomic_write(path, write)
    return replaced


def read_imageclef(path: str | os.PathLike) -> dict[str, str]:
    """A caption run file (``ID|caption``) or the 2023 ground truth (``ID<TAB>caption`` with header)."""
    path = Path(path)
    text = _read_text(path)
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise FormatError(f"{path}: empty file (expected one '<image ID>|<caption>' line per image)")
    delimiter = "|" if "|" in first else "\t" if "\t" in first else None
    if delimiter is None:
        raise FormatError(f"{path}:1: expected '<image ID>|<caption>' (or the tab-separated ground truth), found {first[:80]!r}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=csv.QUOTE_NONE)
    out: dict[str, str] = {}
    lines: dict[str, int] = {}
    sep = "|" if delimiter == "|" else "<TAB>"
    first_row = True
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if first_row and row[0].strip() == "ID":  # the ground truth's header
            first_row = False
            continue
        first_row = False
        if len(row) != 2:
            raise FormatError(f"{path}:{line}: expected <image ID>{sep}<caption>, found {len(row)} field(s)")
        image_id, caption = row[0].strip(), row[1].strip()
        if not image_id:
            raise FormatError(f"{path}:{line}: empty image ID")
        if image_id in out:
            raise FormatError(f"{path}:{line}: image ID {image_id!r} repeated (first on line {lines[image_id]})")
        out[image_id], lines[image_id] = caption, line
    if not out:
        raise FormatError(f"{path}: no captions")
    return out


# ---------------------------------------------------------------------------- MEDVQA-GI submission


def write_medvqa(path: str | os.PathLike, answers: Iterable[Prediction]) -> None:
    """``{image_id: [{"QuestionID", "Question", "Answer": [...]}, ...]}``, questions in QuestionID order."""
    path = Path(path)
    by_image: dict[str, dict[int, dict]] = {}
    for p in answers:
        _check_id(path, p.image_id, "image ID")
        if not isinstance(p.question_id, int) or isinstance(p.question_id, bool) or p.question_id < 0:
            raise FormatError(f"{path}: image {p.image_id!r}: QuestionID {p.question_id!r} is not a question number")
        entries = by_image.setdefault(p.image_id, {})
        if p.question_id in entries:
            raise FormatError(f"{path}: image {p.image_id!r}: QuestionID {p.question_id} answered twice")
        entries[p.question_id] = {"QuestionID": p.question_id, "Question": p.question, "Answer": split_answers(p.text)}
    data = {image: [entries[q] for q in sorted(entries)] for image, entries in by_image.items()}
    write_json(path, data)


def read_medvqa(path: str | os.PathLike) -> PredictionFile:
    """Answers (lists) and questions keyed by ``vqa_key(image, QuestionID)``."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object {{image_id: [answers]}}, found {type(data).__name__}")
    texts: dict[str, str | list[str]] = {}
    questions: dict[str, str] = {}
    for image_id, entries in data.items():
        where = f"{path}: image {image_id!r}"
        _check_id(path, image_id, "image ID")
        if not isinstance(entries, list):
            raise FormatError(f"{where}: expected a list of {{QuestionID, Question, Answer}}")
        for k, entry in enumerate(entries):
            if not isinstance(entry, dict) or not {"QuestionID", "Question", "Answer"} <= set(entry):
                raise FormatError(f"{where}, entry {k}: each answer must have 'QuestionID', 'Question' and 'Answer'")
            qid, question, answer = entry["QuestionID"], entry["Question"], entry["Answer"]
            if not isinstance(qid, int) or isinstance(qid, bool):
                raise FormatError(f"{where}, entry {k}: QuestionID must be an integer, found {qid!r}")
            if not isinstance(question, str):
                raise FormatError(f"{where}, entry {k}: Question must be a string")
            if isinstance(answer, str):
                answer = split_answers(answer)
            elif not isinstance(answer, list) or not all(isinstance(a, (str, int)) for a in answer):
                raise FormatError(f"{where}, entry {k}: Answer must be a string or a list of strings")
            key = vqa_key(image_id, qid)
            if key in texts:
                raise FormatError(f"{where}: QuestionID {qid} answered twice")
            texts[key] = [str(a).strip() for a in answer if str(a).strip()]
            questions[key] = question
    if not texts:
        raise FormatError(f"{path}: no answers")
    return PredictionFile("medvqa", texts, questions)


# ---------------------------------------------------------------------------- reports


def write_reports_json(path: str | os.PathLike, reports: Sequence[Prediction]) -> None:
    """``[{"id", "report", "reference"?}, ...]``."""
    path = Path(path)
    seen: set[str] = set()
    rows = []
    for p in reports:
        _check_id(path, p.id)
        if p.id in seen:
            raise FormatError(f"{path}: ID {p.id!r} given twice")
        seen.add(p.id)
        row = {"id": p.id, "report": p.text}
        if p.reference is not None:
            row["reference"] = p.reference
        rows.append(row)
    write_json(path, rows)


def read_reports_json(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise FormatError(f"{path}: expected a JSON list of {{\"id\", \"report\"}}, found {type(data).__name__}")
    out: dict[str, str] = {}
    for k, row in enumerate(data):
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("report"), str):
            raise FormatError(f"{path}: entry {k}: expected {{\"id\": str, \"report\": str}}")
        key = _check_id(path, row["id"])
        if key in out:
            raise FormatError(f"{path}: entry {k}: ID {key!r} repeated")
        out[key] = row["report"]
    if not out:
        raise FormatError(f"{path}: no reports")
    return out


def write_reports_csv(path: str | os.PathLike, reports: Sequence[Prediction]) -> None:
    """``id,report`` header, then one CSV row per ID (quoted where needed)."""
    path = Path(path)

    def write(f: TextIO) -> None:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(REPORT_HEADER)
        seen: set[str] = set()
        for p in reports:
            _check_id(path, p.id)
            if p.id in seen:
                raise FormatError(f"{path}: ID {p.id!r} given twice")
            seen.add(p.id)
            writer.writerow([p.id, p.text])

    atomic_write(path, write)


def read_reports_csv(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True)
    out: dict[str, str] = {}
    lines: dict[str, int] = {}
    header = None
    try:
        for row in reader:
            line = reader.line_num
            if header is None:
                header = [c.strip() for c in row]
                if header != REPORT_HEADER:
                    raise FormatError(f"{path}:1: expected the header {','.join(REPORT_HEADER)!r}, found {','.join(row)!r}")
                continue
            if not row:
                continue
            if len(row) != 2:
                raise FormatError(f"{path}:{line}: expected 2 fields (id,report), found {len(row)}")
            key = row[0].strip()
            if not key:
                raise FormatError(f"{path}:{line}: empty ID")
            if key in out:
                raise FormatError(f"{path}:{line}: ID {key!r} repeated (first on line {lines[key]})")
            out[key], lines[key] = row[1], line
    except csv.Error as e:
        raise FormatError(f"{path}:{reader.line_num}: {e}") from None
    if not out:
        raise FormatError(f"{path}: no reports")
    return out


# ---------------------------------------------------------------------------- any format


def default_format(task: str, path: str | os.PathLike) -> str:
    """The official format of a task's predictions (reports: ``csv`` for a ``.csv`` path, else ``json``)."""
    if task == "caption":
        return "imageclef"
    if task == "vqa":
        return "medvqa"
    if task == "report":
        return "csv" if Path(path).suffix.lower() == ".csv" else "json"
    raise FormatError(f"unknown task {task!r} (caption, vqa or report)")


def detect_format(path: str | os.PathLike) -> str:
    """A prediction file's format, from its content (the extension decides nothing: ImageCLEF run
    files are often named ``.csv`` or ``.txt``)."""
    path = Path(path)
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return "medvqa"
    if stripped.startswith("["):
        return "json"
    first = next((line for line in text.splitlines() if line.strip()), "")
    if [c.strip() for c in first.split(",")] == REPORT_HEADER:
        return "csv"
    if "|" in first or "\t" in first:
        return "imageclef"
    raise FormatError(
        f"{path}: cannot tell the format from its first line {first[:80]!r}; give it "
        f"(--format {'|'.join(FORMATS)})"
    )


def check_format(fmt: str, task: str, path: str | os.PathLike = "") -> str:
    """``fmt`` when it can hold ``task``'s predictions, else an error naming the ones that can."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    allowed = TASK_FORMATS.get(task)
    if allowed is None:
        raise FormatError(f"unknown task {task!r} (caption, vqa or report)")
    if fmt not in allowed:
        raise FormatError(f"{path or 'predictions'}: format {fmt!r} cannot hold {task} predictions; use {' or '.join(allowed)}")
    return fmt


def write_predictions(path: str | os.PathLike, fmt: str, predictions: Sequence[Prediction]) -> int:
    """Write ``predictions`` in ``fmt``; returns how many texts had to be altered to fit the format."""
    if fmt == "imageclef":
        return write_imageclef(path, ((p.id, p.text) for p in predictions))
    if fmt == "medvqa":
        write_medvqa(path, predictions)
    elif fmt == "json":
        write_reports_json(path, predictions)
    elif fmt == "csv":
        write_reports_csv(path, predictions)
    else:
        raise FormatError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    return 0


def read_predictions(path: str | os.PathLike, fmt: str = "auto") -> PredictionFile:
    """Any of ``FORMATS`` (``auto``: from the content)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "imageclef":
        return PredictionFile(fmt, dict(read_imageclef(path)))
    if fmt == "medvqa":
        return read_medvqa(path)
    if fmt == "json":
        return PredictionFile(fmt, dict(read_reports_json(path)))
    if fmt == "csv":
        return PredictionFile(fmt, dict(read_reports_csv(path)))
    raise FormatError(f"unknown format {fmt!r}; choose from auto, {', '.join(FORMATS)}")
