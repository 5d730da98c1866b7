"""tools/predict.py and tools/eval.py end to end on a tiny random BLIP-2 and the synthetic demo data.

The output files are read back with parsers written here from the organizers' descriptions (the
ImageCLEF evaluators' ``csv.reader(delimiter='|', quoting=QUOTE_NONE)``, the MEDVQA-GI
``verify_task_1_submission.py`` checks), not with ``paddle_medvl.eval.formats``.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_medvl.config import load_config
from paddle_medvl.data import load_records
from paddle_medvl.eval import formats
from paddle_medvl.eval.postprocess import remove_repetition
from tiny_tokenizers import byte_level_bpe

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {
    "vision": {"image_size": 16, "patch_size": 4, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "mlp_dim": 64},
    "qformer": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "num_query_tokens": 8,
                "text": False, "max_position_embeddings": 32, "vocab_size": 40, "dec_token_id": 39},
    "language": {  # the byte-level tokenizer has 259 tokens: <pad> 0, </s> 1, <unk> 2, then the bytes
        "config": {"vocab_size": 259, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "ffn_dim": 64, "max_position_embeddings": 128, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1},
    },
}
FORMATS = {  # Data section, split, task
    "caption": ({"format": "imageclef_caption", "prompt": "a photo of"}, "valid"),
    "vqa": ({"format": "medvqa_gi", "val_fraction": 0.5}, "valid"),
    "report": ({"format": "iu_xray", "reports_csv": "indiana_reports.csv"}, "test"),
}
CAPTION_KEYS = {"task", "n", "BERTScore", "ROUGE-1", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "skipped", "source"}
REPORT_KEYS = {"task", "n", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "BLEU-A", "METEOR", "ROUGE-L", "skipped", "source"}
VQA_KEYS = {"task", "n", "accuracy", "per_question", "skipped", "source"}


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"medvl_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


predict_tool = load_tool("predict")
eval_tool = load_tool("eval")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tokenizer folder, demo data, a tiny checkpoint and one config per task."""
    import yaml

    from paddle_medvl.data.synthetic import make_demo_data
    from paddle_medvl.models.blip2 import Blip2

    root = tmp_path_factory.mktemp("predict_eval")
    byte_level_bpe(root / "tok_src").save_pretrained(str(root / "tokenizer"))
    data = make_demo_data(root / "data", seed=1, n_caption=10, n_vqa=4, n_iu=12, image_size=32,
                          tasks=["caption", "vqa", "iu"])
    base = {
        "Global": {"device": "cpu", "seed": 0},
        "Data": {"image_size": 16, "num_workers": 0, "max_prompt_len": 24, "max_target_len": 16},
        "Model": {**TINY_MODEL, "language": {**TINY_MODEL["language"], "tokenizer": str(root / "tokenizer")}},
        "Decode": {"num_beams": 2, "max_new_tokens": 12, "min_new_tokens": 2},
        "Eval": {"batch_size": 8, "meteor": False},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    configs = {}
    for task, (data_cfg, _) in FORMATS.items():
        dirname = {"caption": "caption", "vqa": "vqa", "report": "iu"}[task]
        configs[task] = root / f"{task}.yaml"
        configs[task].write_text(yaml.safe_dump({"_base_": "base.yaml", "Data": {**data_cfg, "root": str(data[dirname])}}))
    paddle.seed(0)
    model = Blip2(load_config(root / "base.yaml").Model)
    model.save_pretrained(root / "ckpt")
    return {"root": root, "configs": configs, "ckpt": root / "ckpt", "data": data}


def predict(env, task: str, out: Path, *extra: str) -> int:
    split = FORMATS[task][1]
    return predict_tool.main(["-c", str(env["configs"][task]), "--checkpoint", str(env["ckpt"]), "--split", split,
                              "--out", str(out), *extra])


def records(env, task: str):
    return load_records(load_config(env["configs"][task]).Data, FORMATS[task][1])


# ---------------------------------------------------------------- the test's own parsers of the official formats


def parse_imageclef_run(path: Path) -> dict[str, str]:
    """As the organizers' caption evaluators read a run: '|'-separated, no quoting, one line per image."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE):
            assert len(row) == 2, row
            assert row[0] not in out, f"image ID {row[0]} twice"
            out[row[0]] = row[1]
    return out


def parse_medvqa_submission(path: Path, required: range | None) -> dict[tuple[str, int], tuple[str, list]]:
    """As verify_task_1_submission.py checks it: image -> entries with QuestionID/Question/Answer, each
    QuestionID one of the task's numbers, at most once per image (and all required ones, if given)."""
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    out = {}
    for image_id, entries in data.items():
        seen = set()
        for entry in entries:
            assert {"QuestionID", "Question", "Answer"} <= set(entry)
            qid = entry["QuestionID"]
            assert isinstance(qid, int) and 0 <= qid <= 19 and qid not in seen
            seen.add(qid)
            out[(image_id, qid)] = (entry["Question"], entry["Answer"])
        if required is not None:
            assert set(required) <= seen, (image_id, sorted(set(required) - seen))
    return out


def parse_report_json(path: Path) -> dict[str, dict]:
    rows = json.loads(path.read_text())
    assert isinstance(rows, list)
    out = {}
    for row in rows:
        assert isinstance(row["id"], str) and isinstance(row["report"], str) and row["id"] not in out
        out[row["id"]] = row
    return out


def parse_report_csv(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        assert next(reader) == ["id", "report"]
        out = {}
        for row in reader:
            assert len(row) == 2 and row[0] not in out
            out[row[0]] = row[1]
    return out


# ---------------------------------------------------------------- predict, end to end


@pytest.fixture(scope="module")
def predicted(env):
    """One predictions file per task (report: JSON and CSV), from the tiny checkpoint."""
    out = env["root"] / "runs"
    files = {"caption": out / "caption.csv", "vqa": out / "vqa.json", "report": out / "report.json", "report_csv": out / "report.csv"}
    for task in ("caption", "vqa", "report"):
        assert predict(env, task, files[task]) == 0
    assert predict(env, "report", files["report_csv"]) == 0
    return files


def test_caption_run_file(env, predicted):
    run = parse_imageclef_run(predicted["caption"])
    assert list(run) == [r.id for r in records(env, "caption")] and len(run) == 2


def test_vqa_submission(env, predicted):
    recs = records(env, "vqa")
    sub = parse_medvqa_submission(predicted["vqa"], required=None)
    # one entry per (image, question): the official question numbers, the question texts as asked
    want = {(r.extras["image_id"], formats.MEDVQA_QUESTIONS.index(r.extras["question"])): r.extras["question"] for r in recs}
    assert set(sub) == set(want) and len(sub) == len(recs) == 36
    assert all(sub[k][0] == q and isinstance(sub[k][1], list) for k, q in want.items())


def test_report_files(env, predicted):
    recs = records(env, "report")
    as_json = parse_report_json(predicted["report"])
    as_csv = parse_report_csv(predicted["report_csv"])
    assert list(as_json) == list(as_csv) == [r.id for r in recs] and len(recs) >= 2
    assert all(as_json[r.id]["reference"] == r.target for r in recs)
    assert {k: v["report"] for k, v in as_json.items()} == as_csv  # same model, same texts


def test_predict_images_for_vqa_asks_the_18_questions(env, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((env["data"]["vqa"] / "images").iterdir())[:2]:
        (images / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "test_run.json"
    assert predict_tool.main(["-c", str(env["configs"]["vqa"]), "--checkpoint", str(env["ckpt"]),
                              "--images", str(images), "--out", str(out)]) == 0
    sub = parse_medvqa_submission(out, required=range(18))
    assert {image for image, _ in sub} == {p.stem for p in images.iterdir()} and len(sub) == 36


def test_predict_cli_on_one_image(env, tmp_path):
    """The script itself, as a user runs it (a subprocess: its own Paddle, its own argv)."""
    from conftest import clean_env

    image = next((env["data"]["caption"] / "valid").iterdir())
    out = tmp_path / "one.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "predict.py"), "-c", str(env["configs"]["caption"]),
         "--checkpoint", str(env["ckpt"]), "--images", str(image), "--out", str(out), "--format", "json"],
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert list(parse_report_json(out)) == [image.stem] and "predict caption" in result.stderr  # the progress bar


# ---------------------------------------------------------------- post-processing


def test_postprocess_on_and_off(env, tmp_path, monkeypatch):
    """Generation patched to fixed token rows: one ends with EOS (not truncated), one runs to the limit."""
    from paddle_medvl.models.blip2 import Blip2

    tok = byte_level_bpe(tmp_path / "tok")
    eos = tok("\n", add_special_tokens=False)["input_ids"][0]  # Model.language.eos_text, as BLIP-2's OPT
    loop = "mass mass mass"
    fragment = "the heart is normal. the lungs are"
    rows = [tok(loop, add_special_tokens=False)["input_ids"] + [eos], tok(fragment, add_special_tokens=False)["input_ids"]]
    width = max(map(len, rows))
    ids = np.array([r + [tok.pad_token_id] * (width - len(r)) for r in rows], dtype="int64")

    def fake_generate(self, pixel_values, *args, **kwargs):
        return paddle.to_tensor(ids[: pixel_values.shape[0]])

    monkeypatch.setattr(Blip2, "generate", fake_generate)
    raw, post = tmp_path / "raw.csv", tmp_path / "post.csv"
    assert predict(env, "caption", raw, "--no-postprocess") == 0
    assert predict(env, "caption", post) == 0
    first, second = [r.id for r in records(env, "caption")]
    assert parse_imageclef_run(raw) == {first: loop, second: fragment}
    assert parse_imageclef_run(post) == {first: remove_repetition(loop, truncated=False),
                                         second: remove_repetition(fragment, truncated=True)}
    assert parse_imageclef_run(post) == {first: "mass", second: "the heart is normal."}


# ---------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, fmt):
    path = tmp_path / f"run.{fmt}"
    good = [formats.Prediction("img1#0", "first", image_id="img1", question_id=0, question="q")]
    formats.write_predictions(path, fmt, good)
    before = path.read_bytes()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(formats.os, "fsync", boom)
    new = [formats.Prediction("img2#1", "second", image_id="img2", question_id=1, question="q")]
    with pytest.raises(OSError, match="disk full"):
        formats.write_predictions(path, fmt, new)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_bad_row_mid_file_keeps_the_previous_file(tmp_path):
    path = tmp_path / "run.csv"
    formats.write_imageclef(path, [("a", "old caption")])
    with pytest.raises(formats.FormatError, match="'b' given twice"):
        formats.write_imageclef(path, [("b", "x"), ("c", "y"), ("b", "z")])
    assert path.read_text() == "a|old caption\n" and [p.name for p in tmp_path.iterdir()] == ["run.csv"]


def test_failed_prediction_keeps_the_previous_file(env, tmp_path, capsys):
    out = tmp_path / "run.csv"
    out.write_text("previous|run\n")
    assert predict(env, "caption", out, "-o", "Model.language.tokenizer=" + str(tmp_path / "nowhere")) == 1
    assert "Model.language.tokenizer" in capsys.readouterr().err
    assert out.read_text() == "previous|run\n"


def test_imageclef_writer_keeps_the_separator_out_of_captions(tmp_path):
    path = tmp_path / "run.csv"
    assert formats.write_imageclef(path, [("a", "left | right\nnext line"), ("b", "plain")]) == 1
    assert parse_imageclef_run(path) == {"a": "left   right next line", "b": "plain"}


# ---------------------------------------------------------------- eval


def run_eval(env, task: str, predictions: Path, out: Path, *extra: str) -> dict:
    args = ["-c", str(env["configs"][task]), "--predictions", str(predictions), "--out", str(out), *extra]
    if "--references" not in extra and "--split" not in extra:
        args += ["--split", FORMATS[task][1]]
    assert eval_tool.main(args) == 0
    return json.loads(out.read_text())


def in_unit_range(metrics: dict, keys) -> bool:
    return all(metrics[k] is None or 0.0 <= metrics[k] <= 1.0 for k in keys)


def test_eval_of_predictions(env, predicted, tmp_path, capsys):
    caption = run_eval(env, "caption", predicted["caption"], tmp_path / "caption.json")
    assert set(caption) == CAPTION_KEYS and caption["n"] == 2
    assert in_unit_range(caption, CAPTION_KEYS - {"task", "n", "skipped", "source", "CIDEr-D"}) and caption["CIDEr-D"] >= 0
    assert caption["BERTScore"] is None and caption["METEOR"] is None and "BERTScore" in caption["skipped"]

    vqa = run_eval(env, "vqa", predicted["vqa"], tmp_path / "vqa.json")
    assert set(vqa) == VQA_KEYS and vqa["n"] == 36 and 0 <= vqa["accuracy"] <= 1 and len(vqa["per_question"]) == 18

    for key in ("report", "report_csv"):
        report = run_eval(env, "report", predicted[key], tmp_path / f"{key}.json")
        assert set(report) == REPORT_KEYS and in_unit_range(report, REPORT_KEYS - {"task", "n", "skipped", "source"})
    assert "ROUGE-L" in capsys.readouterr().out  # the table


def test_eval_default_output_beside_predictions(env, predicted):
    assert eval_tool.main(["-c", str(env["configs"]["report"]), "--predictions", str(predicted["report_csv"]),
                           "--split", "test"]) == 0
    assert json.loads((predicted["report_csv"].with_name("report.metrics.json")).read_text())["task"] == "report"


def test_golden_captions(env, tmp_path):
    """The official valid labels file (tab-separated, header) as predictions: a perfect run."""
    labels = env["data"]["caption"] / "ImageCLEFmedical_Caption_2023_caption_prediction_valid_labels.csv"
    metrics = run_eval(env, "caption", labels, tmp_path / "m.json")
    assert metrics["BLEU-4"] == pytest.approx(1.0) and metrics["ROUGE-1"] == pytest.approx(1.0)
    # and as a run file against the same labels file as references
    run = tmp_path / "run.csv"
    formats.write_imageclef(run, [(r.id, r.target) for r in records(env, "caption")])
    metrics = run_eval(env, "caption", run, tmp_path / "m2.json", "--references", str(labels))
    assert metrics["BLEU-4"] == pytest.approx(1.0) and metrics["ROUGE-1"] == pytest.approx(1.0)


def test_golden_vqa(env, tmp_path):
    """gt.json turned into a submission by hand: accuracy 1 against the data set's own records."""
    gt = json.loads((env["data"]["vqa"] / "gt.json").read_text())
    submission = {
        entry["ImageID"]: [
            {"QuestionID": formats.MEDVQA_QUESTIONS.index(label["Question"]), "Question": label["Question"],
             "Answer": list(reversed(label["Answer"]))}  # any order
            for label in entry["Labels"] if label["AnswerType"] != "segmentation"
        ]
        for entry in gt
    }
    path = tmp_path / "gold.json"
    path.write_text(json.dumps(submission))
    metrics = run_eval(env, "vqa", path, tmp_path / "m.json", "--split", "all")
    assert metrics["accuracy"] == 1.0 and metrics["n"] == 4 * 18
    # the same file as its own references
    metrics = run_eval(env, "vqa", path, tmp_path / "m2.json", "--references", str(path))
    assert metrics["accuracy"] == 1.0


def test_golden_reports(env, tmp_path):
    path = tmp_path / "gold.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "report"])
        writer.writerows([r.id, r.target] for r in records(env, "report"))
    metrics = run_eval(env, "report", path, tmp_path / "m.json")
    assert metrics["BLEU-4"] == pytest.approx(1.0) and metrics["ROUGE-L"] == pytest.approx(1.0)


def test_missing_prediction_is_an_error_naming_it(env, predicted, tmp_path, capsys):
    lines = predicted["caption"].read_text().splitlines(keepends=True)
    dropped = lines[1].split("|")[0]
    partial = tmp_path / "partial.csv"
    partial.write_text(lines[0])
    args = ["-c", str(env["configs"]["caption"]), "--predictions", str(partial), "--split", "valid", "--out", str(tmp_path / "m.json")]
    assert eval_tool.main(args) == 1
    err = capsys.readouterr().err
    assert dropped in err and "no prediction" in err and not (tmp_path / "m.json").exists()


# ---------------------------------------------------------------- build.py


def test_pretrained_checkpoint_defines_the_model(env):
    """A config that names the checkpoint but not its sizes gets the checkpoint's architecture and keeps
    its own run-time settings."""
    from paddle_medvl.build import build_model, resolve_model_config
    from paddle_medvl.config import LanguageConfig, ModelConfig

    mine = ModelConfig(pretrained=str(env["ckpt"]), language=LanguageConfig(tokenizer="/my/tokenizer", dtype="float64"),
                       concept_loss_weight=0.5)
    resolved = resolve_model_config(mine)
    assert resolved.vision.hidden_size == 32 and resolved.language.config == TINY_MODEL["language"]["config"]
    assert (resolved.language.tokenizer, resolved.language.dtype, resolved.concept_loss_weight) == ("/my/tokenizer", "float64", 0.5)
    assert resolve_model_config(resolved) == resolved
    model = build_model(ModelConfig(pretrained=str(env["ckpt"])))
    assert model.config.qformer.num_query_tokens == 8
    with pytest.raises(FileNotFoundError, match="convert_hf.py"):
        resolve_model_config(ModelConfig(pretrained=str(env["root"] / "missing")))


def test_tokenizer_folders(env, tmp_path):
    from paddle_medvl.build import BuildError, build_tokenizer, generation_token_ids
    from paddle_medvl.config import LanguageConfig

    with pytest.raises(BuildError, match="Salesforce/blip2-opt-2.7b"):
        build_tokenizer(LanguageConfig())
    with pytest.raises(BuildError, match="is not a folder"):
        build_tokenizer(LanguageConfig(tokenizer=str(tmp_path / "missing")))
    # a Hugging Face folder as the BLIP-2 OPT checkpoints ship it: "GPT2Tokenizer", which paddlenlp's
    # AutoTokenizer cannot resolve
    hf = tmp_path / "hf"
    hf.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (hf / name).write_text((env["root"] / "tokenizer" / name).read_text())
    (hf / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "add_bos_token": True, "errors": "replace", "bos_token": "</s>",
        "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "</s>", "model_max_length": 2048,
    }))
    tok = build_tokenizer(LanguageConfig(tokenizer=str(hf)))
    assert type(tok).__name__ == "GPTTokenizer" and tok.pad_token_id == 0
    eos, pad = generation_token_ids(tok, LanguageConfig())  # eos_text "\n", one byte-level token
    assert tok.decode([eos]) == "\n" and pad == 0
    assert generation_token_ids(tok, LanguageConfig(eos_token=True))[0] == tok.eos_token_id
    with pytest.raises(BuildError, match="must be exactly one"):
        generation_token_ids(tok, LanguageConfig(eos_text="\n\n"))


@pytest.mark.parametrize("kind", ["byte_level_bpe", "sentencepiece", "wordpiece"])
def test_decoded_text_keeps_the_written_spacing(tmp_path, kind):
    """Generated ids decode to the text as it was written: R2Gen's "normal . the" stays (tokenizers'
    default clean-up would make it "normal. the"); WordPiece, which loses spaces, still gives "zone."."""
    from paddle_medvl.eval.evaluate import decode_rows

    from tiny_tokenizers import sentencepiece_t5

    text = "the size is normal . the zone." if kind != "wordpiece" else "the size is normal. the zone."
    if kind == "byte_level_bpe":
        tok = byte_level_bpe(tmp_path)
    elif kind == "sentencepiece":
        tok = sentencepiece_t5(tmp_path, [text, "size . the size. the"] * 20)
    else:
        from paddlenlp.transformers import BertTokenizer

        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "size", "is", "normal", "zone", "."]
        (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
        tok = BertTokenizer(str(tmp_path / "vocab.txt"))
    eos = 10_000
    ids = tok(text, add_special_tokens=False)["input_ids"]
    [(decoded, truncated)] = decode_rows(np.array([ids + [eos, 5]]), tok, eos)
    assert (decoded, truncated) == (text, False)


# ---------------------------------------------------------------- checkpoints that are not ours; DICOM input


@pytest.mark.parametrize("layout", ["config.json", "safetensors"])
def test_hugging_face_folder_says_convert_it_first(env, tmp_path, capsys, layout):
    """A Hugging Face BLIP-2 folder (known by its config.json, or by its tensor names) as --checkpoint
    or as Model.pretrained: an error that gives the conversion command, exit code 1, nothing written."""
    from safetensors.numpy import save_file

    hf = tmp_path / "blip2-opt-2.7b"
    hf.mkdir()
    if layout == "config.json":
        (hf / "config.json").write_text(json.dumps({"architectures": ["Blip2ForConditionalGeneration"], "model_type": "blip-2"}))
    else:
        save_file({"language_model.model.decoder.embed_tokens.weight": np.zeros((4, 2), np.float32)}, str(hf / "model.safetensors"))
    image = next((env["data"]["caption"] / "valid").iterdir())
    out = tmp_path / "run.txt"
    hint = f"python tools/convert_hf.py --hf {hf} --out OUT"
    assert predict_tool.main(["--checkpoint", str(hf), "--images", str(image), "--out", str(out)]) == 1
    assert hint in capsys.readouterr().err
    assert predict_tool.main(["-c", str(env["configs"]["caption"]), "-o", f"Model.pretrained={hf}",
                              "--images", str(image), "--out", str(out)]) == 1
    assert hint in capsys.readouterr().err and not out.exists()


def write_dicom_image(path: Path, pixels: np.ndarray) -> None:
    """An 8-bit MONOCHROME2 DICOM file, as a scanner's secondary capture writes one."""
    pytest.importorskip("pydicom", reason="DICOM input needs pydicom (the dicom extra)")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_predict_images_takes_dicom(env, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    png = next((env["data"]["caption"] / "valid").iterdir())
    (images / png.name).write_bytes(png.read_bytes())
    write_dicom_image(images / "scan.dcm", np.arange(32 * 32).reshape(32, 32) % 251)
    out = tmp_path / "run.csv"
    assert predict_tool.main(["-c", str(env["configs"]["caption"]), "--checkpoint", str(env["ckpt"]),
                              "--images", str(images), "--out", str(out)]) == 0
    assert sorted(parse_imageclef_run(out)) == sorted([png.stem, "scan"])
    # one DICOM file given directly
    assert predict_tool.main(["-c", str(env["configs"]["caption"]), "--checkpoint", str(env["ckpt"]),
                              "--images", str(images / "scan.dcm"), "--out", str(out)]) == 0
    assert list(parse_imageclef_run(out)) == ["scan"]
