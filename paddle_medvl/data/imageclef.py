"""ImageCLEFmedical Caption 2023 and its ROCOv2 release: captions, UMLS concepts, images.

Both give each image a caption and a list of CUIs. Each record also carries the concept
sentence "The image shows c1, c2, ..., cn." built from the CUIs' names: paper 000 trains the
Q-Former's language-modelling head on it in stage 1 (its "concept loss").

Layout under ``Data.root`` (``Data.image_dir`` defaults to ``{split}``):

2023 (tab-separated; the mapping has no header)::

    ImageCLEFmedical_Caption_2023_caption_prediction_{split}_labels.csv   ID<TAB>caption
    ImageCLEFmedical_Caption_2023_concept_detection_{split}_labels.csv    ID<TAB>cuis   (C1;C2)
    ImageCLEFmedical_Caption_2023_cui_mapping.csv                          CUI<TAB>name
    {split}/<ID>.jpg

ROCOv2 (comma-separated, quoted, with headers)::

    {split}_captions.csv    ID,Caption
    {split}_concepts.csv    ID,CUIs
    cui_mapping.csv         CUI,Canonical name
    {split}/<ID>.jpg
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .record import DataError, Problems, Record, image_for_id, read_rows, visible


@dataclass(frozen=True)
class CaptionLayout:
    """Where one release keeps its files, and how they are written."""

    captions: str
    concepts: str
    mapping: str
    delimiter: str
    caption_header: list[str]
    concept_header: list[str]
    mapping_header: list[str] | None


CAPTION_2023 = CaptionLayout(
    captions="ImageCLEFmedical_Caption_2023_caption_prediction_{split}_labels.csv",
    concepts="ImageCLEFmedical_Caption_2023_concept_detection_{split}_labels.csv",
    mapping="ImageCLEFmedical_Caption_2023_cui_mapping.csv",
    delimiter="\t",
    caption_header=["ID", "caption"],
    concept_header=["ID", "cuis"],
    mapping_header=None,
)
ROCOV2 = CaptionLayout(
    captions="{split}_captions.csv",
    concepts="{split}_concepts.csv",
    mapping="cui_mapping.csv",
    delimiter=",",
    caption_header=["ID", "Caption"],
    concept_header=["ID", "CUIs"],
    mapping_header=["CUI", "Canonical name"],
)


def concept_sentence(names: list[str]) -> str:
    """Paper 000's concept text: "The image shows c1, c2, ..., cn." ("" when no concept is known)."""
    return f"The image shows {', '.join(names)}." if names else ""


def first_of_each(rows: list[tuple[int, list[str]]], path: Path, key: str, problems: Problems) -> dict[str, str]:
    """{first cell: second cell} of two-column rows; a repeated first cell is a problem naming both lines.

    A dict would keep the later row without a word, and which of two rows is right is a guess.
    """
    values: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, (name, value) in rows:
        if name in first_line:
            problems(f"duplicate {key}", f"{path}:{line}: duplicate {key} {name!r} (first on line {first_line[name]})")
            continue
        first_line[name] = line
        values[name] = value
    return values


def read_captions(layout: CaptionLayout, root: Path, split: str, image_dir: str, problems: Problems) -> list[Record]:
    """One record per image: caption as target, CUIs and the concept sentence as extras, and for a
    concept-detection head the CUIs' row numbers in the mapping file (``concept_ids``, from 0) and
    the mapping's size (``concept_classes``).

    The concept file and the mapping are optional (the test split has neither); a CUI missing
    from the mapping is left out of the sentence and counted, not an error. An ID twice in the
    concept file, or a CUI twice in the mapping, is a problem naming both lines (which row would
    win is a guess); skipped, the first row counts. A caption of no visible text is left out
    with a warning (the official 2023 validation file has one, a lone U+202F).
    """
    caption_path = root / layout.captions.format(split=split)
    if not caption_path.is_file():
        raise DataError(f"{caption_path}: file not found (Data.root={root}, split {split!r})")
    images = root / image_dir.format(split=split)

    concepts: dict[str, list[str]] = {}
    concept_path = root / layout.concepts.format(split=split)
    if concept_path.is_file():
        rows = read_rows(concept_path, layout.delimiter, problems, layout.concept_header)
        for image_id, cuis in first_of_each(rows, concept_path, "ID", problems).items():
            concepts[image_id] = [visible(c) for c in cuis.split(";") if visible(c)]
    names: dict[str, str] = {}
    mapping_path = root / layout.mapping
    if mapping_path.is_file():
        rows = read_rows(mapping_path, layout.delimiter, problems, layout.mapping_header, width=2)
        names = first_of_each(rows, mapping_path, "CUI", problems)

    class_of = {cui: i for i, cui in enumerate(names)}
    records: list[Record] = []
    seen: dict[str, int] = {}
    unknown: set[str] = set()
    unknown_uses = 0
    for line, (image_id, caption) in read_rows(caption_path, layout.delimiter, problems, layout.caption_header):
        where = f"{caption_path}:{line}"
        if image_id in seen:
            problems("duplicate ID", f"{where}: duplicate ID {image_id!r} (first on line {seen[image_id]})")
            continue
        seen[image_id] = line
        if not caption:  # read_rows strips Unicode and zero-width spaces: this was blank
            problems.leave_out("no caption text", f"{where}: ID {image_id!r} has no caption text (empty or only spaces)")
            continue
        path = image_for_id(root, images, image_id, ".jpg", f"{where}: ID {image_id!r}", problems)
        if path is None:
            continue
        cuis = concepts.get(image_id, [])
        known = [names[c] for c in cuis if c in names]
        missing = [c for c in cuis if c not in names]
        unknown.update(missing)
        unknown_uses += len(missing)
        extras = {"cuis": cuis, "concept_sentence": concept_sentence(known),
                  "concept_ids": [class_of[c] for c in cuis if c in names], "concept_classes": len(names)}
        records.append(Record(image_id, [str(path)], "", caption, extras))
    if unknown and names:
        print(
            f"[paddle_medvl] warning: {len(unknown)} CUIs ({unknown_uses} uses) in {concept_path.name} are not in "
            f"{mapping_path.name} and were left out of the concept sentences, e.g. {sorted(unknown)[:5]}",
            flush=True,
        )
    return records
