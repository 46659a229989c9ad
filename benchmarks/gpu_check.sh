#!/usr/bin/env bash
# The GPU checks of the consumer-gpu profile, as one short script for a GPU machine that has torch and
# transformers but no internet (nor vllm): peft, accelerate and bitsandbytes come from wheels in .gpu-wheels/
# (fetch them beforehand with: pip download --no-deps peft==0.21.2 accelerate==1.15.0 bitsandbytes==0.50.2
#  --platform manylinux_2_24_x86_64 --python-version 3.12 --only-binary=:all: -d .gpu-wheels).
# Writes benchmarks/results/gpu_step.{csv,md} (or under $OUT when set).
set -euo pipefail
cd "$(dirname "$0")/.."
site=.gpu-site
if ! python -c "import peft, bitsandbytes" 2>/dev/null; then
  python -m pip install --quiet --no-deps --target "$site" .gpu-wheels/*.whl
  export PYTHONPATH="$PWD/$site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
out="${OUT:-benchmarks/results}"
python benchmarks/bench_gpu_step.py --arch qwen2.5-math-1.5b --device cuda --out "$out"
python benchmarks/bench_gpu_step.py --arch qwen2.5-0.5b --profile consumer-gpu-0.5b --device cuda --out "$out"
