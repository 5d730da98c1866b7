"""The frozen LLM behind one small interface: embed, loss or logits, and generate.

BLIP-2 feeds a frozen language model with ``inputs_embeds`` (projected query embeddings in front
of the prompt) and either trains on its loss or decodes from it. Each LLM family is one small class
registered under ``LanguageConfig.architecture`` (OPT now; T5 and ChatGLM register the same way),
built from paddlenlp's blocks so that parameter names are paddlenlp's own:

    lm = build_language_model(cfg.Model.language)
    out = lm(inputs_embeds, attention_mask, labels)            # out.loss: mean over label tokens
    ids = lm.generate(inputs_embeds, attention_mask, **asdict(cfg.Decode),
                      eos_token_id=..., pad_token_id=...)      # new tokens only, [B, T]

What every class guarantees:

- Frozen as built (``Train.trainable`` may unfreeze it, as the demo does for its random tiny LLM):
  every parameter has ``stop_gradient=True`` and the model runs in eval mode whenever it is
  called, whatever ``train()`` was called on it or on a parent (Paddle's ``Layer.train()`` sets the
  ``training`` flag of every sublayer directly, so overriding ``train`` alone would not be enough).
  Gradients still flow to ``inputs_embeds``, right ones thanks to ``workarounds.fix_frozen_layer_norms``.
- The loss is the mean cross-entropy over the label tokens (labels aligned with the inputs, shifted
  here, -100 ignored; no label token gives 0) -- not Paddle's mean over all positions.
- ``generate`` gives what Hugging Face ``generate(inputs_embeds=..., attention_mask=...)`` gives for
  the same decoder-only model and embeddings, without prompt ids (checked against transformers
  5.23 on 160 random settings, greedy and beam, left- and right-padded):

  * greedy when ``num_beams == 1``; else HF's beam search (``early_stopping=False``): a finished
    hypothesis scores ``sum(log p) / n ** length_penalty``, ``n`` = new tokens including EOS; only
    the top ``num_beams`` candidates of a step may finish; a batch item stops once its best running
    beam, divided by the current length ** length_penalty, cannot beat its worst kept hypothesis,
    and everything stops at ``max_new_tokens``;
  * ``min_new_tokens``: EOS is impossible while fewer new tokens than that exist;
  * ``repetition_penalty`` and ``no_repeat_ngram_size`` see the generated tokens only (there are no
    prompt ids); the penalty divides positive and multiplies negative scores of seen tokens -- raw
    logits in greedy search, log-probabilities in beam search, as HF does. (transformers 5.23 also
    skips the first k generated tokens of a row with k left-padding positions -- an offset meant for
    prompt ids that are not there; we do not copy that.)
  * output: the new tokens, EOS included; a row that ended early is padded with ``pad_token_id``;
    the width is the longest row's (at most ``max_new_tokens``).
  * any padding side: the first step reads each row's last attended position, so right-padded
    prompts decode like unpadded ones (HF reads the last column, so it needs left padding).

  paddlenlp's own ``generate`` differs (``workarounds`` lists how), so it is not used here.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, NamedTuple

import paddle
import paddle.nn.functional as F
from paddle import Tensor, nn

from ..config import LanguageConfig
from ..data.collate import IGNORE_INDEX
from ..errors import MedVLError
from ..workarounds import fix_frozen_layer_norms
from . import decoding

if TYPE_CHECKING:  # paddlenlp takes seconds to import: only when a model is built
    from paddlenlp.transformers import OPTConfig

_DTYPES = ("float32", "float16", "bfloat16", "float64")  # float64: exact parity checks


NO_LLM = "none"  # Model.language.architecture of a BLIP-2 without an LLM (the Q-Former writes the text)


class LanguageConfigError(MedVLError, ValueError):
    """LLM settings that cannot be built; the message names the key and where it came from."""


class LMOutput(NamedTuple):
    logits: Tensor | None  # float32 [B, L, V] when asked for, else None
    loss: Tensor | None  # scalar float32: mean over label tokens


# ---------------------------------------------------------------------------- registry

_ARCHITECTURES: dict[str, type["LanguageModel"]] = {}


def register(name: str) -> Callable[[type["LanguageModel"]], type["LanguageModel"]]:
    """Class decorator: ``LanguageConfig.architecture == name`` builds this class."""

    def add(cls: type[LanguageModel]) -> type[LanguageModel]:
        if name in _ARCHITECTURES:
            raise ValueError(f"language architecture {name!r} is registered twice")
        cls.architecture = name
        _ARCHITECTURES[name] = cls
        return cls

    return add


def build_language_model(cfg: LanguageConfig) -> "LanguageModel":
    """The frozen LLM that ``cfg.architecture`` names, with random weights (a checkpoint loads later)."""
    cls = _ARCHITECTURES.get(cfg.architecture)
    if cls is None:
        known = ", ".join(sorted(_ARCHITECTURES))
        raise LanguageConfigError(f"Model.language.architecture: unknown {cfg.architecture!r} (known: {known})")
    return cls(cfg)


def read_settings(cfg: LanguageConfig) -> tuple[dict[str, Any], str]:
    """The architecture settings and where they came from: ``cfg.path``'s config.json or ``cfg.config``."""
    if bool(cfg.path) == bool(cfg.config):
        raise LanguageConfigError(
            "Model.language: give exactly one of `path` (a folder with the LLM's config.json, written by "
            "tools/convert_hf.py) or `config` (settings for a new random LLM)"
        )
    if cfg.config:
        return dict(cfg.config), "Model.language.config"
    file = Path(cfg.path) / "config.json"
    if not file.is_file():
        raise LanguageConfigError(
            f"Model.language.path: no config.json in {cfg.path!r}. Download the Hugging Face checkpoint "
            f"(e.g. Salesforce/blip2-opt-2.7b) and convert it with tools/convert_hf.py, then point `path` "
            f"at the converted language-model folder"
        )
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LanguageConfigError(f"{file}: cannot read the LLM config: {e}") from None
    if not isinstance(settings, dict):
        raise LanguageConfigError(f"{file}: expected a JSON object")
    return settings, str(file)


@contextmanager
def default_dtype(dtype: str) -> Iterator[None]:
    """Create parameters directly in ``dtype``: no float32 copy of a multi-GB LLM on the way."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        yield
    finally:
        paddle.set_default_dtype(previous)


# ---------------------------------------------------------------------------- the interface


class LanguageModel(nn.Layer):
    """A frozen LLM fed with ``inputs_embeds``. Subclasses build the network and run its steps.

    A subclass implements ``_build``, ``embed``, ``_hidden`` (the last hidden states), ``_project``
    (hidden -> logits) and the three decoding steps ``_prefill``, ``_step``, ``_reorder``; the loss,
    the freezing and the search live here once.
    """

    architecture: ClassVar[str] = ""

    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        if cfg.dtype not in _DTYPES:
            raise LanguageConfigError(f"Model.language.dtype: expected one of {', '.join(_DTYPES)}, got {cfg.dtype!r}")
        self.llm_dtype = cfg.dtype
        settings, source = read_settings(cfg)
        with default_dtype(cfg.dtype):
            self._build(settings, source)
        for p in self.parameters():
            p.stop_gradient = True
        fix_frozen_layer_norms(self)
        self._hold_eval()

    # -- to implement per architecture
    def _build(self, settings: dict[str, Any], source: str) -> None:
        raise NotImplementedError

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token embeddings [B, L, embed_dim] in the LLM's dtype: the prompt part of ``inputs_embeds``."""
        raise NotImplementedError

    @property
    def embed_dim(self) -> int:
        """The width of ``inputs_embeds`` (what ``language_projection`` must output)."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def _hidden(self, inputs_embeds: Tensor, attention_mask: Tensor) -> Tensor:
        """Last hidden states [B, L, D] (the LM head's input), in the LLM's dtype."""
        raise NotImplementedError

    def _project(self, hidden: Tensor) -> Tensor:
        """The LM head: [..., D] -> logits [..., V]."""
        raise NotImplementedError

    def _prefill(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, Any]:
        """Run the prompt; return the next-token logits of each row's last attended position and a state."""
        raise NotImplementedError

    def _step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Feed one token per row [N]; return the next-token logits [N, V] and the new state."""
        raise NotImplementedError

    def _reorder(self, state: Any, index: Tensor) -> Any:
        """Keep the rows ``index`` of the state (beam search)."""
        raise NotImplementedError

    # -- frozen and in eval, always
    def train(self, mode: bool = True) -> "LanguageModel":
        """Stays in eval mode (dropout off) whatever ``mode`` says."""
        self._hold_eval()
        return self

    def _hold_eval(self) -> None:
        """Clear the training flags (a parent's ``train()`` sets them on every sublayer directly).

        Only the flags: ``Layer.eval()`` would also switch Paddle's global tracer to eval mode.
        """
        for layer in self.sublayers(include_self=True):
            layer.training = False

    # -- training
    def forward(
        self,
        inputs_embeds: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        return_logits: bool = False,
    ) -> LMOutput:
        """Loss over the label tokens, and the full logits only if asked for.

        ``labels`` [B, L] are aligned with ``inputs_embeds`` (``labels[:, t]`` is the token at
        position t, -100 where there is none); the shift happens here. Without ``return_logits`` the
        LM head runs only at the positions that have a label (fewer FLOPs and no [B, L, V] tensor);
        with it, the loss is computed from the full logits with fixed shapes (no data-dependent
        gather, which devices that compile per shape prefer).
        """
        self._hold_eval()
        mask = _as_mask(attention_mask, inputs_embeds)
        hidden = self._hidden(inputs_embeds, mask)
        if labels is None:
            return LMOutput(_wide(self._project(hidden)), None)
        targets = labels[:, 1:].astype("int64")
        valid = targets != IGNORE_INDEX
        count = valid.astype(_wide_dtype(hidden)).sum()
        if return_logits:
            logits = _wide(self._project(hidden))
            ce = F.cross_entropy(logits[:, :-1], paddle.where(valid, targets, paddle.zeros_like(targets)), reduction="none")
            loss = (ce.squeeze(-1) * valid.astype(logits.dtype)).sum() / paddle.clip(count, min=1.0)
            return LMOutput(logits, loss)
        where = paddle.nonzero(valid.flatten()).squeeze(-1)
        if where.shape[0] == 0:  # no label token: zero loss, still part of the graph
            return LMOutput(None, _wide(hidden).sum() * 0.0)
        picked = paddle.gather(hidden[:, :-1].reshape([-1, hidden.shape[-1]]), where)
        logits = _wide(self._project(picked))
        loss = F.cross_entropy(logits, paddle.gather(targets.flatten(), where), reduction="sum") / count
        return LMOutput(None, loss)

    # -- decoding
    @paddle.no_grad()
    def generate(self, inputs_embeds: Tensor, attention_mask: Tensor | None, **settings: Any) -> Tensor:
        """New token ids [B, T] (int64), T <= max_new_tokens: ``decoding.generate`` over this LLM's
        ``_prefill``/``_step``/``_reorder`` (the module docstring gives the semantics). Every setting
        is a keyword (``DecodeConfig`` fields, ``eos_token_id``, ``pad_token_id``); none has a default."""
        self._hold_eval()
        return decoding.generate(self, inputs_embeds, _as_mask(attention_mask, inputs_embeds), **settings)

def _wide_dtype(x: Tensor) -> str:
    """float32 for half-precision tensors (losses and scores are never computed in half), else x's own."""
    return "float64" if x.dtype == paddle.float64 else "float32"


def _wide(x: Tensor) -> Tensor:
    return x.astype(_wide_dtype(x))


def _as_mask(attention_mask: Tensor | None, inputs_embeds: Tensor) -> Tensor:
    if attention_mask is None:
        return paddle.ones(inputs_embeds.shape[:2], dtype="int64")
    if attention_mask.shape != inputs_embeds.shape[:2]:
        raise ValueError(f"attention_mask {attention_mask.shape} does not match inputs_embeds {inputs_embeds.shape[:2]}")
    return attention_mask.astype("int64")


# ---------------------------------------------------------------------------- OPT

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

    def _build(self, settings: dict[str, Any], source: str) -> None:
        from paddlenlp.transformers import OPTModel

        self.config = opt_config(settings, source)
        self.opt = OPTModel(self.config)

    @property
    def embed_dim(self) -> int:
        return self.config.word_embed_proj_dim

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

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
