#!/usr/bin/env bash
# The GPU check, one call on a lent CUDA machine (H100/H200; no TensorRT there), from the repository root:
#   bash benchmarks/gpu_check.sh            # results under ${OUT:-runs/gpu-check}
# 1. a ViT-S/16 (random weights: timing only) cut by 30% of its MACs, no distillation;
# 2. CUDA latency, teacher vs student, PyTorch and ONNX Runtime's CUDA provider, batch 1/8/32 (ratios);
# 3. one distillation step against one plain training step, bf16 autocast on and off (CUDA throughput).
# Every step is independent: one that fails is reported and the next still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
status=0
step() { echo "== $*"; "$@" || { echo "!! failed: $*"; status=1; }; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
step pip install --quiet -e . onnxruntime-gpu
step python -c "import torch, onnxruntime as ort; assert torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name(0), ort.get_available_providers())"

step vitshrink compress --model vit_small_patch16_224 --dataset digits --reduce flops=0.3 --stages width \
    --epochs 0 --val-split 0 --out "$OUT/vit-s-30" --no-progress
step vitshrink bench "$OUT/vit-s-30" --teacher vit_small_patch16_224 --backends torch-cuda,ort-cuda \
    --batch-sizes 1,8,32 --no-fvcore --out "$OUT/bench" --no-progress
for amp in on off; do
    step python -m research.distill_cost --model vit_small_patch16_224 --device cuda --amp "$amp" \
        --batch-size 128 --steps 20 --json "$OUT/distill-cost-amp-$amp.json"
done
exit $status
