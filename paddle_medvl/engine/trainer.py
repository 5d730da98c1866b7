"""Fine-tuning on paddlenlp's ``Trainer``: our YAML in, its loop (data parallel, fleet sharding, AMP
with a loss scaler, gradient accumulation, clipping, logging, callbacks) underneath.

What is ours, and why:

* ``training_arguments``: ``Train.*`` / ``Global.*`` -> ``TrainingArguments``; users write one config.
* the batches: a shuffle keyed by (seed, epoch) and augmentation keyed by (seed, epoch, sample), so a
  resumed run sees exactly the batches an uninterrupted one would, whatever the worker count;
  ``drop_last`` everywhere (fixed shapes: NPUs compile one kernel per shape).
* the optimizer: AdamW over ``optim.param_groups`` (per-pattern lr and decay, no decay on biases and
  norms) with ``optim.build_scheduler`` (warm-up, then cosine/linear to ``min_lr`` or constant).
* checkpoints: written to a temporary folder and renamed (``checkpoint.write_folder``); weights as
  safetensors (only the trainable ones when ``Model.pretrained`` holds the rest); the optimizer,
  scheduler, loss-scaler and RNG states as safetensors + JSON (``engine/state.py``: paddlenlp's pickles
  would run a handed-over checkpoint's code on resume), read back by our own loaders. Keep the newest
  ``Train.keep_last`` and the best by ``Train.best_metric``. Never a checkpoint with non-finite weights.
* divergence: the first non-finite loss stops training with an error naming the step, the loss parts
  and the batch's records; under a float16 loss scaler, ``Train.max_skipped_steps`` overflow skips in
  a row do.
* resume: paddlenlp restores the RNG only after skipping batches inside an epoch, so a checkpoint
  taken at an epoch boundary would resume with fresh RNG; we restore it on load as well.
* validation: the loss and the task's metrics on ``Train.eval_samples`` records, with generation
  (``eval/evaluate.py``), each rank on its share of the records.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.distributed as dist
from paddlenlp.trainer import Trainer, TrainerCallback, TrainingArguments
from paddlenlp.trainer.trainer import OPTIMIZER_NAME, SCALER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from paddlenlp.transformers.model_utils import _add_variant

from ..atomic import write_json
from ..config import Config, ConfigError
from ..data.dataset import RecordDataset
from ..data.loader import data_loader  # a worker's DataError raised as itself, skips counted
from ..errors import MedVLError
from . import checkpoint as ckpt
from . import state as states
from .optim import build_scheduler, flat_parameters, param_groups

# The training states in a checkpoint folder (engine/state.py: NAME.json + NAME.safetensors)
STATE_NAMES = {"optimizer": "optimizer", "scheduler": "scheduler", "scaler": "scaler", "rng": "rng_state"}
MODEL_DIR = "final"  # output_dir/final: the weights at the end, a Model.pretrained for the next stage
SUMMARY_FILE = "summary.json"
LOSS_PARTS = ("caption_loss", "concept_loss", "detection_loss")  # Blip2Output fields, logged beside the loss
# The batch keys Blip2.forward takes (the collator also writes index, prompt_ids, ... for generation)
MODEL_INPUTS = ("pixel_values", "input_ids", "attention_mask", "labels", "qformer_ids", "qformer_mask", "concept_labels")
AMP_CHOICES = ("auto", "off", "float16", "bfloat16")
# Fleet sharding of the optimizer states. Not stage2: on Paddle 3.3.1 (GroupShardedStage2, test plugin
# device) one step left 83 of 99 trainable tensors up to one lr away from data parallel's result.
SHARDING = ("", "stage1")
# Kept in float32 under AMP besides Paddle's own list (which has layer_norm, softmax, cross_entropy...):
# F.cross_entropy's dygraph op, which that list misses (the Q-Former's concept loss takes fp16 logits).
AMP_BLACK_LIST = ["cross_entropy_with_softmax"]


class TrainingDiverged(MedVLError, RuntimeError):
    """A non-finite loss or weight: the message names the step, the values and the records."""


def world() -> tuple[int, int]:
    """(rank, world size) of this process."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class EpochBatchSampler(paddle.io.DistributedBatchSampler):
    """This rank's batches of one epoch: a permutation keyed by (seed, epoch), cut to a multiple of
    ``world size x batch size``, dealt out rank by rank. ``set_epoch`` also tells the dataset."""

    def __init__(self, dataset: RecordDataset, batch_size: int, seed: int, shuffle: bool = True) -> None:
        rank, size = world()
        super().__init__(dataset, batch_size, num_replicas=size, rank=rank, shuffle=shuffle, drop_last=True)
        self.seed = seed
        self.per_rank = len(dataset) // size // batch_size * batch_size
        if self.per_rank == 0:
            raise ConfigError(
                f"{len(dataset)} training records cannot fill one batch of {batch_size} on each of {size} devices "
                "(Train.batch_size)"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        mine = order[: self.per_rank * self.nranks][self.local_rank :: self.nranks]
        for start in range(0, self.per_rank, self.batch_size):
            yield mine[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return self.per_rank // self.batch_size


class SkippedSteps(TrainerCallback):
    """Stops training after ``limit`` optimizer steps in a row that the loss scaler skipped (overflow)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.run = limit, 0

    def on_optimizer_end(self, args, state, control, scaler=None, **kwargs):
        if scaler is None:
            return
        found = getattr(scaler, "_cache_found_inf", getattr(scaler, "_cache_founf_inf", False))
        self.run = self.run + 1 if bool(found) else 0
        if self.limit > 0 and self.run >= self.limit:
            raise TrainingDiverged(
                f"step {state.global_step + 1}: the float16 loss scaler skipped {self.run} steps in a row "
                f"(gradients overflow at every scale; Train.max_skipped_steps={self.limit}); training stopped "
                "(lower Train.lr or use bfloat16/float32)"
            )


class LogLines(TrainerCallback):
    """One readable line per log event on rank 0 (step, loss parts, lr, samples/s, ETA), and the
    validation metrics; optionally the same scalars to VisualDL."""

    def __init__(self, visualdl_dir: str | None = None) -> None:
        self.writer = None
        self.visualdl_dir = visualdl_dir
        self.start = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.start_step = time.time(), state.global_step
        if self.visualdl_dir and state.is_world_process_zero:
            from visualdl import LogWriter

            self.writer = LogWriter(logdir=self.visualdl_dir)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.writer is not None:
            for key, value in logs.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{key}" if not key.startswith("eval_") else f"eval/{key[5:]}", value, state.global_step)
        if "loss" in logs:
            done = state.global_step - self.start_step
            elapsed = time.time() - self.start
            eta = elapsed / done * (state.max_steps - state.global_step) if done else float("nan")
            parts = ", ".join(f"{k.replace('_loss', '')} {logs[k]:.4f}" for k in LOSS_PARTS if k in logs)
            print(
                f"[train] step {state.global_step}/{state.max_steps} epoch {state.epoch:.2f} | loss {logs['loss']:.4f}"
                + (f" ({parts})" if parts else "")
                + f" | lr {logs.get('learning_rate', 0):.3e} | {logs.get('interval_samples_per_second', 0):.1f} samples/s"
                + f" | ETA {_duration(eta)}",
                flush=True,
            )
        evals = {k[5:]: v for k, v in logs.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        if evals:
            print(f"[eval] step {state.global_step} | " + " | ".join(f"{k} {v:.4f}" for k, v in evals.items()), flush=True)

    def close(self) -> None:
        """After the last log (the final validation comes after ``on_train_end``)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def training_arguments(cfg: Config, device, amp: str | None) -> TrainingArguments:
    """``TrainingArguments`` from the config: one source of truth, no second config for users."""
    train = cfg.Train
    if train.sharding not in SHARDING:
        raise ConfigError(f"Train.sharding must be one of {', '.join(repr(s) for s in SHARDING)}, got {train.sharding!r}")
    if train.amp_level not in ("O1", "O2"):
        raise ConfigError(f"Train.amp_level must be O1 or O2, got {train.amp_level!r}")
    if len(train.betas) != 2:
        raise ConfigError(f"Train.betas must be two numbers, got {train.betas}")
    if train.batch_size < 1 or train.grad_accum < 1:
        raise ConfigError("Train.batch_size and Train.grad_accum must be >= 1")
    evaluate = train.eval_steps >= 0
    save_each_epoch = train.save_steps <= 0
    kwargs: dict[str, Any] = dict(
        output_dir=train.output_dir,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=cfg.Eval.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps if train.max_steps > 0 else -1,
        learning_rate=train.lr,
        weight_decay=train.weight_decay,
        adam_beta1=train.betas[0],
        adam_beta2=train.betas[1],
        adam_epsilon=train.eps,
        max_grad_norm=train.max_grad_norm,
        warmup_steps=train.warmup_steps,
        logging_steps=train.log_steps,
        save_strategy="epoch" if save_each_epoch else "steps",
        save_steps=max(train.save_steps, 1),
        evaluation_strategy=("epoch" if train.eval_steps == 0 else "steps") if evaluate else "no",
        eval_steps=max(train.eval_steps, 1),
        save_total_limit=None,  # ours: checkpoint.rotate
        seed=cfg.Global.seed,
        dataloader_num_workers=cfg.Data.num_workers,
        dataloader_drop_last=True,
        report_to=[],  # VisualDL through LogLines (paddlenlp's callback fails on visualdl 2.5, see workarounds)
        disable_tqdm=False,
        skip_memory_metrics=True,
        device=device.type,
        logging_dir=str(Path(train.output_dir) / "visualdl"),
    )
    if amp:
        kwargs.update(
            fp16=amp == "float16", bf16=amp == "bfloat16", fp16_opt_level=train.amp_level,
            scale_loss=train.loss_scale, amp_custom_black_list=AMP_BLACK_LIST,
        )
    if train.sharding:
        kwargs.update(sharding=train.sharding, sharding_parallel_degree=-1)
    return TrainingArguments(**kwargs)


class MedVLTrainer(Trainer):
    """paddlenlp's Trainer with our batches, optimizer, checkpoints, resume and validation (module docstring)."""

    def __init__(self, cfg: Config, model, args: TrainingArguments, train_dataset: RecordDataset, collator,
                 tokenizer, qformer_tokenizer=None, val_records=(), trainable: list[str] = ()) -> None:
        super().__init__(model=model, args=args, data_collator=collator, train_dataset=train_dataset)
        self.cfg = cfg
        self.text_tokenizer = tokenizer
        self.qformer_tokenizer = qformer_tokenizer
        self.val_records = list(val_records)
        self.trainable = list(trainable)
        self._parts: dict[str, list[float]] = {key: [] for key in LOSS_PARTS}
        self.last_eval, self.last_eval_step = None, -1
        self.add_callback(SkippedSteps(cfg.Train.max_skipped_steps))

    # ------------------------------------------------------------------ data, optimizer, schedule

    def get_train_dataloader(self):
        sampler = EpochBatchSampler(self.train_dataset, self.args.per_device_train_batch_size, self.args.seed)
        return data_loader(
            self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers, name="train",
        )

    def create_scheduler(self, num_training_steps: int):
        if self.lr_scheduler is None:
            self.lr_scheduler = build_scheduler(self.cfg.Train, num_training_steps)
        return self.lr_scheduler

    def create_optimizer(self, lr_scheduler=None):
        if self.optimizer is None:
            train = self.cfg.Train
            parameters, decay_fn = param_groups(self.model, train), None
            if train.sharding:
                parameters, decay_fn = flat_parameters(parameters, train.weight_decay)
            self.optimizer = paddle.optimizer.AdamW(
                learning_rate=self.lr_scheduler if lr_scheduler is None else lr_scheduler,
                parameters=parameters,
                weight_decay=train.weight_decay,
                apply_decay_param_fun=decay_fn,
                beta1=train.betas[0], beta2=train.betas[1], epsilon=train.eps,
                grad_clip=paddle.nn.ClipGradByGlobalNorm(train.max_grad_norm) if train.max_grad_norm > 0 else None,
                multi_precision=self.args.fp16_opt_level == "O2" and (self.args.fp16 or self.args.bf16),
            )
        return self.optimizer

    # ------------------------------------------------------------------ the step

    def compute_loss(self, model, inputs, return_outputs=False):
        out = model(**_model_inputs(inputs))
        parts = {key: float(getattr(out, key)) for key in self._parts if getattr(out, key) is not None}
        for key, value in parts.items():
            self._parts[key].append(value)
        loss = float(out.loss)
        if not self.do_grad_scaling and _any_rank(not math.isfinite(loss)):  # a scaler skips such a step itself
            # Every rank stops at the same step (one waiting in the gradients' all-reduce would hang).
            self._diverged(f"the loss is {loss}" if not math.isfinite(loss) else "another rank's loss is not finite",
                           parts, inputs)
        return (out.loss, out) if return_outputs else out.loss

    def _diverged(self, what: str, parts: dict[str, float], inputs: dict | None) -> None:
        ids = [self.train_dataset.records[int(i)].id for i in inputs["index"]] if inputs and "index" in inputs else []
        detail = ", ".join(f"{k.replace('_loss', '')} {v}" for k, v in parts.items())
        raise TrainingDiverged(
            f"step {self.state.global_step + 1}: {what}" + (f" ({detail})" if detail else "")
            + (f"; batch records: {', '.join(ids)}" if ids else "")
            + f"; training stopped, no checkpoint written with these weights (lower Train.lr, now {self.cfg.Train.lr:g}, "
            "or check these records)"
        )

    def check_finite_weights(self) -> None:
        """Before any save: a non-finite trainable weight is an error naming it (the loss may still look finite)."""
        names = [name for name, p in self.model.named_parameters()
                 if not p.stop_gradient and not bool(paddle.isfinite(p).all())]
        if names:
            raise TrainingDiverged(
                f"step {self.state.global_step}: non-finite weights in {len(names)} tensor(s) "
                f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); training stopped before saving them "
                f"(lower Train.lr, now {self.cfg.Train.lr:g})"
            )

    def log(self, logs: dict, **kwargs) -> None:
        if "loss" in logs:  # the loss parts over the same steps as paddlenlp's averaged loss
            for key, values in self._parts.items():
                if values:
                    logs[key] = round(_mean_over_ranks(float(np.mean(values))), 6)
                values.clear()
        super().log(logs, **kwargs)

    # ------------------------------------------------------------------ validation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Loss and the task's metrics on the validation records (each rank generates its share)."""
        from ..eval.evaluate import evaluate as score, generate_predictions, references_from_records, eval_task

        if not self.val_records:
            return {}
        start = time.time()
        rank, size = world()
        model = self.model
        task = eval_task(self.cfg)
        mine = self.val_records[rank::size]
        loss = self._validation_loss(mine)
        predictions = generate_predictions(model, self.text_tokenizer, mine, self.cfg, task=task,
                                           qformer_tokenizer=self.qformer_tokenizer, progress=False)
        pairs = [(p.id, p.text) for p in predictions]
        losses = [loss]
        if size > 1:
            gathered: list = []
            dist.all_gather_object(gathered, (pairs, loss))
            pairs = [pair for part, _ in gathered for pair in part]
            losses = [part_loss for _, part_loss in gathered]
        refs, questions = references_from_records(self.val_records, task)
        texts = dict(pairs)
        refs = {k: v for k, v in refs.items() if k in texts}  # records skipped under Data.on_error=skip
        metrics = score(self.cfg, texts, refs, {k: questions[k] for k in refs} if questions else None, task)
        out = {f"{metric_key_prefix}_loss": float(np.mean([x for x in losses if x is not None]))}
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "n":
                out[f"{metric_key_prefix}_{key}"] = float(value)
        out[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 2)
        self.log(dict(out))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=out)
        self.last_eval, self.last_eval_step = out, self.state.global_step
        return out

    @paddle.no_grad()
    def _validation_loss(self, records) -> float | None:
        dataset = RecordDataset(list(records), self.cfg.Data, train=False)
        loader = data_loader(dataset, batch_size=self.cfg.Eval.batch_size, collate_fn=self.data_collator,
                             num_workers=self.cfg.Data.num_workers, name="validation loss")
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        try:
            for batch in loader:
                with self.autocast_smart_context_manager():
                    out = self.model(**_model_inputs(batch))
                n = int(batch["pixel_values"].shape[0])
                total += float(out.loss) * n
                count += n
        finally:
            if was_training:
                self.model.train()
        return total / count if count else None

    # ------------------------------------------------------------------ checkpoints

    def _weights_to_save(self) -> tuple[list[str] | None, str]:
        """(names, base): the trainable weights on top of Model.pretrained, or everything."""
        base = self.cfg.Model.pretrained
        if base and not self.cfg.Train.save_frozen:
            return self.trainable, base
        return None, ""

    def _save_checkpoint(self, model, metrics=None):
        train = self.cfg.Train
        final = Path(self.args.output_dir) / f"{ckpt.PREFIX}{self.state.global_step}"
        if metrics and train.best_metric:
            key = f"eval_{train.best_metric}"
            if key not in metrics:
                known = ", ".join(k[5:] for k in metrics if k.startswith("eval_"))
                raise ConfigError(f"Train.best_metric {train.best_metric!r} is not a validation metric here ({known})")
            value = metrics[key]
            lower = train.best_metric == "loss"
            best = self.state.best_metric
            if math.isfinite(value) and (best is None or (value < best if lower else value > best)):
                self.state.best_metric = value
                self.state.best_model_checkpoint = str(final)
        self.check_finite_weights()  # every rank: they hold the same weights and stop together
        rng = states.rng_to_data({
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cuda": paddle.get_rng_state(),
            "cpu": paddle.framework.core.default_cpu_generator().get_state(),
        })
        rank, size = world()
        if size > 1:
            gathered: list = []
            dist.all_gather_object(gathered, rng)
        # Sharded optimizer states live on their ranks: each writes its own state
        # (optimizer.<shardNN>.*) into the folder rank 0 fills.
        sharded = bool(self.cfg.Train.sharding) and size > 1
        if not self.args.should_save:
            if sharded:
                dist.barrier()  # rank 0 has made the temporary folder
                states.save_state(ckpt.temporary(final), self._optimizer_state_name(), self.optimizer.state_dict())
                dist.barrier()  # every shard is written: rank 0 renames the folder
            return
        names, base = self._weights_to_save()

        def write(folder: Path) -> None:
            if sharded:
                dist.barrier()
            self.model.save_pretrained(folder, names, base, settings=self.cfg)  # self-contained: Data/Decode/Eval + tokenizers
            states.save_state(folder, self._optimizer_state_name(), self.optimizer.state_dict())
            states.save_state(folder, STATE_NAMES["scheduler"], self.lr_scheduler.state_dict())
            if self.do_grad_scaling:
                states.save_state(folder, STATE_NAMES["scaler"], self.scaler.state_dict())
            states.save_state(folder, _rng_name(size), gathered if size > 1 else rng)
            if sharded:
                dist.barrier()
            write_json(folder / TRAINER_STATE_NAME, dataclasses.asdict(self.state))  # last: marks the folder complete

        ckpt.write_folder(final, write)
        ckpt.rotate(self.args.output_dir, train.keep_last, self.state.best_model_checkpoint)

    def _optimizer_state_name(self) -> str:
        sharded = bool(self.cfg.Train.sharding) and world()[1] > 1
        return f"{STATE_NAMES['optimizer']}.{self.args.optimizer_name_suffix}" if sharded else STATE_NAMES["optimizer"]

    def _load_from_checkpoint(self, resume_from_checkpoint=None):
        if resume_from_checkpoint is None:
            return
        folder = Path(resume_from_checkpoint)
        self.model.load_weights(folder, only_own=_same_base(folder, self.cfg.Model.pretrained))
        self._load_rng_state(str(folder))

    def _load_optimizer_and_scheduler(self, checkpoint):
        """Our state files (``engine/state.py``), never ``paddle.load``: every rank reads its own."""
        if checkpoint is None:
            return
        folder = Path(checkpoint)
        name = self._optimizer_state_name()
        legacy = _add_variant(OPTIMIZER_NAME, self.args.optimizer_name_suffix) if "." in name else OPTIMIZER_NAME
        self.optimizer.set_state_dict(_to_tensors(states.load_state(folder, name, legacy)))
        self.lr_scheduler.set_state_dict(states.load_state(folder, STATE_NAMES["scheduler"], SCHEDULER_NAME))
        if self.do_grad_scaling and states.has_state(folder, STATE_NAMES["scaler"], SCALER_NAME):
            self.scaler.load_state_dict(states.load_state(folder, STATE_NAMES["scaler"], SCALER_NAME))

    def _load_rng_state(self, checkpoint):
        """paddlenlp's, over our state files (it would ``paddle.load`` a pickle)."""
        if checkpoint is None:
            return
        rank, size = world()
        folder = Path(checkpoint)
        name = _rng_name(size)
        if not states.has_state(folder, name):
            if (folder / _legacy_rng_name(size)).is_file():
                print(f"[train] {folder / _legacy_rng_name(size)}: an RNG pickle of an earlier version, not read "
                      "(it holds Paddle objects, which the safe reader refuses); this resumed run's randomness "
                      "differs from an uninterrupted one", flush=True)
            return
        data = states.load_state(folder, name)
        rng = states.rng_from_data(data[rank] if size > 1 else data)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        paddle.framework.core.default_cpu_generator().set_state(rng["cpu"])
        if rng["cuda"]:  # the current device's generators (the CPU's again on the CPU)
            paddle.set_rng_state(rng["cuda"])

    def save_final(self) -> Path | None:
        """``output_dir/final``: the weights now (a ``Model.pretrained`` for the next stage)."""
        self.check_finite_weights()
        if not self.args.should_save:
            return None
        names, base = self._weights_to_save()
        return ckpt.write_folder(Path(self.args.output_dir) / MODEL_DIR, lambda f: self.model.save_pretrained(f, names, base, settings=self.cfg))


def _rng_name(size: int) -> str:
    return f"{STATE_NAMES['rng']}_{size}" if size > 1 else STATE_NAMES["rng"]


def _legacy_rng_name(size: int) -> str:
    return f"rng_state_{size}.pth" if size > 1 else "rng_state.pth"


def _to_tensors(state):
    """Optimizer states from disk as the tensors ``set_state_dict`` expects."""
    if isinstance(state, np.ndarray):
        return paddle.to_tensor(state)
    if isinstance(state, dict):
        return {k: _to_tensors(v) for k, v in state.items()}
    return state


def _same_base(folder: Path, pretrained: str) -> bool:
    """Whether the checkpoint's base is the ``Model.pretrained`` already loaded (then only its own tensors load)."""
    from ..models.blip2 import checkpoint_config

    base = checkpoint_config(folder).pretrained
    return bool(base and pretrained) and Path(base).resolve() == Path(pretrained).resolve()


def _model_inputs(batch: dict) -> dict:
    return {key: batch[key] for key in MODEL_INPUTS if key in batch}


def _any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (every rank must call this at the same point)."""
    if world()[1] == 1:
        return flag
    tensor = paddle.to_tensor([1.0 if flag else 0.0], dtype="float32")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(float(tensor) > 0)


def _mean_over_ranks(value: float) -> float:
    if world()[1] == 1:
        return value
    tensor = paddle.to_tensor([value], dtype="float32")
    dist.all_reduce(tensor)
    return float(tensor) / world()[1]


def write_summary(output_dir: str | Path, summary: dict) -> Path:
    return write_json(Path(output_dir) / SUMMARY_FILE, summary)


