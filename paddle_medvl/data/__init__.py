"""Data sets in their official formats -> records -> tensors.

``load_records(cfg.Data, split)`` reads any supported format; ``data/dataset.py`` turns records
into image arrays and ``data/collate.py`` into fixed-length token batches.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Callable

from ..config import DataConfig
from .imageclef import CAPTION_2023, ROCOV2, read_captions
from .medvqa import read_medvqa
from .r2gen import read_r2gen
from .record import DataError, Problems, Record

Reader = Callable[[DataConfig, Path, str, Problems], list[Record]]

# format -> (reader, default prompt template)
READERS: dict[str, tuple[Reader, str]] = {
    "imageclef_caption": (lambda c, root, split, p: read_captions(CAPTION_2023, root, split, c.image_dir or "{split}", p), ""),
    "rocov2": (lambda c, root, split, p: read_captions(ROCOV2, root, split, c.image_dir or "{split}", p), ""),
    "medvqa_gi": (
        lambda c, root, split, p: read_medvqa(root, split, p, c.val_fraction, c.split_seed, c.image_dir or "images"),
        "{question}",
    ),
    "iu_xray": (
        lambda c, root, split, p: read_r2gen("iu_xray", root, split, p, c.image_dir or "images", c.clean_reports, c.reports_csv),
        "{prior}",
    ),
    "mimic_cxr": (
        lambda c, root, split, p: read_r2gen(
            "mimic_cxr", root, split, p, c.image_dir or "images", c.clean_reports, c.labels_csv, c.labels_encoding
        ),
        "{prior}",
    ),
}


def fill_prompt(template: str, record: Record) -> str:
    """The record's prompt from ``Data.prompt``; a placeholder the format lacks is a config error."""
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    missing = [name for name in fields if name not in record.extras]
    if missing:
        raise DataError(
            f"Data.prompt {template!r} uses {{{missing[0]}}}, which this data set does not provide "
            f"(available: {', '.join('{' + k + '}' for k in record.extras) or 'none'})"
        )
    return template.format(**record.extras)


def load_records(cfg: DataConfig, split: str) -> list[Record]:
    """Every usable record of one split; problems raise, or are skipped and reported (Data.on_error).

    Records without text (a blank caption) are left out in either mode, with one warning at the end.
    """
    if cfg.format not in READERS:
        raise DataError(f"Data.format {cfg.format!r} is not a known format: {', '.join(READERS)}")
    root = Path(cfg.root)
    if not cfg.root or not root.is_dir():
        raise DataError(f"Data.root {cfg.root!r} is not a folder (the {cfg.format} data set goes there)")
    reader, default_prompt = READERS[cfg.format]
    problems = Problems(cfg.on_error)
    records = reader(cfg, root, split, problems)
    template = cfg.prompt or default_prompt
    for record in records:
        record.prompt = fill_prompt(template, record)
    if problems.left_out_total:
        print(
            f"[paddle_medvl] warning: {cfg.format} {split}: left out {problems.left_out_total} records without text: "
            f"{problems.left_out_summary()}",
            flush=True,
        )
    if problems.total:
        print(f"[paddle_medvl] {cfg.format} {split}: skipped {problems.total} bad records: {problems.summary()}", flush=True)
    if not records:
        raise DataError(f"{root}: no usable {split!r} records in the {cfg.format} data set")
    return records


__all__ = ["DataError", "Problems", "READERS", "Record", "fill_prompt", "load_records"]
