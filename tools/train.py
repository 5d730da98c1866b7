"""Fine-tune a model as a config says, alone or on several devices.

    python tools/train.py -c configs/demo/caption_tiny.yaml
    python tools/train.py -c configs/caption/blip2_opt2.7b_stage1.yaml -o Global.device=npu -o Train.batch_size=8
    python -m paddle.distributed.launch --devices 0,1,2,3,4,5,6,7 tools/train.py -c CONFIG -o Global.device=npu
    python tools/train.py -c CONFIG -o Global.resume=auto        # continue from the newest complete checkpoint

Writes ``Train.output_dir``: ``checkpoint-<step>/`` (the newest ``Train.keep_last`` and the best by
``Train.best_metric``), ``final/`` (the weights at the end: a ``Model.pretrained`` for the next stage
and a ``--checkpoint`` for tools/predict.py), ``config.yaml`` (the run's config), ``summary.json``
and, with ``Train.visualdl``, ``visualdl/``.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from paddle_medvl.config import add_config_args

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("give a config: -c CONFIG.yaml")

    from paddle_medvl.config import load_config
    from paddle_medvl.engine import train
    from paddle_medvl.engine.trainer import world
    from paddle_medvl.errors import USER_ERRORS

    try:
        cfg = load_config(args.config, args.override)
        train(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if world()[1] > 1:  # Paddle's teardown under launch can abort a finished rank (workarounds.py): skip it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
