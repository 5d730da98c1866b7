"""Image loading (every mode to the right RGB, bad files as DataError) and the transforms."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from PIL import Image

from paddle_medvl.data.image import CLIP_MEAN, CLIP_STD, build_transform, load_image
from paddle_medvl.data.record import DataError


def at(path) -> str:
    """A regex for a message that starts with ``path``."""
    return "^" + re.escape(str(path))


def pixels(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


def saved(tmp_path, im: Image.Image, name: str, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


# ---------------------------------------------------------------------------- modes


def test_rgb_and_gray_png_are_exact(tmp_path):
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4
    assert (pixels(load_image(saved(tmp_path, Image.fromarray(rgb), "rgb.png"))) == rgb).all()
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 13
    out = pixels(load_image(saved(tmp_path, Image.fromarray(gray), "gray.png")))
    assert (out == gray[..., None]).all()


def test_bilevel(tmp_path):
    im = Image.new("1", (4, 2), 0)
    im.putpixel((1, 0), 1)
    out = pixels(load_image(saved(tmp_path, im, "bits.png")))
    assert out[0, 1].tolist() == [255, 255, 255] and out.sum() == 3 * 255


@pytest.mark.parametrize(
    "mode,name", [("I;16", "g.png"), ("I;16", "g.tif"), ("I;16B", "g.tif"), ("I", "g.tif"), ("F", "g.tif")]
)
def test_high_bit_depth_scaled_by_own_range(tmp_path, mode, name):
    values = np.linspace(1000, 3000, 64).round()
    if mode == "I;16B":
        im = Image.frombytes(mode, (64, 1), values.astype(">u2").tobytes())
    else:
        im = Image.fromarray(values.astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode])[None])
    assert im.mode == mode
    out = pixels(load_image(saved(tmp_path, im, name)))
    expected = np.rint((values - 1000) / 2000 * 255)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, -1].tolist() == [255, 255, 255]
    assert (out[0, :, 0] == expected).all() and (out[..., 0] == out[..., 2]).all()


def test_negative_int32_and_constant_16bit(tmp_path):
    im = Image.fromarray(np.array([[-1000, 0, 3000]], np.int32))
    assert pixels(load_image(saved(tmp_path, im, "neg.tif")))[0, :, 0].tolist() == [0, 64, 255]
    flat = Image.fromarray(np.full((3, 3), 4000, np.uint16))
    assert (pixels(load_image(saved(tmp_path, flat, "flat.png"))) == 0).all()


def test_float_nan_is_an_error(tmp_path):
    path = saved(tmp_path, Image.fromarray(np.array([[1.0, np.nan]], np.float32)), "nan.tif")
    with pytest.raises(DataError, match=at(path) + ": .*NaN"):
        load_image(path)


def test_palette_and_its_transparency(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 128, 255, 10, 20, 30] + [0] * 759)
    for x in range(3):
        im.putpixel((x, 0), x)
    row = pixels(load_image(saved(tmp_path, im, "p.png")))[0].tolist()
    assert row == [[255, 0, 0], [0, 128, 255], [10, 20, 30]]
    im.info["transparency"] = 1  # index 1 fully transparent -> black
    row = pixels(load_image(saved(tmp_path, im, "pt.png")))[0].tolist()
    assert row == [[255, 0, 0], [0, 0, 0], [10, 20, 30]]
    im.info["transparency"] = bytes([255, 255, 0])  # per-index alpha
    row = pixels(load_image(saved(tmp_path, im, "pa.png")))[0].tolist()
    assert row == [[255, 0, 0], [0, 128, 255], [0, 0, 0]]


def test_palette_alpha_mode(tmp_path):
    im = Image.new("PA", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), (0, 255))
    im.putpixel((1, 0), (1, 0))
    assert pixels(load_image(saved(tmp_path, im, "pa.tif")))[0].tolist() == [[255, 0, 0], [0, 0, 0]]


def test_alpha_composited_on_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 128], [200, 100, 50, 0]]], np.uint8)
    out = pixels(load_image(saved(tmp_path, Image.fromarray(rgba), "rgba.png")))
    assert out[0, 0].tolist() == [200, 100, 50] and out[0, 2].tolist() == [0, 0, 0]
    assert np.abs(out[0, 1] - np.array([200, 100, 50]) * 128 / 255).max() <= 1
    la = Image.fromarray(np.array([[[90, 255], [90, 0]]], np.uint8))
    assert la.mode == "LA"
    assert pixels(load_image(saved(tmp_path, la, "la.png")))[0, :, 0].tolist() == [90, 0]


def test_cmyk(tmp_path):
    cyan = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    out = pixels(load_image(saved(tmp_path, cyan, "cyan.jpg", quality=95)))
    assert np.abs(out - [0, 255, 255]).max() <= 3
    grey = Image.new("CMYK", (2, 2), (0, 0, 0, 128))
    assert pixels(load_image(saved(tmp_path, grey, "k.tif")))[0, 0].tolist() == [127, 127, 127]


def test_ycbcr(tmp_path):
    out = pixels(load_image(saved(tmp_path, Image.new("YCbCr", (2, 2), (100, 50, 200)), "ycc.tif")))
    # JFIF: R = Y + 1.402 (Cr-128), G = Y - 0.344 (Cb-128) - 0.714 (Cr-128), B = Y + 1.772 (Cb-128)
    assert np.abs(out[0, 0] - [201, 75, 0]).max() <= 1


def test_keep_gray(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    paths = {
        "L": saved(tmp_path, Image.fromarray(gray), "l.png"),
        "I;16": saved(tmp_path, Image.fromarray(gray.astype(np.uint16) * 300), "i16.png"),
        "LA": saved(tmp_path, Image.fromarray(np.stack([gray, np.full_like(gray, 255)], -1)), "la.png"),
        "RGB": saved(tmp_path, Image.fromarray(np.stack([gray] * 3, -1)), "rgb.png"),
    }
    for mode, path in paths.items():
        im = load_image(path, keep_gray=True)
        assert im.mode == ("RGB" if mode == "RGB" else "L")
        assert (np.asarray(im.convert("RGB")) == np.asarray(load_image(path))).all()


def test_jpeg_draft_keeps_min_size(tmp_path):
    path = saved(tmp_path, Image.new("L", (800, 600), 90), "big.jpg")
    assert load_image(path).size == (800, 600)
    small = load_image(path, min_size=140)
    assert small.size == (200, 150) and small.mode == "RGB"
    assert load_image(path, min_size=400).size == (800, 600)


# ---------------------------------------------------------------------------- bad files


def noisy(size=(96, 80)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_missing_and_unreadable(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(DataError, match=at(missing) + ": image file not found"):
        load_image(missing)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match=at(junk) + ": cannot decode image"):
        load_image(junk)
    with pytest.raises(DataError, match=at(tmp_path) + ": cannot read image file"):
        load_image(tmp_path)  # a directory


@pytest.mark.parametrize(
    "name,cut", [("a.jpg", 0.5), ("a.jpg", -2), ("p.jpg", 0.6), ("a.png", 0.5), ("a.png", -8), ("a.tif", 0.5)]
)
def test_truncated_files_raise(tmp_path, name, cut):
    path = saved(tmp_path, noisy(), name, **({"progressive": True} if name == "p.jpg" else {}))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)] if cut > 0 else data[:cut])
    for min_size in (None, 16):
        with pytest.raises(DataError, match=at(path) + ": cannot decode image"):
            load_image(path, min_size=min_size)


# ---------------------------------------------------------------------------- transforms


def test_eval_transform_shape_and_normalisation():
    im = Image.new("RGB", (50, 30), (255, 0, 128))
    out = build_transform(24, train=False)(im)
    assert out.shape == (3, 24, 24) and out.dtype == np.float32 and out.flags.c_contiguous
    for c, v in enumerate((255, 0, 128)):
        assert np.allclose(out[c], (v / 255 - CLIP_MEAN[c]) / CLIP_STD[c], atol=1e-5)
    gray = build_transform(24, train=False)(Image.new("L", (5, 5), 255))  # "L" becomes three equal channels
    assert np.allclose(gray[:, 0, 0], (1 - np.array(CLIP_MEAN)) / CLIP_STD, atol=1e-5)


def test_eval_transform_is_a_plain_resize():
    im = noisy((40, 40))
    expected = np.asarray(im.resize((16, 16), Image.Resampling.BICUBIC), np.float32)
    out = build_transform(16, train=False)(im)
    std, mean = (np.array(v, np.float32)[:, None, None] for v in (CLIP_STD, CLIP_MEAN))
    back = (out * std + mean) * 255
    assert np.abs(back.transpose(1, 2, 0) - expected).max() < 1e-3


@pytest.mark.parametrize("train", [False, True])
def test_gray_input_equals_its_rgb(train):
    gray = noisy().convert("L")
    out = build_transform(20, train, hflip=True, rng=4)(gray)
    assert np.array_equal(out, build_transform(20, train, hflip=True, rng=4)(gray.convert("RGB")))


def left_to_right_gradient() -> Image.Image:
    row = np.linspace(0, 255, 64).astype(np.uint8)
    return Image.fromarray(np.repeat(row[None, :, None], 48, axis=0).repeat(3, axis=2))


def test_no_flip_unless_asked():
    im = left_to_right_gradient()

    def mirrored_count(transform) -> int:
        outs = [transform(im)[0] for _ in range(60)]
        return sum(o[:, 0].mean() > o[:, -1].mean() for o in outs)

    assert mirrored_count(build_transform(16, train=True, rng=0)) == 0
    assert 10 < mirrored_count(build_transform(16, train=True, hflip=True, rng=0)) < 50


def test_train_crops_reproducible_and_varied():
    im = noisy()
    a = [build_transform(20, train=True, rng=7)(im) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    t = build_transform(20, train=True, rng=7)
    first, second = t(im), t(im)
    assert np.array_equal(first, a[0]) and not np.array_equal(first, second)
    assert not np.array_equal(build_transform(20, train=True, rng=8)(im), first)
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(build_transform(20, True, rng=g1)(im), build_transform(20, True, rng=g2)(im))
    np.random.seed(5)
    x = build_transform(20, True)(im)
    np.random.seed(5)
    assert np.array_equal(build_transform(20, True)(im), x)


def test_crop_scale_bounds_and_decode_size():
    with pytest.raises(DataError, match="crop_scale"):
        build_transform(16, True, crop_scale=(0.0, 1.0))
    assert build_transform(364, False).min_decode_size == 364
    assert build_transform(364, True, crop_scale=(0.5, 1.0)).min_decode_size == 515
    # a full-scale crop of an extreme aspect ratio falls back to a centre crop
    out = build_transform(8, True, crop_scale=(1.0, 1.0), rng=0)(Image.new("RGB", (100, 10), (0, 0, 0)))
    assert out.shape == (3, 8, 8)


def test_dataloader_workers_get_distinct_reproducible_streams():
    paddle = pytest.importorskip("paddle")
    transform = build_transform(8, train=True, rng=1)
    im = noisy((32, 32))

    class Same(paddle.io.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> np.ndarray:
            return transform(im)

    def epochs(n: int) -> list[list[np.ndarray]]:
        np.random.seed(0)
        loader = paddle.io.DataLoader(Same(), batch_size=1, num_workers=2)
        return [[b.numpy()[0] for b in loader] for _ in range(n)]

    run1, run2 = epochs(2), epochs(2)
    assert all(np.array_equal(x, y) for e1, e2 in zip(run1, run2) for x, y in zip(e1, e2))
    assert not np.array_equal(run1[0][0], run1[0][1])  # item 0 from worker 0, item 1 from worker 1
    assert not np.array_equal(run1[0][0], run1[1][0])  # a new epoch, new crops


# ---------------------------------------------------------------------------- DICOM


def write_dicom(path, stored: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> None:
    pytest.importorskip("pydicom", reason="DICOM tests need pydicom (the dicom extra)")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.SamplesPerPixel = 3 if stored.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = stored.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(stored.dtype.kind == "i")
    if stored.ndim == 3:
        ds.PlanarConfiguration = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


STORED = np.array([[0, 100, 200, 300, 400]], np.uint16)  # x2 - 100 -> -100, 100, 300, 500, 700
RESCALE = {"RescaleSlope": 2, "RescaleIntercept": -100}


def test_dicom_rescale_and_window(tmp_path):
    path = tmp_path / "w.dcm"
    write_dicom(path, STORED, **RESCALE, WindowCenter=300, WindowWidth=801)
    # DICOM linear window: ((x - (c - 0.5)) / (w - 1) + 0.5) clipped to 0..1
    assert pixels(load_image(path))[0, :, 0].tolist() == [0, 64, 128, 191, 255]
    path = tmp_path / "multi.dcm"
    write_dicom(path, STORED, **RESCALE, WindowCenter=[300, 0], WindowWidth=[801, 10])
    assert pixels(load_image(path))[0, :, 0].tolist() == [0, 64, 128, 191, 255]
    path = tmp_path / "step.dcm"  # width 1 is a threshold at centre - 0.5
    write_dicom(path, STORED, **RESCALE, WindowCenter=300, WindowWidth=1)
    assert pixels(load_image(path))[0, :, 0].tolist() == [0, 0, 255, 255, 255]
    path = tmp_path / "bad.dcm"
    write_dicom(path, STORED, WindowCenter=300, WindowWidth=0)
    with pytest.raises(DataError, match=at(path) + ": WindowWidth"):
        load_image(path)


def test_dicom_monochrome1_inverted(tmp_path):
    path = tmp_path / "m1.dcm"
    write_dicom(path, STORED, "MONOCHROME1", **RESCALE, WindowCenter=300, WindowWidth=801)
    assert pixels(load_image(path))[0, :, 0].tolist() == [255, 191, 127, 64, 0]


def test_dicom_without_window_uses_min_max_and_magic(tmp_path):
    path = tmp_path / "no_suffix"  # recognised by the DICM magic, not the name
    write_dicom(path, np.array([[-50, 0, 150]], np.int16), RescaleSlope=1, RescaleIntercept=0)
    assert pixels(load_image(path))[0, :, 0].tolist() == [0, 64, 255]


def test_dicom_colour_and_errors(tmp_path):
    rgb = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)
    path = tmp_path / "rgb.dcm"
    write_dicom(path, rgb, "RGB")
    assert pixels(load_image(path)).tolist() == rgb.tolist()
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"not dicom")
    with pytest.raises(DataError, match=at(fake) + ": cannot decode DICOM"):
        load_image(fake)


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match=at(path) + r': .*pip install -e "\.\[dicom\]"'):
        load_image(path)
