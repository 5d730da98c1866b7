"""Records -> samples (image arrays + texts) for ``paddle.io.DataLoader``.

How a study's several views reach the model is ``Data.views``:

* ``first``: the first listed view only (IU X-RAY: the frontal image); ``image`` is [3, H, W].
* ``all``: every view, stacked; ``image`` is [V, 3, H, W]. The model runs each view through the
  vision encoder and Q-Former and concatenates their query outputs (V x 32 query tokens reach
  the LLM). All records must have the same number of views (fixed shapes).

Training augmentation (random crop, optional flip) is drawn per sample from
``(seed, epoch, record position)`` when the dataset has a seed: which worker decodes a sample, how
many workers there are and where a run was resumed change nothing (``set_epoch`` before each epoch).

An image that fails to decode mid-epoch is a :class:`DataError` naming the file and the record
ID; with ``Data.on_error: skip`` the record is replaced by the next decodable one, each skip is
printed with its running count in that process, and the sample carries the skipped IDs
(``loader.SKIPPED``) so that ``data/loader.py`` collects them in the main process whatever the
number of workers (``skipped_ids``: each bad record once, however often it was skipped). Make
loaders with ``loader.data_loader``: with workers, Paddle's own loses the error (``workarounds`` 6).
"""
from __future__ import annotations

import sys

import numpy as np
import paddle

from ..config import DataConfig
from ..workarounds import raise_loader_errors
from .image import build_transform, load_image
from .loader import SKIPPED
from .record import DataError, Record

VIEWS = ("first", "all")


class RecordDataset(paddle.io.Dataset):
    """One sample per record: ``{"index", "image", "prompt", "target", **extras}`` (``index``: the record's position)."""

    def __init__(self, records: list[Record], cfg: DataConfig, train: bool, seed: int | None = None) -> None:
        if cfg.views not in VIEWS:
            raise DataError(f"Data.views must be one of {', '.join(VIEWS)}, got {cfg.views!r}")
        if cfg.views == "all":
            counts = {len(r.images) for r in records}
            if len(counts) > 1:
                odd = next(r for r in records if len(r.images) != len(records[0].images))
                raise DataError(
                    f"Data.views=all needs the same number of views per study: {records[0].id} has "
                    f"{len(records[0].images)}, {odd.id} has {len(odd.images)}; use Data.views=first"
                )
        raise_loader_errors()  # a bad record must stop a loader without workers, not hang it
        self.records = records
        self.views = cfg.views
        self.on_error = cfg.on_error
        self.transform = build_transform(cfg.image_size, train, tuple(cfg.crop_scale), cfg.hflip, seed)
        self.seed = seed
        self.epoch = 0
        self.skipped = 0  # skips made by this process's copy (a worker's own count)
        self.skipped_ids: set[str] = set()  # records skipped in the batches this process's loaders delivered

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation ``__getitem__`` draws (a new loader iterator copies it to its workers)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def _images(self, record: Record, position: int) -> np.ndarray:
        paths = record.images[:1] if self.views == "first" else record.images
        rng = None if self.seed is None else np.random.default_rng([self.seed, self.epoch, position])
        arrays = [self.transform(load_image(p, min_size=self.transform.min_decode_size, keep_gray=True), rng) for p in paths]
        return arrays[0] if self.views == "first" else np.stack(arrays)

    def __getitem__(self, index: int) -> dict:
        skipped: list[str] = []
        for step in range(len(self.records)):
            position = (index + step) % len(self.records)  # with skips, the record actually returned
            record = self.records[position]
            try:
                image = self._images(record, position)
            except DataError as e:
                if self.on_error != "skip":
                    raise DataError(f"{e} (record {record.id})") from None
                self.skipped += 1
                skipped.append(record.id)
                print(f"[paddle_medvl] skipped record {record.id} ({self.skipped} so far here): {e}", file=sys.stderr, flush=True)
                continue
            sample = {"index": position, "image": image, "prompt": record.prompt, "target": record.target, **record.extras}
            if skipped:  # the records this sample stands in for, for the main process to count
                sample[SKIPPED] = skipped
            return sample
        raise DataError("no image of this data set could be decoded")
