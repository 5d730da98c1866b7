"""Write the InstructBLIP + Flan-T5 parity fixtures in tests/fixtures/instructblip_t5_tiny/.

Run with the torch venv (the tests themselves never need torch):

    python3 -m venv hf-venv && hf-venv/bin/pip install -r tests/parity/requirements.txt
    hf-venv/bin/python tests/parity/make_instructblip_fixture.py

A tiny random ``InstructBlipForConditionalGeneration`` with a Flan-T5-style LM is built: a gated FFN
with *exact* (erf) GELU (``dense_act_fn="gelu"``, which transformers 5.23 honours; its
``gated-gelu`` default would be ``gelu_new``), an untied ``lm_head`` with no ``d_model ** -0.5``
rescale, and ``relative_attention_max_distance`` 20 (not 128), so a port that ignores any of them
fails. Every weight is redrawn at std 0.3 (LayerNorm / T5LayerNorm weights 1 + N(0, 0.3)), rounded
to float32 once, and the model runs in float64 and float32 with exactly those weights. The float64
run is float64 throughout: softmax (``float64_softmax``) and T5LayerNorm's variance (float32 in HF,
``float64_t5_norm`` here) keep float64. LoRA (rank 4, alpha 8) is written by hand here (no peft):
on every T5 attention ``q``/``v`` and on the q and v thirds of each ViT ``qkv``, A and B at std 0.3
so that every adapter gradient is non-zero. ``blip2_t5/`` holds a BLIP-2 + the same T5 (the
architecture of Salesforce/blip2-flan-t5-xl, no instruction input), float32 only.
Everything is seeded: running this again writes the same numbers.
tests/fixtures/instructblip_t5_tiny/README.md (kept when the folder is rewritten) says what each
file holds; update it with this script. Pinned: transformers==5.23.0, torch==2.13.0 (CPU).
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
from transformers.activations import GELUActivation
from transformers.models.t5 import modeling_t5

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import QFORMER, STD, VISION, float64_softmax, folder_size  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "instructblip_t5_tiny"
SEED = 14  # the first seed (of 0..29) at which greedy, beam, beam_min and BLIP-2 greedy all end a row early with EOS
BLIP2_SEED = SEED + 1000  # the BLIP-2 variant's own weights
T5 = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
          relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
          dense_act_fn="gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
          decoder_start_token_id=0, tie_word_embeddings=False)
PAD, EOS, START = T5["pad_token_id"], T5["eos_token_id"], T5["decoder_start_token_id"]
NUM_QUERY = 8
IMAGE_TOKEN = 63  # the T5 vocabulary's last id plays the image token v5 scatters the queries into
QF_PAD, QF_CLS, QF_SEP = 0, 1, 2
LORA = dict(rank=4, alpha=8.0)
COMMON = dict(do_sample=False, max_new_tokens=8, length_penalty=1.0, early_stopping=False)
GENERATE = {  # output name -> generate() settings (repetition_penalty 1.5: InstructBLIP's generation config)
    "greedy_ids": dict(COMMON, num_beams=1, min_new_tokens=0, repetition_penalty=1.5),
    "beam_ids": dict(COMMON, num_beams=3, min_new_tokens=0, repetition_penalty=1.5),
    "beam_min_ids": dict(COMMON, num_beams=3, min_new_tokens=4, repetition_penalty=1.0),
}
BLIP2_GENERATE = {"greedy_ids": dict(COMMON, num_beams=1, min_new_tokens=0, repetition_penalty=1.0)}
ID_KEYS = {"greedy_ids", "beam_ids", "beam_min_ids"}


# ---------------------------------------------------------------------------- the model


def build(instruct: bool, seed: int) -> tuple[torch.nn.Module, torch.Generator]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    text = T5Config(**T5)
    # T5Config pops tie_word_embeddings=False into scale_decoder_outputs=False and forces the tie on;
    # dense_act_fn="gelu" is kept over the gated-gelu -> gelu_new rule.
    assert text.dense_act_fn == "gelu" and text.is_gated_act and text.scale_decoder_outputs is False
    assert text.tie_word_embeddings is True
    if instruct:
        config = InstructBlipConfig(
            vision_config=InstructBlipVisionConfig(**VISION).to_dict(),
            qformer_config=InstructBlipQFormerConfig(**QFORMER, encoder_hidden_size=VISION["hidden_size"]).to_dict(),
            text_config=text.to_dict(), num_query_tokens=NUM_QUERY, image_token_index=IMAGE_TOKEN)
        model = InstructBlipForConditionalGeneration(config)
    else:
        config = Blip2Config(vision_config=Blip2VisionConfig(**VISION).to_dict(),
                             qformer_config=Blip2QFormerConfig(**QFORMER).to_dict(),
                             text_config=text.to_dict(), num_query_tokens=NUM_QUERY, image_token_index=IMAGE_TOKEN)
        model = Blip2ForConditionalGeneration(config)
    model = model.float().eval()
    # eager everywhere: T5's encoder and decoder stacks hold deep copies of the text config, so
    # setting config._attn_implementation on the top configs would leave T5 on sdpa
    model.set_attn_implementation("eager")
    attn = {m.config._attn_implementation for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")}
    assert attn == {"eager"}, attn
    untie_head(model)
    redraw(model, gen)
    check_model(model)
    return model, gen


def untie_head(model: torch.nn.Module) -> None:
    """Flan-T5's head is its own matrix. transformers 5.23 builds T5 with lm_head tied to shared (the
    encoder/decoder embed_tokens are tied to shared the same way, and stay so): give lm_head its own
    Parameter, drop it from the tie mappings, and make the config that is saved say tie false.
    save_pretrained dedups by storage, so the separate head is written as language_model.lm_head.weight."""
    lm = model.language_model
    lm.lm_head.weight = torch.nn.Parameter(lm.shared.weight.detach().clone())
    lm.all_tied_weights_keys.pop("lm_head.weight")
    model.all_tied_weights_keys.pop("language_model.lm_head.weight")
    model.config.text_config.tie_word_embeddings = False  # the same object as lm.config
    assert lm.config is model.config.text_config and lm.config.scale_decoder_outputs is False
    assert lm.encoder.embed_tokens.weight is lm.shared.weight is lm.decoder.embed_tokens.weight


def redraw(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter N(0, 0.3) (relative_attention_bias too); LayerNorm and T5LayerNorm weights
    1 + N(0, 0.3). Drawn in float64 in sorted-name order, rounded to float32."""
    norms = {f"{n}.weight" for n, m in model.named_modules()
             if isinstance(m, (torch.nn.LayerNorm, modeling_t5.T5LayerNorm))}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            value = torch.randn(p.shape, generator=gen, dtype=torch.float64) * STD
            if name in norms:
                value += 1.0
            p.copy_(value.float())
        # EVA/LAVIS keep a zero, fixed key bias (q_bias, 0, v_bias); HF stores the concatenation.
        for layer in model.vision_model.encoder.layers:
            d = layer.self_attn.embed_dim
            layer.self_attn.qkv.bias[d : 2 * d] = 0.0


def check_model(model: torch.nn.Module) -> None:
    lm = model.language_model
    assert not torch.equal(lm.lm_head.weight, lm.shared.weight)
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    exact = 0.5 * x * (1 + torch.erf(x / 2**0.5))
    tanh = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    for name, module in model.named_modules():
        if isinstance(module, modeling_t5.T5DenseGatedActDense):
            assert type(module.act) is GELUActivation, (name, type(module.act))  # not NewGELUActivation
            assert torch.allclose(module.act(x), exact, rtol=0, atol=1e-15), name
            assert not torch.allclose(module.act(x), tanh, rtol=0, atol=1e-5), name
    assert lm.encoder.block[0].layer[0].SelfAttention.relative_attention_max_distance == 20


# ---------------------------------------------------------------------------- inputs


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

    # the instruction for the Q-Former: "[CLS] w.. [SEP]", lengths 6 and 3
    qf_ids, qf_mask = pad_rows([[QF_CLS] + rand_ids(4, 3, 39) + [QF_SEP], [QF_CLS] + rand_ids(1, 3, 39) + [QF_SEP]],
                               QF_PAD)
    # the T5 encoder prompt: 8 image tokens, then the prompt ending in </s> (lengths 5 and 2)
    image = [IMAGE_TOKEN] * NUM_QUERY
    ids, mask = pad_rows([image + rand_ids(4, 3, 63) + [EOS], image + rand_ids(1, 3, 63) + [EOS]], PAD)
    # the targets (lengths 6 and 3), ending in </s>, padded with -100
    labels, dec_mask = pad_rows([rand_ids(5, 3, 63) + [EOS], rand_ids(2, 3, 63) + [EOS]], -100)
    return {
        "pixel_values": torch.randn((2, 3, 16, 16), generator=gen, dtype=torch.float64).float().numpy(),
        "qformer_input_ids": qf_ids, "qformer_attention_mask": qf_mask,
        "input_ids": ids, "attention_mask": mask,
        "labels": labels, "decoder_attention_mask": dec_mask,
    }


# ---------------------------------------------------------------------------- float64 and LoRA


@contextmanager
def float64_t5_norm():
    """HF's T5LayerNorm takes the variance of ``hidden.to(torch.float32)`` whatever the input dtype,
    which caps a float64 reference at ~1e-7. For a float64 input it stays float64 here; float32
    inputs run HF's code unchanged."""
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


def lora_targets(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Linear, str, slice]]:
    """adapter key -> (Linear, its module path, the output columns the adapter adds to)."""
    targets = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name.startswith("language_model.") and name.endswith((".q", ".v")):
            targets[name] = (module, name, slice(0, module.out_features))
        elif name.startswith("vision_model.") and name.endswith(".self_attn.qkv"):
            d = module.out_features // 3
            targets[f"{name}.q"] = (module, name, slice(0, d))
            targets[f"{name}.v"] = (module, name, slice(2 * d, 3 * d))
    return dict(sorted(targets.items()))


def draw_lora(model: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A [r, in] and B [out_part, r], torch layout, N(0, 0.3) (B not zero), rounded to float32."""
    r, tensors = LORA["rank"], {}
    for key, (linear, _, cols) in lora_targets(model).items():
        a = torch.randn((r, linear.in_features), generator=gen, dtype=torch.float64) * STD
        b = torch.randn((cols.stop - cols.start, r), generator=gen, dtype=torch.float64) * STD
        tensors[f"{key}.lora_A"], tensors[f"{key}.lora_B"] = a.float(), b.float()
    return tensors


@contextmanager
def lora_on(model: torch.nn.Module, params: dict[str, torch.Tensor]):
    """y = x W^T (+ b) + scale * (x A^T) B^T on the part's output columns, by forward hooks (so the
    original parameter names stay HF's)."""
    scale = LORA["alpha"] / LORA["rank"]
    parts: dict[str, list] = {}
    for key, (linear, path, cols) in lora_targets(model).items():
        parts.setdefault(path, [linear, []])[1].append((key, cols))

    def hook_for(items):
        def hook(module, args, out):
            x = args[0]
            for key, cols in items:
                delta = (x @ params[f"{key}.lora_A"].T) @ params[f"{key}.lora_B"].T * scale
                out = out + F.pad(delta, (cols.start, module.out_features - cols.stop))
            return out
        return hook

    handles = [linear.register_forward_hook(hook_for(items)) for linear, items in parts.values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------- runs


def caption_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the label tokens in the logits' dtype. No shift: T5's decoder input is
    the labels shifted right (start token 0 first, -100 -> pad 0), so logits[t] predicts labels[t]."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def reference_greedy(model, embeds, mask, penalty: float, steps: int, count_start: bool) -> torch.Tensor:
    """HF's greedy decoding written out (no cache): float32 scores, repetition penalty over the ids so
    far (with or without the decoder start token), pad after EOS, stop when every row has ended."""
    lm = model.language_model
    ids = torch.full((embeds.shape[0], 1), START, dtype=torch.long)
    done = torch.zeros(embeds.shape[0], dtype=torch.bool)
    for _ in range(steps):
        scores = lm(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=ids).logits[:, -1].float()
        for r in range(ids.shape[0]):
            seen = ids[r] if count_start else ids[r, 1:]
            for tok in set(seen.tolist()):
                s = scores[r, tok]
                scores[r, tok] = s * penalty if s < 0 else s / penalty
        nxt = scores.argmax(-1).masked_fill(done, PAD)
        ids = torch.cat([ids, nxt[:, None]], 1)
        done |= nxt == EOS
        if done.all():
            break
    return ids


def run(model, inp: dict, dtype: torch.dtype, lora: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    t = lambda k: torch.from_numpy(inp[k])  # noqa: E731
    pv = t("pixel_values").to(dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    qf = dict(qformer_input_ids=t("qformer_input_ids"), qformer_attention_mask=t("qformer_attention_mask"))
    text = dict(input_ids=t("input_ids"), attention_mask=t("attention_mask"))
    target = dict(labels=t("labels"), decoder_attention_mask=t("decoder_attention_mask"))
    res: dict[str, torch.Tensor] = {}
    notes: dict = {}
    with torch.no_grad():
        res["vision_last_hidden_state"] = model.vision_model(pixel_values=pv).last_hidden_state
        feats = model.get_image_features(pv, **qf, return_dict=True)
        assert torch.equal(feats.vision_outputs.last_hidden_state, res["vision_last_hidden_state"])
        res["qformer_query_output"] = feats.qformer_outputs.last_hidden_state[:, :NUM_QUERY]
        res["language_projection"] = feats.pooler_output
        out = model(pixel_values=pv, **qf, **text, **target)
        res["encoder_last_hidden_state"] = out.language_model_outputs.encoder_last_hidden_state
        res["logits"] = out.logits
        res["loss"] = caption_loss(out.logits, t("labels"))
        res["loss_hf"] = out.loss
        assert torch.allclose(res["loss"], res["loss_hf"], rtol=1e-5, atol=0), (res["loss"], res["loss_hf"])
        # v5 masked_scatters the projected queries over the image tokens; with the 8 image tokens
        # first that is exactly "queries prepended to the prompt embeddings" (T5's positions are relative)
        embeds = torch.cat([res["language_projection"], model.get_input_embeddings()(t("input_ids")[:, NUM_QUERY:])], 1)
        pre = model.language_model(inputs_embeds=embeds, attention_mask=t("attention_mask"), **target)
        assert torch.allclose(pre.encoder_last_hidden_state, res["encoder_last_hidden_state"], rtol=0, atol=tol)
        assert torch.allclose(pre.logits, res["logits"], rtol=0, atol=tol)
        for name, settings in GENERATE.items():
            res[name] = model.generate(pixel_values=pv, **qf, **text, **settings)
        # the returned rows and what repetition_penalty sees: HF's greedy written out
        g = GENERATE["greedy_ids"]
        with_start = reference_greedy(model, embeds, t("attention_mask"), g["repetition_penalty"], g["max_new_tokens"], True)
        without = reference_greedy(model, embeds, t("attention_mask"), g["repetition_penalty"], g["max_new_tokens"], False)
        assert torch.equal(with_start, res["greedy_ids"]), (with_start, res["greedy_ids"])
        notes["greedy_ids_if_the_penalty_skipped_the_start_token"] = without.tolist()

    # LoRA: T5 and ViT frozen, adapters + Q-Former (with its text parts) + query tokens + projection train
    model.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(("language_model.", "vision_model.")))
    params = {k: v.to(dtype).clone().requires_grad_(True) for k, v in lora.items()}
    with lora_on(model, params):
        lo = model(pixel_values=pv, **qf, **text, **target)
    res["lora_logits"] = lo.logits
    res["lora_loss"] = caption_loss(lo.logits, t("labels"))
    res["lora_loss"].backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            res[f"grad.{name}"] = p.grad
        else:
            assert p.grad is None, name
    for key, p in params.items():
        assert p.grad is not None and p.grad.abs().min() > 0, key
        res[f"grad_lora.{key}"] = p.grad
    zero = sorted(k for k, v in res.items() if k.startswith("grad.") and not v.abs().max() > 0)
    notes["all_zero_gradients"] = zero
    for k, v in res.items():
        want = torch.long if k in ID_KEYS else dtype
        assert v.dtype == want, (k, v.dtype)
    return {k: v.detach().numpy() for k, v in res.items()}, notes


def run_blip2(model, inp: dict) -> dict[str, np.ndarray]:
    t = lambda k: torch.from_numpy(inp[k])  # noqa: E731
    pv = t("pixel_values")
    text = dict(input_ids=t("input_ids"), attention_mask=t("attention_mask"))
    target = dict(labels=t("labels"), decoder_attention_mask=t("decoder_attention_mask"))
    res = {}
    with torch.no_grad():
        out = model(pixel_values=pv, **text, **target)
        res["qformer_last_hidden_state"] = out.qformer_outputs.last_hidden_state
        proj = model.language_projection(res["qformer_last_hidden_state"])
        res["language_projection"] = proj
        res["encoder_last_hidden_state"] = out.language_model_outputs.encoder_last_hidden_state
        res["logits"] = out.logits
        res["loss"] = caption_loss(out.logits, t("labels"))
        res["loss_hf"] = out.loss
        assert torch.allclose(res["loss"], res["loss_hf"], rtol=1e-5, atol=0)
        embeds = torch.cat([proj, model.get_input_embeddings()(t("input_ids")[:, NUM_QUERY:])], 1)
        pre = model.language_model(inputs_embeds=embeds, attention_mask=t("attention_mask"), **target)
        assert torch.allclose(pre.logits, res["logits"], rtol=0, atol=1e-5)
        for name, settings in BLIP2_GENERATE.items():
            res[name] = model.generate(pixel_values=pv, **text, **settings)
    return {k: v.numpy() for k, v in res.items()}


def check_reload(folder: Path, cls, model, inp: dict, instruct: bool) -> bool:
    """from_pretrained must give the same logits; returns whether the reloaded head is untied."""
    config = json.loads((folder / "config.json").read_text())
    assert config["text_config"]["tie_word_embeddings"] is False, config["text_config"]
    assert config["text_config"]["scale_decoder_outputs"] is False and config["text_config"]["dense_act_fn"] == "gelu"
    saved = load_file(folder / "model.safetensors")
    assert not torch.equal(saved["language_model.lm_head.weight"], saved["language_model.shared.weight"])
    assert all(v.dtype == torch.float32 for v in saved.values())
    transformers.logging.set_verbosity_error()  # its "both are present ... will NOT tie them" warning
    again = cls.from_pretrained(folder, attn_implementation="eager").eval()
    transformers.logging.set_verbosity_warning()
    lm = again.language_model
    untied = lm.lm_head.weight is not lm.shared.weight and torch.equal(lm.lm_head.weight, model.language_model.lm_head.weight)
    t = lambda k: torch.from_numpy(inp[k])  # noqa: E731
    kw = dict(pixel_values=t("pixel_values"), input_ids=t("input_ids"), attention_mask=t("attention_mask"),
              labels=t("labels"), decoder_attention_mask=t("decoder_attention_mask"))
    if instruct:
        kw |= dict(qformer_input_ids=t("qformer_input_ids"), qformer_attention_mask=t("qformer_attention_mask"))
    with torch.no_grad():
        assert torch.equal(again(**kw).logits, model(**kw).logits), "the reloaded checkpoint gives other logits"
    return untied


def eos_rows(ids: np.ndarray, max_new: int) -> list[int]:
    """Rows whose generated part (after the start token) holds EOS before the last allowed step."""
    return [r for r, row in enumerate(ids[:, 1:].tolist()) if EOS in row[: max_new - 1]]


def main() -> None:
    model, gen = build(instruct=True, seed=SEED)
    inputs = make_inputs(gen)
    lora = draw_lora(model, gen)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    if OUT.exists():
        for child in OUT.iterdir():
            if child.name != "README.md":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    OUT.mkdir(parents=True, exist_ok=True)

    model.save_pretrained(OUT)  # model.safetensors + config.json + generation_config.json
    save_file({k: v.contiguous() for k, v in lora.items()}, OUT / "lora.safetensors")
    np.savez(OUT / "inputs.npz", **inputs)
    reload_untied = check_reload(OUT, InstructBlipForConditionalGeneration, model, inputs, instruct=True)

    outputs, notes = {}, {}
    for label, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        m = copy.deepcopy(model).to(dtype).eval()
        patches = (float64_softmax(), float64_t5_norm()) if dtype == torch.float64 else (nullcontext(), nullcontext())
        with patches[0], patches[1]:
            outputs[label], notes[label] = run(m, inputs, dtype, lora)
        np.savez(OUT / f"outputs_{label}.npz", **outputs[label])
    f64, f32 = outputs["float64"], outputs["float32"]
    for k in ID_KEYS:
        assert np.array_equal(f64[k], f32[k]), (k, f64[k], f32[k])

    blip2, _ = build(instruct=False, seed=BLIP2_SEED)
    sub = OUT / "blip2_t5"
    blip2.save_pretrained(sub)
    blip2_untied = check_reload(sub, Blip2ForConditionalGeneration, blip2, inputs, instruct=False)
    blip2_out = run_blip2(blip2, inputs)
    np.savez(sub / "outputs_float32.npz", **blip2_out)

    rows = ("the decoder ids exactly as HF returns them, [batch, 1 + new tokens]: the decoder start token (0) "
            "first, then up to max_new_tokens new tokens; no prompt ids (the prompt went to the T5 encoder). A row "
            "that ended with EOS (1) before the longest row is filled to the batch's length: greedy fills with pad "
            "(0); beam search fills with EOS (1), because v5's _beam_search uses `pad_token_id or eos_token_id[0]` "
            "and pad 0 is falsy.")
    meta = {
        "transformers": transformers.__version__, "torch": torch.__version__, "seed": SEED, "std": STD,
        "blip2_t5_seed": BLIP2_SEED,
        "token_ids": {"pad": PAD, "eos": EOS, "decoder_start": START, "image_token_index": IMAGE_TOKEN,
                      "qformer_pad": QF_PAD, "qformer_cls": QF_CLS, "qformer_sep": QF_SEP},
        "num_query_tokens": NUM_QUERY,
        "leading_image_tokens_in_input_ids": NUM_QUERY,
        "blip2_t5_leading_image_tokens_in_input_ids": NUM_QUERY,
        "text_config": {k: v for k, v in T5.items() if k != "tie_word_embeddings"}
        | {"tie_word_embeddings": False, "scale_decoder_outputs": False},
        "generate": {name: s for name, s in GENERATE.items()},
        "blip2_t5_generate": BLIP2_GENERATE,
        "generate_returns": rows,
        "generate_notes": {
            "scores_dtype": "HF generate casts each step's logits to float32, also in the float64 run",
            "repetition_penalty_sees_decoder_start_token": True,
            "repetition_penalty_rule": "for every id already in the decoder row (start token 0 included): score / p "
                                       "if score > 0 else score * p, on the float32 scores, before argmax / log_softmax",
            "min_new_tokens_rule": "EOS score set to -inf while fewer than min_new_tokens tokens follow the start token",
            "beam_length_penalty_length": "new tokens including EOS, the start token excluded "
                                          "(score = sum of log-probs / length ** length_penalty)",
            "greedy_ids_if_the_penalty_skipped_the_start_token": notes["float64"]["greedy_ids_if_the_penalty_skipped_the_start_token"],
            "rows_with_eos_before_max_new_tokens": {
                name: eos_rows(f64[name], GENERATE[name]["max_new_tokens"]) for name in GENERATE}
            | {"blip2_t5/greedy_ids": eos_rows(blip2_out["greedy_ids"], 8)},
        },
        "lora": {"rank": LORA["rank"], "alpha": LORA["alpha"], "scale": LORA["alpha"] / LORA["rank"], "dropout": 0.0,
                 "init_std": STD, "targets": ["language_model.*.{SelfAttention,EncDecAttention}.{q,v} (encoder and decoder)",
                                              "vision_model.encoder.layers.*.self_attn.qkv rows 0:32 (q) and 64:96 (v)"],
                 "frozen": ["language_model.*", "vision_model.*"],
                 "trained": ["query_tokens", "qformer.* (incl. text parts)", "language_projection.*", "LoRA A and B"],
                 "keys": sorted({k.rsplit(".", 1)[0] for k in lora})},
        "zero_gradients": notes["float64"]["all_zero_gradients"],
        "gradients_zero_in_exact_arithmetic": sorted(  # key biases: softmax ignores a per-query constant
            k for k in f64 if k.startswith("grad.") and 0 < np.abs(f64[k]).max() < 1e-12),
        "reload_keeps_untied_head": {"instructblip": reload_untied, "blip2_t5": blip2_untied},
    }
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    for k in sorted(ID_KEYS):
        print(f"{k:13s} f64", f64[k].tolist(), " f32 equal:", np.array_equal(f64[k], f32[k]))
    print("greedy if the penalty skipped the start token", meta["generate_notes"]["greedy_ids_if_the_penalty_skipped_the_start_token"])
    print("blip2_t5 greedy", blip2_out["greedy_ids"].tolist())
    print("eos rows", meta["generate_notes"]["rows_with_eos_before_max_new_tokens"])
    print("loss f64", f64["loss"], f64["loss_hf"], "f32", f32["loss"], f32["loss_hf"], "lora", f64["lora_loss"],
          "blip2", blip2_out["loss"])
    print("zero grads", meta["zero_gradients"], "reload untied", meta["reload_keeps_untied_head"])
    worst = max((float(np.abs(f64[k] - f32[k]).max()), k) for k in f64 if k not in ID_KEYS)
    print("largest float32 - float64 difference:", worst)
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            assert f.stat().st_size < 1_000_000, f
            print(f"{f.stat().st_size:8d}  {f.relative_to(OUT)}")
    print("total", folder_size(OUT), "bytes")


if __name__ == "__main__":
    main()
