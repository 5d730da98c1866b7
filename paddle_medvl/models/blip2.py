"""BLIP-2: EVA ViT -> ln_vision -> Q-Former -> language projection -> frozen LLM.

Built from a :class:`~paddle_medvl.config.ModelConfig` and nothing else: sizes, the LLM's
architecture and the loss weights are config values. The projected query outputs are prepended to
the prompt's token embeddings (BLIP-2's "soft visual prompt"); the LLM is frozen and its gradients
flow only into the projection, the Q-Former, the queries and (when trainable) the ViT.

Losses (paper 000):

* caption loss: the LLM's language-modelling loss on the target tokens (prompt tokens are -100);
* concept loss: the Q-Former's image-grounded text-generation loss on the concept sentence
  ("The image shows c1, ..., cn."), when ``concept_loss_weight > 0`` and the batch carries it;
* concept detection (not in paper 000): a multi-label head on the flattened query outputs predicts
  the image's CUIs (ImageCLEF's other subtask), binary cross-entropy, when ``concept_classes > 0``;
* ``loss = caption_loss_weight * caption + concept_loss_weight * concept
  + concept_detection_weight * detection``.

A study's several views ([B, V, 3, H, W]) each go through the ViT and the Q-Former; their
query outputs are concatenated (V x Q tokens reach the LLM).

Without an LLM (``Model.language.architecture: none``, paper 000's Table 3 "ViT-g Q-Former" row)
the Q-Former's own text decoder writes the caption: the caption loss is its language-modelling
loss on the caption (in the Q-Former's tokenizer), and ``generate`` decodes with it.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Collection, Iterator, NamedTuple

import paddle
from paddle import Tensor, nn
from paddle.nn import functional as F

from ..atomic import atomic_path, atomic_write, replace_folder
from ..config import Config, ConfigError, DecodeConfig, ModelConfig, dump_yaml, get_field, load_config, set_field, to_dict
from ..workarounds import fix_frozen_layer_norms, stride_kernels
from .eva_vit import EvaViT
from . import decoding
from .language import NO_LLM, build_language_model
from .lora import apply_lora, lora_layers, set_training as set_lora_training
from .qformer import QFormer, TextDecoder, create_query_tokens

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.yaml"
# The Q-Former's text parts (word/position embeddings, text feed-forward branch, LM head): only the
# concept loss or an instruction reaches them, and BLIP-2 caption checkpoints lack them.
QFORMER_TEXT_PARTS = r"qformer\.(embeddings\.|cls\.|encoder\.layer\.\d+\.(intermediate|output)\.)"
# The run's sections a checkpoint carries beside Model, so that the folder alone predicts as the run
# validated: the image transform and prompt (Data), decoding (Decode), task and post-processing (Eval).
RUN_SECTIONS = ("Data", "Decode", "Eval")
# Files of a tokenizer folder (paddlenlp's and Hugging Face's names); a checkpoint copies these and no
# others, since the folder may be a whole Hugging Face checkpoint with gigabytes of weights beside them.
TOKENIZER_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json", "vocab.json",
    "vocab.txt", "merges.txt", "chat_template.json", "chat_template.jinja", "*.model", "*.tiktoken",
)
# Model fields naming a local folder the model needs -> (the copy's name inside a checkpoint, the files
# copied). The checkpoint's config.yaml names the copy relative to the checkpoint, so the folder can move.
BUNDLED_FOLDERS = {
    "language.tokenizer": ("tokenizer", TOKENIZER_FILES),
    "qformer.tokenizer": ("qformer_tokenizer", TOKENIZER_FILES),
    "language.path": ("language", ("config.json",)),
}
# Architectures and model types of Hugging Face BLIP-2 folders (config.json), and the LLM key prefixes
# of their safetensors (ours are paddlenlp's: language_model.opt.*), to tell them from our checkpoints.
HF_ARCHITECTURES = ("Blip2ForConditionalGeneration", "InstructBlipForConditionalGeneration")
HF_MODEL_TYPES = ("blip-2", "instructblip")
HF_LLM_PREFIXES = ("language_model.model.", "language_model.lm_head.", "language_model.shared.",
                   "language_model.encoder.", "language_model.decoder.")


class Blip2Output(NamedTuple):
    loss: Tensor
    caption_loss: Tensor
    concept_loss: Tensor | None
    logits: Tensor | None  # the LLM's logits (decoder-only: over [queries; prompt; target]; encoder-decoder:
    # over the target), only when asked for
    detection_loss: Tensor | None = None


class Blip2(nn.Layer):
    """The composed model; parameter names follow Hugging Face's ``Blip2ForConditionalGeneration``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = EvaViT(config.vision)
        self.query_tokens = create_query_tokens(config.qformer)
        self.qformer = QFormer(config.qformer, config.vision.hidden_size)
        if config.language.architecture == NO_LLM:
            _check_qformer_only(config)
            self.language_model = self.language_projection = None
        else:
            self.language_model = build_language_model(config.language)
            self.language_projection = nn.Linear(config.qformer.hidden_size, self.language_model.embed_dim)
        if config.concept_detection_weight > 0 and not config.concept_classes:
            raise ConfigError("Model.concept_detection_weight > 0 needs the concept head: set Model.concept_classes "
                              "to the number of CUIs in the data's mapping file")
        self.concept_head = _concept_head(config) if config.concept_classes else None
        fix_frozen_layer_norms(self)  # any part may be frozen later, by pattern
        apply_lora(self, config.lora)  # adapters on the layers the config names (paper 002)

    def train(self, mode: bool = True) -> "Blip2":
        """Paddle's ``train()`` sets every sublayer's flag directly; the frozen LLM (and a frozen
        ViT) must stay in eval mode, so their own ``train`` has the last word."""
        super().train(mode)
        if self.language_model is not None:
            self.language_model.train(mode)
        self.vision_model.train(mode)
        set_lora_training(self, mode)  # adapter dropout has a flag of its own (the frozen LLM clears `training`)
        return self

    def eval(self) -> "Blip2":
        """Paddle's ``eval()`` sets the flags directly too (it does not call ``train(False)``)."""
        super().eval()
        set_lora_training(self, False)
        return self

    def idle_parameters(self) -> list[str]:
        """Parameters no configured loss reaches: the Q-Former's text embeddings, text feed-forward
        branch and LM head when neither the concept loss nor an instruction gives it text (paper 000's
        stage 2), and the concept head when its loss has no weight. Training leaves them frozen, so data
        parallelism meets no unused trainable parameter."""
        idle = []
        if self.concept_head is not None and self.config.concept_detection_weight <= 0:
            idle.append(r"concept_head\.")
        if not (self.language_model is None or self.config.qformer.instruction or self.config.concept_loss_weight > 0):
            idle.append(QFORMER_TEXT_PARTS)
        if not idle:
            return []
        pattern = re.compile("|".join(idle))
        return [name for name, _ in self.named_parameters() if pattern.match(name)]

    # ------------------------------------------------------------------ image -> soft prompt

    def _image_features(self, pixel_values: Tensor) -> tuple[Tensor, int]:
        """[B, 3, H, W] or [B, V, 3, H, W] -> ViT features [B*V, N, D] and V."""
        views = 1
        if pixel_values.ndim == 5:
            views = pixel_values.shape[1]
            pixel_values = pixel_values.reshape([-1, *pixel_values.shape[2:]])
        return self.vision_model(pixel_values), views

    def _soft_prompt(self, query_output: Tensor, views: int) -> Tensor:
        """Query outputs [B*V, Q, H] -> projected [B, V*Q, D] in the LLM's dtype."""
        projected = self.language_projection(query_output)
        projected = projected.reshape([-1, views * projected.shape[1], projected.shape[2]])
        return projected.astype(self.language_model.llm_dtype)

    def encode_images(
        self, pixel_values: Tensor, instruction_ids: Tensor | None = None, instruction_mask: Tensor | None = None
    ) -> Tensor:
        """The soft visual prompt [B, V*Q, D] for the LLM."""
        image, views = self._image_features(pixel_values)
        if instruction_ids is not None and views > 1:
            instruction_ids = instruction_ids.repeat_interleave(views, axis=0)
            instruction_mask = None if instruction_mask is None else instruction_mask.repeat_interleave(views, axis=0)
        query_output = self.qformer(self.query_tokens, image, None, instruction_ids, instruction_mask)
        return self._soft_prompt(query_output, views)

    # ------------------------------------------------------------------ training

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
        qformer_ids: Tensor | None = None,
        qformer_mask: Tensor | None = None,
        return_logits: bool = False,
        concept_labels: Tensor | None = None,
    ) -> Blip2Output:
        """Losses for one batch from ``data/collate.py``, in the layout of the LLM's family (a decoder-only
        LLM reads ``[soft prompt; prompt; target]``, an encoder-decoder ``[soft prompt; prompt]`` in its
        encoder and the target in its decoder: ``LanguageModel.prompted``).

        ``qformer_ids``/``qformer_mask`` are the Q-Former's own text: the instruction when the
        Q-Former takes one (InstructBLIP), else the concept sentence for the concept loss.
        ``concept_labels`` [B, concept_classes]: the image's CUIs as 0/1, for the concept head.
        """
        image, views = self._image_features(pixel_values)
        if self.language_model is None:
            query_output, out = self._qformer_caption_loss(image, views, qformer_ids, qformer_mask, return_logits)
            return self._add_detection(out, query_output, views, concept_labels)
        concept = None
        if qformer_ids is not None and views > 1:
            qformer_ids = qformer_ids.repeat_interleave(views, axis=0)
            qformer_mask = qformer_mask.repeat_interleave(views, axis=0)
        if self.config.qformer.instruction:
            query_output = self.qformer(self.query_tokens, image, None, qformer_ids, qformer_mask)
        elif self.config.concept_loss_weight > 0:
            if qformer_ids is None:
                raise ConfigError(
                    "Model.concept_loss_weight > 0 needs the concept sentence in the batch (qformer_ids): "
                    "build the collator with the Q-Former tokenizer and qformer_field='concept_sentence'"
                )
            query_output, text_logits = self.qformer.forward_text(self.query_tokens, image, qformer_ids, qformer_mask)
            concept = self.qformer.text_loss(text_logits, qformer_ids, qformer_mask)
        else:
            query_output = self.qformer(self.query_tokens, image)
        prefix = self._soft_prompt(query_output, views)
        out = self.language_model.prompted(prefix, input_ids, attention_mask, labels, return_logits=return_logits)
        caption = out.loss
        loss = self.config.caption_loss_weight * caption
        if concept is not None:
            loss = loss + self.config.concept_loss_weight * concept
        return self._add_detection(Blip2Output(loss, caption, concept, out.logits), query_output, views, concept_labels)

    def _add_detection(self, out: Blip2Output, query_output: Tensor, views: int,
                       concept_labels: Tensor | None) -> Blip2Output:
        """``out`` plus the concept-detection loss: one multi-label prediction per image from its query
        outputs, flattened so each query keeps its own weights (views averaged)."""
        if self.concept_head is None or self.config.concept_detection_weight <= 0:
            return out
        if concept_labels is None:
            raise ConfigError("Model.concept_detection_weight > 0 needs the images' CUIs in the batch (concept_labels, "
                             "made by build.build_collator from the records of the imageclef_caption and rocov2 formats)")
        features = query_output.reshape([-1, views, query_output.shape[1] * query_output.shape[2]]).mean(axis=1)
        logits = self.concept_head(features).astype("float32")
        detection = F.binary_cross_entropy_with_logits(logits, concept_labels.astype("float32"))
        loss = out.loss + self.config.concept_detection_weight * detection
        return out._replace(loss=loss, detection_loss=detection)

    def _qformer_caption_loss(self, image: Tensor, views: int, ids: Tensor | None, mask: Tensor | None,
                              return_logits: bool) -> tuple[Tensor, Blip2Output]:
        """No LLM: the caption loss is the Q-Former text decoder's, on the caption in its tokenizer
        (returned after the query outputs)."""
        if ids is None or views > 1:
            raise ConfigError("a model without an LLM needs the caption in the Q-Former's tokenizer (qformer_ids, "
                             "build.build_collator does it) and one view per sample")
        query_output, logits = self.qformer.forward_text(self.query_tokens, image, ids, mask)
        caption = self.qformer.text_loss(logits, ids, mask)
        out = Blip2Output(self.config.caption_loss_weight * caption, caption, None, logits if return_logits else None)
        return query_output, out

    # ------------------------------------------------------------------ inference

    @paddle.no_grad()
    def generate(
        self,
        pixel_values: Tensor,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        decode: DecodeConfig,
        eos_token_id: int,
        pad_token_id: int,
        instruction_ids: Tensor | None = None,
        instruction_mask: Tensor | None = None,
    ) -> Tensor:
        """New token ids [B, T] for each image, conditioned on its (left-padded) prompt (with no LLM:
        the Q-Former's text decoder, which takes no prompt)."""
        if self.language_model is None:
            image, _ = self._image_features(pixel_values)
            return decoding.generate(TextDecoder(self.qformer, self.query_tokens), image,
                                     paddle.ones(image.shape[:2], dtype="int64"), **asdict(decode),
                                     eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        prefix = self.encode_images(pixel_values, instruction_ids, instruction_mask)
        embeds, mask = self.language_model.join(prefix, prompt_ids, prompt_mask)
        return self.language_model.generate(
            embeds, mask, **asdict(decode), eos_token_id=eos_token_id, pad_token_id=pad_token_id
        )

    # ------------------------------------------------------------------ checkpoints

    def save_pretrained(self, folder: str | Path, names: Collection[str] | None = None, base: str | Path = "",
                        settings: Config | None = None) -> None:
        """A self-contained checkpoint: ``config.yaml``, ``model.safetensors`` and copies of the
        tokenizer folders (``tokenizer/``, ``qformer_tokenizer/``), each written atomically.

        ``config.yaml`` holds the Model section (its folders named relative to the checkpoint, see
        ``BUNDLED_FOLDERS``) and, given the run's ``settings``, its ``RUN_SECTIONS`` (``Data.root``
        made absolute, ``Eval.output`` left out): ``tools/predict.py --checkpoint`` alone then uses the
        image size, prompt, decoding and post-processing the run validated with, from any directory.

        ``names``/``base``: write only these tensors (e.g. the trainable ones) and name the checkpoint
        folder that holds the rest as ``Model.pretrained``; loading reads the base first. A
        fine-tuning checkpoint of a 3.8 B model is then the 1.1 B weights that changed.
        """
        from safetensors.paddle import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items() if names is None or k in names}
        config = copy.deepcopy(self.config)
        config.pretrained = str(Path(base).resolve()) if names is not None and base else ""
        if names is not None and not base and len(state) < len(self.state_dict()):
            raise ConfigError("a checkpoint of some tensors only needs the base checkpoint that holds the others")
        copied: dict[tuple, str] = {}  # one copy of the same files that two fields name (e.g. both tokenizers)
        for field_name, (copy_name, patterns) in BUNDLED_FOLDERS.items():
            source = get_field(config, field_name)
            if source:
                key = (Path(source).resolve(), patterns)
                if key not in copied:
                    copied[key] = _bundle_folder(key[0], folder / copy_name, patterns)
                set_field(config, field_name, copied[key])
        with atomic_path(folder / WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": "paddle_medvl"})
        tree = {"Model": to_dict(config)}
        if settings is not None:
            tree.update(run_settings(settings))
        atomic_write(folder / CONFIG, lambda f: f.write(dump_yaml(tree)))

    @classmethod
    def from_pretrained(cls, folder: str | Path, config: ModelConfig | None = None) -> "Blip2":
        """A converted (``tools/convert_hf.py``) or saved checkpoint. ``config`` overrides its config.yaml."""
        folder = Path(folder)
        config = checkpoint_config(folder) if config is None else config
        # Every tensor comes from the checkpoint: build without allocating or initialising
        # weights (a 3.8 B model: 0.2 s and 0.5 GB instead of 85 s and 11 GB of random numbers).
        with skeleton():
            model = cls(config)
        model.load_weights(folder)
        return model

    def _drops(self, key: str) -> bool:
        """Checkpoint tensors this model has no place for by design: the LLM's when it has none, the
        concept head's when it has none."""
        if self.concept_head is None and key.startswith("concept_head."):
            return True
        return self.language_model is None and key.startswith(("language_model.", "language_projection."))

    def load_weights(self, folder: str | Path, only_own: bool = False) -> None:
        """Load ``model.safetensors`` (or its shards) tensor by tensor, after the base checkpoints its
        config names (``Model.pretrained``, see ``save_pretrained``); every parameter must be there
        with its shape, checked before anything is loaded. ``only_own``: the bases are loaded
        already; read this folder's tensors only."""
        from safetensors import safe_open

        own = self.state_dict()
        chain = [Path(folder)] if only_own else checkpoint_chain(Path(folder))
        files = [path for base in chain for path in weight_files(base)]
        with ExitStack() as stack:
            stack.enter_context(stride_kernels())
            handles = [stack.enter_context(safe_open(str(path), framework="paddle")) for path in files]
            shape = {key: list(h.get_slice(key).get_shape()) for h in handles for key in h.keys() if not self._drops(key)}
        missing = [] if only_own else sorted(set(own) - set(shape))
        if missing and self.concept_head is not None and all(k.startswith("concept_head.") for k in missing):
            missing = []  # a checkpoint without the head (converted BLIP-2): the head starts fresh
            fresh = _concept_head(self.config)
            for name, value in fresh.state_dict().items():
                own[f"concept_head.{name}"].set_value(value)
        # Adapters the whole chain has none of (stage 2 adds LoRA to the LLM on top of stage 1) start
        # fresh, B = 0: the model computes exactly what the checkpoint's model computes. (With
        # ``only_own`` the bases' adapters are loaded already and nothing is missing.)
        adapters = lora_layers(self)
        fresh_adapters = {name for name in adapters if not only_own
                          and {f"{name}.lora_A", f"{name}.lora_B"}.isdisjoint(shape)}
        for name in fresh_adapters:
            adapters[name].reset()
        missing = [k for k in missing if k.rsplit(".", 1)[0] not in fresh_adapters]
        unexpected = sorted(set(shape) - set(own))
        mis_shaped = sorted(
            f"{k}: checkpoint {shape[k]} vs model {list(own[k].shape)}"
            for k in set(own) & set(shape)
            if shape[k] != list(own[k].shape)
        )
        if missing or unexpected or mis_shaped:
            raise ConfigError(
                f"{folder}: the checkpoint does not fit the model config:"
                + (f"\n  missing ({len(missing)}): {', '.join(missing[:20])}" if missing else "")
                + (f"\n  unexpected ({len(unexpected)}): {', '.join(unexpected[:20])}" if unexpected else "")
                + (f"\n  mis-shaped ({len(mis_shaped)}): {'; '.join(mis_shaped[:20])}" if mis_shaped else "")
            )
        # One file, one tensor at a time: the checkpoint is never held (or mapped) whole beside the model.
        for path in files:
            with stride_kernels(), safe_open(str(path), framework="paddle") as handle:
                for name in (k for k in handle.keys() if not self._drops(k)):
                    own[name].set_value(handle.get_tensor(name).astype(own[name].dtype))


def _concept_head(config: ModelConfig) -> nn.Linear:
    """Flattened query outputs [B, Q*H] -> one logit per CUI of the data's mapping file."""
    return nn.Linear(config.qformer.num_query_tokens * config.qformer.hidden_size, config.concept_classes)


def _check_qformer_only(config: ModelConfig) -> None:
    if not config.qformer.text or config.qformer.instruction or config.concept_loss_weight > 0:
        raise ConfigError(
            "Model.language.architecture=none: the Q-Former's text decoder writes the caption, so it needs "
            "Model.qformer.text=true, no instruction input and no separate concept loss (concept_loss_weight 0)"
        )


def checkpoint_chain(folder: Path) -> list[Path]:
    """``folder`` after the base checkpoints it builds on (its config's ``Model.pretrained``), base first."""
    chain = [folder]
    while True:
        base = checkpoint_config(chain[0]).pretrained
        if not base:
            return chain
        base_path = Path(base)
        if base_path.resolve() in {p.resolve() for p in chain}:
            raise ConfigError(f"{folder}: checkpoints name each other as Model.pretrained: {base_path}")
        chain.insert(0, base_path)


def checkpoint_config(folder: Path) -> ModelConfig:
    """The model config a checkpoint folder was saved with, its bundled folders (tokenizers) as paths
    inside it; a missing folder says how to make one, a Hugging Face folder how to convert it."""
    return checkpoint_settings(folder).Model


def checkpoint_settings(folder: Path) -> Config:
    """Everything a checkpoint's config.yaml holds: Model (as :func:`checkpoint_config`) and the run's
    ``RUN_SECTIONS`` it was saved with (defaults for a checkpoint saved without them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such checkpoint folder. Download the Hugging Face checkpoint (Salesforce/blip2-opt-2.7b "
            "for captions, Salesforce/instructblip-flan-t5-xl for reports: config.json + *.safetensors) on a "
            "machine with internet and convert "
            f"it: python tools/convert_hf.py --hf DIR --out {folder}"
        )
    if not (folder / CONFIG).is_file():
        foreign = _hugging_face_layout(folder)
        if foreign:
            raise ConfigError(
                f"{folder}: a Hugging Face checkpoint ({foreign}), not a paddle_medvl one (no {CONFIG}); "
                f"convert it first: python tools/convert_hf.py --hf {folder} --out OUT, then use OUT"
            )
    try:
        settings = load_config(folder / CONFIG)
    except ConfigError as e:
        raise ConfigError(f"{folder}: not a paddle_medvl checkpoint ({e})") from None
    for field_name, (copy_name, _) in BUNDLED_FOLDERS.items():
        value = get_field(settings.Model, field_name)
        # A relative folder is the checkpoint's own copy when it is there; checkpoints written before
        # folders were bundled keep the path as the training run wrote it.
        if value and not Path(value).is_absolute() and (folder / value).is_dir():
            set_field(settings.Model, field_name, str((folder / value).resolve()))
    return settings


def run_settings(settings: Config) -> dict:
    """The ``RUN_SECTIONS`` of a run's config as a checkpoint saves them: paths that the checkpoint's
    users read from elsewhere made absolute (``Data.root``, ``Eval.bertscore_model``), and no
    ``Eval.output`` (where one run wrote its predictions is no setting of the model's)."""
    tree = {name: to_dict(getattr(settings, name)) for name in RUN_SECTIONS}
    for section, key in (("Data", "root"), ("Eval", "bertscore_model")):
        if tree[section].get(key):
            tree[section][key] = str(Path(tree[section][key]).resolve())
    tree["Eval"]["output"] = ""
    return tree


def _hugging_face_layout(folder: Path) -> str:
    """What marks ``folder`` as a Hugging Face BLIP-2 checkpoint ("" if nothing does): its config.json's
    architecture or model type, or safetensors keys with Hugging Face's LLM names."""
    config_file = folder / "config.json"
    if config_file.is_file():
        try:
            hf = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            hf = None
        if isinstance(hf, dict):
            architectures = [a for a in hf.get("architectures") or [] if a in HF_ARCHITECTURES]
            if architectures:
                return f"config.json: architectures {architectures[0]}"
            if hf.get("model_type") in HF_MODEL_TYPES:
                return f"config.json: model_type {hf['model_type']}"
    from safetensors import SafetensorError, safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy") as handle:
                hf_keys = [k for k in handle.keys() if k.startswith(HF_LLM_PREFIXES)]
        except (OSError, SafetensorError):  # not a safetensors file after all: it tells nothing
            continue
        if hf_keys:
            return f"{path.name} has Hugging Face tensor names such as {hf_keys[0]}"
    return ""


def _bundle_folder(source: Path, target: Path, patterns: Collection[str]) -> str:
    """Copy the files of ``source`` matching ``patterns`` into ``target`` (replacing what was there);
    returns what config.yaml names: ``target``'s name, or ``source`` as an absolute path when nothing
    can be copied (a folder that is gone, or holds none of those files), so saving never fails here."""
    if source == target.resolve():
        return target.name  # saving into the checkpoint this model was loaded from
    files = []
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns))
    if not files:
        return str(source)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in files:
        shutil.copyfile(path, tmp / path.name)
        with open(tmp / path.name, "rb") as f:  # on disk before config.yaml names the copy
            os.fsync(f.fileno())
    replace_folder(tmp, target, target.with_name(f".{target.name}.{os.getpid()}.old"))
    return target.name


@contextmanager
def skeleton() -> Iterator[None]:
    """Build layers whose parameters have shapes but no memory until a value is set.

    ``paddle.LazyGuard`` defers Paddle's initialisers; paddlenlp models would still run their own
    ``init_weights`` (materialising every LLM weight) unless ``no_init_weights`` is on too.
    """
    from paddlenlp.transformers.model_utils import no_init_weights

    with paddle.LazyGuard(), no_init_weights():
        yield


def weight_files(folder: Path) -> list[Path]:
    """``model.safetensors``, or the shards ``model.safetensors.index.json`` lists (ours and HF's alike)."""
    index = folder / INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{index}: not a safetensors index (a JSON object with a weight_map): {e}") from None
        for name in names:  # a shard is a file of this folder: an index cannot point the loader elsewhere
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise ConfigError(f"{index}: shard {name!r} is not a file name in {folder} (refused: a checkpoint "
                                  "reads only its own files)")
        return [folder / name for name in names]
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    raise FileNotFoundError(f"{folder}: neither {WEIGHTS} nor {INDEX} is there")
