"""Write the bundled synthetic demo data sets (official on-disk formats, no download).

    python tools/make_demo_data.py --out data/demo
    python tools/make_demo_data.py --out /tmp/demo --seed 1 --tasks caption,vqa --n 50 --n vqa=120

Each set lands in ``OUT/<set>/`` only once complete (it is written to ``<set>.partial`` first).
The demo tokenizers, trained on the train-split texts of the sets written, land in
``OUT/tokenizers/opt`` (Model.language.tokenizer) and ``OUT/tokenizers/bert`` (Model.qformer.tokenizer).

Running the same command again is fine: the same arguments give the same bytes, so a set already
there that is identical to what the command writes is kept (and said so); a different one is an
error naming its first differing file, and ``--force`` replaces it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from paddle_medvl.data.demo_tokenizer import BERT_DIR, DEMO_BERT_VOCAB, DEMO_LLM_VOCAB, LLM_DIR, TOKENIZERS_DIR
from paddle_medvl.data.synthetic import DEFAULT_SIZES, TASKS, make_demo_data


def parse_sizes(values: list[str], tasks: list[str]) -> dict[str, int]:
    """``--n 50`` sets every task, ``--n vqa=120`` one task; later values win."""
    sizes = {task: DEFAULT_SIZES[task] for task in tasks}
    for value in values:
        task, _, count = value.rpartition("=")
        if task and task not in TASKS:
            raise SystemExit(f"--n {value}: unknown task {task!r}; choose from {', '.join(TASKS)}")
        if not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--n {value}: the count must be a positive integer")
        for name in [task] if task else tasks:
            sizes[name] = int(count)
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder that receives one sub-folder per data set")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument("--n", action="append", default=[], metavar="[TASK=]N", help="samples per set (repeatable)")
    parser.add_argument("--image-size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--force", action="store_true",
                        help="replace sets (and tokenizers) already there that differ from what this command writes")
    parser.add_argument("--no-tokenizers", action="store_true", help="do not train the demo tokenizers")
    args = parser.parse_args(argv)

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        parser.error(f"--tasks {args.tasks!r}: choose from {', '.join(TASKS)}")
    sizes = parse_sizes(args.n, tasks)

    bars: dict[str, tqdm] = {}

    def progress(task: str, done: int, total: int) -> None:
        bar = bars.get(task)
        if bar is None:
            bar = bars[task] = tqdm(total=total, desc=f"{task:>8}", unit="sample", file=sys.stderr, leave=True)
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    outcomes: dict[Path, str] = {}
    start = time.perf_counter()
    try:
        roots = make_demo_data(
            args.out,
            seed=args.seed,
            n_caption=sizes.get("caption", 1),
            n_rocov2=sizes.get("rocov2", 1),
            n_vqa=sizes.get("vqa", 1),
            n_iu=sizes.get("iu", 1),
            n_mimic=sizes.get("mimic", 1),
            image_size=args.image_size,
            tasks=tasks,
            overwrite=args.force,
            progress=progress,
            tokenizers=not args.no_tokenizers,
            report=outcomes.__setitem__,
        )
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start

    kept = [folder for folder, outcome in outcomes.items() if outcome == "kept"]
    for folder in kept:
        print(f"{folder}: already there, identical to what this command writes; kept")
    changed = len(outcomes) - len(kept)
    print(f"\n{changed} of {len(outcomes)} folders written under {args.out} (seed {args.seed}, {args.image_size} px) "
          f"in {elapsed:.1f} s")
    for task, root in roots.items():
        files = [p for p in root.rglob("*") if p.is_file()]
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        print(f"  {task:<8} {sizes[task]:>5} samples  {len(files):>5} files  {megabytes:6.1f} MB  {root}  ({outcomes[root]})")
    if not args.no_tokenizers:
        folder = args.out / TOKENIZERS_DIR
        print(f"tokenizers trained on the train-split texts ({outcomes[folder]}):\n"
              f"  LLM (GPT-2 byte-level BPE, {DEMO_LLM_VOCAB} tokens)   {folder / LLM_DIR}\n"
              f"  Q-Former (BERT WordPiece, {DEMO_BERT_VOCAB} tokens)  {folder / BERT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
