"""One rank of a launched run whose rank 1 alone gets a NaN loss at its first step: every rank must
stop there with the error (a rank left waiting in the gradients' all-reduce would hang the job).

    python -m paddle.distributed.launch --nproc_per_node 2 nan_on_one_rank.py CONFIG [OVERRIDES...]
"""
import sys

import paddle

from paddle_medvl.config import load_config
from paddle_medvl.engine import train
from paddle_medvl.engine.trainer import TrainingDiverged, world
from paddle_medvl.models.blip2 import Blip2


def main() -> None:
    forward = Blip2.forward

    def nan_on_rank1(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if world()[0] == 1:
            out = out._replace(loss=out.loss * paddle.to_tensor(float("nan")))
        return out

    Blip2.forward = nan_on_rank1
    try:
        train(load_config(sys.argv[1], sys.argv[2:]))
    except TrainingDiverged as e:
        print(f"rank {world()[0]} stopped: {e}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
