"""Bad records with loader workers (``Data.num_workers: 2``): training, the end-of-training validation and
``tools/predict.py`` stop with the DataError naming the file and the record, as without workers, and
``Data.on_error: skip`` counts the skips of every worker in the main process.

Everything that starts workers runs in a subprocess with a timeout: a hung loader fails its test
(``subprocess.TimeoutExpired``) instead of blocking the suite. See ``workarounds`` 6, ``data/loader.py``.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds; each run takes a few
TINY = {
    "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "mlp_dim": 64},
    "qformer": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "num_query_tokens": 4,
                "max_position_embeddings": 64},
    "language": {"config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 64,
                            "max_position_embeddings": 96, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1}},
}
BAD_TRAIN = "ImageCLEFmedical_Caption_2023_train_000008"  # a truncated JPEG
BAD_VALID = "ImageCLEFmedical_Caption_2023_valid_000003"  # PNG magic, then garbage

# Training through the engine, as tools/train.py runs it; prints what ended it and how many workers
# were still alive (the loader's workers must be stopped before its error reaches us).
TRAIN = """
import json, multiprocessing, sys
from paddle_medvl.config import load_config
from paddle_medvl.data.record import DataError
from paddle_medvl.engine import train

try:
    summary = train(load_config(sys.argv[1], sys.argv[2:]))
except DataError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e), "alive": len(multiprocessing.active_children())}))
    sys.exit(1)
print(json.dumps({"steps": summary["steps"], "validation": summary["validation"] is not None,
                  "skipped": summary["skipped_records"]}))
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """Synthetic captions (32 px) and a tiny-model config with 2 workers per folder: bad_train/, bad_valid/, bad_both/."""
    from paddle_medvl.data import demo_tokenizer as tok
    from paddle_medvl.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("loader_workers")
    data = make_demo_data(root / "data", seed=3, n_caption=30, image_size=32, tasks=["caption"])["caption"]
    model = json.loads(json.dumps(TINY))
    model["qformer"].update(vocab_size=tok.DEMO_QFORMER_VOCAB, dec_token_id=tok.DEMO_DEC_TOKEN_ID,
                            tokenizer=str(root / "data" / tok.TOKENIZERS_DIR / "bert"))
    model["language"]["config"]["vocab_size"] = tok.DEMO_LLM_VOCAB
    model["language"]["tokenizer"] = str(root / "data" / tok.TOKENIZERS_DIR / "opt")
    configs = {}
    for name in ("bad_train", "bad_valid", "bad_both"):
        folder = root / name
        shutil.copytree(data, folder)
        if name in ("bad_train", "bad_both"):
            image = folder / "train" / f"{BAD_TRAIN}.jpg"
            image.write_bytes(image.read_bytes()[:200])
        if name in ("bad_valid", "bad_both"):
            (folder / "valid" / f"{BAD_VALID}.jpg").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image " * 20)
        config = {
            "Global": {"device": "cpu", "seed": 5},
            "Data": {"format": "imageclef_caption", "root": str(folder), "prompt": "a photo of", "image_size": 32,
                     "num_workers": 2, "max_prompt_len": 6, "max_target_len": 20},
            "Model": model,
            "Decode": {"num_beams": 1, "max_new_tokens": 4, "min_new_tokens": 1},
            "Eval": {"batch_size": 2, "meteor": False},
            "Train": {"output_dir": str(root / "out" / name), "max_steps": 6, "batch_size": 4, "lr": 1e-3,
                      "warmup_steps": 0, "log_steps": 2, "save_steps": 100, "eval_steps": -1, "keep_last": 1},
        }
        configs[name] = root / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(config))
    return {"root": root, "configs": configs}


def run(args: list[str]) -> subprocess.CompletedProcess:
    """A Python subprocess in this checkout with a clean environment; a hang raises TimeoutExpired."""
    from conftest import clean_env

    env = clean_env()
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=REPO)


def train(config: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = run(["-c", TRAIN, str(config), *overrides])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"exit {proc.returncode}, no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc, json.loads(lines[-1])


def names_file_and_record(message: str, stem: str, split: str) -> bool:
    return re.search(rf"{split}/{stem}\.jpg: cannot decode image: .*\(record {stem}\)$", message) is not None


def test_training_with_workers_stops_with_the_dataerror(demo):
    proc, result = train(demo["configs"]["bad_train"])
    assert proc.returncode == 1 and result["error"] == "DataError", result
    assert names_file_and_record(result["message"], BAD_TRAIN, "train"), result["message"]
    assert result["alive"] == 0  # the workers were stopped before the error was raised
    assert "Blocking queue is killed" not in proc.stderr


def test_end_of_training_validation_with_workers_stops_with_the_dataerror(demo):
    proc, result = train(demo["configs"]["bad_valid"])
    assert proc.returncode == 1 and result["error"] == "DataError", result
    assert names_file_and_record(result["message"], BAD_VALID, "valid"), result["message"]
    assert result["alive"] == 0


def test_predict_with_workers_exits_with_one_error_line(demo, tmp_path):
    proc = run(["tools/predict.py", "-c", str(demo["configs"]["bad_valid"]), "--split", "valid",
                "--out", str(tmp_path / "run.csv")])
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and names_file_and_record(last, BAD_VALID, "valid"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run.csv").exists()


def test_training_with_workers_skips_and_reports(demo):
    """Training, its validation loss and its generation skip their bad record; the main process reports each."""
    proc, result = train(demo["configs"]["bad_both"], "Data.on_error=skip")
    assert proc.returncode == 0 and result == {"steps": 6, "validation": True, "skipped": [BAD_TRAIN]}, proc.stderr[-3000:]
    assert f"[paddle_medvl] train: skipped 1 records in this pass ({BAD_TRAIN}); 1 in all (Data.on_error=skip)" in proc.stderr
    for name in ("validation loss", "predict caption"):
        assert f"[paddle_medvl] {name}: skipped 1 records in this pass ({BAD_VALID}); 1 in all" in proc.stderr


def test_predict_with_workers_skips_and_reports(demo, tmp_path):
    proc = run(["tools/predict.py", "-c", str(demo["configs"]["bad_valid"]), "--split", "valid",
                "--out", str(tmp_path / "run.csv"), "-o", "Data.on_error=skip"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 5 caption predictions" in proc.stdout and "1 records skipped (Data.on_error=skip)" in proc.stdout
    assert f"[paddle_medvl] predict caption: skipped 1 records in this pass ({BAD_VALID}); 1 in all" in proc.stderr


# Two bad records that two different workers skip: each worker counts its own, the main process all.
SKIPS = """
import json, sys
import numpy as np
from PIL import Image
from paddle_medvl.config import DataConfig
from paddle_medvl.data import Record
from paddle_medvl.data.dataset import RecordDataset
from paddle_medvl.data.loader import data_loader

root = sys.argv[1]
records = []
for i in range(6):
    path = f"{root}/{i}.png"
    Image.new("L", (20, 20), i * 30).save(path)
    records.append(Record(f"id{i}", [path], "p", f"caption {i}", {}))
for i in (1, 2):
    with open(f"{root}/{i}.png", "r+b") as f:
        f.truncate(40)
dataset = RecordDataset(records, DataConfig(image_size=16, on_error="skip"), train=False)
loader = data_loader(dataset, batch_size=1, num_workers=2, collate_fn=lambda s: {"index": np.array([x["index"] for x in s])},
                     name="skips")
indices = [int(batch["index"].numpy()[0]) for batch in loader]
print(json.dumps({"indices": indices, "loader": sorted(loader.skipped_ids), "dataset": sorted(dataset.skipped_ids),
                  "here": dataset.skipped}))
"""


def test_skips_of_every_worker_reach_the_main_process(tmp_path):
    """Batch 1 (worker 1) skips id1 and id2, batch 2 (worker 0) skips id2: the main process has both
    records, once each; the main process's own dataset copy skipped nothing itself."""
    proc = run(["-c", SKIPS, str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"indices": [0, 3, 3, 3, 4, 5], "loader": ["id1", "id2"], "dataset": ["id1", "id2"], "here": 0}
    assert "[paddle_medvl] skips: skipped 2 records in this pass (id1, id2); 2 in all (Data.on_error=skip)" in proc.stderr
    assert "skipped record id1 (1 so far here)" in proc.stderr  # worker 1's own line


def test_loader_is_a_paddle_dataloader_with_its_sampler():
    """paddlenlp's Trainer sets the epoch only on a ``paddle.io.DataLoader``'s ``DistributedBatchSampler``."""
    import paddle

    from paddle_medvl.data.loader import data_loader

    dataset = paddle.io.TensorDataset([paddle.arange(8, dtype="float32").reshape([8, 1])])
    sampler = paddle.io.DistributedBatchSampler(dataset, batch_size=2, num_replicas=1, rank=0)
    loader = data_loader(dataset, batch_sampler=sampler)
    assert isinstance(loader, paddle.io.DataLoader) and loader.batch_sampler is sampler and len(loader) == 4
    assert [b[0].numpy().ravel().tolist() for b in loader] == [[0, 1], [2, 3], [4, 5], [6, 7]]
