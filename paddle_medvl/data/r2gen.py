"""Radiology reports in R2Gen's layout: IU X-RAY and MIMIC-CXR, with paper 002's prior information.

Layout under ``Data.root``::

    annotation.json      {"train"|"val"|"test": [{"id", "report", "image_path": [...], "split", ...}]}
    images/<image_path>  (IU: two views per study, "CXR2384_IM-0942/0.png" and ".../1.png";
                          MIMIC: "p10/p10000032/s50414267/<dicom id>.jpg")

Prior information (ClinicalBLIP), each record's ``extras["prior"]``:

* IU X-RAY, from ``Data.reports_csv`` (``indiana_reports.csv``, columns uid, MeSH, Problems, image,
  indication, ...; the study ID ``CXR<uid>_...`` names the row):
  "Problems: {problem} \\n Image: {image} \\n Indication: {indication} \\n"; its MeSH terms
  ("Pleural Effusion/left/small") are also each record's concepts (``concept_ids``), the classes of an
  optional concept head (``Model.concept_classes``: the number of distinct terms in the file)
* MIMIC-CXR, from ``Data.labels_csv`` (CheXbert labels by ``study_id``):
  "Symptoms of existence: {} \\n Symptoms of non-existence: {} \\n"
"""
from __future__ import annotations

import re
from pathlib import Path

from .record import DataError, Problems, Record, read_json, read_rows, resolve_under

CHEXBERT_LABELS = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices", "No Finding",
)
# How a labels file writes positive / negative; everything else (blank, uncertain) is neither.
LABEL_ENCODINGS = {
    "class_index": {"positive": {"1"}, "negative": {"2"}, "other": {"0", "3", ""}},  # 0 blank, 1 pos, 2 neg, 3 uncertain
    "chexbert_csv": {"positive": {"1"}, "negative": {"0"}, "other": {"-1", ""}},  # CheXbert's CSV output
}
IU_PRIOR = "Problems: {problem} \n Image: {image} \n Indication: {indication} \n"
MIMIC_PRIOR = "Symptoms of existence: {} \n Symptoms of non-existence: {} \n"

# R2Gen's sentence cleaner. Its character class holds the range ":-[", so it also removes < = > @
# (and capitals, which are lower-cased before). Kept as is: the papers' numbers were made with it.
_R2GEN_STRIP = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")


def _repeat(text: str, old: str, new: str, times: int) -> str:
    for _ in range(times):
        text = text.replace(old, new)
    return text


def clean_report(report: str, dataset: str) -> str:
    """R2Gen's report cleaning ("iu_xray" or "mimic_cxr"): lower case, list numbers and most
    punctuation removed, sentences joined by " . " and ended by " ."."""
    text = report
    if dataset == "mimic_cxr":
        text = _repeat(text.replace("\n", " "), "__", "_", 7)
        text = _repeat(text, "  ", " ", 6)
        text = _repeat(text, "..", ".", 8)
    else:
        text = _repeat(text, "..", ".", 3)
    text = text.replace("1. ", "")
    for n in "2345":
        text = text.replace(f". {n}. ", ". ")
    for n in "2345":
        text = text.replace(f" {n}. ", ". ")
    sentences = text.strip().lower().split(". ")

    def clean(sentence: str) -> str:
        for ch in ('"', "/", "\\", "'"):
            sentence = sentence.replace(ch, "")
        return _R2GEN_STRIP.sub("", sentence.strip().lower())

    # R2Gen keeps empty sentences (its filter compares a string with []); so do we, for equal numbers.
    return " . ".join(clean(s) for s in sentences) + " ."


def load_annotation(path: Path, split: str) -> list:
    data = read_json(path)
    if not isinstance(data, dict) or split not in data or not isinstance(data[split], list):
        found = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: no split {split!r} (found: {found}); set Data.train_split / Data.val_split")
    return data[split]


def iu_priors(path: Path, problems: Problems) -> tuple[dict[int, str], dict[int, list[str]]]:
    """uid -> the IU prior-information text, and uid -> the study's MeSH terms (when the file has the
    MeSH column; "normal" is no term), from indiana_reports.csv."""
    rows = read_rows(path, ",", problems)
    if not rows:
        raise DataError(f"{path}: empty reports file")
    header = [c.lower() for c in rows[0][1]]
    needed = ("uid", "problems", "image", "indication")
    if any(name not in header for name in needed):
        raise DataError(f"{path}:1: expected the columns {', '.join(needed)}; found {', '.join(rows[0][1])}")
    col = {name: header.index(name) for name in needed}
    mesh = header.index("mesh") if "mesh" in header else None
    priors: dict[int, str] = {}
    tags: dict[int, list[str]] = {}
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            problems("malformed row", f"{path}:{line}: expected {len(header)} fields, found {len(cells)}")
            continue
        try:
            uid = int(cells[col["uid"]])
        except ValueError:
            problems("malformed row", f"{path}:{line}: uid {cells[col['uid']]!r} is not a number")
            continue
        problem = ", ".join(p.strip() for p in cells[col["problems"]].split(";") if p.strip())
        priors[uid] = IU_PRIOR.format(problem=problem, image=cells[col["image"]], indication=cells[col["indication"]])
        if mesh is not None:
            tags[uid] = [t.strip() for t in cells[mesh].split(";") if t.strip() and t.strip().lower() != "normal"]
    return priors, tags


def mimic_priors(path: Path, encoding: str, problems: Problems) -> dict[str, str]:
    """study_id -> the MIMIC prior-information text, from a CheXbert labels CSV."""
    if encoding not in LABEL_ENCODINGS:
        raise DataError(f"Data.labels_encoding must be one of {', '.join(LABEL_ENCODINGS)}, got {encoding!r}")
    codes = LABEL_ENCODINGS[encoding]
    rows = read_rows(path, ",", problems)
    if not rows:
        raise DataError(f"{path}: empty labels file")
    header = rows[0][1]
    missing = [name for name in ("study_id", *CHEXBERT_LABELS) if name not in header]
    if missing:
        raise DataError(f"{path}:1: missing columns {', '.join(missing)}")
    priors: dict[str, str] = {}
    for line, cells in rows[1:]:
        if len(cells) != len(header):
            problems("malformed row", f"{path}:{line}: expected {len(header)} fields, found {len(cells)}")
            continue
        positive, negative = [], []
        for name in CHEXBERT_LABELS:
            raw = cells[header.index(name)]
            value = raw[:-2] if raw.endswith(".0") else raw  # pandas writes 1.0
            if value in codes["positive"]:
                positive.append(name)
            elif value in codes["negative"]:
                negative.append(name)
            elif value not in codes["other"]:
                raise DataError(f"{path}:{line}: {name} = {raw!r} is not a {encoding} label value")
        study = cells[header.index("study_id")]
        priors[study[:-2] if study.endswith(".0") else study] = MIMIC_PRIOR.format(", ".join(positive), ", ".join(negative))
    return priors


def read_r2gen(
    dataset: str,
    root: Path,
    split: str,
    problems: Problems,
    image_dir: str = "images",
    clean: bool = True,
    prior_file: str | None = None,
    labels_encoding: str = "class_index",
) -> list[Record]:
    """One record per study (``dataset`` is "iu_xray" or "mimic_cxr"), all its views in ``images``."""
    ann_path = root / "annotation.json"
    entries = load_annotation(ann_path, split)
    priors: dict = {}
    tags: dict[int, list[str]] = {}
    prior_path = root / prior_file if prior_file else None
    if prior_path is not None:
        if dataset == "iu_xray":
            priors, tags = iu_priors(prior_path, problems)
        else:
            priors = mimic_priors(prior_path, labels_encoding, problems)
    # The MeSH terms of every study in the file, numbered in sorted order: the classes of the concept
    # head (Model.concept_classes) when it learns them (the same numbering in every split).
    vocabulary = {term: i for i, term in enumerate(sorted({t for terms in tags.values() for t in terms}))}
    images = root / image_dir
    records: list[Record] = []
    seen: set[str] = set()
    no_prior = 0
    for index, entry in enumerate(entries):
        where = f"{ann_path}: {split}[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), (str, int)) or not isinstance(entry.get("image_path"), list):
            problems("malformed entry", f"{where}: expected {{'id', 'report', 'image_path': [...]}}")
            continue
        study = str(entry["id"])
        where = f"{ann_path}: {split} id {study!r}"
        if study in seen:
            problems("duplicate ID", f"{where}: duplicate id")
            continue
        seen.add(study)
        report = entry.get("report")
        if not isinstance(report, str) or not report.strip():
            problems("empty report", f"{where}: empty report")
            continue
        try:
            paths = [resolve_under(images, str(p), where, root) for p in entry["image_path"]]
        except DataError as e:
            problems("path outside the data root", str(e))
            continue
        if not paths:
            problems("missing image", f"{where}: no image_path")
            continue
        absent = [p for p in paths if not p.is_file()]
        if absent:
            problems("missing image", f"{where}: image not found: {absent[0]}")
            continue
        extras: dict = {"prior": ""}
        if prior_path is not None:
            key: object = study
            if dataset == "iu_xray":
                match = re.match(r"CXR(\d+)_", study)
                key = int(match.group(1)) if match else None
            else:
                key = str(entry.get("study_id", ""))
            extras["prior"] = priors.get(key, "")
            no_prior += key not in priors
            if vocabulary:
                extras["concept_ids"] = [vocabulary[t] for t in tags.get(key, [])]
                extras["concept_classes"] = len(vocabulary)
        target = clean_report(report, dataset) if clean else report.strip()
        records.append(Record(study, [str(p) for p in paths], "", target, extras))
    if no_prior:
        print(f"[paddle_medvl] warning: {no_prior} {split} studies have no row in {prior_path}; their prior is empty", flush=True)
    return records
