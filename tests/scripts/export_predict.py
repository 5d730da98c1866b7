"""Export a small model with ``paddle.jit.save`` on a custom device and serve it there.

Prints one JSON line: the files written, the max |predictor - dygraph| difference, and how
many bytes the predictor put in the device's memory (its weights, if
``enable_custom_device`` really placed it on the plugin device).
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", required=True, help="a custom device spec for setup_device")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from paddle_medvl.device import setup_device

    device = setup_device(args.device)
    if not device.is_custom:
        raise SystemExit(f"{device.place} is not a custom device")
    import paddle
    from paddle.static import InputSpec

    paddle.seed(0)
    model = paddle.nn.Sequential(
        paddle.nn.Linear(16, 32), paddle.nn.GELU(), paddle.nn.LayerNorm(32), paddle.nn.Linear(32, 8)
    )
    model.eval()
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()

    prefix = os.path.join(args.out, "model")
    static = paddle.jit.to_static(model, input_spec=[InputSpec([None, 16], "float32", "x")], full_graph=True)
    paddle.jit.save(static, prefix)

    graph = prefix + (".json" if os.path.exists(prefix + ".json") else ".pdmodel")  # Paddle 3 | 2.x
    config = paddle.inference.Config(graph, prefix + ".pdiparams")
    config.enable_custom_device(device.type, device.index)
    before = paddle.device.memory_allocated(device.place)
    predictor = paddle.inference.create_predictor(config)
    predictor_bytes = paddle.device.memory_allocated(device.place) - before
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(x.shape))
    handle.copy_from_cpu(x)
    predictor.run()
    got = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()

    print(
        json.dumps(
            {
                "files": sorted(os.listdir(args.out)),
                "max_abs_diff": float(np.abs(got - expected).max()),
                "predictor_device_bytes": int(predictor_bytes),
                "weight_bytes": int(sum(p.numel() for p in model.parameters()) * 4),
            }
        )
    )


if __name__ == "__main__":
    main()
