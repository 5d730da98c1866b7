"""Synthetic MIMIC-CXR in R2Gen's layout: one frontal view per study, a findings report, and the
CheXbert labels that report carries (paper 002's prior information).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import Progress, SyntheticSet, new_root, sample_rng, save_jpeg, split_plan, write_csv, write_text
from .chest import R2GEN_SPLITS, ChestScene, render_chest_frontal, sample_chest_scene

CHEXBERT_LABELS = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices", "No Finding",
)
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3  # CheXbert's class indices, as REFERENCE.md section 5 fixes


def mimic_report(scene: ChestScene) -> tuple[str, dict[str, int]]:
    """The findings text of a scene and the CheXbert labels that text carries (0 blank .. 3 uncertain)."""
    labels = dict.fromkeys(CHEXBERT_LABELS, BLANK)
    text = ["Single frontal view of the chest."]
    if scene.device:
        text.append("An endotracheal tube terminates in the mid thoracic trachea.")
        labels["Support Devices"] = POSITIVE
    if scene.cardiomegaly:
        text.append("The heart is moderately enlarged.")
        labels["Cardiomegaly"] = POSITIVE
    else:
        text.append("Heart size is normal.")
        labels["Cardiomegaly"] = NEGATIVE
    text.append("The mediastinal contours are normal.")
    labels["Enlarged Cardiomediastinum"] = NEGATIVE
    if scene.nodule:
        side, row = scene.nodule
        text.append(f"A {scene.nodule_mm} mm nodule projects over the {side} {row} lung zone.")
        labels["Lung Lesion"] = POSITIVE
    if scene.atelectasis:
        text.append(f"There is patchy opacity at the {scene.atelectasis} lung base, which may reflect atelectasis.")
        labels["Lung Opacity"], labels["Atelectasis"] = POSITIVE, UNCERTAIN
    else:
        text.append("There is no focal consolidation.")
        labels["Consolidation"] = NEGATIVE
    if scene.effusion:
        text.append(f"There is a small {scene.effusion} pleural effusion.")
        labels["Pleural Effusion"] = POSITIVE
    else:
        text.append("There is no pleural effusion.")
        labels["Pleural Effusion"] = NEGATIVE
    if scene.pneumothorax:
        text.append(f"There is a small {scene.pneumothorax} apical pneumothorax.")
        labels["Pneumothorax"] = POSITIVE
    else:
        text.append("There is no pneumothorax.")
        labels["Pneumothorax"] = NEGATIVE
    text.append("There is no pulmonary edema.")
    labels["Edema"] = NEGATIVE
    # CheXpert's rule: "No Finding" only when no pathology is positive or uncertain (devices aside).
    findings = [name for name in CHEXBERT_LABELS if name not in ("Support Devices", "No Finding")]
    if not any(labels[name] in (POSITIVE, UNCERTAIN) for name in findings):
        labels["No Finding"] = POSITIVE
    return " ".join(text), labels


def write_mimic_cxr(
    root: str | Path, seed: int = 0, n: int = 300, image_size: int = 224, progress: Progress | None = None
) -> SyntheticSet:
    """MIMIC-CXR in R2Gen's layout (7:1:2 train/val/test), one frontal image per study. Under ``root``::

        annotation.json      {"train"|"val"|"test": [{"id": "<dicom id>", "study_id": 5xxxxxxx, "subject_id": 1xxxxxxx,
                               "report", "image_path": ["p10/p10000032/s50414267/<dicom id>.jpg"], "split"}]}
        images/p<2 digits>/p<subject_id>/s<study_id>/<dicom id>.jpg      grayscale JPEG
        chexbert_labels.csv  study_id + the 14 CheXbert labels (REFERENCE.md order);
                             0 blank, 1 positive, 2 negative, 3 uncertain

    ``study_id`` and ``subject_id`` are integers, as in R2Gen's file.
    """
    root = new_root(root)
    out = SyntheticSet(root)
    annotation: dict[str, list[dict[str, Any]]] = {name: [] for name in R2GEN_SPLITS[0]}
    labels_rows: list[list[Any]] = [["study_id", *CHEXBERT_LABELS]]
    for index, (split, _) in enumerate(split_plan(n, *R2GEN_SPLITS)):
        rng = sample_rng(seed, "mimic", "all", index)
        # Disjoint ranges per sample keep the IDs unique without depending on n, and the first
        # 10,000 samples inside the real ranges (subjects p10..p19, studies 5xxxxxxx).
        subject_id = 10_000_000 + index * 997 + int(rng.integers(997))
        study_id = 50_000_000 + index * 997 + int(rng.integers(997))
        dicom_id = "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, 5))
        scene = sample_chest_scene(rng, image_size, with_device=True)
        path = f"p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"
        save_jpeg(render_chest_frontal(scene, rng, image_size), root / "images" / path)
        report, labels = mimic_report(scene)
        entry = {"id": dicom_id, "study_id": study_id, "subject_id": subject_id, "report": report}
        annotation[split].append({**entry, "image_path": [path], "split": split})
        labels_rows.append([study_id, *labels.values()])
        out.scenes[dicom_id] = scene
        if progress:
            progress("mimic", index + 1, n)
    write_text(root / "annotation.json", json.dumps(annotation, ensure_ascii=False))
    write_csv(root / "chexbert_labels.csv", labels_rows)
    return out
