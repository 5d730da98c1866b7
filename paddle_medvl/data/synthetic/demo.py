"""``make_demo_data``: every synthetic set, and the demo tokenizers trained on them, under one folder.

Running it again is safe: the generator is deterministic, so a set already there is compared, file
by file, with a fresh one and kept untouched when identical (the README's quickstart line can be
run twice); only a different one needs ``overwrite`` (``--force``), and the error names the first
differing file. Everything is written to ``<name>.partial`` first, so an interrupted run never
leaves a half-written set under its final name, and nothing is replaced before every set compared.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence

from ...atomic import replace_folder
from .base import Progress
from .captions import write_imageclef_caption, write_rocov2
from .iu_xray import write_iu_xray
from .medvqa_gi import write_medvqa_gi
from .mimic_cxr import write_mimic_cxr

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
Report = Callable[[Path, str], None]  # (folder, "written" | "kept" | "replaced")


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
    report: Report | None = None,
) -> dict[str, Path]:
    """Write the demo sets under ``out_dir/<TASK_DIRS[task]>``; returns each task's root.

    With ``tokenizers`` (the default) the demo tokenizers, trained on the train-split texts of
    these sets, go to ``out_dir/tokenizers/opt`` (the LLM's, GPT-2 byte-level BPE) and
    ``out_dir/tokenizers/bert`` (the Q-Former's WordPiece); see ``demo_tokenizer.py``.
    A folder already there that is identical, byte for byte, to what this call writes is kept as
    it is; a different one is a ``FileExistsError`` naming its first differing file (nothing is
    changed then), or with ``overwrite`` is replaced. ``report(folder, outcome)`` hears, for each
    folder, "written", "kept" or "replaced".
    """
    from ..demo_tokenizer import TOKENIZERS_DIR, demo_texts, write_demo_tokenizers

    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    unknown = [t for t in tasks if t not in _WRITERS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    sizes = {"caption": n_caption, "rocov2": n_rocov2, "vqa": n_vqa, "iu": n_iu, "mimic": n_mimic}
    out = Path(out_dir)
    roots = {task: out / TASK_DIRS[task] for task in tasks}
    partials: dict[Path, Path] = {}  # final folder -> its fresh copy
    try:
        for task, root in roots.items():
            partials[root] = _fresh(root)
            _WRITERS[task](partials[root], seed=seed, n=sizes[task], image_size=image_size, progress=progress)
        if tokenizers:
            tokenizer_root = out / TOKENIZERS_DIR
            partials[tokenizer_root] = _fresh(tokenizer_root)
            set_partials = {task: partials[root] for task, root in roots.items()}
            write_demo_tokenizers(partials[tokenizer_root], demo_texts(set_partials))
    except BaseException:  # interrupted or failed: no half-written copy stays behind
        for partial in partials.values():
            shutil.rmtree(partial, ignore_errors=True)
        raise

    differences = {root: _first_difference(root, partial) for root, partial in partials.items() if root.exists()}
    different = {root: how for root, how in differences.items() if how is not None}
    if different and not overwrite:
        for partial in partials.values():
            shutil.rmtree(partial)
        raise FileExistsError("; ".join(
            f"{root}: already there and different from what this command writes ({how})" for root, how in different.items()
        ) + " (pass overwrite=True / --force to replace)")
    for root, partial in partials.items():
        if root in differences and root not in different:
            shutil.rmtree(partial)
            outcome = "kept"
        else:  # the old folder is set aside first, so a crash loses neither
            outcome = "replaced" if root in differences else "written"
            replace_folder(partial, root, root.with_name(root.name + ".old"))
        if report:
            report(root, outcome)
    return roots


def _fresh(root: Path) -> Path:
    """An empty ``<root>.partial`` next to ``root`` (an interrupted run may have left one)."""
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    return partial


def _first_difference(existing: Path, fresh: Path) -> str | None:
    """How two folders differ (the first file, in sorted order), or None when every file's bytes agree."""
    if not existing.is_dir():
        return "it is not a folder"
    old, new = _files(existing), _files(fresh)
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            return f"{name} is there, but this command does not write it"
        if name not in old:
            return f"{name} is missing"
        a, b = old[name], new[name]
        if a.stat().st_size != b.stat().st_size or a.read_bytes() != b.read_bytes():
            return f"first differing file: {name}"
    return None


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
