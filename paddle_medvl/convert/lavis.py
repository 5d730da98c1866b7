"""LAVIS BLIP-2 checkpoints (``.pth``, torch zip + pickle) -> safetensors in our names.

Paper 000's stage 1 trains the Q-Former's image-grounded text generation (the concept loss), which
needs the Q-Former's text parts: word/position embeddings, the text feed-forward branch of every
layer and BERT's LM head. Hugging Face's ``Salesforce/blip2-opt-2.7b`` lacks them, and so do LAVIS's
OPT/T5 checkpoints (``Blip2OPT`` deletes them before stage 2); LAVIS's stage-1 checkpoint
``blip2_pretrained.pth`` has them. Three outputs, from one reader:

* ``extract_qformer_text(pth, file)``: the text parts alone, in the names and torch layout that
  ``tools/convert_hf.py --qformer-text`` reads;
* ``convert_with_hf(pth, hf_dir, out)``: a self-contained checkpoint folder, the HF checkpoint plus
  those text parts (the two steps above in one);
* ``convert_over_base(pth, base, out)``: every tensor the LAVIS file holds, in our names and layout,
  over an already converted checkpoint ``base`` (``Model.pretrained``, read first at load time):
  for checkpoints trained with LAVIS, which save only the parameters that trained (a frozen ViT and
  the frozen LLM are never in them).

The file is read through :mod:`.safe_pickle` (an allow-list; its pickle never runs) and written one
tensor at a time, so memory stays at one tensor whatever the checkpoint's size. LAVIS names map to
Hugging Face's BLIP-2 names (which are ours, see ``convert/hf.py``) by the rules in ``RULES``; torch
Linear weights are [out, in] and Paddle's [in, out], so ``convert_over_base`` transposes exactly the
weights ``hf.key_map`` marks. Tied copies (the LM head's decoder, OPT's ``lm_head``) are checked to
equal what they are tied to and dropped; LAVIS's stage-1 heads (``vision_proj``, ``text_proj``,
``itm_head``, ``temp``) have no place in a captioning model and are skipped, and reported; any other
unknown, missing or mis-shaped tensor stops the conversion with a list.
"""
from __future__ import annotations

import json
import re
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..atomic import atomic_path, atomic_write
from .hf import DTYPES, ConversionError, refuse_mismatch
from .safe_pickle import TensorRef, TorchZip, bfloat16_bits_to_float32

LAVIS_DOWNLOADS = (
    "LAVIS checkpoints are the .pth files named by the `pretrained` URL of LAVIS's model configs "
    "(lavis/configs/models/blip2/*.yaml); the stage-1 Q-Former with its text parts is "
    "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/blip2_pretrained.pth "
    "(blip2_pretrain.yaml). Download it on a machine with internet and pass its path"
)

# LAVIS name -> Hugging Face BLIP-2 name (= ours outside the LLM), as full-match regular expressions.
RULES: list[tuple[str, str]] = [
    (r"query_tokens", r"query_tokens"),
    (r"visual_encoder\.cls_token", r"vision_model.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed", r"vision_model.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (r"visual_encoder\.blocks\.(\d+)\.norm([12])\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm\2.\3"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.(q_bias|v_bias)", r"vision_model.encoder.layers.\1.self_attn.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"ln_vision\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", r"qformer.layernorm.\1"),
    (r"Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.weight", r"qformer.embeddings.\1.weight"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.attention.\3.\4"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.output.\3.\4"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate|intermediate_query)\.dense\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.dense.\3"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(output|output_query)\.(dense|LayerNorm)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.\3.\4"),
    (r"Qformer\.cls\.predictions\.transform\.(dense|LayerNorm)\.(weight|bias)", r"qformer.cls.predictions.transform.\1.\2"),
    (r"Qformer\.cls\.predictions\.bias", r"qformer.cls.predictions.bias"),
    (r"(?:opt|t5|llm)_proj\.(weight|bias)", r"language_projection.\1"),
    (r"(?:opt|t5|llm)_model\.(.+)", r"language_model.\1"),  # HF's LLM names, mapped on by hf.key_map
]
_RULES = [(re.compile(pattern), replacement) for pattern, replacement in RULES]
# Copies of another tensor (LAVIS name -> the LAVIS name it is tied to): checked equal, then dropped.
TIED = {
    "Qformer.cls.predictions.decoder.weight": "Qformer.bert.embeddings.word_embeddings.weight",
    "Qformer.cls.predictions.decoder.bias": "Qformer.cls.predictions.bias",
    "opt_model.lm_head.weight": "opt_model.model.decoder.embed_tokens.weight",
}
BUFFERS = re.compile(r"Qformer\.bert\.embeddings\.position_ids")  # recomputed, not learned
# LAVIS's stage-1 (Blip2Qformer) contrastive / matching heads: no place in a captioning model.
IGNORED = re.compile(r"(vision_proj|text_proj|itm_head)\.(weight|bias)|temp")
_SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
}
_STORED_AS = {"bfloat16": np.dtype(np.uint16)}  # how each dtype's elements sit in a numpy array here


def _numpy_dtype(dtype: str) -> np.dtype:
    return _STORED_AS.get(dtype) or np.dtype(dtype)


@dataclass
class Report:
    """What a conversion wrote and what it left out on purpose."""

    written: list[Path] = field(default_factory=list)
    tensors: int = 0
    ignored: list[str] = field(default_factory=list)  # LAVIS keys without a place in our model (stage-1 heads)


# ---------------------------------------------------------------------------- reading


class LavisCheckpoint:
    """A LAVIS ``.pth`` opened for conversion: ``tensors`` maps HF/our names to lazy tensors."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: not found. {LAVIS_DOWNLOADS}")
        self.archive = TorchZip(self.path)
        try:
            root = self.archive.root
            entry = "model" if isinstance(root, dict) and "model" in root else None  # LAVIS's {"model": ...}
            state = self.archive.state_dict(entry)
            self.tensors, self.ignored = self._map(state)
        except BaseException:
            self.archive.close()
            raise

    def _map(self, state: dict[str, TensorRef]) -> tuple[dict[str, TensorRef], list[str]]:
        tensors: dict[str, TensorRef] = {}
        ignored, unexpected, untied = [], [], []
        for key, ref in state.items():
            if key in TIED:
                target = state.get(TIED[key])
                if target is None:
                    unexpected.append(f"{key} (tied to {TIED[key]}, which is missing)")
                elif not _same(ref, target):
                    untied.append(f"{key} differs from {TIED[key]}")
                continue
            if BUFFERS.fullmatch(key):
                continue
            if IGNORED.fullmatch(key):
                ignored.append(key)
                continue
            name = _lavis_to_hf(key)
            if name is None:
                unexpected.append(key)
            else:
                tensors[name] = ref
        if unexpected:
            raise ConversionError(f"{self.path}: tensors that are not LAVIS BLIP-2's (or that this model lacks) "
                                  f"({len(unexpected)}): {', '.join(unexpected[:20])}")
        if untied:
            raise ConversionError(f"{self.path}: the model ties these, the checkpoint does not: {'; '.join(untied)}")
        return tensors, ignored

    def close(self) -> None:
        self.archive.close()

    def __enter__(self) -> "LavisCheckpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lavis_to_hf(key: str) -> str | None:
    for pattern, replacement in _RULES:
        match = pattern.fullmatch(key)
        if match:
            return match.expand(replacement)
    return None


def _same(a: TensorRef, b: TensorRef) -> bool:
    if a.same_data(b):
        return True
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.read_bits(), b.read_bits())


# ---------------------------------------------------------------------------- dtypes and writing


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even as torch and Paddle do; NaN stays NaN."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def _target_dtype(source: str, dtype: str) -> str:
    """The output dtype of a tensor: floating tensors take ``dtype`` unless it is "keep"."""
    floating = source in ("float64", "float32", "float16", "bfloat16")
    return dtype if floating and dtype != "keep" else source


def _cast(bits: np.ndarray, source: str, target: str) -> np.ndarray:
    """``bits`` (as :meth:`TensorRef.read_bits` gives them) from ``source`` to ``target`` dtype."""
    if source == target:
        return bits
    values = bfloat16_bits_to_float32(bits) if source == "bfloat16" else bits
    if target == "bfloat16":
        return float32_to_bfloat16_bits(values.astype(np.float32))
    return values.astype(target)


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its name, dtype, shape and how to make it (read, transpose, cast)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    make: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * _numpy_dtype(self.dtype).itemsize


def _plan(name: str, ref: TensorRef, transpose: bool, dtype: str) -> PlannedTensor:
    target = _target_dtype(ref.dtype, dtype)

    def make() -> np.ndarray:
        array = ref.read_bits()
        if transpose:
            array = np.ascontiguousarray(array.T)
        return _cast(array, ref.dtype, target)

    return PlannedTensor(name, target, tuple(reversed(ref.shape)) if transpose else tuple(ref.shape), make)


def write_safetensors(path: str | Path, tensors: Iterable[PlannedTensor], metadata: dict[str, str] | None = None,
                      progress: Callable[[str], None] | None = None) -> Path:
    """A safetensors file written one tensor at a time (the header first, from the planned shapes),
    atomically; each tensor is made, checked against its plan, written and dropped.

    Written here because the safetensors library saves only from a dict of tensors held in memory
    at once (a 6 B-parameter shard would need its whole size in RAM); the format is a length, a
    JSON header and the raw little-endian bytes, which the library reads back (the tests do)."""
    tensors = list(tensors)
    if sys.byteorder != "little":
        raise ConversionError("safetensors files are little-endian; this machine is not")
    header: dict[str, object] = {}
    offset = 0
    for out in tensors:
        header[out.name] = {"dtype": _SAFETENSORS_DTYPES[out.dtype], "shape": list(out.shape),
                            "data_offsets": [offset, offset + out.nbytes]}
        offset += out.nbytes
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for out in tensors:
            array = out.make()
            if array.shape != out.shape or array.dtype != _numpy_dtype(out.dtype):
                raise ConversionError(f"{out.name}: made {array.dtype} {list(array.shape)}, planned "
                                      f"{out.dtype} {list(out.shape)}")
            f.write(np.ascontiguousarray(array))  # the buffer itself: no bytes copy
            if progress is not None:
                progress(out.name)
    return Path(path)


def _progress(total: int, enabled: bool, desc: str) -> tuple[Callable[[str], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="tensor", disable=not enabled)
    return (lambda _name: bar.update(1)), bar.close


# ---------------------------------------------------------------------------- the Q-Former text parts

_NO_TEXT_HINT = ("LAVIS's OPT/T5 checkpoints (blip2_pretrained_opt2.7b.pth, ...) and Hugging Face's drop the Q-Former "
                 "text parts; the stage-1 checkpoint blip2_pretrained.pth has them")


def _text_parts(ckpt: LavisCheckpoint) -> dict[str, TensorRef]:
    """The Q-Former text parts, complete and with consistent shapes (torch layout), or an error."""
    tensors = ckpt.tensors
    layers = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"qformer\.encoder\.layer\.(\d+)\.", k))})
    wanted = ["qformer.embeddings.word_embeddings.weight", "qformer.embeddings.position_embeddings.weight",
              "qformer.cls.predictions.transform.dense.weight", "qformer.cls.predictions.transform.dense.bias",
              "qformer.cls.predictions.transform.LayerNorm.weight", "qformer.cls.predictions.transform.LayerNorm.bias",
              "qformer.cls.predictions.bias"]
    for n in layers:
        wanted += [f"qformer.encoder.layer.{n}.{part}.{p}" for part in ("intermediate.dense", "output.dense",
                                                                        "output.LayerNorm") for p in ("weight", "bias")]
    missing = [k for k in wanted if k not in tensors]
    if not layers:
        missing.append("qformer.encoder.layer.N.* (no Q-Former layer at all)")
    refuse_mismatch(ckpt.path, "the checkpoint does not convert", missing, hint=_NO_TEXT_HINT)
    vocab, hidden = tensors[wanted[0]].shape
    inner = tensors[f"qformer.encoder.layer.{layers[0]}.intermediate.dense.weight"].shape[0]
    expect = {wanted[0]: (vocab, hidden), wanted[1]: (tensors[wanted[1]].shape[0], hidden),
              wanted[2]: (hidden, hidden), wanted[3]: (hidden,), wanted[4]: (hidden,), wanted[5]: (hidden,),
              wanted[6]: (vocab,)}
    for n in layers:
        pre = f"qformer.encoder.layer.{n}"
        query = tensors.get(f"{pre}.intermediate_query.dense.weight")
        width = inner if query is None else query.shape[0]  # the text branch mirrors the query branch
        expect |= {f"{pre}.intermediate.dense.weight": (width, hidden), f"{pre}.intermediate.dense.bias": (width,),
                   f"{pre}.output.dense.weight": (hidden, width), f"{pre}.output.dense.bias": (hidden,),
                   f"{pre}.output.LayerNorm.weight": (hidden,), f"{pre}.output.LayerNorm.bias": (hidden,)}
    mis_shaped = [f"{k}: {list(tensors[k].shape)}, expected {list(v)}" for k, v in expect.items()
                  if tuple(tensors[k].shape) != v]
    refuse_mismatch(ckpt.path, "the checkpoint does not convert", mis_shaped=mis_shaped)
    return {k: tensors[k] for k in wanted}


def extract_qformer_text(lavis: str | Path, out_file: str | Path, dtype: str = "keep", progress: bool = True) -> Report:
    """Write the LAVIS checkpoint's Q-Former text parts to ``out_file`` (safetensors, HF names, torch
    layout [out, in]): the file ``tools/convert_hf.py --qformer-text`` takes."""
    _check_dtype(dtype)
    with LavisCheckpoint(lavis) as ckpt:
        parts = _text_parts(ckpt)
        plan = [_plan(name, ref, False, dtype) for name, ref in parts.items()]
        tick, done = _progress(len(plan), progress, "Q-Former text parts")
        try:
            path = write_safetensors(out_file, plan, {"format": "pt", "source": ckpt.path.name}, tick)
        finally:
            done()
        return Report([path], len(plan), ckpt.ignored)


def convert_with_hf(lavis: str | Path, hf_dir: str | Path, out_dir: str | Path, dtype: str = "keep",
                    shard_bytes: int = 2 << 30, progress: bool = True) -> Report:
    """A self-contained checkpoint folder: the Hugging Face checkpoint ``hf_dir`` converted
    (``convert/hf.py``) together with the LAVIS checkpoint's Q-Former text parts."""
    from .hf import convert

    _check_dtype(dtype)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.text.") as tmp:
        text = extract_qformer_text(lavis, Path(tmp) / "qformer_text.safetensors", "keep", progress)
        convert(hf_dir, out_dir, dtype, Path(tmp) / "qformer_text.safetensors", shard_bytes, progress)
    from ..models.blip2 import weight_files

    return Report(weight_files(out_dir), text.tensors, text.ignored)


# ---------------------------------------------------------------------------- over a converted checkpoint


def convert_over_base(lavis: str | Path, base: str | Path, out_dir: str | Path, dtype: str = "keep",
                      shard_bytes: int = 2 << 30, progress: bool = True) -> Report:
    """Every tensor of the LAVIS checkpoint in our names and layout, in ``out_dir``, whose config names
    ``base`` (a converted paddle_medvl checkpoint) as ``Model.pretrained``: loading reads ``base``
    first, then these. The config is ``base``'s, with the Q-Former text parts switched on (and their
    vocabulary / positions taken from the file) when the LAVIS checkpoint has them."""
    from safetensors import safe_open

    from ..config import dump_yaml, to_dict
    from ..models.blip2 import (CONFIG, INDEX, QFORMER_TEXT_PARTS, WEIGHTS, Blip2, checkpoint_chain, checkpoint_config,
                                skeleton, weight_files)
    from .hf import key_map

    _check_dtype(dtype)
    base, out_dir = Path(base), Path(out_dir)
    config = checkpoint_config(base)
    base_keys: set[str] = set()
    for folder in checkpoint_chain(base):
        for path in weight_files(folder):
            with safe_open(str(path), framework="numpy") as handle:
                base_keys.update(handle.keys())
    with LavisCheckpoint(lavis) as ckpt:
        tensors = ckpt.tensors
        if "qformer.embeddings.word_embeddings.weight" in tensors:
            vocab = tensors["qformer.embeddings.word_embeddings.weight"].shape[0]
            config.qformer.text = True
            config.qformer.vocab_size, config.qformer.dec_token_id = vocab, vocab - 1  # LAVIS appends [DEC]
            if "qformer.embeddings.position_embeddings.weight" in tensors:
                config.qformer.max_position_embeddings = tensors["qformer.embeddings.position_embeddings.weight"].shape[0]
        config.pretrained = str(base.resolve())
        with skeleton():
            model = Blip2(config)
        expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
        ours = {theirs: (name, transpose) for name, (theirs, transpose) in key_map(model).items()}
        unexpected = sorted(k for k in tensors if k not in ours)
        plan = [_plan(ours[k][0], ref, ours[k][1], dtype) for k, ref in tensors.items() if k in ours]
        mis_shaped = [f"{out.name}: {list(out.shape)}, expected {list(expected[out.name])}" for out in plan
                      if out.shape != expected[out.name]]
        covered = base_keys | {out.name for out in plan}
        missing = [name for name in expected if name not in covered and not name.startswith("concept_head.")]
        hint = _NO_TEXT_HINT if any(re.match(QFORMER_TEXT_PARTS, name) for name in missing) else ""
        refuse_mismatch(ckpt.path, "the checkpoint does not convert", missing, unexpected, mis_shaped, hint)

        shards = _shards(plan, shard_bytes)
        tick, done = _progress(len(plan), progress, "converting")
        written: list[Path] = []
        try:
            for i, shard in enumerate(shards):
                name = WEIGHTS if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                written.append(write_safetensors(out_dir / name, shard, {"format": "paddle_medvl"}, tick))
        finally:
            done()
        if len(shards) > 1:
            weight_map = {out.name: path.name for shard, path in zip(shards, written) for out in shard}
            atomic_write(out_dir / INDEX, lambda f: f.write(json.dumps({"weight_map": weight_map}, indent=1)))
        elif (out_dir / INDEX).exists():  # an index left by an earlier, sharded run would win over WEIGHTS
            (out_dir / INDEX).unlink()
        atomic_write(out_dir / CONFIG, lambda f: f.write(dump_yaml({"Model": to_dict(config)})))
        return Report(written, len(plan), ckpt.ignored)


def _shards(plan: list[PlannedTensor], shard_bytes: int) -> list[list[PlannedTensor]]:
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for out in plan:
        if shards[-1] and size + out.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(out)
        size += out.nbytes
    return shards


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
