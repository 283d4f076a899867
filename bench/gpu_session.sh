#!/usr/bin/env bash
# The one prepared run on a lent GPU machine (docs/BENCHMARKS.md, "GPU"): the paper-scale
# step check, a CIFAR-10 bf16-vs-fp32 learning check, and, where the host CPU has AMX, the
# CPU precision benchmark on 2 threads. Writes into $OUT (default ./gpu_out).
#   CIFAR_TAR=path/to/CIFAR-10-images.tar.gz bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/bench:${PYTHONPATH:-}"
py=${PYTHON:-python3}
{ lscpu; nvidia-smi; } > "$OUT/machine.txt" 2>&1

# 1. ViT-B/16 CIM step against the supervised step, bf16, eager and compiled; flips; DDP.
timeout "${GPU_CHECK_S:-280}" $py bench/gpu_check.py --out "$OUT/gpu_check.json"

# 2. Does bf16 learn like fp32? REVDET pre-training, same seed in both, a second fp32 seed
#    for run-to-run noise; kNN of each; fine-tuning at 10 % labels of the first two.
learn() {
    local tar=${CIFAR_TAR:-.dev/CIFAR-10-images.tar.gz} d=/tmp/cifar l="$OUT/learn"
    mkdir -p $d $l && tar xzf "$tar" -C $d && d=$d/CIFAR-10-images
    local q=(run.progress=false run.tensorboard=false data.num_workers=8)
    $py -m cimpt.cli tokenizer train configs/cifar10_tokenizer.yaml data.path=$d/train \
        data.val_path=$d/test run.dir=$l/tok train.epochs=2 "${q[@]}" run.vis_every=0
    for v in "fp32 none 0" "bf16 bf16 0" "fp32_seed1 none 1"; do
        set -- $v
        $py -m cimpt.cli pretrain configs/cifar10_vit.yaml objective=revdet data.path=$d/train \
            tokenizer.checkpoint=$l/tok run.dir=$l/pt_$1 train.amp=$2 seed=$3 train.epochs=2 \
            run.vis_every=0 run.ckpt_every=100000 "${q[@]}"
        $py -m cimpt.cli knn configs/cifar10_finetune.yaml init.checkpoint=$l/pt_$1 \
            data.path=$d/train data.val_path=$d/test run.dir=$l/knn_$1 "${q[@]}"
    done
    for v in fp32 bf16; do
        $py -m cimpt.cli finetune configs/cifar10_finetune.yaml init.checkpoint=$l/pt_$v \
            data.path=$d/train data.val_path=$d/test data.label_fraction=0.1 run.dir=$l/ft_$v \
            "${q[@]}"
    done
}
export -f learn; export OUT py
timeout "${LEARN_S:-200}" bash -c learn
find "$OUT/learn" \( -name '*.safetensors' -o -name checkpoints -o -name '*.png' \) -prune \
    -exec rm -rf {} + 2>/dev/null
tar czf "$OUT/learn.tar.gz" -C "$OUT" learn && rm -rf "$OUT/learn"

# 3. The CPU benchmark on this host's CPU, 2 threads, if it has AMX.
if grep -qw amx_bf16 /proc/cpuinfo; then
    timeout "${CPU_S:-90}" $py bench/cpu_precision.py --threads 2 --batch 64 --reps 3 \
        --out "$OUT/cpu_precision.json"
else
    echo "no AMX on this host CPU: cpu_precision skipped"
fi
