"""Score a predictions file against references: the task's metrics as the papers compute them.

    python tools/eval.py -c CONFIG --predictions runs/valid_run.csv --split valid
    python tools/eval.py -c CONFIG --predictions run.json --references gold.json --out metrics.json
    python tools/eval.py -c CONFIG --predictions run.csv --split valid -o Eval.meteor=false
    python tools/eval.py -c configs/demo/report_tiny.yaml --predictions reports.json --split val --findings

The predictions may be in any format of ``paddle_medvl/eval/formats.py`` (ImageCLEF run file,
MEDVQA-GI submission JSON, report JSON or CSV), recognised from the content; references are a
file in one of those formats (the ImageCLEF 2023 tab-separated labels file included) or a split of
the data set in ``Data.format`` under ``Data.root``. Metrics: ``Eval.bertscore_model``,
``Eval.meteor``, ``Eval.report_cleaning``. The metrics JSON (default: beside the predictions,
``<name>.metrics.json``) is written atomically; the table is printed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from paddle_medvl.config import add_config_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--predictions", help="the predictions file (default: Eval.output)")
    refs = parser.add_mutually_exclusive_group(required=True)
    refs.add_argument("--references", help="a references file in one of the prediction formats")
    refs.add_argument("--split", help="take the references from this split of the data set (e.g. valid)")
    parser.add_argument("--format", default="auto", choices=["auto", "imageclef", "medvqa", "json", "csv"],
                        help="format of the predictions and references files (auto: from the content)")
    parser.add_argument("--out", help="the metrics JSON (default: <predictions>.metrics.json)")
    parser.add_argument("--findings", action="store_true",
                        help="reports of the synthetic demo: also each finding's accuracy (presence, side, zone, size)")
    args = parser.parse_args(argv)

    from paddle_medvl.config import ConfigError, load_config
    from paddle_medvl.errors import USER_ERRORS

    try:
        cfg = load_config(args.config, args.override)
        predictions = args.predictions or cfg.Eval.output
        if not predictions:
            raise ConfigError("no predictions file: give --predictions FILE (or Eval.output)")
        return run(cfg, args, Path(predictions))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(cfg, args, predictions_path: Path) -> int:
    from paddle_medvl.data import load_records
    from paddle_medvl.eval.evaluate import eval_task, evaluate, references_from_records
    from paddle_medvl.atomic import write_json
    from paddle_medvl.eval.formats import check_format, read_predictions
    from paddle_medvl.eval.metrics import format_table

    preds = read_predictions(predictions_path, args.format)
    task = eval_task(cfg, preds.format)
    check_format(preds.format, task, predictions_path)
    if args.split:
        references, questions = references_from_records(load_records(cfg.Data, args.split), task)
        source = f"{cfg.Data.format} {args.split} ({cfg.Data.root})"
    else:
        refs = read_predictions(args.references, args.format)
        check_format(refs.format, task, args.references)
        references, questions = refs.texts, (refs.questions if task == "vqa" else None)
        source = str(args.references)
    metrics = evaluate(cfg, preds.texts, references, questions, task=task)
    table = format_table(metrics)
    if args.findings:
        from paddle_medvl.data.synthetic.iu_xray import finding_accuracy

        metrics["findings"] = finding_accuracy(preds.texts, references)
        table += "\n" + "\n".join(f"{name:<24} {value:.3f}" for name, value in metrics["findings"].items())
    metrics["source"] = {"predictions": str(predictions_path), "references": source}

    out = Path(args.out) if args.out else predictions_path.with_name(predictions_path.stem + ".metrics.json")
    write_json(out, metrics)  # strict JSON: a metric that is NaN is written as null
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
