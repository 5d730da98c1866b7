"""The pieces an experiment is made of, built from its config: tokenizers, the model, the collator.

Shared by ``tools/predict.py``, ``tools/eval.py`` and training, so that all of them read the same
config the same way:

    cfg = load_run_config(config, overrides, checkpoint)  # prediction: a checkpoint's saved settings under the config's
    cfg.Model = resolve_model_config(cfg.Model)   # the checkpoint's architecture, this run's settings
    tokenizer, qformer_tokenizer = build_tokenizers(cfg.Model, training=True)
    model = build_model(cfg.Model)                 # Model.pretrained, or random weights
    collate = build_collator(cfg, tokenizer, qformer_tokenizer)

Nothing is downloaded: tokenizers and checkpoints are local folders, and a missing one is an error
that says where to get it.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

from .config import Config, LanguageConfig, ModelConfig, QFormerConfig, get_field, load_config, set_field, to_dict
from .data.collate import Collator, TextFormat
from .errors import MedVLError
from .models.language import NO_LLM, language_class

# With Model.pretrained, the checkpoint's config.yaml is the model (its sizes, its LLM settings and
# how that LLM wants its text); only these run-time settings come from the experiment's config.
RUNTIME_FIELDS = (
    "language.dtype",
    "language.tokenizer",
    "qformer.tokenizer",
    "vision.recompute",
    "qformer.recompute",
    "qformer.dropout",
    "qformer.label_smoothing",
    "caption_loss_weight",
    "concept_loss_weight",
    "concept_classes",
    "concept_detection_weight",
    "lora",  # adapters may be added on top of a checkpoint's (paper 002's stage 2); empty keeps the checkpoint's
)
# Tokenizer class names in Hugging Face folders -> paddlenlp's class for the same files
# (the BLIP-2 OPT checkpoints say "GPT2Tokenizer", which paddlenlp's AutoTokenizer cannot resolve).
HF_TOKENIZER_CLASSES = {
    "GPT2Tokenizer": "GPTTokenizer",
    "GPT2TokenizerFast": "GPTTokenizer",
    "BertTokenizerFast": "BertTokenizer",
    "T5TokenizerFast": "T5Tokenizer",
}
# The tokenizer of each LLM architecture, for a folder whose tokenizer_config.json names no class.
ARCHITECTURE_TOKENIZERS = {"opt": "GPTTokenizer", "t5": "T5Tokenizer"}
TOKENIZER_HELP = {
    "opt": "for BLIP-2 OPT-2.7B, the Hugging Face checkpoint folder of Salesforce/blip2-opt-2.7b holds "
           "vocab.json, merges.txt and tokenizer_config.json (huggingface-cli download Salesforce/blip2-opt-2.7b "
           "--include '*.json' '*.txt' on a machine with internet)",
    "t5": "for InstructBLIP Flan-T5-XL, the Hugging Face checkpoint folder of Salesforce/instructblip-flan-t5-xl "
          "holds spiece.model and tokenizer_config.json (huggingface-cli download Salesforce/instructblip-flan-t5-xl "
          "--include '*.json' '*.model' on a machine with internet)",
}


class BuildError(MedVLError, ValueError):
    """A config whose parts cannot be built; the message names the key and what to do."""


# ---------------------------------------------------------------------------- model config


def resolve_model_config(model: ModelConfig) -> ModelConfig:
    """The model this run builds: ``model`` itself, or with ``Model.pretrained`` the checkpoint's
    config.yaml with this config's ``RUNTIME_FIELDS`` (a tokenizer path left empty here keeps the
    checkpoint's), and without its LLM when this config says ``Model.language.architecture: none``.
    Idempotent."""
    if not model.pretrained:
        return model
    from .models.blip2 import checkpoint_config

    resolved = checkpoint_config(Path(model.pretrained))
    for name in RUNTIME_FIELDS:
        value = get_field(model, name)
        if (name.endswith("tokenizer") or name == "lora") and not value:
            continue
        set_field(resolved, name, copy.deepcopy(value))
    if model.language.architecture == NO_LLM:
        resolved.language = copy.deepcopy(model.language)
    resolved.pretrained = model.pretrained
    return resolved


def load_run_config(config: str | Path | None, overrides: Sequence[str] = (), checkpoint: str | Path | None = None) -> Config:
    """The config of a run over a trained checkpoint (``tools/predict.py --checkpoint``).

    Without ``checkpoint``: ``config`` and ``overrides``, as :func:`~paddle_medvl.config.load_config`.
    With it, the checkpoint's saved settings (its config.yaml: Model, with its own copies of the
    tokenizers, and the run's Data, Decode and Eval) are the base, ``config`` applies over them key by
    key, as if it began with ``_base_: <checkpoint>/config.yaml``, and ``overrides`` last; then
    ``Model.pretrained`` is the checkpoint. So the checkpoint alone predicts as its training run
    validated, and ``-o Decode.num_beams=1`` changes just that. The architecture and weights always
    come from the checkpoint (:func:`resolve_model_config`).
    """
    if checkpoint is None:
        return load_config(config, overrides)
    from .models.blip2 import RUN_SECTIONS, checkpoint_settings

    folder = Path(checkpoint)
    saved = checkpoint_settings(folder)  # its folders as absolute paths
    tree = {name: to_dict(getattr(saved, name)) for name in ("Model", *RUN_SECTIONS)}
    cfg = load_config(config, overrides, base=tree, base_source=str(folder / "config.yaml"))
    cfg.Model.pretrained = str(folder)
    return cfg


def build_model(model: ModelConfig):
    """A :class:`~paddle_medvl.models.blip2.Blip2`: from ``Model.pretrained`` if set, else random weights
    (seed Paddle first for a reproducible random model)."""
    from .models.blip2 import Blip2

    resolved = resolve_model_config(model)
    if resolved.pretrained:
        return Blip2.from_pretrained(resolved.pretrained, resolved)
    return Blip2(resolved)


# ---------------------------------------------------------------------------- tokenizers


def _tokenizer_class(folder: Path, default: str | None, key: str):
    import paddlenlp.transformers as transformers

    config_file = folder / "tokenizer_config.json"
    name = None
    if config_file.is_file():
        try:
            settings = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BuildError(f"{key}: cannot read {config_file}: {e}") from None
        if isinstance(settings, dict):
            name = settings.get("init_class") or settings.get("tokenizer_class")
    name = HF_TOKENIZER_CLASSES.get(name, name) or default
    if not name:
        raise BuildError(f"{key}: {config_file} names no tokenizer class (tokenizer_class) and there is no default here")
    cls = getattr(transformers, name, None)
    if cls is None:
        raise BuildError(f"{key}: paddlenlp has no tokenizer class {name!r} (named by {config_file})")
    return cls


def _load_tokenizer(folder_text: str, key: str, default: str | None, help_text: str):
    if not folder_text:
        raise BuildError(f"{key} is not set: give the local folder with the tokenizer files ({help_text})")
    folder = Path(folder_text)
    if not folder.is_dir():
        raise BuildError(f"{key}: {folder} is not a folder ({help_text})")
    cls = _tokenizer_class(folder, default, key)
    try:
        return cls.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, AssertionError) as e:
        raise BuildError(f"{key}: cannot load a {cls.__name__} from {folder}: {e} ({help_text})") from None


def build_tokenizer(language: LanguageConfig):
    """The LLM's tokenizer from ``Model.language.tokenizer`` (a local folder; nothing is downloaded)."""
    help_text = TOKENIZER_HELP.get(language.architecture, "the LLM's tokenizer files from its Hugging Face checkpoint")
    tokenizer = _load_tokenizer(
        language.tokenizer, "Model.language.tokenizer", ARCHITECTURE_TOKENIZERS.get(language.architecture), help_text
    )
    if tokenizer.pad_token_id is None:
        raise BuildError(f"Model.language.tokenizer: the tokenizer in {language.tokenizer} has no pad token")
    return tokenizer


def build_qformer_tokenizer(qformer: QFormerConfig):
    """The Q-Former's BERT tokenizer from ``Model.qformer.tokenizer`` (vocab.txt of bert-base-uncased)."""
    return _load_tokenizer(
        qformer.tokenizer, "Model.qformer.tokenizer", "BertTokenizer",
        "a bert-base-uncased folder with vocab.txt, e.g. from the Hugging Face repository google-bert/bert-base-uncased",
    )


def build_tokenizers(model: ModelConfig, training: bool = False) -> tuple[Any, Any]:
    """(text tokenizer, Q-Former tokenizer or None). The text tokenizer is the LLM's, or with no LLM the
    Q-Former's; the Q-Former's is built when the Q-Former reads text: an instruction, no LLM, or (in
    training) the concept loss."""
    no_llm = model.language.architecture == NO_LLM
    qformer_text = model.qformer.instruction or no_llm or (training and model.concept_loss_weight > 0)
    qformer_tokenizer = build_qformer_tokenizer(model.qformer) if qformer_text else None
    if no_llm:
        return qformer_tokenizer, qformer_tokenizer
    return build_tokenizer(model.language), qformer_tokenizer


def generation_token_ids(tokenizer, language: LanguageConfig) -> tuple[int, int]:
    """(eos, pad) for ``generate``: the token that ends a target (``eos_text``, e.g. OPT's "\\n" as in
    BLIP-2, or the tokenizer's eos with ``eos_token``; with no LLM, the Q-Former tokenizer's [SEP]) and
    the tokenizer's pad."""
    if language.architecture == NO_LLM:
        return int(tokenizer.sep_token_id), int(tokenizer.pad_token_id)
    if language.eos_token or not language.eos_text:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise BuildError("Model.language: the tokenizer has no eos token to end generation")
    else:
        ids = tokenizer(language.eos_text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise BuildError(
                f"Model.language.eos_text {language.eos_text!r} is {len(ids)} tokens for this tokenizer; "
                "generation stops at one token, so it must be exactly one"
            )
        eos = ids[0]
    return int(eos), int(tokenizer.pad_token_id)


# ---------------------------------------------------------------------------- batches


def text_format(language: LanguageConfig) -> TextFormat:
    """How the LLM wants its text: its family's layout (decoder-only or encoder-decoder) and the config's
    special tokens. With no LLM the LLM fields of a batch go unused: plain text."""
    if language.architecture == NO_LLM:
        return TextFormat(decoder_only=True)
    return TextFormat(decoder_only=language_class(language.architecture).decoder_only, add_bos=language.add_bos,
                      eos_text=language.eos_text, eos_token=language.eos_token, prompt_eos=language.prompt_eos)


def build_collator(cfg: Config, tokenizer, qformer_tokenizer=None) -> Collator:
    """Fixed-length batches (``Data.max_prompt_len``, ``Data.max_target_len``). With a Q-Former tokenizer
    the Q-Former also gets text: the prompt (InstructBLIP's instruction, ``Model.qformer.instruction``)
    or else the concept sentence (paper 000's concept loss), or with no LLM the caption itself."""
    if cfg.Model.qformer.instruction and qformer_tokenizer is None:
        raise BuildError("Model.qformer.instruction: the Q-Former reads the instruction, so it needs its tokenizer (Model.qformer.tokenizer)")
    kwargs: dict[str, Any] = {}
    if qformer_tokenizer is not None:
        instruction = cfg.Model.qformer.instruction
        field_name = "prompt" if instruction else "target" if cfg.Model.language.architecture == NO_LLM else "concept_sentence"
        kwargs = dict(
            qformer_tokenizer=qformer_tokenizer,
            qformer_field=field_name,
            max_qformer_len=cfg.Data.max_prompt_len if instruction else cfg.Data.max_target_len,
        )
    if cfg.Model.concept_detection_weight > 0:
        kwargs["concept_classes"] = cfg.Model.concept_classes
    return Collator(tokenizer, text_format(cfg.Model.language), cfg.Data.max_prompt_len, cfg.Data.max_target_len, **kwargs)
