#!/usr/bin/env bash
# Frozen-encoder behaviour cloning of the `small_data_cpu` recipe against its baselines, on a CPU:
# 3 Meta-World tasks + PushT, CortexBench's protocol (25 demos, 3-frame history, MLP 256×3,
# 25 evaluation episodes), Meta-World evaluated clean and under visual changes.
#
#   bash benchmarks/frozen_encoder/bc_study.sh [OUT]        # OUT defaults to outputs/bc_study
#
# 1. frames    the "robot's logs": expert episodes of every task (seeds 10000+, apart from the demos'
#              0+ and the evaluation's 1000+), half of the Meta-World ones under random light/colour
#              changes (MuJoCo model edits)
# 2. pretrain  small_data_cpu on all of them with pretraining seeds 0, 1, 2: one encoder per seed,
#              used for every task
# 3. bc        lerobot_env_vla_dino.frozen_benchmark: the three pretrained encoders as one row, beside
#              raw pixels, random init of their architecture (seeds 0–2) and ResNet-18 trained end to
#              end, in separate runs on the same demos and evaluation seeds; one table (merge_results.py)
# Every step is skipped when its output exists, so a killed study resumes.
set -euo pipefail
OUT=${OUT:-${1:-outputs/bc_study}}
TASKS=${TASKS:-"button-press-topdown-v3 push-v3 drawer-open-v3"}
EPISODES=${EPISODES:-16}       # pretraining episodes per Meta-World task
PUSHT_EPISODES=${PUSHT_EPISODES:-6}
SEEDS=${SEEDS:-"0 1 2"}
CONDITIONS=${CONDITIONS:-"[clean,hue_shift_half_desaturated]"}  # one change at evaluation (2-core time budget)
PY=${PYTHON:-python}
HERE=$(dirname "$0")
mkdir -p "$OUT"

frames=()
for task in $TASKS; do
  dir="$OUT/frames/$task"
  [ -f "$dir/scene.npz" ] || $PY -m lerobot_env_vla_dino.scene_data --task="$task" --num_episodes="$EPISODES" \
      --varied_fraction=0.5 --image_size=84 --seed=10000 --write_frames=true --with_labels=false --out="$dir"
  frames+=(--frames "$dir/frames")
done
pusht="$OUT/frames/pusht"
[ -d "$pusht/meta" ] || $PY -m lerobot_env_vla_dino.collect --env_id=vla_dino/PushT-v0 \
    --num_episodes="$PUSHT_EPISODES" --seed=10000 --image_size=84 --use_videos=false --root="$pusht"
frames+=(--frames "$pusht")

pretrained=()
for seed in $SEEDS; do
  run="$OUT/pretrain/seed$seed"
  [ -f "$run/export/hf/config.json" ] || $PY -m vla_dino.pretrain --preset small_data_cpu --output-dir "$run" \
      --seed "$seed" --resume --set log.progress_bar=false "${frames[@]}"
  pretrained+=("small_data_cpu=dino:$run/export/hf")
done
architecture="dino:$OUT/pretrain/seed${SEEDS%% *}/export/hf"  # its @seedN specs: random init of this architecture

bc() {  # bc <out_dir> <encoders> [flags]: one frozen_benchmark run, skipped when its report exists
  local dir=$1 encoders=$2; shift 2
  mkdir -p "$OUT/demos" "$dir"; [ -e "$dir/demos" ] || ln -s "$(realpath "$OUT/demos")" "$dir/demos"
  [ -f "$dir/results.md" ] || $PY "$HERE/run_frozen_encoder.py" --encoders="[$encoders]" --num_demos=25 \
      --num_eval=25 --history=3 --image_size=84 --encoder_image_size=56 --out_dir="$dir" "$@"
}
baselines="pixels,$architecture@seed0,$architecture@seed1,$architecture@seed2"
ours=$(IFS=,; echo "${pretrained[*]}")
meta=(--tasks="[$(echo $TASKS | tr ' ' ',')]" --eval_conditions="$CONDITIONS")
pusht=(--tasks="[vla_dino/PushT-v0]" --max_steps=300)
# the cheap rows first, ResNet-18 (trained end to end: the longest) last; one run per pretraining
# seed so that runs can go in parallel (every run reuses the demos in $OUT/demos)
for seed in $SEEDS; do
  bc "$OUT/bc_metaworld_pretrained_s$seed" "small_data_cpu=dino:$OUT/pretrain/seed$seed/export/hf" "${meta[@]}"
done
bc "$OUT/bc_metaworld_baselines" "$baselines" "${meta[@]}"
bc "$OUT/bc_pusht" "$ours,$baselines" "${pusht[@]}"
bc "$OUT/bc_metaworld_resnet" resnet18_scratch "${meta[@]}"
bc "$OUT/bc_pusht_resnet" resnet18_scratch "${pusht[@]}"
$PY "$HERE/merge_results.py" --out "$OUT/results.md" "$OUT"/bc_metaworld_{pretrained_s*,baselines,resnet} "$OUT"/bc_pusht{,_resnet}
