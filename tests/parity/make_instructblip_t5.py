"""Write the InstructBLIP + Flan-T5 parity fixtures in tests/fixtures/instructblip_t5/.

Run with the torch venv (the tests themselves never need torch):

    python3 -m venv hf-venv && hf-venv/bin/pip install -r tests/parity/requirements.txt
    hf-venv/bin/python tests/parity/make_instructblip_t5.py

A tiny random ``InstructBlipForConditionalGeneration`` with a Flan-T5-style LLM (gated FFN with
exact GELU as the config names it, an untied LM head, ``relative_attention_max_distance`` 20, not
Flan's 128, so a port ignoring any of them fails) is built, every weight redrawn at std 0.3 and
rounded to float32, and run in float64 and float32. Also a BLIP-2 + the same T5
(``Salesforce/blip2-flan-t5-xl``'s architecture: no instruction) in ``blip2_t5/``. The float64 run
is float64 throughout: T5's norm variance (float32 in HF) is patched to keep the input's dtype.
LoRA is written by hand here (no peft): adapters on every T5 attention q and v and on the q and v
thirds of the ViT's fused qkv, rank 4, alpha 8, A and B at std 0.3 so every gradient is non-zero.
Seeded: running this again writes the same numbers. Pinned: transformers==5.23.0, torch==2.13.0 (CPU).
tests/fixtures/instructblip_t5/README.md says what each file holds.
"""
from __future__ import annotations

import copy
import json
import shutil
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    T5Config,
)
from transformers.models.t5 import modeling_t5

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import QFORMER, STD, VISION  # noqa: E402  the same vision and Q-Former sizes

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "instructblip_t5"
SEED = 0
T5 = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
          relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
          dense_act_fn="gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
          decoder_start_token_id=0, tie_word_embeddings=False)
NUM_QUERY = 8
IMAGE_TOKEN = 63  # the T5 vocabulary's last id stands for an image token (v5 scatters the queries there)
QF_PAD, QF_CLS, QF_SEP = 0, 1, 2
GEN = dict(max_new_tokens=8, do_sample=False, length_penalty=1.0, early_stopping=False)
GENERATIONS = {  # name -> settings (InstructBLIP's generation config has repetition_penalty 1.5)
    "greedy_ids": dict(num_beams=1, min_new_tokens=0, repetition_penalty=1.5),
    "beam_ids": dict(num_beams=3, min_new_tokens=0, repetition_penalty=1.5),
    "beam_min_ids": dict(num_beams=3, min_new_tokens=4, repetition_penalty=1.0),
    "greedy_plain_ids": dict(num_beams=1, min_new_tokens=0, repetition_penalty=1.0),
}
LORA = dict(rank=4, alpha=8.0)


def eager(model) -> None:
    """Eager attention everywhere: T5's stacks hold deep copies of the config, so setting the config's
    attribute would leave them on sdpa; ``set_attn_implementation`` reaches every submodel."""
    model.set_attn_implementation("eager")
    for module in model.modules():
        config = getattr(module, "config", None)
        assert config is None or config._attn_implementation in ("eager", None), type(module)


def untie_head(model) -> None:
    """transformers 5.23's T5Config forces tie_word_embeddings=True on a fresh model; Flan-T5's head
    is its own: give lm_head its own parameter and say so in the config that is saved."""
    lm = model.language_model
    lm.lm_head.weight = torch.nn.Parameter(lm.shared.weight.detach().clone())
    for config in (model.config.text_config, lm.config):
        config.tie_word_embeddings = False
        config.scale_decoder_outputs = False
    assert lm.lm_head.weight.data_ptr() != lm.shared.weight.data_ptr()


def redraw(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter N(0, 0.3); norm weights (LayerNorm, T5LayerNorm) 1 + N(0, 0.3). Rounded to float32."""
    norms = {f"{n}.weight" for n, m in model.named_modules()
             if isinstance(m, (torch.nn.LayerNorm, modeling_t5.T5LayerNorm))}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            value = torch.randn(p.shape, generator=gen, dtype=torch.float64) * STD
            p.copy_((value + (1.0 if name in norms else 0.0)).float())
        for layer in model.vision_model.encoder.layers:  # EVA's fixed zero key bias
            d = layer.self_attn.embed_dim
            layer.self_attn.qkv.bias[d : 2 * d] = 0.0


def build(instruct: bool, seed: int):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    text = T5Config(**T5).to_dict()
    if instruct:
        config = InstructBlipConfig(vision_config=InstructBlipVisionConfig(**VISION).to_dict(),
                                    qformer_config=InstructBlipQFormerConfig(**QFORMER, encoder_hidden_size=32).to_dict(),
                                    text_config=text, num_query_tokens=NUM_QUERY, image_token_index=IMAGE_TOKEN)
        model = InstructBlipForConditionalGeneration(config)
    else:
        config = Blip2Config(vision_config=Blip2VisionConfig(**VISION).to_dict(),
                             qformer_config=Blip2QFormerConfig(**QFORMER).to_dict(),
                             text_config=text, num_query_tokens=NUM_QUERY, image_token_index=IMAGE_TOKEN)
        model = Blip2ForConditionalGeneration(config)
    eager(model)
    model = model.float().eval()
    untie_head(model)
    redraw(model, gen)
    with torch.no_grad():  # EOS likelier, so that generated rows end at different lengths (EOS handling)
        model.language_model.lm_head.weight[T5["eos_token_id"]] *= 2.5
    ffn = model.language_model.encoder.block[0].layer[1].DenseReluDense
    x = torch.linspace(-3, 3, 7)
    assert torch.equal(ffn.act(x), F.gelu(x)), "the FFN must use exact GELU, as dense_act_fn says"
    return model, gen


def make_inputs(gen: torch.Generator) -> dict[str, np.ndarray]:
    def rand_ids(n: int, lo: int, hi: int) -> list[int]:
        return torch.randint(lo, hi, (n,), generator=gen).tolist()

    def pad_rows(rows: list[list[int]], value: int) -> tuple[np.ndarray, np.ndarray]:
        n = max(map(len, rows))
        ids = np.full((len(rows), n), value, dtype=np.int64)
        mask = np.zeros((len(rows), n), dtype=np.int64)
        for r, row in enumerate(rows):
            ids[r, : len(row)], mask[r, : len(row)] = row, 1
        return ids, mask

    qformer_ids, qformer_mask = pad_rows([[QF_CLS] + rand_ids(4, 3, 39) + [QF_SEP], [QF_CLS] + rand_ids(1, 3, 39) + [QF_SEP]],
                                         QF_PAD)
    image = [IMAGE_TOKEN] * NUM_QUERY
    input_ids, attention_mask = pad_rows([image + rand_ids(4, 3, 62) + [1], image + rand_ids(1, 3, 62) + [1]], 0)
    labels, decoder_mask = pad_rows([rand_ids(5, 3, 62) + [1], rand_ids(2, 3, 62) + [1]], -100)
    return {
        "pixel_values": torch.randn((2, 3, 16, 16), generator=gen, dtype=torch.float64).float().numpy(),
        "qformer_input_ids": qformer_ids, "qformer_attention_mask": qformer_mask,
        "input_ids": input_ids, "attention_mask": attention_mask,
        "labels": labels, "decoder_attention_mask": decoder_mask,
    }


@contextmanager
def float64_t5_norm():
    """HF's T5LayerNorm takes the variance in float32 whatever the input; in the float64 run it keeps
    float64, so that the reference is a float64 computation throughout."""
    original = modeling_t5.T5LayerNorm.forward

    def forward(self, hidden_states):
        if hidden_states.dtype != torch.float64:
            return original(self, hidden_states)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    modeling_t5.T5LayerNorm.forward = forward
    try:
        yield
    finally:
        modeling_t5.T5LayerNorm.forward = original


def caption_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the label tokens, in the logits' dtype (no shift: T5's decoder predicts
    its labels position by position)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


# ---------------------------------------------------------------------------- LoRA, by hand


class LoRA(torch.nn.Module):
    """base(x) + scale * (x A^T) B^T on the output columns of each adapted part."""

    def __init__(self, base: torch.nn.Linear, parts: dict[str, slice], gen: torch.Generator):
        super().__init__()
        self.base, self.parts, self.scale = base, parts, LORA["alpha"] / LORA["rank"]
        self.A = torch.nn.ParameterDict()
        self.B = torch.nn.ParameterDict()
        for part, cols in parts.items():
            width = cols.stop - cols.start
            self.A[part] = torch.nn.Parameter((torch.randn((LORA["rank"], base.in_features), generator=gen,
                                                           dtype=torch.float64) * STD).float())
            self.B[part] = torch.nn.Parameter((torch.randn((width, LORA["rank"]), generator=gen,
                                                           dtype=torch.float64) * STD).float())

    def forward(self, x):
        out = self.base(x)
        updates = []
        for part, cols in self.parts.items():
            delta = (x @ self.A[part].T) @ self.B[part].T * self.scale
            updates.append((cols, delta))
        pieces, at = [], 0
        for cols, delta in sorted(updates, key=lambda u: u[0].start):
            pieces += [out[..., at : cols.start], out[..., cols] + delta]
            at = cols.stop
        pieces.append(out[..., at:])
        return torch.cat(pieces, dim=-1)


def add_lora(model, gen: torch.Generator) -> dict[str, tuple[LoRA, str]]:
    """Adapters on T5's attention q and v and on the ViT qkv's q and v thirds; key -> (adapter, part)."""
    adapters: dict[str, tuple[LoRA, str]] = {}
    d = VISION["hidden_size"]
    targets = []
    for name, module in model.named_modules():
        if name.startswith("language_model.") and name.rsplit(".", 1)[-1] in ("q", "v"):
            targets.append((name, {"all": slice(0, module.out_features)}))
        elif name.startswith("vision_model.") and name.endswith("self_attn.qkv"):
            targets.append((name, {"q": slice(0, d), "v": slice(2 * d, 3 * d)}))
    for name, parts in sorted(targets):
        parent_name, attr = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        adapter = LoRA(getattr(parent, attr), parts, gen)
        setattr(parent, attr, adapter)
        for part in parts:
            adapters[name if part == "all" else f"{name}.{part}"] = (adapter, part)
    return adapters


def lora_tensors(adapters: dict[str, tuple[LoRA, str]]) -> dict[str, torch.Tensor]:
    """``<module>[.<part>].lora_A`` [r, in] and ``.lora_B`` [out_part, r], torch layout."""
    out = {}
    for key, (adapter, part) in adapters.items():
        out[f"{key}.lora_A"], out[f"{key}.lora_B"] = adapter.A[part], adapter.B[part]
    return out


# ---------------------------------------------------------------------------- the runs


def run_instruct(model, inp: dict, dtype: torch.dtype, lora_gen_seed: int) -> dict[str, np.ndarray]:
    t = lambda k: torch.from_numpy(inp[k])  # noqa: E731
    pv = t("pixel_values").to(dtype)
    qids, qmask = t("qformer_input_ids"), t("qformer_attention_mask")
    ids, mask, labels = t("input_ids"), t("attention_mask"), t("labels")
    res: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        image = model.vision_model(pixel_values=pv).last_hidden_state
        res["vision_last_hidden_state"] = image
        queries = model.query_tokens.expand(2, -1, -1)
        qf = model.qformer(input_ids=qids, attention_mask=torch.cat([torch.ones(2, NUM_QUERY, dtype=torch.long), qmask], 1),
                           query_embeds=queries, encoder_hidden_states=image,
                           encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long))
        res["qformer_query_output"] = qf.last_hidden_state[:, :NUM_QUERY]
        res["language_projection"] = model.language_projection(res["qformer_query_output"])
        feats = model.get_image_features(pv, qformer_input_ids=qids, qformer_attention_mask=qmask, return_dict=True)
        assert torch.allclose(feats.pooler_output, res["language_projection"], rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-6)
        lm = model.language_model
        prepended = torch.cat([res["language_projection"], lm.get_input_embeddings()(ids[:, NUM_QUERY:])], 1)
        encoded = lm.encoder(inputs_embeds=prepended, attention_mask=mask).last_hidden_state
        res["encoder_last_hidden_state"] = encoded
        out = model(pixel_values=pv, qformer_input_ids=qids, qformer_attention_mask=qmask, input_ids=ids,
                    attention_mask=mask, labels=labels)
        direct = lm(inputs_embeds=prepended, attention_mask=mask, labels=labels).logits
        assert torch.allclose(direct, out.logits, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)
        res["logits"] = out.logits
        res["loss_hf"] = out.loss
        res["loss"] = caption_loss(out.logits, labels)
        for name, settings in GENERATIONS.items():
            res[name] = model.generate(pixel_values=pv, qformer_input_ids=qids, qformer_attention_mask=qmask,
                                       input_ids=ids, attention_mask=mask, **GEN, **settings)
    assert torch.allclose(res["loss"].double(), res["loss_hf"].double(), rtol=1e-5), (res["loss"], res["loss_hf"])

    # LoRA on, the LLM and the ViT frozen: gradients of the loss
    model = copy.deepcopy(model)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(("language_model.", "vision_model.")))
    adapters = add_lora(model, torch.Generator().manual_seed(lora_gen_seed))
    model.to(dtype)
    logits = model(pixel_values=pv, qformer_input_ids=qids, qformer_attention_mask=qmask, input_ids=ids,
                   attention_mask=mask, labels=labels).logits
    loss = caption_loss(logits, labels)
    loss.backward()
    res["lora_logits"], res["lora_loss"] = logits, loss
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith(("language_model.", "vision_model.")):  # adapters: below
            res[f"grad.{name}"] = p.grad
    for key, tensor in lora_tensors(adapters).items():
        res[f"grad_lora.{key}"] = tensor.grad
    for k, v in res.items():
        if not k.endswith("_ids") and k != "loss_hf":
            assert v.dtype == dtype, (k, v.dtype)
    return {k: v.detach().numpy() for k, v in res.items()}, {k: v.detach().float() for k, v in lora_tensors(adapters).items()}


def run_blip2(model, inp: dict) -> dict[str, np.ndarray]:
    t = lambda k: torch.from_numpy(inp[k])  # noqa: E731
    pv, ids, mask, labels = t("pixel_values"), t("input_ids"), t("attention_mask"), t("labels")
    with torch.no_grad():
        image = model.vision_model(pixel_values=pv).last_hidden_state
        qf = model.qformer(query_embeds=model.query_tokens.expand(2, -1, -1), encoder_hidden_states=image)
        out = model(pixel_values=pv, input_ids=ids, attention_mask=mask, labels=labels)
        greedy = model.generate(pixel_values=pv, input_ids=ids, attention_mask=mask, **GEN,
                                **GENERATIONS["greedy_plain_ids"])
    res = {"qformer_last_hidden_state": qf.last_hidden_state, "logits": out.logits,
           "loss": caption_loss(out.logits, labels), "greedy_ids": greedy}
    return {k: v.detach().numpy() for k, v in res.items()}


def save(model, folder: Path) -> None:
    """save_pretrained, then make sure the untied head is in the file and the config says untied."""
    model.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    expected = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if "language_model.lm_head.weight" not in weights:
        weights["language_model.lm_head.weight"] = expected["language_model.lm_head.weight"]
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert not torch.equal(weights["language_model.lm_head.weight"], weights["language_model.shared.weight"])
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main() -> None:
    model, gen = build(instruct=True, seed=SEED)
    inputs = make_inputs(gen)
    blip2, _ = build(instruct=False, seed=SEED + 1)
    if OUT.exists():
        for child in OUT.iterdir():
            if child.name != "README.md":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    OUT.mkdir(parents=True, exist_ok=True)
    save(model, OUT)
    np.savez(OUT / "inputs.npz", **inputs)
    # the saved folder reloads to the same model (the head stays untied)
    reloaded = InstructBlipForConditionalGeneration.from_pretrained(OUT).eval()
    eager(reloaded)

    outputs = {}
    for label, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        with float64_t5_norm() if dtype == torch.float64 else nullcontext():
            outputs[label], lora = run_instruct(copy.deepcopy(model).to(dtype).eval(), inputs, dtype, SEED + 2)
        np.savez(OUT / f"outputs_{label}.npz", **outputs[label])
    save_file({k: v.contiguous() for k, v in lora.items()}, OUT / "lora.safetensors")
    again, _ = run_instruct(reloaded, inputs, torch.float32, SEED + 2)
    assert np.allclose(again["logits"], outputs["float32"]["logits"], rtol=0, atol=1e-6), "the reload changed the model"

    (OUT / "blip2_t5").mkdir()
    save(blip2, OUT / "blip2_t5")
    np.savez(OUT / "blip2_t5" / "outputs_float32.npz", **run_blip2(blip2, inputs))

    meta = {
        "transformers": transformers.__version__, "torch": torch.__version__, "seed": SEED, "std": STD,
        "num_query_tokens": NUM_QUERY, "image_token_index": IMAGE_TOKEN, "leading_image_tokens": NUM_QUERY,
        "t5": {"pad": 0, "eos": 1, "decoder_start": 0, "dense_act_fn": "gelu", "relative_attention_max_distance": 20,
               "tie_word_embeddings": False},
        "qformer": {"pad": QF_PAD, "cls": QF_CLS, "sep": QF_SEP},
        "generate": {name: {**GEN, **s} for name, s in GENERATIONS.items()},
        "generate_returns": "the decoder's ids: the decoder start token 0, then the new tokens (EOS 1, pad 0 after it)",
        "lora": {**LORA, "targets": ["language_model.*.q", "language_model.*.v", "vision_model.*.self_attn.qkv (q, v)"],
                 "layout": "torch: lora_A [r, in], lora_B [out_part, r]; delta = scale * x A^T B^T, scale = alpha / rank"},
        "blip2_t5": {"seed": SEED + 1, "greedy_ids": {**GEN, **GENERATIONS["greedy_plain_ids"]}},
    }
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    f64, f32 = outputs["float64"], outputs["float32"]
    for name in GENERATIONS:
        print(name, "f64", f64[name].tolist(), "f32", f32[name].tolist())
    print("loss", f64["loss"], f32["loss"], f32["loss_hf"], "lora loss", f64["lora_loss"])
    worst = max((float(np.abs(f64[k] - f32[k]).max()), k) for k in f64 if not k.endswith("_ids"))
    print("largest float32 - float64 difference:", worst)
    total = 0
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            total += f.stat().st_size
            print(f"{f.stat().st_size:8d}  {f.relative_to(OUT)}")
    print("total", total, "bytes")


if __name__ == "__main__":
    main()
