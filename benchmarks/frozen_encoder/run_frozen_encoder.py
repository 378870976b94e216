"""CortexBench-style frozen-encoder benchmark: K demos per task, BC MLP head (256, 256, 256) on frozen
features of a 3-frame history, M evaluation episodes per task under each visual condition; a
success-rate table over encoders (95 % Wilson intervals), random-init seeds shown as a range.

    python benchmarks/frozen_encoder/run_frozen_encoder.py \\
        --tasks='[reach-v3,push-v3,button-press-topdown-v3]' \\
        --encoders='[vit:small-test@seed0,vit:small-test@seed1,vit:small-test@seed2,pixels,resnet18_scratch,dino:outputs/pretrain/export]' \\
        --eval_conditions='[clean,dim_warm_light,bright_cool_light,hue_shift_third,hue_shift_half_desaturated,camera_jitter]'

PushT has no MuJoCo scene: run it separately with the default `--eval_conditions='[clean]'`
(`--tasks='[vla_dino/PushT-v0]'`). Defaults are CortexBench's (25 demos, 25 evaluation episodes,
history 3); a CPU smoke run: `--num_demos=2 --num_eval=2 --max_steps=10 --demo_max_steps=10
--keep_failed_demos=true --epochs=5 --scratch_epochs=1`.

Writes `<out_dir>/results.json` (one row per task × encoder × condition) and `<out_dir>/results.md`
(the table, the conditions, the command, the machine). Options: `FrozenBenchmarkConfig` in
lerobot_env_vla_dino/frozen_benchmark.py (`--device=cuda`).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import draccus
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ (machine.py)

from machine import machine_name  # noqa: E402

from lerobot_env_vla_dino.frozen_benchmark import FrozenBenchmarkConfig, run_benchmark, write_report  # noqa: E402


def main(config: FrozenBenchmarkConfig) -> Path:
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    rows = run_benchmark(config)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    path = write_report(config, rows, command, machine_name(config.device))
    print(path.read_text())
    return path


if __name__ == "__main__":
    main(draccus.parse(FrozenBenchmarkConfig))
