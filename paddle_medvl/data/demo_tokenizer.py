"""Tokenizers for the demo, trained on the demo texts: nothing is downloaded.

The real models read OPT's GPT-2 byte-level BPE and bert-base-uncased's WordPiece vocabulary,
from their Hugging Face checkpoints. The demo's tiny models start from random weights, so they
only need tokenizers in the same formats, loaded by the same code
(``paddle_medvl.build.build_tokenizer`` / ``build_qformer_tokenizer``):

* ``opt/``: ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` (paddlenlp's
  ``GPTTokenizer``), a byte-level BPE trained with the Hugging Face ``tokenizers`` library.
  ``<pad>`` 0, ``</s>`` 1 (eos and bos), ``<unk>`` 2, then the 256 byte symbols, so any text
  encodes ("\\n", which ends BLIP-2 OPT targets, is one token), then the learned merges: the
  demo's words become single tokens.
* ``bert/``: ``vocab.txt`` + ``tokenizer_config.json`` (``BertTokenizer``, lower case).
  ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4, the characters (word-initial
  and ``##`` continuation), then the corpus' words, most frequent first. The Q-Former's [DEC]
  token is one id past the vocabulary (``DEMO_DEC_TOKEN_ID``), as BERT's 30522 is for BLIP-2.

Both vocabularies have a fixed size (``DEMO_LLM_VOCAB``, ``DEMO_BERT_VOCAB``), padded with
never-produced placeholder tokens, so a config can state the embedding sizes. The same texts
give the same bytes: Hugging Face's WordPiece trainer numbers its "##" pieces in hash-map order,
which changes the intermediate pieces it learns from run to run, so only the run-independent
part of its vocabulary (characters and whole words) is kept.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

DEMO_LLM_VOCAB = 1024  # the byte-level BPE's size: 3 specials + 256 bytes + merges + placeholders
DEMO_BERT_VOCAB = 1024  # vocab.txt's lines
DEMO_QFORMER_VOCAB = DEMO_BERT_VOCAB + 1  # Model.qformer.vocab_size: the vocabulary + [DEC]
DEMO_DEC_TOKEN_ID = DEMO_BERT_VOCAB  # Model.qformer.dec_token_id

LLM_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4
LLM_DIR, BERT_DIR = "opt", "bert"
TOKENIZERS_DIR = "tokenizers"  # make_demo_data's folder for both, next to the data sets

# Where make_demo_data's texts come from: per synthetic set (synthetic.TASKS), its reader's settings.
_READERS = {
    "caption": {"format": "imageclef_caption"},
    "rocov2": {"format": "rocov2"},
    "vqa": {"format": "medvqa_gi"},
    "iu": {"format": "iu_xray", "reports_csv": "indiana_reports.csv"},
    "mimic": {"format": "mimic_cxr", "labels_csv": "chexbert_labels.csv"},
}
DEMO_PROMPTS = ("a photo of",)  # the caption demo's prompt (BLIP-2's), which no data file holds

_EXHAUSTIVE = 1 << 20  # a trainer vocabulary size never reached: every word of the corpus becomes whole


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def _padded(tokens: list[str], size: int, placeholder: str, what: str) -> list[str]:
    if len(tokens) > size:
        raise ValueError(f"{what}: {len(tokens)} tokens do not fit the fixed size {size}")
    taken = set(tokens)
    extra = (placeholder.format(i) for i in range(2 * size))
    return tokens + [t for t in extra if t not in taken][: size - len(tokens)]


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int = DEMO_LLM_VOCAB) -> tuple[list[str], list[tuple[str, str]]]:
    """(tokens in id order, merges in rank order) of a GPT-2-style byte-level BPE of ``vocab_size`` tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split, as paddlenlp's
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(LLM_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))) or tuple(tokens[:3]) != LLM_SPECIALS:
        raise RuntimeError("tokenizers' BPE trainer numbered the vocabulary unexpectedly")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return _padded(tokens, vocab_size, "<unused{}>", "byte-level BPE"), merges


def train_wordpiece(texts: list[str], vocab_size: int = DEMO_BERT_VOCAB) -> list[str]:
    """A lower-case BERT WordPiece vocabulary of ``vocab_size`` tokens, in id order."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)  # what BertTokenizer's basic tokenizer does
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=_EXHAUSTIVE, special_tokens=list(BERT_SPECIALS), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    learned = set(tokenizer.get_vocab()) - set(BERT_SPECIALS)

    counts: Counter[str] = Counter()
    for text in texts:
        normalized = tokenizer.normalizer.normalize_str(text)
        counts.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized))
    chars = sorted(t for t in learned if len(t) == 1)
    continuations = sorted(t for t in learned if t.startswith("##") and len(t) == 3)
    words = sorted((w for w in counts if len(w) > 1 and w in learned), key=lambda w: (-counts[w], w))
    tokens = [*BERT_SPECIALS, *chars, *continuations, *words][:vocab_size]
    return _padded(tokens, vocab_size, "[unused{}]", "WordPiece")


def demo_texts(roots: dict[str, Path]) -> list[str]:
    """The train-split texts of written demo sets ({task: root}) as the readers give them to a model
    (prompts with their question or prior information, targets, concept sentences), plus ``DEMO_PROMPTS``."""
    import contextlib
    import io

    from ..config import DataConfig
    from . import READERS, Problems, fill_prompt

    texts = list(DEMO_PROMPTS)
    for task, root in roots.items():
        cfg = DataConfig(root=str(root), **_READERS[task])
        reader, prompt = READERS[cfg.format]
        with contextlib.redirect_stdout(io.StringIO()):  # the readers' notes (skipped segmentation labels)
            records = reader(cfg, Path(root), "train", Problems())  # a tiny set's train split may be empty
        for record in records:
            texts += [fill_prompt(prompt, record), record.target, record.extras.get("concept_sentence", "")]
    return [text for text in texts if text]


def write_demo_tokenizers(out_dir: str | Path, texts: list[str]) -> dict[str, Path]:
    """Train both demo tokenizers on ``texts``; returns {"opt": folder, "bert": folder} under ``out_dir``.

    The folders load with ``build_tokenizer(LanguageConfig(tokenizer=...))`` and
    ``build_qformer_tokenizer(QFormerConfig(tokenizer=...))``. The same texts give the same bytes.
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("no texts to train the demo tokenizers on")
    out = Path(out_dir)
    opt, bert = out / LLM_DIR, out / BERT_DIR
    opt.mkdir(parents=True, exist_ok=True)
    bert.mkdir(parents=True, exist_ok=True)

    tokens, merges = train_byte_level_bpe(texts)
    _write(opt / "vocab.json", json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False) + "\n")
    # paddlenlp skips the first line ("#version") and the text after the last line break
    _write(opt / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    pad, eos, unk = LLM_SPECIALS
    _write(opt / "tokenizer_config.json", _json({
        "tokenizer_class": "GPTTokenizer",
        "pad_token": pad, "eos_token": eos, "bos_token": eos, "unk_token": unk,
        "eol_token": "\u010a", "add_prefix_space": False, "add_bos_token": False, "errors": "replace",
    }))
    _write(opt / "special_tokens_map.json", _json({"pad_token": pad, "eos_token": eos, "bos_token": eos, "unk_token": unk}))

    _write(bert / "vocab.txt", "".join(t + "\n" for t in train_wordpiece(texts)))
    specials = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), BERT_SPECIALS))
    _write(bert / "tokenizer_config.json", _json({"tokenizer_class": "BertTokenizer", "do_lower_case": True, **specials}))
    _write(bert / "special_tokens_map.json", _json(specials))
    return {LLM_DIR: opt, BERT_DIR: bert}


__all__ = [
    "BERT_DIR", "BERT_SPECIALS", "DEMO_BERT_VOCAB", "DEMO_DEC_TOKEN_ID", "DEMO_LLM_VOCAB", "DEMO_QFORMER_VOCAB",
    "DEMO_PROMPTS", "LLM_DIR", "LLM_SPECIALS", "TOKENIZERS_DIR", "demo_texts", "train_byte_level_bpe", "train_wordpiece", "write_demo_tokenizers",
]
