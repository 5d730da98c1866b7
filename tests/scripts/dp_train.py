"""One rank of a launched training run: train, then save this rank's parameters for comparison.

    python -m paddle.distributed.launch --devices 0,1 dp_train.py CONFIG [OVERRIDES...]
"""
import os
import sys
from pathlib import Path

import numpy as np

from paddle_medvl.config import load_config
from paddle_medvl.engine import train
from paddle_medvl.engine.trainer import world


def main() -> None:
    cfg = load_config(sys.argv[1], sys.argv[2:])
    captured = {}
    import paddle_medvl.engine.trainer as engine_trainer

    original = engine_trainer.MedVLTrainer.save_final

    def keep(self):
        captured["model"] = self.model
        return original(self)

    engine_trainer.MedVLTrainer.save_final = keep
    train(cfg)
    rank, _ = world()
    flat = np.concatenate([p.numpy().ravel().astype("float64") for _, p in sorted(captured["model"].named_parameters())])
    np.save(Path(cfg.Train.output_dir) / f"params_rank{rank}.npy", flat)
    if world()[1] > 1:  # as tools/train.py: Paddle's teardown under launch can abort a finished rank (workarounds.py)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
