"""The training run: ``train(cfg)`` is what ``tools/train.py`` runs (the loop is ``engine/trainer.py``)."""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from ..config import Config, ConfigError, dump_yaml, to_dict


def resume_folder(cfg: Config) -> Path | None:
    """``Global.resume``: "" -> None, auto -> the newest complete checkpoint (None if there is none yet), or a folder."""
    from . import checkpoint as ckpt

    resume = cfg.Global.resume
    if not resume:
        return None
    if resume == "auto":
        return ckpt.latest(cfg.Train.output_dir)
    folder = Path(resume)
    if not (folder / ckpt.STATE_FILE).is_file():
        raise ConfigError(f"Global.resume: {folder} is not a complete checkpoint folder (no {ckpt.STATE_FILE})")
    return folder


def check_train_config(cfg: Config) -> None:
    """Mistakes in ``Train`` / ``Eval`` that would otherwise surface after the model and data are built."""
    from ..eval.evaluate import TASK_METRICS, eval_task
    from .optim import SCHEDULES

    train = cfg.Train
    if not train.lr > 0:
        raise ConfigError(f"Train.lr must be > 0, got {train.lr:g}")
    for i, group in enumerate(train.param_groups):
        if group.lr is not None and not group.lr > 0:
            raise ConfigError(f"Train.param_groups[{i}].lr must be > 0, got {group.lr:g}")
    if train.min_lr < 0:
        raise ConfigError(f"Train.min_lr must be >= 0, got {train.min_lr:g}")
    if train.schedule not in SCHEDULES:
        raise ConfigError(f"Train.schedule must be one of {', '.join(SCHEDULES)}, got {train.schedule!r}")
    task = eval_task(cfg)
    if train.best_metric and train.best_metric not in TASK_METRICS[task]:
        raise ConfigError(f"Train.best_metric {train.best_metric!r} is not a metric the {task} task reports "
                          f"({', '.join(TASK_METRICS[task])})")
    if train.best_metric == "METEOR" and not cfg.Eval.meteor:
        raise ConfigError("Train.best_metric is METEOR, but Eval.meteor is false (METEOR is not computed)")
    if train.best_metric == "BERTScore" and not cfg.Eval.bertscore_model:
        raise ConfigError("Train.best_metric is BERTScore, but Eval.bertscore_model names no local model (BERTScore "
                          "is not computed)")


def train(cfg: Config) -> dict:
    """Fine-tune as the config says; returns (and writes to ``output_dir/summary.json``) the summary.

    Runs under a fresh ``unique_name`` scope: parameter and optimizer-state names key the optimizer's
    checkpoint, so they must not depend on what this process built before (a second run in a notebook).
    """
    import paddle

    with paddle.utils.unique_name.guard():
        return _train(cfg)


def _train(cfg: Config) -> dict:
    import paddle
    from paddlenlp.trainer.trainer_callback import PrinterCallback, ProgressCallback
    from paddlenlp.utils.log import logger as nlp_logger

    from ..build import build_collator, build_model, build_tokenizers, resolve_model_config
    from ..data import load_records
    from ..data.collate import check_concept_classes
    from ..data.dataset import RecordDataset
    from ..device import setup_device
    from . import checkpoint as ckpt
    from .optim import apply_trainable
    from .trainer import AMP_CHOICES, MODEL_DIR, SUMMARY_FILE, LogLines, MedVLTrainer, training_arguments, world, write_summary

    check_train_config(cfg)
    if cfg.Train.amp not in AMP_CHOICES:
        raise ConfigError(f"Train.amp must be one of {', '.join(AMP_CHOICES)}, got {cfg.Train.amp!r}")
    device = setup_device(cfg.Global.device)
    amp = device.check_amp_dtype(None if cfg.Train.amp == "off" else cfg.Train.amp)
    nlp_logger.set_level("WARNING")  # paddlenlp's argument dump; our LogLines say what matters
    args = training_arguments(cfg, device, amp)  # also starts the distributed environment under launch
    rank, size = world()
    resume = resume_folder(cfg)
    resumed_step = _resumed_step(resume) if resume else 0  # now: Train.keep_last may delete that folder

    paddle.seed(cfg.Global.seed)
    np.random.seed(cfg.Global.seed)
    random.seed(cfg.Global.seed)
    cfg.Model = resolve_model_config(cfg.Model)
    tokenizer, qformer_tokenizer = build_tokenizers(cfg.Model, training=True)
    model = build_model(cfg.Model)
    trainable = apply_trainable(model, cfg.Train, idle=model.idle_parameters())
    if cfg.Model.concept_detection_weight > 0 and not any(n.startswith("concept_head.") for n in trainable):
        raise ConfigError("Model.concept_detection_weight > 0, but the concept head is frozen: add 'concept_head\\.' "
                          "to Train.trainable")

    records = load_records(cfg.Data, cfg.Data.train_split)
    val_records = []
    if cfg.Data.val_split:
        val_records = load_records(cfg.Data, cfg.Data.val_split)
        val_records = val_records[: cfg.Train.eval_samples] if cfg.Train.eval_samples > 0 else val_records
    if cfg.Model.concept_detection_weight > 0:
        check_concept_classes(records + val_records, cfg.Model.concept_classes)
    dataset = RecordDataset(records, cfg.Data, train=True, seed=cfg.Global.seed)
    collator = build_collator(cfg, tokenizer, qformer_tokenizer)

    output = Path(cfg.Train.output_dir)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        # A summary describes the run that ended with it: one of an earlier run must not outlive a
        # run that stops (a crash, a diverged loss) before writing its own.
        (output / SUMMARY_FILE).unlink(missing_ok=True)
        for path in ckpt.remove_partial(output):
            print(f"[train] removed {path}, left by an interrupted save", flush=True)
        from ..atomic import atomic_write

        atomic_write(output / "config.yaml", lambda f: f.write(dump_yaml(to_dict(cfg))))
    n_train = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    n_all = sum(int(np.prod(p.shape)) for p in model.parameters())
    if rank == 0:
        print(
            f"[train] {len(records)} training records, {len(val_records)} for validation; "
            f"{n_train:,} of {n_all:,} parameters train; {size} process(es), global batch "
            f"{cfg.Train.batch_size * size * cfg.Train.grad_accum}; AMP {amp or 'off'}"
            + (f"; resuming from {resume}" if resume else "; Global.resume=auto: no checkpoint yet, starting afresh"
               if cfg.Global.resume else ""),
            flush=True,
        )

    trainer = MedVLTrainer(cfg, model, args, dataset, collator, tokenizer, qformer_tokenizer, val_records, trainable)
    trainer.pop_callback(PrinterCallback)
    trainer.pop_callback(ProgressCallback)
    log_lines = LogLines(str(output / "visualdl") if cfg.Train.visualdl else None)
    trainer.add_callback(log_lines)
    start = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        seconds = time.time() - start
        if val_records and trainer.last_eval_step != result.global_step:
            trainer.evaluate()
    finally:
        log_lines.close()
    final = trainer.save_final()
    steps_run = result.global_step - resumed_step
    summary = {
        "steps": result.global_step,
        "steps_this_run": steps_run,
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / steps_run, 4) if steps_run else None,
        "train_loss": round(result.training_loss, 6),
        "validation": trainer.last_eval,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
        "final_weights": str(final or output / MODEL_DIR),
        "trainable_parameters": n_train,
        "parameters": n_all,
        "skipped_records": sorted(dataset.skipped_ids),  # Data.on_error=skip: each bad training record once
    }
    if rank == 0:
        write_summary(output, summary)
        lines = [f"[train] done: {summary['steps']} steps in {seconds:.1f} s ({summary['seconds_per_step']} s/step), "
                 f"weights in {summary['final_weights']}"
                 + (f"; {len(dataset.skipped_ids)} training records skipped (Data.on_error=skip)" if dataset.skipped_ids else "")]
        if summary["validation"]:
            lines.append("[train] validation: " + ", ".join(
                f"{k[5:]} {v:.4f}" for k, v in summary["validation"].items() if k != "eval_runtime"))
        if summary["best_checkpoint"]:
            lines.append(f"[train] best {cfg.Train.best_metric} {summary['best_metric']:.4f} at {summary['best_checkpoint']}")
        print("\n".join(lines), flush=True)
    if size > 1:
        paddle.distributed.barrier()  # leave together: no rank exits while another still talks to it
    return summary


def _resumed_step(folder: Path) -> int:
    import json

    from . import checkpoint as ckpt

    return int(json.loads((folder / ckpt.STATE_FILE).read_text())["global_step"])
