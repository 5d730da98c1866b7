"""Synthetic IU X-RAY in R2Gen's layout: two views per study, the findings as the report, and
the Indiana CSVs that paper 002's prior information is read from.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .base import Progress, SyntheticSet, new_root, sample_rng, save_png, split_plan, write_csv, write_text
from .chest import R2GEN_SPLITS, ChestScene, render_chest_frontal, render_chest_lateral, sample_chest_scene

def iu_report(scene: ChestScene) -> dict[str, str]:
    """The Indiana report fields of a scene: MeSH, Problems, image, indication, comparison, findings, impression."""
    heart = "The heart is enlarged." if scene.cardiomegaly else "The heart is normal in size."
    findings = [heart, "The mediastinum is unremarkable."]
    impression, mesh, problems, indications = [], [], [], []
    if scene.cardiomegaly:
        impression.append("Cardiomegaly.")
        mesh.append("Cardiomegaly")
        problems.append("Cardiomegaly")
        indications.append("Shortness of breath.")
    if scene.nodule:
        side, row = scene.nodule
        findings.append(f"There is a {scene.nodule_mm} mm nodule in the {side} {row} lung zone.")
        impression.append(f"{side.capitalize()} {row} zone pulmonary nodule.")
        mesh.append(f"Nodule/lung/{row}/{side}")
        problems.append("Nodule")
        indications.append("Follow-up of a lung nodule.")
    if scene.atelectasis:
        findings.append(f"There is patchy opacity at the {scene.atelectasis} lung base, which may represent atelectasis.")
        impression.append(f"{scene.atelectasis.capitalize()} basilar opacity, possibly atelectasis.")
        mesh.append(f"Pulmonary Atelectasis/base/{scene.atelectasis}")
        problems.append("Pulmonary Atelectasis")
        indications.append("Cough.")
    if not (scene.nodule or scene.atelectasis):
        findings.append("The lungs are clear.")
    if scene.effusion:
        findings.append(f"There is a small {scene.effusion} pleural effusion.")
        impression.append(f"Small {scene.effusion} pleural effusion.")
        mesh.append(f"Pleural Effusion/{scene.effusion}/small")
        problems.append("Pleural Effusion")
        indications.append("Dyspnea.")
    if scene.pneumothorax:
        findings.append(f"There is a small {scene.pneumothorax} apical pneumothorax.")
        impression.append(f"Small {scene.pneumothorax} apical pneumothorax.")
        mesh.append(f"Pneumothorax/apex/{scene.pneumothorax}/small")
        problems.append("Pneumothorax")
        indications.append("Chest pain.")
    if not scene.effusion and not scene.pneumothorax:
        findings.append("There is no pleural effusion or pneumothorax.")
    elif not scene.effusion:
        findings.append("There is no pleural effusion.")
    elif not scene.pneumothorax:
        findings.append("There is no pneumothorax.")
    findings.append("The osseous structures are intact.")
    return {
        "MeSH": ";".join(mesh) or "normal",
        "Problems": ";".join(problems) or "normal",
        "image": "Chest, 2 views, frontal and lateral",
        "indication": indications[0] if indications else "Routine preoperative examination.",
        "comparison": "None.",
        "findings": " ".join(findings),
        "impression": " ".join(impression) or "No acute cardiopulmonary abnormality.",
    }



# What a synthetic report states about each finding, read back from its text (raw or R2Gen-cleaned):
# finding -> pattern whose groups are the finding's attributes. No match = the report says it is absent.
FINDINGS = {
    "cardiomegaly": r"heart is enlarged",
    "nodule": r"(\d+) mm nodule in the (left|right) (upper|middle|lower) lung zone",
    "atelectasis": r"opacity at the (left|right) lung base",
    "effusion": r"small (left|right) pleural effusion",
    "pneumothorax": r"small (left|right) apical pneumothorax",
}
# The attributes whose accuracy is reported: presence, then each group by name.
FINDING_ATTRIBUTES = {"cardiomegaly": (), "nodule": ("size", "side", "zone"), "atelectasis": ("side",),
                      "effusion": ("side",), "pneumothorax": ("side",)}


def read_findings(report: str) -> dict[str, tuple[str, ...] | None]:
    """finding -> its attributes as the report states them, or None where it states none."""
    text = report.lower()
    found = {}
    for name, pattern in FINDINGS.items():
        match = re.search(pattern, text)
        found[name] = match.groups() if match else None
    return found


def finding_accuracy(predicted: dict[str, str], reference: dict[str, str]) -> dict[str, float]:
    """Per-finding accuracy of generated reports against the references, by study ID: ``<finding>``
    (stated present or absent correctly) and ``<finding> <attribute>`` (right, among the studies where
    the reference has the finding: a missed finding counts as wrong)."""
    hits: dict[str, list[bool]] = {}
    for study, text in reference.items():
        want, got = read_findings(text), read_findings(predicted.get(study, ""))
        for name, attributes in FINDING_ATTRIBUTES.items():
            hits.setdefault(name, []).append((want[name] is None) == (got[name] is None))
            if want[name] is None:
                continue
            for i, attribute in enumerate(attributes):
                right = got[name] is not None and got[name][i] == want[name][i]
                hits.setdefault(f"{name} {attribute}", []).append(right)
    return {key: sum(values) / len(values) for key, values in hits.items()}


def write_iu_xray(
    root: str | Path, seed: int = 0, n: int = 200, image_size: int = 224, progress: Progress | None = None
) -> SyntheticSet:
    """IU X-RAY in R2Gen's layout (7:1:2 train/val/test), with the Indiana CSVs. Under ``root``::

        annotation.json          {"train"|"val"|"test": [{"id": "CXR1_IM-0001", "report", "image_path": [
                                   "CXR1_IM-0001/0.png", "CXR1_IM-0001/1.png"], "split"}]}
        images/CXR<uid>_IM-<nnnn>/0.png, 1.png      frontal, lateral (8-bit grayscale PNG)
        indiana_reports.csv      uid,MeSH,Problems,image,indication,comparison,findings,impression
        indiana_projections.csv  uid,filename,projection

    The study ID's number after "CXR" is the ``uid`` of its indiana_reports.csv row; the report
    in annotation.json is the findings section, as in R2Gen's file.
    """
    root = new_root(root)
    out = SyntheticSet(root)
    annotation: dict[str, list[dict[str, Any]]] = {name: [] for name in R2GEN_SPLITS[0]}
    reports = [["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]]
    projections = [["uid", "filename", "projection"]]
    for index, (split, _) in enumerate(split_plan(n, *R2GEN_SPLITS)):
        rng = sample_rng(seed, "iu", "all", index)
        uid = index + 1
        study = f"CXR{uid}_IM-{uid % 10000:04d}"
        scene = sample_chest_scene(rng, image_size, with_device=False)
        save_png(render_chest_frontal(scene, rng, image_size), root / "images" / study / "0.png")
        save_png(render_chest_lateral(scene, rng, image_size), root / "images" / study / "1.png")
        fields = iu_report(scene)
        annotation[split].append(
            {"id": study, "report": fields["findings"], "image_path": [f"{study}/0.png", f"{study}/1.png"], "split": split}
        )
        reports.append([uid, *fields.values()])
        projections.append([uid, f"{uid}_IM-{uid % 10000:04d}-4001.dcm.png", "Frontal"])
        projections.append([uid, f"{uid}_IM-{uid % 10000:04d}-3001.dcm.png", "Lateral"])
        out.scenes[study] = scene
        if progress:
            progress("iu", index + 1, n)
    write_text(root / "annotation.json", json.dumps(annotation, ensure_ascii=False))
    write_csv(root / "indiana_reports.csv", reports)
    write_csv(root / "indiana_projections.csv", projections)
    return out
