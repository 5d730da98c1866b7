"""Images per second of the training image path against plain PIL decode + resize.

The loader path is what training runs: ``load_image`` (full decode, checks, 8-bit "L" or RGB) + the train
transform (RandomResizedCrop, CLIP normalisation) inside a ``paddle.io.Dataset`` through
``paddle.io.DataLoader`` (batches collated into paddle tensors), with 0 and 2 workers. The
ceiling is ``Image.open(p).convert("RGB").resize((size, size), BICUBIC)`` over the same files in
the same process: decoding and resizing without any of our work, and without batching.

    python bench/data_loader.py                    # 200 generated 512x512 JPEGs, 364 px
    python bench/data_loader.py --images DIR --image-size 224
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm")


def make_images(folder: Path, count: int, side: int, seed: int = 0) -> list[Path]:
    """Half grayscale radiograph-like (smooth shapes + noise), half RGB endoscopy-like JPEGs."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        channels = 1 if i % 2 == 0 else 3
        coarse = rng.random((8, 8, channels)) * 255
        smooth = np.asarray(
            Image.fromarray(coarse.astype(np.uint8).squeeze()).resize((side, side), Image.Resampling.BICUBIC),
            np.float32,
        )
        image = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:04d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
    return paths


def ceiling(paths: list[Path], size: int) -> float:
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as im:
            im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return len(paths) / (time.perf_counter() - start)


def loader(paths: list[Path], size: int, workers: int, batch_size: int) -> float:
    import paddle

    from paddle_medvl.data.image import build_transform, load_image

    class Files(paddle.io.Dataset):
        def __init__(self) -> None:
            self.transform = build_transform(size, train=True, rng=0)

        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> np.ndarray:
            return self.transform(load_image(paths[i], min_size=self.transform.min_decode_size, keep_gray=True))

    batches = paddle.io.DataLoader(Files(), batch_size=batch_size, num_workers=workers, shuffle=True)
    start = time.perf_counter()
    n = sum(batch.shape[0] for batch in batches)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="a folder of images (default: generate them)")
    parser.add_argument("--image-size", type=int, default=364)
    parser.add_argument("--count", type=int, default=200, help="images to generate")
    parser.add_argument("--side", type=int, default=512, help="side of the generated images")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise SystemExit(f"{args.images}: no images found ({', '.join(IMAGE_SUFFIXES)})")
        else:
            paths = make_images(Path(tmp), args.count, args.side)
        for path in paths:  # warm the page cache so that neither side pays for the disk
            path.read_bytes()
        print(f"{len(paths)} images, --image-size {args.image_size}, {os.cpu_count()} cores")
        reference = ceiling(paths, args.image_size)
        print(f"{'ceiling  PIL decode + resize, 1 process':40s}: {reference:7.1f} img/s")
        for workers in args.workers:
            rate = loader(paths, args.image_size, workers, args.batch_size)
            label = f"loader   num_workers={workers}"
            print(f"{label:40s}: {rate:7.1f} img/s  ({rate / reference:.2f} x ceiling)")


if __name__ == "__main__":
    main()
