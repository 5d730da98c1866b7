"""Seconds per 1,000 pairs for each metric of paddle_medvl.eval, on synthetic pairs made here.

Captions look like ImageCLEF/ROCO captions (modality, region, finding, numbers, punctuation), reports
like IU X-RAY findings (several sentences from a bank of normal and abnormal statements), VQA like
MEDVQA-GI (its questions, single and "; "-joined multi-answers). Each library scorer is timed alone
on the same preprocessed text the metrics functions give it, then each whole ``*_metrics`` call.
METEOR's JVM start is timed once, apart ("cold start"); its per-pair rows are with a warm JVM.

    python bench/metrics.py
    python bench/metrics.py --pairs 2000 --bertscore-model /models/deberta-xlarge-mnli
"""
from __future__ import annotations

import argparse
import random
import shutil
import time
from typing import Callable

from paddle_medvl.data.r2gen import clean_report
from paddle_medvl.eval import caption_metrics, imageclef_preprocess, remove_repetition, report_metrics, vqa_metrics

MODALITIES = ["Axial CT", "Coronal T2-weighted MRI", "Chest X-ray", "Ultrasonography", "Contrast-enhanced CT",
              "Sagittal T1-weighted MR image", "Panoramic radiograph", "Angiogram", "PET/CT"]
REGIONS = ["abdomen", "chest", "brain", "left knee", "right kidney", "pelvis", "cervical spine", "mandible", "liver"]
FINDINGS = ["a {n}-cm mass", "a hypodense lesion", "bilateral infiltrates", "a large pleural effusion",
            "an enhancing nodule ({n} mm)", "multiple cysts", "a fracture of the distal radius", "free air",
            "a calcified plaque", "diffuse thickening"]
PLACES = ["in the right upper lobe", "in the left lobe", "(arrow)", "(arrowheads)", "at the level of L{n}",
          "adjacent to the aorta", ""]
NORMAL = ["the heart is normal in size", "the mediastinum is unremarkable", "the lungs are clear",
          "no pleural effusion or pneumothorax", "no focal consolidation", "there is no acute bony abnormality",
          "cardiomediastinal silhouette is within normal limits", "no acute cardiopulmonary abnormality"]
ABNORMAL = ["mild cardiomegaly", "there is a small left pleural effusion", "degenerative changes of the thoracic spine",
            "streaky opacities in the lung bases likely atelectasis", "calcified granuloma in the right upper lobe",
            "the aorta is tortuous", "low lung volumes"]
VQA_QUESTIONS = {
    "What type of procedure is the image taken from?": ["Colonoscopy", "Gastroscopy"],
    "Have all polyps been removed?": ["Yes", "No", "Not relevant"],
    "Is this finding easy to detect?": ["Yes", "No", "Not relevant"],
    "Is there a green/black box artefact?": ["Yes", "No"],
    "Is there text?": ["Yes", "No"],
    "What color is the abnormality?": ["Red", "Pink", "White", "Yellow", "Flesh"],
    "Where in the image is the abnormality?": ["Center", "Center-left", "Lower-rigth", "Upper-left", "Lower-left"],
    "Are there any abnormalities in the image?": ["Polyp", "Oesophagitis", "Ulcerative colitis", "No"],
    "Are there any anatomical landmarks in the image?": ["Z-line", "Pylorus", "Cecum", "None"],
    "Are there any instruments in the image?": ["Tube", "Biopsy forceps", "Polyp snare", "None"],
}


def make_captions(n: int, rng: random.Random) -> tuple[dict[str, str], dict[str, str]]:
    """Predictions share part of each reference (modality, region or finding), as real outputs do."""
    def caption() -> list[str]:
        return [rng.choice(MODALITIES), rng.choice(REGIONS), rng.choice(FINDINGS).format(n=rng.randint(1, 12)),
                rng.choice(PLACES).format(n=rng.randint(1, 5))]

    preds, refs = {}, {}
    for i in range(n):
        ref, pred = caption(), caption()
        for k in rng.sample(range(4), 2):
            pred[k] = ref[k]
        key = f"ImageCLEFmedical_Caption_2023_valid_{i:06d}"
        refs[key] = f"{ref[0]} of the {ref[1]} showing {ref[2]} {ref[3]}".strip() + "."
        preds[key] = f"{pred[0]} of the {pred[1]} showing {pred[2]} {pred[3]}".strip().lower()
    return preds, refs


def make_reports(n: int, rng: random.Random) -> tuple[dict[str, str], dict[str, str]]:
    def report() -> list[str]:
        return rng.sample(NORMAL, rng.randint(3, 5)) + rng.sample(ABNORMAL, rng.randint(0, 2))

    preds, refs = {}, {}
    for i in range(n):
        ref = report()
        pred = ref[: rng.randint(1, len(ref))] + rng.sample(NORMAL, 1)
        refs[f"CXR{i}_IM-{i:04d}"] = ". ".join(s.capitalize() for s in ref) + "."
        preds[f"CXR{i}_IM-{i:04d}"] = " . ".join(pred) + " ."
    return preds, refs


def make_vqa(n: int, rng: random.Random) -> tuple[dict, dict, dict]:
    preds, refs, questions = {}, {}, {}
    items = list(VQA_QUESTIONS.items())
    for i in range(n):
        question, options = items[i % len(items)]
        ref = rng.sample(options, rng.choice([1, 1, 1, 2]))
        pred = ref if rng.random() < 0.6 else rng.sample(options, 1)
        key = f"cl8k2u1qs1dh0083284g7x0wb#{i}"
        questions[key], refs[key], preds[key] = question, ref, "; ".join(sorted(pred))
    return preds, refs, questions


def make_generated(n: int, rng: random.Random) -> list[str]:
    """Generated captions, a third of them ending in a loop as in paper 000's Table 2."""
    preds, _ = make_captions(n, rng)
    out = []
    for i, text in enumerate(preds.values()):
        if i % 3 == 0:
            unit = " ".join(rng.sample(text.split(), 2))
            text = f"{text} {' '.join([unit] * rng.randint(4, 15))}"
        out.append(text)
    return out


def per_thousand(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--bertscore-model", help="local folder of the BERTScore model (default: not timed)")
    parser.add_argument("--bertscore-layers", type=int, default=40)
    args = parser.parse_args()

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from rouge_score import rouge_scorer

    rng = random.Random(0)
    n = args.pairs
    rows: list[tuple[str, str, str]] = []

    def add(task: str, metric: str, seconds: float | str) -> None:
        rows.append((task, metric, f"{seconds:.3f}" if isinstance(seconds, float) else seconds))

    java = shutil.which("java") is not None
    meteor = None
    if java:
        from pycocoevalcap.meteor.meteor import Meteor

        start = time.perf_counter()
        meteor = Meteor()
        meteor.compute_score({"0": ["warm up"]}, {"0": ["warm up"]})
        add("(once)", "METEOR JVM cold start (s, not per 1,000)", time.perf_counter() - start)

    preds, refs = make_captions(n, rng)
    cands = {k: imageclef_preprocess(v) for k, v in preds.items()}
    golds = {k: imageclef_preprocess(v) for k, v in refs.items()}
    res = {k: [" ".join(v.split())] for k, v in cands.items()}
    gts = {k: [" ".join(v.split())] for k, v in golds.items()}
    rouge1 = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
    add("caption", "ImageCLEF preprocessing", per_thousand(lambda: [imageclef_preprocess(t) for t in preds.values()], n))
    add("caption", "ROUGE-1 (rouge-score, per image)",
        per_thousand(lambda: [rouge1.score(golds[k], cands[k]) for k in cands], n))
    add("caption", "BLEU-1..4 (pycocoevalcap)", per_thousand(lambda: Bleu(4).compute_score(gts, res, verbose=0), n))
    add("caption", "ROUGE-L (pycocoevalcap)", per_thousand(lambda: Rouge().compute_score(gts, res), n))
    add("caption", "CIDEr-D (pycocoevalcap)", per_thousand(lambda: Cider().compute_score(gts, res), n))
    add("caption", "METEOR (jar, warm)", per_thousand(lambda: meteor.compute_score(gts, res), n) if meteor else "no java")
    if args.bertscore_model:
        seconds = per_thousand(lambda: caption_metrics(preds, refs, bertscore_model=args.bertscore_model,
                                                       bertscore_layers=args.bertscore_layers, meteor=False), n)
        add("caption", f"caption_metrics with BERTScore ({args.bertscore_layers} layers), no METEOR", seconds)
    else:
        add("caption", "BERTScore", "not timed: give --bertscore-model")
    caption_metrics({"0": "x"}, {"0": "x"}, meteor=java)  # starts the metrics module's own JVM
    add("caption", "caption_metrics (all but BERTScore)", per_thousand(lambda: caption_metrics(preds, refs, meteor=java), n))

    preds, refs = make_reports(n, rng)
    clean = {k: " ".join(clean_report(v, "iu_xray").split()) for k, v in refs.items()}
    rgts = {k: [v] for k, v in clean.items()}
    rres = {k: [" ".join(clean_report(v, "iu_xray").split())] for k, v in preds.items()}
    add("report", "R2Gen cleaning (both sides)",
        per_thousand(lambda: [clean_report(t, "iu_xray") for t in [*preds.values(), *refs.values()]], n))
    add("report", "BLEU-1..4 (pycocoevalcap)", per_thousand(lambda: Bleu(4).compute_score(rgts, rres, verbose=0), n))
    add("report", "ROUGE-L (pycocoevalcap)", per_thousand(lambda: Rouge().compute_score(rgts, rres), n))
    add("report", "METEOR (jar, warm)", per_thousand(lambda: meteor.compute_score(rgts, rres), n) if meteor else "no java")
    add("report", "report_metrics (all)", per_thousand(lambda: report_metrics(preds, refs, meteor=java), n))

    preds, refs, questions = make_vqa(n, rng)
    add("vqa", "vqa_metrics", per_thousand(lambda: vqa_metrics(preds, refs, questions), n))

    generated = make_generated(n, rng)
    add("postprocess", "remove_repetition (1/3 with loops)", per_thousand(lambda: [remove_repetition(t) for t in generated], n))

    widths = [max(len(r[c]) for r in rows + [("task", "metric", "s / 1,000 pairs")]) for c in range(3)]
    for row in [("task", "metric", "s / 1,000 pairs"), tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
