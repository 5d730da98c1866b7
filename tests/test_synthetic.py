"""The bundled demo data: byte-for-byte determinism, the official formats, and texts that match the pixels.

Formats are parsed here with plain csv / json (not the package's readers), and every text is
checked against the image it describes, in pixel space.
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddle_medvl.data import synthetic as syn

SIZE = 128  # small images keep the tests fast; the pixel checks must hold at this size too
REPO = Path(__file__).resolve().parents[1]

# Spelled out here, not imported: the test pins the official strings, typos included.
OFFICIAL_QUESTIONS = {
    "Are there any abnormalities in the image?",
    "Are there any anatomical landmarks in the image?",
    "Are there any instruments in the image?",
    "Have all polyps been removed?",
    "How many findings are present?",
    "How many instrumnets are in the image?",
    "How many polyps are in the image?",
    "Is there a green/black box artefact?",
    "Is there text?",
    "Is this finding easy to detect?",
    "What color is the abnormality?",
    "What color is the anatomical landmark?",
    "What is the size of the polyp?",
    "What type of polyp is present?",
    "What type of procedure is the image taken from?",
    "Where in the image is the abnormality?",
    "Where in the image is the anatomical landmark?",
    "Where in the image is the instrument?",
}
LOCATIONS = {"Upper-left", "Upper-center", "Upper-right", "Center-left", "Center", "Center-right",
             "Lower-left", "Lower-center", "Lower-rigth"}
CHEXBERT_ORDER = [
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices", "No Finding",
]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, syn.SyntheticSet]:
    root = tmp_path_factory.mktemp("synthetic")
    return {
        "caption": syn.write_imageclef_caption(root / "caption", seed=11, n=30, image_size=SIZE),
        "rocov2": syn.write_rocov2(root / "rocov2", seed=11, n=9, image_size=SIZE),
        "vqa": syn.write_medvqa_gi(root / "vqa", seed=11, n=48, image_size=SIZE),
        "iu": syn.write_iu_xray(root / "iu", seed=11, n=20, image_size=SIZE),
        "mimic": syn.write_mimic_cxr(root / "mimic", seed=11, n=24, image_size=SIZE),
    }


def load(path: Path, mode: str = "L") -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode), np.float32)


def box_mean(a: np.ndarray, k: int) -> np.ndarray:
    """k x k moving average (edge-padded), to find blobs rather than noisy single pixels."""
    pad = np.pad(a, k // 2, mode="edge")
    c = np.pad(pad.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def dilate(mask: np.ndarray) -> np.ndarray:
    """Grow a boolean mask by one pixel (8-neighbourhood)."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([p[1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as (N, 2) arrays of (row, col)."""
    h, w = mask.shape
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        p = np.pad(labels, 1)
        grown = np.where(mask, np.maximum.reduce([labels, p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]), 0)
        if np.array_equal(grown, labels):
            return [np.argwhere(labels == v) for v in np.unique(labels[labels > 0])]
        labels = grown


def read_tsv(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", f"{path} must end with a newline"
    return [line.split("\t") for line in lines[:-1]]


def read_csv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- determinism, writing


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    sizes = dict(n_caption=4, n_rocov2=3, n_vqa=6, n_iu=3, n_mimic=3, image_size=96)
    first = syn.make_demo_data(tmp_path / "a", seed=5, **sizes)
    second = syn.make_demo_data(tmp_path / "b", seed=5, **sizes)
    other = syn.make_demo_data(tmp_path / "c", seed=6, **sizes)
    assert set(first) == set(syn.TASKS)
    for task in syn.TASKS:
        a, b, c = all_files(first[task]), all_files(second[task]), all_files(other[task])
        assert a and a == b, f"{task}: the same seed must give the same files and bytes"
        shared = set(a) & set(c)
        images = [name for name in shared if name.endswith((".jpg", ".png"))]
        assert any(a[name] != c[name] for name in images) or set(a) != set(c), f"{task}: images ignore the seed"
        texts = [name for name in a if name.endswith((".csv", ".json"))]
        assert any(a[name] != c.get(name) for name in texts), f"{task}: texts ignore the seed"


def test_a_sample_does_not_depend_on_n(tmp_path: Path) -> None:
    small = syn.write_medvqa_gi(tmp_path / "small", seed=3, n=2, image_size=96)
    large = syn.write_medvqa_gi(tmp_path / "large", seed=3, n=5, image_size=96)
    assert list(small.scenes) == list(large.scenes)[:2]
    for image_id in small.scenes:
        name = f"images/{image_id}.jpg"
        assert (small.root / name).read_bytes() == (large.root / name).read_bytes()


def test_an_interrupted_run_leaves_no_set_under_the_final_name(tmp_path: Path) -> None:
    def stop(task: str, done: int, total: int) -> None:
        if task == "vqa" and done == 3:
            raise KeyboardInterrupt

    final, partial = tmp_path / syn.TASK_DIRS["vqa"], tmp_path / (syn.TASK_DIRS["vqa"] + ".partial")
    with pytest.raises(KeyboardInterrupt):
        syn.make_demo_data(tmp_path, n_vqa=6, tasks=["vqa"], image_size=96, progress=stop)
    assert not final.exists() and not partial.exists()
    partial.mkdir()  # what a killed run leaves
    (partial / "gt.json").write_text("[")

    roots = syn.make_demo_data(tmp_path, n_vqa=6, tasks=["vqa"], image_size=96)
    assert len(json.loads((roots["vqa"] / "gt.json").read_text())) == 6
    assert not partial.exists()
    with pytest.raises(FileExistsError, match="different from what this command writes"):
        syn.make_demo_data(tmp_path, n_vqa=5, tasks=["vqa"], image_size=96)
    assert len(json.loads((roots["vqa"] / "gt.json").read_text())) == 6 and not partial.exists()
    syn.make_demo_data(tmp_path, n_vqa=2, tasks=["vqa"], image_size=96, overwrite=True)
    assert len(json.loads((roots["vqa"] / "gt.json").read_text())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, "tokenizers"])  # no .partial, no .old
    with pytest.raises(FileExistsError):  # a writer never mixes a new set into an old one
        syn.write_medvqa_gi(roots["vqa"], n=1, image_size=96)


def _load_tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"medvl_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stamps(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file and folder under ``root``: (inode, mtime in ns, bytes), to tell kept from rewritten."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*"))}


def test_the_quickstart_data_step_runs_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's line, run again: an identical set is kept (exit 0); a different one needs --force."""
    import subprocess
    import sys

    from conftest import clean_env

    out = tmp_path / "demo"
    args = ["--out", str(out), "--tasks", "caption", "--n", "caption=20", "--image-size", "32"]
    # The first run in a process of its own: the bytes must not depend on the process (hash seeds).
    first = subprocess.run([sys.executable, str(REPO / "tools" / "make_demo_data.py"), *args], capture_output=True,
                           text=True, timeout=600, env={**clean_env(), "PYTHONHASHSEED": "123"})
    assert first.returncode == 0, first.stderr[-3000:]
    assert "(written)" in first.stdout
    before = _stamps(out)
    assert len([name for name in before if name.endswith(".jpg")]) == 20

    tool = _load_tool("make_demo_data")
    assert tool.main(args) == 0
    stdout = capsys.readouterr().out
    for folder in ("imageclef_caption_2023", "tokenizers"):
        assert f"{out / folder}: already there, identical to what this command writes; kept" in stdout
    assert _stamps(out) == before, "kept means untouched: same inodes, times and bytes"
    assert sorted(p.name for p in out.iterdir()) == ["imageclef_caption_2023", "tokenizers"]

    # a changed argument: an error asking for --force, naming the first differing file; nothing changes
    assert tool.main([*args[:-3], "caption=30", *args[-2:]]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and f"{out / 'imageclef_caption_2023'}: already there and different" in err
    assert "first differing file: ImageCLEFmedical_Caption_2023_caption_prediction_train_labels.csv" in err
    assert _stamps(out) == before and sorted(p.name for p in out.iterdir()) == ["imageclef_caption_2023", "tokenizers"]

    # a modified file, and a file the command does not write
    labels = out / "imageclef_caption_2023" / "ImageCLEFmedical_Caption_2023_caption_prediction_valid_labels.csv"
    labels.write_bytes(labels.read_bytes().replace(b"lesion", b"Lesion", 1))
    assert tool.main(args) == 2
    assert "first differing file: ImageCLEFmedical_Caption_2023_caption_prediction_valid_labels.csv" in capsys.readouterr().err
    (out / "tokenizers" / "notes.txt").write_text("mine")
    assert tool.main(args) == 2
    assert "tokenizers: already there and different from what this command writes (notes.txt is there" in capsys.readouterr().err

    # --force replaces both with what the command writes
    assert tool.main([*args, "--force"]) == 0
    assert "(replaced)" in capsys.readouterr().out
    after = _stamps(out)
    assert {k: v[2] for k, v in after.items()} == {k: v[2] for k, v in before.items()}


# ----------------------------------------------------------------------------- demo tokenizers


def _caption_texts(root: Path, split: str) -> tuple[list[str], list[str]]:
    """(captions, concept sentences) of one split, from the files."""
    names = dict(read_tsv(root / "ImageCLEFmedical_Caption_2023_cui_mapping.csv"))
    captions = [c for _, c in read_tsv(root / f"ImageCLEFmedical_Caption_2023_caption_prediction_{split}_labels.csv")[1:]]
    concepts = read_tsv(root / f"ImageCLEFmedical_Caption_2023_concept_detection_{split}_labels.csv")[1:]
    sentences = [f"The image shows {', '.join(names[c] for c in cuis.split(';'))}." for _, cuis in concepts]
    return captions, sentences


def test_demo_tokenizers_load_round_trip_and_are_deterministic(tmp_path: Path) -> None:
    from paddle_medvl.build import build_qformer_tokenizer, build_tokenizer, generation_token_ids
    from paddle_medvl.config import LanguageConfig, QFormerConfig
    from paddle_medvl.data import demo_tokenizer as dt

    kwargs = dict(seed=4, n_caption=30, tasks=["caption"], image_size=32)  # caption-only generation
    roots = syn.make_demo_data(tmp_path / "a", **kwargs)
    syn.make_demo_data(tmp_path / "b", **kwargs)
    folders = {name: tmp_path / "a" / dt.TOKENIZERS_DIR / name for name in (dt.LLM_DIR, dt.BERT_DIR)}
    again = all_files(tmp_path / "b" / dt.TOKENIZERS_DIR)
    assert again == all_files(tmp_path / "a" / dt.TOKENIZERS_DIR) and len(again) == 7, "same seed, same bytes"
    assert not (tmp_path / "a" / (dt.TOKENIZERS_DIR + ".partial")).exists()

    tok = build_tokenizer(LanguageConfig(tokenizer=str(folders[dt.LLM_DIR])))
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 1, 2)
    assert len(json.loads((folders[dt.LLM_DIR] / "vocab.json").read_text(encoding="utf-8"))) == dt.DEMO_LLM_VOCAB == len(tok)
    assert len(tok("\n", add_special_tokens=False)["input_ids"]) == 1  # BLIP-2 OPT targets end with "\n"
    assert generation_token_ids(tok, LanguageConfig(eos_text="\n")) == (tok("\n")["input_ids"][0], 0)
    sentence = "Axial MRI of the brain showing a small faint lesion in the left upper zone."
    ids = tok(sentence, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == sentence and len(ids) == len(sentence.split()) + 1  # one token a word, and "."
    captions, sentences = _caption_texts(roots["caption"], "valid")  # not trained on; same words
    for caption in captions:
        ids = tok(caption + "\n", add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == caption + "\n" and len(ids) <= len(caption.split()) + 2, caption

    bert = build_qformer_tokenizer(QFormerConfig(tokenizer=str(folders[dt.BERT_DIR])))
    vocab = (folders[dt.BERT_DIR] / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert len(vocab) - 1 == dt.DEMO_BERT_VOCAB == len(bert) and dt.DEMO_DEC_TOKEN_ID == dt.DEMO_QFORMER_VOCAB - 1
    assert (bert.pad_token_id, bert.unk_token_id, bert.cls_token_id, bert.sep_token_id) == (0, 1, 2, 3)
    for text in sentences + captions:
        tokens = bert.convert_ids_to_tokens(bert(text)["input_ids"])
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[UNK]" not in tokens, text
        assert bert.convert_tokens_to_string(tokens[1:-1]).replace(" ", "") == text.lower().replace(" ", "")
        assert not any(t.startswith("##") for t in tokens), f"a word split into pieces: {tokens}"


def test_demo_tokenizers_cover_every_set_in_their_fixed_sizes(sets: dict[str, syn.SyntheticSet], tmp_path: Path) -> None:
    from paddle_medvl.data import demo_tokenizer as dt

    texts = dt.demo_texts({task: s.root for task, s in sets.items()})
    assert any("Problems:" in t for t in texts) and any("Symptoms of existence" in t for t in texts)
    assert any("The image shows" in t for t in texts) and "What color is the abnormality?" in texts
    tokens, merges = dt.train_byte_level_bpe(texts)
    assert len(tokens) == dt.DEMO_LLM_VOCAB and tokens[:3] == list(dt.LLM_SPECIALS) and merges
    assert tokens[-1].startswith("<unused"), "the BPE ran out of room before every word became one token"
    words = dt.train_wordpiece(texts)
    assert len(words) == dt.DEMO_BERT_VOCAB and words[:5] == list(dt.BERT_SPECIALS)
    assert words == dt.train_wordpiece(list(texts)), "WordPiece training must not depend on hash order"
    with pytest.raises(ValueError, match="no texts"):
        dt.write_demo_tokenizers(tmp_path / "empty", ["", "  "])


# ----------------------------------------------------------------------------- formats


def test_imageclef_caption_2023_format(sets: dict[str, syn.SyntheticSet]) -> None:
    root = sets["caption"].root
    mapping = read_tsv(root / "ImageCLEFmedical_Caption_2023_cui_mapping.csv")
    assert all(len(row) == 2 and re.fullmatch(r"C\d{7}", row[0]) for row in mapping), "no header, CUI<TAB>name"
    names = dict(mapping)
    for split in ("train", "valid"):
        captions = read_tsv(root / f"ImageCLEFmedical_Caption_2023_caption_prediction_{split}_labels.csv")
        concepts = read_tsv(root / f"ImageCLEFmedical_Caption_2023_concept_detection_{split}_labels.csv")
        assert captions[0] == ["ID", "caption"] and concepts[0] == ["ID", "cuis"]
        assert all(len(row) == 2 for row in captions + concepts)
        assert [r[0] for r in captions[1:]] == [r[0] for r in concepts[1:]]
        for image_id, cuis in concepts[1:]:
            assert re.fullmatch(rf"ImageCLEFmedical_Caption_2023_{split}_\d{{6}}", image_id)
            assert (root / split / f"{image_id}.jpg").is_file()
            assert cuis.split(";") and all(cui in names for cui in cuis.split(";"))
    assert len(sets["caption"].scenes) == 30


def test_rocov2_format(sets: dict[str, syn.SyntheticSet]) -> None:
    root = sets["rocov2"].root
    mapping = read_csv(root / "cui_mapping.csv")
    assert mapping[0] == ["CUI", "Canonical name"]
    raw = (root / "train_captions.csv").read_text(encoding="utf-8")
    assert raw.startswith("ID,Caption\n") and '"' in raw, "captions with commas are quoted"
    for split in ("train", "valid", "test"):
        captions, concepts = read_csv(root / f"{split}_captions.csv"), read_csv(root / f"{split}_concepts.csv")
        assert captions[0] == ["ID", "Caption"] and concepts[0] == ["ID", "CUIs"] and len(captions) > 1
        for (image_id, caption), (same_id, cuis) in zip(captions[1:], concepts[1:]):
            assert image_id == same_id and re.fullmatch(rf"ROCOv2_2023_{split}_\d{{6}}", image_id)
            assert "," in caption and (root / split / f"{image_id}.jpg").is_file()
            assert all(re.fullmatch(r"C\d{7}", cui) for cui in cuis.split(";"))


def test_medvqa_gi_format(sets: dict[str, syn.SyntheticSet]) -> None:
    root = sets["vqa"].root
    raw = (root / "gt.json").read_text(encoding="utf-8")
    assert "instrumnets" in raw and "green/black box artefact" in raw, "the official typos are data"
    entries = json.loads(raw)
    assert isinstance(entries, list) and len(entries) == 48
    answers: dict[str, set[str]] = {}
    segmentation = 0
    for entry in entries:
        assert set(entry) == {"ImageID", "Labels"} and (root / "images" / f"{entry['ImageID']}.jpg").is_file()
        questions = [label["Question"] for label in entry["Labels"] if label["AnswerType"] != "segmentation"]
        assert sorted(questions) == sorted(OFFICIAL_QUESTIONS), "each image answers the 18 questions once"
        for label in entry["Labels"]:
            assert set(label) == {"Question", "AnswerType", "Answer"}
            assert label["AnswerType"] in {"Text", "Yes/No", "Number", "segmentation"}
            if label["AnswerType"] == "segmentation":
                segmentation += 1
                assert label["Question"].startswith("Where exactly in the image is the")
                assert isinstance(label["Answer"], str) and (root / "masks" / label["Answer"]).is_file()
                continue
            assert isinstance(label["Answer"], list) and label["Answer"]
            assert all(isinstance(a, str) and a for a in label["Answer"])
            answers.setdefault(label["Question"], set()).update(label["Answer"])
    assert segmentation > 0
    assert answers["What is the size of the polyp?"] <= {"< 5mm", "5-10mm", "11-20mm", ">20mm", "Not relevant"}
    assert answers["What type of polyp is present?"] <= {"Paris ip", "Paris is", "Paris iia", "Not relevant"}
    assert answers["What type of procedure is the image taken from?"] == {"Colonoscopy", "Gastroscopy"}
    for question in ("How many polyps are in the image?", "How many instrumnets are in the image?"):
        assert all(a.isdigit() for a in answers[question])
    for question in ("Where in the image is the abnormality?", "Where in the image is the instrument?"):
        assert answers[question] <= LOCATIONS | {"None"}
    located = set().union(*(v for k, v in answers.items() if k.startswith("Where in the image")))
    assert "Lower-rigth" in located and "Lower-right" not in located
    where = "Where in the image is the instrument?"
    cells = [label["Answer"] for e in entries for label in e["Labels"] if label["Question"] == where]
    assert any(len(c) > 1 for c in cells), "multi-answer locations occur"


def test_iu_xray_format(sets: dict[str, syn.SyntheticSet]) -> None:
    root = sets["iu"].root
    annotation = json.loads((root / "annotation.json").read_text(encoding="utf-8"))
    assert list(annotation) == ["train", "val", "test"] and all(annotation.values())
    rows = read_csv(root / "indiana_reports.csv")
    assert rows[0] == ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
    by_uid = {int(row[0]): dict(zip(rows[0], row)) for row in rows[1:]}
    problems = {"Cardiomegaly", "Nodule", "Pulmonary Atelectasis", "Pleural Effusion", "Pneumothorax"}
    for split, entries in annotation.items():
        for entry in entries:
            assert set(entry) == {"id", "report", "image_path", "split"} and entry["split"] == split
            study = entry["id"]
            assert entry["image_path"] == [f"{study}/0.png", f"{study}/1.png"], "two views: frontal, lateral"
            for path in entry["image_path"]:
                with Image.open(root / "images" / path) as image:
                    assert image.format == "PNG" and image.mode == "L"
            row = by_uid[int(re.match(r"CXR(\d+)_IM-\d{4}$", study).group(1))]
            assert row["findings"] == entry["report"]
            assert row["Problems"] == "normal" or set(row["Problems"].split(";")) <= problems
            assert (row["Problems"] == "normal") == (row["MeSH"] == "normal")
            assert row["image"] and row["indication"]
    projections = read_csv(root / "indiana_projections.csv")
    assert projections[0] == ["uid", "filename", "projection"] and len(projections) == 2 * len(by_uid) + 1


def test_mimic_cxr_format(sets: dict[str, syn.SyntheticSet]) -> None:
    root = sets["mimic"].root
    annotation = json.loads((root / "annotation.json").read_text(encoding="utf-8"))
    assert list(annotation) == ["train", "val", "test"]
    labels = read_csv(root / "chexbert_labels.csv")
    assert labels[0] == ["study_id", *CHEXBERT_ORDER]
    assert all(v in {"0", "1", "2", "3"} for row in labels[1:] for v in row[1:])
    studies = {int(row[0]) for row in labels[1:]}
    ids = []
    for split, entries in annotation.items():
        for entry in entries:
            assert set(entry) == {"id", "study_id", "subject_id", "report", "image_path", "split"}
            assert entry["split"] == split and isinstance(entry["study_id"], int) and isinstance(entry["subject_id"], int)
            assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", entry["id"])
            (path,) = entry["image_path"]
            subject, study = entry["subject_id"], entry["study_id"]
            assert path == f"p{str(subject)[:2]}/p{subject}/s{study}/{entry['id']}.jpg"
            assert (root / "images" / path).is_file() and study in studies
            ids.append(entry["id"])
    assert len(ids) == len(set(ids)) == len(studies) == 24


# ----------------------------------------------------------------------------- texts match pixels


def test_captions_name_the_lesion_that_is_drawn(sets: dict[str, syn.SyntheticSet]) -> None:
    root = sets["caption"].root
    names = dict(read_tsv(root / "ImageCLEFmedical_Caption_2023_cui_mapping.csv"))
    lo, hi = syn.CAPTION_FIELD
    radii = syn.LESION_RADII
    for split in ("train", "valid"):
        captions = read_tsv(root / f"ImageCLEFmedical_Caption_2023_caption_prediction_{split}_labels.csv")[1:]
        concepts = dict(read_tsv(root / f"ImageCLEFmedical_Caption_2023_concept_detection_{split}_labels.csv")[1:])
        for image_id, caption in captions:
            size, level, side, row = re.search(r"a (\w+) (\w+) lesion in the (\w+) (\w+) zone", caption).groups()
            image = load(root / split / f"{image_id}.jpg")
            smooth = box_mean(image, 5)
            y, x = np.unravel_index(smooth.argmax(), smooth.shape)
            # Radiological convention: the patient's right is on the image's left.
            assert (x < SIZE / 2) == (side == "right"), f"{image_id}: {caption}"
            assert ("upper", "middle", "lower")[int((y / SIZE - lo) / ((hi - lo) / 3))] == row, f"{image_id}: {caption}"
            peak = smooth[y, x]
            assert (peak > 228) if level == "bright" else (185 < peak < 222), f"{image_id}: peak {peak} for {level}"
            half = round(0.12 * SIZE)  # beyond the largest lesion's radius
            window = image[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1]
            radius = np.sqrt((window > 185).sum() / np.pi) / SIZE
            nearest = min(radii, key=lambda name: abs(np.log(radius / radii[name])))
            assert nearest == size, f"{image_id}: measured radius {radius:.3f} for a {size} lesion"
            cui_names = {names[c] for c in concepts[image_id].split(";")}
            assert {f"{side.capitalize()} {row} zone", f"{size.capitalize()} size", level.capitalize(), "Lesion"} <= cui_names


def _near(rgb: np.ndarray, colour: tuple[int, int, int], tolerance: float) -> np.ndarray:
    return np.linalg.norm(rgb - np.asarray(colour, np.float32), axis=-1) < tolerance


def _overlay_mask(answers: dict[str, list[str]]) -> np.ndarray:
    hidden = np.zeros((SIZE, SIZE), bool)
    for question, box in (("Is there text?", syn.TEXT_BOX), ("Is there a green/black box artefact?", syn.ARTEFACT_BOX)):
        if answers[question] == ["Yes"]:
            x0, y0, x1, y1 = (round(v * SIZE) for v in box)
            hidden[y0:y1, x0:x1] = True
    return hidden


def _cell_candidates(x: float, y: float) -> set[str]:
    """Grid cells within 1.5 px of a point: a centroid on a cell border may fall either side."""
    return {syn.grid_cell(min(max(x + dx, 0), SIZE - 1e-3), min(max(y + dy, 0), SIZE - 1e-3), SIZE)
            for dx in (-1.5, 1.5) for dy in (-1.5, 1.5)}


def _busiest_cell(mask: np.ndarray) -> str:
    """The grid cell holding most of a mask's pixels."""
    cells = Counter(syn.grid_cell(x + 0.5, y + 0.5, SIZE) for y, x in np.argwhere(mask))
    return cells.most_common(1)[0][0]


def test_vqa_answers_match_the_drawn_objects(sets: dict[str, syn.SyntheticSet]) -> None:
    root = sets["vqa"].root
    entries = json.loads((root / "gt.json").read_text(encoding="utf-8"))
    seen_colours: set[str] = set()
    for entry in entries:
        image_id = entry["ImageID"]
        answers = {label["Question"]: label["Answer"] for label in entry["Labels"]}
        rgb = load(root / "images" / f"{image_id}.jpg", "RGB")
        hidden = _overlay_mask(answers)

        # Overlays: light text on a black strip top-left, a green-on-black box bottom-left.
        x0, y0, x1, y1 = (round(v * SIZE) for v in syn.TEXT_BOX)
        strip = rgb[y0:y1, x0:x1]
        text = (strip.max(-1) < 40).mean() > 0.6 and (strip.min(-1) > 150).any()
        assert text == (answers["Is there text?"] == ["Yes"]), image_id
        x0, y0, x1, y1 = (round(v * SIZE) for v in syn.ARTEFACT_BOX)
        box = rgb[y0:y1, x0:x1]
        green = ((box[..., 1] > 150) & (box[..., 0] < 110) & (box[..., 2] < 130)).sum()
        assert (green > 20) == (answers["Is there a green/black box artefact?"] == ["Yes"]), image_id

        # Polyps: one connected blob of a palette colour each.
        blobs = []
        for name, colour in syn.POLYP_COLOURS.items():
            for blob in components(_near(rgb, colour, 45) & ~hidden):
                if len(blob) >= 6:
                    blobs.append((name, blob))
        assert str(len(blobs)) == answers["How many polyps are in the image?"][0], image_id
        assert answers["How many findings are present?"] == answers["How many polyps are in the image?"]
        colours = sorted({name for name, _ in blobs}) or ["None"]
        assert colours == sorted(answers["What color is the abnormality?"]), image_id
        seen_colours.update(colours)
        located = answers["Where in the image is the abnormality?"]
        candidates = [_cell_candidates(blob[:, 1].mean() + 0.5, blob[:, 0].mean() + 0.5) for _, blob in blobs]
        assert all(c & set(located) for c in candidates), f"{image_id}: a polyp outside {located}"
        assert all(any(cell in c for c in candidates) for cell in located if cell != "None"), image_id
        if blobs:
            extent = max(max(np.ptp(blob[:, 0]), np.ptp(blob[:, 1])) + 1 for _, blob in blobs)
            lo, hi = syn.POLYP_SIZES[answers["What is the size of the polyp?"][0]]
            assert lo * SIZE - 1.5 <= extent / 2 <= hi * SIZE + 1.5, f"{image_id}: radius {extent / 2}"
        else:
            assert answers["What is the size of the polyp?"] == ["Not relevant"]

        # Landmark: pixels of the answered colour, mostly in an answered cell.
        landmark_colour = answers["What color is the anatomical landmark?"][0]
        if landmark_colour == "None":
            near_any = sum(_near(rgb, c, 40) & ~hidden for c in syn.LANDMARK_COLOURS.values())
            assert near_any.sum() < 10, image_id
        else:
            near = _near(rgb, syn.LANDMARK_COLOURS[landmark_colour], 40) & ~hidden
            assert near.sum() > 20, image_id
            assert _busiest_cell(near) in answers["Where in the image is the anatomical landmark?"], image_id

        # Instruments: neutral grey metal, mostly in an answered cell.
        grey = (np.ptp(rgb, axis=-1) < 20) & (rgb[..., 0] > 100) & (rgb[..., 0] < 215) & ~hidden
        has_tools = answers["How many instrumnets are in the image?"] != ["0"]
        assert (grey.sum() > 15) == has_tools, f"{image_id}: {grey.sum()} grey pixels"
        if has_tools:
            assert _busiest_cell(grey) in answers["Where in the image is the instrument?"], image_id

        # A segmentation mask outlines the object it names, give or take a border pixel.
        for label in entry["Labels"]:
            if label["AnswerType"] == "segmentation":
                mask = load(root / "masks" / label["Answer"]) > 127
                if "instrument" in label["Question"]:
                    target = grey
                else:
                    target = sum(_near(rgb, c, 45) for c in syn.POLYP_COLOURS.values()) > 0
                assert mask.any() and target.any(), image_id
                assert (mask & dilate(target)).mean() >= 0.8 * mask.mean(), f"{image_id}: mask off the object"
                assert (target & dilate(mask)).mean() >= 0.8 * target.mean(), f"{image_id}: object off the mask"
    assert len(seen_colours - {"None"}) >= 3


def _heart_ratio(image: np.ndarray) -> float:
    """Cardiothoracic ratio measured on the row above the heart's centre."""
    row = image[round(0.56 * SIZE)]
    left = right = SIZE // 2
    while left > 0 and row[left - 1] > 90:
        left -= 1
    while right < SIZE - 1 and row[right + 1] > 90:
        right += 1
    return (right - left + 1) / (syn.THORAX_WIDTH * SIZE)


def _lung_region_mean(image: np.ndarray, side: str, lateral: tuple[float, float], rows: tuple[float, float]) -> float:
    cx = syn.CHEST_LUNG_X[side] * SIZE
    out = -1 if side == "right" else 1  # towards the chest wall, in image x
    xs = sorted(round(cx + out * f * SIZE) for f in lateral)
    return float(image[round(rows[0] * SIZE) : round(rows[1] * SIZE), xs[0] : xs[1]].mean())


def test_iu_reports_describe_the_drawn_chest(sets: dict[str, syn.SyntheticSet]) -> None:
    root = sets["iu"].root
    annotation = json.loads((root / "annotation.json").read_text(encoding="utf-8"))
    findings = {"cardiomegaly": 0, "effusion": 0, "nodule": 0}
    for entry in (e for entries in annotation.values() for e in entries):
        report, study = entry["report"], entry["id"]
        frontal, lateral = (load(root / "images" / p) for p in entry["image_path"])
        assert frontal.shape == lateral.shape == (SIZE, SIZE) and not np.array_equal(frontal, lateral)

        enlarged = "The heart is enlarged." in report
        assert enlarged != ("The heart is normal in size." in report)
        assert (_heart_ratio(frontal) > syn.CARDIOMEGALY_RATIO) == enlarged, f"{study}: {report}"
        findings["cardiomegaly"] += enlarged

        nodule = re.search(r"(\d+) mm nodule in the (right|left) (upper|middle|lower) lung zone", report)
        effusion = re.search(r"small (right|left) pleural effusion", report)
        for side in ("right", "left"):
            if nodule and nodule.group(2) == side and nodule.group(3) == "lower":
                continue  # the nodule may sit in the measured patch
            fluid = _lung_region_mean(frontal, side, (0.02, 0.07), (0.64, 0.70))
            assert (fluid > 90) == bool(effusion and effusion.group(1) == side), f"{study} {side}: {fluid:.0f} / {report}"
            pneumothorax = f"small {side} apical pneumothorax" in report
            apex = _lung_region_mean(frontal, side, (0.05, 0.09), (0.22, 0.28))
            assert (apex < 26) == pneumothorax, f"{study} {side}: {apex:.0f} / {report}"
        findings["effusion"] += bool(effusion)

        smooth = box_mean(frontal, 3)
        y, x = np.unravel_index(smooth.argmax(), smooth.shape)
        if nodule:
            findings["nodule"] += 1
            _, side, row = nodule.groups()
            lo, hi = syn.CHEST_ROWS[row]
            assert smooth[y, x] > 160, f"{study}: no bright nodule for {report!r}"
            assert (x < SIZE / 2) == (side == "right") and lo * SIZE <= y <= hi * SIZE, f"{study}: {report}"
        else:
            assert smooth[y, x] < 160, f"{study}: a bright spot but no nodule in {report!r}"
    assert all(findings.values()), f"the sample should show each finding at least once: {findings}"


def test_mimic_labels_follow_the_report_and_the_drawing(sets: dict[str, syn.SyntheticSet]) -> None:
    root = sets["mimic"].root
    annotation = json.loads((root / "annotation.json").read_text(encoding="utf-8"))
    rows = read_csv(root / "chexbert_labels.csv")
    labels = {int(row[0]): dict(zip(rows[0][1:], map(int, row[1:]))) for row in rows[1:]}
    for entry in (e for entries in annotation.values() for e in entries):
        report, label = entry["report"], labels[entry["study_id"]]
        image = load(root / "images" / entry["image_path"][0])
        enlarged = "heart is moderately enlarged" in report
        assert label["Cardiomegaly"] == (1 if enlarged else 2)
        assert (_heart_ratio(image) > syn.CARDIOMEGALY_RATIO) == enlarged, report
        assert label["Pleural Effusion"] == (1 if re.search(r"small \w+ pleural effusion", report) else 2)
        assert label["Pneumothorax"] == (1 if "apical pneumothorax" in report else 2)
        assert label["Lung Lesion"] == (1 if "nodule" in report else 0)
        assert (label["Atelectasis"], label["Lung Opacity"]) == ((3, 1) if "may reflect atelectasis" in report else (0, 0))
        device = "endotracheal tube" in report
        assert label["Support Devices"] == (1 if device else 0)
        tube = image[round(0.05 * SIZE) : round(0.25 * SIZE), round(0.47 * SIZE) : round(0.53 * SIZE) + 1]
        assert (tube.mean(axis=0).max() > 200) == device, report  # a bright vertical line
        sick = [name for name in CHEXBERT_ORDER[:-2] if label[name] in (1, 3)]
        assert label["No Finding"] == (0 if sick else 1)


def test_in_memory_scenes_are_what_was_written(sets: dict[str, syn.SyntheticSet]) -> None:
    """The scenes a writer returns are the ground truth behind every file it wrote."""
    caption = sets["caption"]
    written = dict(read_tsv(caption.root / "ImageCLEFmedical_Caption_2023_caption_prediction_train_labels.csv")[1:])
    for image_id, caption_text in written.items():
        assert syn.caption_text(caption.scenes[image_id]) == caption_text
    rocov2 = sets["rocov2"]
    for image_id, text in read_csv(rocov2.root / "test_captions.csv")[1:]:
        assert syn.caption_text(rocov2.scenes[image_id], "rocov2") == text
    vqa = sets["vqa"]
    for entry in json.loads((vqa.root / "gt.json").read_text(encoding="utf-8")):
        assert syn.vqa_labels(entry["ImageID"], vqa.scenes[entry["ImageID"]]) == entry["Labels"]
    iu = sets["iu"]
    for entry in json.loads((iu.root / "annotation.json").read_text(encoding="utf-8"))["train"]:
        assert syn.iu_report(iu.scenes[entry["id"]])["findings"] == entry["report"]
    mimic = sets["mimic"]
    rows = {int(row[0]): [int(v) for v in row[1:]] for row in read_csv(mimic.root / "chexbert_labels.csv")[1:]}
    for entry in json.loads((mimic.root / "annotation.json").read_text(encoding="utf-8"))["test"]:
        report, labels = syn.mimic_report(mimic.scenes[entry["id"]])
        assert report == entry["report"] and list(labels.values()) == rows[entry["study_id"]]


def test_read_findings_inverts_the_synthetic_reports():
    """iu_xray.read_findings (what tools/eval.py --findings scores) reads back every finding of a scene
    from its report, raw and after R2Gen's cleaning: the report's wording and the reader cannot drift apart."""
    from paddle_medvl.data.r2gen import clean_report
    from paddle_medvl.data.synthetic.iu_xray import finding_accuracy, read_findings

    rng = np.random.default_rng(0)
    seen = Counter()
    for _ in range(300):
        scene = syn.sample_chest_scene(rng, 64, with_device=False)
        report = syn.iu_report(scene)["findings"]
        want = {"cardiomegaly": () if scene.cardiomegaly else None,
                "nodule": (str(scene.nodule_mm), *scene.nodule) if scene.nodule else None,
                "atelectasis": (scene.atelectasis,) if scene.atelectasis else None,
                "effusion": (scene.effusion,) if scene.effusion else None,
                "pneumothorax": (scene.pneumothorax,) if scene.pneumothorax else None}
        for text in (report, clean_report(report, "iu_xray")):
            assert read_findings(text) == want, text
        seen.update(name for name, value in want.items() if value is not None)
    assert min(seen.values()) > 10  # every finding was exercised
    reference = {"a": "There is a small left pleural effusion.", "b": "The lungs are clear."}
    scores = finding_accuracy({"a": "There is a small right pleural effusion.", "b": "The lungs are clear."}, reference)
    assert scores["effusion"] == 1.0 and scores["effusion side"] == 0.0 and scores["nodule"] == 1.0
