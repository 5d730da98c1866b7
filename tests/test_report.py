"""Paper 002's two-stage recipe end to end on a tiny InstructBLIP-T5 and the synthetic IU X-RAY set:
stage 1 trains LoRA on the ViT's q and v plus its layer norms, stage 2 the Q-Former and LoRA on the
frozen T5; the checkpoints hold only what trained; prediction writes the report JSON, evaluation
scores it (and the synthetic findings); merging the adapters changes no token.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml

from paddle_medvl.config import load_config
from paddle_medvl.models.blip2 import Blip2
from paddle_medvl.models.lora import lora_layers, merge_lora, unmerge_lora
from test_engine import weights
from test_predict_eval import eval_tool, predict_tool

VISION_LORA = {"targets": ["vision_model.encoder.layers.*.self_attn.qkv.q", "vision_model.encoder.layers.*.self_attn.qkv.v"],
               "rank": 4, "alpha": 8.0, "dropout": 0.1}
T5_LORA = {"targets": ["language_model.t5.*Attention.q", "language_model.t5.*Attention.v",
                       "language_model.t5.*.DenseReluDense.wi_0", "language_model.t5.*.DenseReluDense.wo"],
           "rank": 4, "alpha": 8.0, "dropout": 0.1}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    from paddle_medvl.data import demo_tokenizer as tok
    from paddle_medvl.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("report")
    data = make_demo_data(root / "data", seed=3, n_iu=20, image_size=32, tasks=["iu"])
    tokenizers = root / "data" / tok.TOKENIZERS_DIR
    model = {
        "vision": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "mlp_dim": 64},
        "qformer": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "num_query_tokens": 4,
                    "max_position_embeddings": 48, "vocab_size": tok.DEMO_BERT_VOCAB, "text": False, "instruction": True,
                    "tokenizer": str(tokenizers / "bert")},
        "language": {"architecture": "t5", "tokenizer": str(tokenizers / "opt"), "add_bos": False, "eos_text": "",
                     "eos_token": True, "prompt_eos": True,
                     "config": {"vocab_size": tok.DEMO_LLM_VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1,
                                "num_decoder_layers": 1, "num_heads": 4, "relative_attention_num_buckets": 8,
                                "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu", "tie_word_embeddings": False,
                                "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}},
    }
    base = {
        "Global": {"device": "cpu", "seed": 0},
        "Data": {"format": "iu_xray", "root": str(data["iu"]), "val_split": "val", "reports_csv": "indiana_reports.csv",
                 "views": "all", "prompt": "{prior}", "image_size": 32, "num_workers": 0, "max_prompt_len": 40,
                 "max_target_len": 48},
        "Model": model,
        "Decode": {"num_beams": 2, "max_new_tokens": 12, "min_new_tokens": 1},
        "Eval": {"batch_size": 8, "meteor": False, "postprocess": False},
        "Train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "log_steps": 1, "eval_steps": -1,
                  "save_steps": 0, "keep_last": 1},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    paddle.seed(0)
    Blip2(load_config(root / "base.yaml").Model).save_pretrained(root / "instructblip")  # "the released model"
    stage1 = {"_base_": "base.yaml", "Model": {"pretrained": str(root / "instructblip"), "lora": [VISION_LORA]},
              "Train": {"output_dir": str(root / "s1"), "lr": 1e-3,
                        "trainable": [r"vision_model\..*\.lora_[AB]$", r"vision_model\..*layer_norm", r"vision_model\.post_layernorm\."],
                        "param_groups": [{"patterns": [r".*\.lora_[AB]$"], "lr": 5e-3}]}}
    stage2 = {"_base_": "base.yaml", "Model": {"pretrained": str(root / "s1" / "final"), "lora": [VISION_LORA, T5_LORA]},
              "Train": {"output_dir": str(root / "s2"),
                        "trainable": ["query_tokens", r"qformer\.", r"language_projection\.", r"language_model\..*\.lora_[AB]$"]}}
    for name, tree in (("stage1", stage1), ("stage2", stage2)):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(tree))
    from test_engine import train_in_process

    summaries = [train_in_process(root / f"{name}.yaml") for name in ("stage1", "stage2")]
    return root, summaries


def test_stage1_trains_the_visual_adapters_and_norms_only(stages):
    root, _ = stages
    saved = weights(root / "s1" / "final")
    assert saved and all(".lora_" in k or "layer_norm" in k or "post_layernorm" in k for k in saved), sorted(saved)
    assert {k for k in saved if ".lora_" in k} == {f"vision_model.encoder.layers.{n}.self_attn.qkv.lora_{f}"
                                                   for n in range(2) for f in "AB"}
    assert np.abs(saved["vision_model.encoder.layers.0.self_attn.qkv.lora_B"]).max() > 0  # it trained (B starts at 0)
    config = load_config(root / "s1" / "final" / "config.yaml").Model
    assert config.pretrained == str((root / "instructblip").resolve()) and len(config.lora) == 1


def test_stage2_adds_fresh_llm_adapters_and_keeps_stage1s(stages):
    root, _ = stages
    stage1, stage2 = weights(root / "s1" / "final"), weights(root / "s2" / "final")
    assert not any(k.startswith("vision_model.") for k in stage2)  # frozen in stage 2: named by the base
    llm = {k for k in stage2 if k.startswith("language_model.")}
    assert llm and all(".lora_" in k for k in llm)
    assert "language_model.t5.encoder.block.0.layer.1.DenseReluDense.wo.lora_B" in llm
    assert any(k.startswith("qformer.") for k in stage2)
    model = Blip2.from_pretrained(root / "s2" / "final")  # the chain: released <- stage 1 <- stage 2
    np.testing.assert_array_equal(model.vision_model.encoder.layers[0].self_attn.qkv.lora_B.numpy(),
                                  stage1["vision_model.encoder.layers.0.self_attn.qkv.lora_B"])
    assert len(lora_layers(model)) == 2 + 6 + 4  # ViT qkv x 2; q, v of encoder self, decoder self, cross; wi_0, wo of 2 FFNs
    assert np.abs(stage2["language_model.t5.encoder.block.0.layer.0.SelfAttention.q.lora_B"]).max() > 0


def test_reloading_a_checkpoint_over_its_bases_keeps_their_adapters(stages):
    """What resuming stage 2 does: the model is built from its bases (stage 1's visual adapters), then the
    checkpoint's own tensors load over them (``only_own``). The visual adapters, not in that folder, stay."""
    root, _ = stages
    model = Blip2.from_pretrained(root / "s2" / "final")
    before = {n: p.numpy().copy() for n, p in model.named_parameters() if ".lora_" in n}
    model.load_weights(root / "s2" / "final", only_own=True)
    after = {n: p.numpy() for n, p in model.named_parameters() if ".lora_" in n}
    assert np.abs(before["vision_model.encoder.layers.0.self_attn.qkv.lora_B"]).max() > 0
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_adapter_dropout_follows_train_and_eval(stages):
    root, _ = stages
    model = Blip2.from_pretrained(root / "s2" / "final")
    layer = lora_layers(model)["language_model.t5.encoder.block.0.layer.0.SelfAttention.q"]
    model.train()
    assert layer.adapter_training and not model.language_model.training  # the frozen LLM stays in eval
    model.eval()
    assert not layer.adapter_training


def test_predict_eval_and_merged_adapters_give_the_same_reports(stages, tmp_path, capsys):
    root, _ = stages
    checkpoint = root / "s2" / "final"
    out = tmp_path / "reports.json"
    assert predict_tool.main(["--checkpoint", str(checkpoint), "--split", "test", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 4 and all(set(r) >= {"id", "report"} for r in rows)  # 20 studies: 7:1:2
    assert eval_tool.main(["-c", str(root / "stage2.yaml"), "--predictions", str(out), "--split", "test", "--findings"]) == 0
    printed = capsys.readouterr().out
    assert "ROUGE-L" in printed and "effusion" in printed
    metrics = json.loads(out.with_name("reports.metrics.json").read_text())
    assert set(metrics["findings"]) >= {"cardiomegaly", "nodule", "effusion", "pneumothorax", "atelectasis"}



def test_merged_adapters_give_the_same_tokens(stages):
    """Merging (for export) folds every adapter into its base weight: the same tokens, and unmerging
    restores the weights."""
    from paddle_medvl.config import DecodeConfig

    root, _ = stages
    model = Blip2.from_pretrained(root / "s2" / "final")
    model.eval()
    rng = np.random.default_rng(0)
    pixels = paddle.to_tensor(rng.standard_normal((2, 2, 3, 32, 32)).astype("float32"))
    prompt = paddle.to_tensor(rng.integers(3, 500, (2, 6)))
    instruction = paddle.to_tensor(rng.integers(5, 500, (2, 6)))
    ones = paddle.ones([2, 6], dtype="int64")
    decode = DecodeConfig(num_beams=2, max_new_tokens=8, min_new_tokens=8)  # no early EOS: 8 tokens to compare
    before = model.generate(pixels, prompt, ones, decode, 1, 0, instruction, ones).numpy()
    weight = model.language_model.t5.encoder.block[0].layer[0].SelfAttention.q.weight.numpy().copy()
    assert merge_lora(model) == len(lora_layers(model))
    merged = model.generate(pixels, prompt, ones, decode, 1, 0, instruction, ones).numpy()
    np.testing.assert_array_equal(merged, before)
    assert np.abs(model.language_model.t5.encoder.block[0].layer[0].SelfAttention.q.weight.numpy() - weight).max() > 0
    unmerge_lora(model)
    np.testing.assert_allclose(model.language_model.t5.encoder.block[0].layer[0].SelfAttention.q.weight.numpy(),
                               weight, rtol=0, atol=1e-6)


def test_report_recipes_hold_the_papers_values_and_need_the_checkpoint(tmp_path):
    """configs/report: paper 002's values; without the converted InstructBLIP they say how to make it."""
    from paddle_medvl.engine import train as run_training

    repo = Path(__file__).resolve().parents[1]
    recipes = {p.stem: load_config(p) for p in sorted((repo / "configs" / "report").glob("*.yaml"))}
    for name in ("iu_xray", "mimic_cxr"):
        s1, s2 = recipes[f"{name}_stage1"], recipes[f"{name}_stage2"]
        for s in (s1, s2):
            assert (s.Train.batch_size, s.Train.grad_accum, s.Train.lr, s.Train.schedule, s.Data.image_size) == (3, 4, 1e-4, "cosine", 224)
            assert [g.lr for g in s.Train.param_groups] == [5e-4] and s.Train.param_groups[0].patterns == [r".*\.lora_[AB]$"]
        assert s1.Model.lora[0].targets == ["vision_model.encoder.layers.*.self_attn.qkv.q", "vision_model.encoder.layers.*.self_attn.qkv.v"]
        assert not any("qformer" in p or "language_model" in p for p in s1.Train.trainable)  # stage 1: the ViT's LoRA + norms
        assert s2.Model.pretrained == s1.Train.output_dir + "/final" and s2.Data.prompt == "{prior}"
        assert [g.targets for g in s2.Model.lora[:1]] == [s1.Model.lora[0].targets] and len(s2.Model.lora) == 2
    assert recipes["iu_xray_stage1"].Data.views == "all" and recipes["mimic_cxr_stage1"].Data.views == "first"
    assert recipes["iu_xray_zeroshot"].Model.pretrained == "checkpoints/instructblip_flan_t5_xl"
    assert recipes["ablation_no_prior"].Data.prompt != "{prior}"
    assert len(recipes["ablation_no_llm_tuning"].Model.lora) == 1
    assert recipes["ablation_no_visual_tuning"].Model.pretrained == "checkpoints/instructblip_flan_t5_xl"
    s1 = recipes["iu_xray_stage1"]
    s1.Train.output_dir, s1.Global.device = str(tmp_path), "cpu"
    with pytest.raises(FileNotFoundError, match="convert_hf.py"):
        run_training(s1)
