"""Experiment configs: YAML files -> typed dataclasses, checked before any work starts.

A config file holds sections (``Global:``, later ``Model:``, ``Data:``, ``Train:`` ...) whose
keys are the fields of the dataclasses below. ``_base_: other.yaml`` (or a list) inherits from
other files, relative to the including file; later files and then command-line overrides
``-o Section.key=value`` win. Any unknown or mistyped key is an error that names the key and
the file (or the override) it came from.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from .errors import MedVLError


class ConfigError(MedVLError, ValueError):
    """A config that cannot be used; the message names the key and where it was set."""


@dataclass
class GlobalConfig:
    """Run-wide settings."""

    device: str = "auto"  # auto | cpu | gpu[:N] | npu[:N] | <custom device type>[:N]
    seed: int = 42
    resume: str = ""  # training: "" = start afresh | auto = the newest complete checkpoint in Train.output_dir | a checkpoint folder


@dataclass
class DataConfig:
    """Which data set, where, and how its examples become tensors."""

    format: str = ""  # imageclef_caption | rocov2 | medvqa_gi | iu_xray | mimic_cxr
    root: str = ""  # the data set folder; no path read from its files may leave it
    image_dir: str = ""  # images folder under root; "" = the format's own ("{split}" or "images")
    train_split: str = "train"
    val_split: str = "valid"
    image_size: int = 224  # 224 or 364 (paper 000)
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # RandomResizedCrop for training
    hflip: bool = False  # flipping a radiograph swaps left and right findings: off unless asked for
    views: str = "first"  # first | all: how a study's several images reach the model (see data/README)
    prompt: str = ""  # template filled from each record: {question} (VQA), {prior} (reports); "" = the format's default
    max_prompt_len: int = 32  # fixed padded lengths: NPUs compile one kernel per shape
    max_target_len: int = 128
    on_error: str = "raise"  # raise | skip: skip drops bad records, counts them and reports at the end
    num_workers: int = 2
    # format-specific
    val_fraction: float = 0.1  # medvqa_gi: the image-level validation split (paper 001)
    split_seed: int = 42
    reports_csv: str | None = None  # iu_xray: indiana_reports.csv, for the prior-information prompt
    labels_csv: str | None = None  # mimic_cxr: CheXbert labels CSV, for the prior-information prompt
    labels_encoding: str = "class_index"  # class_index (0 blank 1 pos 2 neg 3 uncertain) | chexbert_csv (1 / 0 / -1 / blank)
    clean_reports: bool = True  # R2Gen's report cleaning


@dataclass
class VisionConfig:
    """EVA ViT. Defaults: ViT-g/14 as BLIP-2 uses it (39 blocks; EVA-CLIP-g's last one dropped)."""

    image_size: int = 224  # the size the position embeddings are for; other sizes interpolate (bicubic)
    patch_size: int = 14
    hidden_size: int = 1408
    num_layers: int = 39
    num_heads: int = 16
    mlp_dim: int = 6144
    layer_norm_eps: float = 1e-6
    recompute: bool = False  # recompute each block in backward (use_reentrant=False)


@dataclass
class QFormerConfig:
    """The BERT-base Q-Former of BLIP-2 / InstructBLIP."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    num_query_tokens: int = 32
    cross_attention_frequency: int = 2  # cross-attention to the image in every N-th layer
    layer_norm_eps: float = 1e-12
    vocab_size: int = 30523  # BERT's + [DEC]
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    dec_token_id: int = 30522  # [DEC]: replaces [CLS] as the first token of the text decoder's input (LAVIS)
    dropout: float = 0.1  # hidden and attention-probability dropout while training (BERT's, kept by LAVIS)
    label_smoothing: float = 0.1  # of the Q-Former text (concept) loss; LAVIS's BertLMHeadModel uses 0.1
    text: bool = True  # text embeddings + LM head: image-grounded text generation (paper 000's concept loss)
    instruction: bool = False  # InstructBLIP: the instruction text also enters the Q-Former
    recompute: bool = False
    tokenizer: str = ""  # a local BERT vocab folder (bert-base-uncased); only needed when the Q-Former takes text


@dataclass
class LanguageConfig:
    """The frozen LLM, from paddlenlp."""

    architecture: str = "opt"  # opt | t5 (chatglm in a later issue) | none (no LLM: the Q-Former writes the text)
    path: str = ""  # a local folder with the LLM's paddlenlp config.json (weights come from the checkpoint)
    config: dict = field(default_factory=dict)  # architecture settings for a new random LLM (tests, demo)
    dtype: str = "float32"  # float32 | float16 | bfloat16 (the frozen LLM may be held in half precision) | float64
    # how this LLM wants its text (data/collate.py TextFormat)
    add_bos: bool = True
    eos_text: str = "\n"
    eos_token: bool = False
    prompt_eos: bool = False  # T5: the prompt ends with </s>, as its tokenizer writes it
    # a local tokenizer folder, as paddlenlp or Hugging Face write it (tokenizer_config.json + vocab
    # files; for OPT: the Hugging Face checkpoint folder of Salesforce/blip2-opt-2.7b holds them)
    tokenizer: str = ""


@dataclass
class LoRAConfig:
    """Low-rank adapters on the linear layers whose names match ``targets`` (fnmatch patterns over the
    names inside the model, e.g. ``language_model.t5.*.SelfAttention.q``; a fused projection that
    declares parts takes a part suffix: ``vision_model.encoder.layers.*.self_attn.qkv.q``)."""

    targets: list[str] = field(default_factory=list)
    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input, in training only


@dataclass
class ModelConfig:
    """A BLIP-2-style model: vision encoder -> Q-Former -> projection -> frozen LLM."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    pretrained: str = ""  # a converted checkpoint folder (tools/convert_hf.py) to start from
    caption_loss_weight: float = 1.0
    concept_loss_weight: float = 0.0  # paper 000 stage 1: 1.0; stage 2: 0.0
    # ImageCLEF concept detection as a multi-label head on the query outputs (not in paper 000): the
    # number of CUIs in the data's mapping file (0 = no head), and the weight of its loss
    concept_classes: int = 0
    concept_detection_weight: float = 0.0
    lora: list[LoRAConfig] = field(default_factory=list)  # adapter groups (paper 002); models/lora.py


@dataclass
class DecodeConfig:
    """Generation settings; LAVIS's caption defaults are beams 5, max 30, min 8."""

    num_beams: int = 5
    max_new_tokens: int = 30
    min_new_tokens: int = 8
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0


@dataclass
class EvalConfig:
    """Prediction files and scoring (tools/predict.py, tools/eval.py, validation during training)."""

    task: str = ""  # caption | vqa | report; "" = the task of Data.format (eval/evaluate.py FORMAT_TASKS)
    postprocess: bool = True  # repetition removal on generated captions and reports (paper 000)
    bertscore_model: str = ""  # a local folder of microsoft/deberta-xlarge-mnli; "" = BERTScore not computed
    meteor: bool = True  # METEOR 1.5 (needs java; ~20 s to start)
    batch_size: int = 8  # images per generation batch (and BERTScore batch)
    output: str = ""  # the predictions file tools/predict.py writes (and tools/eval.py reads) by default
    report_cleaning: str = ""  # iu_xray | mimic_cxr | none: R2Gen cleaning before report metrics; "" = Data.format's


@dataclass
class ParamGroupConfig:
    """Trainable parameters whose names match one of ``patterns`` (regular expressions, ``re.match``
    from the start of the name) get their own learning rate and weight decay."""

    patterns: list[str] = field(default_factory=list)
    lr: float | None = None  # None = Train.lr
    weight_decay: float | None = None  # None = Train.weight_decay (biases and norms never decay)


@dataclass
class TrainConfig:
    """Fine-tuning (``tools/train.py``; the engine maps this onto paddlenlp's ``TrainingArguments``)."""

    output_dir: str = "output"  # checkpoints (checkpoint-<step>/), final/ weights, VisualDL logs
    epochs: float = 1.0
    max_steps: int = 0  # > 0: stop after this many optimizer steps (instead of Train.epochs)
    batch_size: int = 8  # per device; the global batch is batch_size x devices x grad_accum
    grad_accum: int = 1
    # Which parameters train: names matching a `trainable` pattern and no `frozen` pattern (regular
    # expressions, re.match). Everything else is frozen (stop_gradient, no optimizer state).
    trainable: list[str] = field(default_factory=lambda: [r"vision_model\.", r"query_tokens", r"qformer\.", r"language_projection\."])
    frozen: list[str] = field(default_factory=list)
    lr: float = 1e-5
    weight_decay: float = 0.05  # AdamW's decoupled decay; never on biases and norm weights (parameters with ndim < 2)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    param_groups: list[ParamGroupConfig] = field(default_factory=list)  # the first group a parameter matches wins
    schedule: str = "cosine"  # cosine | linear | constant, each after a linear warm-up from 0
    warmup_steps: int = 0
    min_lr: float = 0.0  # where cosine and linear end
    max_grad_norm: float = 1.0  # global-norm clipping; 0 = off
    amp: str = "auto"  # auto (the device's default: off on cpu) | off | float16 | bfloat16
    amp_level: str = "O1"  # O1: matmuls in half precision, layer norms / softmax / the loss in float32
    loss_scale: float = 32768.0  # float16's initial dynamic loss scale
    # float16's loss scaler skips a step whose gradients overflow and lowers the scale; this many skips
    # in a row stop training (the loss is diverging, not the scale settling). Without a scaler, the
    # first non-finite loss stops training.
    max_skipped_steps: int = 20
    log_steps: int = 10
    eval_steps: int = 0  # validate every N steps; 0 = at the end of each epoch; < 0 = only once training ends (Data.val_split "" = never)
    eval_samples: int = 64  # validation on the first N records of Data.val_split; 0 = all
    save_steps: int = 0  # checkpoint every N steps; 0 = at the end of each epoch
    keep_last: int = 2  # checkpoints kept besides the best one
    best_metric: str = ""  # a validation metric (loss, BLEU-4, ROUGE-1, accuracy, ...): keep its best checkpoint; "" = none
    save_frozen: bool = False  # checkpoints also hold frozen weights (otherwise they name Model.pretrained for them)
    visualdl: bool = False  # VisualDL scalars under output_dir/visualdl
    sharding: str = ""  # "" = data parallel | stage1 (optimizer states sharded) | stage2 (+ gradients), with fleet


@dataclass
class Config:
    """The whole experiment. Sections are added by the issues that need them."""

    Global: GlobalConfig = field(default_factory=GlobalConfig)
    Data: DataConfig = field(default_factory=DataConfig)
    Model: ModelConfig = field(default_factory=ModelConfig)
    Decode: DecodeConfig = field(default_factory=DecodeConfig)
    Eval: EvalConfig = field(default_factory=EvalConfig)
    Train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------- reading files


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (no tags that build objects), but a key written twice in one
    mapping is an error: safe_load keeps the last silently, so a second ``Train:`` section would
    drop the first one's settings without a word."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(f"{key_node.start_mark.name}:{line}: key {key!r} written twice "
                              f"(first on line {seen[key]}); one mapping takes each key once")
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(into: dict, new: dict, origin: dict, source: str, prefix: str = "") -> None:
    """Deep-merge ``new`` into ``into``; ``origin`` remembers which file set each dotted key."""
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origin, source, dotted + ".")
        else:
            into[key] = value
            origin[dotted] = source
            if isinstance(value, dict):  # every key below a new mapping comes from this file
                for sub in _flatten(value, dotted + "."):
                    origin[sub] = source


def _flatten(d: dict, prefix: str) -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
    return out


def _load_tree(path: Path, origin: dict, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"{path}: _base_ inheritance loops: {cycle}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names")
    tree: dict = {}
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: _base_ file {base!r} not found (looked at {base_path})")
        # The recursive load already recorded where each of the base's keys was set.
        _merge(tree, _load_tree(base_path, origin, (*chain, path)), {}, "")
    _merge(tree, data, origin, str(path))
    return tree


# ---------------------------------------------------------------------------- types


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, from_text: bool) -> Any:
    """Check ``value`` against the annotation ``tp``; text from ``-o`` is converted to it."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (from_text and str(value).lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where, from_text)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        if from_text and isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{where}[{i}]", False) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if from_text and isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):  # e.g. the items of a list of sections
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        source, _, dotted = where.rpartition(": ")
        return _build(tp, value, _SameSource(source), f"{dotted}.")
    if tp is Any:
        return yaml.safe_load(value) if from_text and isinstance(value, str) else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r} ({type(value).__name__}); quote it")
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


class _SameSource(dict):
    """The origin map of a section that came as one value (a list item): every key is from ``source``."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def get(self, key: str, default: Any = None) -> str:
        return self.source


def _build(cls: type, data: dict, origin: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        where = f"{origin.get(dotted, '<defaults>')}: {dotted}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{origin.get(dotted, '<defaults>')}: unknown key {dotted!r}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a section (a mapping of keys), got {value!r}")
            kwargs[key] = _build(tp, value, origin, dotted + ".")
        else:
            value = _parse_nested_overrides(value, origin, dotted)
            kwargs[key] = _coerce(value, tp, where, origin.get(dotted, "").startswith("-o "))
    return cls(**kwargs)


def _parse_nested_overrides(value: Any, origin: dict, dotted: str) -> Any:
    """Inside a free-form mapping (``Model.language.config``) no annotation types an ``-o`` value,
    so it is read as YAML: ``-o Model.language.config.num_hidden_layers=2`` gives 2, not "2"."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        path = f"{dotted}.{key}"
        if isinstance(item, str) and origin.get(path, "").startswith("-o "):
            item = yaml.safe_load(item)
        out[key] = _parse_nested_overrides(item, origin, path)
    return out


# ---------------------------------------------------------------------------- public API


def apply_overrides(tree: dict, overrides: Sequence[str], origin: dict) -> None:
    """``Section.key=value`` strings into the raw tree (values stay text until typed)."""
    for text in overrides:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"-o {text}: an override is Section.key=value")
        node, path = tree, ""
        *parents, leaf = key.split(".")
        for part in parents:
            path += part
            if part not in node:
                node[part] = {}
                origin[path] = f"-o {text}"
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"-o {text}: {path!r} is a value, not a section")
            path += "."
        node[leaf] = value
        origin[key] = f"-o {text}"


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), schema: type = Config,
                base: dict | None = None, base_source: str = "") -> Any:
    """Read ``path`` (with its ``_base_`` chain), apply overrides, and type-check everything.

    ``base``: settings under all of that, as if ``path`` began with ``_base_`` naming them
    (``base_source`` says where they came from in errors), e.g. a checkpoint's saved settings."""
    origin: dict[str, str] = {}
    tree: dict = {}
    if base:
        _merge(tree, copy.deepcopy(base), origin, base_source or "<base settings>")
    if path:
        _merge(tree, _load_tree(Path(path), origin), {}, "")
    apply_overrides(tree, overrides, origin)
    return _build(schema, tree, origin)


def get_field(obj: Any, dotted: str) -> Any:
    """``obj.a.b`` for ``"a.b"``: config fields named as in ``-o`` overrides."""
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def set_field(obj: Any, dotted: str, value: Any) -> None:
    """``obj.a.b = value`` for ``"a.b"``."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, leaf, value)


def dump_yaml(data: dict) -> str:
    """``data`` as the YAML the project writes (config.yaml of runs and checkpoints): keys in order."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def to_dict(config: Any) -> dict:
    """The config as plain data, e.g. to save beside a checkpoint."""
    return dataclasses.asdict(config)


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The PaddleClas habit: ``-c config.yaml -o Section.key=value ...``."""
    parser.add_argument("-c", "--config", help="experiment YAML file")
    parser.add_argument(
        "-o", "--override", action="extend", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. -o Global.device=npu",
    )
    return parser
