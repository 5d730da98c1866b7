"""Generate texts for records and score them: what ``tools/predict.py``, ``tools/eval.py`` and
training's validation share.

    task = eval_task(cfg)
    preds = generate_predictions(model, tokenizer, records, cfg)        # [Prediction], keyed by record_key
    refs, questions = references_from_records(records, task)
    metrics = evaluate(cfg, {p.id: p.text for p in preds}, refs, questions)

Keys: a record's ID, except for VQA, where a prediction is filed under
``formats.vqa_key(image ID, QuestionID)`` with the task's official question number, as the
MEDVQA-GI submission file is; so predictions read back from a file and references taken from a
data-set split meet under the same keys.
"""
from __future__ import annotations

import sys
from typing import Mapping, Sequence

import numpy as np

from ..config import Config, ConfigError
from ..data.medvqa import join_answers
from ..data.record import Record
from .formats import FORMAT_DEFAULT_TASK, Prediction, medvqa_question_id, vqa_key
from .metrics import MetricsInputError, caption_metrics, report_metrics, vqa_metrics
from .postprocess import remove_repetition

TASKS = ("caption", "vqa", "report")
# Data.format -> its task (no guessing from names: a format not listed needs Eval.task).
FORMAT_TASKS = {
    "imageclef_caption": "caption",
    "rocov2": "caption",
    "medvqa_gi": "vqa",
    "iu_xray": "report",
    "mimic_cxr": "report",
}
# Data.format -> the R2Gen report cleaning its references had (Eval.report_cleaning "" means this).
FORMAT_REPORT_CLEANING = {"iu_xray": "iu_xray", "mimic_cxr": "mimic_cxr"}
REPORT_CLEANINGS = ("iu_xray", "mimic_cxr", "none")
POSTPROCESSED_TASKS = ("caption", "report")  # free text; VQA answers are short labels
# What validation reports per task (Train.best_metric names one; "loss" comes with every task).
_BLEU = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
TASK_METRICS = {
    "caption": ("loss", *_BLEU, "METEOR", "ROUGE-L", "CIDEr-D", "BERTScore", "ROUGE-1"),
    "report": ("loss", *_BLEU, "BLEU-A", "METEOR", "ROUGE-L"),
    "vqa": ("loss", "accuracy"),
}


def eval_task(cfg: Config, file_format: str | None = None) -> str:
    """``Eval.task``, else the task of ``Data.format``, else (reading a file) the task its format holds."""
    task = cfg.Eval.task
    if task:
        if task not in TASKS:
            raise ConfigError(f"Eval.task must be one of {', '.join(TASKS)}, got {task!r}")
        return task
    if cfg.Data.format in FORMAT_TASKS:
        return FORMAT_TASKS[cfg.Data.format]
    if file_format in FORMAT_DEFAULT_TASK:
        return FORMAT_DEFAULT_TASK[file_format]
    raise ConfigError(
        f"which task? Data.format {cfg.Data.format!r} has none ({', '.join(f'{k}: {v}' for k, v in FORMAT_TASKS.items())}); "
        f"set Eval.task ({' | '.join(TASKS)})"
    )


def record_key(record: Record, task: str) -> str:
    """Where a record's prediction is filed (see the module docstring)."""
    if task != "vqa":
        return record.id
    extras = record.extras
    return vqa_key(extras["image_id"], medvqa_question_id(extras["question"], extras["question_index"]))


def references_from_records(records: Sequence[Record], task: str) -> tuple[dict, dict | None]:
    """(references, questions) keyed by ``record_key``: targets, or for VQA the answer lists and the
    question texts (questions is None for the other tasks)."""
    refs: dict = {}
    questions: dict[str, str] | None = {} if task == "vqa" else None
    for record in records:
        key = record_key(record, task)
        if key in refs:
            raise MetricsInputError(f"two records share the key {key!r} (record {record.id})")
        if task == "vqa":
            refs[key] = list(record.extras["answers"])
            questions[key] = record.extras["question"]
        else:
            refs[key] = record.target
    return refs, questions


def _report_cleaning(cfg: Config) -> str | None:
    cleaning = cfg.Eval.report_cleaning or FORMAT_REPORT_CLEANING.get(cfg.Data.format, "none")
    if cleaning not in REPORT_CLEANINGS:
        raise ConfigError(f"Eval.report_cleaning must be one of {', '.join(REPORT_CLEANINGS)}, got {cleaning!r}")
    return None if cleaning == "none" else cleaning


def evaluate(
    cfg: Config,
    predictions: Mapping[str, str | list[str]],
    references: Mapping[str, str | list[str]],
    questions: Mapping[str, str] | None = None,
    task: str | None = None,
) -> dict:
    """The task's metrics (``metrics.caption_metrics`` / ``report_metrics`` / ``vqa_metrics``) with the
    ``Eval`` settings. Missing or extra prediction IDs are a :class:`MetricsInputError` naming them."""
    task = task or eval_task(cfg)
    if task == "vqa":
        if questions is None:
            raise MetricsInputError("VQA scoring needs the question of every reference (per-question accuracy)")
        preds = {k: join_answers(v) if isinstance(v, list) else v for k, v in predictions.items()}
        return vqa_metrics(preds, references, questions)
    texts = {k: ("; ".join(v) if isinstance(v, list) else v) for k, v in predictions.items()}
    if task == "caption":
        return caption_metrics(
            texts, references, bertscore_model=cfg.Eval.bertscore_model or None,
            bertscore_batch_size=cfg.Eval.batch_size, meteor=cfg.Eval.meteor,
        )
    if task == "report":
        return report_metrics(texts, references, dataset=_report_cleaning(cfg), meteor=cfg.Eval.meteor)
    raise ValueError(f"unknown task {task!r} (caption, vqa or report)")


# ---------------------------------------------------------------------------- generation


_SPACING_PROBE = "size . the size. the"  # R2Gen's " . " between sentences, and a caption's "zone."


def keeps_spacing(tokenizer) -> bool:
    """Whether decoding gives back the spaces as written. Byte-level BPE and SentencePiece do, so
    their text is decoded as is (tokenizers' default "clean-up" would turn R2Gen's "size . the" into
    "size. the"); WordPiece drops spaces and needs the clean-up to rebuild "zone."."""
    ids = tokenizer(_SPACING_PROBE, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) == _SPACING_PROBE


def decode_rows(ids: np.ndarray, tokenizer, eos: int) -> list[tuple[str, bool]]:
    """New-token rows -> (text, truncated): each row cut before its first EOS, special tokens skipped,
    stripped; truncated when the row has no EOS (it ran until ``max_new_tokens``)."""
    clean_up = not keeps_spacing(tokenizer)
    out = []
    for row in ids.tolist():
        truncated = eos not in row
        row = row if truncated else row[: row.index(eos)]
        text = tokenizer.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up)
        out.append((text.strip(), truncated))
    return out


def generate_predictions(
    model,
    tokenizer,
    records: Sequence[Record],
    cfg: Config,
    *,
    task: str | None = None,
    qformer_tokenizer=None,
    progress: bool = True,
) -> list[Prediction]:
    """Generate a text for every record (batches of ``Eval.batch_size``, ``Decode`` settings), post-process
    captions and reports when ``Eval.postprocess``; one :class:`Prediction` per record, in record order
    (a record whose image was skipped under ``Data.on_error: skip`` has none)."""
    import paddle
    from tqdm import tqdm

    from ..build import build_collator, generation_token_ids
    from ..data.dataset import RecordDataset
    from ..data.loader import data_loader

    task = task or eval_task(cfg)
    eos, pad = generation_token_ids(tokenizer, cfg.Model.language)
    collate = build_collator(cfg, tokenizer, qformer_tokenizer)
    dataset = RecordDataset(list(records), cfg.Data, train=False)
    loader = data_loader(  # a bad image is its DataError here, with workers too (data/loader.py)
        dataset, batch_size=cfg.Eval.batch_size, collate_fn=collate, num_workers=cfg.Data.num_workers,
        name=f"predict {task}",
    )
    instruction = cfg.Model.qformer.instruction

    def tensor(value):  # the DataLoader hands over Tensors already (numpy when used without one)
        return value if isinstance(value, paddle.Tensor) else paddle.to_tensor(value)

    postprocess = cfg.Eval.postprocess and task in POSTPROCESSED_TASKS
    texts: dict[int, str] = {}
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(records), desc=f"predict {task}", unit="image" if task != "vqa" else "question",
               file=sys.stderr, disable=not progress)
    try:
        with paddle.no_grad():
            for batch in loader:
                index = np.asarray(batch["index"]).tolist()
                ids = model.generate(
                    tensor(batch["pixel_values"]), tensor(batch["prompt_ids"]), tensor(batch["prompt_mask"]),
                    cfg.Decode, eos_token_id=eos, pad_token_id=pad,
                    instruction_ids=tensor(batch["qformer_ids"]) if instruction else None,
                    instruction_mask=tensor(batch["qformer_mask"]) if instruction else None,
                )
                for i, (text, truncated) in zip(index, decode_rows(np.asarray(ids.numpy()), tokenizer, eos)):
                    texts[i] = remove_repetition(text, truncated=truncated) if postprocess else text
                bar.update(len(index))
    finally:
        bar.close()
        if was_training:
            model.train()
    out = []
    for i, record in enumerate(records):
        if i not in texts:
            continue
        reference = record.target or None
        if task == "vqa":
            extras = record.extras
            qid = medvqa_question_id(extras["question"], extras["question_index"])
            out.append(Prediction(record_key(record, task), texts[i], reference, extras["image_id"], qid, extras["question"]))
        else:
            out.append(Prediction(record.id, texts[i], reference))
    return out
