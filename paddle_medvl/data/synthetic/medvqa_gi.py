"""Synthetic endoscopy for MEDVQA-GI 2023: polyps, instruments, a landmark, a box artefact and
text drawn on mucosa, and the answers to the 18 official questions read off the drawing.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .base import (
    Progress, SyntheticSet, capsule, coords, disc, ellipse, new_root, noise, paint, ring, sample_rng, save_jpeg, save_png,
    smooth_noise, to_image, write_text,
)

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
        return ring(size, x, y, 0.7 * r, 0.2 * r)
    if landmark.name == "Ileum":
        return np.maximum(ring(size, x, y, 0.8 * r, 0.1 * r), ring(size, x, y, 0.45 * r, 0.1 * r))
    if landmark.name == "Cecum":  # a crescent fold
        return disc(size, x, y, r) * (1.0 - disc(size, x + 0.3 * r, y - 0.3 * r, 0.85 * r))
    gx, gy = coords(size)  # Z-line: a wavy band
    wave = y + 0.25 * r * np.sin(2 * np.pi * (gx - x) / (0.7 * r))
    return np.clip(0.16 * r - np.abs(gy - wave) + 0.5, 0, 1) * np.clip(r - np.abs(gx - x) + 0.5, 0, 1)


def _instrument_alpha(tool: Instrument, size: int) -> np.ndarray:
    (x0, y0), (x1, y1), w = tool.start, tool.end, tool.half_width
    alpha = capsule(size, x0, y0, x1, y1, w)
    ux, uy = (x1 - x0), (y1 - y0)
    norm = np.hypot(ux, uy)
    ux, uy = ux / norm, uy / norm
    if tool.name == "Biopsy forceps":  # two open jaws
        for sign in (-1, 1):
            alpha = np.maximum(alpha, disc(size, x1 + ux * w - sign * uy * 1.2 * w, y1 + uy * w + sign * ux * 1.2 * w, 1.1 * w))
    elif tool.name == "Polyp snare":  # a wire loop ahead of the sheath
        alpha = np.maximum(alpha, ring(size, x1 + ux * 3 * w, y1 + uy * 3 * w, 2.5 * w, 0.35 * w + 0.5))
    elif tool.name == "Metal clip":  # two prongs
        for sign in (-1, 1):
            tip = (x1 + ux * 2.5 * w - sign * uy * w, y1 + uy * 2.5 * w + sign * ux * w)
            alpha = np.maximum(alpha, capsule(size, x1, y1, *tip, 0.45 * w))
    return alpha


def _render_vqa(scene: VQAScene, rng: np.random.Generator, size: int) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """The image, and the visible (unoccluded) coverage of landmark, instruments and polyps."""
    s = size
    gx, gy = coords(s)
    shade = 1.0 + 0.07 * smooth_noise(rng, s, 6)
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
            paint(canvas, disc(s, *scene.landmark.center, 0.45 * scene.landmark.radius), (45, 20, 25))
        paint(canvas, landmark, LANDMARK_COLOURS[scene.landmark.colour])
    if scene.resection:
        x, y, r = scene.resection
        patch = ellipse(s, x, y, r, 0.75 * r) * np.clip(1.2 + smooth_noise(rng, s, 12), 0, 1)
        paint(canvas, patch, RESECTION_BLUE)
    tools = np.zeros((s, s), np.float32)
    for tool in scene.instruments:
        alpha = _instrument_alpha(tool, s)
        grey = (150, 152, 156) if tool.name == "Tube" else INSTRUMENT_GREY
        paint(canvas, alpha, grey)
        paint(canvas, capsule(s, *tool.start, *tool.end, 0.35 * tool.half_width) * 0.6, (200, 202, 205))  # sheen
        tools = np.maximum(tools, alpha)
    polyps = np.zeros((s, s), np.float32)
    for polyp in scene.polyps:
        (x, y), r = polyp.center, polyp.radius
        if polyp.paris == "Paris ip":
            tip = (x + np.cos(polyp.stalk_angle) * 1.9 * r, y + np.sin(polyp.stalk_angle) * 1.9 * r)
            paint(canvas, capsule(s, x, y, *tip, 0.3 * r), (150, 60, 62))
        head = ellipse(s, x, y, r, 0.6 * r) if polyp.paris == "Paris iia" else disc(s, x, y, r)
        relief = np.clip(1.05 - 0.15 * np.hypot(gx - x, gy - y) / r, 0.9, 1.05)  # domed: darker rim
        paint(canvas, head, relief[..., None] * np.asarray(POLYP_COLOURS[polyp.colour], np.float32))
        polyps = np.maximum(polyps, head)
    canvas += noise(rng, canvas.shape, 2.5)
    image = to_image(canvas)

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
    root = new_root(root)
    out = SyntheticSet(root)
    entries = []
    for index in range(n):
        rng = sample_rng(seed, "vqa", "all", index)
        image_id = _vqa_image_id(rng)
        scene = _sample_vqa_scene(rng, image_size)
        image, masks = _render_vqa(scene, rng, image_size)
        scene = replace(scene, instrument_cells=_cells(masks["instrument"]), landmark_cells=_cells(masks["landmark"]))
        save_jpeg(image, root / "images" / f"{image_id}.jpg")
        if scene.segmentation:
            mask = np.where(masks[scene.segmentation] > 0.5, 255, 0).astype(np.uint8)
            save_png(Image.fromarray(mask), root / "masks" / f"{image_id}_mask.png")
        entries.append({"ImageID": image_id, "Labels": vqa_labels(image_id, scene)})
        out.scenes[image_id] = scene
        if progress:
            progress("vqa", index + 1, n)
    write_text(root / "gt.json", json.dumps(entries, indent=4, ensure_ascii=False) + "\n")
    return out
