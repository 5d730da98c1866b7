"""LAVIS .pth checkpoints -> paddle_medvl, against the Hugging Face conversion of the same weights.

tests/fixtures/lavis_tiny/blip2_opt_tiny_lavis.pth (torch.save'd by tests/parity/make_lavis_fixture.py)
holds the weights of tests/fixtures/blip2_opt_tiny in LAVIS's names and layout, as LAVIS saves a
BLIP-2 OPT run that kept the Q-Former text parts: so its conversion must give exactly the HF
conversion plus qformer_text.safetensors, and the same Q-Former text logits (the concept loss).
The parts LAVIS's runner does not save (a frozen ViT, the OPT) are tested through a checkpoint
assembled here without torch (test_safe_pickle's helpers).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

from paddle_medvl.config import load_config
from paddle_medvl.convert.hf import ConversionError, convert
from paddle_medvl.convert.lavis import (
    RULES,
    convert_over_base,
    extract_qformer_text,
    float32_to_bfloat16_bits,
)
from paddle_medvl.convert.safe_pickle import UnsafePickleError, load_torch_zip
from paddle_medvl.models.blip2 import Blip2
from test_blip2_parity import load as parity_load
from test_safe_pickle import op_dict, payload, pickled, save_state_dict, write_torch_zip

REPO = Path(__file__).resolve().parents[1]
HF = REPO / "tests" / "fixtures" / "blip2_opt_tiny"
LAVIS = REPO / "tests" / "fixtures" / "lavis_tiny" / "blip2_opt_tiny_lavis.pth"
TOOL = REPO / "tools" / "convert_lavis.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("medvl_tool_convert_lavis", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_lavis_tool = load_tool()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The HF fixture converted without text parts (what a user has from tools/convert_hf.py)."""
    return convert(HF, tmp_path_factory.mktemp("base"), progress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The HF fixture converted with its qformer_text.safetensors: what the LAVIS file must give."""
    return convert(HF, tmp_path_factory.mktemp("ref"), qformer_text=HF / "qformer_text.safetensors", progress=False)


def load(folder: Path, dtype: str = "float64") -> Blip2:
    return parity_load(folder, dtype)


def state(model: Blip2) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def text_logits(model: Blip2) -> tuple[np.ndarray, float]:
    """The concept-loss path: queries over the image, then the Q-Former's LM head on the concept sentence."""
    inputs = np.load(HF / "inputs.npz")
    with paddle.no_grad():
        image = model.vision_model(paddle.to_tensor(inputs["pixel_values"].astype("float64")))
        ids, mask = paddle.to_tensor(inputs["qformer_text_ids"]), paddle.to_tensor(inputs["qformer_text_mask"])
        _, logits = model.qformer.forward_text(model.query_tokens, image, ids, mask)
        loss = model.qformer.text_loss(logits, ids, mask)
    return logits.numpy(), float(loss)


# ---------------------------------------------------------------------------- the fixture converts exactly


def test_qformer_text_file_equals_the_hf_fixture(tmp_path):
    """--qformer-text writes what tools/convert_hf.py takes: the same 19 tensors, names, dtypes, values."""
    out = tmp_path / "qformer_text.safetensors"
    assert convert_lavis_tool.main(["--lavis", str(LAVIS), "--qformer-text", str(out), "--quiet"]) == 0
    ours, theirs = load_file(out), load_file(HF / "qformer_text.safetensors")
    assert sorted(ours) == sorted(theirs) and len(ours) == 19
    for name, value in theirs.items():
        assert ours[name].dtype == value.dtype, name
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


def test_over_base_gives_the_hf_weights_and_text_logits(base, reference, tmp_path, capsys):
    out = tmp_path / "over"
    assert convert_lavis_tool.main(["--lavis", str(LAVIS), "--base", str(base), "--out", str(out), "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors"]
    written = load_file(out / "model.safetensors")
    assert len(written) == 68  # 71 LAVIS tensors - 2 tied decoder copies - the position_ids buffer
    config = load_config(out / "config.yaml").Model
    assert config.pretrained == str(base.resolve()) and config.qformer.text and config.qformer.dec_token_id == 39
    ours, ref = load(out), load(reference)
    ours_state, ref_state = state(ours), state(ref)
    assert sorted(ours_state) == sorted(ref_state)
    for name, value in ref_state.items():
        np.testing.assert_array_equal(ours_state[name], value, err_msg=name)
    ref_base = load_file(reference / "model.safetensors")  # every tensor of the file itself, layout included
    for name, value in written.items():
        np.testing.assert_array_equal(value, ref_base[name], err_msg=name)
    logits, loss = text_logits(ours)
    want_logits, want_loss = text_logits(ref)
    np.testing.assert_array_equal(logits, want_logits)
    assert loss == want_loss
    hf = np.load(HF / "outputs_float64.npz")  # and both are transformers' numbers
    np.testing.assert_allclose(logits, hf["text_logits"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(loss, float(hf["text_loss_smooth"]), rtol=0, atol=1e-9)


def test_with_hf_is_a_self_contained_folder(reference, tmp_path):
    out = tmp_path / "withhf"
    assert convert_lavis_tool.main(["--lavis", str(LAVIS), "--hf", str(HF), "--out", str(out), "--quiet"]) == 0
    assert load_config(out / "config.yaml").Model.pretrained == ""
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".withhf")]  # the temporary text file is gone
    ours, theirs = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


# ---------------------------------------------------------------------------- parts LAVIS's runner leaves out


def vision_and_llm_as_lavis() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The HF fixture's ViT and OPT in LAVIS's names (eva_vit.py: blocks.N.attn.{qkv,q_bias,v_bias,proj},
    norm1/norm2, cls_token, pos_embed; the OPT as ``opt_model.*`` with its tied ``lm_head``)."""
    hf = load_file(HF / "model.safetensors")
    out: dict[str, np.ndarray] = {}
    embeddings = {"class_embedding": "cls_token", "position_embedding": "pos_embed",
                  "patch_embedding.weight": "patch_embed.proj.weight", "patch_embedding.bias": "patch_embed.proj.bias"}
    block = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.projection": "attn.proj",
             "self_attn.qkv.weight": "attn.qkv.weight", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for name, value in hf.items():
        if name.startswith("vision_model.embeddings."):
            out["visual_encoder." + embeddings[name.removeprefix("vision_model.embeddings.")]] = value
        elif name.startswith("vision_model.encoder.layers."):
            n, rest = name.removeprefix("vision_model.encoder.layers.").split(".", 1)
            if rest == "self_attn.qkv.bias":  # [q_bias, 0, v_bias]
                width = value.shape[0] // 3
                out[f"visual_encoder.blocks.{n}.attn.q_bias"] = value[:width]
                out[f"visual_encoder.blocks.{n}.attn.v_bias"] = value[2 * width:]
                continue
            part = next(p for p in block if rest.startswith(p))
            out[f"visual_encoder.blocks.{n}.{block[part]}{rest[len(part):]}"] = value
        elif name.startswith("language_model."):
            out["opt_model." + name.removeprefix("language_model.")] = value
    out["opt_model.lm_head.weight"] = hf["language_model.model.decoder.embed_tokens.weight"]
    return out, {"opt_model.lm_head.weight": "opt_model.model.decoder.embed_tokens.weight"}


def test_vision_encoder_and_llm_names_and_transposes(base, tmp_path):
    tensors, tied = vision_and_llm_as_lavis()
    path = save_state_dict(tmp_path / "vit_opt.pth", tensors, tied=tied)
    report = convert_over_base(path, base, tmp_path / "out", progress=False)
    written = load_file(tmp_path / "out" / "model.safetensors")
    converted = load_file(base / "model.safetensors")
    vision = [k for k in converted if k.startswith("vision_model.") and "post_layernorm" not in k]
    llm = [k for k in converted if k.startswith("language_model.")]
    assert sorted(written) == sorted(vision + llm)
    assert report.tensors - len(llm) == len(vision) == 4 + 2 * 13  # embeddings, then 13 tensors per block
    assert len(llm) == 36 and not report.ignored
    for name, value in written.items():
        np.testing.assert_array_equal(value, converted[name], err_msg=name)
    assert not load_config(tmp_path / "out" / "config.yaml").Model.qformer.text  # no text parts in this file


def test_every_rule_is_exercised():
    """Each LAVIS name rule maps some tensor of the two checkpoints above (none is dead or untested)."""
    import re

    names = list(load_torch_zip(LAVIS, "model")) + list(vision_and_llm_as_lavis()[0])
    unused = [pattern for pattern, _ in RULES if not any(re.fullmatch(pattern, n) for n in names)]
    assert unused == []


# ---------------------------------------------------------------------------- dtypes, shards


def test_dtypes_and_shards(base, reference, tmp_path):
    bf16 = tmp_path / "bf16.safetensors"
    extract_qformer_text(LAVIS, bf16, "bfloat16", progress=False)
    from safetensors import safe_open

    theirs = load_file(HF / "qformer_text.safetensors")
    with safe_open(str(bf16), framework="paddle") as f:
        for name in f.keys():
            ours = f.get_tensor(name)
            assert ours.dtype == paddle.bfloat16
            paddle_cast = paddle.to_tensor(theirs[name]).astype("bfloat16")  # Paddle's own rounding
            np.testing.assert_array_equal(ours.astype("float32").numpy(), paddle_cast.astype("float32").numpy())
    ties = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), np.inf, np.nan], np.float32)  # halfway cases, specials
    bits = float32_to_bfloat16_bits(ties)
    assert bits[:4].tolist() == [0x3F80, 0x3F82, 0xBF80, 0x7F80] and bits[4] == 0x7FC0

    half = tmp_path / "half"
    convert_over_base(LAVIS, base, half, dtype="float16", shard_bytes=40_000, progress=False)
    index = json.loads((half / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and len(index["weight_map"]) == 68
    ours, ref = state(load(half, "float32")), state(load(reference, "float32"))
    for name, value in ref.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-3, atol=1e-3, err_msg=name)
    assert not np.array_equal(ours["query_tokens"], ref["query_tokens"])  # really float16 on the way


# ---------------------------------------------------------------------------- refusals


def test_malicious_pth_is_refused_by_the_cli_and_nothing_runs(base, tmp_path, cpu_env):
    """The script as a user runs it: exit code 1, the refused class named, no marker, no output file."""
    marker = tmp_path / "pwned"
    body = op_dict({"model": op_dict({}, ordered=True), "config": payload("os", "system", marker)})
    evil = write_torch_zip(tmp_path / "blip2_pretrained.pth", pickled(body), {})
    out = tmp_path / "qformer_text.safetensors"
    result = subprocess.run([sys.executable, str(TOOL), "--lavis", str(evil), "--qformer-text", str(out)],
                            capture_output=True, text=True, env=cpu_env, cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "error:" in result.stderr and "refused os.system" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists() and not out.exists()
    with pytest.raises(UnsafePickleError, match="refused os.system"):
        convert_over_base(evil, base, tmp_path / "o", progress=False)
    assert not marker.exists()


def test_missing_file_says_where_lavis_checkpoints_come_from(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth: not found\. LAVIS checkpoints .*blip2_pretrained\.pth"):
        extract_qformer_text(tmp_path / "nowhere.pth", tmp_path / "out.safetensors", progress=False)
    assert convert_lavis_tool.main(["--lavis", str(tmp_path / "nowhere.pth"), "--qformer-text", "x.st"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "sfr-vision-language-research/LAVIS/models/BLIP2/blip2_pretrained.pth" in err


def lavis_model() -> dict[str, np.ndarray]:
    return load_torch_zip(LAVIS, "model")


def test_stage2_checkpoint_without_text_parts(tmp_path):
    """LAVIS's Blip2OPT deletes the text parts: the message lists them and says which file has them."""
    tensors = {k: v for k, v in lavis_model().items() if not (
        k.startswith("Qformer.cls.") or "word_embeddings" in k or "position_embeddings" in k
        or any(f".{n}.intermediate." in k or f".{n}.output." in k for n in range(2)))}
    path = save_state_dict(tmp_path / "blip2_pretrained_opt2.7b.pth", tensors)
    with pytest.raises(ConversionError, match=r"(?s)missing \(19\): qformer\.cls\.predictions\.bias.*"
                                              r"the stage-1 checkpoint blip2_pretrained\.pth has them"):
        extract_qformer_text(path, tmp_path / "out.safetensors", progress=False)
    assert not (tmp_path / "out.safetensors").exists()


def test_unexpected_mis_shaped_untied_and_ignored(base, tmp_path, capsys):
    model = lavis_model()
    tied = {"Qformer.cls.predictions.decoder.weight": "Qformer.bert.embeddings.word_embeddings.weight",
            "Qformer.cls.predictions.decoder.bias": "Qformer.cls.predictions.bias"}

    def variant(name: str, edit) -> Path:
        tensors = dict(model)
        edit(tensors)
        return save_state_dict(tmp_path / f"{name}.pth", tensors, tied={k: v for k, v in tied.items() if k in tensors})

    gamma = variant("gamma", lambda t: t.update({"visual_encoder.blocks.0.gamma_1": np.ones(32, np.float32)}))
    with pytest.raises(ConversionError, match=r"not LAVIS BLIP-2's .*\(1\): visual_encoder\.blocks\.0\.gamma_1"):
        extract_qformer_text(gamma, tmp_path / "o.st", progress=False)
    wide = variant("wide", lambda t: t.update({"opt_proj.weight": np.zeros((48, 32), np.float32)}))
    with pytest.raises(ConversionError, match=r"mis-shaped \(1\): language_projection\.weight: \[32, 48\], expected \[32, 32\]"):
        convert_over_base(wide, base, tmp_path / "o", progress=False)
    narrow = variant("narrow", lambda t: t.update({
        "Qformer.bert.encoder.layer.1.output.dense.weight": np.zeros((32, 48), np.float32)}))
    with pytest.raises(ConversionError, match=r"layer\.1\.output\.dense\.weight: \[32, 48\], expected \[32, 64\]"):
        extract_qformer_text(narrow, tmp_path / "o.st", progress=False)
    untied = tmp_path / "untied.pth"
    save_state_dict(untied, {**model, "Qformer.cls.predictions.decoder.weight": model["Qformer.cls.predictions.decoder.weight"] + 1})
    with pytest.raises(ConversionError, match=r"ties these.*decoder\.weight differs from .*word_embeddings\.weight"):
        extract_qformer_text(untied, tmp_path / "o.st", progress=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.st").exists()  # nothing half-written

    stage1 = variant("stage1", lambda t: t.update({"vision_proj.weight": np.ones((4, 32), np.float32),
                                                    "vision_proj.bias": np.ones(4, np.float32),
                                                    "temp": np.array(0.07, np.float32)}))
    out = tmp_path / "text.st"
    assert convert_lavis_tool.main(["--lavis", str(stage1), "--qformer-text", str(out), "--quiet"]) == 0
    assert "left out (no place in this model): temp, vision_proj.bias, vision_proj.weight" in capsys.readouterr().out
    assert len(load_file(out)) == 19


def test_cli_usage_errors(capsys):
    for argv, message in ((["--lavis", "x.pth"], "nothing to write"), (["--lavis", "x.pth", "--out", "o"], "--out needs"),
                          (["--lavis", "x.pth", "--hf", "h", "--qformer-text", "t"], "--hf / --base need --out"),
                          (["--lavis", "x.pth", "--hf", "h", "--base", "b", "--out", "o"], "not allowed with")):
        with pytest.raises(SystemExit) as exit_info:
            convert_lavis_tool.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
