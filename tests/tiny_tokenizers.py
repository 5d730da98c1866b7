"""Tiny tokenizers built offline, in the formats paddlenlp loads for the real LLMs."""
from __future__ import annotations

import json
from pathlib import Path


def byte_level_bpe(folder: Path):
    """A GPT-2-style byte-level BPE (OPT's format) with no merges: one token per byte, any text."""
    from paddlenlp.transformers import GPTTokenizer
    from paddlenlp.transformers.gpt.tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for char in bytes_to_unicode().values():
        vocab[char] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return GPTTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"),
        pad_token="<pad>", eos_token="</s>", bos_token="</s>", unk_token="<unk>",
    )


def sentencepiece_t5(folder: Path, corpus: list[str]):
    """A T5-format sentencepiece tokenizer trained on ``corpus`` (pad 0, eos 1, unk 2, as T5)."""
    import sentencepiece as spm
    from paddlenlp.transformers import T5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(folder / "spiece"), vocab_size=60, model_type="unigram", hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
    )
    return T5Tokenizer(str(folder / "spiece.model"), extra_ids=0)
