"""The install doctor: versions, the resolved device, and one training step checked against the CPU.

    python tools/env_check.py --device npu
    python tools/env_check.py -c configs/demo/caption_tiny.yaml      # takes Global.device from a config

Ends with one line: ``OK: ...`` (exit 0) or ``FAIL: <what is wrong>`` (exit 1).
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
import traceback

from paddle_medvl.config import add_config_args, load_config
from paddle_medvl.device import setup_device
from paddle_medvl.errors import USER_ERRORS


def versions() -> list[str]:
    """What is installed, including each registered PaddleCustomDevice plugin."""
    import paddle

    lines = [f"python {sys.version.split()[0]}", f"paddlepaddle {paddle.__version__} (CUDA build: {paddle.device.is_compiled_with_cuda()})"]
    try:
        import paddlenlp

        lines.append(f"paddlenlp {paddlenlp.__version__}")
    except Exception as e:  # the doctor reports a broken install rather than dying of it
        lines.append(f"paddlenlp NOT IMPORTABLE: {type(e).__name__}: {e}")
    types = paddle.device.get_all_custom_device_type() or []
    lines.append(f"custom device plugins: {', '.join(types) if types else 'none'}")
    for dtype in types:
        count = len([d for d in paddle.device.get_available_custom_device() or [] if d.split(':')[0] == dtype])
        text = f"  {dtype}: {count} device(s)"
        try:  # paddle-custom-npu ships paddle_custom_device.npu with version()
            module = importlib.import_module(f"paddle_custom_device.{dtype}")
            text += f", plugin version {module.version()}"
        except Exception:
            pass
        lines.append(text)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--device", help="auto | cpu | gpu[:N] | npu[:N] | <custom type>[:N] (default: Global.device)")
    parser.add_argument("--steps", type=int, default=3, help="training steps to compare")
    parser.add_argument("--tol", type=float, default=1e-4, help="largest accepted |loss - CPU loss|")
    args = parser.parse_args(argv)
    try:
        spec = args.device or load_config(args.config, args.override).Global.device
        device = setup_device(spec)
    except USER_ERRORS as e:
        print(f"FAIL: {e}")
        return 1
    for line in versions():
        print(line)
    try:
        from paddle_medvl.selftest import tiny_transformer_losses

        here = tiny_transformer_losses(device.place, args.steps)
        cpu = tiny_transformer_losses("cpu", args.steps)
    except Exception as e:
        traceback.print_exc()
        print(f"FAIL: a tiny transformer training step on {device.place} raised {type(e).__name__}: {e}")
        return 1
    diff = max(abs(a - b) for a, b in zip(here, cpu))
    print(f"losses on {device.place}: {', '.join(f'{x:.8f}' for x in here)}")
    print(f"losses on cpu: {', '.join(f'{x:.8f}' for x in cpu)}")
    if not all(math.isfinite(x) for x in here) or diff > args.tol:
        print(f"FAIL: {device.place} computes different losses than the CPU (max |diff| {diff:.3g} > {args.tol:g})")
        return 1
    print(f"OK: {device.place} trains like the CPU (max |loss diff| {diff:.3g} over {args.steps} AdamW steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
