"""Hugging Face BLIP-2 checkpoints -> paddle_medvl checkpoints (safetensors + config.yaml).

A key map plus transposes: our parameter names are HF's (``vision_model.*``, ``qformer.*``,
``query_tokens``, ``language_projection.*``) except inside the LLM, whose paddlenlp names come from
``LanguageModel.hf_names()``. torch ``Linear`` weights are [out, in] and Paddle's [in, out], so
exactly the weights of our ``nn.Linear`` layers (and those the LLM's map marks) are transposed;
embeddings, LayerNorms, the patch convolution, the class/position embeddings and the query tokens
are copied as they are.

Tensors are streamed one at a time from the (possibly sharded) checkpoint into output shards, so
a 3.7 B-parameter model converts in a few GB of memory; the model skeleton that gives the expected
names and shapes is built as a ``skeleton()`` (no weights allocated or initialised).
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Collection, Sequence

import paddle
from paddle import nn

from ..config import LanguageConfig, ModelConfig, QFormerConfig, VisionConfig, dump_yaml, to_dict
from ..atomic import atomic_path, atomic_write
from ..errors import MedVLError
from ..workarounds import stride_kernels
from ..models.blip2 import CONFIG, HF_MODEL_TYPES, INDEX, WEIGHTS, Blip2, skeleton, weight_files
from ..models.language import language_class
from ..models.lora import LoRALinear

DTYPES = ("keep", "float32", "float16", "bfloat16")


class ConversionError(MedVLError, ValueError):
    """The checkpoint does not convert; the message lists what is missing, unexpected or mis-shaped."""


# ---------------------------------------------------------------------------- config


def _pick(section: dict, names: dict[str, str], defaults: dict) -> dict:
    """Our field -> HF key, falling back to the HF default (config.json omits default values)."""
    return {ours: section.get(theirs, defaults[ours]) for ours, theirs in names.items()}


# transformers' defaults for keys a config.json may leave out (Blip2VisionConfig, Blip2QFormerConfig, OPTConfig)
HF_VISION_DEFAULTS = dict(image_size=224, patch_size=14, hidden_size=1408, num_layers=39, num_heads=16, mlp_dim=6144,
                          layer_norm_eps=1e-6)
HF_QFORMER_DEFAULTS = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                           cross_attention_frequency=2, layer_norm_eps=1e-12, vocab_size=30522,
                           max_position_embeddings=512, pad_token_id=0)


def refuse_mismatch(where: Path | str, what: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                    mis_shaped: Sequence[str] = (), hint: str = "") -> None:
    """A :class:`ConversionError` listing (the first 20 of) each kind of mismatch, if there is any."""
    problems = [f"{kind} ({len(names)}): {sep.join(sorted(names)[:20])}"
                for kind, names, sep in (("missing", missing, ", "), ("unexpected", unexpected, ", "),
                                         ("mis-shaped", mis_shaped, "; ")) if names]
    if problems:
        raise ConversionError(f"{where}: " + "\n  ".join([f"{what}:", *problems]) + (f"\n  {hint}" if hint else ""))


# Hugging Face LLM model types (text_config.model_type) -> our architecture. What each family takes from a
# Hugging Face config and how it wants its text are the family's own (``LanguageModel.from_hf``).
HF_LLMS = {"opt": "opt", "t5": "t5"}
HF_LM_HEAD = "language_model.lm_head.weight"


def translate_config(hf: dict, keys: Collection[str] = ()) -> ModelConfig:
    """HF ``config.json`` of a BLIP-2 (OPT or T5) or an InstructBLIP (T5) -> our ModelConfig.

    Eps values come from the file or HF's defaults (vision 1e-6, Q-Former 1e-12), never ours, so
    the converted model computes what the HF model computes. ``keys``, the checkpoint's tensor names,
    decide what config.json does not say reliably: whether the Q-Former carries its text head (LAVIS
    text parts), and whether the LLM has a head of its own (transformers 5 writes
    ``tie_word_embeddings: true`` into every T5 config it saves, Flan-T5's untied head included).
    """
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES + (None,):
        raise ConversionError(f"config.json: model_type {model_type!r} is not a BLIP-2 or InstructBLIP checkpoint")
    text = dict(hf.get("text_config") or {})
    family = text.get("model_type", "opt")
    if family not in HF_LLMS:
        raise ConversionError(f"config.json: text_config.model_type {family!r}: only {', '.join(HF_LLMS)} convert")
    llm = language_class(HF_LLMS[family])
    vision = _pick(
        hf.get("vision_config") or {},
        dict(image_size="image_size", patch_size="patch_size", hidden_size="hidden_size",
             num_layers="num_hidden_layers", num_heads="num_attention_heads", mlp_dim="intermediate_size",
             layer_norm_eps="layer_norm_eps"),
        HF_VISION_DEFAULTS,
    )
    qformer = _pick(
        hf.get("qformer_config") or {},
        dict(hidden_size="hidden_size", num_layers="num_hidden_layers", num_heads="num_attention_heads",
             intermediate_size="intermediate_size", cross_attention_frequency="cross_attention_frequency",
             layer_norm_eps="layer_norm_eps", vocab_size="vocab_size", max_position_embeddings="max_position_embeddings",
             pad_token_id="pad_token_id"),
        HF_QFORMER_DEFAULTS,
    )
    if isinstance(vision["image_size"], (list, tuple)) or isinstance(vision["patch_size"], (list, tuple)):
        raise ConversionError("config.json: non-square image or patch sizes are not supported")
    keep = {k: v for k, v in text.items() if k not in ("architectures", "_name_or_path", "torch_dtype", "dtype",
                                                      "transformers_version", "model_type")}
    settings, text_format = llm.from_hf(keep, has_head=HF_LM_HEAD in keys)
    return ModelConfig(
        vision=VisionConfig(**vision),
        qformer=QFormerConfig(**qformer, num_query_tokens=hf.get("num_query_tokens", 32),
                              text="qformer.cls.predictions.bias" in keys, instruction=model_type == "instructblip"),
        language=LanguageConfig(architecture=llm.architecture, config=settings, **text_format),
    )


# ---------------------------------------------------------------------------- keys


def key_map(model: Blip2) -> dict[str, tuple[str, bool]]:
    """Our name -> (HF name, transpose?) for every tensor of ``model`` that Hugging Face's has (LoRA adapters
    are ours alone; an adapted Linear's weight is transposed like any other)."""
    linear = {f"{name}.weight" for name, sub in model.named_sublayers() if isinstance(sub, (nn.Linear, LoRALinear))}
    names: dict[str, tuple[str, bool]] = {}
    for ours in model.state_dict():
        if ours.startswith("language_model.") or ours.endswith((".lora_A", ".lora_B")):  # adapters: ours alone
            continue
        theirs = ours
        names[ours] = (theirs, ours in linear)
    for ours, (theirs, transpose) in model.language_model.hf_names().items():
        names[f"language_model.{ours}"] = (f"language_model.{theirs}", transpose)
    return names


class Checkpoint:
    """Lazy access to the tensors of one or more safetensors files."""

    def __init__(self, files: list[Path], stack: ExitStack) -> None:
        from safetensors import safe_open

        self._handles = [stack.enter_context(safe_open(str(f), framework="paddle")) for f in files]
        self.where = {key: handle for handle in self._handles for key in handle.keys()}

    @staticmethod
    def files(folder: Path) -> list[Path]:
        """A Hugging Face checkpoint folder's files: ``model.safetensors`` or the shards its index lists."""
        try:
            return weight_files(folder)
        except FileNotFoundError as e:
            raise ConversionError(
                f"{e}. Pickled checkpoints (pytorch_model.bin) are not read: "
                "download the safetensors files of the model (Salesforce/blip2-opt-2.7b has them)"
            ) from None

    def shape(self, key: str) -> list[int]:
        return list(self.where[key].get_slice(key).get_shape())

    def get(self, key: str) -> paddle.Tensor:
        # A copy: the tensor safetensors returns lives in the file's mapping, and Paddle aborts
        # ("deleter of the pointer is not found") if it is freed after the file is closed.
        return self.where[key].get_tensor(key).clone()


def _sources(names: dict[str, tuple[str, bool]], ckpt: Checkpoint) -> tuple[dict[str, Callable], set[str]]:
    """Our name -> a function reading its tensor from the checkpoint; and the checkpoint keys used."""
    sources: dict[str, Callable] = {}
    used: set[str] = set()
    for ours, (theirs, transpose) in names.items():
        if theirs not in ckpt.where and theirs.endswith(("self_attn.q_bias", "self_attn.v_bias")):
            fused = theirs.rsplit(".", 1)[0] + ".qkv.bias"  # transformers 5 stores [q_bias, 0, v_bias] as one
            if fused in ckpt.where:
                part = 0 if theirs.endswith("q_bias") else 2
                sources[ours] = lambda fused=fused, part=part: _third(ckpt.get(fused), part, fused)
                used.add(fused)
                continue
        if theirs not in ckpt.where and theirs.startswith("qformer.layernorm."):
            theirs = theirs.replace("qformer.layernorm.", "qformer.embeddings.layernorm.")  # InstructBLIP's name
        if theirs in ckpt.where:
            sources[ours] = lambda key=theirs, t=transpose: ckpt.get(key).T if t else ckpt.get(key)
            used.add(theirs)
    return sources, used


def _third(fused: paddle.Tensor, part: int, key: str) -> paddle.Tensor:
    width = fused.shape[0] // 3
    if paddle.abs(fused[width : 2 * width].astype("float32")).max() != 0:
        raise ConversionError(f"{key}: the key third of the fused qkv bias is not zero; EVA's key bias is fixed at 0")
    return fused[part * width : (part + 1) * width]


# ---------------------------------------------------------------------------- conversion


def convert(
    hf_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "keep",
    qformer_text: str | Path | None = None,
    shard_bytes: int = 2 << 30,
    progress: bool = True,
) -> Path:
    """Convert ``hf_dir`` (config.json + safetensors) into ``out_dir``; returns ``out_dir``.

    ``qformer_text``: a safetensors file with the Q-Former's text parts (word/position embeddings,
    text feed-forward, LM head, HF/LAVIS names) that BLIP-2 caption checkpoints lack; paper 000's
    concept loss needs them.
    """
    from safetensors.paddle import save_file
    from tqdm import tqdm

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{config_path}: not found; a Hugging Face checkpoint folder has config.json + *.safetensors")
    hf_config = json.loads(config_path.read_text())
    with ExitStack() as stack:
        stack.enter_context(stride_kernels())
        ckpt = Checkpoint(Checkpoint.files(hf_dir) + ([Path(qformer_text)] if qformer_text else []), stack)
        config = translate_config(hf_config, ckpt.where)
        if "qformer.embeddings.word_embeddings.weight" in ckpt.where:  # the text parts' own sizes
            vocab = ckpt.shape("qformer.embeddings.word_embeddings.weight")[0]
            config.qformer.vocab_size = vocab
            config.qformer.max_position_embeddings = ckpt.shape("qformer.embeddings.position_embeddings.weight")[0]
            if config.qformer.text:  # LAVIS appends [DEC] as the last token of the vocabulary
                config.qformer.dec_token_id = vocab - 1
        with skeleton():
            model = Blip2(config)
        expected = {k: list(v.shape) for k, v in model.state_dict().items()}
        names = key_map(model)
        sources, used = _sources(names, ckpt)
        # Copies of a tied embedding that older checkpoints hold besides it (HF saves each tensor once
        # now): OPT's lm_head, T5's per-stack embed_tokens.
        # now): OPT's lm_head, T5's per-stack embed_tokens. (An untied head is a tensor of its own, mapped.)
        used |= {HF_LM_HEAD, "language_model.encoder.embed_tokens.weight",
                 "language_model.decoder.embed_tokens.weight"} & set(ckpt.where)
        missing = sorted(names[k][0] for k in expected if k not in sources)
        unexpected = sorted(set(ckpt.where) - used)
        refuse_mismatch(hf_dir, "the checkpoint does not match its config.json", missing, unexpected)

        out_dir.mkdir(parents=True, exist_ok=True)
        shards: list[dict[str, str]] = []
        pending: dict[str, paddle.Tensor] = {}
        size = 0

        def flush() -> None:
            nonlocal pending, size
            if not pending:
                return
            name = f"model-{len(shards) + 1:05d}.safetensors"
            data = pending
            with atomic_path(out_dir / name) as tmp:
                save_file(data, str(tmp), metadata={"format": "paddle_medvl"})
            shards.append({key: name for key in data})
            pending, size = {}, 0

        mis_shaped = []
        for ours in tqdm(list(expected), desc="converting", unit="tensor", disable=not progress):
            tensor = sources[ours]()
            if list(tensor.shape) != expected[ours]:
                mis_shaped.append(f"{names[ours][0]} -> {ours}: {list(tensor.shape)}, expected {expected[ours]}")
                continue
            if dtype != "keep" and tensor.dtype != getattr(paddle, dtype):
                tensor = tensor.astype(dtype)
            pending[ours] = tensor.contiguous()
            size += tensor.numel().item() * tensor.element_size()
            if size >= shard_bytes:
                flush()
        if mis_shaped:
            raise ConversionError(f"{hf_dir}: mis-shaped tensors ({len(mis_shaped)}):\n  " + "\n  ".join(mis_shaped[:20]))
        flush()

    if len(shards) == 1:
        (out_dir / next(iter(shards[0].values()))).replace(out_dir / WEIGHTS)
    else:
        weight_map = {k: v for shard in shards for k, v in shard.items()}
        atomic_write(out_dir / INDEX, lambda f: f.write(json.dumps({"weight_map": weight_map}, indent=1)))
    atomic_write(out_dir / CONFIG, lambda f: f.write(dump_yaml({"Model": to_dict(config)})))
    return out_dir
