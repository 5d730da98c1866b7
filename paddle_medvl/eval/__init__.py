"""Scoring generated captions, reports and answers as the papers' evaluations do, and cleaning
generated text of repetition first (paper 000's post-processing)."""
from .metrics import (
    MetricsInputError,
    MetricUnavailable,
    answer_set,
    caption_metrics,
    check_ids,
    format_table,
    imageclef_preprocess,
    normalize_answer,
    report_metrics,
    vqa_metrics,
)
from .postprocess import DEFAULT_CONFIG, RepetitionConfig, remove_repetition

__all__ = [
    "DEFAULT_CONFIG",
    "MetricUnavailable",
    "MetricsInputError",
    "RepetitionConfig",
    "answer_set",
    "caption_metrics",
    "check_ids",
    "format_table",
    "imageclef_preprocess",
    "normalize_answer",
    "remove_repetition",
    "report_metrics",
    "vqa_metrics",
]
