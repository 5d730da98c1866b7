"""Write tests/fixtures/lavis_tiny/: the tiny HF fixture's weights as LAVIS saves a BLIP-2 OPT checkpoint.

Run once, with torch (the tests never need it):

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy safetensors
    /tmp/torchvenv/bin/python tests/parity/make_lavis_fixture.py

Input: tests/fixtures/blip2_opt_tiny/{model,qformer_text}.safetensors (made by make_fixtures.py).
Output, both written by ``torch.save`` itself (the zip format of torch 2.13):

* ``blip2_opt_tiny_lavis.pth``: ``{"model": state_dict, "optimizer": ..., "config": ..., "scaler": ...,
  "epoch": 3}``, the layout of LAVIS's ``RunnerBase._save_checkpoint``, for a ``Blip2OPT`` that kept its
  Q-Former text parts (paper 000 trains the concept loss) and froze the ViT and the OPT: LAVIS saves
  only parameters that train, plus buffers, so ``visual_encoder.*`` and ``opt_model.*`` are absent.
  Names are LAVIS's (``Qformer.bert.encoder.layer.N.attention.self.query``, ``ln_vision``,
  ``opt_proj`` ...), Linear weights torch's [out, in]; the LM head's decoder is tied to the word
  embeddings (one storage, two names) as in ``BertLMHeadModel``; ``position_ids`` is the expanded
  (stride 0) ``arange`` buffer of ``BertEmbeddings``.
* ``views.pth``: small tensors whose storage layout a reader must get right: a transpose, a slice
  with an offset and a step, an expanded view, bfloat16, float16, int64, bool, a 0-d tensor, an
  ``nn.Parameter``, two names on one storage. Values are ``arange`` based; the test recomputes them.
"""
from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1] / "fixtures"
HF = ROOT / "blip2_opt_tiny"
OUT = ROOT / "lavis_tiny"


def lavis_state_dict() -> collections.OrderedDict:
    hf = load_file(HF / "model.safetensors") | load_file(HF / "qformer_text.safetensors")
    config = json.loads((HF / "config.json").read_text())
    layers = config["qformer_config"]["num_hidden_layers"]
    positions = config["qformer_config"]["max_position_embeddings"]
    sd: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    # Module order of Blip2OPT: query_tokens (its own parameter), ln_vision, Qformer, opt_proj.
    sd["query_tokens"] = hf["query_tokens"]
    sd["ln_vision.weight"] = hf["vision_model.post_layernorm.weight"]
    sd["ln_vision.bias"] = hf["vision_model.post_layernorm.bias"]
    bert = "Qformer.bert"
    word = hf["qformer.embeddings.word_embeddings.weight"]
    sd[f"{bert}.embeddings.position_ids"] = torch.arange(positions).expand((1, -1))  # a registered buffer
    sd[f"{bert}.embeddings.word_embeddings.weight"] = word
    sd[f"{bert}.embeddings.position_embeddings.weight"] = hf["qformer.embeddings.position_embeddings.weight"]
    sd[f"{bert}.embeddings.LayerNorm.weight"] = hf["qformer.layernorm.weight"]
    sd[f"{bert}.embeddings.LayerNorm.bias"] = hf["qformer.layernorm.bias"]
    for n in range(layers):
        ours, theirs = f"qformer.encoder.layer.{n}", f"{bert}.encoder.layer.{n}"
        blocks = ["attention"] + (["crossattention"] if f"{ours}.crossattention.attention.query.weight" in hf else [])
        for block in blocks:
            for proj in ("query", "key", "value"):
                for p in ("weight", "bias"):
                    sd[f"{theirs}.{block}.self.{proj}.{p}"] = hf[f"{ours}.{block}.attention.{proj}.{p}"]
            for part in ("dense", "LayerNorm"):
                for p in ("weight", "bias"):
                    sd[f"{theirs}.{block}.output.{part}.{p}"] = hf[f"{ours}.{block}.output.{part}.{p}"]
        for branch in ("intermediate", "output", "intermediate_query", "output_query"):
            for part in ("dense",) + (("LayerNorm",) if branch.startswith("output") else ()):
                for p in ("weight", "bias"):
                    sd[f"{theirs}.{branch}.{part}.{p}"] = hf[f"{ours}.{branch}.{part}.{p}"]
    head = "Qformer.cls.predictions"
    bias = hf["qformer.cls.predictions.bias"]
    sd[f"{head}.bias"] = bias
    for part in ("dense", "LayerNorm"):
        for p in ("weight", "bias"):
            sd[f"{head}.transform.{part}.{p}"] = hf[f"qformer.cls.predictions.transform.{part}.{p}"]
    sd[f"{head}.decoder.weight"] = word  # tied: the same tensor under two names
    sd[f"{head}.decoder.bias"] = bias  # BertLMPredictionHead: decoder.bias = bias
    sd["opt_proj.weight"] = hf["language_projection.weight"]
    sd["opt_proj.bias"] = hf["language_projection.bias"]
    # nn.Module.state_dict() hangs each module's version on the dict (pickled as the OrderedDict's state)
    sd._metadata = collections.OrderedDict([("", {"version": 1}), ("ln_vision", {"version": 1}),
                                            ("Qformer", {"version": 1}), ("opt_proj", {"version": 1})])
    return sd


def checkpoint(sd: collections.OrderedDict) -> dict:
    """What LAVIS's runner saves around the model: a real AdamW state (for one parameter, to stay
    small), the config as plain containers, the scaler's state and the epoch."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(sd["query_tokens"].clone())
    optimizer = torch.optim.AdamW([param], lr=1e-5, betas=(0.9, 0.999), weight_decay=0.05)
    param.grad = torch.randn(param.shape)
    optimizer.step()
    config = {"model": {"arch": "blip2_opt", "model_type": "pretrain_opt2.7b", "freeze_vit": True,
                        "num_query_token": 8, "prompt": "a photo of"},
              "run": {"task": "captioning", "lr_sched": "linear_warmup_cosine_lr", "init_lr": 1e-5,
                      "weight_decay": 0.05, "max_epoch": 5, "amp": True}}
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 17}
    return {"model": sd, "optimizer": optimizer.state_dict(), "config": config, "scaler": scaler, "epoch": 3}


def views() -> dict:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    shared = torch.arange(10, dtype=torch.float64)
    return collections.OrderedDict(
        base=base,
        transposed=base.t(),  # stride (1, 6)
        sliced=base[1:, ::2],  # offset 6, stride (6, 2)
        expanded=torch.arange(3).expand(2, 3),  # stride (0, 1), int64
        bf16=torch.tensor([1.0, -2.5, 3.140625, 65280.0], dtype=torch.bfloat16),
        fp16=torch.tensor([0.5, -1.0, 6.1e-5], dtype=torch.float16),
        mask=torch.tensor([True, False, True]),
        scalar=torch.tensor(7.25),
        param=torch.nn.Parameter(torch.arange(4, dtype=torch.float32)),
        head=shared[:4],  # two views of one storage
        tail=shared[6:],
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint(lavis_state_dict()), OUT / "blip2_opt_tiny_lavis.pth")
    torch.save(views(), OUT / "views.pth")
    for path in sorted(OUT.iterdir()):
        print(f"{path.stat().st_size:8d}  {hashlib.sha256(path.read_bytes()).hexdigest()[:16]}  {path.name}")
    print("total", sum(p.stat().st_size for p in OUT.iterdir()), "bytes")


if __name__ == "__main__":
    main()
