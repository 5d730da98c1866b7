"""The training engine end to end on a tiny BLIP-2 and synthetic captions: losses, freezing,
optimizer state, exact resume after SIGKILL, kills during a checkpoint write, stage 1 -> stage 2,
two-process launch on the CPU and on the test plugin device."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from paddle_medvl.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
TINY = {
    "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "mlp_dim": 64},
    "qformer": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "num_query_tokens": 4,
                "max_position_embeddings": 64},
    "language": {"config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 64,
                            "max_position_embeddings": 96, "initializer_range": 0.5, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1}},
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Synthetic captions (32 px) with the demo tokenizers, and a base config for a tiny model."""
    from paddle_medvl.data import demo_tokenizer as tok
    from paddle_medvl.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("engine")
    roots = make_demo_data(root / "data", seed=3, n_caption=30, image_size=32, tasks=["caption"])
    model = json.loads(json.dumps(TINY))
    model["qformer"].update(vocab_size=tok.DEMO_QFORMER_VOCAB, dec_token_id=tok.DEMO_DEC_TOKEN_ID,
                            tokenizer=str(root / "data" / tok.TOKENIZERS_DIR / "bert"))
    model["language"]["config"]["vocab_size"] = tok.DEMO_LLM_VOCAB
    model["language"]["tokenizer"] = str(root / "data" / tok.TOKENIZERS_DIR / "opt")
    model["concept_loss_weight"] = 1.0
    base = {
        "Global": {"device": "cpu", "seed": 5},
        "Data": {"format": "imageclef_caption", "root": str(roots["caption"]), "prompt": "a photo of",
                 "image_size": 32, "num_workers": 0, "max_prompt_len": 6, "max_target_len": 20},
        "Model": model,
        "Decode": {"num_beams": 1, "max_new_tokens": 16, "min_new_tokens": 1},
        "Eval": {"batch_size": 8, "meteor": False},
        "Train": {"output_dir": str(root / "unused"), "max_steps": 8, "batch_size": 4, "lr": 2e-3, "warmup_steps": 2,
                  "log_steps": 2, "save_steps": 4, "eval_steps": -1, "keep_last": 3},
    }
    path = root / "stage1.yaml"
    path.write_text(yaml.safe_dump(base))
    return root, path


def run(args: list[str], env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """A Python subprocess in this checkout, with a clean environment (or ``env``, complete)."""
    from conftest import clean_env

    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                          env=env or clean_env(), cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def launch(devices: list[str], log_dir: Path, script: str, *args: str, env: dict | None = None) -> None:
    """``paddle.distributed.launch`` over 2 ranks; on failure the ranks' logs are in the message."""
    try:
        run(["-m", "paddle.distributed.launch", *devices, "--log_dir", str(log_dir), script, *args], env=env)
    except AssertionError as err:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(log_dir.glob("workerlog.*")))
        raise AssertionError(f"{err}\n{logs}") from None


def weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(autouse=True)
def _restore_flags():
    """In-process training applies the device presets (process-wide flags): undo them after each test."""
    import paddle

    flags = paddle.get_flags(["FLAGS_use_stride_kernel"])
    yield
    paddle.set_flags(flags)


def train_in_process(config: Path, *overrides: str) -> dict:
    from paddle_medvl.engine import train

    return train(load_config(config, list(overrides)))


@pytest.fixture(scope="module")
def straight(demo):
    """8 steps uninterrupted (checkpoints at 4 and 8)."""
    root, config = demo
    out = root / "straight"
    run(["tools/train.py", "-c", str(config), "-o", f"Train.output_dir={out}"])
    return out


def test_stage1_moves_both_losses_and_freezes_the_llm(demo, tmp_path):
    """Both loss parts fall; the frozen LLM gets no gradient and no optimizer state; AdamW keeps exactly
    two moments per trainable parameter."""
    import paddle

    from paddle_medvl.engine import trainer as engine_trainer

    root, config = demo
    seen = {}
    original = engine_trainer.MedVLTrainer.create_optimizer

    def spy(self, lr_scheduler=None):
        seen["trainer"] = self
        return original(self, lr_scheduler)

    engine_trainer.MedVLTrainer.create_optimizer = spy
    try:
        summary = train_in_process(config, f"Train.output_dir={tmp_path}", "Train.max_steps=24", "Train.log_steps=4", "Train.lr=1e-2")
    finally:
        engine_trainer.MedVLTrainer.create_optimizer = original
    trainer = seen["trainer"]
    logs = [h for h in trainer.state.log_history if "caption_loss" in h]
    assert logs[-1]["caption_loss"] < logs[0]["caption_loss"] - 0.3
    assert logs[-1]["concept_loss"] < logs[0]["concept_loss"] - 0.3
    model = trainer.model
    llm = dict(model.language_model.named_parameters())
    assert llm and all(p.stop_gradient and p.grad is None for p in llm.values())
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    assert summary["trainable_parameters"] == sum(int(np.prod(p.shape)) for p in trainable)
    state = trainer.optimizer.state_dict()
    moments = {k: v for k, v in state.items() if isinstance(v, paddle.Tensor) and "moment" in k}
    assert sum(int(np.prod(v.shape)) for v in moments.values()) == 2 * summary["trainable_parameters"]
    assert len(moments) == 2 * len(trainable)
    names_with_state = {k.rsplit("_moment", 1)[0] for k in moments}
    assert not names_with_state & {p.name for p in llm.values()}


def check_summary(out: Path, steps: int, steps_this_run: int) -> dict:
    """The run's own summary.json, strict JSON (no NaN), with its step counts."""
    summary = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert (summary["steps"], summary["steps_this_run"]) == (steps, steps_this_run)
    assert summary["final_weights"] == str(out / "final")
    return summary


def test_resume_after_sigkill_is_bit_exact(demo, straight, tmp_path):
    """4 steps, SIGKILL right after checkpoint-4, resume: auto with 2 loader workers and keep_last 1
    (which deletes checkpoint-4 at step 8) -> exit 0, the resumed run's summary and the same bits as
    8 steps straight with none."""
    _, config = demo
    out = tmp_path / "killed"
    proc = run([str(SCRIPTS / "train_killed.py"), "after-save", "4", str(config), f"Train.output_dir={out}"], check=False)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (out / "checkpoint-4").is_dir() and not (out / "final").exists()
    (out / "summary.json").write_text('{"steps": 99}')  # an earlier run's: must not survive this one
    proc = run(["tools/train.py", "-c", str(config), "-o", f"Train.output_dir={out}", "Global.resume=auto",
                "Data.num_workers=2", "Train.keep_last=1"])
    assert "resuming from" in proc.stdout
    assert not (out / "checkpoint-4").exists()
    check_summary(out, 8, 4)
    a, b = weights(straight / "final"), weights(out / "final")
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    steps = [json.loads((d / "trainer_state.json").read_text())["global_step"] for d in (straight / "checkpoint-8", out / "checkpoint-8")]
    assert steps == [8, 8]


def test_resume_at_an_epoch_boundary_restores_the_rng(demo, tmp_path, monkeypatch):
    """A checkpoint at the end of an epoch (24 records / batch 4 = 6 steps) resumes exactly. paddlenlp's loop
    restores the RNG only after skipping batches inside an epoch (the defect): without our own restore
    on load, the resumed run's dropout differs."""
    import shutil

    from paddle_medvl.engine import trainer as engine_trainer

    _, config = demo
    common = ["Train.max_steps=8", "Train.save_steps=6"]
    straight = tmp_path / "straight"
    train_in_process(config, f"Train.output_dir={straight}", *common)

    def resume(name: str) -> dict:
        out = tmp_path / name
        out.mkdir()
        shutil.copytree(straight / "checkpoint-6", out / "checkpoint-6")
        train_in_process(config, f"Train.output_dir={out}", *common, "Global.resume=auto")
        return weights(out / "final")

    a = weights(straight / "final")
    assert all(np.array_equal(a[k], v) for k, v in resume("ours").items())
    def weights_only(self, resume_from_checkpoint=None):  # our load, minus the RNG restore
        if resume_from_checkpoint:
            self.model.load_weights(Path(resume_from_checkpoint))

    original = engine_trainer.MedVLTrainer._load_rng_state
    calls = []
    monkeypatch.setattr(engine_trainer.MedVLTrainer, "_load_from_checkpoint", weights_only)
    monkeypatch.setattr(engine_trainer.MedVLTrainer, "_load_rng_state", lambda self, c: calls.append(c) or original(self, c))
    b = resume("paddlenlp_only")
    assert not calls  # paddlenlp's own loop never restored it
    assert any(not np.array_equal(a[k], b[k]) for k in a)


def test_kill_during_checkpoint_write_keeps_the_previous_one(demo, straight, tmp_path):
    from paddle_medvl.engine import checkpoint as ckpt
    from paddle_medvl.models.blip2 import Blip2

    _, config = demo
    out = tmp_path / "torn"
    proc = run([str(SCRIPTS / "train_killed.py"), "during-save", "8", str(config), f"Train.output_dir={out}"], check=False)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (out / ".tmp-checkpoint-8" / "model.safetensors").is_file()  # torn: weights written, the rest not
    assert not (out / "checkpoint-8").exists()
    assert ckpt.latest(out) == out / "checkpoint-4"
    Blip2.from_pretrained(out / "checkpoint-4")  # complete and loadable
    run(["tools/train.py", "-c", str(config), "-o", f"Train.output_dir={out}", "Global.resume=auto", "Train.keep_last=1"])
    assert not (out / ".tmp-checkpoint-8").exists()
    check_summary(out, 8, 4)
    a, b = weights(straight / "final"), weights(out / "final")
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("tool", ["tools/train.py", "tools/predict.py"])
def test_tools_print_a_config_error_as_one_line(demo, tmp_path, tool):
    """A typo inside Model.language.config (a LanguageConfigError) and a key written twice in the YAML
    file: one `error:` line naming the key, exit 1, no traceback."""
    _, config = demo
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "one.png")
    extra = ["--images", str(tmp_path / "one.png"), "--out", str(tmp_path / "run.txt")] if tool.endswith("predict.py") else []
    proc = run([tool, "-c", str(config), *extra, "-o", f"Train.output_dir={tmp_path}",
                "Model.language.config.hidden_sizee=32"], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "hidden_sizee" in proc.stderr
    doubled = tmp_path / "doubled.yaml"
    doubled.write_text(config.read_text() + "Decode:\n  num_beams: 3\n")
    proc = run([tool, "-c", str(doubled), *extra], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(r"error: .*doubled.yaml:\d+: key 'Decode' written twice \(first on line \d+\)", proc.stderr), proc.stderr


def test_nonfinite_loss_stops_training_before_any_bad_checkpoint(demo, tmp_path):
    """lr 1e30: the weights blow up at the first update. The run stops with an error naming the step,
    the loss parts and the batch's records; exit 1; every checkpoint left is finite; no final/, no summary."""
    from paddle_medvl.engine import checkpoint as ckpt

    _, config = demo
    out = tmp_path / "diverged"
    proc = run(["tools/train.py", "-c", str(config), "-o", f"Train.output_dir={out}", "Train.lr=1e30",
                "Train.warmup_steps=0", "Train.save_steps=1", "Train.max_grad_norm=0"], check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: step "), proc.stderr[-3000:]
    assert "non-finite weights" in error or "the loss is nan" in error, error
    if "the loss is" in error:
        assert "caption " in error and "concept " in error
        assert "batch records: ImageCLEFmedical_Caption_2023_train_" in error
    assert not (out / "final").exists() and not (out / "summary.json").exists()
    for folder in ckpt.checkpoints(out):
        assert all(np.isfinite(v).all() for v in weights(folder).values()), folder


def test_nonfinite_loss_names_the_batch(demo, tmp_path, monkeypatch):
    """The loss check itself (a finite-weights model whose loss is nan): the first step stops."""
    import paddle

    from paddle_medvl.engine.trainer import TrainingDiverged
    from paddle_medvl.models.blip2 import Blip2

    forward = Blip2.forward

    def nan_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        return out._replace(loss=out.loss * paddle.to_tensor(float("nan")))

    monkeypatch.setattr(Blip2, "forward", nan_forward)
    _, config = demo
    with pytest.raises(TrainingDiverged, match=r"step 1: the loss is nan \(caption [0-9.]+, concept [0-9.]+\); "
                                               r"batch records: (ImageCLEFmedical_Caption_2023_train_\d+, ){3}"):
        train_in_process(config, f"Train.output_dir={tmp_path}")
    assert not list(tmp_path.glob("checkpoint-*")) and not (tmp_path / "summary.json").exists()


def test_loss_scaler_skips_are_allowed_until_the_limit():
    from types import SimpleNamespace

    from paddle_medvl.engine.trainer import SkippedSteps, TrainingDiverged

    guard, state = SkippedSteps(3), SimpleNamespace(global_step=10)
    for found in (True, True, False, True, True):  # a step that ran resets the count
        guard.on_optimizer_end(None, state, None, scaler=SimpleNamespace(_cache_found_inf=found))
    with pytest.raises(TrainingDiverged, match="step 11: the float16 loss scaler skipped 3 steps in a row"):
        guard.on_optimizer_end(None, state, None, scaler=SimpleNamespace(_cache_found_inf=True))
    guard.on_optimizer_end(None, state, None, scaler=None)  # no scaler: nothing to count


def test_checkpoint_states_are_safetensors_and_strict_json(straight):
    folder = straight / "checkpoint-8"
    names = {p.name for p in folder.iterdir()}
    assert not {n for n in names if n.endswith((".pdopt", ".pdparams", ".pth", ".pkl"))}, names
    assert {"optimizer.json", "optimizer.safetensors", "scheduler.json", "rng_state.json", "trainer_state.json"} <= names
    for name in names:
        if name.endswith(".json"):
            json.loads((folder / name).read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {name}"))


def test_project_json_is_strict(tmp_path):
    """Python's json writes NaN and Infinity, which are not JSON; the project's files hold null instead."""
    from paddle_medvl.atomic import write_json

    path = write_json(tmp_path / "m.json", {"loss": float("nan"), "parts": [float("inf"), 1.5], "n": np.float32(2)})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {"loss": None, "parts": [None, 1.5], "n": 2.0}


def test_resume_refuses_a_pickle_payload(demo, straight, tmp_path):
    """A checkpoint of the old layout (optimizer.pdopt, a pickle) whose pickle calls os.system: the
    resume is refused, naming the class, and the payload never runs."""
    import pickle
    import shutil

    _, config = demo
    out = tmp_path / "handed"
    shutil.copytree(straight / "checkpoint-4", out / "checkpoint-4")
    for name in ("optimizer.json", "optimizer.safetensors"):
        (out / "checkpoint-4" / name).unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    (out / "checkpoint-4" / "optimizer.pdopt").write_bytes(pickle.dumps({"x": Payload()}))
    proc = run(["tools/train.py", "-c", str(config), "-o", f"Train.output_dir={out}", "Global.resume=auto"], check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "optimizer.pdopt" in proc.stderr and "system" in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/model.safetensors"])
def test_an_index_naming_a_file_outside_its_folder_is_refused(straight, tmp_path, shard):
    import shutil

    from paddle_medvl.config import ConfigError
    from paddle_medvl.models.blip2 import Blip2

    folder = tmp_path / "handed"
    shutil.copytree(straight / "final", folder)
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"query_tokens": shard}}))
    with pytest.raises(ConfigError, match=r"model.safetensors.index.json: shard .* is not a file name in .*refused"):
        Blip2.from_pretrained(folder)


def test_resume_reads_an_earlier_versions_pickles_through_the_allow_list(demo, straight, tmp_path):
    """A checkpoint of the old layout (paddle.save pickles of the optimizer and scheduler) still
    resumes exactly: read by the allow-list reader, without paddle.load."""
    import shutil

    import paddle

    from paddle_medvl.engine import state as states

    _, config = demo
    out = tmp_path / "old"
    folder = out / "checkpoint-4"
    shutil.copytree(straight / "checkpoint-4", folder)
    for name, legacy in (("optimizer", "optimizer.pdopt"), ("scheduler", "scheduler.pdparams")):
        state = states.load_state(folder, name)
        paddle.save({k: paddle.to_tensor(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}, str(folder / legacy))
        for path in folder.glob(f"{name}.*"):
            if path.suffix in (".json", ".safetensors"):
                path.unlink()
    run(["tools/train.py", "-c", str(config), "-o", f"Train.output_dir={out}", "Global.resume=auto"])
    a, b = weights(straight / "final"), weights(out / "final")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_keep_last_and_best(demo, tmp_path):
    """keep_last 1 + best by validation loss: the newest checkpoint and the best one survive."""
    from paddle_medvl.engine import checkpoint as ckpt

    _, config = demo
    summary = train_in_process(config, f"Train.output_dir={tmp_path}", "Train.max_steps=12", "Train.save_steps=2",
                               "Train.eval_steps=2", "Train.eval_samples=4", "Train.keep_last=1", "Train.best_metric=loss")
    kept = ckpt.checkpoints(tmp_path)
    best = Path(summary["best_checkpoint"])
    assert kept[-1] == tmp_path / "checkpoint-12"
    assert set(kept) == {best, tmp_path / "checkpoint-12"}
    assert summary["validation"]["eval_loss"] >= summary["best_metric"]
    assert {"eval_BLEU-4", "eval_ROUGE-1", "eval_CIDEr-D"} <= set(summary["validation"])


def test_stage2_starts_from_stage1_and_trains_caption_loss_only(demo, straight, tmp_path):
    """Stage 2 names stage 1's final weights as Model.pretrained: it starts there, logs no concept loss,
    leaves the Q-Former text head alone, and its checkpoints hold only what it trains."""
    from paddle_medvl.models.blip2 import Blip2

    _, config = demo
    summary = train_in_process(config, f"Train.output_dir={tmp_path}", f"Model.pretrained={straight / 'final'}",
                               "Model.concept_loss_weight=0.0", "Train.max_steps=4", "Train.lr=1e-3")
    history = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    losses = [h for h in history if "caption_loss" in h]
    assert losses and not any("concept_loss" in h for h in history)
    before, after = weights(straight / "final"), weights(tmp_path / "final")
    assert set(after) < set(before)  # only the trained tensors, on top of stage 1's
    assert not any(k.startswith(("language_model.", "qformer.cls.")) for k in after)
    assert any(not np.array_equal(after[k], before[k]) for k in after)
    model = Blip2.from_pretrained(tmp_path / "final")  # stage 1 first, then stage 2's tensors
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert np.array_equal(state["qformer.cls.predictions.bias"], before["qformer.cls.predictions.bias"])
    assert np.array_equal(state["language_projection.weight"], after["language_projection.weight"])
    assert summary["trainable_parameters"] < sum(v.size for k, v in before.items() if not k.startswith("language_model."))


def test_concept_head_learns_the_cuis_and_starts_fresh_over_weights_without_it(demo, straight, tmp_path):
    """The concept-detection head: its loss is logged and falls; over stage 1 weights that lack it (as a
    converted BLIP-2 does) it starts fresh and is saved; a class count that is not the mapping's, or a
    frozen head, is refused before training goes wrong."""
    from dataclasses import replace

    from paddle_medvl.config import ConfigError
    from paddle_medvl.data.synthetic import CUI_NAMES
    from paddle_medvl.models.blip2 import Blip2, checkpoint_config

    _, config = demo
    classes = len(CUI_NAMES)
    head = [f"Model.concept_classes={classes}", "Model.concept_detection_weight=1.0",
            "Train.trainable=['vision_model\\.', 'query_tokens', 'qformer\\.', 'language_projection\\.', 'concept_head\\.']"]
    train_in_process(config, f"Train.output_dir={tmp_path / 'a'}", *head, "Train.max_steps=24", "Train.log_steps=4",
                     "Train.lr=1e-2", "Train.save_steps=24")
    history = json.loads((tmp_path / "a" / "checkpoint-24" / "trainer_state.json").read_text())["log_history"]
    detection = [h["detection_loss"] for h in history if "detection_loss" in h]
    assert len(detection) == 6 and detection[-1] < detection[0] - 0.1
    assert weights(tmp_path / "a" / "final")["concept_head.weight"].shape == (4 * 32, classes)

    train_in_process(config, f"Train.output_dir={tmp_path / 'b'}", f"Model.pretrained={straight / 'final'}", *head,
                     "Train.max_steps=2", "Train.save_steps=2")
    assert "concept_head.weight" not in weights(straight / "final")
    assert "concept_head.bias" in weights(tmp_path / "b" / "final")
    assert Blip2.from_pretrained(tmp_path / "b" / "final").concept_head is not None
    without = replace(checkpoint_config(tmp_path / "a" / "final"), concept_classes=0, concept_detection_weight=0.0)
    assert Blip2.from_pretrained(tmp_path / "a" / "final", without).concept_head is None  # the head's tensors dropped

    with pytest.raises(ConfigError, match=f"set Model.concept_classes={classes}"):
        train_in_process(config, f"Train.output_dir={tmp_path / 'c'}", *head[1:], f"Model.concept_classes={classes - 1}")
    with pytest.raises(ConfigError, match="the concept head is frozen"):
        train_in_process(config, f"Train.output_dir={tmp_path / 'd'}", *head[:2])


def test_bad_train_config_errors(demo, tmp_path, monkeypatch):
    from paddle_medvl.config import ConfigError

    _, config = demo
    with pytest.raises(ConfigError, match="Train.trainable: 'visual_model' matches no parameter"):
        train_in_process(config, f"Train.output_dir={tmp_path}", "Train.trainable=[visual_model]")
    # Caught before the model, the tokenizers or the data are built (build_model would fail first).
    import paddle_medvl.build as build

    def no_build(*args, **kwargs):
        raise AssertionError("built the model before checking the config")

    monkeypatch.setattr(build, "build_model", no_build)
    monkeypatch.setattr(build, "build_tokenizers", no_build)
    for override, message in [
        ("Train.schedule=cosin", "Train.schedule must be one of cosine, linear, constant, got 'cosin'"),
        ("Train.lr=0", "Train.lr must be > 0, got 0"),
        ("Train.lr=-1e-4", "Train.lr must be > 0, got -0.0001"),
        ("Train.best_metric=BLEU4", "Train.best_metric 'BLEU4' is not a metric the caption task reports .*BLEU-4"),
        ("Train.best_metric=METEOR", "Eval.meteor is false"),
        ("Eval.task=captions", "Eval.task must be one of caption, vqa, report, got 'captions'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            train_in_process(config, f"Train.output_dir={tmp_path}", override)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="Global.resume: .* is not a complete checkpoint"):
        train_in_process(config, f"Train.output_dir={tmp_path}", f"Global.resume={tmp_path}")


@pytest.mark.parametrize("device", ["cpu", "medvl_cpu"])
def test_two_process_launch(demo, tmp_path, device, request):
    """paddle.distributed.launch with 2 ranks (gloo on the CPU, xccl on the plugin): both ranks end with
    the same parameters, and the run checkpoints, validates (each rank its share) and finishes. On the
    CPU with recompute on in the ViT and the Q-Former."""
    _, config = demo
    env = request.getfixturevalue("medvl_plugin").env if device != "cpu" else None
    out = tmp_path / "out"
    devices = ["--nproc_per_node", "2"] if device == "cpu" else ["--devices", "0,1"]
    launch(devices, tmp_path / "log", str(SCRIPTS / "dp_train.py"), str(config), f"Global.device={device}",
           f"Train.output_dir={out}", "Train.max_steps=4", "Train.batch_size=2", "Train.eval_steps=0", "Train.eval_samples=6",
           *(["Model.vision.recompute=true", "Model.qformer.recompute=true"] if device == "cpu" else []), env=env)
    sums = [np.load(tmp_path / "out" / f"params_rank{r}.npy") for r in (0, 1)]
    assert np.array_equal(sums[0], sums[1])
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()
    assert (out / "final" / "model.safetensors").is_file()


def test_a_nan_on_one_rank_stops_every_rank(demo, tmp_path):
    """Data parallel: rank 1 alone has a NaN loss at step 1; both ranks stop at that step with the error,
    and the job ends (no rank left waiting for the other in a collective)."""
    from conftest import clean_env

    _, config = demo
    log_dir = tmp_path / "log"
    proc = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir),
         str(SCRIPTS / "nan_on_one_rank.py"), str(config), f"Train.output_dir={tmp_path / 'out'}",
         "Train.batch_size=2"], capture_output=True, text=True, timeout=300, env=clean_env(), cwd=REPO)
    assert proc.returncode != 0
    logs = {p.name: p.read_text() for p in sorted(log_dir.glob("workerlog.*"))}
    assert "rank 1 stopped: step 1: the loss is nan" in logs["workerlog.1"], logs
    assert "rank 0 stopped: step 1: another rank's loss is not finite" in logs["workerlog.0"], logs


def test_qformer_only_ablation(demo, straight, tmp_path):
    """Table 3's "ViT-g Q-Former" row: no LLM; the Q-Former's text decoder learns the captions and writes
    them. Starting from a full checkpoint, its LLM weights are left out."""
    from paddle_medvl.models.blip2 import Blip2

    _, config = demo
    summary = train_in_process(config, f"Train.output_dir={tmp_path}", "Model.language.architecture=none",
                               "Model.concept_loss_weight=0.0", f"Model.pretrained={straight / 'final'}",
                               "Train.trainable=[vision_model, query_tokens, qformer]", "Train.max_steps=16", "Train.lr=3e-3", "Train.eval_steps=16", "Train.eval_samples=6",
                               "Train.log_steps=4")
    history = json.loads((tmp_path / "checkpoint-16" / "trainer_state.json").read_text())["log_history"]
    losses = [h["caption_loss"] for h in history if "caption_loss" in h]
    assert losses[-1] < losses[0] - 0.3
    assert "eval_BLEU-4" in summary["validation"]
    saved = weights(tmp_path / "final")
    assert saved and not any(k.startswith("language_") for k in saved)
    model = Blip2.from_pretrained(tmp_path / "final")  # stage-1 weights minus the LLM, then these
    assert model.language_model is None
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert np.array_equal(state["qformer.cls.predictions.bias"], saved["qformer.cls.predictions.bias"])


def test_sharding_stage1_checkpoints_every_shard_and_resumes_exactly(demo, tmp_path):
    """Fleet sharding stage 1 on 2 CPU ranks: each rank's optimizer shard is in the checkpoint, and a
    run resumed from checkpoint-2 ends with the same bits as the uninterrupted run."""
    import shutil

    _, config = demo
    common = ["Train.max_steps=4", "Train.save_steps=2", "Train.batch_size=2", "Train.sharding=stage1"]

    def train_on_two(out: Path, *extra: str) -> None:
        launch(["--nproc_per_node", "2"], tmp_path / f"log-{out.name}", "tools/train.py", "-c", str(config),
               "-o", f"Train.output_dir={out}", *common, *extra)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_on_two(straight)
    assert {p.name for p in (straight / "checkpoint-2").glob("optimizer*")} == {
        f"optimizer.shard0{rank}.{ext}" for rank in (0, 1) for ext in ("json", "safetensors")}
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    train_on_two(resumed, "Global.resume=auto")
    a, b = weights(straight / "final"), weights(resumed / "final")
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- pieces


def test_amp_comes_from_the_device(demo):
    """Train.amp auto: the device layer's default (float16 + loss scaling on a 910A, bfloat16 on a 910B, off on
    the CPU); a dtype the device cannot do is refused before anything is built."""
    from paddle_medvl.device import Device, DeviceError
    from paddle_medvl.engine.trainer import AMP_BLACK_LIST, training_arguments

    _, config = demo
    cfg = load_config(config)
    npu_910a = Device("npu", 0, True, "xccl", "float16", ("float16",))
    npu_910b = Device("npu", 0, True, "xccl", "float16", ("float16", "bfloat16"))
    cpu = Device("cpu", None, False, "gloo", None, ())
    args = training_arguments(cfg, npu_910a, npu_910a.check_amp_dtype("auto"))
    assert (args.fp16, args.bf16, args.fp16_opt_level, args.scale_loss) == (True, False, "O1", 32768.0)
    assert args.amp_custom_black_list == AMP_BLACK_LIST == ["cross_entropy_with_softmax"]
    args = training_arguments(cfg, npu_910b, npu_910b.check_amp_dtype("bfloat16"))
    assert (args.fp16, args.bf16) == (False, True)
    args = training_arguments(cfg, cpu, cpu.check_amp_dtype("auto"))
    assert not args.fp16 and not args.bf16
    with pytest.raises(DeviceError, match="bfloat16.*not supported"):
        npu_910a.check_amp_dtype("bfloat16")


def test_schedule_warms_up_then_decays_to_min_lr():
    from paddle_medvl.config import TrainConfig
    from paddle_medvl.engine.optim import build_scheduler

    def values(**kw):
        scheduler = build_scheduler(TrainConfig(lr=1e-3, **kw), total_steps=10)
        out = []
        for _ in range(10):
            out.append(scheduler.get_lr())
            scheduler.step()
        return np.array(out)

    cosine = values(warmup_steps=4, min_lr=1e-4)
    np.testing.assert_allclose(cosine[:5], [0, 2.5e-4, 5e-4, 7.5e-4, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(cosine[4:], 1e-4 + 0.45e-3 * (1 + np.cos(np.pi * np.arange(6) / 6)), rtol=1e-6)
    linear = values(warmup_steps=0, schedule="linear")
    np.testing.assert_allclose(linear, 1e-3 * (1 - np.arange(10) / 10), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(values(warmup_steps=2, schedule="constant"), [0, 5e-4] + [1e-3] * 8, rtol=1e-6)


def test_param_groups_set_lr_and_decay_by_pattern():
    """The first matching group's lr (as a ratio to Train.lr) and decay; never decay on biases/norms."""
    import paddle

    from paddle_medvl.config import ParamGroupConfig, TrainConfig
    from paddle_medvl.engine.optim import apply_trainable, flat_parameters, param_groups

    class Net(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.qformer = paddle.nn.Linear(4, 4)
            self.vision = paddle.nn.Sequential(paddle.nn.Linear(4, 4), paddle.nn.LayerNorm(4))
            self.frozen = paddle.nn.Linear(4, 4)

    net = Net()
    train = TrainConfig(lr=1e-4, weight_decay=0.05, trainable=["qformer", "vision"],
                        param_groups=[ParamGroupConfig(patterns=[r"qformer\."], lr=5e-4, weight_decay=0.01)])
    names = apply_trainable(net, train)
    assert sorted(names) == ["qformer.bias", "qformer.weight", "vision.0.bias", "vision.0.weight", "vision.1.bias", "vision.1.weight"]
    assert net.frozen.weight.stop_gradient
    groups = {(g["learning_rate"], g["weight_decay"]): sorted(p.shape == [4, 4] for p in g["params"]) for g in param_groups(net, train)}
    assert groups == {(5.0, 0.01): [True], (5.0, 0.0): [False], (1.0, 0.05): [True], (1.0, 0.0): [False, False, False]}
    from paddle_medvl.config import ConfigError

    with pytest.raises(ConfigError, match="can only be Train.weight_decay"):
        flat_parameters(param_groups(net, train), train.weight_decay)
    train.param_groups[0].weight_decay = None
    params, decays = flat_parameters(param_groups(net, train), train.weight_decay)
    assert net.qformer.weight.optimize_attr["learning_rate"] == 5.0 and decays(net.qformer.weight.name)
    assert not decays(net.qformer.bias.name) and len(params) == 6


def test_recipes_hold_the_papers_values_and_need_the_checkpoint(tmp_path):
    """configs/caption: paper 000's values; run without the converted checkpoint they say how to make it."""
    from paddle_medvl.engine import train as run_training

    recipes = {p.stem: load_config(p) for p in sorted((REPO / "configs").rglob("*.yaml"))}
    s1, s2 = recipes["blip2_opt2.7b_stage1"], recipes["blip2_opt2.7b_stage2"]
    assert (s1.Data.image_size, s1.Data.max_target_len, s1.Train.lr, s1.Train.weight_decay, s1.Train.warmup_steps) == (364, 128, 1e-5, 0.05, 1000)
    assert (s1.Train.epochs, s2.Train.epochs, s1.Train.batch_size * 8) == (50, 20, 16)
    assert (s1.Model.concept_loss_weight, s2.Model.concept_loss_weight) == (1.0, 0.0)
    assert s2.Model.pretrained == s1.Train.output_dir + "/final"
    assert not any(p.startswith("language_model") for p in s1.Train.trainable)
    assert recipes["ablation_224px_stage1"].Data.image_size == 224
    assert recipes["ablation_qformer_only"].Model.language.architecture == "none"
    s1.Train.output_dir = str(tmp_path)
    s1.Global.device = "cpu"
    with pytest.raises(FileNotFoundError, match="convert_hf.py"):
        run_training(s1)


def test_visualdl_logs(demo, tmp_path):
    from visualdl import LogReader

    _, config = demo
    train_in_process(config, f"Train.output_dir={tmp_path}", "Train.max_steps=4", "Train.visualdl=true")
    files = list((tmp_path / "visualdl").glob("vdlrecords.*"))
    assert len(files) == 1  # the final validation lands in the same file
    reader = LogReader(file_path=str(files[0]))
    losses = reader.get_data("scalar", "train/loss")
    assert [r.id for r in losses] == [2, 4] and all(np.isfinite(r.value) for r in losses)
    assert [r.id for r in reader.get_data("scalar", "eval/BLEU-4")] == [4]


def test_demo_config_learns(tmp_path):
    """configs/demo/caption_tiny.yaml, shortened to fit CI: on 12 synthetic images the loss falls far below
    its start and greedy generation gives back the training captions."""
    from paddle_medvl.data.demo_tokenizer import TOKENIZERS_DIR
    from paddle_medvl.data.synthetic import make_demo_data

    roots = make_demo_data(tmp_path / "data", seed=7, n_caption=15, image_size=64, tasks=["caption"])
    tokenizers = tmp_path / "data" / TOKENIZERS_DIR
    summary = train_in_process(
        REPO / "configs" / "demo" / "caption_tiny.yaml",
        f"Data.root={roots['caption']}", "Data.val_split=train", f"Train.output_dir={tmp_path / 'out'}",
        f"Model.language.tokenizer={tokenizers / 'opt'}", f"Model.qformer.tokenizer={tokenizers / 'bert'}",
        "Train.max_steps=240", "Train.batch_size=4", "Train.log_steps=20", "Train.save_steps=240",
    )
    history = json.loads((tmp_path / "out" / "checkpoint-240" / "trainer_state.json").read_text())["log_history"]
    losses = [h["caption_loss"] for h in history if "caption_loss" in h]
    assert losses[-1] < 0.2 * losses[0]
    assert summary["validation"]["eval_BLEU-4"] > 0.9  # the training images' own captions
