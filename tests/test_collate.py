"""Batching: fixed shapes, prompt tokens masked out of the labels, EOS per LLM, and DataLoader workers."""
from __future__ import annotations

import numpy as np
import paddle
import pytest
from PIL import Image

from paddle_medvl.config import ConfigError, DataConfig
from paddle_medvl.data import Record, load_records
from paddle_medvl.data.collate import IGNORE_INDEX, Collator, TextFormat, check_concept_classes
from paddle_medvl.data.dataset import RecordDataset
from paddle_medvl.data.record import DataError
from tiny_tokenizers import byte_level_bpe, sentencepiece_t5

OPT = TextFormat(decoder_only=True, add_bos=True, eos_text="\n")
T5 = TextFormat(decoder_only=False, eos_token=True)


def sample(prompt: str, target: str, index: int = 0, **extras) -> dict:
    return {"index": index, "image": np.zeros((3, 4, 4), "float32"), "prompt": prompt, "target": target, **extras}


@pytest.fixture(scope="module")
def opt_tok(tmp_path_factory):
    return byte_level_bpe(tmp_path_factory.mktemp("opt"))


def test_decoder_only_batch(opt_tok):
    collate = Collator(opt_tok, OPT, max_prompt_len=8, max_target_len=10)
    batch = collate([sample("a photo of", "CT"), sample("", "chest x-ray shows")])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, 18)
    bos, pad = opt_tok.bos_token_id, opt_tok.pad_token_id
    ids = batch["input_ids"][0].tolist()
    prompt = [bos] + opt_tok("a photo of", add_special_tokens=False)["input_ids"][:7]  # truncated to 8 with bos
    target = opt_tok("CT\n", add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt) + len(target)] == prompt + target
    assert ids[len(prompt) + len(target):] == [pad] * (18 - len(prompt) - len(target))
    labels = batch["labels"][0].tolist()
    assert labels == [IGNORE_INDEX] * len(prompt) + target + [IGNORE_INDEX] * (18 - len(prompt) - len(target))
    assert batch["attention_mask"][0].sum() == len(prompt) + len(target)
    # no prompt: only bos is masked; a long target is cut at max_target_len (its eos "\n" with it)
    second = batch["labels"][1].tolist()
    assert second[0] == IGNORE_INDEX and second[1:11] == opt_tok("chest x-ray shows\n", add_special_tokens=False)["input_ids"][:10]
    # the prompt alone, left-padded, for generation
    assert batch["prompt_ids"][0].tolist() == prompt  # exactly 8 long
    assert batch["prompt_ids"][1].tolist() == [pad] * 7 + [bos] and batch["prompt_mask"][1].tolist() == [0] * 7 + [1]
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and batch["index"].tolist() == [0, 0]


def test_encoder_decoder_batch(tmp_path):
    tok = sentencepiece_t5(tmp_path, ["the heart is normal in size .", "problems normal indication pruritic"] * 20)
    collate = Collator(tok, T5, max_prompt_len=6, max_target_len=5)
    batch = collate([sample("problems normal", "the heart is normal in size ."), sample("", "the")])
    assert batch["input_ids"].shape == (2, 6) and batch["labels"].shape == batch["decoder_attention_mask"].shape == (2, 5)
    prompt = tok("problems normal", add_special_tokens=False)["input_ids"][:6]
    assert batch["input_ids"][0].tolist()[: len(prompt)] == prompt and tok.eos_token_id not in batch["input_ids"][0].tolist()
    labels = batch["labels"][0].tolist()
    assert labels[-1] == tok.eos_token_id  # eos kept even when the target is cut
    assert batch["labels"][1].tolist() == tok("the", add_special_tokens=False)["input_ids"] + [tok.eos_token_id] + [IGNORE_INDEX] * (5 - 1 - len(tok("the", add_special_tokens=False)["input_ids"]))
    assert batch["attention_mask"][1].sum() == 0  # an empty prompt


def test_qformer_text(tmp_path, opt_tok):
    from paddlenlp.transformers import BertTokenizer

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "image", "shows", "chest", ","]))
    bert = BertTokenizer(str(tmp_path / "vocab.txt"))
    collate = Collator(opt_tok, OPT, 4, 4, qformer_tokenizer=bert, qformer_field="concept_sentence", max_qformer_len=8)
    batch = collate([sample("", "x", concept_sentence="The image shows chest.")])
    assert batch["qformer_ids"].shape == (1, 8)
    assert batch["qformer_ids"][0].tolist()[:5] == [2, 5, 6, 7, 8] and batch["qformer_mask"][0].sum() == 7


def test_concept_labels_are_the_images_cuis(opt_tok):
    """The concept head's targets: a 0/1 row per image over the mapping file's CUIs; records whose mapping
    has another size, or no CUIs at all, are refused up front with the fix; images alone get no labels."""
    collate = Collator(opt_tok, OPT, 4, 4, concept_classes=5)
    batch = collate([sample("", "x", concept_ids=[0, 3], concept_classes=5), sample("", "y", concept_ids=[], concept_classes=5)])
    assert batch["concept_labels"].tolist() == [[1, 0, 0, 1, 0], [0, 0, 0, 0, 0]]
    assert "concept_labels" not in collate([sample("", "x")])  # e.g. tools/predict.py --images
    good = Record("A_1", [], "", "x", {"concept_ids": [1], "concept_classes": 5})
    check_concept_classes([good], 5)
    with pytest.raises(ConfigError, match=r"Model.concept_classes is 6, but the data name 5 concepts .*record A_1\): "
                                         r"set Model.concept_classes=5"):
        check_concept_classes([good], 6)
    with pytest.raises(ConfigError, match="record R_9: the concept head learns the images' concepts, which only"):
        check_concept_classes([good, Record("R_9", [], "", "x", {})], 5)


def test_tokenizer_without_pad_is_refused(opt_tok):
    class NoPad:
        pad_token_id = None

    with pytest.raises(ValueError, match="has no pad token"):
        Collator(NoPad(), OPT, 4, 4)


def make_images(root, n):
    records = []
    for i in range(n):
        path = root / f"{i}.png"
        Image.new("L", (40, 30), i * 10).save(path)
        records.append(Record(f"id{i}", [str(path), str(path)], "a photo of", f"caption {i}", {"concept_sentence": ""}))
    return records


def test_dataloader_with_workers_and_distributed_sampler(tmp_path, opt_tok):
    records = make_images(tmp_path, 8)
    cfg = DataConfig(image_size=16, views="all")
    dataset = RecordDataset(records, cfg, train=True, seed=0)
    sampler = paddle.io.DistributedBatchSampler(dataset, batch_size=2, num_replicas=2, rank=1, shuffle=True)
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=2, collate_fn=Collator(opt_tok, OPT, 8, 12), return_list=True)
    seen = []
    for batch in loader:
        assert tuple(batch["pixel_values"].shape) == (2, 2, 3, 16, 16)
        assert tuple(batch["input_ids"].shape) == (2, 20)
        seen += batch["index"].numpy().tolist()
    assert len(seen) == 4 and len(set(seen)) == 4  # rank 1 gets its half of the shuffled indices


def test_views_first_and_mismatched_view_counts(tmp_path):
    records = make_images(tmp_path, 2)
    assert RecordDataset(records, DataConfig(image_size=16), train=False)[0]["image"].shape == (3, 16, 16)
    records[1].images = records[1].images[:1]
    with pytest.raises(DataError, match="id0 has 2, id1 has 1; use Data.views=first"):
        RecordDataset(records, DataConfig(image_size=16, views="all"), train=False)


def test_undecodable_image_mid_epoch_raises_or_skips(tmp_path, capsys):
    records = make_images(tmp_path, 3)
    (tmp_path / "1.png").write_bytes((tmp_path / "1.png").read_bytes()[:40])  # truncated
    strict = RecordDataset(records, DataConfig(image_size=16), train=False)
    with pytest.raises(DataError, match=r"1\.png: .* \(record id1\)"):
        strict[1]
    lenient = RecordDataset(records, DataConfig(image_size=16, on_error="skip"), train=False)
    item = lenient[1]
    assert item["index"] == 2 and item["target"] == "caption 2"
    assert "skipped record id1 (1 so far here)" in capsys.readouterr().err


def test_records_to_batches_end_to_end(tmp_path, opt_tok):
    """A real-format data set through the loader (what training does)."""
    root = tmp_path / "vqa"
    (root / "images").mkdir(parents=True)
    entries = []
    for i in range(4):
        Image.new("RGB", (32, 32), (200, 50 + i, 50)).save(root / "images" / f"img{i}.jpg")
        entries.append({"ImageID": f"img{i}", "Labels": [{"Question": "How many polyps are in the image?", "AnswerType": "Number", "Answer": [str(i)]}]})
    import json

    (root / "gt.json").write_text(json.dumps(entries))
    cfg = DataConfig(format="medvqa_gi", root=str(root), image_size=16, prompt="Question: {question} Answer:")
    records = load_records(cfg, "all")
    loader = paddle.io.DataLoader(RecordDataset(records, cfg, train=False), batch_size=4, collate_fn=Collator(opt_tok, OPT, 48, 4))
    batch = next(iter(loader))
    labels = batch["labels"].numpy()
    targets = [opt_tok.decode([t for t in row if t != IGNORE_INDEX]) for row in labels]
    assert targets == ["0\n", "1\n", "2\n", "3\n"]
