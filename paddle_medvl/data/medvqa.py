"""ImageCLEFmedical MEDVQA-GI 2023: 18 fixed questions about each GI endoscopy image.

Layout under ``Data.root``::

    gt.json                 [{"ImageID", "Labels": [{"Question", "AnswerType", "Answer": [...]}, ...]}, ...]
    images/<ImageID>.jpg

One record per (image, question). ``segmentation`` labels are not text answers: they are skipped
and counted. The official spelling ("artefact", "instrumnets", "Lower-rigth") is data and is kept.
The release has no validation split; paper 001 held out 10 % of the images, so the split is made
here, by image (no image in both splits) and by seed.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .record import DataError, Problems, Record, image_for_id, read_json

ANSWER_SEPARATOR = "; "  # several answers to one question, sorted, joined into one target text
SPLITS = ("train", "valid", "all")


def join_answers(answers: list[str]) -> str:
    """A stable target text for a multi-answer question (the annotators' order varies)."""
    return ANSWER_SEPARATOR.join(sorted(answers))


def split_images(image_ids: list[str], val_fraction: float, seed: int) -> set[str]:
    """The validation images: a seeded draw of ``ceil(fraction * n)`` images, independent of file order."""
    ordered = sorted(image_ids)
    count = math.ceil(val_fraction * len(ordered)) if val_fraction > 0 else 0
    picked = np.random.default_rng(seed).permutation(len(ordered))[:count]
    return {ordered[i] for i in picked}


def load_gt(path: Path) -> list:
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of images, found {type(data).__name__}")
    return data


def read_medvqa(
    root: Path, split: str, problems: Problems, val_fraction: float = 0.1, seed: int = 42, image_dir: str = "images"
) -> list[Record]:
    if split not in SPLITS:
        raise DataError(f"MEDVQA-GI has the splits {', '.join(SPLITS)} (made by Data.val_fraction), not {split!r}")
    gt_path = root / "gt.json"
    entries = load_gt(gt_path)
    images = root / image_dir
    by_image: dict[str, list[Record]] = {}
    skipped_segmentation = 0
    for index, entry in enumerate(entries):
        where = f"{gt_path}: entry {index}"
        if not isinstance(entry, dict) or not isinstance(entry.get("ImageID"), str) or not isinstance(entry.get("Labels"), list):
            problems("malformed entry", f"{where}: expected {{'ImageID': str, 'Labels': [...]}}")
            continue
        image_id = entry["ImageID"]
        where = f"{gt_path}: ImageID {image_id!r}"
        if image_id in by_image:
            problems("duplicate ID", f"{where}: duplicate ImageID (entry {index})")
            continue
        path = image_for_id(root, images, image_id, ".jpg", where, problems)
        if path is None:
            continue
        records = []
        for k, label in enumerate(entry["Labels"]):
            here = f"{where}, label {k}"
            if not isinstance(label, dict) or not isinstance(label.get("Question"), str):
                problems("malformed label", f"{here}: expected {{'Question', 'AnswerType', 'Answer'}}")
                continue
            if label.get("AnswerType") == "segmentation":
                skipped_segmentation += 1
                continue
            answers = label.get("Answer")
            if isinstance(answers, str):
                answers = [answers]
            if not isinstance(answers, list) or not all(isinstance(a, (str, int)) for a in answers):
                problems("malformed label", f"{here}: Answer must be a list of strings")
                continue
            answers = [str(a).strip() for a in answers if str(a).strip()]
            if not answers:
                problems("empty answer", f"{here}: empty answer to {label['Question']!r}")
                continue
            extras = {
                "image_id": image_id,
                "question": label["Question"],
                "question_index": k,
                "answer_type": label.get("AnswerType", ""),
                "answers": answers,
            }
            records.append(Record(f"{image_id}#{k}", [str(path)], "", join_answers(answers), extras))
        by_image[image_id] = records
    if skipped_segmentation:
        print(f"[paddle_medvl] {gt_path}: skipped {skipped_segmentation} segmentation labels (no text answer)", flush=True)
    if split == "all":
        chosen = list(by_image)
    else:
        valid = split_images(list(by_image), val_fraction, seed)
        chosen = [i for i in by_image if (i in valid) == (split == "valid")]
    return [r for image_id in chosen for r in by_image[image_id]]
