"""The frozen LLM interface (models/language/) on a tiny random OPT.

The decoding references below are written from the documented semantics (HF ``generate`` given
embeddings only) with full forward passes and no cache; models/language/ decodes with a cache and
vectorised beams, so agreement checks the cache, the batching and the beam bookkeeping.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import paddle
import pytest
from paddle import nn

from paddle_medvl.config import LanguageConfig
from paddle_medvl.models.language import LanguageConfigError, LMOutput, build_language_model
from paddle_medvl.workarounds import FrozenSafeLayerNorm

TINY = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
            max_position_embeddings=64, dropout=0.1, pad_token_id=1, bos_token_id=2, eos_token_id=2)
PAD = 1


def redraw(lm: nn.Layer, seed: int, std: float = 0.3) -> None:
    """Weights at std 0.3 (LayerNorm weights 1 + N(0, 0.3)): peaked, varied outputs and non-unit norms."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, p in lm.state_dict().items():
        value = rng.standard_normal(p.shape) * std + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
        state[name] = paddle.to_tensor(value.astype("float32"))
    lm.set_state_dict(state)


@pytest.fixture(scope="module")
def lm():
    model = build_language_model(LanguageConfig(config=TINY))
    redraw(model, 0)
    return model


@pytest.fixture(scope="module")
def batch(lm):
    return make_batch(lm)


def make_batch(lm):
    """Three prompts as embeddings: full, left-padded by 2, left-padded by 4."""
    rng = np.random.default_rng(1)
    ids = paddle.to_tensor(rng.integers(3, 96, (3, 7)))
    embeds = lm.embed(ids) + paddle.to_tensor(rng.standard_normal((3, 7, 32)).astype("float32") * 0.5)
    mask = paddle.to_tensor([[1] * 7, [0, 0] + [1] * 5, [0] * 4 + [1] * 3])
    return embeds, mask


def decode(**over) -> dict:
    """All decoding settings explicit (as DecodeConfig + tokenizer give them); neutral unless overridden."""
    settings = dict(num_beams=1, max_new_tokens=6, min_new_tokens=0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                    length_penalty=1.0, eos_token_id=2, pad_token_id=PAD)
    return {**settings, **over}


# ---------------------------------------------------------------------------- building


def test_config_translation_and_errors(tmp_path):
    from paddle_medvl.models.language import opt_config

    cfg = opt_config(TINY, "test")
    assert cfg.intermediate_size == 64 and cfg.word_embed_proj_dim == 32 and cfg.hidden_dropout_prob == 0.1
    for bad, message in [({**TINY, "ffn_dims": 64}, "unknown OPT setting 'ffn_dims'"),
                         ({**TINY, "_remove_final_layer_norm": True}, "not supported"),
                         ({**TINY, "activation_function": "gelu"}, "only relu"),
                         ({k: v for k, v in TINY.items() if k != "ffn_dim"}, "'intermediate_size' \\(HF name: 'ffn_dim'\\)"),
                         ({**TINY, "intermediate_size": 32}, "disagree")]:
        with pytest.raises(LanguageConfigError, match=message):
            opt_config(bad, "test")
    with pytest.raises(LanguageConfigError, match="exactly one of"):
        build_language_model(LanguageConfig())
    with pytest.raises(LanguageConfigError, match="no config.json .*convert_hf"):
        build_language_model(LanguageConfig(path=str(tmp_path)))
    with pytest.raises(LanguageConfigError, match="unknown 'gpt'"):
        build_language_model(LanguageConfig(architecture="gpt", config=TINY))
    # an HF text_config as written in a checkpoint folder (metadata keys are fine)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "model_type": "opt", "use_cache": True, "layerdrop": 0.0,
                                                      "torch_dtype": "float16", "tie_word_embeddings": True}))
    from_path = build_language_model(LanguageConfig(path=str(tmp_path)))
    assert from_path.config.intermediate_size == 64 and from_path.embed_dim == 32


def test_names_are_paddlenlp_names_and_hf_map_covers_them(lm):
    names = set(lm.state_dict())
    assert "opt.decoder.layers.1.linear1.weight" in names and "opt.decoder.layers.0.norm1.weight" in names
    assert not any("lm_head" in n for n in names)  # tied to the embedding, as in HF OPT
    hf = lm.hf_names()
    assert set(hf) == names
    assert hf["opt.decoder.layers.0.linear1.weight"] == ("model.decoder.layers.0.fc1.weight", True)
    assert hf["opt.decoder.layers.0.norm2.bias"] == ("model.decoder.layers.0.final_layer_norm.bias", False)


# ---------------------------------------------------------------------------- loss and gradients


def labels_for(mask: paddle.Tensor) -> paddle.Tensor:
    labels = np.full(mask.shape, -100, dtype="int64")
    labels[0, 3:] = [5, 6, 7, 8]
    labels[1, 4:] = [9, 10, 11]
    labels[2, 6] = 12
    return paddle.to_tensor(labels)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype("float64")
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_is_the_mean_over_label_tokens(lm, batch):
    embeds, mask = batch
    labels = labels_for(mask)
    full = lm(embeds, mask, labels, return_logits=True)
    assert isinstance(full, LMOutput) and full.logits.shape == [3, 7, 96] and full.logits.dtype == paddle.float32
    logp = log_softmax(full.logits.numpy())
    lab = labels.numpy()
    picks = [logp[b, t - 1, lab[b, t]] for b in range(3) for t in range(1, 7) if lab[b, t] != -100]
    assert len(picks) == 8
    assert float(full.loss) == pytest.approx(-np.mean(picks), rel=1e-5)
    only = lm(embeds, mask, labels)
    assert only.logits is None and float(only.loss) == pytest.approx(float(full.loss), rel=1e-6)
    assert lm(embeds, mask).loss is None
    # no label token at all: zero, not NaN
    assert float(lm(embeds, mask, paddle.full([3, 7], -100, dtype="int64")).loss) == 0.0


def embeds_grad(model, embeds, mask, labels, return_logits: bool) -> np.ndarray:
    x = embeds.detach()
    x.stop_gradient = False
    model(x, mask, labels, return_logits=return_logits).loss.backward()
    return x.grad.numpy()


def test_label_positions_and_full_logits_give_the_same_gradients(lm, batch):
    embeds, mask = batch
    labels = labels_for(mask)
    np.testing.assert_allclose(embeds_grad(lm, embeds, mask, labels, True), embeds_grad(lm, embeds, mask, labels, False),
                               rtol=1e-4, atol=1e-7)


def test_gradients_through_the_frozen_llm_are_right(lm, batch):
    """Frozen LLM -> inputs_embeds gradients equal those of the same LLM with trainable weights (where
    Paddle's layer_norm backward is right); without the layer-norm fix they do not."""
    embeds, mask = batch
    labels = labels_for(mask)
    frozen = embeds_grad(lm, embeds, mask, labels, False)
    assert all(p.grad is None and p.stop_gradient for p in lm.parameters())

    trainable = copy.deepcopy(lm)
    for p in trainable.parameters():
        p.stop_gradient = False
    reference = embeds_grad(trainable, embeds, mask, labels, False)
    np.testing.assert_allclose(frozen, reference, rtol=1e-4, atol=1e-6)

    unfixed = copy.deepcopy(lm)
    for layer in unfixed.sublayers():
        if isinstance(layer, FrozenSafeLayerNorm):
            layer.__class__ = nn.LayerNorm
    assert np.abs(embeds_grad(unfixed, embeds, mask, labels, False) - reference).max() > 1e-2 * np.abs(reference).max()


def test_frozen_and_always_in_eval(lm, batch):
    embeds, mask = batch
    assert all(p.stop_gradient for p in lm.parameters())
    assert lm.train() is lm and not any(layer.training for layer in lm.sublayers(include_self=True))
    parent = nn.Sequential(lm)
    parent.train()  # sets every sublayer's flag directly, dropout (p=0.1 here) included
    first = lm(embeds, mask).logits.numpy()
    assert not any(layer.training for layer in lm.sublayers(include_self=True))
    np.testing.assert_array_equal(first, lm(embeds, mask).logits.numpy())


# ---------------------------------------------------------------------------- decoding references (no cache)


def next_logits(lm, prompt: paddle.Tensor, tokens: list[int]) -> np.ndarray:
    """Full forward over one unpadded prompt [L, D] + tokens; next-token logits (float64)."""
    x = prompt.unsqueeze(0)
    if tokens:
        x = paddle.concat([x, lm.embed(paddle.to_tensor([tokens]))], axis=1)
    return lm(x, paddle.ones(x.shape[:2], dtype="int64")).logits.numpy()[0, -1].astype("float64")


def process(scores: np.ndarray, tokens: list[int], s: dict, start: tuple[int, ...] = ()) -> np.ndarray:
    """HF's processors, written plainly: penalty, n-gram ban, min new tokens (EOS ban). ``start``: the
    tokens the output begins with (an encoder-decoder's decoder start), seen by the penalty and the ban."""
    scores, seen = scores.copy(), list(start) + tokens
    if s["repetition_penalty"] != 1.0:
        for t in set(seen):
            scores[t] = scores[t] * s["repetition_penalty"] if scores[t] < 0 else scores[t] / s["repetition_penalty"]
    n = s["no_repeat_ngram_size"]
    if n and len(seen) >= n:
        for i in range(len(seen) - n + 1):
            if seen[i : i + n - 1] == seen[len(seen) - n + 1 :]:
                scores[seen[i + n - 1]] = -np.inf
    if len(tokens) < s["min_new_tokens"]:
        scores[s["eos_token_id"]] = -np.inf
    return scores


def reference_greedy(logits_of, s: dict, start: tuple[int, ...] = ()) -> list[int]:
    """``logits_of(tokens)``: the next-token logits after the new ``tokens`` (a full pass, no cache)."""
    tokens: list[int] = []
    while len(tokens) < s["max_new_tokens"]:
        tokens.append(int(np.argmax(process(logits_of(tokens), tokens, s, start))))
        if tokens[-1] == s["eos_token_id"]:
            break
    return tokens


def reference_beam(logits_of, s: dict, start: tuple[int, ...] = ()) -> list[int]:
    """Beam search as HF: 2K candidates, only the top K may finish, sum(log p) / n ** lp, early-stop bound."""
    k, lp, eos, max_new = s["num_beams"], s["length_penalty"], s["eos_token_id"], s["max_new_tokens"]
    running: list[tuple[float, list[int]]] = [(0.0, [])]
    finished: list[tuple[float, list[int]]] = []
    for step in range(max_new):
        candidates = []
        for score, tokens in running:
            logp = process(log_softmax(logits_of(tokens)), tokens, s, start)
            candidates += [(score + logp[v], tokens + [v]) for v in range(len(logp))]
        candidates = sorted(candidates, key=lambda c: -c[0])[: 2 * k]
        ends = [c[1][-1] == eos or step + 1 == max_new for c in candidates]
        finished += [(c[0] / (step + 1) ** lp, c[1]) for rank, (c, e) in enumerate(zip(candidates, ends)) if e and rank < k]
        finished = sorted(finished, key=lambda c: -c[0])[:k]
        running = [c for c, e in zip(candidates, ends) if not e][:k]
        if step + 1 == max_new:
            break
        if len(finished) == k and running[0][0] / (step + 1) ** lp <= finished[-1][0]:
            break
    return finished[0][1]


def unpadded(embeds, mask, row: int) -> paddle.Tensor:
    keep = np.nonzero(mask.numpy()[row])[0]
    return paddle.gather(embeds[row], paddle.to_tensor(keep))


def check_against_reference(lm, embeds, mask, s: dict) -> np.ndarray:
    out = lm.generate(embeds, mask, **s).numpy()
    assert out.dtype == np.int64 and out.shape[0] == 3 and 1 <= out.shape[1] <= s["max_new_tokens"]
    reference = reference_beam if s["num_beams"] > 1 else reference_greedy
    rows = [reference(lambda tokens, b=b: next_logits(lm, unpadded(embeds, mask, b), tokens), s) for b in range(3)]
    assert out.shape[1] == max(len(r) for r in rows)  # only the new tokens, as wide as the longest row
    for b, row in enumerate(rows):
        assert out[b].tolist() == row + [PAD] * (out.shape[1] - len(row)), (b, s)
    return out


FREQUENT = 65  # a token this tiny model emits often: as EOS it ends rows and beams at different lengths


@pytest.mark.parametrize("settings", [
    decode(),
    decode(eos_token_id=FREQUENT),
    decode(repetition_penalty=1.6, no_repeat_ngram_size=2, min_new_tokens=2),
    decode(num_beams=3),
    decode(num_beams=3, eos_token_id=FREQUENT),
    decode(num_beams=4, eos_token_id=FREQUENT, length_penalty=2.0, max_new_tokens=8),
    decode(num_beams=3, eos_token_id=FREQUENT, length_penalty=-1.0, max_new_tokens=8),
    decode(num_beams=3, eos_token_id=FREQUENT, length_penalty=0.0),
    decode(num_beams=3, eos_token_id=FREQUENT, min_new_tokens=3, repetition_penalty=1.3, no_repeat_ngram_size=2),
    decode(num_beams=3, max_new_tokens=5, repetition_penalty=0.7, no_repeat_ngram_size=3, length_penalty=-0.5),
], ids=["greedy", "greedy-eos", "greedy-processors", "beam", "beam-eos", "beam-eos-lp2", "beam-eos-lp-1", "beam-eos-lp0",
        "beam-eos-processors", "beam-processors"])
def test_generate_matches_the_reference(lm, batch, settings):
    check_against_reference(lm, *batch, settings)


def test_only_the_top_beams_may_finish():
    """A candidate ending in EOS below the top num_beams is dropped (HF), not kept as a hypothesis.

    Flatter weights (std 0.15) put EOS among the lower-ranked candidates; in this case keeping them
    would change the result.
    """
    flat = build_language_model(LanguageConfig(config=TINY))
    redraw(flat, 0, std=0.15)
    check_against_reference(flat, *make_batch(flat), decode(num_beams=3, eos_token_id=FREQUENT, length_penalty=0.0))


def test_generate_does_not_depend_on_the_padding_side(lm, batch):
    embeds, mask = batch
    rows_e, rows_m = [], []  # the same prompts, padded on the right
    for b in range(3):
        row = unpadded(embeds, mask, b)
        n = row.shape[0]
        rows_e.append(paddle.concat([row, paddle.zeros([7 - n, 32])]))
        rows_m.append(paddle.to_tensor([1] * n + [0] * (7 - n)))
    right_embeds, right_mask = paddle.stack(rows_e), paddle.stack(rows_m)
    for s in (decode(), decode(num_beams=3)):
        np.testing.assert_array_equal(lm.generate(embeds, mask, **s).numpy(), lm.generate(right_embeds, right_mask, **s).numpy())


def test_eos_stops_a_row_and_min_new_tokens_holds_it_back(lm, batch):
    embeds, mask = batch
    free = lm.generate(embeds, mask, **decode(eos_token_id=0)).numpy()  # 0 never wins here: no early stop
    assert free.shape == (3, 6) and 0 not in free
    eos = int(free[0, 1])  # row 0's second token becomes EOS
    stopped = check_against_reference(lm, embeds, mask, decode(eos_token_id=eos))
    assert stopped[0, :2].tolist() == [free[0, 0], eos] and (stopped[0, 2:] == PAD).all()
    first = int(free[1, 0])  # row 1 would stop at once with its first token as EOS ...
    held = check_against_reference(lm, embeds, mask, decode(eos_token_id=first, min_new_tokens=3))
    assert first not in held[:, :3] and held.shape[1] >= 4  # ... not before 3 new tokens


def test_repetition_controls_change_outputs_as_specified(lm, batch):
    embeds, mask = batch
    plain = lm.generate(embeds, mask, **decode(max_new_tokens=8, eos_token_id=0)).numpy()
    assert any(len(set(row)) < len(row) for row in plain.tolist())  # the tiny model repeats itself
    for beams in (1, 3):
        distinct = lm.generate(embeds, mask, **decode(max_new_tokens=8, eos_token_id=0, num_beams=beams,
                                                      no_repeat_ngram_size=1)).numpy()
        assert all(len(set(row)) == len(row) for row in distinct.tolist())
        no_bigram = lm.generate(embeds, mask, **decode(max_new_tokens=8, eos_token_id=0, num_beams=beams,
                                                       no_repeat_ngram_size=2)).numpy()
        for row in no_bigram.tolist():
            bigrams = list(zip(row, row[1:]))
            assert len(set(bigrams)) == len(bigrams)
    penalised = check_against_reference(lm, embeds, mask, decode(max_new_tokens=8, eos_token_id=0, repetition_penalty=3.0))
    assert not np.array_equal(penalised, plain)


def test_generate_rejects_bad_settings(lm, batch):
    for bad in (dict(num_beams=0), dict(max_new_tokens=0), dict(min_new_tokens=-1), dict(repetition_penalty=0.0)):
        with pytest.raises(ValueError):
            lm.generate(*batch, **decode(**bad))
    with pytest.raises(TypeError):
        lm.generate(*batch, num_beams=1)  # nothing is defaulted: the settings come from the config


# ---------------------------------------------------------------------------- half precision


def half_matmul_available() -> bool:
    try:
        paddle.matmul(paddle.ones([2, 2], dtype="float16"), paddle.ones([2, 2], dtype="float16"))
        return True
    except Exception:  # Paddle 3.3.1 on CPU: no float16 matmul kernel
        return False


def test_held_in_float16(batch):
    half = build_language_model(LanguageConfig(config=TINY, dtype="float16"))
    assert {p.dtype for p in half.parameters()} == {paddle.float16}
    assert paddle.get_default_dtype() == "float32"  # the dtype guard restored it
    if not half_matmul_available():
        pytest.skip("no float16 matmul on this device (Paddle CPU); the parameters are float16 as asked")
    out = half.generate(batch[0], batch[1], **decode(num_beams=2))
    assert out.shape[0] == 3
