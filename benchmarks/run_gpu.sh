#!/usr/bin/env bash
# Runs the benchmark scripts on a CUDA machine and keeps each table in $OUT/<name>.txt.
# On the offline reference GPU machine (torch/transformers preinstalled), packages it lacks
# travel as wheels in .gpu_wheels/ (made by benchmarks/gpu_wheels.sh on a machine with network).
#   OUT=/tmp/gpu bash benchmarks/run_gpu.sh [group]
#   group: headline | encoder | core (default) | compile | scaling | policy | runtime | runtime-eager
# headline fits one 10-minute device command: the step against lightly, Sinkhorn-Knopp, MFU and the runtime rows.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_bench}; mkdir -p "$OUT"
if [ -d .gpu_wheels ] && ! python -c "import lerobot" 2>/dev/null; then
  python -m pip install --no-deps .gpu_wheels/*.whl 2>&1 | tail -3
fi
python -c "import lerobot" 2>/dev/null || echo "note: lerobot is missing (no .gpu_wheels/): run benchmarks/gpu_wheels.sh where there is network"

# our three distributions, editable (LeRobot discovers plugins by installed distribution name)
(cd /tmp && python -c "import lerobot_policy_vla_dino") 2>/dev/null \
  || python -m pip install -q --no-deps --no-build-isolation -e . -e ./policies -e ./envs 2>&1 | grep -v "as the 'root' user"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"

bench() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*" | tee "$OUT/$name.txt"
  timeout "$limit" "$@" 2>&1 | grep -v -i "warn" | tee -a "$OUT/$name.txt" | tail -n 25
}

case "${1:-core}" in
headline)  # the issue's figures that need no compile warm-up, most important first (timeouts sum to 540 s)
  bench ssl_step_vits14 130 python benchmarks/bench_ssl_step.py --device cuda --size vits14 --batch 64 --bf16
  bench runtime_moonshot_bf16 170 python benchmarks/bench_runtime_latency.py --device cuda --preset vla_dino-moonshot --dtype bf16 --cast-weights --variants unfused fused fused+fp8
  bench sinkhorn_65536 40 python benchmarks/bench_sinkhorn.py --device cuda --rows 128 8192 --prototypes 65536
  bench mfu_vits_vitb_vitl 200 python benchmarks/bench_mfu.py --device cuda --sizes vits14 vitb14 vitl14 --batch 64 --precision bf16
  ;;
encoder)
  bench encoder_vitl14_reg_bf16 120 python benchmarks/bench_encoder.py --device cuda --size vitl14_reg --batch 32 --dtype bfloat16
  bench encoder_vitg14_bf16 120 python benchmarks/bench_encoder.py --device cuda --size vitg14 --batch 16 --dtype bfloat16
  bench adapter_openvla_bf16 150 python benchmarks/bench_adapter.py --openvla --device cuda --batch 32 --dtype bfloat16
  ;;
core)
  bench sinkhorn_65536 60 python benchmarks/bench_sinkhorn.py --device cuda --rows 128 8192 --prototypes 65536
  bench ssl_step_vits14 150 python benchmarks/bench_ssl_step.py --device cuda --size vits14 --batch 64 --bf16
  bench ibot_loss 60 python benchmarks/bench_ibot_loss.py --device cuda --rows 2048 8192 --bf16 --iters 5
  bench mfu_vits_vitb_vitl 240 python benchmarks/bench_mfu.py --device cuda --sizes vits14 vitb14 vitl14 --batch 64 --precision bf16
  # model table, then frames/s per data stage (nvJPEG decode, pinned/prefetched copies) and supply ÷ consumption
  bench pretrain_throughput 200 python benchmarks/bench_pretrain_throughput.py --device cuda --preset vits14_scratch --sizes vits14 vitb14 --batch-sizes 64
  # the CUDA branches of DevicePrefetcher and JpegBatchDecoder (skipped on CPU machines)
  bench data_device_tests 180 python -m pytest -q -p no:cacheprovider tests/data/test_data_prefetch.py tests/data/test_data_jpeg_decode.py \
    tests/ssl/test_ssl_trainer.py tests/ssl/test_ssl_packing.py
  ;;
compile)  # the step with train.compile (student + teacher through inductor; the warm-up steps compile)
  bench ssl_step_vits14_compile 480 python benchmarks/bench_ssl_step.py --device cuda --size vits14 --batch 64 --bf16 --compile --warmup 4
  ;;
scaling)  # DDP at 1..N visible GPUs, the gradient all-reduce's bus bandwidth, and the model beyond
  n=$(nvidia-smi -L | wc -l)
  bench ddp_scaling_vits14 420 python benchmarks/bench_ddp_scaling.py --device cuda --size vits14 --batch 64 --bf16 --procs $(seq 1 "$n")
  ;;
policy)
  bench policy_224 200 python benchmarks/bench_policy.py --device cuda --image-size 224 --batch 32 --dino vitl14_reg
  ;;
runtime)  # one process: runtime rows with unfused / fused QKV attention / fused + float8 towers, p50 ratios and action errors
  bench runtime_moonshot_bf16 240 python benchmarks/bench_runtime_latency.py --device cuda --preset vla_dino-moonshot --dtype bf16 --cast-weights --variants unfused fused fused+fp8
  bench runtime_moonshot_bf16_compile 540 python benchmarks/bench_runtime_latency.py --device cuda --preset vla_dino-moonshot --dtype bf16 --compile --cast-weights --variants unfused fused fused+fp8
  ;;
runtime-eager)  # the runtime without torch.compile (CUDA graphs of the eager pipeline)
  bench runtime_moonshot_bf16 240 python benchmarks/bench_runtime_latency.py --device cuda --preset vla_dino-moonshot --dtype bf16 --cast-weights
  ;;
esac
