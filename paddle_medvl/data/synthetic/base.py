"""What every synthetic set shares: seeded random streams, split sizes, drawing, deterministic files.

Determinism: sample ``i`` draws only from a numpy Generator seeded by (seed, set, split, i)
(:func:`sample_rng`), so it does not depend on ``n`` or on the other sets; files are written with
fixed encoder settings, ordered keys and "\\n" line ends, so the same seed gives the same bytes.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

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


def new_root(root: str | Path) -> Path:
    """The folder a writer fills; an old set's files would otherwise mix with the new one's."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; write into a new folder (make_demo_data replaces whole sets)")
    return root


def sample_rng(seed: int, stream: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream], _SPLIT_CODES[split], index])


def _split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Samples per split; every split gets at least one when ``n`` allows, the first the rest."""
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    rest = [max(1, round(n * f)) if n >= len(fractions) else 0 for f in fractions[1:]]
    return [n - sum(rest), *rest]


def split_plan(n: int, names: Sequence[str], fractions: Sequence[float]) -> list[tuple[str, int]]:
    """(split, index within the split) for each of ``n`` samples, in writing order."""
    return [(name, i) for name, size in zip(names, _split_sizes(n, fractions)) for i in range(size)]


# ----------------------------------------------------------------------------- drawing

ANATOMY_MAX = 150.0  # radiographs: the anatomy's brightest grey level; findings are drawn brighter


@functools.lru_cache(maxsize=4)
def coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), shared read-only by all shapes of one size."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def disc(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    x, y = coords(size)
    return np.clip(r - np.hypot(x - cx, y - cy) + 0.5, 0.0, 1.0)


def ellipse(size: int, cx: float, cy: float, rx: float, ry: float, p: int = 2) -> np.ndarray:
    """Anti-aliased (super)ellipse coverage; ``p`` > 2 rounds the corners off less.

    The edge uses |u|^p + |v|^p to first order (no p-th root): exact enough for a one-pixel ramp.
    """
    x, y = coords(size)
    u, v = np.abs((x - cx) / np.float32(rx)), np.abs((y - cy) / np.float32(ry))
    return np.clip((1.0 - _ipow(u, p) - _ipow(v, p)) * (min(rx, ry) / p) + 0.5, 0.0, 1.0)


def _ipow(a: np.ndarray, p: int) -> np.ndarray:
    out = a * a
    for _ in range(p - 2):
        out *= a
    return out


def capsule(size: int, x0: float, y0: float, x1: float, y1: float, half_width: float) -> np.ndarray:
    """A thick line segment with round ends."""
    x, y = coords(size)
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    return np.clip(half_width - np.hypot(x - (x0 + t * dx), y - (y0 + t * dy)) + 0.5, 0.0, 1.0)


def ring(size: int, cx: float, cy: float, r: float, half_width: float) -> np.ndarray:
    x, y = coords(size)
    return np.clip(half_width - np.abs(np.hypot(x - cx, y - cy) - r) + 0.5, 0.0, 1.0)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency texture with unit-ish amplitude: a small random grid, upsampled."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC))


def noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Sensor noise (float32 throughout: it is the bulk of the random numbers drawn)."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def paint(canvas: np.ndarray, alpha: np.ndarray, value: float | Sequence[float] | np.ndarray) -> None:
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


def to_image(canvas: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))


def save_jpeg(image: Image.Image, path: Path) -> None:
    """Fixed quality, full-resolution chroma (4:4:4): thin coloured objects keep their colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=JPEG_QUALITY, subsampling=0)


def save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG", compress_level=1)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def write_csv(path: Path, rows: list[list[Any]]) -> None:
    """Comma-separated with minimal quoting (captions and findings contain commas)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    """Tab-separated without any quoting, as the ImageCLEF files are."""
    for row in rows:
        if any("\t" in cell or "\n" in cell for cell in row):
            raise ValueError(f"{path}: a cell holds a tab or a line break: {row!r}")
    write_text(path, "".join("\t".join(row) + "\n" for row in rows))
