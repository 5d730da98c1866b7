"""Which parameters train, with what learning rate and decay, on what schedule.

* ``apply_trainable``: a parameter trains when its name matches a ``Train.trainable`` pattern and no
  ``Train.frozen`` pattern (regular expressions, ``re.match``); every other one gets
  ``stop_gradient=True`` and so no gradient and no optimizer state.
* ``param_groups``: AdamW groups. A trainable parameter goes to the first ``Train.param_groups``
  entry whose pattern it matches (its own lr and weight decay), else to the default group; biases and
  norm weights (``ndim < 2``) never decay, as in LAVIS and BERT.
* ``build_scheduler``: linear warm-up from 0, then cosine or linear down to ``min_lr``, or constant.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import paddle
from paddle import nn

from ..config import ConfigError, TrainConfig

SCHEDULES = ("cosine", "linear", "constant")


def _compile(patterns: Sequence[str], key: str) -> list[re.Pattern]:
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except re.error as e:
            raise ConfigError(f"{key}: {pattern!r} is not a regular expression: {e}") from None
    return out


def _matches(name: str, patterns: list[re.Pattern]) -> bool:
    return any(p.match(name) for p in patterns)


def apply_trainable(model: nn.Layer, train: TrainConfig, idle: Sequence[str] = ()) -> list[str]:
    """Set ``stop_gradient`` on every parameter from the patterns; returns the trainable names.

    ``idle``: parameters the configured losses never reach (e.g. the Q-Former's text head without the
    concept loss); they stay frozen, so data parallelism finds no unused trainable parameter.
    """
    trainable = _compile(train.trainable, "Train.trainable")
    frozen = _compile(train.frozen, "Train.frozen")
    all_names = [n for n, _ in model.named_parameters()]
    for pattern, compiled in zip(train.trainable, trainable):
        if not any(compiled.match(n) for n in all_names):
            raise ConfigError(
                f"Train.trainable: {pattern!r} matches no parameter of the model (names look like {', '.join(all_names[:3])})"
            )
    idle_set = set(idle)
    names = []
    for name, param in model.named_parameters():
        on = _matches(name, trainable) and not _matches(name, frozen) and name not in idle_set
        param.stop_gradient = not on
        if on:
            names.append(name)
    if not names:
        raise ConfigError(
            f"Train.trainable {train.trainable} minus Train.frozen {train.frozen} leaves no parameter to train"
        )
    return names


def param_groups(model: nn.Layer, train: TrainConfig) -> list[dict]:
    """AdamW parameter groups of the trainable parameters (see the module docstring).

    Paddle scales a group's ``learning_rate`` by the scheduler's value, so a group's lr is given as
    its ratio to ``Train.lr``.
    """
    if train.lr <= 0:
        raise ConfigError(f"Train.lr must be > 0, got {train.lr}")
    groups = [(_compile(g.patterns, f"Train.param_groups[{i}].patterns"), g) for i, g in enumerate(train.param_groups)]
    buckets: dict[tuple[int, bool], list] = {}
    for name, param in model.named_parameters():
        if param.stop_gradient:
            continue
        index = next((i for i, (patterns, _) in enumerate(groups) if _matches(name, patterns)), -1)
        buckets.setdefault((index, param.ndim >= 2), []).append(param)
    out = []
    for (index, decays), params in sorted(buckets.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        spec = groups[index][1] if index >= 0 else None
        lr = spec.lr if spec is not None and spec.lr is not None else train.lr
        decay = spec.weight_decay if spec is not None and spec.weight_decay is not None else train.weight_decay
        out.append({"params": params, "learning_rate": lr / train.lr, "weight_decay": decay if decays else 0.0})
    return out


def flat_parameters(groups: list[dict], weight_decay: float) -> tuple[list, Any]:
    """The groups as one parameter list, for optimizers that take no groups (Paddle's sharding
    optimizers): each group's lr ratio goes on its parameters (``optimize_attr``, which Paddle's
    optimizers read per parameter), and decay becomes on/off per parameter name. So a group may have
    its own lr but, as weight decay, only ``Train.weight_decay`` or 0; returns (parameters, the
    ``apply_decay_param_fun`` for AdamW)."""
    params, decayed = [], set()
    for group in groups:
        if group["weight_decay"] not in (0.0, weight_decay):
            raise ConfigError(
                f"Train.sharding: Paddle's sharding optimizer takes no parameter groups, so a group's weight decay "
                f"can only be Train.weight_decay ({weight_decay}) or 0, not {group['weight_decay']}"
            )
        for param in group["params"]:
            param.optimize_attr["learning_rate"] = group["learning_rate"]
            if group["weight_decay"]:
                decayed.add(param.name)
            params.append(param)
    return params, decayed.__contains__


def build_scheduler(train: TrainConfig, total_steps: int) -> paddle.optimizer.lr.LRScheduler:
    """Linear warm-up over ``warmup_steps`` from 0 to ``lr``, then ``schedule`` until ``total_steps``."""
    if train.schedule not in SCHEDULES:
        raise ConfigError(f"Train.schedule must be one of {', '.join(SCHEDULES)}, got {train.schedule!r}")
    lr = paddle.optimizer.lr
    decay_steps = max(total_steps - train.warmup_steps, 1)
    if train.schedule == "cosine":
        after = lr.CosineAnnealingDecay(train.lr, T_max=decay_steps, eta_min=train.min_lr)
    elif train.schedule == "linear":
        after = lr.PolynomialDecay(train.lr, decay_steps=decay_steps, end_lr=train.min_lr, power=1.0)
    else:
        after = train.lr
    if train.warmup_steps <= 0:
        return after if isinstance(after, lr.LRScheduler) else lr.LambdaDecay(after, lambda step: 1.0)
    return lr.LinearWarmup(after, warmup_steps=train.warmup_steps, start_lr=0.0, end_lr=train.lr)
