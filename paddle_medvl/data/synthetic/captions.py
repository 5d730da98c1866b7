"""Synthetic radiology captions: one lesion drawn in a body of some modality, written as
ImageCLEFmedical Caption 2023 (tab-separated) or ROCOv2 (CSV). The caption and the CUIs name what
is drawn: modality, body part, the lesion's zone, size and brightness.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .base import (
    ANATOMY_MAX, Progress, SyntheticSet, capsule, disc, ellipse, new_root, noise, paint, ring, sample_rng, save_jpeg,
    smooth_noise, split_plan, to_image, write_csv, write_tsv,
)

CAPTION_MODALITIES = ("X-ray", "CT", "MRI")
ZONE_ROWS = ("upper", "middle", "lower")
ZONE_SIDES = ("right", "left")  # the patient's sides; right is on the image's left
LESION_RADII = {"small": 0.035, "medium": 0.055, "large": 0.08}  # fraction of the image side, +-10 %
LESION_LEVELS = {"faint": 200.0, "bright": 245.0}  # grey levels; the anatomy stays <= ANATOMY_MAX
CAPTION_FIELD = (0.1, 0.9)  # the body's box (fractions of the side): 2 sides x 3 rows of zones

_BODY = {  # modality -> body part, and its outline (cx, cy, rx, ry, p) as fractions of the side
    "X-ray": ("Chest", (0.5, 0.5, 0.4, 0.4, 4)),
    "CT": ("Abdomen", (0.5, 0.5, 0.4, 0.36, 3)),
    "MRI": ("Brain", (0.5, 0.5, 0.36, 0.4, 2)),
}

# Invented CUIs (C9xxxxxx is outside the UMLS range in use), so nobody mistakes them for real ones.
CUI_NAMES: dict[str, str] = {
    "C9000001": "Plain x-ray",
    "C9000002": "X-Ray Computed Tomography",
    "C9000003": "Magnetic Resonance Imaging",
    "C9000011": "Chest",
    "C9000012": "Abdomen",
    "C9000013": "Brain",
    "C9000021": "Lesion",
    **{
        f"C90000{31 + 3 * s + r}": f"{side.capitalize()} {row} zone"
        for s, side in enumerate(ZONE_SIDES)
        for r, row in enumerate(ZONE_ROWS)
    },
    "C9000041": "Small size",
    "C9000042": "Medium size",
    "C9000043": "Large size",
    "C9000051": "Faint",
    "C9000052": "Bright",
}
_CUI_OF = {name: cui for cui, name in CUI_NAMES.items()}
_MODALITY_CUI = dict(zip(CAPTION_MODALITIES, ("C9000001", "C9000002", "C9000003")))

_CAPTION_TEMPLATES = {
    "imageclef": {
        "X-ray": "Chest radiograph showing a {size} {level} lesion in the {side} {row} zone.",
        "CT": "Axial CT of the abdomen showing a {size} {level} lesion in the {side} {row} zone.",
        "MRI": "Axial MRI of the brain showing a {size} {level} lesion in the {side} {row} zone.",
    },
    "rocov2": {  # ROCOv2 captions often carry commas, which exercises the CSV quoting
        "X-ray": "Chest X-ray, posteroanterior view, showing a {size}, {level} lesion in the {side} {row} zone.",
        "CT": "Computed tomography, axial section, showing a {size}, {level} lesion in the {side} {row} zone.",
        "MRI": "Magnetic resonance imaging, axial section, showing a {size}, {level} lesion in the {side} {row} zone.",
    },
}


@dataclass(frozen=True)
class CaptionScene:
    """One radiology image: a body of some modality with one round lesion."""

    modality: str
    side: str  # patient side of the lesion
    row: str
    size: str  # small / medium / large
    level: str  # faint / bright
    center: tuple[float, float]  # lesion centre, pixels (x, y)
    radius: float  # pixels


def zone_box(side: str, row: str, size: int) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1) of a zone; the patient's right is the image's left half."""
    lo, hi = CAPTION_FIELD
    x_mid = (lo + hi) / 2
    x0, x1 = (lo, x_mid) if side == "right" else (x_mid, hi)
    step = (hi - lo) / len(ZONE_ROWS)
    r = ZONE_ROWS.index(row)
    return x0 * size, (lo + r * step) * size, x1 * size, (lo + (r + 1) * step) * size


def _body_outline(modality: str, size: int) -> tuple[float, float, float, float, int]:
    """(cx, cy, rx, ry) in pixels and the superellipse exponent of a modality's body."""
    cx, cy, rx, ry, p = _BODY[modality][1]
    return cx * size, cy * size, rx * size, ry * size, p


def _sample_caption_scene(rng: np.random.Generator, size: int) -> CaptionScene:
    modality = CAPTION_MODALITIES[rng.integers(len(CAPTION_MODALITIES))]
    side, row = ZONE_SIDES[rng.integers(2)], ZONE_ROWS[rng.integers(3)]
    lesion_size = tuple(LESION_RADII)[rng.integers(3)]
    level = tuple(LESION_LEVELS)[rng.integers(2)]
    radius = LESION_RADII[lesion_size] * size * rng.uniform(0.9, 1.1)
    x0, y0, x1, y1 = zone_box(side, row, size)
    margin = radius + 0.02 * size
    cx, cy, rx, ry, p = _body_outline(modality, size)
    # Keep the lesion inside the body; the zone's corner towards the image centre always is.
    center = (x1 - margin if side == "right" else x0 + margin, y1 - margin if row == "upper" else y0 + margin)
    for _ in range(30):
        x, y = rng.uniform(x0 + margin, x1 - margin), rng.uniform(y0 + margin, y1 - margin)
        if abs((x - cx) / rx) ** p + abs((y - cy) / ry) ** p < 0.75:
            center = (x, y)
            break
    return CaptionScene(modality, side, row, lesion_size, level, (float(center[0]), float(center[1])), float(radius))


def caption_text(scene: CaptionScene, style: str = "imageclef") -> str:
    """The caption of a scene ("imageclef" for the 2023 files, "rocov2" for ROCOv2)."""
    template = _CAPTION_TEMPLATES[style][scene.modality]
    return template.format(size=scene.size, level=scene.level, side=scene.side, row=scene.row)


def caption_cuis(scene: CaptionScene) -> list[str]:
    """Modality, body part, finding, location, size, intensity: all read off the drawing."""
    return [
        _MODALITY_CUI[scene.modality],
        _CUI_OF[_BODY[scene.modality][0]],
        _CUI_OF["Lesion"],
        _CUI_OF[f"{scene.side.capitalize()} {scene.row} zone"],
        _CUI_OF[f"{scene.size.capitalize()} size"],
        _CUI_OF[scene.level.capitalize()],
    ]


def _render_caption(scene: CaptionScene, rng: np.random.Generator, size: int) -> Image.Image:
    s = size
    canvas = np.full((s, s), 12.0, np.float32)
    cx, cy, rx, ry, p = _body_outline(scene.modality, s)
    body = ellipse(s, cx, cy, rx, ry, p)
    if scene.modality == "X-ray":
        paint(canvas, body, 112)
        paint(canvas, capsule(s, 0.5 * s, 0.1 * s, 0.5 * s, 0.9 * s, 0.035 * s), 125)
        for lung_x in (0.32, 0.68):
            paint(canvas, ellipse(s, lung_x * s, 0.45 * s, 0.14 * s, 0.3 * s), 50)
        paint(canvas, ellipse(s, 0.55 * s, 0.62 * s, 0.15 * s, 0.12 * s), 130)
    elif scene.modality == "CT":
        paint(canvas, body, 85)  # subcutaneous fat
        paint(canvas, ellipse(s, cx, cy, rx - 0.04 * s, ry - 0.04 * s, p), 108)
        paint(canvas, ellipse(s, 0.36 * s, 0.42 * s, 0.12 * s, 0.1 * s), 122)  # liver, on the patient's right
        for kidney_x in (0.38, 0.62):
            paint(canvas, ellipse(s, kidney_x * s, 0.62 * s, 0.045 * s, 0.07 * s), 128)
        paint(canvas, ring(s, 0.5 * s, 0.7 * s, 0.045 * s, 0.012 * s), 148)  # vertebral cortex
    else:
        paint(canvas, body, 120)  # scalp
        paint(canvas, ellipse(s, cx, cy, rx - 0.025 * s, ry - 0.025 * s, p), 30)  # skull
        paint(canvas, ellipse(s, cx, cy, rx - 0.045 * s, ry - 0.045 * s, p), 95)
        for ventricle_x in (0.46, 0.54):
            paint(canvas, ellipse(s, ventricle_x * s, 0.48 * s, 0.025 * s, 0.08 * s), 40)
    canvas += body * smooth_noise(rng, s, 10) * 7.0
    np.minimum(canvas, ANATOMY_MAX, out=canvas)
    paint(canvas, disc(s, *scene.center, scene.radius), LESION_LEVELS[scene.level])
    canvas += noise(rng, (s, s), 3.0)
    return to_image(canvas)


def _write_captions(
    root: Path, seed: int, n: int, image_size: int, progress: Progress | None, style: str
) -> SyntheticSet:
    if style == "imageclef":
        stream, splits = "caption", split_plan(n, ("train", "valid"), (0.8, 0.2))
    else:
        stream, splits = "rocov2", split_plan(n, ("train", "valid", "test"), (0.7, 0.15, 0.15))
    out = SyntheticSet(root)
    by_split: dict[str, list[tuple[str, CaptionScene]]] = {}
    for done, (split, index) in enumerate(splits, 1):
        rng = sample_rng(seed, stream, split, index)
        scene = _sample_caption_scene(rng, image_size)
        prefix = "ImageCLEFmedical_Caption_2023" if style == "imageclef" else "ROCOv2_2023"
        image_id = f"{prefix}_{split}_{index + 1:06d}"
        save_jpeg(_render_caption(scene, rng, image_size), root / split / f"{image_id}.jpg")
        by_split.setdefault(split, []).append((image_id, scene))
        out.scenes[image_id] = scene
        if progress:
            progress(stream, done, len(splits))
    for split, items in by_split.items():
        captions = [[image_id, caption_text(scene, style)] for image_id, scene in items]
        concepts = [[image_id, ";".join(caption_cuis(scene))] for image_id, scene in items]
        if style == "imageclef":
            prefix = root / "ImageCLEFmedical_Caption_2023"
            write_tsv(Path(f"{prefix}_caption_prediction_{split}_labels.csv"), [["ID", "caption"], *captions])
            write_tsv(Path(f"{prefix}_concept_detection_{split}_labels.csv"), [["ID", "cuis"], *concepts])
        else:
            write_csv(root / f"{split}_captions.csv", [["ID", "Caption"], *captions])
            write_csv(root / f"{split}_concepts.csv", [["ID", "CUIs"], *concepts])
    mapping = [[cui, name] for cui, name in CUI_NAMES.items()]
    if style == "imageclef":
        write_tsv(root / "ImageCLEFmedical_Caption_2023_cui_mapping.csv", mapping)  # no header, as released
    else:
        write_csv(root / "cui_mapping.csv", [["CUI", "Canonical name"], *mapping])
    return out


def write_imageclef_caption(
    root: str | Path, seed: int = 0, n: int = 300, image_size: int = 224, progress: Progress | None = None
) -> SyntheticSet:
    """ImageCLEFmedical Caption 2023, 80 % train / 20 % valid. Layout under ``root``::

        ImageCLEFmedical_Caption_2023_caption_prediction_{train,valid}_labels.csv   ID<TAB>caption
        ImageCLEFmedical_Caption_2023_concept_detection_{train,valid}_labels.csv    ID<TAB>cuis (C1;C2;...)
        ImageCLEFmedical_Caption_2023_cui_mapping.csv                              CUI<TAB>name, no header
        {train,valid}/ImageCLEFmedical_Caption_2023_{split}_000001.jpg              grayscale JPEG
    """
    return _write_captions(new_root(root), seed, n, image_size, progress, "imageclef")


def write_rocov2(
    root: str | Path, seed: int = 0, n: int = 150, image_size: int = 224, progress: Progress | None = None
) -> SyntheticSet:
    """ROCOv2 (the 2024 release), 70/15/15 % train/valid/test. Layout under ``root``::

        {train,valid,test}_captions.csv    ID,Caption     (CSV quoting: captions hold commas)
        {train,valid,test}_concepts.csv    ID,CUIs        (C1;C2;...)
        cui_mapping.csv                    CUI,Canonical name
        {train,valid,test}/ROCOv2_2023_{split}_000001.jpg
    """
    return _write_captions(new_root(root), seed, n, image_size, progress, "rocov2")
