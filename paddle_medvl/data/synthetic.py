"""Bundled demo data: small synthetic data sets written in the official on-disk formats.

Why it exists: the demo configs and the tests must run with no download, through the very
readers that read the official releases, so every file here follows the official layout
(separators, headers, file and folder names, the official question strings with their typos).
What is drawn decides what is written: every caption, concept list, answer, report and label
is a pure function of a sampled scene, and the scenes are returned (``SyntheticSet.scenes``)
so tests can check the texts against the pixels.

Conventions:

* Radiology (caption sets, IU X-RAY, MIMIC-CXR) follows the radiological display convention:
  the patient's RIGHT is on the image's LEFT. "left lower zone" is the image's right half,
  lower third of the body.
* Endoscopy (MEDVQA-GI) locations are image positions on a 3x3 grid in the official
  vocabulary (``GRID``), "Lower-rigth" included; they are not anatomical sides.
* Absent things are answered "None" (lists, colours, locations), "Not relevant" (polyp size,
  type, removal, detectability), "0" (counts), "No" (yes/no questions).
* Determinism: sample ``i`` draws only from a numpy Generator seeded by (seed, set, split, i),
  so it does not depend on ``n`` or on the other sets; files are written with fixed encoder
  settings, ordered keys and "\\n" line ends: the same seed gives the same bytes (on one
  machine and Pillow build; JPEG encoders differ between libjpeg builds).
* Tokenizers: ``make_demo_data`` also trains the demo's tokenizers on the train-split texts of
  the sets it wrote (``out_dir/tokenizers/{opt,bert}``, see ``demo_tokenizer.py``), so the demo
  configs need no download for them either.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

JPEG_QUALITY = 90
Progress = Callable[[str, int, int], None]  # (task, samples done, samples total)

# One RNG stream per data set, so sets made with the same seed still differ.
_STREAMS = {"caption": 1, "rocov2": 2, "vqa": 3, "iu": 4, "mimic": 5}
_SPLIT_CODES = {"all": 0, "train": 1, "valid": 2, "val": 2, "test": 3}


@dataclass
class SyntheticSet:
    """A written data set: its root folder and, per sample ID, the scene that was drawn."""

    root: Path
    scenes: dict[str, Any] = field(default_factory=dict)


def _new_root(root: str | Path) -> Path:
    """The folder a writer fills; an old set's files would otherwise mix with the new one's."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; write into a new folder (make_demo_data replaces whole sets)")
    return root


def _rng(seed: int, stream: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], _SPLIT_CODES[split], index])


def _split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Samples per split; every split gets at least one when ``n`` allows, the first the rest."""
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    rest = [max(1, round(n * f)) if n >= len(fractions) else 0 for f in fractions[1:]]
    return [n - sum(rest), *rest]


def _splits(n: int, names: Sequence[str], fractions: Sequence[float]) -> list[tuple[str, int]]:
    """(split, index within the split) for each of ``n`` samples, in writing order."""
    return [(name, i) for name, size in zip(names, _split_sizes(n, fractions)) for i in range(size)]


# ----------------------------------------------------------------------------- drawing


@functools.lru_cache(maxsize=4)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), shared read-only by all shapes of one size."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _disc(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    x, y = _coords(size)
    return np.clip(r - np.hypot(x - cx, y - cy) + 0.5, 0.0, 1.0)


def _ellipse(size: int, cx: float, cy: float, rx: float, ry: float, p: int = 2) -> np.ndarray:
    """Anti-aliased (super)ellipse coverage; ``p`` > 2 rounds the corners off less.

    The edge uses |u|^p + |v|^p to first order (no p-th root): exact enough for a one-pixel ramp.
    """
    x, y = _coords(size)
    u, v = np.abs((x - cx) / np.float32(rx)), np.abs((y - cy) / np.float32(ry))
    return np.clip((1.0 - _ipow(u, p) - _ipow(v, p)) * (min(rx, ry) / p) + 0.5, 0.0, 1.0)


def _ipow(a: np.ndarray, p: int) -> np.ndarray:
    out = a * a
    for _ in range(p - 2):
        out *= a
    return out


def _capsule(size: int, x0: float, y0: float, x1: float, y1: float, half_width: float) -> np.ndarray:
    """A thick line segment with round ends."""
    x, y = _coords(size)
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    return np.clip(half_width - np.hypot(x - (x0 + t * dx), y - (y0 + t * dy)) + 0.5, 0.0, 1.0)


def _ring(size: int, cx: float, cy: float, r: float, half_width: float) -> np.ndarray:
    x, y = _coords(size)
    return np.clip(half_width - np.abs(np.hypot(x - cx, y - cy) - r) + 0.5, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency texture with unit-ish amplitude: a small random grid, upsampled."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC))


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Sensor noise (float32 throughout: it is the bulk of the random numbers drawn)."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _paint(canvas: np.ndarray, alpha: np.ndarray, value: float | Sequence[float] | np.ndarray) -> None:
    """Composite ``value`` (a grey level, a colour, or a per-pixel image) over ``canvas`` in place.

    Works on the box where ``alpha`` > 0 only: most shapes are small, the canvas is not.
    """
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a, c = alpha[box], canvas[box]
    value = np.asarray(value, np.float32)
    if value.ndim >= 2:
        value = value[box]
    c += (a[..., None] if canvas.ndim == 3 else a) * (value - c)


def _to_image(canvas: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))


def _save_jpeg(image: Image.Image, path: Path) -> None:
    """Fixed quality, full-resolution chroma (4:4:4): thin coloured objects keep their colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=JPEG_QUALITY, subsampling=0)


def _save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG", compress_level=1)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def _write_csv(path: Path, rows: list[list[Any]]) -> None:
    """Comma-separated with minimal quoting (captions and findings contain commas)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _write_tsv(path: Path, rows: list[list[str]]) -> None:
    """Tab-separated without any quoting, as the ImageCLEF files are."""
    for row in rows:
        if any("\t" in cell or "\n" in cell for cell in row):
            raise ValueError(f"{path}: a cell holds a tab or a line break: {row!r}")
    _write_text(path, "".join("\t".join(row) + "\n" for row in rows))


# ----------------------------------------------------------------------------- captions

CAPTION_MODALITIES = ("X-ray", "CT", "MRI")
ZONE_ROWS = ("upper", "middle", "lower")
ZONE_SIDES = ("right", "left")  # the patient's sides; right is on the image's left
LESION_RADII = {"small": 0.035, "medium": 0.055, "large": 0.08}  # fraction of the image side, +-10 %
LESION_LEVELS = {"faint": 200.0, "bright": 245.0}  # grey levels; the anatomy stays <= ANATOMY_MAX
ANATOMY_MAX = 150.0
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
    body = _ellipse(s, cx, cy, rx, ry, p)
    if scene.modality == "X-ray":
        _paint(canvas, body, 112)
        _paint(canvas, _capsule(s, 0.5 * s, 0.1 * s, 0.5 * s, 0.9 * s, 0.035 * s), 125)
        for lung_x in (0.32, 0.68):
            _paint(canvas, _ellipse(s, lung_x * s, 0.45 * s, 0.14 * s, 0.3 * s), 50)
        _paint(canvas, _ellipse(s, 0.55 * s, 0.62 * s, 0.15 * s, 0.12 * s), 130)
    elif scene.modality == "CT":
        _paint(canvas, body, 85)  # subcutaneous fat
        _paint(canvas, _ellipse(s, cx, cy, rx - 0.04 * s, ry - 0.04 * s, p), 108)
        _paint(canvas, _ellipse(s, 0.36 * s, 0.42 * s, 0.12 * s, 0.1 * s), 122)  # liver, on the patient's right
        for kidney_x in (0.38, 0.62):
            _paint(canvas, _ellipse(s, kidney_x * s, 0.62 * s, 0.045 * s, 0.07 * s), 128)
        _paint(canvas, _ring(s, 0.5 * s, 0.7 * s, 0.045 * s, 0.012 * s), 148)  # vertebral cortex
    else:
        _paint(canvas, body, 120)  # scalp
        _paint(canvas, _ellipse(s, cx, cy, rx - 0.025 * s, ry - 0.025 * s, p), 30)  # skull
        _paint(canvas, _ellipse(s, cx, cy, rx - 0.045 * s, ry - 0.045 * s, p), 95)
        for ventricle_x in (0.46, 0.54):
            _paint(canvas, _ellipse(s, ventricle_x * s, 0.48 * s, 0.025 * s, 0.08 * s), 40)
    canvas += body * _smooth_noise(rng, s, 10) * 7.0
    np.minimum(canvas, ANATOMY_MAX, out=canvas)
    _paint(canvas, _disc(s, *scene.center, scene.radius), LESION_LEVELS[scene.level])
    canvas += _noise(rng, (s, s), 3.0)
    return _to_image(canvas)


def _write_captions(
    root: Path, seed: int, n: int, image_size: int, progress: Progress | None, style: str
) -> SyntheticSet:
    if style == "imageclef":
        stream, splits = "caption", _splits(n, ("train", "valid"), (0.8, 0.2))
    else:
        stream, splits = "rocov2", _splits(n, ("train", "valid", "test"), (0.7, 0.15, 0.15))
    out = SyntheticSet(root)
    by_split: dict[str, list[tuple[str, CaptionScene]]] = {}
    for done, (split, index) in enumerate(splits, 1):
        rng = _rng(seed, stream, split, index)
        scene = _sample_caption_scene(rng, image_size)
        prefix = "ImageCLEFmedical_Caption_2023" if style == "imageclef" else "ROCOv2_2023"
        image_id = f"{prefix}_{split}_{index + 1:06d}"
        _save_jpeg(_render_caption(scene, rng, image_size), root / split / f"{image_id}.jpg")
        by_split.setdefault(split, []).append((image_id, scene))
        out.scenes[image_id] = scene
        if progress:
            progress(stream, done, len(splits))
    for split, items in by_split.items():
        captions = [[image_id, caption_text(scene, style)] for image_id, scene in items]
        concepts = [[image_id, ";".join(caption_cuis(scene))] for image_id, scene in items]
        if style == "imageclef":
            prefix = root / "ImageCLEFmedical_Caption_2023"
            _write_tsv(Path(f"{prefix}_caption_prediction_{split}_labels.csv"), [["ID", "caption"], *captions])
            _write_tsv(Path(f"{prefix}_concept_detection_{split}_labels.csv"), [["ID", "cuis"], *concepts])
        else:
            _write_csv(root / f"{split}_captions.csv", [["ID", "Caption"], *captions])
            _write_csv(root / f"{split}_concepts.csv", [["ID", "CUIs"], *concepts])
    mapping = [[cui, name] for cui, name in CUI_NAMES.items()]
    if style == "imageclef":
        _write_tsv(root / "ImageCLEFmedical_Caption_2023_cui_mapping.csv", mapping)  # no header, as released
    else:
        _write_csv(root / "cui_mapping.csv", [["CUI", "Canonical name"], *mapping])
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
    return _write_captions(_new_root(root), seed, n, image_size, progress, "imageclef")


def write_rocov2(
    root: str | Path, seed: int = 0, n: int = 150, image_size: int = 224, progress: Progress | None = None
) -> SyntheticSet:
    """ROCOv2 (the 2024 release), 70/15/15 % train/valid/test. Layout under ``root``::

        {train,valid,test}_captions.csv    ID,Caption     (CSV quoting: captions hold commas)
        {train,valid,test}_concepts.csv    ID,CUIs        (C1;C2;...)
        cui_mapping.csv                    CUI,Canonical name
        {train,valid,test}/ROCOv2_2023_{split}_000001.jpg
    """
    return _write_captions(_new_root(root), seed, n, image_size, progress, "rocov2")


# ----------------------------------------------------------------------------- MEDVQA-GI

# The official question strings, typos included ("instrumnets"), in the order of the task's
# submission checker (question IDs 0..17), keyed by a short name; then the two segmentation questions.
VQA_QUESTIONS = {
    "procedure": "What type of procedure is the image taken from?",
    "removed": "Have all polyps been removed?",
    "easy": "Is this finding easy to detect?",
    "artefact": "Is there a green/black box artefact?",
    "text": "Is there text?",
    "abnormality_colour": "What color is the abnormality?",
    "landmark_colour": "What color is the anatomical landmark?",
    "findings": "How many findings are present?",
    "polyps": "How many polyps are in the image?",
    "instruments": "How many instrumnets are in the image?",
    "abnormality_location": "Where in the image is the abnormality?",
    "instrument_location": "Where in the image is the instrument?",
    "abnormalities": "Are there any abnormalities in the image?",
    "landmarks": "Are there any anatomical landmarks in the image?",
    "instrument_types": "Are there any instruments in the image?",
    "landmark_location": "Where in the image is the anatomical landmark?",
    "size": "What is the size of the polyp?",
    "type": "What type of polyp is present?",
}
VQA_SEGMENTATION_QUESTIONS = {
    "polyp": "Where exactly in the image is the polyp located?",
    "instrument": "Where exactly in the image is the instrument located?",
}
_ANSWER_TYPES = {"removed": "Yes/No", "easy": "Yes/No", "artefact": "Yes/No", "text": "Yes/No",
                 "findings": "Number", "polyps": "Number", "instruments": "Number"}  # the rest: "Text"

GRID = (
    ("Upper-left", "Upper-center", "Upper-right"),
    ("Center-left", "Center", "Center-right"),
    ("Lower-left", "Lower-center", "Lower-rigth"),  # sic: the official spelling
)
GRID_ORDER = tuple(name for row in GRID for name in row)
CELL_MIN_FRACTION = 0.02  # an instrument or landmark is "in" a grid cell that it covers this much of

# Colours kept apart from each other, from the mucosa and from the overlays, so that a pixel's
# colour names its object: polyps never use a landmark colour and vice versa.
POLYP_COLOURS = {
    "Red": (205, 10, 45),
    "Pink": (250, 150, 215),
    "Yellow": (240, 220, 50),
    "Purple": (125, 40, 170),
    "Orange": (250, 135, 20),
}
LANDMARK_COLOURS = {"White": (250, 242, 234), "Pale Pink": (240, 200, 190)}  # warm: blends stay off-grey
INSTRUMENT_GREY = (170, 172, 176)
RESECTION_BLUE = (55, 75, 160)  # a dye-lifted resection site: "all polyps removed"
LANDMARKS = {"Cecum": "Colonoscopy", "Ileum": "Colonoscopy", "Z-line": "Gastroscopy", "Pylorus": "Gastroscopy"}
INSTRUMENTS = ("Biopsy forceps", "Injection needle", "Metal clip", "Polyp snare", "Tube")
# size class -> polyp radius range, fraction of the image side
POLYP_SIZES = {"< 5mm": (0.035, 0.05), "5-10mm": (0.05, 0.075), "11-20mm": (0.075, 0.105), ">20mm": (0.105, 0.14)}
POLYP_TYPES = ("Paris ip", "Paris is", "Paris iia")  # pedunculated (stalk), sessile (round), flat (low oval)
_MUCOSA = {"Colonoscopy": (215, 125, 105), "Gastroscopy": (190, 80, 78)}
TEXT_BOX = (0.0, 0.0, 0.42, 0.1)  # overlay rectangles (fractions x0, y0, x1, y1); when drawn, nothing else goes there
ARTEFACT_BOX = (0.0, 0.72, 0.28, 1.0)


@dataclass(frozen=True)
class Polyp:
    center: tuple[float, float]  # pixels
    radius: float  # pixels; the half-width for a flat (Paris iia) polyp, whose height is 0.6x
    colour: str
    size_class: str
    paris: str
    stalk_angle: float  # radians, Paris ip only


@dataclass(frozen=True)
class Instrument:
    name: str
    start: tuple[float, float]  # on the image border
    end: tuple[float, float]
    half_width: float


@dataclass(frozen=True)
class Landmark:
    name: str
    colour: str
    center: tuple[float, float]
    radius: float


@dataclass(frozen=True)
class VQAScene:
    """One endoscopy image. The ``*_cells`` fields are measured on the rendered (visible) masks."""

    size: int  # image side, pixels
    procedure: str
    lumen: tuple[float, float, float]  # x, y, radius of the dark lumen
    landmark: Landmark | None
    polyps: tuple[Polyp, ...]
    resection: tuple[float, float, float] | None  # x, y, radius of a resection site (no polyps left)
    instruments: tuple[Instrument, ...]
    artefact: bool
    text: str | None
    segmentation: str | None  # "polyp" / "instrument": this image has a segmentation label
    instrument_cells: tuple[str, ...] = ()
    landmark_cells: tuple[str, ...] = ()


def grid_cell(x: float, y: float, size: int) -> str:
    """The official 3x3 location name of an image point (image space, not anatomy)."""
    return GRID[min(int(y * 3 / size), 2)][min(int(x * 3 / size), 2)]


def grid_bounds(size: int) -> list[int]:
    """Pixel rows/columns where the grid's thirds start: pixel i is in third int((i + 0.5) * 3 / size)."""
    return [math.ceil(k * size / 3 - 0.5) for k in range(4)]


def _box_px(box: tuple[float, float, float, float], size: int) -> tuple[float, float, float, float]:
    return box[0] * size, box[1] * size, box[2] * size, box[3] * size


Footprint = tuple[float, float, float]  # x, y, radius of a placed object


def _clear_of(x: float, y: float, r: float, size: int, boxes: list[tuple], taken: list[Footprint], gap: float) -> bool:
    """A disc fits in the image, away from the overlay boxes and from the discs already placed."""
    if not (r + 2 <= x <= size - r - 2 and r + 2 <= y <= size - r - 2):
        return False
    for box in boxes:
        x0, y0, x1, y1 = _box_px(box, size)
        if np.hypot(x - np.clip(x, x0, x1), y - np.clip(y, y0, y1)) < r + gap:
            return False
    return all(np.hypot(x - tx, y - ty) >= r + tr + gap for tx, ty, tr in taken)


def _place(
    rng: np.random.Generator, size: int, r: float, boxes: list[tuple], taken: list[Footprint], gap: float
) -> tuple[float, float] | None:
    """A random free spot for a disc of radius ``r``, or None when the image is too full."""
    for _ in range(60):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        if _clear_of(x, y, r, size, boxes, taken, gap):
            return float(x), float(y)
    return None


def _sample_vqa_scene(rng: np.random.Generator, size: int) -> VQAScene:
    s = size
    procedure = "Colonoscopy" if rng.random() < 0.65 else "Gastroscopy"
    lumen = (float(rng.uniform(0.3, 0.7) * s), float(rng.uniform(0.3, 0.7) * s), float(rng.uniform(0.08, 0.15) * s))
    artefact = bool(rng.random() < 0.4)
    text = None
    if rng.random() < 0.5:
        text = f"{rng.integers(1, 29):02d}.{rng.integers(1, 13):02d}.{rng.integers(10, 24):02d}"
    boxes = [box for box, drawn in ((ARTEFACT_BOX, artefact), (TEXT_BOX, text)) if drawn]
    taken: list[Footprint] = []
    landmark = None
    if rng.random() < 0.4:
        names = [name for name, proc in LANDMARKS.items() if proc == procedure]
        name, colour = names[rng.integers(len(names))], tuple(LANDMARK_COLOURS)[rng.integers(len(LANDMARK_COLOURS))]
        radius = float(rng.uniform(0.12, 0.18) * s)
        spot = _place(rng, s, radius, boxes, taken, 4.0)
        if spot:
            landmark = Landmark(name, colour, spot, radius)
            taken.append((*spot, radius))
    polyps: list[Polyp] = []
    n_polyps = int(rng.choice([0, 1, 1, 2, 3]) if procedure == "Colonoscopy" else rng.choice([0, 0, 0, 1]))
    for _ in range(n_polyps):
        size_class = tuple(POLYP_SIZES)[rng.integers(len(POLYP_SIZES))]
        lo, hi = POLYP_SIZES[size_class]
        radius = float(rng.uniform(lo, hi) * s)
        paris = POLYP_TYPES[rng.integers(len(POLYP_TYPES))]
        colour = tuple(POLYP_COLOURS)[rng.integers(len(POLYP_COLOURS))]
        angle = float(rng.uniform(0, 2 * np.pi))
        footprint = radius * (2.1 if paris == "Paris ip" else 1.0)  # the stalk needs room too
        spot = _place(rng, s, footprint, boxes, taken, 8.0)
        if spot:
            polyps.append(Polyp(spot, radius, colour, size_class, paris, angle))
            taken.append((*spot, footprint))
    resection = None
    if not polyps and procedure == "Colonoscopy" and rng.random() < 0.3:
        radius = float(rng.uniform(0.06, 0.1) * s)
        spot = _place(rng, s, radius, boxes, taken, 4.0)
        resection = (spot[0], spot[1], radius) if spot else None
    instruments: list[Instrument] = []
    n_instruments = int(rng.choice([0, 0, 1, 1, 2]))
    for index in rng.permutation(len(INSTRUMENTS))[:n_instruments]:
        name = INSTRUMENTS[index]
        edge, along = rng.integers(3), rng.uniform(0.35, 0.9) * s  # enter from the bottom, right or top
        start = [(along, float(s)), (float(s), along), (along, 0.0)][edge]
        target = np.array([0.5 * s, 0.5 * s]) + rng.uniform(-0.15, 0.15, 2) * s
        direction = (target - start) / np.linalg.norm(target - start)
        end = np.array(start) + direction * rng.uniform(0.35, 0.6) * s
        half_width = {"Injection needle": 0.015, "Tube": 0.035}.get(name, 0.022) * s
        instruments.append(Instrument(name, (float(start[0]), float(start[1])), (float(end[0]), float(end[1])), half_width))
    segmentation = None
    if polyps and rng.random() < 0.35:
        segmentation = "polyp"
    elif instruments and rng.random() < 0.5:
        segmentation = "instrument"
    return VQAScene(s, procedure, lumen, landmark, tuple(polyps), resection, tuple(instruments), artefact, text, segmentation)


def _landmark_alpha(landmark: Landmark, size: int) -> np.ndarray:
    (x, y), r = landmark.center, landmark.radius
    if landmark.name == "Pylorus":
        return _ring(size, x, y, 0.7 * r, 0.2 * r)
    if landmark.name == "Ileum":
        return np.maximum(_ring(size, x, y, 0.8 * r, 0.1 * r), _ring(size, x, y, 0.45 * r, 0.1 * r))
    if landmark.name == "Cecum":  # a crescent fold
        return _disc(size, x, y, r) * (1.0 - _disc(size, x + 0.3 * r, y - 0.3 * r, 0.85 * r))
    gx, gy = _coords(size)  # Z-line: a wavy band
    wave = y + 0.25 * r * np.sin(2 * np.pi * (gx - x) / (0.7 * r))
    return np.clip(0.16 * r - np.abs(gy - wave) + 0.5, 0, 1) * np.clip(r - np.abs(gx - x) + 0.5, 0, 1)


def _instrument_alpha(tool: Instrument, size: int) -> np.ndarray:
    (x0, y0), (x1, y1), w = tool.start, tool.end, tool.half_width
    alpha = _capsule(size, x0, y0, x1, y1, w)
    ux, uy = (x1 - x0), (y1 - y0)
    norm = np.hypot(ux, uy)
    ux, uy = ux / norm, uy / norm
    if tool.name == "Biopsy forceps":  # two open jaws
        for sign in (-1, 1):
            alpha = np.maximum(alpha, _disc(size, x1 + ux * w - sign * uy * 1.2 * w, y1 + uy * w + sign * ux * 1.2 * w, 1.1 * w))
    elif tool.name == "Polyp snare":  # a wire loop ahead of the sheath
        alpha = np.maximum(alpha, _ring(size, x1 + ux * 3 * w, y1 + uy * 3 * w, 2.5 * w, 0.35 * w + 0.5))
    elif tool.name == "Metal clip":  # two prongs
        for sign in (-1, 1):
            tip = (x1 + ux * 2.5 * w - sign * uy * w, y1 + uy * 2.5 * w + sign * ux * w)
            alpha = np.maximum(alpha, _capsule(size, x1, y1, *tip, 0.45 * w))
    return alpha


def _render_vqa(scene: VQAScene, rng: np.random.Generator, size: int) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """The image, and the visible (unoccluded) coverage of landmark, instruments and polyps."""
    s = size
    gx, gy = _coords(s)
    shade = 1.0 + 0.07 * _smooth_noise(rng, s, 6)
    lx, ly, lr = scene.lumen
    lumen_distance = np.hypot(gx - lx, gy - ly)
    if scene.procedure == "Colonoscopy":  # haustral folds around the lumen
        for k in range(1, 4):
            shade *= 1.0 - 0.12 * np.clip(0.025 * s - np.abs(lumen_distance - lr * (1 + 1.3 * k)), 0, 1)
    shade *= 1.0 - 0.65 * np.exp(-((lumen_distance / lr) ** 2))
    shade *= 1.0 - 0.45 * (np.hypot(gx - 0.5 * s, gy - 0.5 * s) / (0.71 * s)) ** 2  # vignette
    canvas = shade[..., None] * np.asarray(_MUCOSA[scene.procedure], np.float32)

    landmark = np.zeros((s, s), np.float32)
    if scene.landmark:
        landmark = _landmark_alpha(scene.landmark, s)
        if scene.landmark.name == "Pylorus":
            _paint(canvas, _disc(s, *scene.landmark.center, 0.45 * scene.landmark.radius), (45, 20, 25))
        _paint(canvas, landmark, LANDMARK_COLOURS[scene.landmark.colour])
    if scene.resection:
        x, y, r = scene.resection
        patch = _ellipse(s, x, y, r, 0.75 * r) * np.clip(1.2 + _smooth_noise(rng, s, 12), 0, 1)
        _paint(canvas, patch, RESECTION_BLUE)
    tools = np.zeros((s, s), np.float32)
    for tool in scene.instruments:
        alpha = _instrument_alpha(tool, s)
        grey = (150, 152, 156) if tool.name == "Tube" else INSTRUMENT_GREY
        _paint(canvas, alpha, grey)
        _paint(canvas, _capsule(s, *tool.start, *tool.end, 0.35 * tool.half_width) * 0.6, (200, 202, 205))  # sheen
        tools = np.maximum(tools, alpha)
    polyps = np.zeros((s, s), np.float32)
    for polyp in scene.polyps:
        (x, y), r = polyp.center, polyp.radius
        if polyp.paris == "Paris ip":
            tip = (x + np.cos(polyp.stalk_angle) * 1.9 * r, y + np.sin(polyp.stalk_angle) * 1.9 * r)
            _paint(canvas, _capsule(s, x, y, *tip, 0.3 * r), (150, 60, 62))
        head = _ellipse(s, x, y, r, 0.6 * r) if polyp.paris == "Paris iia" else _disc(s, x, y, r)
        relief = np.clip(1.05 - 0.15 * np.hypot(gx - x, gy - y) / r, 0.9, 1.05)  # domed: darker rim
        _paint(canvas, head, relief[..., None] * np.asarray(POLYP_COLOURS[polyp.colour], np.float32))
        polyps = np.maximum(polyps, head)
    canvas += _noise(rng, canvas.shape, 2.5)
    image = _to_image(canvas)

    overlay = np.zeros((s, s), np.float32)
    draw = ImageDraw.Draw(image)
    if scene.artefact:
        x0, y0, x1, y1 = (round(v) for v in _box_px(ARTEFACT_BOX, s))
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(0, 0, 0))
        green, inset = (40, 200, 70), max(2, round(0.03 * s))
        draw.rectangle((x0 + inset, y0 + inset, x1 - 1 - inset, y1 - 1 - inset), outline=green, width=max(1, s // 112))
        draw.arc((x0 + 2 * inset, y0 + 2 * inset, x1 - 2 * inset, y1 - 2 * inset), 200, 340, fill=green, width=max(2, s // 56))
        overlay[y0:y1, x0:x1] = 1
    if scene.text:
        x0, y0, x1, y1 = (round(v) for v in _box_px(TEXT_BOX, s))
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(0, 0, 0))
        draw.text((x0 + 2, y0 + 1), scene.text, fill=(255, 255, 255), font=_font(max(8, round(0.055 * s))))
        overlay[y0:y1, x0:x1] = 1
    visible = 1.0 - overlay
    masks = {
        "polyp": polyps * visible,
        "instrument": tools * (1.0 - polyps) * visible,
        "landmark": landmark * (1.0 - tools) * (1.0 - polyps) * visible,
    }
    return image, masks


@functools.lru_cache(maxsize=4)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


def _cells(mask: np.ndarray) -> tuple[str, ...]:
    """Grid cells a visible mask covers (at least CELL_MIN_FRACTION of the cell, else its best cell)."""
    bounds = grid_bounds(mask.shape[0])
    cover = np.array(
        [[(mask[bounds[r] : bounds[r + 1], bounds[c] : bounds[c + 1]] > 0.5).mean() for c in range(3)] for r in range(3)]
    )
    if not cover.any():
        return ()
    cells = tuple(GRID[r][c] for r in range(3) for c in range(3) if cover[r, c] >= CELL_MIN_FRACTION)
    return cells or (GRID_ORDER[int(cover.argmax())],)


def _ordered(values: list[str], order: Sequence[str]) -> list[str]:
    return [v for v in order if v in values]


def vqa_answers(scene: VQAScene) -> dict[str, list[str]]:
    """Question short name (``VQA_QUESTIONS``) -> answers, all read off the scene."""
    largest = max(scene.polyps, key=lambda p: p.radius) if scene.polyps else None
    if scene.polyps:
        removed = ["No"]
    else:
        removed = ["Yes"] if scene.resection else ["Not relevant"]
    none, landmark = ["None"], scene.landmark
    return {
        "procedure": [scene.procedure],
        "removed": removed,
        "easy": ["Not relevant"] if largest is None else (["No"] if largest.size_class == "< 5mm" else ["Yes"]),
        "artefact": ["Yes" if scene.artefact else "No"],
        "text": ["Yes" if scene.text else "No"],
        "abnormality_colour": _ordered([p.colour for p in scene.polyps], tuple(POLYP_COLOURS)) or none,
        "landmark_colour": [landmark.colour] if landmark else none,
        "findings": [str(len(scene.polyps))],
        "polyps": [str(len(scene.polyps))],
        "instruments": [str(len(scene.instruments))],
        "abnormality_location": _ordered([grid_cell(*p.center, scene.size) for p in scene.polyps], GRID_ORDER) or none,
        "instrument_location": list(scene.instrument_cells) or none,
        "abnormalities": ["Polyp"] if scene.polyps else none,
        "landmarks": [landmark.name] if landmark else none,
        "instrument_types": _ordered([t.name for t in scene.instruments], INSTRUMENTS) or none,
        "landmark_location": list(scene.landmark_cells) or none,
        "size": [largest.size_class] if largest else ["Not relevant"],
        "type": [largest.paris] if largest else ["Not relevant"],
    }


def vqa_labels(image_id: str, scene: VQAScene) -> list[dict[str, Any]]:
    """The gt.json "Labels" of one image, segmentation label included when the image has one."""
    labels = [
        {"Question": VQA_QUESTIONS[key], "AnswerType": _ANSWER_TYPES.get(key, "Text"), "Answer": answer}
        for key, answer in vqa_answers(scene).items()
    ]
    if scene.segmentation:
        # As released: the answer is a bare mask file name (a string, not a list).
        question = VQA_SEGMENTATION_QUESTIONS[scene.segmentation]
        labels.append({"Question": question, "AnswerType": "segmentation", "Answer": f"{image_id}_mask.png"})
    return labels


def _vqa_image_id(rng: np.random.Generator) -> str:
    """An ID shaped like the release's (25 lower-case base-36 characters starting with "cl")."""
    alphabet = np.array(list("0123456789abcdefghijklmnopqrstuvwxyz"))
    return "cl" + "".join(alphabet[rng.integers(0, 36, 23)])


def write_medvqa_gi(
    root: str | Path, seed: int = 0, n: int = 300, image_size: int = 224, progress: Progress | None = None
) -> SyntheticSet:
    """ImageCLEFmed MEDVQA-GI 2023 development set (no official split). Layout under ``root``::

        gt.json                      [{"ImageID", "Labels": [{"Question", "AnswerType", "Answer"}, ...]}, ...]
        images/<ImageID>.jpg         RGB JPEG
        masks/<ImageID>_mask.png     for images with a segmentation label (its "Answer" names it)
    """
    root = _new_root(root)
    out = SyntheticSet(root)
    entries = []
    for index in range(n):
        rng = _rng(seed, "vqa", "all", index)
        image_id = _vqa_image_id(rng)
        scene = _sample_vqa_scene(rng, image_size)
        image, masks = _render_vqa(scene, rng, image_size)
        scene = replace(scene, instrument_cells=_cells(masks["instrument"]), landmark_cells=_cells(masks["landmark"]))
        _save_jpeg(image, root / "images" / f"{image_id}.jpg")
        if scene.segmentation:
            mask = np.where(masks[scene.segmentation] > 0.5, 255, 0).astype(np.uint8)
            _save_png(Image.fromarray(mask), root / "masks" / f"{image_id}_mask.png")
        entries.append({"ImageID": image_id, "Labels": vqa_labels(image_id, scene)})
        out.scenes[image_id] = scene
        if progress:
            progress("vqa", index + 1, n)
    _write_text(root / "gt.json", json.dumps(entries, indent=4, ensure_ascii=False) + "\n")
    return out


# ----------------------------------------------------------------------------- chest radiographs

CHEXBERT_LABELS = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices", "No Finding",
)
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3  # CheXbert's class indices, as REFERENCE.md section 5 fixes
CHEST_LUNG_X = {"right": 0.31, "left": 0.69}  # lung centre x (fraction) by patient side: right is image-left
CHEST_LUNG = (0.45, 0.14, 0.3)  # lung centre y, half-width, half-height (fractions)
CHEST_ROWS = {"upper": (0.15, 0.35), "middle": (0.35, 0.55), "lower": (0.55, 0.75)}  # lung zones, y fractions
CHEST_HEART = (0.54, 0.6, 0.13)  # heart centre x, y, half-height (fractions)
THORAX_WIDTH = 0.66  # inner thoracic width (fraction): the cardiothoracic ratio's denominator
CARDIOMEGALY_RATIO = 0.5  # drawn ratios are 0.40-0.47 (normal) or 0.58-0.66 (enlarged)
_FIELD_OF_VIEW_MM = 350.0  # image side in millimetres, for nodule sizes in the reports


@dataclass(frozen=True)
class ChestScene:
    """One chest study (frontal view; IU X-RAY adds a lateral view of the same findings)."""

    size: int  # image side, pixels
    heart_ratio: float  # cardiothoracic ratio
    effusion: str | None  # patient side
    pneumothorax: str | None
    atelectasis: str | None  # a basal plate-like opacity, reported as possible atelectasis
    nodule: tuple[str, str] | None  # (side, zone row)
    nodule_center: tuple[float, float] | None  # pixels, frontal view
    nodule_radius: float  # pixels
    device: bool  # an endotracheal tube (MIMIC-CXR only)

    @property
    def cardiomegaly(self) -> bool:
        return self.heart_ratio > CARDIOMEGALY_RATIO

    @property
    def nodule_mm(self) -> int:
        return round(2 * self.nodule_radius / self.size * _FIELD_OF_VIEW_MM)


def _inside_lung(x: float, y: float, side: str, size: int, shrink: float) -> bool:
    cy, rx, ry = CHEST_LUNG
    return ((x / size - CHEST_LUNG_X[side]) / (rx - shrink)) ** 2 + ((y / size - cy) / (ry - shrink)) ** 2 < 1.0


def _sample_chest_scene(rng: np.random.Generator, size: int, with_device: bool) -> ChestScene:
    sides = ("right", "left")
    ratio = float(rng.uniform(0.58, 0.66) if rng.random() < 0.3 else rng.uniform(0.40, 0.47))
    effusion = sides[rng.integers(2)] if rng.random() < 0.3 else None
    pneumothorax = sides[rng.integers(2)] if rng.random() < 0.15 else None
    atelectasis = sides[rng.integers(2)] if rng.random() < 0.25 else None
    if atelectasis and atelectasis == effusion:  # the effusion would hide it
        atelectasis = None
    nodule, center, radius = None, None, 0.0
    if rng.random() < 0.3:
        radius = float(rng.uniform(0.018, 0.03) * size)
        hx, hy, hh = CHEST_HEART
        heart_rx = ratio * THORAX_WIDTH / 2
        for zone in rng.permutation(6):
            side, row = sides[zone // 3], ("upper", "middle", "lower")[zone % 3]
            if (row == "lower" and side == effusion) or (row == "upper" and side == pneumothorax):
                continue  # hidden by the effusion, or lying in the pneumothorax
            y0, y1 = CHEST_ROWS[row]
            for _ in range(30):
                x = rng.uniform(0.1, 0.9) * size
                y = rng.uniform(y0 * size + radius + 2, y1 * size - radius - 2)
                clear_of_heart = ((x / size - hx) / (heart_rx + 0.03)) ** 2 + ((y / size - hy) / (hh + 0.03)) ** 2 > 1.0
                if _inside_lung(x, y, side, size, 0.03) and clear_of_heart:
                    nodule, center = (side, row), (float(x), float(y))
                    break
            if nodule:
                break
        radius = radius if nodule else 0.0
    device = with_device and bool(rng.random() < 0.25)
    return ChestScene(size, ratio, effusion, pneumothorax, atelectasis, nodule, center, radius, device)


def _lung_alpha(side: str, size: int) -> np.ndarray:
    cy, rx, ry = CHEST_LUNG
    return _ellipse(size, CHEST_LUNG_X[side] * size, cy * size, rx * size, ry * size)


def _render_chest_frontal(scene: ChestScene, rng: np.random.Generator, size: int) -> Image.Image:
    s = size
    gx, gy = _coords(s)
    canvas = np.full((s, s), 14.0, np.float32)
    body = _ellipse(s, 0.5 * s, 0.56 * s, 0.44 * s, 0.5 * s, 4)
    _paint(canvas, body, 112)
    _paint(canvas, _capsule(s, 0.5 * s, 0.0, 0.5 * s, s, 0.035 * s), 126)  # spine
    for sign in (-1, 1):  # clavicles
        _paint(canvas, _capsule(s, (0.5 + sign * 0.05) * s, 0.17 * s, (0.5 + sign * 0.3) * s, 0.12 * s, 0.012 * s), 140)
    markings = _smooth_noise(rng, s, 14) * 4.0  # lung markings, within about +-12 grey levels
    for side in ("right", "left"):
        lung = _lung_alpha(side, s)
        _paint(canvas, lung, 48)
        canvas += lung * markings
        cx = CHEST_LUNG_X[side] * s
        for k in range(5):  # posterior ribs: faint arcs over the lung
            arc = 0.2 * s + k * 0.11 * s + 0.25 * ((gx - cx) ** 2) / s
            canvas += 12.0 * lung * np.clip(0.012 * s - np.abs(gy - arc) + 0.5, 0, 1)
    hx, hy, hh = CHEST_HEART
    _paint(canvas, _ellipse(s, hx * s, hy * s, scene.heart_ratio * THORAX_WIDTH / 2 * s, hh * s), 132)
    if scene.atelectasis:
        cx = CHEST_LUNG_X[scene.atelectasis] * s
        band = _capsule(s, cx - 0.08 * s, 0.6 * s, cx + 0.06 * s, 0.61 * s, 0.014 * s)
        _paint(canvas, band * _lung_alpha(scene.atelectasis, s), 100)
    if scene.effusion:
        cx = CHEST_LUNG_X[scene.effusion] * s
        lateral = np.clip((np.abs(gx - 0.5 * s) - 0.05 * s) / (0.28 * s), 0, 1)
        meniscus = (0.62 - 0.07 * lateral) * s  # fluid climbs the lateral chest wall
        same_side = (gx < 0.5 * s) if scene.effusion == "right" else (gx >= 0.5 * s)
        cy, rx, ry = CHEST_LUNG
        basin = _ellipse(s, cx, cy * s, (rx + 0.015) * s, (ry + 0.015) * s) * same_side
        _paint(canvas, basin * np.clip((gy - meniscus) / 3.0, 0, 1), 116)
    if scene.pneumothorax:
        side = scene.pneumothorax
        cx, medial = CHEST_LUNG_X[side] * s, (1 if side == "right" else -1)
        cy, rx, ry = CHEST_LUNG
        collapsed = _ellipse(s, cx + medial * 0.04 * s, (cy + 0.03) * s, 0.1 * s, 0.27 * s)
        air = _lung_alpha(side, s) * (1.0 - collapsed) * (gy < 0.4 * s)
        _paint(canvas, air, 12)  # no lung markings beyond the pleural line
        edge = np.clip(1.0 - np.abs(collapsed - 0.5) * 2, 0, 1) * (gy < 0.4 * s)
        _paint(canvas, edge * 0.8, 95)
    np.minimum(canvas, ANATOMY_MAX, out=canvas)
    if scene.nodule_center:
        _paint(canvas, _disc(s, *scene.nodule_center, scene.nodule_radius), 175)
    if scene.device:
        _paint(canvas, _capsule(s, 0.5 * s, 0.0, 0.5 * s, 0.3 * s, 0.008 * s), 230)
    canvas += _noise(rng, (s, s), 3.0)
    return _to_image(canvas)


def _render_chest_lateral(scene: ChestScene, rng: np.random.Generator, size: int) -> Image.Image:
    """The same findings seen from the side (anterior on the image's left)."""
    s = size
    gx, gy = _coords(s)
    canvas = np.full((s, s), 14.0, np.float32)
    _paint(canvas, _ellipse(s, 0.5 * s, 0.56 * s, 0.42 * s, 0.5 * s, 3), 112)
    lung = _ellipse(s, 0.52 * s, 0.45 * s, 0.28 * s, 0.3 * s)
    _paint(canvas, lung, 50)
    canvas += lung * _smooth_noise(rng, s, 14) * 4.0
    _paint(canvas, _capsule(s, 0.8 * s, 0.05 * s, 0.8 * s, 0.95 * s, 0.045 * s), 130)  # spine, posterior
    _paint(canvas, _capsule(s, 0.2 * s, 0.2 * s, 0.22 * s, 0.7 * s, 0.015 * s), 128)  # sternum, anterior
    heart_rx = 0.13 * s * scene.heart_ratio / 0.45
    _paint(canvas, _ellipse(s, 0.24 * s + heart_rx, 0.62 * s, heart_rx, 0.14 * s), 132)
    if scene.atelectasis:
        _paint(canvas, _capsule(s, 0.38 * s, 0.6 * s, 0.62 * s, 0.61 * s, 0.014 * s) * lung, 100)
    if scene.effusion:  # the posterior costophrenic sulcus fills first
        sulcus = (gx > 0.55 * s) * np.clip((gy - (0.68 * s - 0.05 * (gx - 0.55 * s))) / 3.0, 0, 1)
        _paint(canvas, _ellipse(s, 0.52 * s, 0.45 * s, 0.3 * s, 0.32 * s) * sulcus, 116)
    np.minimum(canvas, ANATOMY_MAX, out=canvas)
    if scene.nodule_center:
        _paint(canvas, _disc(s, 0.5 * s, scene.nodule_center[1], scene.nodule_radius), 175)
    canvas += _noise(rng, (s, s), 3.0)
    return _to_image(canvas)


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


_R2GEN_SPLITS = (("train", "val", "test"), (0.7, 0.1, 0.2))


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
    root = _new_root(root)
    out = SyntheticSet(root)
    annotation: dict[str, list[dict[str, Any]]] = {name: [] for name in _R2GEN_SPLITS[0]}
    reports = [["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]]
    projections = [["uid", "filename", "projection"]]
    for index, (split, _) in enumerate(_splits(n, *_R2GEN_SPLITS)):
        rng = _rng(seed, "iu", "all", index)
        uid = index + 1
        study = f"CXR{uid}_IM-{uid % 10000:04d}"
        scene = _sample_chest_scene(rng, image_size, with_device=False)
        _save_png(_render_chest_frontal(scene, rng, image_size), root / "images" / study / "0.png")
        _save_png(_render_chest_lateral(scene, rng, image_size), root / "images" / study / "1.png")
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
    _write_text(root / "annotation.json", json.dumps(annotation, ensure_ascii=False))
    _write_csv(root / "indiana_reports.csv", reports)
    _write_csv(root / "indiana_projections.csv", projections)
    return out


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
    root = _new_root(root)
    out = SyntheticSet(root)
    annotation: dict[str, list[dict[str, Any]]] = {name: [] for name in _R2GEN_SPLITS[0]}
    labels_rows: list[list[Any]] = [["study_id", *CHEXBERT_LABELS]]
    for index, (split, _) in enumerate(_splits(n, *_R2GEN_SPLITS)):
        rng = _rng(seed, "mimic", "all", index)
        # Disjoint ranges per sample keep the IDs unique without depending on n, and the first
        # 10,000 samples inside the real ranges (subjects p10..p19, studies 5xxxxxxx).
        subject_id = 10_000_000 + index * 997 + int(rng.integers(997))
        study_id = 50_000_000 + index * 997 + int(rng.integers(997))
        dicom_id = "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, 5))
        scene = _sample_chest_scene(rng, image_size, with_device=True)
        path = f"p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"
        _save_jpeg(_render_chest_frontal(scene, rng, image_size), root / "images" / path)
        report, labels = mimic_report(scene)
        entry = {"id": dicom_id, "study_id": study_id, "subject_id": subject_id, "report": report}
        annotation[split].append({**entry, "image_path": [path], "split": split})
        labels_rows.append([study_id, *labels.values()])
        out.scenes[dicom_id] = scene
        if progress:
            progress("mimic", index + 1, n)
    _write_text(root / "annotation.json", json.dumps(annotation, ensure_ascii=False))
    _write_csv(root / "chexbert_labels.csv", labels_rows)
    return out


# ----------------------------------------------------------------------------- all of it

TASKS = ("caption", "rocov2", "vqa", "iu", "mimic")
TASK_DIRS = {
    "caption": "imageclef_caption_2023",
    "rocov2": "rocov2",
    "vqa": "medvqa_gi_2023",
    "iu": "iu_xray",
    "mimic": "mimic_cxr",
}
DEFAULT_SIZES = {"caption": 300, "rocov2": 150, "vqa": 300, "iu": 200, "mimic": 300}
_WRITERS = {
    "caption": write_imageclef_caption,
    "rocov2": write_rocov2,
    "vqa": write_medvqa_gi,
    "iu": write_iu_xray,
    "mimic": write_mimic_cxr,
}


def make_demo_data(
    out_dir: str | Path,
    seed: int = 0,
    n_caption: int = DEFAULT_SIZES["caption"],
    n_rocov2: int = DEFAULT_SIZES["rocov2"],
    n_vqa: int = DEFAULT_SIZES["vqa"],
    n_iu: int = DEFAULT_SIZES["iu"],
    n_mimic: int = DEFAULT_SIZES["mimic"],
    image_size: int = 224,
    tasks: Sequence[str] = TASKS,
    overwrite: bool = False,
    progress: Progress | None = None,
    tokenizers: bool = True,
) -> dict[str, Path]:
    """Write the demo sets under ``out_dir/<TASK_DIRS[task]>``; returns each task's root.

    With ``tokenizers`` (the default) the demo tokenizers, trained on the train-split texts of
    these sets, go to ``out_dir/tokenizers/opt`` (the LLM's, GPT-2 byte-level BPE) and
    ``out_dir/tokenizers/bert`` (the Q-Former's WordPiece); see ``demo_tokenizer.py``.
    Each set, and the tokenizers folder, is written to ``<name>.partial`` and renamed into place
    when complete, so an interrupted run never leaves a half-written one under the final name.
    """
    from .demo_tokenizer import TOKENIZERS_DIR, demo_texts, write_demo_tokenizers

    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    unknown = [t for t in tasks if t not in _WRITERS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    sizes = {"caption": n_caption, "rocov2": n_rocov2, "vqa": n_vqa, "iu": n_iu, "mimic": n_mimic}
    out = Path(out_dir)
    roots = {task: out / TASK_DIRS[task] for task in tasks}
    tokenizer_root = out / TOKENIZERS_DIR
    targets = [*roots.values(), *([tokenizer_root] if tokenizers else [])]
    existing = [str(root) for root in targets if root.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"already there: {', '.join(existing)} (pass overwrite=True / --force to replace)")
    for task, root in roots.items():
        partial = root.with_name(root.name + ".partial")
        if partial.exists():  # left by an interrupted run
            shutil.rmtree(partial)
        _WRITERS[task](partial, seed=seed, n=sizes[task], image_size=image_size, progress=progress)
        if root.exists():
            shutil.rmtree(root)
        os.replace(partial, root)
    if tokenizers:
        partial = tokenizer_root.with_name(tokenizer_root.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        write_demo_tokenizers(partial, demo_texts(roots))
        if tokenizer_root.exists():
            shutil.rmtree(tokenizer_root)
        os.replace(partial, tokenizer_root)
    return roots
