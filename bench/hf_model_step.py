"""The Hugging Face (transformers on PyTorch) side of bench/model_step.py; run by ``--hf-python``.

Loads the HF-layout checkpoint that model_step.py wrote from our random weights and measures what the
Paddle children measure, in the same order: GEMM ceiling, encoder at batch 8, greedy generation,
a no-grad eval loss, then AdamW train steps (ViT + Q-Former + queries + projection trainable, OPT
frozen and in eval mode). Default attention implementation (what a user gets). No paddle here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Shared measuring helpers (model_step.py imports nothing but the standard library at the top).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_step import CpuMonitor, environment, median, rss_mb, time_training, timed  # noqa: E402

THREADS = 2
PAD, BOS, EOS = 1, 2, 2
LR, WEIGHT_DECAY = 1e-5, 0.05


def gemm(torch, others, size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    times, _ = timed(lambda: float((a @ b)[0, 0]), 1, repeats, others)
    return 2 * size**3 / median(times) / 1e9


def run(spec: dict) -> dict:
    import numpy as np
    import torch
    import transformers
    from transformers import Blip2ForConditionalGeneration

    torch.set_num_threads(THREADS)
    s, work = spec["shape"], Path(spec["work"])
    res: dict = {"framework": "hf", "env": environment(), "loadavg_start": os.getloadavg()[0],
                 "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    monitor = CpuMonitor()
    res["others"] = []
    res["gemm_gflops"] = gemm(torch, res["others"])

    model, info = Blip2ForConditionalGeneration.from_pretrained(
        str(work / "hf"), dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise SystemExit(f"HF checkpoint does not load cleanly: {problems}")
    res["mapping"] = (f"exact: every tensor loaded from our key map (attention: "
                      f"{model.config.vision_config._attn_implementation or 'default'})")
    tied = model.language_model.lm_head.weight.data_ptr() == model.language_model.get_input_embeddings().weight.data_ptr()
    if not tied:
        raise SystemExit("HF lm_head is not tied to the embedding")

    inp = dict(np.load(work / "inputs.npz"))
    t = torch.from_numpy
    pix8 = t(inp["pixel_values"])
    pix = pix8[: s["batch"]].contiguous()
    image = torch.full((s["batch"], s["num_query"]), spec_image_token(s), dtype=torch.long)
    ones = torch.ones((s["batch"], s["num_query"]), dtype=torch.long)
    ids = torch.cat([image, t(inp["input_ids"])], 1)
    mask = torch.cat([ones, t(inp["attention_mask"])], 1)
    # full-length labels: with shorter ones HF slices the logits and its loss fails (view of a non-contiguous slice)
    labels = torch.cat([torch.full_like(image, -100), t(inp["labels"])], 1)
    prompt = torch.cat([image, t(inp["prompt_ids"])], 1)
    prompt_mask = torch.cat([ones, t(inp["prompt_mask"])], 1)

    model.eval()

    def encode():
        with torch.no_grad():
            return model.get_image_features(pix8).pooler_output

    res["encoder_s"], enc = timed(encode, 1, spec["repeats"], res["others"])
    res["encoder_checksum"] = [float(enc.abs().mean()), *map(float, enc[0, 0, :3])]

    def generate():
        return model.generate(pixel_values=pix, input_ids=prompt, attention_mask=prompt_mask, do_sample=False,
                              num_beams=1, max_new_tokens=s["new_tokens"], min_new_tokens=s["new_tokens"],
                              eos_token_id=EOS, pad_token_id=PAD)

    res["generate_s"], out = timed(generate, 1, spec["repeats"], res["others"])
    res["generated"] = out[:, prompt.shape[1]:].tolist()
    with torch.no_grad():
        res["eval_loss"] = float(model(pixel_values=pix, input_ids=ids, attention_mask=mask, labels=labels).loss)
    res["rss_after_inference_mb"] = rss_mb()

    model.train()
    model.language_model.eval()
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("language_model."))
    trainable = [p for p in model.parameters() if p.requires_grad]
    res["trainable_params"] = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=LR, weight_decay=WEIGHT_DECAY)
    time_training(res, spec, monitor,
                  lambda: model(pixel_values=pix, input_ids=ids, attention_mask=mask, labels=labels).loss,
                  lambda: (opt.step(), opt.zero_grad(set_to_none=True)), lambda others: gemm(torch, others))
    return res


def spec_image_token(s: dict) -> int:
    return 50265 if s["vocab"] > 50265 else s["vocab"] - 1  # = model_step.image_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", default="hf")
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    res = run(json.loads(args.spec.read_text()))
    args.result.write_text(json.dumps(res))


if __name__ == "__main__":
    main()
