"""Convert a LAVIS BLIP-2 checkpoint (.pth) into safetensors for paddle_medvl, without running its pickle.

    # the Q-Former text parts (paper 000's concept loss) for tools/convert_hf.py --qformer-text:
    python tools/convert_lavis.py --lavis blip2_pretrained.pth --qformer-text qformer_text.safetensors
    # the same, and the Hugging Face checkpoint with them, in one self-contained folder:
    python tools/convert_lavis.py --lavis blip2_pretrained.pth --hf /models/blip2-opt-2.7b --out checkpoints/blip2_opt2.7b_text
    # every tensor of a LAVIS-trained checkpoint over an already converted one (Model.pretrained = BASE):
    python tools/convert_lavis.py --lavis finetuned.pth --base checkpoints/blip2_opt2.7b --out checkpoints/finetuned

The .pth is read through an allow-list (paddle_medvl/convert/safe_pickle.py): a class or function it
names that is not a tensor, array, number, string or container is refused by name (exit code 1) and
nothing in the file runs. LAVIS's checkpoints are the `pretrained` URLs of its configs
(lavis/configs/models/blip2/*.yaml); blip2_pretrained.pth (stage 1) is the one with the text parts.
"""
from __future__ import annotations

import argparse
import sys

from paddle_medvl.convert.hf import DTYPES, ConversionError
from paddle_medvl.convert.lavis import Report, convert_over_base, convert_with_hf, extract_qformer_text
from paddle_medvl.errors import USER_ERRORS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lavis", required=True, help="the LAVIS checkpoint (.pth, torch zip format)")
    parser.add_argument("--qformer-text", help="write the Q-Former text parts here (safetensors, HF names)")
    parser.add_argument("--out", help="write a checkpoint folder here (needs --hf or --base)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--hf", help="Hugging Face checkpoint folder: OUT = it + the LAVIS text parts, self-contained")
    source.add_argument("--base", help="converted paddle_medvl checkpoint: OUT = every LAVIS tensor over it")
    parser.add_argument("--dtype", default="keep", choices=DTYPES, help="floating tensors' dtype in the output")
    parser.add_argument("--shard-gb", type=float, default=2.0, help="output shard size in GB (--out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not args.qformer_text and not args.out:
        parser.error("nothing to write: give --qformer-text FILE and/or --out DIR (with --hf or --base)")
    if args.out and not (args.hf or args.base):
        parser.error("--out needs --hf DIR (a Hugging Face checkpoint) or --base DIR (a converted one)")
    if (args.hf or args.base) and not args.out:
        parser.error("--hf / --base need --out DIR")
    shard_bytes, progress = int(args.shard_gb * (1 << 30)), not args.quiet
    try:
        reports: list[Report] = []
        if args.qformer_text:
            reports.append(extract_qformer_text(args.lavis, args.qformer_text, args.dtype, progress))
        if args.out and args.hf:
            reports.append(convert_with_hf(args.lavis, args.hf, args.out, args.dtype, shard_bytes, progress))
        elif args.out:
            reports.append(convert_over_base(args.lavis, args.base, args.out, args.dtype, shard_bytes, progress))
    except (ConversionError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for report in reports:
        print(f"wrote {', '.join(map(str, report.written))} ({report.tensors} tensors from {args.lavis})")
    ignored = sorted({key for report in reports for key in report.ignored})
    if ignored:
        print(f"left out (no place in this model): {', '.join(ignored)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
