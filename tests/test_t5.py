"""The T5 family (models/language/t5.py) on a tiny random Flan-T5-style model.

Hugging Face parity lives in test_instructblip_parity.py (fixtures made with transformers 5.23);
here: the names, the loss, the head variants, half precision, and decoding against a reference
written from the documented semantics with full passes and no cache (so the decoder cache, the
batching, the beam bookkeeping and the decoder start token the processors see are checked).
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddle_medvl.config import LanguageConfig
from paddle_medvl.models.language import LanguageConfigError, build_language_model, t5_config
from test_language import log_softmax, reference_beam, reference_greedy

TINY = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
            dense_act_fn="gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
EOS, PAD = 1, 0


def redraw(lm, seed: int, std: float = 0.3) -> None:
    """Weights at std 0.3 in their own dtype (norm weights 1 + N(0, 0.3)): peaked, varied outputs."""
    rng = np.random.default_rng(seed)
    for name, p in lm.named_parameters():
        value = rng.standard_normal(p.shape) * std + (1.0 if "norm" in name else 0.0)
        p.set_value(paddle.to_tensor(value, dtype=p.dtype))


def t5(dtype: str = "float64", **over):
    model = build_language_model(LanguageConfig(architecture="t5", config={**TINY, **over}, dtype=dtype))
    return model


@pytest.fixture(scope="module")
def lm():
    model = t5()
    redraw(model, 0)
    return model


@pytest.fixture(scope="module")
def batch(lm):
    """Three encoder inputs: full, right-padded by 2, right-padded by 4."""
    rng = np.random.default_rng(1)
    embeds = paddle.to_tensor(rng.standard_normal((3, 7, 32)))
    mask = paddle.to_tensor([[1] * 7, [1] * 5 + [0, 0], [1] * 3 + [0] * 4])
    return embeds, mask


def decode(**over) -> dict:
    settings = dict(num_beams=1, max_new_tokens=6, min_new_tokens=0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                    length_penalty=1.0, eos_token_id=EOS, pad_token_id=PAD)
    return {**settings, **over}


def test_settings_are_translated_or_refused():
    config, activation, tied, rescale = t5_config(TINY, "test")
    assert (activation, tied, rescale, config.relative_attention_max_distance) == ("gelu", False, False, 20)
    # Hugging Face's rule for configs without dense_act_fn: gated-gelu is the tanh form
    assert t5_config({k: v for k, v in TINY.items() if k != "dense_act_fn"}, "t")[1] == "gelu_new"
    # tied: the decoder output is rescaled unless transformers 5's scale_decoder_outputs says not
    assert t5_config({**TINY, "tie_word_embeddings": True}, "t")[2:] == (True, True)
    assert t5_config({**TINY, "tie_word_embeddings": True, "scale_decoder_outputs": False}, "t")[2:] == (True, False)
    for bad, key in [({"n_experts": 2}, "n_experts"), ({"dense_act_fn": "quick_gelu"}, "quick_gelu"),
                     ({"feed_forward_proj": "gelu", "dense_act_fn": "gelu"}, "not supported"),
                     ({"feed_forward_proj": "gated-gelu", "is_gated_act": False}, "is_gated_act")]:
        with pytest.raises(LanguageConfigError, match=key):
            t5_config({**TINY, **bad}, "cfg.yaml")
    with pytest.raises(LanguageConfigError, match="d_ff"):
        t5_config({k: v for k, v in TINY.items() if k != "d_ff"}, "cfg.yaml")


def test_original_t5s_relu_ffn_builds_and_computes_relu():
    """T5 v1.0's FFN (feed_forward_proj relu, one wi): built as paddlenlp's T5DenseReluDense, untouched."""
    relu = t5(feed_forward_proj="relu", dense_act_fn="relu")
    ffn = relu.t5.encoder.block[0].layer[1].DenseReluDense
    assert type(ffn).__name__ == "T5DenseReluDense" and relu.activation == "relu"
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 2, 32)))
    np.testing.assert_allclose(ffn(x).numpy(), np.maximum(x.numpy() @ ffn.wi.weight.numpy(), 0) @ ffn.wo.weight.numpy(),
                               rtol=1e-12)


def test_names_are_paddlenlp_names_once_and_the_hf_map_covers_them(lm):
    names = set(lm.state_dict())
    assert "t5.shared.weight" in names and "lm_head.weight" in names
    assert not any("embed_tokens" in n for n in names)  # the shared table once, not three times
    assert "t5.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in names
    assert "t5.decoder.block.1.layer.2.DenseReluDense.wi_1.weight" in names
    hf = lm.hf_names()
    assert set(hf) == names
    assert hf["lm_head.weight"] == ("lm_head.weight", True)
    assert hf["t5.encoder.block.0.layer.0.SelfAttention.q.weight"] == ("encoder.block.0.layer.0.SelfAttention.q.weight", True)
    assert hf["t5.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][1] is False
    assert hf["t5.encoder.final_layer_norm.weight"] == ("encoder.final_layer_norm.weight", False)
    tied = t5(tie_word_embeddings=True)
    assert "lm_head.weight" not in tied.state_dict() and tied.lm_head is None


def test_loss_is_the_mean_over_label_tokens(lm, batch):
    embeds, mask = batch
    labels = paddle.to_tensor([[5, 6, 7, 1], [8, 1, -100, -100], [9, 9, 1, -100]])
    full = lm(embeds, mask, labels, return_logits=True)
    logits, want = full.logits.numpy(), []
    for row, lab in zip(logits, labels.numpy()):
        for t, y in enumerate(lab):
            if y != -100:
                want.append(-log_softmax(row[t])[y])
    np.testing.assert_allclose(float(full.loss), np.mean(want), rtol=1e-12)
    np.testing.assert_allclose(float(lm(embeds, mask, labels).loss), np.mean(want), rtol=1e-12)
    with pytest.raises(ValueError, match="labels"):
        lm(embeds, mask)


def test_a_tied_head_rescales_the_decoder_output():
    tied = t5(tie_word_embeddings=True)
    redraw(tied, 3)
    embeds, mask = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 4, 32))), paddle.ones([1, 4], "int64")
    labels = paddle.to_tensor([[3, 4, 1]])
    hidden, _ = tied._outputs(embeds, mask, labels)
    want = hidden.numpy() @ tied.t5.shared.weight.numpy().T
    np.testing.assert_allclose(tied(embeds, mask, labels, return_logits=True).logits.numpy(), want, rtol=1e-12)
    raw = tied.t5.decoder(input_ids=paddle.to_tensor([[0, 3, 4]]), encoder_hidden_states=tied._encode(embeds, mask),
                          encoder_attention_mask=mask, return_dict=True).last_hidden_state
    np.testing.assert_allclose(hidden.numpy(), raw.numpy() * 32**-0.5, rtol=1e-12)


def next_logits(lm, embeds: paddle.Tensor, mask: paddle.Tensor, tokens: list[int]) -> np.ndarray:
    """A full pass: the decoder reads [start] + tokens; the logits after the last of them."""
    labels = paddle.to_tensor([tokens + [PAD]])
    return lm(embeds, mask, labels, return_logits=True).logits.numpy()[0, len(tokens)].astype("float64")


FREQUENT = 63


@pytest.mark.parametrize("settings", [
    decode(),
    decode(repetition_penalty=1.5),
    decode(eos_token_id=FREQUENT, repetition_penalty=1.5, no_repeat_ngram_size=2, min_new_tokens=2),
    decode(num_beams=3),
    decode(num_beams=3, repetition_penalty=1.5),
    decode(num_beams=3, eos_token_id=FREQUENT, length_penalty=2.0, max_new_tokens=8),
    decode(num_beams=3, eos_token_id=FREQUENT, min_new_tokens=3, repetition_penalty=1.3, no_repeat_ngram_size=2),
], ids=["greedy", "greedy-penalty", "greedy-processors", "beam", "beam-penalty", "beam-eos-lp2", "beam-processors"])
def test_generate_matches_the_reference(lm, batch, settings):
    embeds, mask = batch
    out = lm.generate(embeds, mask, **settings).numpy()
    reference = reference_beam if settings["num_beams"] > 1 else reference_greedy
    rows = []
    for b in range(3):
        length = int(mask.numpy()[b].sum())  # the unpadded encoder input: padding must change nothing
        e, m = embeds[b : b + 1, :length], paddle.ones([1, length], "int64")
        rows.append(reference(lambda tokens: next_logits(lm, e, m, tokens), settings, start=(0,)))
    assert out.shape[1] == max(map(len, rows))
    for b, row in enumerate(rows):
        assert out[b].tolist() == row + [PAD] * (out.shape[1] - len(row)), (b, settings)


def test_held_in_half_precision_with_the_ffn_output_in_float32():
    half = t5(dtype="float16")
    dtypes = {name: p.dtype for name, p in half.named_parameters()}
    wo = {n for n in dtypes if n.endswith("DenseReluDense.wo.weight")}
    assert len(wo) == 4 and all(dtypes[n] == paddle.float32 for n in wo)
    assert all(d == paddle.float16 for n, d in dtypes.items() if n not in wo)
    assert paddle.get_default_dtype() == "float32"
    block = half.t5.encoder.block[0].layer[1].DenseReluDense
    out = block.wo(paddle.ones([1, 2, 64], dtype="float16"))  # the input is cast up by the hook
    assert out.dtype == paddle.float32


def test_a_t5_tokenizer_folder_and_the_encoder_decoder_batch(tmp_path):
    """A Hugging Face T5 tokenizer folder (spiece.model, "T5TokenizerFast") loads as paddlenlp's T5Tokenizer;
    the collator ends prompt and target with </s> as T5's tokenizer does, and right-pads the generation
    prompt (T5's relative positions between the soft prompt and the prompt must not move with padding)."""
    import io
    import json

    import sentencepiece as spm

    from paddle_medvl.build import build_collator, build_tokenizer
    from paddle_medvl.config import Config

    text = ["the heart is normal in size", "there is a small left pleural effusion", "no pneumothorax"] * 50
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=32, model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
                                   unk_piece="<unk>", minloglevel=2)
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5TokenizerFast", "extra_ids": 0}))
    cfg = Config()
    cfg.Model.language = LanguageConfig(architecture="t5", tokenizer=str(tmp_path), add_bos=False, eos_text="",
                                        eos_token=True, prompt_eos=True)
    cfg.Data.max_prompt_len, cfg.Data.max_target_len = 12, 10
    tokenizer = build_tokenizer(cfg.Model.language)
    assert type(tokenizer).__name__ == "T5Tokenizer" and (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    batch = build_collator(cfg, tokenizer)([
        {"index": 0, "image": np.zeros((3, 4, 4), "float32"), "prompt": "the heart", "target": "no pneumothorax"},
        {"index": 1, "image": np.zeros((3, 4, 4), "float32"), "prompt": "there is a small left pleural effusion",
         "target": "the heart is normal in size"},
    ])
    prompt = tokenizer("the heart", add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0].tolist() == prompt + [1] + [0] * (12 - len(prompt) - 1)
    assert batch["prompt_ids"][0].tolist() == batch["input_ids"][0].tolist()  # right-padded for the encoder
    target = tokenizer("no pneumothorax", add_special_tokens=False)["input_ids"]
    assert batch["labels"][0].tolist() == target + [1] + [-100] * (10 - len(target) - 1)
