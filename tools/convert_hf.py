"""Convert a Hugging Face BLIP-2 checkpoint (safetensors) into a paddle_medvl checkpoint.

    python tools/convert_hf.py --hf /models/blip2-opt-2.7b --out checkpoints/blip2_opt2.7b
    python tools/convert_hf.py --hf DIR --out OUT --dtype float16 --qformer-text qformer_text.safetensors

The HF folder is what `huggingface-cli download Salesforce/blip2-opt-2.7b --include "*.json" "*.safetensors"`
writes on a machine with internet. The output loads with `Blip2.from_pretrained(OUT)` or
`-o Model.pretrained=OUT`.
"""
from __future__ import annotations

import argparse
import sys

from paddle_medvl.convert.hf import DTYPES, convert
from paddle_medvl.errors import USER_ERRORS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="Hugging Face checkpoint folder (config.json + *.safetensors)")
    parser.add_argument("--out", required=True, help="output folder (config.yaml + model safetensors)")
    parser.add_argument("--dtype", default="keep", choices=DTYPES, help="tensor dtype in the output (default: as stored)")
    parser.add_argument("--qformer-text", help="safetensors with the Q-Former text parts (embeddings, LM head) for the concept loss")
    parser.add_argument("--shard-gb", type=float, default=2.0, help="output shard size in GB")
    args = parser.parse_args(argv)
    try:
        out = convert(args.hf, args.out, args.dtype, args.qformer_text, int(args.shard_gb * (1 << 30)))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
