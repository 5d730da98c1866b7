"""The composed BLIP-2 + OPT, converted from a Hugging Face checkpoint, against transformers' numbers.

The fixtures (tests/fixtures/blip2_opt_tiny, made by tests/parity/make_fixtures.py with
transformers 5.23) hold a tiny random HF checkpoint, its inputs and HF's outputs; no torch here.
HF v5 scatters the query outputs over 8 leading image tokens; BLIP-2 prepends them. Both are the
same model: we feed ``input_ids[:, 8:]`` and prepend.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_medvl.config import DecodeConfig, load_config
from paddle_medvl.convert.hf import ConversionError, convert, key_map
from paddle_medvl.models.blip2 import Blip2
from paddle_medvl.models.language import default_dtype

FIX = Path(__file__).resolve().parent / "fixtures" / "blip2_opt_tiny"
Q = 8  # query tokens = leading image tokens in the HF inputs
PROMPT = 12  # gen_input_ids: 8 image tokens + bos + 3 prompt tokens


@pytest.fixture(scope="module")
def inputs():
    return dict(np.load(FIX / "inputs.npz"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert(FIX, tmp_path_factory.mktemp("conv"), progress=False)


@pytest.fixture(scope="module")
def converted_text(tmp_path_factory) -> Path:
    return convert(FIX, tmp_path_factory.mktemp("conv_text"), qformer_text=FIX / "qformer_text.safetensors", progress=False)


def load(folder: Path, dtype: str, lora: list | None = None) -> Blip2:
    """A converted checkpoint in eval mode, the whole model (LLM included) in ``dtype``; ``lora``: adapter
    groups to put on it (its config's by default: none for a conversion)."""
    config = load_config(folder / "config.yaml").Model
    config.language.dtype = dtype  # the whole model, LLM included, in the compared precision
    if lora is not None:
        config.lora = lora
    with default_dtype(dtype):
        model = Blip2.from_pretrained(folder, config)
    model.eval()
    return model


def tensor(array: np.ndarray, dtype: str | None = None) -> paddle.Tensor:
    return paddle.to_tensor(array if dtype is None else array.astype(dtype))


def forward(model: Blip2, inputs: dict, dtype: str, **kw):
    return model(
        tensor(inputs["pixel_values"], dtype),
        tensor(inputs["input_ids"][:, Q:]),
        tensor(inputs["attention_mask"][:, Q:]),
        tensor(inputs["labels"][:, Q:]),
        return_logits=True,
        **kw,
    )


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-9), ("float32", 1e-5)])
def test_forward_parity(converted, inputs, dtype, tol):
    want = np.load(FIX / f"outputs_{dtype}.npz")
    model = load(converted, dtype)
    with paddle.no_grad():
        image, _ = model._image_features(tensor(inputs["pixel_values"], dtype))
        queries = model.qformer(model.query_tokens, image)
        prefix = model._soft_prompt(queries, 1)
        out = forward(model, inputs, dtype)
        large = model.vision_model(tensor(inputs["pixel_values_large"], dtype))
    np.testing.assert_allclose(image.numpy(), want["vision_last_hidden_state"], rtol=0, atol=tol)
    np.testing.assert_allclose(queries.numpy(), want["qformer_last_hidden_state"], rtol=0, atol=tol)
    np.testing.assert_allclose(prefix.numpy(), want["language_projection"], rtol=0, atol=tol)
    attended = inputs["attention_mask"].astype(bool)  # logits at padding positions mean nothing
    np.testing.assert_allclose(out.logits.numpy()[attended], want["logits"][attended], rtol=0, atol=tol * 2)
    np.testing.assert_allclose(float(out.caption_loss), float(want["loss"]), rtol=0, atol=tol)
    np.testing.assert_allclose(large.numpy(), want["vision_large_last_hidden_state"], rtol=0, atol=tol)
    assert out.concept_loss is None and float(out.loss) == float(out.caption_loss)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("beams, key", [(1, "greedy_ids"), (3, "beam_ids")])
def test_generation_parity(converted, inputs, dtype, beams, key):
    want = np.load(FIX / f"outputs_{dtype}.npz")[key][:, PROMPT:]
    model = load(converted, dtype)
    decode = DecodeConfig(num_beams=beams, max_new_tokens=8, min_new_tokens=0)
    ids = model.generate(
        tensor(inputs["pixel_values"], dtype), tensor(inputs["gen_input_ids"][:, Q:]),
        tensor(inputs["gen_attention_mask"][:, Q:]), decode, eos_token_id=2, pad_token_id=1,
    )
    np.testing.assert_array_equal(ids.numpy(), want)


def test_gradients_with_frozen_llm_match_hf(converted, inputs):
    """The caption loss's gradients into the Q-Former, the queries and the projection (OPT and ViT frozen).

    This is where Paddle 3.3.1's frozen-layer_norm backward defect would show (workarounds.py).
    """
    want = np.load(FIX / "outputs_float64.npz")
    model = load(converted, "float64")
    for p in model.vision_model.parameters():
        p.stop_gradient = True
    out = forward(model, inputs, "float64")
    out.loss.backward()
    params = dict(model.named_parameters())
    ours = {hf: (name, transpose) for name, (hf, transpose) in key_map(model).items()}
    checked = 0
    for key in (k for k in want.files if k.startswith("grad.")):
        name, transpose = ours[key[len("grad."):]]
        expected = want[key].T if transpose else want[key]
        np.testing.assert_allclose(params[name].grad.numpy(), expected, rtol=0, atol=1e-9, err_msg=name)
        checked += 1
    assert checked == 47
    assert all(p.grad is None for p in model.language_model.parameters())  # the frozen LLM gets none
    assert all(p.grad is None for p in model.vision_model.parameters())


def test_concept_loss_parity_and_weighting(converted_text, inputs):
    want = np.load(FIX / "outputs_float64.npz")
    model = load(converted_text, "float64")
    model.config = replace(model.config, concept_loss_weight=0.5, caption_loss_weight=2.0)
    out = forward(model, inputs, "float64", qformer_ids=tensor(inputs["qformer_text_ids"]),
                  qformer_mask=tensor(inputs["qformer_text_mask"]))
    np.testing.assert_allclose(float(out.concept_loss), float(want["text_loss_smooth"]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(float(out.caption_loss), float(want["loss"]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(float(out.loss), 2.0 * float(want["loss"]) + 0.5 * float(want["text_loss_smooth"]), atol=1e-9)
    out.loss.backward()  # both losses reach the Q-Former and the queries
    assert model.query_tokens.grad is not None and model.qformer.cls.predictions.transform.dense.weight.grad is not None


def test_converted_model_round_trips_and_fp16_shards(converted, tmp_path, inputs):
    model = load(converted, "float32")
    model.save_pretrained(tmp_path / "saved")
    again = load(tmp_path / "saved", "float32")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    half = convert(FIX / "sharded_fp16", tmp_path / "half", progress=False)
    fp16 = load(half, "float32")
    for (name, a), (_, b) in zip(model.state_dict().items(), fp16.state_dict().items()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-3, err_msg=name)
    sharded = convert(FIX, tmp_path / "sharded", shard_bytes=50_000, progress=False)
    assert (sharded / "model.safetensors.index.json").is_file()
    np.testing.assert_array_equal(load(sharded, "float32").query_tokens.numpy(), model.query_tokens.numpy())


def broken_copy(tmp_path: Path, edit) -> Path:
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "broken"
    folder.mkdir(parents=True)
    shutil.copy(FIX / "config.json", folder)
    tensors = load_file(FIX / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")
    return folder


def test_converter_errors(tmp_path):
    with pytest.raises(ConversionError, match=r"missing \(1\): vision_model\.encoder\.layers\.0\.mlp\.fc1\.weight"):
        convert(broken_copy(tmp_path / "a", lambda t: t.pop("vision_model.encoder.layers.0.mlp.fc1.weight")), tmp_path / "o1", progress=False)
    with pytest.raises(ConversionError, match=r"unexpected \(1\): extra\.weight"):
        convert(broken_copy(tmp_path / "b", lambda t: t.update({"extra.weight": np.zeros(2, "float32")})), tmp_path / "o2", progress=False)

    def reshape(t):
        t["language_projection.weight"] = np.zeros((32, 30), "float32")

    with pytest.raises(ConversionError, match=r"(?s)mis-shaped .*language_projection\.weight -> language_projection\.weight: \[30, 32\], expected \[32, 32\]"):
        convert(broken_copy(tmp_path / "c", reshape), tmp_path / "o3", progress=False)
    with pytest.raises(ConversionError, match="config.json: not found"):
        convert(tmp_path, tmp_path / "o4", progress=False)
    (tmp_path / "d").mkdir()
    shutil.copy(FIX / "config.json", tmp_path / "d")
    with pytest.raises(ConversionError, match=r"Pickled checkpoints \(pytorch_model\.bin\) are not read"):
        convert(tmp_path / "d", tmp_path / "o5", progress=False)


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such checkpoint folder.*Salesforce/blip2-opt-2\.7b.*tools/convert_hf\.py"):
        Blip2.from_pretrained(tmp_path / "nowhere")


def test_checkpoint_that_does_not_fit_its_config(converted, tmp_path):
    shutil.copytree(converted, tmp_path / "c")
    text = (tmp_path / "c" / "config.yaml").read_text().replace("num_query_tokens: 8", "num_query_tokens: 4")
    (tmp_path / "c" / "config.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"mis-shaped \(1\): query_tokens: checkpoint \[1, 8, 32\] vs model \[1, 4, 32\]"):
        Blip2.from_pretrained(tmp_path / "c")


def test_optimizer_holds_state_for_trainable_parameters_only(converted, inputs):
    """AdamW over the trainable parameters: 2 moments each, nothing for the frozen LLM."""
    model = load(converted, "float32")
    model.train()
    assert not model.language_model.training  # the frozen LLM stays in eval mode
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    frozen_llm = {id(p) for p in model.language_model.parameters()}
    assert trainable and not frozen_llm & {id(p) for p in trainable}
    opt = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=trainable)
    out = forward(model, inputs, "float32")
    out.loss.backward()
    opt.step()
    moments = [v for k, v in opt.state_dict().items() if "moment" in k]
    assert len(moments) == 2 * len(trainable)
    assert sum(int(np.prod(m.shape)) for m in moments) == 2 * sum(int(np.prod(p.shape)) for p in trainable)


def test_bfloat16_checkpoint_converts(converted, tmp_path):
    """bf16 has no numpy dtype: the converter reads it through safetensors' paddle frontend."""
    from safetensors import safe_open
    from safetensors.paddle import save_file

    folder = tmp_path / "bf16"
    folder.mkdir()
    shutil.copy(FIX / "config.json", folder)
    with safe_open(str(FIX / "model.safetensors"), framework="paddle") as f:
        save_file({k: f.get_tensor(k).astype("bfloat16") for k in f.keys()}, str(folder / "model.safetensors"))
    out = convert(folder, tmp_path / "out", progress=False)
    reference, bf16 = load(converted, "float32"), load(out, "float32")
    for (name, a), (_, b) in zip(reference.state_dict().items(), bf16.state_dict().items()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-2, atol=1e-2, err_msg=name)


def test_loading_works_without_stride_kernels(converted):
    """The device presets turn stride kernels off (NPU plugins need it; faster on CPU)."""
    paddle.set_flags({"FLAGS_use_stride_kernel": False})
    try:
        model = load(converted, "float32")
        assert model.query_tokens.shape == [1, 8, 32]
    finally:
        paddle.set_flags({"FLAGS_use_stride_kernel": True})
