#!/usr/bin/env bash
# Every GPU measurement of benchmarks/NOTES.md in one call, from the repository root (stage limits add up to 570 s,
# under a 600 s device call; the stages run in the order the targets need them, and the main stage skips
# the variants that would start after its time budget):
#     OUT=/tmp/gpu bash benchmarks/gpu_run.sh
# 1. the gpu preset: the eager baselines, then the compiled variants (whole decoder, decoder block by block, CUDA
#    graphs) of Med-SA 2D and 3D, LoRA and SamModel inference;
# 2. the attention micro-benchmark (bias vs folded q/k per kernel; depth attention per kernel and compiled as
#    products and sums, the library's compiled path);
# 3. one volume of 32 slices at 1024 px with activation checkpointing (fused attention, then SAM's);
# 4. flex_attention in the micro-benchmark, last, as it compiles for a while.
# Wheels in .whl/ (transformers, peft) are installed first where the machine has other versions: fill it with
#     pip download --no-deps -d .whl transformers==5.24.0 peft==0.21.2
# (keep it out of commits: list it in .git/info/exclude, and name it in a device call's carry).
set -u
OUT=${OUT:-benchmarks/gpu_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TORCH_LOGS=perf_hints
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
started=$(date +%s)
stage() { echo "=== $1 (at $(( $(date +%s) - started )) s)"; }

stage environment
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"

stage "gpu preset"
EAGER=train:reference,train:reference-3d,train:lora,train:full,train:medsa-fused,train:medsa-fused-3d
EAGER=$EAGER,infer:reference,infer:sam,infer:lora,infer:medsa-fused,train:medsa,train:medsa-3d,infer:medsa
# CUDA graphs after plain compilation: a capture that fails could leave the device in a state that spoils later rows
COMPILED=train:medsa-fused+compile,train:lora+compile,train:medsa-fused-3d+compile,infer:sam+compile
COMPILED=$COMPILED,infer:medsa-fused+compile,train:medsa-fused+compile-blocks,train:medsa-fused+cudagraphs
COMPILED=$COMPILED,train:lora+cudagraphs,train:medsa-fused-3d+cudagraphs,infer:sam+cudagraphs
COMPILED=$COMPILED,infer:medsa-fused+cudagraphs
timeout 380 python3 benchmarks/benchmark.py --preset gpu --variants "$EAGER,$COMPILED" \
    --time_budget 340 --output "$OUT/gpu.json"

stage "attention micro-benchmark"
timeout 60 python3 benchmarks/attention.py --flex skip --output "$OUT/attention.json"

stage "32 slices, activation checkpointing"
timeout 90 python3 benchmarks/benchmark.py --preset gpu --batch 32 --depth 32 --steps 2 --warmup 1 \
    --gradient_checkpointing --no_check --variants train:medsa-fused-3d,train:medsa-3d --output "$OUT/volume32.json"

stage "flex_attention"
timeout 40 python3 benchmarks/attention.py --flex only --output "$OUT/attention_flex.json"
stage done
