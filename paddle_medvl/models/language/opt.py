"""OPT (paddlenlp's blocks) behind the language-model interface of ``base.py``.

Frozen OPT-2.7B is paper 000's LLM. paddlenlp's ``OPTForCausalLM`` is not used whole (its defects
are in ``workarounds``): the embeddings and decoder are its ``OPTModel``, the LM head is the tied
embedding, the attention mask is built in the LLM's dtype, and decoding is ``models/decoding.py``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import paddle
from paddle import Tensor

from .base import LanguageConfigError, LanguageModel, register

if TYPE_CHECKING:  # paddlenlp takes seconds to import: only when a model is built
    from paddlenlp.transformers import OPTConfig

# HF names of OPT settings -> paddlenlp's (paddlenlp's OPTConfig silently drops HF's `ffn_dim`).
_OPT_HF_NAMES = {
    "ffn_dim": "intermediate_size",
    "activation_function": "hidden_act",
    "do_layer_norm_before": "normalize_before",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "init_std": "initializer_range",
}
_OPT_KEYS = {
    "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "hidden_act",
    "max_position_embeddings", "normalize_before", "word_embed_proj_dim", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "initializer_range", "pad_token_id", "bos_token_id", "eos_token_id",
}
# Keys that change nothing for a frozen LLM in eval mode (metadata, training-only dropout, caching).
_OPT_IGNORED = {
    "architectures", "model_type", "_name_or_path", "transformers_version", "paddlenlp_version", "torch_dtype",
    "dtype", "init_class", "use_cache", "prefix", "activation_dropout", "layerdrop", "type_vocab_size",
    "return_dict", "output_attentions", "output_hidden_states",
}
# Variants paddlenlp's OPT cannot express: only this value is accepted.
_OPT_FIXED = {
    "tie_word_embeddings": True, "enable_bias": True, "_remove_final_layer_norm": False,
    "layer_norm_elementwise_affine": True, "mp_degree": 1, "fuse_attention_qkv": False, "fuse_attention_ffn": False,
}
# paddlenlp's OPT maps "gelu" to the tanh approximation (HF: exact); relu is what OPT checkpoints use.
_OPT_ACTIVATIONS = {"relu"}


def opt_config(settings: dict[str, Any], source: str) -> "OPTConfig":
    """paddlenlp ``OPTConfig`` from HF-or-paddlenlp-named settings; anything it would misread is an error."""
    from paddlenlp.transformers import OPTConfig

    args: dict[str, Any] = {}
    for key, value in settings.items():
        name = _OPT_HF_NAMES.get(key, key)
        if name in _OPT_KEYS:
            if name in args and args[name] != value:
                raise LanguageConfigError(f"{source}: {key!r} and another name for {name!r} disagree")
            args[name] = value
        elif key in _OPT_FIXED:
            if value != _OPT_FIXED[key]:
                raise LanguageConfigError(f"{source}: {key}={value!r} is not supported by paddlenlp's OPT")
        elif key not in _OPT_IGNORED:
            known = sorted(_OPT_KEYS | set(_OPT_HF_NAMES) | set(_OPT_FIXED))
            raise LanguageConfigError(f"{source}: unknown OPT setting {key!r} (known: {', '.join(known)})")
    for required in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if required not in args:
            raise LanguageConfigError(f"{source}: OPT needs {required!r} (HF name: "
                                      f"{next((k for k, v in _OPT_HF_NAMES.items() if v == required), required)!r})")
    if args.setdefault("hidden_act", "relu") not in _OPT_ACTIVATIONS:
        raise LanguageConfigError(f"{source}: OPT activation {args['hidden_act']!r} is not supported (only relu)")
    if args["hidden_size"] % args["num_attention_heads"]:
        raise LanguageConfigError(f"{source}: hidden_size must be a multiple of num_attention_heads")
    args.setdefault("word_embed_proj_dim", args["hidden_size"])  # paddlenlp's default is 2048, HF's hidden_size
    return OPTConfig(**args)


@register("opt")
class OPTLanguageModel(LanguageModel):
    """OPT from paddlenlp's blocks: ``opt`` is paddlenlp's ``OPTModel``; the LM head is the tied embedding.

    Parameter names are paddlenlp's ``OPTForCausalLM`` names (``opt.decoder.layers.N.self_attn.q_proj``,
    ``linear1``, ``norm1``, ...) minus ``lm_head.decoder_weight``: OPT ties its LM head to the input
    embedding (HF ``tie_word_embeddings``), which paddlenlp's ``OPTForCausalLM`` does not (its separate
    head is even the wrong shape when ``word_embed_proj_dim != hidden_size``). The additive attention
    mask is built here in the LLM's dtype instead of by ``OPTModel.forward`` (which uses Paddle's
    global default dtype and sums two float minima into -inf).
    """

    # BLIP-2 OPT: a </s> bos before the prompt (HF's OPT tokenizer), captions end with "\n" (LAVIS)
    hf_text_format = {"add_bos": True, "eos_text": "\n"}

    def _build(self, settings: dict[str, Any], source: str) -> None:
        from paddlenlp.transformers import OPTModel

        self.config = opt_config(settings, source)
        self.opt = OPTModel(self.config)

    @property
    def embed_dim(self) -> int:
        return self.config.word_embed_proj_dim

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.opt.embeddings.word_embeddings(input_ids)

    def hf_names(self) -> dict[str, tuple[str, bool]]:
        """Our parameter name -> (HF ``OPTForCausalLM`` name, transpose?): the key map for conversion.

        HF's ``lm_head.weight`` is the tied embedding and has no entry (HF does not save it either).
        """
        names = {
            "opt.embeddings.word_embeddings.weight": ("model.decoder.embed_tokens.weight", False),
            "opt.embeddings.position_embeddings.weight": ("model.decoder.embed_positions.weight", False),
        }
        if self.opt.embeddings.project_in is not None:
            names["opt.embeddings.project_in.weight"] = ("model.decoder.project_in.weight", True)
            names["opt.decoder.project_out.weight"] = ("model.decoder.project_out.weight", True)
        if self.opt.decoder.final_layer_norm is not None:
            for p in ("weight", "bias"):
                names[f"opt.decoder.final_layer_norm.{p}"] = (f"model.decoder.final_layer_norm.{p}", False)
        parts = {"self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.k_proj",
                 "self_attn.v_proj": "self_attn.v_proj", "self_attn.out_proj": "self_attn.out_proj",
                 "linear1": "fc1", "linear2": "fc2", "norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}
        for n in range(self.config.num_hidden_layers):
            for ours, theirs in parts.items():
                linear = not ours.startswith("norm")
                names[f"opt.decoder.layers.{n}.{ours}.weight"] = (f"model.decoder.layers.{n}.{theirs}.weight", linear)
                names[f"opt.decoder.layers.{n}.{ours}.bias"] = (f"model.decoder.layers.{n}.{theirs}.bias", False)
        return names

    def _project(self, hidden: Tensor) -> Tensor:
        return paddle.matmul(hidden, self.opt.embeddings.word_embeddings.weight, transpose_y=True)

    def _pass(self, embeds: Tensor | None, tokens: Tensor | None, mask: Tensor, cache: list | None, use_cache: bool):
        """One decoder pass over the new positions: prompt embeddings, or token ids after a cache."""
        past = cache[0].k.shape[2] if cache is not None else 0
        if embeds is not None:
            embeds = embeds.astype(self.llm_dtype)
        x = self.opt.embeddings(input_ids=tokens, attention_mask=mask, input_embeddings=embeds,
                                past_key_values_length=past)
        out = self.opt.decoder(x, None, tgt_mask=self._additive_mask(mask, x.shape[1]), use_cache=use_cache,
                               cache=cache, return_dict=True)
        return out.last_hidden_state, out.past_key_values

    def _additive_mask(self, mask: Tensor, new: int) -> Tensor:
        """[B, 1, new, total]: 0 where a query may look, the dtype's minimum where not (causal or padding)."""
        total = mask.shape[1]
        causal = paddle.arange(total, dtype="int64").unsqueeze(0) > paddle.arange(total - new, total, dtype="int64").unsqueeze(-1)
        blocked = paddle.logical_or(causal.unsqueeze(0).unsqueeze(0), (mask == 0).unsqueeze(1).unsqueeze(1))
        return blocked.astype(self.llm_dtype) * paddle.finfo(getattr(paddle, self.llm_dtype)).min

    def _hidden(self, inputs_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        return self._pass(inputs_embeds, None, attention_mask, None, use_cache=False)[0]

    def _prefill(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, Any]:
        hidden, cache = self._pass(inputs_embeds, None, attention_mask, None, use_cache=True)
        return self._project(_last_attended(hidden, attention_mask)), (cache, attention_mask)

    def _step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        cache, mask = state
        mask = paddle.concat([mask, paddle.ones([mask.shape[0], 1], dtype=mask.dtype)], axis=1)
        hidden, cache = self._pass(None, tokens.unsqueeze(-1), mask, cache, use_cache=True)
        return self._project(hidden[:, -1]), (cache, mask)

    def _reorder(self, state: Any, index: Tensor) -> Any:
        cache, mask = state
        cache = [type(c)(paddle.index_select(c.k, index), paddle.index_select(c.v, index)) for c in cache]
        return cache, paddle.index_select(mask, index)


def _last_attended(hidden: Tensor, mask: Tensor) -> Tensor:
    """[B, D]: each row's hidden state at its last attended position (left, right or no padding)."""
    length = mask.shape[1]
    positions = paddle.arange(length, dtype="int64").unsqueeze(0).expand(mask.shape)
    last = paddle.where(mask > 0, positions, paddle.full_like(positions, -1)).max(axis=1)
    return paddle.take_along_axis(hidden, last.clip(min=0).reshape([-1, 1, 1]).expand([-1, 1, hidden.shape[-1]]), 1).squeeze(1)
