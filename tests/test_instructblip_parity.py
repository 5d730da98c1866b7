"""InstructBLIP + Flan-T5 (and BLIP-2 + Flan-T5), converted from Hugging Face checkpoints, against
transformers' numbers.

The fixtures (tests/fixtures/instructblip_t5, made by tests/parity/make_instructblip_t5.py with
transformers 5.23) hold tiny random HF checkpoints, their inputs and HF's outputs; no torch here.
HF v5 scatters the query outputs over 8 leading image tokens of the encoder input; InstructBLIP
prepends them. Both are the same model: we feed ``input_ids[:, 8:]`` and prepend.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

from paddle_medvl.config import DecodeConfig, LoRAConfig, load_config
from paddle_medvl.convert.hf import convert, key_map
from paddle_medvl.models.blip2 import Blip2
from paddle_medvl.models.lora import lora_layers
from test_blip2_parity import load, tensor

FIX = Path(__file__).resolve().parent / "fixtures" / "instructblip_t5"
Q = 8
EOS, PAD = 1, 0
LORA = [LoRAConfig(targets=["vision_model.encoder.layers.*.self_attn.qkv.q", "vision_model.encoder.layers.*.self_attn.qkv.v",
                            "language_model.t5.*Attention.q", "language_model.t5.*Attention.v"], rank=4, alpha=8.0)]
# Relative to the largest reference value. Past the Q-Former, paddlenlp's T5 attention takes its
# softmax in float32 even in a float64 model: float64 parity of the LLM's outputs stops near 1e-6.
TOLERANCE = {"float64": 1e-9, "float32": 1e-5}
T5_FLOAT64 = 1e-5 / TOLERANCE["float64"]


@pytest.fixture(scope="module")
def inputs():
    return dict(np.load(FIX / "inputs.npz"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert(FIX, tmp_path_factory.mktemp("instructblip"), progress=False)


def close(actual, expected, dtype: str, what: str, factor: float = 1.0, llm: bool = False,
          scale: float | None = None) -> None:
    """Within TOLERANCE (times ``factor``) of the largest reference value (``scale``: of a set of them);
    ``llm``: the value passed through T5 (float64: 1e-5)."""
    if llm and dtype == "float64":
        factor = max(factor, T5_FLOAT64)
    actual = actual.numpy() if isinstance(actual, paddle.Tensor) else np.asarray(actual)
    scale = max(float(np.abs(expected).max()) if scale is None else scale, 1e-30)
    error = float(np.abs(actual - expected).max()) / scale
    assert error <= TOLERANCE[dtype] * factor, f"{what}: relative error {error:.2e} in {dtype}"


def forward(model: Blip2, inputs: dict, dtype: str):
    return model(tensor(inputs["pixel_values"], dtype), tensor(inputs["input_ids"][:, Q:]),
                 tensor(inputs["attention_mask"][:, Q:]), tensor(inputs["labels"]),
                 qformer_ids=tensor(inputs["qformer_input_ids"]), qformer_mask=tensor(inputs["qformer_attention_mask"]),
                 return_logits=True)


def test_conversion_reads_the_architecture(converted):
    config = load_config(converted / "config.yaml").Model
    assert config.qformer.instruction and not config.qformer.text
    language = config.language
    assert language.architecture == "t5"
    assert (language.add_bos, language.eos_text, language.eos_token, language.prompt_eos) == (False, "", True, True)
    # transformers 5 saves `tie_word_embeddings: true` with an untied head: the file's tensors decide
    assert language.config["tie_word_embeddings"] is False and language.config["scale_decoder_outputs"] is False
    assert language.config["dense_act_fn"] == "gelu" and language.config["relative_attention_max_distance"] == 20


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_forward_parity(converted, inputs, dtype):
    want = np.load(FIX / f"outputs_{dtype}.npz")
    model = load(converted, dtype)
    with paddle.no_grad():
        pixels = tensor(inputs["pixel_values"], dtype)
        image, _ = model._image_features(pixels)
        queries = model.qformer(model.query_tokens, image, None, tensor(inputs["qformer_input_ids"]),
                                tensor(inputs["qformer_attention_mask"]))
        prefix = model.encode_images(pixels, tensor(inputs["qformer_input_ids"]), tensor(inputs["qformer_attention_mask"]))
        lm = model.language_model
        embeds, mask = lm.join(prefix, tensor(inputs["input_ids"][:, Q:]), tensor(inputs["attention_mask"][:, Q:]))
        encoded = lm._encode(embeds, mask)
        out = forward(model, inputs, dtype)
    close(image, want["vision_last_hidden_state"], dtype, "vision")
    close(queries, want["qformer_query_output"], dtype, "Q-Former with the instruction")
    close(prefix, want["language_projection"], dtype, "projection")
    real = inputs["attention_mask"].astype(bool)  # encoder outputs at padding mean nothing
    close(encoded.numpy()[real], want["encoder_last_hidden_state"][real], dtype, "T5 encoder", llm=True)
    labelled = inputs["labels"] != -100
    close(out.logits.numpy()[labelled], want["logits"][labelled], dtype, "logits", llm=True)
    close(float(out.caption_loss), want["loss"], dtype, "loss", llm=True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("key", ["greedy_ids", "beam_ids", "beam_min_ids", "greedy_plain_ids"])
def test_generation_parity(converted, inputs, dtype, key):
    settings = json.loads((FIX / "meta.json").read_text())["generate"][key]
    decode = DecodeConfig(num_beams=settings["num_beams"], max_new_tokens=settings["max_new_tokens"],
                          min_new_tokens=settings["min_new_tokens"], repetition_penalty=settings["repetition_penalty"],
                          length_penalty=settings["length_penalty"])
    model = load(converted, dtype)
    ids = model.generate(tensor(inputs["pixel_values"], dtype), tensor(inputs["input_ids"][:, Q:]),
                         tensor(inputs["attention_mask"][:, Q:]), decode, eos_token_id=EOS, pad_token_id=PAD,
                         instruction_ids=tensor(inputs["qformer_input_ids"]),
                         instruction_mask=tensor(inputs["qformer_attention_mask"])).numpy()
    want = np.load(FIX / f"outputs_{dtype}.npz")[key][:, 1:]  # HF's rows begin with the decoder start token
    for row, expected in zip(ids.tolist(), want.tolist()):
        end = expected.index(EOS) + 1 if EOS in expected else len(expected)  # HF pads a finished beam with EOS
        assert row[:end] == expected[:end] and set(row[end:]) <= {PAD}, (key, row, expected)
    assert ids.shape[1] == max(r.index(EOS) + 1 if EOS in r else len(r) for r in want.tolist())


def set_adapters(model: Blip2, dtype: str) -> dict[str, tuple[str, int | None]]:
    """The fixture's adapters (torch layout) into ours; fixture key -> (our layer, part index or None)."""
    tensors = load_file(FIX / "lora.safetensors")
    layers = lora_layers(model)
    where = {}
    for key in {k.rsplit(".", 1)[0] for k in tensors}:
        theirs = key
        part = None
        if key.startswith("vision_model."):
            theirs, name = key.rsplit(".", 1)
            part = {"q": 0, "v": 1}[name]
            ours = theirs
        else:
            ours = "language_model.t5." + key.removeprefix("language_model.")
        layer = layers[ours]
        a, b = tensors[f"{key}.lora_A"].T.astype(dtype), tensors[f"{key}.lora_B"].T.astype(dtype)
        if part is None:
            layer.lora_A.set_value(a)
            layer.lora_B.set_value(b)
        else:
            full_a, full_b = layer.lora_A.numpy(), layer.lora_B.numpy()
            full_a[part], full_b[part] = a, b
            layer.lora_A.set_value(full_a)
            layer.lora_B.set_value(full_b)
        where[key] = (ours, part)
    assert len(where) == 4 + 4 + 4 + 4, sorted(where)  # q and v of: 2 ViT blocks, 2 encoder, 2 decoder self, 2 cross
    return where


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lora_gradients_with_the_llm_frozen(converted, inputs, dtype):
    """With LoRA on the ViT's q/v and T5's attention q/v and both frozen: the loss, and the gradients
    reaching the queries, the Q-Former (instruction text parts included), the projection and the
    adapters. Paddle's frozen-layer_norm defect would show here (the ViT's norms are frozen)."""
    want = np.load(FIX / f"outputs_{dtype}.npz")
    model = load(converted, dtype, LORA)
    where = set_adapters(model, dtype)
    for name, p in model.named_parameters():
        p.stop_gradient = name.startswith(("vision_model.", "language_model.")) and ".lora_" not in name
    out = forward(model, inputs, dtype)
    close(float(out.caption_loss), want["lora_loss"], dtype, "loss with LoRA", llm=True)
    out.caption_loss.backward()
    params = dict(model.named_parameters())
    ours = {hf: (name, transpose) for name, (hf, transpose) in key_map(model).items()}
    # Relative to the largest gradient of the set: some are zero in exact arithmetic (the key biases:
    # softmax ignores what it adds to every score of a row), and their reference is rounding noise.
    keys = [k for k in want.files if k.startswith(("grad.", "grad_lora."))]
    scale = max(float(np.abs(want[k]).max()) for k in keys)
    checked = 0
    for key in (k for k in keys if k.startswith("grad.")):
        hf = key[len("grad."):].replace("qformer.embeddings.layernorm.", "qformer.layernorm.")
        name, transpose = ours[hf]
        close(params[name].grad, want[key].T if transpose else want[key], dtype, name, factor=10, llm=True, scale=scale)
        checked += 1
    assert checked == 61  # every Q-Former tensor (instruction text parts included), the queries, the projection
    for key, (layer, part) in where.items():
        for factor in ("A", "B"):
            grad = params[f"{layer}.lora_{factor}"].grad.numpy()
            grad = grad if part is None else grad[part]
            close(grad, want[f"grad_lora.{key}.lora_{factor}"].T, dtype, f"{key}.lora_{factor}", factor=10, llm=True, scale=scale)
    assert all(p.grad is None for n, p in params.items() if n.startswith("language_model.") and ".lora_" not in n)


def test_blip2_flan_t5_converts_and_matches(tmp_path, inputs):
    folder = convert(FIX / "blip2_t5", tmp_path / "blip2_t5", progress=False)
    config = load_config(folder / "config.yaml").Model
    assert config.language.architecture == "t5" and not config.qformer.instruction
    want = np.load(FIX / "blip2_t5" / "outputs_float32.npz")
    model = load(folder, "float32")
    with paddle.no_grad():
        image, _ = model._image_features(tensor(inputs["pixel_values"], "float32"))
        close(model.qformer(model.query_tokens, image), want["qformer_last_hidden_state"], "float32", "Q-Former")
        out = model(tensor(inputs["pixel_values"]), tensor(inputs["input_ids"][:, Q:]),
                    tensor(inputs["attention_mask"][:, Q:]), tensor(inputs["labels"]), return_logits=True)
        ids = model.generate(tensor(inputs["pixel_values"]), tensor(inputs["input_ids"][:, Q:]),
                             tensor(inputs["attention_mask"][:, Q:]),
                             DecodeConfig(num_beams=1, max_new_tokens=8, min_new_tokens=0), EOS, PAD).numpy()
    labelled = inputs["labels"] != -100
    close(out.logits.numpy()[labelled], want["logits"][labelled], "float32", "logits")
    close(float(out.caption_loss), want["loss"], "float32", "loss")
    expected = want["greedy_ids"][:, 1:]
    for row, exp in zip(ids.tolist(), expected.tolist()):
        end = exp.index(EOS) + 1 if EOS in exp else len(exp)
        assert row[:end] == exp[:end]


def test_the_key_map_of_an_adapted_model_is_the_plain_one(converted):
    """LoRA wraps Linears: the conversion key map must still transpose their weights and leave the
    adapters (which no Hugging Face checkpoint has) out."""
    plain, adapted = key_map(load(converted, "float32")), key_map(load(converted, "float32", LORA))
    assert adapted == plain
    assert plain["vision_model.encoder.layers.0.self_attn.qkv.weight"][1] is True
    assert plain["language_model.t5.encoder.block.0.layer.0.SelfAttention.q.weight"][1] is True


def test_a_half_precision_llm_loads_with_its_ffn_output_in_float32(converted):
    """``Model.language.dtype: bfloat16`` (the report recipes'): the checkpoint loads into a skeleton whose
    T5 is bfloat16 except the FFN output projections, float32 with the checkpoint's exact values."""
    from safetensors.numpy import load_file

    config = load_config(converted / "config.yaml").Model
    config.language.dtype = "bfloat16"
    model = Blip2.from_pretrained(converted, config)
    dtypes = {name: p.dtype for name, p in model.language_model.named_parameters()}
    wo = {name for name in dtypes if name.endswith("DenseReluDense.wo.weight")}
    assert len(wo) == 4 and {dtypes[n] for n in wo} == {paddle.float32}
    assert {d for n, d in dtypes.items() if n not in wo} == {paddle.bfloat16}
    stored = load_file(str(converted / "model.safetensors"))
    for name in wo:
        layer_weight = dict(model.language_model.named_parameters())[name]
        np.testing.assert_array_equal(layer_weight.numpy(), stored[f"language_model.{name}"])
        assert layer_weight.stop_gradient  # frozen like the rest of the LLM
