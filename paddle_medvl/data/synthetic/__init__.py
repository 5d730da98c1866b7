"""Bundled demo data: small synthetic data sets written in the official on-disk formats.

Why it exists: the demo configs and the tests must run with no download, through the very
readers that read the official releases, so every file here follows the official layout
(separators, headers, file and folder names, the official question strings with their typos).
What is drawn decides what is written: every caption, concept list, answer, report and label
is a pure function of a sampled scene, and the scenes are returned (``SyntheticSet.scenes``)
so tests can check the texts against the pixels.

One module per kind of set: ``captions.py`` (ImageCLEFmedical Caption 2023 and ROCOv2, one scene
in two formats), ``medvqa_gi.py``, ``iu_xray.py`` and ``mimic_cxr.py`` (their chest scenes in
``chest.py``), what they share in ``base.py``, and ``demo.py`` (``make_demo_data``, all of them).
This package hands their names on.

Conventions:

* Radiology (caption sets, IU X-RAY, MIMIC-CXR) follows the radiological display convention:
  the patient's RIGHT is on the image's LEFT. "left lower zone" is the image's right half,
  lower third of the body.
* Endoscopy (MEDVQA-GI) locations are image positions on a 3x3 grid in the official
  vocabulary (``GRID``), "Lower-rigth" included; they are not anatomical sides.
* Absent things are answered "None" (lists, colours, locations), "Not relevant" (polyp size,
  type, removal, detectability), "0" (counts), "No" (yes/no questions).
* Determinism: sample ``i`` draws only from a numpy Generator seeded by (seed, set, split, i),
  so it does not depend on ``n`` or on the other sets; files are written with fixed encoder
  settings, ordered keys and "\\n" line ends: the same seed gives the same bytes (on one
  machine and Pillow build; JPEG encoders differ between libjpeg builds).
* Tokenizers: ``make_demo_data`` also trains the demo's tokenizers on the train-split texts of
  the sets it wrote (``out_dir/tokenizers/{opt,bert}``, see ``demo_tokenizer.py``), so the demo
  configs need no download for them either.
"""
from __future__ import annotations

from .base import ANATOMY_MAX, JPEG_QUALITY, Progress, SyntheticSet
from .captions import (
    CAPTION_FIELD, CAPTION_MODALITIES, CUI_NAMES, LESION_LEVELS, LESION_RADII, ZONE_ROWS, ZONE_SIDES, CaptionScene,
    caption_cuis, caption_text, write_imageclef_caption, write_rocov2, zone_box,
)
from .chest import (
    CARDIOMEGALY_RATIO, CHEST_HEART, CHEST_LUNG, CHEST_LUNG_X, CHEST_ROWS, R2GEN_SPLITS, THORAX_WIDTH, ChestScene,
    render_chest_frontal, render_chest_lateral, sample_chest_scene,
)
from .demo import DEFAULT_SIZES, TASK_DIRS, TASKS, make_demo_data
from .iu_xray import iu_report, write_iu_xray
from .medvqa_gi import (
    ARTEFACT_BOX, CELL_MIN_FRACTION, GRID, GRID_ORDER, INSTRUMENT_GREY, INSTRUMENTS, LANDMARK_COLOURS, LANDMARKS,
    POLYP_COLOURS, POLYP_SIZES, POLYP_TYPES, RESECTION_BLUE, TEXT_BOX, VQA_QUESTIONS, VQA_SEGMENTATION_QUESTIONS,
    Footprint, Instrument, Landmark, Polyp, VQAScene, grid_bounds, grid_cell, vqa_answers, vqa_labels, write_medvqa_gi,
)
from .mimic_cxr import BLANK, CHEXBERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN, mimic_report, write_mimic_cxr

__all__ = [
    "ANATOMY_MAX", "ARTEFACT_BOX", "BLANK", "CAPTION_FIELD", "CAPTION_MODALITIES", "CARDIOMEGALY_RATIO", "CELL_MIN_FRACTION",
    "CHEST_HEART", "CHEST_LUNG", "CHEST_LUNG_X", "CHEST_ROWS", "CHEXBERT_LABELS", "CUI_NAMES", "DEFAULT_SIZES", "GRID",
    "GRID_ORDER", "INSTRUMENTS", "INSTRUMENT_GREY", "JPEG_QUALITY", "LANDMARKS", "LANDMARK_COLOURS", "LESION_LEVELS",
    "LESION_RADII", "NEGATIVE", "POLYP_COLOURS", "POLYP_SIZES", "POLYP_TYPES", "POSITIVE", "R2GEN_SPLITS", "RESECTION_BLUE",
    "TASKS", "TASK_DIRS", "TEXT_BOX", "THORAX_WIDTH", "UNCERTAIN", "VQA_QUESTIONS", "VQA_SEGMENTATION_QUESTIONS",
    "ZONE_ROWS", "ZONE_SIDES", "CaptionScene", "ChestScene", "Footprint", "Instrument", "Landmark", "Polyp", "Progress",
    "SyntheticSet", "VQAScene", "caption_cuis", "caption_text", "grid_bounds", "grid_cell", "iu_report", "make_demo_data",
    "mimic_report", "render_chest_frontal", "render_chest_lateral", "sample_chest_scene", "vqa_answers", "vqa_labels",
    "write_imageclef_caption", "write_iu_xray", "write_medvqa_gi", "write_mimic_cxr", "write_rocov2", "zone_box",
]
