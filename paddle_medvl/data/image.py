"""Robust image loading and the BLIP-2 image transforms.

Every image reaches the model through :func:`load_image` (any file -> 8-bit RGB or "L", or a
:class:`DataError` naming the file) and a transform from :func:`build_transform`
(-> float32 CHW, CLIP-normalised). A data set's ``__getitem__`` reads::

    transform(load_image(path, min_size=transform.min_decode_size, keep_gray=True))
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .record import DataError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DICOM_SUFFIXES = (".dcm", ".dicom")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# ---------------------------------------------------------------------------- loading


def load_image(path: str | Path, min_size: int | None = None, keep_gray: bool = False) -> Image.Image:
    """Decode any image file to an 8-bit RGB image fully in memory.

    Decoding is always completed here (``load()``), so a truncated JPEG, PNG or TIFF fails now,
    as a :class:`DataError` starting with the path, and not as a half-grey training sample.
    PNGs are also checked for a complete chunk stream up to IEND, since Pillow accepts a PNG
    whose tail is cut off after the last pixel row.

    ``min_size``: JPEGs may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) as long
    as both sides stay >= ``min_size``; large photographs and chest X-rays then decode several
    times faster. Pass the transform's ``min_decode_size``; ``None`` decodes at full size.

    ``keep_gray``: single-channel sources come back as mode "L" instead of RGB. The transform
    takes "L" and makes three channels only after resizing, which saves ~60 % of its work on
    grayscale radiographs.

    Modes: 16-bit and 32-bit grayscale and float images are scaled by their own min..max to
    0..255 (a constant image becomes 0), since their values have no fixed white level.
    Transparent images are composited on black (not the alpha dropped): what is stored under a
    transparent pixel is arbitrary, and black matches a radiograph's background. CMYK uses
    Pillow's conversion (which reads Adobe's inverted CMYK JPEGs); embedded ICC profiles and
    EXIF orientation are not applied, as in the reference pipeline (LAVIS). Multi-frame files
    give their first frame. DICOM files are recognised by suffix or the ``DICM`` magic and
    windowed as ``_load_dicom`` describes.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read image file: {e.strerror}") from None
    with f:
        if Path(path).suffix.lower() in DICOM_SUFFIXES or f.read(132)[128:] == b"DICM":
            im = _load_dicom(path)
        else:
            f.seek(0)
            try:
                im = Image.open(f)
                if min_size and im.format == "JPEG":
                    im.draft(im.mode, (min_size, min_size))
                im.load()
                if im.format == "PNG":
                    f.seek(0)
                    Image.open(f).verify()
                im = _to_8bit(im, path)
            except DataError:
                raise
            except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
                raise DataError(f"{path}: cannot decode image: {e}") from e
    return im if keep_gray or im.mode == "RGB" else im.convert("RGB")


def _to_8bit(im: Image.Image, path: str | Path) -> Image.Image:
    """Any Pillow mode -> "L" (single-channel sources) or "RGB"."""
    transparent = im.mode in _ALPHA_MODES or "transparency" in im.info
    if im.mode in ("L", "RGB") and not transparent:
        return im
    if im.mode.startswith("I") or im.mode == "F":
        return Image.fromarray(_minmax_to_uint8(np.asarray(im), path))
    gray = im.mode in ("1", "L", "LA", "La")
    if not transparent:
        return im.convert("L" if gray else "RGB")
    with_alpha = im.convert("LA" if gray else "RGBA")
    color = with_alpha.convert(with_alpha.mode[:-1])
    return Image.composite(color, Image.new(color.mode, im.size), with_alpha.getchannel("A"))


def _minmax_to_uint8(values: np.ndarray, path: str | Path) -> np.ndarray:
    """Map the array's own min..max linearly to 0..255; a constant array maps to 0."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{path}: image contains NaN or infinite values")
    lo, hi = values.min(), values.max()
    if hi == lo:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _load_dicom(path: str | Path) -> Image.Image:
    """A DICOM image as 8-bit "L" ("RGB" for colour), as a radiologist's viewer first shows it.

    Stored values -> RescaleSlope/RescaleIntercept -> the linear window of the first
    WindowCenter/WindowWidth (DICOM PS3.3 C.11.2.1.2.1), or the data's own min..max when the file
    has no window -> 0..255, inverted for MONOCHROME1 (where high values are dark). Modality and
    VOI LUT sequences and the SIGMOID window function are not applied. Colour DICOMs must be
    8-bit; multi-frame files are refused. Needs the ``dicom`` extra (pydicom).
    """
    try:
        import pydicom
        from pydicom.multival import MultiValue
    except ImportError:
        raise DataError(f'{path}: reading DICOM needs pydicom: pip install -e ".[dicom]"') from None
    try:
        ds = pydicom.dcmread(path)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DataError(f"{path}: multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported")
        pixels = ds.pixel_array
    except DataError:
        raise
    except Exception as e:  # InvalidDicomError, missing pixel data, no decoder for the transfer syntax, ...
        raise DataError(f"{path}: cannot decode DICOM: {e}") from e
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        if pixels.dtype != np.uint8:
            raise DataError(f"{path}: colour DICOM with {pixels.dtype} samples is not supported (8-bit only)")
        return Image.fromarray(pixels)  # pydicom has already converted YBR to RGB

    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    values = pixels.astype(np.float64) * slope + intercept
    if "WindowCenter" in ds and "WindowWidth" in ds:
        # the first window when the file offers several
        centre, width = (
            float(v[0] if isinstance(v, MultiValue) else v) for v in (ds.WindowCenter, ds.WindowWidth)
        )
        if width < 1:
            raise DataError(f"{path}: WindowWidth {width} is below 1")
        if width == 1:
            scaled = np.where(values > centre - 0.5, 255.0, 0.0)
        else:
            scaled = np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) * 255.0
        gray = np.rint(scaled).astype(np.uint8)
    else:
        gray = _minmax_to_uint8(values, path)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray)


# ---------------------------------------------------------------------------- transforms


class ImageTransform:
    """RGB or "L" image -> float32 CHW array, CLIP-normalised; see :func:`build_transform`.

    A class rather than a closure so that it pickles into DataLoader worker processes.
    """

    def __init__(
        self,
        image_size: int,
        train: bool,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hflip: bool = False,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            raise DataError(f"Data.crop_scale must satisfy 0 < min <= max <= 1, got {list(crop_scale)}")
        self.image_size = image_size
        self.train = train
        self.crop_scale = (float(lo), float(hi))
        self.hflip = hflip
        if isinstance(rng, np.random.Generator):
            self._main_rng = rng
        else:
            # None: take the seed from numpy's global RNG, as paddle's DataLoader does for its
            # worker seeds, so that seeding numpy once makes the whole pipeline reproducible.
            seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64)) if rng is None else rng
            self._main_rng = np.random.default_rng(seed)
        self._worker_entropy = int(self._main_rng.integers(0, 2**63 - 1))
        self._worker_key: tuple[int, int] | None = None
        self._worker_rng: np.random.Generator | None = None
        # (x / 255 - mean) / std as one multiply-add per pixel
        self._scale = (1.0 / (255.0 * np.asarray(CLIP_STD, np.float32))).reshape(3, 1, 1)
        self._offset = (-np.asarray(CLIP_MEAN, np.float32) / np.asarray(CLIP_STD, np.float32)).reshape(3, 1, 1)

    @property
    def min_decode_size(self) -> int:
        """The smallest image side that still gives the crop full resolution (for ``load_image``).

        Eval resizes the whole image to ``image_size``; a training crop may cover only
        ``crop_scale[0]`` of the area, i.e. ``sqrt(crop_scale[0])`` of a side.
        """
        if not self.train:
            return self.image_size
        return math.ceil(self.image_size / math.sqrt(self.crop_scale[0]))

    def _rng(self) -> np.random.Generator:
        """This process's random stream.

        Paddle DataLoader workers are processes that each inherit a copy of this object, RNG
        state included, so every worker would draw the same crops. In a worker, the stream is
        instead seeded from (this transform's seed, the worker id, the loader's base seed).
        Paddle draws the base seed from numpy's global RNG in the main process each time a
        loader iterator starts: workers differ from each other and from epoch to epoch, and a
        run seeded the same way repeats exactly. In the main process (num_workers=0) the
        stream is the given Generator or the one seeded at construction.
        """
        paddle_io = sys.modules.get("paddle.io")  # no paddle imported -> not a paddle worker
        info = paddle_io.get_worker_info() if paddle_io is not None else None
        if info is None:
            return self._main_rng
        key = (int(info.id), int(info.seed))
        if key != self._worker_key:
            self._worker_key = key
            self._worker_rng = np.random.default_rng([self._worker_entropy, *key])
        return self._worker_rng

    def _crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box (torchvision's sampling: 10 tries, then a centre crop)."""
        area = width * height
        log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
        for _ in range(10):
            target = area * rng.uniform(*self.crop_scale)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return left, top, left + w, top + h
        ratio = width / height
        if ratio < 3 / 4:
            w, h = width, round(width / (3 / 4))
        elif ratio > 4 / 3:
            w, h = round(height * (4 / 3)), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
        """``rng``: this sample's own stream (``RecordDataset`` keys it by seed, epoch and position);
        None = this transform's stream (see ``_rng``)."""
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        size = (self.image_size, self.image_size)
        flip = False
        if self.train:
            rng = self._rng() if rng is None else rng
            box = self._crop_box(image.width, image.height, rng)
            image = image.resize(size, Image.Resampling.BICUBIC, box=box)
            flip = self.hflip and rng.random() < 0.5
        else:
            image = image.resize(size, Image.Resampling.BICUBIC)
        pixels = np.asarray(image)
        if flip:
            pixels = pixels[:, ::-1]
        # "L" broadcasts to three channels here, after the resize, not before it
        chw = pixels if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        out = np.empty((3, self.image_size, self.image_size), np.float32)
        np.multiply(chw, self._scale, out=out)
        out += self._offset
        return out


def build_transform(
    image_size: int,
    train: bool,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    hflip: bool = False,
    rng: np.random.Generator | int | None = None,
) -> ImageTransform:
    """The BLIP-2 image transform: PIL image -> float32 [3, size, size], CLIP-normalised.

    Takes "RGB" or, faster for radiographs, "L" (``load_image(..., keep_gray=True)``); other
    modes are converted to RGB.

    Eval: resize to (size, size), bicubic, no crop (the whole image, aspect not kept, as LAVIS).
    Train: RandomResizedCrop(size, scale=crop_scale, ratio 3/4..4/3, bicubic), and a horizontal
    flip with probability 1/2 only when ``hflip`` is True. LAVIS flips by default; we do not:
    flipping a radiograph swaps its left and right findings ("left pleural effusion" would then
    describe the right lung), which silently corrupts the caption or report it trains on.

    ``rng``: a numpy Generator, an int seed, or None (seed drawn from numpy's global RNG).
    Workers of a paddle DataLoader get distinct, reproducible streams (see ``ImageTransform._rng``).
    """
    return ImageTransform(image_size, train, crop_scale, hflip, rng)
