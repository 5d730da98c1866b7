"""Samples -> fixed-shape numpy batches for the language model (and the Q-Former's own text).

Every text is padded to a configured length, never to the longest in the batch: NPUs compile
one kernel per shape, so changing shapes cost a compile each. Prompt tokens are masked out of
the labels (-100) so the loss is on the target only.

Decoder-only LLMs (OPT, ChatGLM) read ``[bos] prompt target eos`` as one sequence; an
encoder-decoder (T5) reads the prompt in its encoder and the ``target eos`` in its decoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ConfigError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TextFormat:
    """How one LLM wants its text; part of the model's config, not the data's."""

    decoder_only: bool = True
    add_bos: bool = False  # OPT: the tokenizer's bos (</s>) first, as Hugging Face's OPT tokenizer does
    eos_text: str = ""  # appended to the target before tokenizing ("\n" ends OPT captions in BLIP-2)
    eos_token: bool = False  # append the tokenizer's eos id to the target (T5's </s>)
    prompt_eos: bool = False  # end the prompt with the tokenizer's eos id (T5's tokenizer does, LAVIS keeps it)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _pad(rows: list[list[int]], length: int, value: int, left: bool = False) -> np.ndarray:
    out = np.full((len(rows), length), value, dtype="int64")
    for i, row in enumerate(rows):
        row = row[:length]
        if left:
            out[i, length - len(row):] = row
        else:
            out[i, : len(row)] = row
    return out


class Collator:
    """``collate_fn`` for ``paddle.io.DataLoader``; picklable, so it works with ``num_workers > 0``."""

    def __init__(
        self,
        tokenizer,
        text: TextFormat,
        max_prompt_len: int,
        max_target_len: int,
        qformer_tokenizer=None,
        qformer_field: str = "",
        max_qformer_len: int = 32,
        concept_classes: int = 0,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ConfigError(f"the tokenizer {type(tokenizer).__name__} has no pad token; set one in its config")
        if (text.add_bos and tokenizer.bos_token_id is None) or (
                (text.eos_token or text.prompt_eos) and tokenizer.eos_token_id is None):
            raise ConfigError(f"the tokenizer {type(tokenizer).__name__} lacks the bos/eos token its TextFormat asks for")
        self.tokenizer, self.text = tokenizer, text
        self.max_prompt_len, self.max_target_len = max_prompt_len, max_target_len
        self.qformer_tokenizer, self.qformer_field, self.max_qformer_len = qformer_tokenizer, qformer_field, max_qformer_len
        self.concept_classes = concept_classes

    def prompt_ids(self, prompt: str) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if self.text.add_bos else []
        ids = (bos + _ids(self.tokenizer, prompt))[: self.max_prompt_len]
        if self.text.prompt_eos:
            ids = ids[: self.max_prompt_len - 1] + [self.tokenizer.eos_token_id]
        return ids

    def target_ids(self, target: str) -> list[int]:
        ids = _ids(self.tokenizer, target + self.text.eos_text)
        if self.text.eos_token:
            ids = ids[: self.max_target_len - 1] + [self.tokenizer.eos_token_id]
        return ids[: self.max_target_len]

    def __call__(self, samples: list[dict]) -> dict:
        pad = self.tokenizer.pad_token_id
        prompts = [self.prompt_ids(s["prompt"]) for s in samples]
        targets = [self.target_ids(s["target"]) for s in samples]
        batch: dict = {
            "index": np.asarray([s["index"] for s in samples], dtype="int64"),  # -> records, for predictions
            "pixel_values": np.stack([s["image"] for s in samples]).astype("float32"),
            # For generation: the prompt alone. A decoder-only LLM's is left-padded, so that every row ends
            # where new tokens begin; an encoder's is right-padded as in training (T5's relative positions
            # between the soft prompt and the prompt would otherwise change with the padding).
            "prompt_ids": _pad(prompts, self.max_prompt_len, pad, left=self.text.decoder_only),
            "prompt_mask": _pad([[1] * len(p) for p in prompts], self.max_prompt_len, 0, left=self.text.decoder_only),
        }
        if self.text.decoder_only:
            length = self.max_prompt_len + self.max_target_len
            batch["input_ids"] = _pad([p + t for p, t in zip(prompts, targets)], length, pad)
            batch["attention_mask"] = _pad([[1] * (len(p) + len(t)) for p, t in zip(prompts, targets)], length, 0)
            batch["labels"] = _pad([[IGNORE_INDEX] * len(p) + t for p, t in zip(prompts, targets)], length, IGNORE_INDEX)
        else:
            batch["input_ids"] = _pad(prompts, self.max_prompt_len, pad)
            batch["attention_mask"] = _pad([[1] * len(p) for p in prompts], self.max_prompt_len, 0)
            batch["labels"] = _pad(targets, self.max_target_len, IGNORE_INDEX)
            batch["decoder_attention_mask"] = _pad([[1] * len(t) for t in targets], self.max_target_len, 0)
        if self.qformer_tokenizer is not None:
            encoded = self.qformer_tokenizer(
                [s[self.qformer_field] for s in samples],
                max_length=self.max_qformer_len,
                padding="max_length",
                truncation=True,
                return_attention_mask=True,
            )
            batch["qformer_ids"] = np.asarray(encoded["input_ids"], dtype="int64")
            batch["qformer_mask"] = np.asarray(encoded["attention_mask"], dtype="int64")
        if self.concept_classes and all("concept_classes" in s for s in samples):  # not for images alone
            batch["concept_labels"] = self.concept_labels(samples)
        return batch

    def concept_labels(self, samples: list[dict]) -> np.ndarray:
        """[B, concept_classes] 0/1: which of the mapping file's CUIs each image has (records checked
        by ``check_concept_classes``)."""
        labels = np.zeros((len(samples), self.concept_classes), dtype="float32")
        for row, s in enumerate(samples):
            labels[row, s["concept_ids"]] = 1.0
        return labels


def check_concept_classes(records: list, classes: int) -> None:
    """Before any batch is made (an error inside Paddle's loader thread hangs it): the records carry
    CUIs, from a mapping file with ``classes`` of them."""
    for record in records:
        found = record.extras.get("concept_classes")
        if found is None:
            raise ConfigError(f"record {record.id}: the concept head learns the images' concepts, which only the "
                             "imageclef_caption and rocov2 formats (CUIs) and iu_xray with Data.reports_csv (MeSH "
                             "terms) carry (Model.concept_classes > 0)")
        if found != classes:
            raise ConfigError(f"Model.concept_classes is {classes}, but the data name {found} concepts (CUIs of "
                             f"the mapping file, or MeSH terms; record {record.id}): set Model.concept_classes={found}")
