"""EVA ViT and Q-Former against Hugging Face transformers, number for number, without torch.

The fixtures (tests/fixtures/blip2_opt_tiny, made by tests/parity/make_fixtures.py) hold a tiny
random HF BLIP-2 OPT checkpoint and HF's outputs for it in float64 and float32.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import paddle
import paddle.nn as nn
import pytest
from safetensors.numpy import load_file

from paddle_medvl.config import QFormerConfig, VisionConfig
from paddle_medvl.models.eva_vit import EvaViT, bicubic_matrix
from paddle_medvl.models.language import default_dtype
from paddle_medvl.models.qformer import QFormer, create_query_tokens

FIX = Path(__file__).parent / "fixtures" / "blip2_opt_tiny"
REPO = Path(__file__).resolve().parents[1]
TOL = {"float64": 1e-9, "float32": 1e-5}
DTYPES = ["float64", "float32"]


# ---------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def hf() -> dict[str, np.ndarray]:
    """HF BLIP-2 weights plus the Q-Former text parts (InstructBLIP / LAVIS names)."""
    return load_file(FIX / "model.safetensors") | load_file(FIX / "qformer_text.safetensors")


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return dict(np.load(FIX / "inputs.npz"))


@pytest.fixture(scope="module")
def outputs() -> dict[str, dict[str, np.ndarray]]:
    return {dt: dict(np.load(FIX / f"outputs_{dt}.npz")) for dt in DTYPES}


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIX / "meta.json").read_text())


def vision_config(**kw) -> VisionConfig:
    cfg = json.loads((FIX / "config.json").read_text())["vision_config"]
    return VisionConfig(image_size=cfg["image_size"], patch_size=cfg["patch_size"], hidden_size=cfg["hidden_size"],
                        num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                        mlp_dim=cfg["intermediate_size"], layer_norm_eps=cfg["layer_norm_eps"], **kw)


def qformer_config(**kw) -> QFormerConfig:
    full = json.loads((FIX / "config.json").read_text())
    cfg, text = full["qformer_config"], json.loads((FIX / "meta.json").read_text())["qformer_text"]
    kw = {"text": False, "instruction": False, **kw}
    return QFormerConfig(hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
                         num_heads=cfg["num_attention_heads"], intermediate_size=cfg["intermediate_size"],
                         num_query_tokens=full["num_query_tokens"], cross_attention_frequency=cfg["cross_attention_frequency"],
                         layer_norm_eps=cfg["layer_norm_eps"], vocab_size=text["vocab_size"],
                         max_position_embeddings=text["max_position_embeddings"], pad_token_id=text["pad_token_id"],
                         dec_token_id=text["dec_token_id"], **kw)




def hf_key(ours: str, prefix: str) -> str:
    """Our parameter name -> the HF BLIP-2 / InstructBLIP checkpoint key it comes from.

    The vision q/v biases are slices of HF's ``self_attn.qkv.bias`` (see ``load_hf``); the single
    Q-Former LayerNorm is BLIP-2's ``qformer.layernorm`` (InstructBLIP: ``qformer.embeddings.layernorm``).
    """
    ours = re.sub(r"self_attn\.[qv]_bias$", "self_attn.qkv.bias", ours)
    return prefix + ours


def load_hf(module: nn.Layer, hf: dict[str, np.ndarray], prefix: str, dtype: str) -> set[str]:
    """Copy HF weights into ``module``: Linear weights transposed ([out, in] -> [in, out]),
    embeddings / LayerNorm / conv as they are. Returns the HF keys used."""
    linear = {f"{name}.weight" for name, layer in module.named_sublayers() if isinstance(layer, nn.Linear)}
    state, used = {}, set()
    for name, param in module.state_dict().items():
        key = hf_key(name, prefix)
        value = hf[key]
        if key.endswith("qkv.bias"):  # [q_bias, 0, v_bias]
            dim = value.shape[0] // 3
            assert not value[dim : 2 * dim].any(), "the key bias must be zero (EVA's is fixed at 0)"
            value = value[:dim] if name.endswith("q_bias") else value[2 * dim :]
        elif name in linear:
            value = value.T
        assert value.shape == tuple(param.shape), (name, value.shape, param.shape)
        state[name] = np.ascontiguousarray(value, dtype=dtype)
        used.add(key)
    missing, unexpected = module.set_state_dict(state)
    assert not missing and not unexpected
    return used


def vit(hf, dtype: str, **kw) -> EvaViT:
    with default_dtype(dtype):
        model = EvaViT(vision_config(**kw))
    load_hf(model, hf, "vision_model.", dtype)
    return model.eval()


def qformer(hf, dtype: str, **kw) -> QFormer:
    with default_dtype(dtype):
        model = QFormer(qformer_config(**kw), image_width=vision_config().hidden_size)
    load_hf(model, hf, "qformer.", dtype)
    return model.eval()


def query_tokens(hf, dtype: str) -> paddle.Tensor:
    return paddle.to_tensor(hf["query_tokens"].astype(dtype), stop_gradient=False)


def t(array: np.ndarray, dtype: str | None = None) -> paddle.Tensor:
    return paddle.to_tensor(array.astype(dtype) if dtype else array)


def close(got: paddle.Tensor, want: np.ndarray, dtype: str) -> float:
    err = float(np.abs(got.numpy().astype("float64") - want.astype("float64")).max())
    assert got.shape == list(want.shape) and err < TOL[dtype], (err, got.shape, want.shape)
    return err


# ---------------------------------------------------------------------------- names


def test_parameter_names_are_hf_names(hf):
    """Vision and Q-Former (no text parts) hold exactly the HF checkpoint's tensors."""
    with default_dtype("float32"):
        vision = {hf_key(k, "vision_model.") for k in EvaViT(vision_config()).state_dict()}
        qf = {hf_key(k, "qformer.") for k in QFormer(qformer_config(), 32).state_dict()}
        full = {hf_key(k, "qformer.") for k in QFormer(qformer_config(text=True, instruction=True), 32).state_dict()}
    assert vision == {k for k in hf if k.startswith("vision_model.")}
    assert qf == {k for k in hf if k.startswith("qformer.") and k in load_file(FIX / "model.safetensors")}
    assert full == {k for k in hf if k.startswith("qformer.")}  # + embeddings, text FFN, LM head
    with default_dtype("float32"):
        only_instruction = QFormer(qformer_config(instruction=True), 32).state_dict()
    assert not any(k.startswith("cls.") for k in only_instruction) and "embeddings.word_embeddings.weight" in only_instruction


# ---------------------------------------------------------------------------- vision


@pytest.mark.parametrize("dtype", DTYPES)
def test_vision_matches_hf(hf, inputs, outputs, dtype):
    model = vit(hf, dtype)
    with paddle.no_grad():
        features = model(t(inputs["pixel_values"], dtype))
        close(features, outputs[dtype]["vision_last_hidden_state"], dtype)
        close(model.pool(features), outputs[dtype]["vision_pooled"], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vision_interpolates_positions_like_hf(hf, inputs, outputs, dtype):
    """24 px on a 16 px model: 4x4 -> 6x6 patch positions, bicubic (HF interpolate_pos_encoding)."""
    model = vit(hf, dtype)
    with paddle.no_grad():
        features = model(t(inputs["pixel_values_large"], dtype))
        close(features, outputs[dtype]["vision_large_last_hidden_state"], dtype)
        close(model.pool(features), outputs[dtype]["vision_large_pooled"], dtype)


def test_bicubic_matrix_properties():
    """Rows sum to one; same size is the identity; 16 -> 26 (the paper's 224 -> 364 px) is smooth."""
    assert np.allclose(bicubic_matrix(16, 26).sum(1), 1.0, atol=1e-12)
    assert np.array_equal(bicubic_matrix(5, 5), np.eye(5))
    ramp = bicubic_matrix(16, 26) @ np.arange(16.0)
    assert np.all(np.diff(ramp) > 0)


def test_frozen_vit_stays_in_eval_mode(hf):
    model = vit(hf, "float32")
    model.train()
    assert model.training  # trainable: train() works as usual
    for p in model.parameters():
        p.stop_gradient = True
    model.train()
    assert not model.training and not any(layer.training for layer in model.sublayers())

    class Parent(nn.Layer):  # Paddle's Layer.train() sets sublayer flags without calling train()
        def __init__(self):
            super().__init__()
            self.vision_model = model
            self.head = nn.Dropout(0.1)

    parent = Parent()
    parent.train()
    assert parent.training and parent.head.training and not model.training

def test_frozen_vit_never_recomputes(hf, inputs, monkeypatch):
    import paddle_medvl.models.eva_vit as eva_vit

    calls = count_recompute(monkeypatch, eva_vit)
    model = vit(hf, "float32", recompute=True)
    for p in model.parameters():
        p.stop_gradient = True
    model.train()(t(inputs["pixel_values"], "float32"))
    assert not calls


def count_recompute(monkeypatch, module) -> list[int]:
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    real = module.recompute
    monkeypatch.setattr(module, "recompute", counted)
    return calls


def test_vit_recompute_same_output_and_grads(hf, inputs, monkeypatch):
    import paddle_medvl.models.eva_vit as eva_vit

    calls = count_recompute(monkeypatch, eva_vit)
    grads = []
    for flag in (False, True):
        model = vit(hf, "float64", recompute=flag).train()
        out = model(t(inputs["pixel_values_large"], "float64"))
        (out * out).sum().backward()
        grads.append((out.numpy(), {n: p.grad.numpy() for n, p in model.named_parameters()}))
    assert len(calls) == model.config.num_layers  # once per block, only when asked for
    with paddle.no_grad():
        model(t(inputs["pixel_values"], "float64"))
    model.eval()(t(inputs["pixel_values"], "float64"))
    assert len(calls) == model.config.num_layers  # not without grad, not in eval mode
    (out0, g0), (out1, g1) = grads
    assert np.array_equal(out0, out1) and g0.keys() == g1.keys()
    for name in g0:
        assert np.allclose(g0[name], g1[name], rtol=0, atol=1e-12), name


# ---------------------------------------------------------------------------- Q-Former


@pytest.mark.parametrize("dtype", DTYPES)
def test_qformer_matches_hf(hf, outputs, dtype):
    model = qformer(hf, dtype)
    queries = query_tokens(hf, dtype)
    with paddle.no_grad():
        close(model(queries, t(outputs[dtype]["vision_last_hidden_state"])), outputs[dtype]["qformer_last_hidden_state"], dtype)
        big = t(outputs[dtype]["vision_large_last_hidden_state"])
        close(model(queries, big), outputs[dtype]["qformer_large_last_hidden_state"], dtype)
        # an all-ones image mask changes nothing
        mask = paddle.ones(big.shape[:2], dtype="int64")
        close(model(queries, big, image_mask=mask), outputs[dtype]["qformer_large_last_hidden_state"], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_instruction_matches_hf_instructblip(hf, inputs, outputs, dtype):
    model = qformer(hf, dtype, instruction=True)
    queries, image = query_tokens(hf, dtype), t(outputs[dtype]["vision_last_hidden_state"])
    ids, mask = t(inputs["instruction_ids"]), t(inputs["instruction_mask"])
    with paddle.no_grad():
        out = model(queries, image, instruction_ids=ids, instruction_mask=mask)
        close(out, outputs[dtype]["instruction_query_output"], dtype)
        batch, num_queries, hidden = image.shape[0], queries.shape[1], queries.shape[2]
        assert out.shape == [batch, num_queries, hidden]  # only the queries come back
        plain = model(queries, image).numpy()
        assert np.abs(out.numpy() - plain).max() > 1e-3  # the instruction matters
        # padding is masked: other ids under the padding change nothing
        repadded = np.where(inputs["instruction_mask"] == 1, inputs["instruction_ids"], 7)
        close(model(queries, image, instruction_ids=t(repadded), instruction_mask=mask),
              outputs[dtype]["instruction_query_output"], dtype)
        # no mask = every instruction token is real
        full = model(queries, image[:1], instruction_ids=ids[:1], instruction_mask=None)
        assert np.allclose(full.numpy(), model(queries[:1], image[:1], instruction_ids=ids[:1],
                                               instruction_mask=paddle.ones_like(ids[:1])).numpy(), atol=1e-12)


def test_instruction_needs_the_flag(hf, inputs, outputs):
    model = qformer(hf, "float32")
    with pytest.raises(ValueError, match="instruction"):
        model(query_tokens(hf, "float32"), t(outputs["float32"]["vision_last_hidden_state"]),
              instruction_ids=t(inputs["instruction_ids"]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_text_generation_loss_matches_reference(hf, inputs, outputs, dtype, meta):
    """forward_text + text_loss against LAVIS's BertLMHeadModel semantics built from HF modules.

    Also the loss's gradients reach the queries, the Q-Former layers, the word embeddings (twice:
    input and tied decoder) and the LM head.
    """
    out = outputs[dtype]
    model = qformer(hf, dtype, text=True, label_smoothing=meta["qformer_text"]["label_smoothing_of_text_loss_smooth"])
    queries, image = query_tokens(hf, dtype), t(out["vision_last_hidden_state"])
    ids, mask = t(inputs["qformer_text_ids"]), t(inputs["qformer_text_mask"])
    query_out, logits = model.forward_text(queries, image, ids, mask)
    close(query_out, out["qformer_last_hidden_state"], dtype)  # queries never see the text
    close(logits, out["text_logits"], dtype)
    loss = model.text_loss(logits, ids, mask)
    close(loss, out["text_loss_smooth"], dtype)
    model.config.label_smoothing = 0.0
    close(model.text_loss(logits, ids, mask), out["text_loss"], dtype)
    loss.backward()
    close(queries.grad, out["text_grad.query_tokens"], dtype)
    close(model.embeddings.word_embeddings.weight.grad, out["text_grad.qformer.embeddings.word_embeddings.weight"], dtype)
    close(model.encoder.layer[1].output.dense.weight.grad.T, out["text_grad.qformer.encoder.layer.1.output.dense.weight"], dtype)
    close(model.cls.predictions.transform.dense.weight.grad.T,
          out["text_grad.qformer.cls.predictions.transform.dense.weight"], dtype)
    assert float(paddle.abs(model.encoder.layer[0].crossattention.attention.key.weight.grad).max()) > 0


def test_text_needs_the_flag(hf, inputs, outputs):
    model = qformer(hf, "float32", instruction=True)
    with pytest.raises(ValueError, match="text"):
        model.forward_text(query_tokens(hf, "float32"), t(outputs["float32"]["vision_last_hidden_state"]),
                           t(inputs["qformer_text_ids"]), t(inputs["qformer_text_mask"]))


def test_text_longer_than_positions_is_refused(hf, outputs):
    model = qformer(hf, "float32", text=True)
    ids = paddle.ones([1, model.config.max_position_embeddings + 1], dtype="int64")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.forward_text(query_tokens(hf, "float32"), t(outputs["float32"]["vision_last_hidden_state"][:1]), ids,
                           paddle.ones_like(ids))


def test_qformer_recompute_same_output_and_grads(hf, inputs, outputs, monkeypatch):
    import paddle_medvl.models.qformer as qformer_module

    calls = count_recompute(monkeypatch, qformer_module)
    results = []
    for flag in (False, True):
        model = qformer(hf, "float64", text=True, recompute=flag, dropout=0.0).train()
        queries = query_tokens(hf, "float64")
        q, logits = model.forward_text(queries, t(outputs["float64"]["vision_last_hidden_state"]),
                                       t(inputs["qformer_text_ids"]), t(inputs["qformer_text_mask"]))
        ((q * q).sum() + model.text_loss(logits, t(inputs["qformer_text_ids"]), t(inputs["qformer_text_mask"]))).backward()
        grads = {n: p.grad.numpy() for n, p in model.named_parameters()} | {"query_tokens": queries.grad.numpy()}
        results.append((q.numpy(), logits.numpy(), grads))
    assert len(calls) == model.config.num_layers
    (q0, l0, g0), (q1, l1, g1) = results
    assert np.array_equal(q0, q1) and np.array_equal(l0, l1) and g0.keys() == g1.keys()
    for name in g0:
        assert np.allclose(g0[name], g1[name], rtol=0, atol=1e-12), name


def test_dropout_is_active_only_in_training(hf, outputs):
    model = qformer(hf, "float32", dropout=0.5)
    image = t(outputs["float32"]["vision_last_hidden_state"])
    with paddle.no_grad():
        close(model(query_tokens(hf, "float32"), image), outputs["float32"]["qformer_last_hidden_state"], "float32")
        model.train()
        assert np.abs(model(query_tokens(hf, "float32"), image).numpy() - outputs["float32"]["qformer_last_hidden_state"]).max() > 1e-3


def test_query_tokens_parameter():
    cfg = QFormerConfig(hidden_size=32, num_query_tokens=8)
    with default_dtype("float32"):
        tokens = create_query_tokens(cfg)
    assert tokens.shape == [1, 8, 32] and not tokens.stop_gradient
    holder = nn.Layer()
    holder.query_tokens = tokens
    assert [n for n, _ in holder.named_parameters()] == ["query_tokens"]


# ---------------------------------------------------------------------------- model files


def _code_words(path: Path) -> set[str]:
    """Identifiers, attribute names and non-docstring string constants of a Python file."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.update(re.findall(r"[A-Za-z_]+", node.value))
    return {w.lower() for w in words}


def test_model_files_name_no_device_and_no_fused_attention():
    device_words = {"cuda", "gpu", "npu", "xpu", "mlu", "set_device", "cudaplace", "cpuplace", "customplace", "place"}
    fused = {"scaled_dot_product_attention", "flash_attention", "flash_attn", "fused_multi_head_attention",
             "memory_efficient_attention"}
    for path in sorted((REPO / "paddle_medvl" / "models").glob("*.py")):
        words = _code_words(path)
        assert not words & device_words, f"{path.name} names a device: {sorted(words & device_words)}"
        if path.name in ("eva_vit.py", "qformer.py"):
            assert not words & fused, f"{path.name} uses a fused attention kernel"
