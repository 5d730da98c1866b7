"""Print, as JSON, the tiny transformer's AdamW losses on one device (``--device`` spec)."""
from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", required=True, help="spec for paddle_medvl.device.setup_device")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from paddle_medvl.device import setup_device
    from paddle_medvl.selftest import tiny_transformer_losses

    device = setup_device(args.device)
    print(json.dumps({"place": device.place, "losses": tiny_transformer_losses(device.place, args.steps)}))


if __name__ == "__main__":
    main()
