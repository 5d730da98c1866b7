"""Milliseconds of Paddle's ``F.log_softmax`` against ``workarounds.log_softmax`` (``x - logsumexp(x)``).

The shapes are where we call it: the Q-Former text loss (batch x tokens rows over its vocabulary)
and one beam-search step over an OPT vocabulary. Both run in this process, forward and backward,
best of ``--repeats``. When the ratio in the last column is about 1 (and
``test_log_softmax_defect_still_present`` fails), ``workarounds.log_softmax`` can go.

    python bench/log_softmax.py
    python bench/log_softmax.py --device gpu
"""
from __future__ import annotations

import argparse
import time

SHAPES = {  # name -> shape (rows kept small: on CPU, Paddle's kernel costs grow with the vocabulary squared)
    "Q-Former text loss, demo: batch 32 x 23 tokens": [736, 1025],
    "Q-Former text loss, BERT vocab: 1 x 32 tokens": [32, 30523],
    "beam step, OPT vocab: 2 images x 5 beams": [10, 50272],
}


def best_ms(fn, x, repeats: int, backward: bool, sync) -> float:
    """Best wall time over ``repeats`` runs of fn(x) (and its backward), after one warm-up."""
    best = float("inf")
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        y = fn(x)
        if backward:
            y.sum().backward()
            x.clear_grad()
        sync()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import paddle
    import paddle.nn.functional as F

    from paddle_medvl.workarounds import log_softmax

    paddle.set_device(args.device)
    sync = (lambda: None) if args.device == "cpu" else paddle.device.synchronize  # CPU ops are synchronous
    print(f"paddle {paddle.__version__}, device {args.device}; best of {args.repeats}, ms (lower is better)")
    print(f"| {'shape':<52} | {'pass':<12} | F.log_softmax | workaround | ratio |")
    print(f"|{'-' * 54}|{'-' * 14}|---------------|------------|-------|")
    for name, shape in SHAPES.items():
        x = paddle.randn(shape)
        x.stop_gradient = False
        for backward in (False, True):
            paddle_ms = best_ms(lambda t: F.log_softmax(t, axis=-1), x, args.repeats, backward, sync)
            ours_ms = best_ms(lambda t: log_softmax(t, axis=-1), x, args.repeats, backward, sync)
            label = "fwd + bwd" if backward else "fwd"
            print(f"| {name:<52} | {label:<12} | {paddle_ms:13.1f} | {ours_ms:10.1f} | {paddle_ms / ours_ms:5.1f} |")


if __name__ == "__main__":
    main()
