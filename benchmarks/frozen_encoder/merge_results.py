"""One table from several frozen-encoder benchmark runs (e.g. baselines and pretrained encoders
run as separate jobs on the same tasks, demos and evaluation seeds).

    python benchmarks/frozen_encoder/merge_results.py --out outputs/bc_study/results.md DIR [DIR ...]

Each DIR is an `--out_dir` of `run_frozen_encoder.py`; runs on the same tasks share a table, each
task set gets its own. Prints the markdown, writes it to --out and every row to --out's `.json`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from lerobot_env_vla_dino.frozen_benchmark import load_rows, merged_tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run_frozen_encoder.py output folders")
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    args = parser.parse_args()
    runs = [load_rows(folder) for folder in args.folders]
    text = merged_tables(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps([asdict(row) for rows in runs for row in rows], indent=2))
    print(text)


if __name__ == "__main__":
    main()
