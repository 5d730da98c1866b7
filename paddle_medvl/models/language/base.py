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

An encoder-decoder (T5) gives what Hugging Face's ``generate(inputs_embeds=...)`` gives for it: the
encoder runs once, the decoder steps from its start token, which the repetition penalty and the
n-gram ban see as HF's processors do (they read the decoder's input ids); it is not returned.
"""
from __future__ import annotations

import fnmatch
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, NamedTuple

import paddle
import paddle.nn.functional as F
from paddle import Tensor, nn

from ...config import LanguageConfig
from ...data.collate import IGNORE_INDEX
from ...errors import MedVLError
from ...workarounds import fix_frozen_layer_norms
from .. import decoding

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


def language_class(architecture: str) -> type["LanguageModel"]:
    """The family ``Model.language.architecture`` names."""
    cls = _ARCHITECTURES.get(architecture)
    if cls is None:
        known = ", ".join(sorted(_ARCHITECTURES))
        raise LanguageConfigError(f"Model.language.architecture: unknown {architecture!r} (known: {known})")
    return cls


def build_language_model(cfg: LanguageConfig) -> "LanguageModel":
    """The frozen LLM that ``cfg.architecture`` names, with random weights (a checkpoint loads later)."""
    return language_class(cfg.architecture)(cfg)


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
    the freezing and the search live here once. An encoder-decoder (``decoder_only = False``) overrides
    ``_outputs`` (its decoder reads the labels) and ``_labels_after`` (the soft prompt is the encoder's)
    instead of ``_hidden``, and ``start_tokens`` (its decoder start).
    """

    architecture: ClassVar[str] = ""
    decoder_only: ClassVar[bool] = True  # False: an encoder-decoder (data/collate.py lays its batches out so)
    # Sublayers (fnmatch patterns of their names) held in float32 when the LLM is in half precision;
    # their input is cast up (HF's ``_keep_in_fp32_modules``: Flan-T5's FFN output overflows in float16).
    keep_float32: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        if cfg.dtype not in _DTYPES:
            raise LanguageConfigError(f"Model.language.dtype: expected one of {', '.join(_DTYPES)}, got {cfg.dtype!r}")
        self.llm_dtype = cfg.dtype
        settings, source = read_settings(cfg)
        with default_dtype(cfg.dtype):
            self._build(settings, source)
        if cfg.dtype in ("float16", "bfloat16"):
            self._keep_in_float32()
        for p in self.parameters():
            p.stop_gradient = True
        fix_frozen_layer_norms(self)
        self._hold_eval()

    # Hugging Face -> this family: how its tokenizer lays out text (LanguageConfig's text fields)
    hf_text_format: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_hf(cls, settings: dict[str, Any], has_head: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """(our settings, the text format) from a Hugging Face ``text_config``; ``has_head``: the checkpoint
        holds an LM head of its own (``language_model.lm_head.weight``)."""
        return dict(settings), dict(cls.hf_text_format)

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
        return self.config.vocab_size  # every family keeps its paddlenlp config as `self.config`

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

    def start_tokens(self, batch: int) -> Tensor:
        """The tokens the output begins with before anything is generated [B, S] (none for a decoder-only
        LLM fed embeddings; an encoder-decoder's decoder start). The logits processors see them as
        Hugging Face's do, and they are not part of what ``generate`` returns."""
        return paddle.zeros([batch, 0], dtype="int64")

    def _keep_in_float32(self) -> None:
        """New float32 parameters for the ``keep_float32`` layers, holding the values if there are any
        (``Layer.to`` cannot cast the memory-less parameters of a ``skeleton()``, which a checkpoint fills)."""
        for name, layer in self.named_sublayers():
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.keep_float32):
                continue
            for key, param in list(layer.named_parameters(include_sublayers=False)):
                wide = layer.create_parameter(param.shape, dtype="float32",
                                              default_initializer=nn.initializer.Constant(0.0))
                if param._is_initialized():
                    wide.set_value(param.astype("float32"))
                setattr(layer, key, wide)
            layer.register_forward_pre_hook(_inputs_to_float32)

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

        ``labels``: what ``_outputs`` reads them as -- for a decoder-only LLM aligned with
        ``inputs_embeds`` (``labels[:, t]`` is the token at position t, -100 where there is none; the
        shift happens here), for an encoder-decoder the decoder's targets. Without ``return_logits``
        the LM head runs only at the positions that have a label (fewer FLOPs and no [B, L, V]
        tensor); with it, the loss is computed from the full logits with fixed shapes (no
        data-dependent gather, which devices that compile per shape prefer).
        """
        self._hold_eval()
        mask = _as_mask(attention_mask, inputs_embeds)
        hidden, targets = self._outputs(inputs_embeds, mask, labels)
        if labels is None:
            return LMOutput(_wide(self._project(hidden)), None)
        targets = targets.astype("int64")
        valid = targets != IGNORE_INDEX
        count = valid.astype(_wide_dtype(hidden)).sum()
        if return_logits:
            logits = _wide(self._project(hidden))
            ce = F.cross_entropy(logits, paddle.where(valid, targets, paddle.zeros_like(targets)), reduction="none")
            loss = (ce.squeeze(-1) * valid.astype(logits.dtype)).sum() / paddle.clip(count, min=1.0)
            return LMOutput(logits, loss)
        where = paddle.nonzero(valid.flatten()).squeeze(-1)
        if where.shape[0] == 0:  # no label token: zero loss, still part of the graph
            return LMOutput(None, _wide(hidden).sum() * 0.0)
        picked = paddle.gather(hidden.reshape([-1, hidden.shape[-1]]), where)
        logits = _wide(self._project(picked))
        loss = F.cross_entropy(logits, paddle.gather(targets.flatten(), where), reduction="sum") / count
        return LMOutput(None, loss)

    def _outputs(self, inputs_embeds: Tensor, mask: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(the hidden states the logits come from [B, N, D], the label each of them predicts [B, N]).

        A decoder-only LLM: the hidden states over ``inputs_embeds``, each predicting the next
        position's label (the last predicts nothing). An encoder-decoder overrides this.
        """
        hidden = self._hidden(inputs_embeds, mask)
        if labels is None:
            return hidden, None
        ignore = paddle.full([labels.shape[0], 1], IGNORE_INDEX, dtype=labels.dtype)
        return hidden, paddle.concat([labels[:, 1:], ignore], axis=1)

    def prompted(self, prefix: Tensor, input_ids: Tensor, attention_mask: Tensor, labels: Tensor,
                 return_logits: bool = False) -> LMOutput:
        """The loss of a batch from ``data/collate.py`` behind a soft prompt ``prefix`` [B, P, D] (BLIP-2's
        projected queries): ``prefix`` goes in front of the text's embeddings, and for a decoder-only LLM
        its positions get no label; an encoder-decoder's labels are its decoder's and stay as they are."""
        embeds, mask = self.join(prefix, input_ids, attention_mask)
        return self(embeds, mask, self._labels_after(prefix, labels), return_logits=return_logits)

    def join(self, prefix: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``[prefix; embed(input_ids)]`` and its mask (the prefix is always attended)."""
        batch, length = prefix.shape[0], prefix.shape[1]
        embeds = paddle.concat([prefix, self.embed(input_ids)], axis=1)
        ones = paddle.ones([batch, length], dtype=attention_mask.dtype)
        return embeds, paddle.concat([ones, attention_mask], axis=1)

    def _labels_after(self, prefix: Tensor, labels: Tensor) -> Tensor:
        """``labels`` as ``forward`` reads them once ``prefix`` stands in front of the text."""
        ignore = paddle.full([labels.shape[0], prefix.shape[1]], IGNORE_INDEX, dtype=labels.dtype)
        return paddle.concat([ignore, labels], axis=1)

    # -- decoding
    @paddle.no_grad()
    def generate(self, inputs_embeds: Tensor, attention_mask: Tensor | None, **settings: Any) -> Tensor:
        """New token ids [B, T] (int64), T <= max_new_tokens: ``decoding.generate`` over this LLM's
        ``_prefill``/``_step``/``_reorder`` (the module docstring gives the semantics). Every setting
        is a keyword (``DecodeConfig`` fields, ``eos_token_id``, ``pad_token_id``); none has a default."""
        self._hold_eval()
        return decoding.generate(self, inputs_embeds, _as_mask(attention_mask, inputs_embeds), **settings)

def _inputs_to_float32(layer: nn.Layer, inputs: tuple) -> tuple:
    return tuple(x.astype("float32") if isinstance(x, Tensor) and x.dtype != paddle.float32 else x for x in inputs)


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
