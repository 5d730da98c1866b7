"""Generate captions, answers or reports and write them in the task's official submission format.

    python tools/predict.py --checkpoint output/demo/caption_tiny/final --images test_images/ --out run.csv
    python tools/predict.py -c CONFIG --split valid --out runs/valid_run.csv
    python tools/predict.py -c CONFIG --checkpoint checkpoints/best --images test_images/ --out run.csv -o Decode.num_beams=1
    python tools/predict.py -c CONFIG --images one.jpg --out one.json --format json --no-postprocess

Settings. A checkpoint folder that training wrote (``final/``, ``checkpoint-<step>/``) is
self-contained: its ``config.yaml`` holds the model and the run's ``Data`` (image size, views,
prompt, format), ``Decode`` and ``Eval`` sections, and the folder holds copies of the tokenizers
(``tokenizer/``, ``qformer_tokenizer/``). So ``--checkpoint DIR`` alone predicts as training
validated, from any directory, and after the folder has moved (a checkpoint of the trainable
weights only names its base, ``Model.pretrained``, by absolute path: that one stays put).

Precedence, lowest first: the checkpoint's saved settings, then ``-c CONFIG`` key by key (as if
CONFIG began with ``_base_: DIR/config.yaml``: a key CONFIG sets wins, a key it leaves out keeps
the checkpoint's value), then ``-o`` overrides; ``-c CONFIG --checkpoint DIR -o
Decode.num_beams=1`` changes only the beams. The architecture and weights always come from the
checkpoint; of ``Model`` only the run-time fields (dtype, tokenizer folders, ...:
``RUNTIME_FIELDS`` in ``paddle_medvl/build.py``) apply. Without ``--checkpoint``, CONFIG and
``-o`` are the whole config and ``Model.pretrained`` only names the weights (no settings are read
from it). A Hugging Face checkpoint folder must be converted first (``tools/convert_hf.py``); the
error says so.

Input: a data-set split (``--split``, records from ``Data.format`` under ``Data.root``), a folder of
images (all images, DICOM ``.dcm`` included, sorted by name) or one image file (``--images``).
Images from ``--images`` are named by their file stem and prompted with ``Data.prompt``; for VQA
each image is asked the 18 MEDVQA-GI questions (QuestionID 0-17), each through ``Data.prompt``
(default ``{question}``).

Output (``--format auto``): caption -> ImageCLEF run file (``ID|caption``), vqa -> MEDVQA-GI
submission JSON, report -> CSV (``id,report``) for a ``.csv`` path, else JSON. See
``paddle_medvl/eval/formats.py``. The file is written atomically, once generation is done.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paddle_medvl.data.image import DICOM_SUFFIXES

# What --images takes from a folder: what data/image.py's load_image decodes (DICOM needs pydicom)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", *DICOM_SUFFIXES)


def records_from_images(source: Path, cfg, task: str) -> list:
    """Records for one image or every image of a folder (sorted), prompted with ``Data.prompt``."""
    from paddle_medvl.data import READERS, DataError, Record, fill_prompt
    from paddle_medvl.eval.formats import MEDVQA_QUESTIONS, MEDVQA_REQUIRED

    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DataError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    elif source.is_file():
        paths = [source]
    else:
        raise DataError(f"--images {source}: no such file or folder")
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise DataError(f"{path}: two images are named {path.stem!r} ({stems[path.stem].name}); IDs are file stems")
        stems[path.stem] = path
    template = cfg.Data.prompt or READERS.get(cfg.Data.format, (None, ""))[1]
    if task == "vqa":
        template = template or "{question}"
    records = []
    for stem, path in stems.items():
        if task == "vqa":
            for qid in MEDVQA_REQUIRED:
                extras = {"image_id": stem, "question": MEDVQA_QUESTIONS[qid], "question_index": qid}
                record = Record(f"{stem}#{qid}", [str(path.resolve())], "", "", extras)
                record.prompt = fill_prompt(template, record)
                records.append(record)
        else:
            record = Record(stem, [str(path.resolve())], "", "", {})
            record.prompt = fill_prompt(template, record)
            records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    from paddle_medvl.config import add_config_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--checkpoint", help="a checkpoint folder: its weights and, under -c/-o, its saved settings "
                                             "(Model.pretrained is this folder)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="an image file or a folder of images")
    source.add_argument("--split", help="a split of the data set in Data.format under Data.root (e.g. valid)")
    parser.add_argument("--out", help="the predictions file (default: Eval.output)")
    parser.add_argument("--format", default="auto", choices=["auto", "imageclef", "medvqa", "json", "csv"],
                        help="output format (auto: the task's official one)")
    parser.add_argument("--no-postprocess", action="store_true", help="keep the raw generated text (Eval.postprocess=false)")
    args = parser.parse_args(argv)

    from paddle_medvl.build import load_run_config
    from paddle_medvl.config import ConfigError
    from paddle_medvl.errors import USER_ERRORS

    try:
        cfg = load_run_config(args.config, args.override, args.checkpoint)
        if args.no_postprocess:
            cfg.Eval.postprocess = False
        out = args.out or cfg.Eval.output
        if not out:
            raise ConfigError("no output file: give --out FILE (or Eval.output)")
        return run(cfg, args, Path(out))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(cfg, args, out: Path) -> int:
    import paddle

    from paddle_medvl.build import build_model, build_tokenizers, resolve_model_config
    from paddle_medvl.data import load_records
    from paddle_medvl.device import setup_device
    from paddle_medvl.eval.evaluate import eval_task, generate_predictions
    from paddle_medvl.eval.formats import check_format, default_format, write_predictions

    task = eval_task(cfg)
    fmt = check_format(default_format(task, out) if args.format == "auto" else args.format, task, out)
    records = load_records(cfg.Data, args.split) if args.split else records_from_images(args.images, cfg, task)

    setup_device(cfg.Global.device)
    paddle.seed(cfg.Global.seed)
    cfg.Model = resolve_model_config(cfg.Model)
    tokenizer, qformer_tokenizer = build_tokenizers(cfg.Model)
    model = build_model(cfg.Model)
    predictions = generate_predictions(model, tokenizer, records, cfg, task=task, qformer_tokenizer=qformer_tokenizer)

    altered = write_predictions(out, fmt, predictions)
    missing = len(records) - len(predictions)
    print(f"wrote {len(predictions)} {task} predictions to {out} ({fmt})"
          + (f"; {missing} records skipped (Data.on_error=skip)" if missing else "")
          + (f"; {altered} captions had '|' or line breaks replaced by spaces" if altered else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
