"""Synthetic chest radiographs, shared by the IU X-RAY and MIMIC-CXR sets: a scene of findings
(heart size, effusion, pneumothorax, atelectasis, a nodule, a tube) drawn in a frontal and a
lateral view. The reports and labels that describe a scene live with their set's writer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .base import ANATOMY_MAX, capsule, coords, disc, ellipse, noise, paint, smooth_noise, to_image

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


def sample_chest_scene(rng: np.random.Generator, size: int, with_device: bool) -> ChestScene:
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
    return ellipse(size, CHEST_LUNG_X[side] * size, cy * size, rx * size, ry * size)


def render_chest_frontal(scene: ChestScene, rng: np.random.Generator, size: int) -> Image.Image:
    s = size
    gx, gy = coords(s)
    canvas = np.full((s, s), 14.0, np.float32)
    body = ellipse(s, 0.5 * s, 0.56 * s, 0.44 * s, 0.5 * s, 4)
    paint(canvas, body, 112)
    paint(canvas, capsule(s, 0.5 * s, 0.0, 0.5 * s, s, 0.035 * s), 126)  # spine
    for sign in (-1, 1):  # clavicles
        paint(canvas, capsule(s, (0.5 + sign * 0.05) * s, 0.17 * s, (0.5 + sign * 0.3) * s, 0.12 * s, 0.012 * s), 140)
    markings = smooth_noise(rng, s, 14) * 4.0  # lung markings, within about +-12 grey levels
    for side in ("right", "left"):
        lung = _lung_alpha(side, s)
        paint(canvas, lung, 48)
        canvas += lung * markings
        cx = CHEST_LUNG_X[side] * s
        for k in range(5):  # posterior ribs: faint arcs over the lung
            arc = 0.2 * s + k * 0.11 * s + 0.25 * ((gx - cx) ** 2) / s
            canvas += 12.0 * lung * np.clip(0.012 * s - np.abs(gy - arc) + 0.5, 0, 1)
    hx, hy, hh = CHEST_HEART
    paint(canvas, ellipse(s, hx * s, hy * s, scene.heart_ratio * THORAX_WIDTH / 2 * s, hh * s), 132)
    if scene.atelectasis:
        cx = CHEST_LUNG_X[scene.atelectasis] * s
        band = capsule(s, cx - 0.08 * s, 0.6 * s, cx + 0.06 * s, 0.61 * s, 0.014 * s)
        paint(canvas, band * _lung_alpha(scene.atelectasis, s), 100)
    if scene.effusion:
        cx = CHEST_LUNG_X[scene.effusion] * s
        lateral = np.clip((np.abs(gx - 0.5 * s) - 0.05 * s) / (0.28 * s), 0, 1)
        meniscus = (0.62 - 0.07 * lateral) * s  # fluid climbs the lateral chest wall
        same_side = (gx < 0.5 * s) if scene.effusion == "right" else (gx >= 0.5 * s)
        cy, rx, ry = CHEST_LUNG
        basin = ellipse(s, cx, cy * s, (rx + 0.015) * s, (ry + 0.015) * s) * same_side
        paint(canvas, basin * np.clip((gy - meniscus) / 3.0, 0, 1), 116)
    if scene.pneumothorax:
        side = scene.pneumothorax
        cx, medial = CHEST_LUNG_X[side] * s, (1 if side == "right" else -1)
        cy, rx, ry = CHEST_LUNG
        collapsed = ellipse(s, cx + medial * 0.04 * s, (cy + 0.03) * s, 0.1 * s, 0.27 * s)
        air = _lung_alpha(side, s) * (1.0 - collapsed) * (gy < 0.4 * s)
        paint(canvas, air, 12)  # no lung markings beyond the pleural line
        edge = np.clip(1.0 - np.abs(collapsed - 0.5) * 2, 0, 1) * (gy < 0.4 * s)
        paint(canvas, edge * 0.8, 95)
    np.minimum(canvas, ANATOMY_MAX, out=canvas)
    if scene.nodule_center:
        paint(canvas, disc(s, *scene.nodule_center, scene.nodule_radius), 175)
    if scene.device:
        paint(canvas, capsule(s, 0.5 * s, 0.0, 0.5 * s, 0.3 * s, 0.008 * s), 230)
    canvas += noise(rng, (s, s), 3.0)
    return to_image(canvas)


def render_chest_lateral(scene: ChestScene, rng: np.random.Generator, size: int) -> Image.Image:
    """The same findings seen from the side (anterior on the image's left)."""
    s = size
    gx, gy = coords(s)
    canvas = np.full((s, s), 14.0, np.float32)
    paint(canvas, ellipse(s, 0.5 * s, 0.56 * s, 0.42 * s, 0.5 * s, 3), 112)
    lung = ellipse(s, 0.52 * s, 0.45 * s, 0.28 * s, 0.3 * s)
    paint(canvas, lung, 50)
    canvas += lung * smooth_noise(rng, s, 14) * 4.0
    paint(canvas, capsule(s, 0.8 * s, 0.05 * s, 0.8 * s, 0.95 * s, 0.045 * s), 130)  # spine, posterior
    paint(canvas, capsule(s, 0.2 * s, 0.2 * s, 0.22 * s, 0.7 * s, 0.015 * s), 128)  # sternum, anterior
    heart_rx = 0.13 * s * scene.heart_ratio / 0.45
    paint(canvas, ellipse(s, 0.24 * s + heart_rx, 0.62 * s, heart_rx, 0.14 * s), 132)
    if scene.atelectasis:
        paint(canvas, capsule(s, 0.38 * s, 0.6 * s, 0.62 * s, 0.61 * s, 0.014 * s) * lung, 100)
    if scene.effusion:  # the posterior costophrenic sulcus fills first
        sulcus = (gx > 0.55 * s) * np.clip((gy - (0.68 * s - 0.05 * (gx - 0.55 * s))) / 3.0, 0, 1)
        paint(canvas, ellipse(s, 0.52 * s, 0.45 * s, 0.3 * s, 0.32 * s) * sulcus, 116)
    np.minimum(canvas, ANATOMY_MAX, out=canvas)
    if scene.nodule_center:
        paint(canvas, disc(s, 0.5 * s, scene.nodule_center[1], scene.nodule_radius), 175)
    canvas += noise(rng, (s, s), 3.0)
    return to_image(canvas)



R2GEN_SPLITS = (("train", "val", "test"), (0.7, 0.1, 0.2))
