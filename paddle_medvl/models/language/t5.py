"""T5 / Flan-T5 (paddlenlp's blocks) behind the language-model interface of ``base.py``: an encoder-decoder.

Paper 002's frozen Flan-T5-XL reads ``[soft prompt; prompt]`` in its encoder and writes the report in
its decoder. ``t5`` is paddlenlp's ``T5Model`` (shared embedding, encoder and decoder stacks), so
parameter names are paddlenlp's ``T5ForConditionalGeneration`` names: ``t5.encoder.block.N.layer.0.
SelfAttention.q``, ``t5.decoder.block.N.layer.2.DenseReluDense.wo``, ``lm_head`` (Hugging Face's names
with ``t5.`` in front, except the head). What paddlenlp's ``T5ForConditionalGeneration`` would get
wrong is done here or in ``workarounds.fix_t5``:

- the activation of the gated FFN is the one the config names (``dense_act_fn``, else Hugging Face's
  rule: ``gated-gelu`` means ``gelu_new``), and ``relative_attention_max_distance`` is honoured;
- the head: tied to the embedding (and the decoder output rescaled by ``d_model ** -0.5``) or a
  separate ``lm_head`` (Flan-T5, T5 v1.1), with the rescale as the config says (``scale_decoder_outputs``
  of transformers 5, else with the tie);
- the loss is the base's mean over label tokens (paddlenlp's divides by all positions);
- decoding is ``models/decoding.py`` over the decoder's cache (the encoder runs once);
- held in float16/bfloat16, the FFN output projections stay in float32 (``keep_float32``), as
  Hugging Face keeps ``wo`` (Flan-T5 overflows there in float16).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import paddle
from paddle import Tensor, nn

from ...data.collate import IGNORE_INDEX
from ...workarounds import T5_ACTIVATIONS, fix_t5
from .base import LanguageConfigError, LanguageModel, register

if TYPE_CHECKING:
    from paddlenlp.transformers import T5Config

_T5_KEYS = {
    "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
    "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon", "feed_forward_proj",
    "pad_token_id", "eos_token_id", "decoder_start_token_id",
}
# Read here, not by paddlenlp's config: the head and the activation.
_T5_OWN = {"tie_word_embeddings", "scale_decoder_outputs", "dense_act_fn", "is_gated_act"}
# Keys that change nothing for a frozen LLM in eval mode (metadata, training-only dropout, caching, tasks).
_T5_IGNORED = {
    "architectures", "model_type", "_name_or_path", "transformers_version", "paddlenlp_version", "torch_dtype",
    "dtype", "init_class", "use_cache", "dropout_rate", "initializer_factor", "is_encoder_decoder", "output_past",
    "n_positions", "task_specific_params", "classifier_dropout", "bos_token_id", "return_dict",
    "output_attentions", "output_hidden_states", "is_decoder", "tensor_parallel_degree",
}
_FEED_FORWARD = {"relu", "gated-gelu", "gated-silu"}  # what paddlenlp's T5 blocks can build


def t5_config(settings: dict[str, Any], source: str) -> tuple["T5Config", str, bool, bool]:
    """(paddlenlp ``T5Config``, the FFN activation, tied head?, rescaled decoder output?) from Hugging
    Face-named settings; anything paddlenlp would build differently is an error naming the key."""
    from paddlenlp.transformers import T5Config

    args: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _T5_KEYS:
            args[key] = value
        elif key not in _T5_OWN | _T5_IGNORED:
            known = sorted(_T5_KEYS | _T5_OWN)
            raise LanguageConfigError(f"{source}: unknown T5 setting {key!r} (known: {', '.join(known)})")
    for required in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
        if required not in args:
            raise LanguageConfigError(f"{source}: T5 needs {required!r}")
    proj = args.setdefault("feed_forward_proj", "relu")
    gated, _, act = proj.rpartition("-")
    default_act = "gelu_new" if proj == "gated-gelu" else act  # Hugging Face's rule for old configs
    activation = settings.get("dense_act_fn", default_act)
    if gated not in ("", "gated"):
        raise LanguageConfigError(f"{source}: feed_forward_proj {proj!r} is not ACT or gated-ACT")
    if gated:
        if activation not in T5_ACTIVATIONS:
            raise LanguageConfigError(f"{source}: dense_act_fn {activation!r} is not supported for a gated FFN "
                                      f"(known: {', '.join(T5_ACTIVATIONS)})")
        # paddlenlp builds the gated blocks by activation family; the exact function is set after
        args["feed_forward_proj"] = "gated-silu" if activation == "silu" else "gated-gelu"
    elif proj not in _FEED_FORWARD or activation != "relu":
        raise LanguageConfigError(f"{source}: a T5 FFN of {proj!r} with {activation!r} is not supported "
                                  f"(paddlenlp builds {', '.join(sorted(_FEED_FORWARD))})")
    if settings.get("is_gated_act", bool(gated)) != bool(gated):
        raise LanguageConfigError(f"{source}: is_gated_act disagrees with feed_forward_proj {proj!r}")
    tied = bool(settings.get("tie_word_embeddings", True))
    rescale = bool(settings.get("scale_decoder_outputs", tied))
    args.setdefault("decoder_start_token_id", args.get("pad_token_id", 0))
    return T5Config(**args, dropout_rate=0.0, tie_word_embeddings=tied), activation, tied, rescale


@register("t5")
class T5LanguageModel(LanguageModel):
    """T5 from paddlenlp's blocks: ``t5`` is paddlenlp's ``T5Model``; ``lm_head`` exists when untied.

    ``forward(inputs_embeds, mask, labels)``: the encoder reads ``inputs_embeds``, the decoder reads
    the labels shifted right behind the decoder start token (Hugging Face's ``_shift_right``), and
    each decoder position predicts its label.
    """

    decoder_only = False
    keep_float32 = ("t5.*.DenseReluDense.wo",)

    # T5's tokenizer ends the prompt and the target with </s> (LAVIS's InstructBLIP keeps both)
    hf_text_format = {"add_bos": False, "eos_text": "", "eos_token": True, "prompt_eos": True}

    @classmethod
    def from_hf(cls, settings: dict[str, Any], has_head: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The head is untied when the checkpoint holds one: transformers 5 writes ``tie_word_embeddings:
        true`` into every T5 config it saves (Flan-T5's untied head included) and unties on load when the
        two tensors differ. The rescale follows the file's ``scale_decoder_outputs``, else its tie."""
        ours, text_format = super().from_hf(settings, has_head)
        tied_in_file = ours.pop("tie_word_embeddings", True)
        ours.setdefault("scale_decoder_outputs", tied_in_file)
        ours["tie_word_embeddings"] = not has_head
        return ours, text_format

    def _build(self, settings: dict[str, Any], source: str) -> None:
        from paddlenlp.transformers import T5Model

        self.config, self.activation, tied, self.rescale = t5_config(settings, source)
        self.t5 = T5Model(self.config)
        self.lm_head = None if tied else nn.Linear(self.config.d_model, self.config.vocab_size, bias_attr=False)
        fix_t5(self.t5, self.activation, self.config.relative_attention_max_distance)

    @property
    def embed_dim(self) -> int:
        return self.config.d_model

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.t5.shared(input_ids)

    def hf_names(self) -> dict[str, tuple[str, bool]]:
        """Our parameter name -> (Hugging Face ``T5ForConditionalGeneration`` name, transpose?).

        Linear weights are transposed (torch [out, in] vs Paddle [in, out]), adapted ones too; the
        embedding, the norms and the relative attention bias tables are not; LoRA adapters have no entry.
        """
        from ..lora import LoRALinear

        names = {}
        for name, layer in self.named_sublayers():
            for p_name, _ in layer.named_parameters(include_sublayers=False):
                if p_name.startswith("lora_"):
                    continue  # adapters are ours alone
                full = f"{name}.{p_name}"
                names[full] = (full.removeprefix("t5."), isinstance(layer, (nn.Linear, LoRALinear)))
        return names

    # -- the passes
    def _encode(self, inputs_embeds: Tensor, mask: Tensor) -> Tensor:
        return self.t5.encoder(inputs_embeds=inputs_embeds.astype(self.llm_dtype), attention_mask=mask,
                               return_dict=True).last_hidden_state

    def _decode(self, ids: Tensor, encoded: Tensor, mask: Tensor, cache: list | None, use_cache: bool):
        out = self.t5.decoder(input_ids=ids, encoder_hidden_states=encoded, encoder_attention_mask=mask,
                              cache=cache, use_cache=use_cache, return_dict=True)
        hidden = out.last_hidden_state
        if self.rescale:
            hidden = hidden * (self.config.d_model**-0.5)
        return hidden, out.past_key_values

    def _project(self, hidden: Tensor) -> Tensor:
        if self.lm_head is None:
            return paddle.matmul(hidden, self.t5.shared.weight, transpose_y=True)
        return self.lm_head(hidden)

    def _outputs(self, inputs_embeds: Tensor, mask: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        if labels is None:
            raise ValueError("an encoder-decoder LLM needs the labels: its decoder reads them, shifted right")
        start = paddle.full([labels.shape[0], 1], self.config.decoder_start_token_id, dtype="int64")
        shifted = paddle.concat([start, labels[:, :-1].astype("int64")], axis=1)
        shifted = paddle.where(shifted == IGNORE_INDEX, paddle.full_like(shifted, self.config.pad_token_id), shifted)
        hidden, _ = self._decode(shifted, self._encode(inputs_embeds, mask), mask, None, use_cache=False)
        return hidden, labels

    def _labels_after(self, prefix: Tensor, labels: Tensor) -> Tensor:
        return labels  # the prefix is the encoder's; the labels are the decoder's

    # -- decoding: the encoder once, then the decoder step by step over its cache
    def start_tokens(self, batch: int) -> Tensor:
        return paddle.full([batch, 1], self.config.decoder_start_token_id, dtype="int64")

    def _prefill(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, Any]:
        encoded = self._encode(inputs_embeds, attention_mask)
        hidden, cache = self._decode(self.start_tokens(encoded.shape[0]), encoded, attention_mask, None, True)
        return self._project(hidden[:, -1]), (encoded, attention_mask, cache)

    def _step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        encoded, mask, cache = state
        hidden, cache = self._decode(tokens.unsqueeze(-1), encoded, mask, cache, True)
        return self._project(hidden[:, -1]), (encoded, mask, cache)

    def _reorder(self, state: Any, index: Tensor) -> Any:
        encoded, mask, cache = state
        cache = [tuple(paddle.index_select(t, index) for t in layer) for layer in cache]
        return paddle.index_select(encoded, index), paddle.index_select(mask, index), cache
