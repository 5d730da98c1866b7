"""Checkpoint folders are self-contained (issue item 10): a folder that training wrote predicts, with
``tools/predict.py --checkpoint DIR`` alone and from any working directory, exactly what the run's
config predicts with it; it carries the run's Data/Decode/Eval settings and its own tokenizer copies,
so it still works after it has moved and the original tokenizer folders are gone.

A tiny model (trained for two steps over a "converted" base, so its checkpoints hold the trainable
weights only) on the synthetic captions, with settings that are not the defaults: 32 px, a prompt,
greedy decoding of at most 5 tokens, no post-processing.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from paddle_medvl.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 1, "num_heads": 4, "mlp_dim": 64},
    "qformer": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "num_query_tokens": 4,
                "max_position_embeddings": 64},
    "language": {"config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "ffn_dim": 64,
                            "max_position_embeddings": 96, "initializer_range": 0.5, "pad_token_id": 0,
                            "bos_token_id": 1, "eos_token_id": 1}},
}
# Not the defaults (224 px, no prompt, 5 beams, 30 tokens, post-processing on): a run that ignored
# them would write other captions.
DATA = {"image_size": 32, "prompt": "a photo of"}
DECODE = {"num_beams": 1, "max_new_tokens": 5, "min_new_tokens": 1}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A Python subprocess of this checkout's tools, in ``cwd``."""
    from conftest import clean_env

    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=clean_env(), cwd=cwd)


def predict(cwd: Path, out: Path, *args: str) -> bytes:
    proc = run([str(REPO / "tools" / "predict.py"), *args, "--out", str(out)], cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out.read_bytes()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A base checkpoint, a training config over it and the run's output folder (2 steps, a checkpoint each)."""
    import paddle

    from paddle_medvl.data import demo_tokenizer as tok
    from paddle_medvl.data.synthetic import make_demo_data
    from paddle_medvl.models.blip2 import Blip2

    root = tmp_path_factory.mktemp("checkpoint_folder")
    roots = make_demo_data(root / "data", seed=3, n_caption=12, image_size=32, tasks=["caption"])
    sources = {name: root / "data" / tok.TOKENIZERS_DIR / name for name in ("opt", "bert")}
    model = json.loads(json.dumps(TINY))
    model["qformer"].update(vocab_size=tok.DEMO_QFORMER_VOCAB, dec_token_id=tok.DEMO_DEC_TOKEN_ID)
    model["language"]["config"]["vocab_size"] = tok.DEMO_LLM_VOCAB
    (root / "base.yaml").write_text(yaml.safe_dump({"Model": model}))
    paddle.seed(0)
    Blip2(load_config(root / "base.yaml").Model).save_pretrained(root / "base")  # as tools/convert_hf.py writes one

    config = {
        "Global": {"device": "cpu", "seed": 5},
        "Data": {"format": "imageclef_caption", "root": str(roots["caption"]), **DATA, "num_workers": 0,
                 "max_prompt_len": 6, "max_target_len": 20, "val_split": ""},
        "Model": {"pretrained": str(root / "base"), "concept_loss_weight": 1.0,
                  "language": {"tokenizer": str(sources["opt"])}, "qformer": {"tokenizer": str(sources["bert"])}},
        "Decode": DECODE,
        "Eval": {"batch_size": 4, "meteor": False, "postprocess": False, "output": "runs/valid.txt"},
        "Train": {"output_dir": str(root / "run"), "max_steps": 2, "batch_size": 4, "lr": 2e-3, "log_steps": 1,
                  "save_steps": 1, "eval_steps": -1, "keep_last": 3},
    }
    (root / "train.yaml").write_text(yaml.safe_dump(config))
    proc = run(["tools/train.py", "-c", str(root / "train.yaml")], REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    images = root / "images"
    images.mkdir()
    for src in sorted((roots["caption"] / "valid").iterdir())[:3]:
        shutil.copyfile(src, images / src.name)
    return {"root": root, "config": root / "train.yaml", "run": root / "run", "base": root / "base",
            "tokenizers": sources, "images": images}


def test_every_checkpoint_holds_the_settings_and_the_tokenizers(trained):
    folders = [trained["run"] / "final", trained["run"] / "checkpoint-1", trained["run"] / "checkpoint-2"]
    for folder in folders:
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        assert {k: saved["Data"][k] for k in DATA} == DATA and saved["Decode"] == {**saved["Decode"], **DECODE}
        assert saved["Data"]["format"] == "imageclef_caption" and saved["Data"]["views"] == "first"
        assert saved["Eval"]["postprocess"] is False and saved["Eval"]["output"] == ""  # where one run wrote is not the model's
        assert Path(saved["Data"]["root"]).is_absolute()
        assert "Train" not in saved and "Global" not in saved
        # the tokenizers are copies inside the folder, named relative to it
        assert (saved["Model"]["language"]["tokenizer"], saved["Model"]["qformer"]["tokenizer"]) == ("tokenizer", "qformer_tokenizer")
        for copy_name, source in (("tokenizer", "opt"), ("qformer_tokenizer", "bert")):
            src = trained["tokenizers"][source]
            assert sorted(p.name for p in (folder / copy_name).iterdir()) == sorted(p.name for p in src.iterdir())
            assert all((folder / copy_name / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())
        # trainable weights only, over the base (checkpoint_chain)
        assert saved["Model"]["pretrained"] == str(trained["base"].resolve())


@pytest.fixture(scope="module")
def with_config(trained) -> bytes:
    """The captions of ``final/`` with the training config, run from the checkout."""
    return predict(REPO, trained["root"] / "with_config.txt", "-c", str(trained["config"]),
                   "--checkpoint", str(trained["run"] / "final"), "--images", str(trained["images"]))


def test_checkpoint_alone_from_another_directory_predicts_as_the_config(trained, with_config, tmp_path):
    alone = predict(tmp_path, tmp_path / "alone.txt", "--checkpoint", str(trained["run"] / "final"),
                    "--images", str(trained["images"]))
    assert alone == with_config
    lines = alone.decode().splitlines()
    assert [line.split("|")[0] for line in lines] == sorted(p.stem for p in trained["images"].iterdir())


def test_moved_checkpoint_without_the_original_tokenizers(trained, with_config, tmp_path):
    final = trained["run"] / "final"
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(final, moved)
    hidden = {name: src.with_name(src.name + ".gone") for name, src in trained["tokenizers"].items()}
    try:
        for name, src in trained["tokenizers"].items():
            src.rename(hidden[name])
        (tmp_path / "cwd").mkdir()
        got = predict(tmp_path / "cwd", tmp_path / "moved.txt", "--checkpoint", "../elsewhere/model",
                      "--images", str(trained["images"]))
    finally:
        for name, src in trained["tokenizers"].items():
            hidden[name].rename(src)
    assert got == with_config


def test_given_config_and_overrides_apply_over_the_saved_settings(trained, tmp_path):
    """The checkpoint's settings are the base; a key the config gives wins, -o wins over both."""
    from paddle_medvl.build import load_run_config, resolve_model_config
    from paddle_medvl.config import ConfigError

    final = trained["run"] / "final"
    alone = load_run_config(None, [], final)
    assert (alone.Data.image_size, alone.Data.prompt, alone.Eval.postprocess) == (32, "a photo of", False)
    assert (alone.Decode.num_beams, alone.Decode.max_new_tokens) == (1, 5) and alone.Model.pretrained == str(final)
    assert Path(alone.Model.language.tokenizer) == (final / "tokenizer").resolve()
    assert alone.Model.concept_loss_weight == 1.0  # the run's, not the default

    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump({"Decode": {"max_new_tokens": 7}, "Eval": {"batch_size": 2}}))
    cfg = load_run_config(partial, ["Decode.num_beams=3"], final)
    assert (cfg.Decode.num_beams, cfg.Decode.max_new_tokens, cfg.Decode.min_new_tokens) == (3, 7, 1)
    assert (cfg.Data.image_size, cfg.Data.prompt, cfg.Eval.postprocess, cfg.Eval.batch_size) == (32, "a photo of", False, 2)
    assert resolve_model_config(cfg.Model).vision.hidden_size == 32  # the architecture: the checkpoint's

    # the config's own errors still name it
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"Decode": {"num_beam": 2}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*Decode\.num_beam"):
        load_run_config(bad, [], final)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_run_config(tmp_path / "missing.yaml", [], final)


def test_saving_bundles_only_the_files_the_model_needs(tmp_path):
    """The LLM's folder (Model.language.path, here also its tokenizer) may be a whole Hugging Face
    checkpoint: the checkpoint copies its config.json and tokenizer files, not the weights beside
    them, and loads after it has moved and that folder is gone; saving again into the folder it was
    loaded from keeps the copies."""
    import numpy as np
    import paddle

    from paddle_medvl.models.blip2 import Blip2, checkpoint_config
    from tiny_tokenizers import byte_level_bpe

    llm = tmp_path / "llm"
    byte_level_bpe(tmp_path / "src").save_pretrained(str(llm))
    tokenizer_files = sorted(p.name for p in llm.iterdir())
    (llm / "config.json").write_text(json.dumps({**TINY["language"]["config"], "vocab_size": 259}))
    (llm / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 64)
    tree = json.loads(json.dumps(TINY))
    tree["qformer"].update(text=False, vocab_size=40, dec_token_id=39)
    tree["language"] = {"path": str(llm), "tokenizer": str(llm)}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"Model": tree}))
    paddle.seed(0)
    model = Blip2(load_config(tmp_path / "m.yaml").Model)
    model.save_pretrained(tmp_path / "ckpt")
    saved = yaml.safe_load((tmp_path / "ckpt" / "config.yaml").read_text())
    assert set(saved) == {"Model"}  # no run settings given (as tools/convert_hf.py writes): the model only
    assert (saved["Model"]["language"]["path"], saved["Model"]["language"]["tokenizer"]) == ("language", "tokenizer")
    assert sorted(p.name for p in (tmp_path / "ckpt" / "tokenizer").iterdir()) == tokenizer_files
    assert sorted(p.name for p in (tmp_path / "ckpt" / "language").iterdir()) == ["config.json"]

    moved = tmp_path / "elsewhere" / "ckpt"
    moved.parent.mkdir()
    shutil.move(tmp_path / "ckpt", moved)
    shutil.rmtree(llm)
    assert Path(checkpoint_config(moved).language.tokenizer) == (moved / "tokenizer").resolve()
    again = Blip2.from_pretrained(moved)
    assert Path(again.config.language.path) == (moved / "language").resolve()
    want = model.state_dict()
    assert all(np.array_equal(v.numpy(), want[k].numpy()) for k, v in again.state_dict().items())
    again.save_pretrained(moved)
    assert sorted(p.name for p in (moved / "tokenizer").iterdir()) == tokenizer_files
    assert yaml.safe_load((moved / "config.yaml").read_text())["Model"]["language"]["tokenizer"] == "tokenizer"
