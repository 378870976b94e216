"""CortexBench-style frozen-encoder benchmark: K demos per task, BC MLP head (256, 256, 256) on frozen
features, M evaluation episodes per task; a success-rate table over encoders.

    python benchmarks/frozen_encoder/run_frozen_encoder.py --tasks='[reach-v3,push-v3]' \\
        --encoders='[vit:small-test,dino:outputs/pretrain/export,resnet18_scratch]' --num_demos=10 --num_eval=10

Writes `<out_dir>/results.json` and `<out_dir>/results.md` (the table, the command, the machine).
Options: see `FrozenBenchmarkConfig` in lerobot_env_vla_dino/frozen_benchmark.py (`--device=cuda`).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

import draccus
import torch

from lerobot_env_vla_dino.frozen_benchmark import FrozenBenchmarkConfig, markdown_table, run_benchmark


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU used"
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {gpu}"


def main(config: FrozenBenchmarkConfig) -> None:
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    rows = run_benchmark(config)
    table = markdown_table(rows)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    report = "\n".join(
        [
            "# Frozen-encoder benchmark results",
            "",
            table,
            "",
            "Cells: successes / episodes (95% Wilson interval).",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {machine()}, device `{config.device}`",
            "",
            f"Settings: {config}",
        ]
    )
    path = Path(config.out_dir) / "results.md"
    path.write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main(draccus.parse(FrozenBenchmarkConfig))
