"""The Q-Former of BLIP-2 / InstructBLIP: a BERT whose first tokens are learned queries.

The queries attend to each other, cross-attend to the image features in every
``cross_attention_frequency``-th layer, and go through their own feed-forward branch
(``intermediate_query`` / ``output_query``); text tokens, when present, use the BERT branch
(``intermediate`` / ``output``) and never see the image directly. Three ways to run it:

* ``forward(queries, image)``: the queries alone -> [B, Q, H] (BLIP-2; HF ``Blip2QFormerModel``).
* ``forward(queries, image, instruction_ids=...)``: an instruction follows the queries and
  both attend to each other (bidirectionally); only the query outputs come back
  (InstructBLIP; HF ``InstructBlipQFormerModel``).
* ``forward_text(queries, image, text_ids, text_mask)``: image-grounded text generation
  (LAVIS ``BertLMHeadModel`` with ``query_embeds``): queries attend to queries, text attends to
  every query and causally to earlier text; ``text_loss`` is its language-modeling loss, the
  "concept loss" of paper 000 when the text is the concept sentence.

The learned query tokens are not owned here: the composed model keeps them at the top as
``query_tokens`` (the checkpoints' name) and passes them in; ``create_query_tokens`` makes them.

Names follow HF (``layernorm``, ``encoder.layer.N.attention.attention.query`` ...). One
LayerNorm normalises [queries; text embeddings]: HF BLIP-2 calls it ``qformer.layernorm``,
HF InstructBLIP ``qformer.embeddings.layernorm``, LAVIS ``Qformer.bert.embeddings.LayerNorm``;
here it is ``layernorm``. The LM head is BERT's (``cls.predictions.transform.{dense,LayerNorm}``,
``cls.predictions.bias``), its decoder tied to ``embeddings.word_embeddings`` (no weight of its own).
"""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.distributed.fleet.utils import recompute

from ..config import ConfigError, QFormerConfig
from ..workarounds import log_softmax

_INIT_STD = 0.02  # BERT's initializer_range; also the std of the query tokens (LAVIS)
IGNORE_INDEX = -100


def _linear(in_features: int, out_features: int) -> nn.Linear:
    init = paddle.ParamAttr(initializer=nn.initializer.Normal(std=_INIT_STD))
    return nn.Linear(in_features, out_features, weight_attr=init)


def create_query_tokens(config: QFormerConfig, dtype: str | None = None) -> paddle.Tensor:
    """The learned queries, a [1, Q, H] parameter drawn from N(0, 0.02) as LAVIS does.
    Assign it to a Layer attribute (``self.query_tokens = create_query_tokens(cfg)``)."""
    return paddle.create_parameter(
        [1, config.num_query_tokens, config.hidden_size], dtype or paddle.get_default_dtype(),
        default_initializer=nn.initializer.Normal(std=_INIT_STD),
    )


def additive_mask(allowed: paddle.Tensor, dtype: paddle.dtype) -> paddle.Tensor:
    """Boolean "may attend" -> 0 where allowed, the dtype's most negative number elsewhere."""
    return (1.0 - allowed.astype(dtype)) * paddle.finfo(dtype).min


def causal_lm_loss(logits: paddle.Tensor, labels: paddle.Tensor, label_smoothing: float = 0.0) -> paddle.Tensor:
    """Next-token cross-entropy, averaged over the label tokens only.

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; ``IGNORE_INDEX`` labels do not count. (Paddle's
    mean cross-entropy with ``ignore_index`` divides by every position, REFERENCE 2b.) With
    ``label_smoothing`` e, the target is (1 - e) on the label plus e spread over the vocabulary
    (torch's definition, which LAVIS uses with e = 0.1 for the Q-Former's text loss).
    """
    logp = log_softmax(logits[:, :-1], axis=-1)
    labels = labels[:, 1:]
    valid = labels != IGNORE_INDEX
    safe = paddle.where(valid, labels, paddle.zeros_like(labels))  # any index; masked out below
    nll = -paddle.take_along_axis(logp, safe.unsqueeze(-1), axis=-1).squeeze(-1)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(axis=-1)
    valid = valid.astype(nll.dtype)
    return (nll * valid).sum() / valid.sum().clip(min=1.0)


# ---------------------------------------------------------------------------- layers


class MultiHeadAttention(nn.Layer):
    """Scaled dot-product attention; keys and values come from ``context`` (itself, or the image)."""

    def __init__(self, config: QFormerConfig, context_width: int) -> None:
        super().__init__()
        hidden, self.num_heads = config.hidden_size, config.num_heads
        if hidden % self.num_heads:
            raise ConfigError(f"Q-Former hidden_size {hidden} is not a multiple of num_heads {self.num_heads}")
        self.head_dim = hidden // self.num_heads
        self.scale = self.head_dim**-0.5
        self.query = _linear(hidden, hidden)
        self.key = _linear(context_width, hidden)
        self.value = _linear(context_width, hidden)
        self.dropout = nn.Dropout(config.dropout)

    def _heads(self, x: paddle.Tensor) -> paddle.Tensor:
        return x.reshape([0, 0, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])

    def forward(self, x: paddle.Tensor, context: paddle.Tensor, mask: paddle.Tensor | None) -> paddle.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(context)), self._heads(self.value(context))
        scores = paddle.matmul(q, k, transpose_y=True) * self.scale
        if mask is not None:
            scores = scores + (mask if mask.dtype == scores.dtype else mask.astype(scores.dtype))
        probs = self.dropout(F.softmax(scores, axis=-1))
        out = paddle.matmul(probs, v).transpose([0, 2, 1, 3])
        return out.reshape([0, 0, self.num_heads * self.head_dim])


class DenseNorm(nn.Layer):
    """dense -> dropout -> LayerNorm(+ residual): BERT's SelfOutput and Output."""

    def __init__(self, config: QFormerConfig, in_features: int) -> None:
        super().__init__()
        self.dense = _linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: paddle.Tensor, residual: paddle.Tensor) -> paddle.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Intermediate(nn.Layer):
    """dense -> exact GELU."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.dense = _linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.gelu(self.dense(x), approximate=False)


class AttentionBlock(nn.Layer):
    """Attention + its output projection: ``attention.{attention,output}`` in the checkpoints."""

    def __init__(self, config: QFormerConfig, context_width: int) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(config, context_width)
        self.output = DenseNorm(config, config.hidden_size)

    def forward(self, x: paddle.Tensor, context: paddle.Tensor, mask: paddle.Tensor | None) -> paddle.Tensor:
        return self.output(self.attention(x, context, mask), x)


class QFormerLayer(nn.Layer):
    """Self-attention over [queries; text], cross-attention for the queries (some layers),
    then separate feed-forward branches for the queries and the text."""

    def __init__(self, config: QFormerConfig, index: int, image_width: int, with_text: bool) -> None:
        super().__init__()
        self.attention = AttentionBlock(config, config.hidden_size)
        self.has_cross_attention = index % config.cross_attention_frequency == 0
        if self.has_cross_attention:
            self.crossattention = AttentionBlock(config, image_width)
        self.intermediate_query = Intermediate(config)
        self.output_query = DenseNorm(config, config.intermediate_size)
        if with_text:
            self.intermediate = Intermediate(config)
            self.output = DenseNorm(config, config.intermediate_size)

    def forward(self, x: paddle.Tensor, self_mask: paddle.Tensor | None, image: paddle.Tensor,
                image_mask: paddle.Tensor | None, num_queries: int) -> paddle.Tensor:
        x = self.attention(x, x, self_mask)
        queries = x[:, :num_queries]
        if self.has_cross_attention:
            queries = self.crossattention(queries, image, image_mask)
        queries = self.output_query(self.intermediate_query(queries), queries)
        if x.shape[1] == num_queries:
            return queries
        text = x[:, num_queries:]
        return paddle.concat([queries, self.output(self.intermediate(text), text)], axis=1)


class Encoder(nn.Layer):
    """Holds the layers as ``layer`` (the checkpoints' ``encoder.layer.N``); QFormer runs them."""

    def __init__(self, config: QFormerConfig, image_width: int, with_text: bool) -> None:
        super().__init__()
        self.layer = nn.LayerList(
            [QFormerLayer(config, i, image_width, with_text) for i in range(config.num_layers)]
        )


class TextEmbeddings(nn.Layer):
    """Word + learned absolute position embeddings (normalised later, together with the queries).

    No ``padding_idx``: Paddle's zeroes the padding row's output, torch's only its gradient, and
    checkpoints may hold a non-zero padding row. Padding never reaches a real output (it is masked
    as a key, and ignored as a label), so no gradient comes through the lookup either way.
    """

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        init = paddle.ParamAttr(initializer=nn.initializer.Normal(std=_INIT_STD))
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, weight_attr=init)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, weight_attr=init
        )

    def forward(self, ids: paddle.Tensor) -> paddle.Tensor:
        limit = self.position_embeddings.weight.shape[0]
        if ids.shape[1] > limit:
            raise ConfigError(
                f"Q-Former text of {ids.shape[1]} tokens is longer than max_position_embeddings {limit}"
            )
        positions = paddle.arange(ids.shape[1], dtype="int64")
        return self.word_embeddings(ids) + self.position_embeddings(positions).unsqueeze(0)


class PredictionTransform(nn.Layer):
    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.dense = _linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x), approximate=False))


class Predictions(nn.Layer):
    """``transform`` then the tied decoder: logits = h @ word_embeddings^T + ``bias``."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.transform = PredictionTransform(config)
        self.bias = self.create_parameter([config.vocab_size], is_bias=True,
                                          default_initializer=nn.initializer.Constant(0.0))

    def forward(self, x: paddle.Tensor, word_embeddings: paddle.Tensor) -> paddle.Tensor:
        return paddle.matmul(self.transform(x), word_embeddings, transpose_y=True) + self.bias


class LMHead(nn.Layer):
    """BERT's ``cls`` (only ``predictions`` in it)."""

    def __init__(self, config: QFormerConfig) -> None:
        super().__init__()
        self.predictions = Predictions(config)

    def forward(self, x: paddle.Tensor, word_embeddings: paddle.Tensor) -> paddle.Tensor:
        return self.predictions(x, word_embeddings)


# ---------------------------------------------------------------------------- the Q-Former


class QFormer(nn.Layer):
    """Queries [1 or B, Q, H] + image features [B, N, image_width] -> query outputs [B, Q, H].

    ``config.text`` adds the text embeddings, the text feed-forward branch and the LM head
    (``forward_text`` / ``text_loss``); ``config.instruction`` adds the embeddings and the text
    branch for ``instruction_ids``. With both off the parameters are exactly an HF BLIP-2
    Q-Former's.
    """

    def __init__(self, config: QFormerConfig, image_width: int) -> None:
        super().__init__()
        self.config = config
        with_text = config.text or config.instruction
        self.layernorm = nn.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        if with_text:
            self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(config, image_width, with_text)
        if config.text:
            self.cls = LMHead(config)

    # -- the shared pass

    def _run(self, queries: paddle.Tensor, ids: paddle.Tensor | None, self_mask: paddle.Tensor | None,
             image: paddle.Tensor, image_mask: paddle.Tensor | None) -> paddle.Tensor:
        """LayerNorm([queries; embedded ids]) through every layer -> [B, Q (+ T), H].
        ``self_mask`` is additive, [B or 1, 1, Q+T or 1, Q+T]; ``image_mask`` [B, N] is 1 / 0."""
        x = queries.expand([image.shape[0], -1, -1])
        num_queries = x.shape[1]
        if ids is not None:
            x = paddle.concat([x, self.embeddings(ids).astype(x.dtype)], axis=1)
        x = self.dropout(self.layernorm(x))
        if image_mask is not None:
            image_mask = additive_mask(image_mask.astype("bool")[:, None, None, :], x.dtype)
        checkpoint = self.config.recompute and self.training and paddle.is_grad_enabled()
        for layer in self.encoder.layer:
            if checkpoint:
                x = recompute(layer, x, self_mask, image, image_mask, num_queries, use_reentrant=False)
            else:
                x = layer(x, self_mask, image, image_mask, num_queries)
        return x

    def _need(self, flag: str, what: str) -> None:
        if not getattr(self.config, flag):
            raise ConfigError(f"this Q-Former was built without {what} (set Model.qformer.{flag}=true)")

    # -- public API

    def forward(
        self,
        query_embeds: paddle.Tensor,
        image_embeds: paddle.Tensor,
        image_mask: paddle.Tensor | None = None,
        instruction_ids: paddle.Tensor | None = None,
        instruction_mask: paddle.Tensor | None = None,
    ) -> paddle.Tensor:
        """Query outputs [B, Q, H].

        ``image_mask`` [B, N] (1 = real) masks padded image features, if any. ``instruction_ids``
        [B, T] (with ``instruction_mask`` [B, T], 1 = real token; all ones if omitted) are
        embedded after the queries; queries and instruction attend to each other, padding is
        masked as a key; the instruction outputs are dropped.
        """
        if instruction_ids is None:
            return self._run(query_embeds, None, None, image_embeds, image_mask)
        self._need("instruction", "instruction input")
        batch, num_queries = image_embeds.shape[0], query_embeds.shape[1]
        if instruction_mask is None:
            instruction_mask = paddle.ones(instruction_ids.shape, dtype="int64")
        queries_real = paddle.ones([batch, num_queries], dtype="bool")
        keys = paddle.concat([queries_real, instruction_mask.astype("bool")], axis=1)
        self_mask = additive_mask(keys[:, None, None, :], query_embeds.dtype)
        out = self._run(query_embeds, instruction_ids, self_mask, image_embeds, image_mask)
        return out[:, :num_queries]

    def forward_text(
        self,
        query_embeds: paddle.Tensor,
        image_embeds: paddle.Tensor,
        text_ids: paddle.Tensor,
        text_mask: paddle.Tensor,
        image_mask: paddle.Tensor | None = None,
    ) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Image-grounded text generation in one pass -> (query outputs [B, Q, H], logits [B, T, V]).

        ``text_ids`` [B, T] as the BERT tokenizer gives them ([CLS] w ... [SEP] [PAD]...); the first
        token is replaced by ``config.dec_token_id`` ([DEC]) as LAVIS does. The query outputs equal
        ``forward``'s (queries never see the text), so the caption path can reuse them.
        """
        self._need("text", "the text decoder")
        batch, num_queries, length = image_embeds.shape[0], query_embeds.shape[1], text_ids.shape[1]
        dec = paddle.full([batch, 1], self.config.dec_token_id, dtype=text_ids.dtype)
        ids = paddle.concat([dec, text_ids[:, 1:]], axis=1)
        # queries -> queries; text -> queries and earlier (or same) text; padded text is no key
        causal = paddle.tril(paddle.ones([length, length], dtype="bool"))
        rows_q = paddle.concat([paddle.ones([num_queries, num_queries], dtype="bool"),
                                paddle.zeros([num_queries, length], dtype="bool")], axis=1)
        rows_t = paddle.concat([paddle.ones([length, num_queries], dtype="bool"), causal], axis=1)
        allowed = paddle.concat([rows_q, rows_t], axis=0).unsqueeze(0)  # [1, Q+T, Q+T]
        keys = paddle.concat([paddle.ones([batch, num_queries], dtype="bool"), text_mask.astype("bool")], axis=1)
        allowed = paddle.logical_and(allowed, keys[:, None, :])
        self_mask = additive_mask(allowed.unsqueeze(1), query_embeds.dtype)
        out = self._run(query_embeds, ids, self_mask, image_embeds, image_mask)
        logits = self.cls(out[:, num_queries:], self.embeddings.word_embeddings.weight)
        return out[:, :num_queries], logits

    def text_loss(self, logits: paddle.Tensor, text_ids: paddle.Tensor, text_mask: paddle.Tensor) -> paddle.Tensor:
        """The LM loss of ``forward_text``'s logits: token t + 1 from tokens <= t, padding ignored,
        [DEC] never a target, mean over the target tokens, ``config.label_smoothing`` applied."""
        labels = paddle.where(text_mask.astype("bool"), text_ids, paddle.full_like(text_ids, IGNORE_INDEX))
        return causal_lm_loss(logits, labels, self.config.label_smoothing)


class TextDecoder:
    """The Q-Former's image-grounded text decoder as a stepper for ``models/decoding.py``: [DEC], then
    one token per step. No cache: each step reruns the (small) Q-Former over queries + text so far."""

    def __init__(self, qformer: QFormer, query_tokens: paddle.Tensor) -> None:
        qformer._need("text", "the text decoder")
        self.qformer, self.query_tokens = qformer, query_tokens

    def _logits(self, image: paddle.Tensor, ids: paddle.Tensor) -> paddle.Tensor:
        _, logits = self.qformer.forward_text(self.query_tokens, image, ids, paddle.ones_like(ids))
        return logits[:, -1]

    def _prefill(self, image: paddle.Tensor, mask: paddle.Tensor) -> tuple[paddle.Tensor, tuple]:
        ids = paddle.full([image.shape[0], 1], self.qformer.config.dec_token_id, dtype="int64")
        return self._logits(image, ids), (image, ids)

    def _step(self, tokens: paddle.Tensor, state: tuple) -> tuple[paddle.Tensor, tuple]:
        image, ids = state
        ids = paddle.concat([ids, tokens.unsqueeze(-1).astype("int64")], axis=1)
        return self._logits(image, ids), (image, ids)

    def _reorder(self, state: tuple, rows: paddle.Tensor) -> tuple:
        image, ids = state
        return paddle.gather(image, rows), paddle.gather(ids, rows)
