"""Task metrics as the three papers' evaluations compute them, by calling the field's libraries.

* Captions (ImageCLEFmedical Caption 2023, paper 000): the organizers' preprocessing, then
  BERTScore F1 and ROUGE-1 F per image, averaged (the official ranking metrics), plus
  pycocoevalcap's BLEU-1..4, METEOR, ROUGE-L and CIDEr-D on the same preprocessed text.
* Reports (R2Gen convention, paper 002): pycocoevalcap BLEU-1..4 (corpus level), METEOR, ROUGE-L on
  R2Gen-cleaned reports; BLEU-A = mean(BLEU-2, BLEU-3, BLEU-4).
* VQA (MEDVQA-GI 2023, paper 001): exact-match accuracy after answer normalization, overall and
  per question.

Scorers that cannot run here are not faked: their value is ``None`` and ``result["skipped"]`` says
why and how to enable them (METEOR needs ``java``; BERTScore needs the ``bert-score`` package and a
local model folder). Predictions and references must cover the same IDs, or
:class:`MetricsInputError` names the offending ones, as the official evaluators refuse such runs.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import string
import threading
from pathlib import Path
from typing import Mapping

import numpy as np

from ..data.medvqa import ANSWER_SEPARATOR
from ..data.r2gen import clean_report
from ..errors import MedVLError

BERTSCORE_LAYERS = 40  # microsoft/deberta-xlarge-mnli, bert_score's default layer for that model
BERTSCORE_INSTALL = (
    "pip install torch==2.13.0 bert-score==0.3.13 transformers==4.46.3 -c constraints.txt "
    "(the 'bertscore' extra)"
)
BERTSCORE_HOWTO = (
    "give bertscore_model=<local folder of microsoft/deberta-xlarge-mnli> "
    f"(needs bert-score: {BERTSCORE_INSTALL})"
)
MAX_LISTED_IDS = 10

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_DIGITS = re.compile(r"\d+")


class MetricsInputError(MedVLError, ValueError):
    """Predictions and references that cannot be scored together (the message names the IDs)."""


class MetricUnavailable(MedVLError, RuntimeError):
    """A metric was asked for explicitly but its package is not installed."""


# ---------------------------------------------------------------------------- shared


def check_ids(preds: Mapping[str, object], refs: Mapping[str, object], what: str = "prediction") -> list[str]:
    """The IDs to score, in reference order; missing or extra prediction IDs are an error."""
    missing = [k for k in refs if k not in preds]
    extra = [k for k in preds if k not in refs]
    problems = []
    if missing:
        problems.append(f"{len(missing)} reference ID(s) have no {what}: {_list_ids(missing)}")
    if extra:
        problems.append(f"{len(extra)} {what} ID(s) are not in the references: {_list_ids(extra)}")
    if problems:
        raise MetricsInputError("; ".join(problems))
    if not refs:
        raise MetricsInputError("nothing to score: no references")
    return list(refs)


def _list_ids(ids: list) -> str:
    shown = ", ".join(repr(i) for i in ids[:MAX_LISTED_IDS])
    return shown + (f" and {len(ids) - MAX_LISTED_IDS} more" if len(ids) > MAX_LISTED_IDS else "")


def _tokens(text: str) -> str:
    """Single-space tokenization: pycocoevalcap splits on spaces, and its ROUGE-L on each one."""
    return " ".join(text.split())


def _coco_scores(gts: dict[str, list[str]], res: dict[str, list[str]], meteor: bool, cider: bool) -> tuple[dict, dict]:
    """pycocoevalcap's scorers on whitespace-tokenized text (no PTBTokenizer: it needs java, and
    neither the ImageCLEF evaluators nor R2Gen use it)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out: dict[str, float | None] = {f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}
    skipped: dict[str, str] = {}
    out["METEOR"] = None
    if meteor:
        out["METEOR"], reason = _meteor(gts, res)
        if reason:
            skipped["METEOR"] = reason
    else:
        skipped["METEOR"] = "not requested (meteor=False)"
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if cider:
        from pycocoevalcap.cider.cider import Cider

        out["CIDEr-D"] = float(Cider().compute_score(gts, res)[0])
    return out, skipped


# ---------------------------------------------------------------------------- METEOR (java)

_meteor_lock = threading.Lock()
_meteor_scorer = None  # one METEOR 1.5 JVM per process: its start (loading WordNet and paraphrases) takes ~20 s


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float | None, str | None]:
    """pycocoevalcap's METEOR 1.5 jar (``-l en -norm``); (None, reason) when it cannot run."""
    global _meteor_scorer
    if shutil.which("java") is None:
        return None, ("java not found on PATH (METEOR 1.5 is a Java program; install a JRE, "
                      "e.g. apt-get install default-jre-headless)")
    # The jar reads one line per request and splits fields on "|||".
    gts = {k: [r.replace("|||", " ") for r in v] for k, v in gts.items()}
    with _meteor_lock:
        try:
            if _meteor_scorer is None:
                from pycocoevalcap.meteor.meteor import Meteor

                _meteor_scorer = Meteor()
                atexit.register(_close_meteor)
            score, _ = _meteor_scorer.compute_score(gts, res)
            return float(score), None
        except (OSError, ValueError) as e:  # the JVM died or answered garbage (e.g. out of memory)
            _close_meteor()
            return None, f"METEOR jar failed: {type(e).__name__}: {e}"


def _close_meteor() -> None:
    global _meteor_scorer
    if _meteor_scorer is not None:
        process, _meteor_scorer = _meteor_scorer.meteor_p, None
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()


# ---------------------------------------------------------------------------- captions


def imageclef_preprocess(text: str) -> str:
    """The ImageCLEFmedical caption evaluator's text: lower case, each digit run -> "number", then
    ASCII punctuation removed (so "T2-weighted" -> "tnumberweighted"); no stemming, no stop words."""
    return _DIGITS.sub("number", text.lower()).translate(_PUNCTUATION)


def caption_metrics(
    preds: Mapping[str, str],
    refs: Mapping[str, str],
    *,
    bertscore_model: str | os.PathLike | None = None,
    bertscore_layers: int = BERTSCORE_LAYERS,
    bertscore_batch_size: int = 16,
    meteor: bool = True,
) -> dict:
    """ImageCLEFmedical Caption 2023 scores of ``{image id: caption}`` predictions.

    BERTScore (the official primary metric) runs only with ``bertscore_model``, a local folder of
    ``microsoft/deberta-xlarge-mnli`` (40 layers, no idf, no baseline rescaling, as the organizers);
    nothing is downloaded; without the ``bert-score`` package that raises :class:`MetricUnavailable`.
    Per image, a pair that is empty on both sides after preprocessing scores
    1 and a pair empty on one side scores 0 (ROUGE-1 and BERTScore, as the official evaluator).
    """
    ids = check_ids(preds, refs)
    cands = [imageclef_preprocess(preds[i]) for i in ids]
    golds = [imageclef_preprocess(refs[i]) for i in ids]
    both_empty = [not c and not g for c, g in zip(cands, golds)]

    out: dict = {"task": "caption", "n": len(ids), "BERTScore": None}
    skipped: dict[str, str] = {}
    if bertscore_model is None:
        skipped["BERTScore"] = f"not computed: {BERTSCORE_HOWTO}"
    else:
        out["BERTScore"] = _bertscore(cands, golds, both_empty, Path(bertscore_model), bertscore_layers, bertscore_batch_size)

    from rouge_score import rouge_scorer

    rouge1 = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    out["ROUGE-1"] = float(np.mean([
        1.0 if empty else rouge1.score(g, c)["rouge1"].fmeasure for c, g, empty in zip(cands, golds, both_empty)
    ]))

    gts = {i: [_tokens(g)] for i, g in zip(ids, golds)}
    res = {i: [_tokens(c)] for i, c in zip(ids, cands)}
    coco, coco_skipped = _coco_scores(gts, res, meteor, cider=True)
    out.update(coco)
    out["skipped"] = skipped | coco_skipped
    return out


def _bertscore(cands: list[str], golds: list[str], both_empty: list[bool], model: Path, layers: int, batch_size: int) -> float:
    if not model.is_dir():
        raise FileNotFoundError(
            f"bertscore_model {str(model)!r} is not a folder (a local Hugging Face model folder; nothing is downloaded)"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when transformers is first imported
    try:
        from bert_score import BERTScorer
    except ImportError as e:
        raise MetricUnavailable(f"BERTScore needs the bert-score package ({e}): {BERTSCORE_INSTALL}") from None
    # The organizers' settings (evaluate's "bertscore" defaults): slow tokenizer, no idf, no rescaling.
    scorer = BERTScorer(model_type=str(model), num_layers=layers, idf=False, rescale_with_baseline=False,
                        batch_size=batch_size, use_fast_tokenizer=False)
    todo = [k for k, empty in enumerate(both_empty) if not empty]
    scores = np.ones(len(cands))
    if todo:
        # bert_score scores a pair with one empty side 0, as the official per-image loop does.
        _, _, f1 = scorer.score([cands[k] for k in todo], [golds[k] for k in todo])
        scores[todo] = f1.numpy()
    return float(scores.mean())


# ---------------------------------------------------------------------------- reports


def report_metrics(
    preds: Mapping[str, str],
    refs: Mapping[str, str],
    *,
    dataset: str | None = "iu_xray",
    meteor: bool = True,
) -> dict:
    """R2Gen-convention scores of ``{study id: report}`` predictions.

    Both sides go through R2Gen's report cleaning for ``dataset`` ("iu_xray" | "mimic_cxr"; None:
    the texts are already clean), which lower-cases, strips punctuation and keeps " . " between
    sentences as a token, as in the reports R2Gen scores; tokens are split on whitespace (R2Gen calls
    pycocoevalcap without PTBTokenizer). An empty report stays empty (it is not cleaned to " .").
    R2Gen scores its references after its own tokenizer (rare words -> <unk>, cut at
    max_seq_length); here the full cleaned reference is used.
    """
    ids = check_ids(preds, refs)
    if dataset not in ("iu_xray", "mimic_cxr", None):
        raise ValueError(f"dataset must be 'iu_xray', 'mimic_cxr' or None, not {dataset!r}")

    def clean(text: str) -> str:
        return _tokens(clean_report(text, dataset) if dataset and text.strip() else text)

    gts = {i: [clean(refs[i])] for i in ids}
    res = {i: [clean(preds[i])] for i in ids}
    coco, skipped = _coco_scores(gts, res, meteor, cider=False)
    out: dict = {"task": "report", "n": len(ids)}
    out.update({k: coco[k] for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")})
    out["BLEU-A"] = float(np.mean([coco["BLEU-2"], coco["BLEU-3"], coco["BLEU-4"]]))
    out["METEOR"] = coco["METEOR"]
    out["ROUGE-L"] = coco["ROUGE-L"]
    out["skipped"] = skipped
    return out


# ---------------------------------------------------------------------------- VQA


_SPACE_AT_SYMBOL = re.compile(r"\s+(?=[^\w\s])|(?<=[^\w\s])\s+")  # "< 5mm" -> "<5mm", "5 - 10mm" -> "5-10mm"
_SPACE_AT_UNIT = re.compile(r"(?<=\d)\s+(?=[^\W\d_])")  # "5 mm" -> "5mm"
_ANSWER_END = ".,;:!?"  # sentence punctuation a generated answer may end with
_ANSWER_WRAPS = ("()", "[]", "{}", '""', "''")  # brackets or quotes around a whole answer


def normalize_answer(answer: str) -> str:
    """An answer with case and spacing folded, and without a final full stop or enclosing brackets.

    Every other character is kept, because it is the answer: "<" and ">" tell "< 5mm" from ">5mm",
    "-" makes "5-10mm" a range, and the official spellings ("Lower-rigth", "instrumnets") are the
    labels. Spacing is folded everywhere, including next to symbols and between a number and its
    unit, so "< 5mm", "<5mm" and "< 5 mm" are one answer."""
    text = " ".join(answer.lower().split())
    text = _SPACE_AT_UNIT.sub("", _SPACE_AT_SYMBOL.sub("", text))
    while True:
        before = text
        text = text.rstrip(_ANSWER_END)
        if len(text) >= 2 and (text[0] + text[-1]) in _ANSWER_WRAPS:
            text = text[1:-1].strip()
        if text == before:
            return text


def answer_set(answer: str | list[str]) -> frozenset[str]:
    """A prediction or reference as a set of normalized answers ("; "-joined, or a list)."""
    parts = answer if isinstance(answer, list) else answer.split(ANSWER_SEPARATOR.strip())
    return frozenset(a for a in (normalize_answer(p) for p in parts) if a)


def vqa_metrics(
    preds: Mapping[str, str],
    refs: Mapping[str, str | list[str]],
    questions: Mapping[str, str],
) -> dict:
    """Accuracy of ``{record id: answer}`` predictions, overall and per question text.

    A prediction is correct when its set of normalized answers equals the reference's: a
    multi-answer question needs all its answers and no others, in any order ("; "-joined, as
    ``data.medvqa.join_answers`` writes targets); repeats count once. An empty prediction is wrong.
    """
    ids = check_ids(preds, refs)
    check_ids(questions, refs, what="question")
    correct = {i: answer_set(preds[i]) == answer_set(refs[i]) for i in ids}
    per_question: dict[str, list[bool]] = {}
    for i in ids:
        per_question.setdefault(questions[i], []).append(correct[i])
    return {
        "task": "vqa",
        "n": len(ids),
        "accuracy": float(np.mean(list(correct.values()))),
        "per_question": {q: {"accuracy": float(np.mean(v)), "n": len(v)} for q, v in per_question.items()},
        "skipped": {},
    }


# ---------------------------------------------------------------------------- display


def format_table(metrics: dict) -> str:
    """A plain-text table of a ``*_metrics`` result, saying why a metric was not computed."""
    skipped = metrics.get("skipped", {})
    rows = [("metric", "value")]
    for key, value in metrics.items():
        if key in ("task", "skipped", "per_question"):
            continue
        if value is None:
            rows.append((key, skipped.get(key, "not computed")))
        elif isinstance(value, float):
            rows.append((key, f"{value:.4f}"))
        else:
            rows.append((key, str(value)))
    lines = _rows(rows)
    if "per_question" in metrics:
        sub = [("question", "accuracy", "n")]
        sub += [(q, f"{v['accuracy']:.4f}", str(v["n"])) for q, v in sorted(metrics["per_question"].items())]
        lines += [""] + _rows(sub)
    return "\n".join(lines)


def _rows(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    fmt = lambda r: "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(rows[0]), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in rows[1:]]
