#!/usr/bin/env bash
# The KD-loss study of issue #35, one sweep after another (one heavy job at a time on a small CPU):
# cifar3 at 32 px with the default 60-epoch teacher (trained once, cached under artifacts/.teachers/),
# ResNet10-T and MobileNetV4-Conv-Small, KL / DIST / DKD at T 4, alpha 0.5, logits only, 3 seeds; then
# MobileNetV4 with the small-input stem; then the 2x student schedule; then chest-xray at 64 px, KL and DIST, with a
# ResNet-50 teacher (the default EfficientNet-B3 needs a stride-1 stem at 64 px: 275 s an epoch on 2 cores against
# ResNet-50's 51 s, measured, which this study's time could not hold). Each sweep resumes where it stopped
# when this script runs again; each finished one is copied into benchmarks/results/ (results, summary, plots).
#   bash benchmarks/loss_study.sh [DATA_DIR]   (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
COMMON=(--dataset cifar3 --data-dir "$DATA" --teacher-epochs 60 --kd-loss kl,dist,dkd --T 4 --alpha 0.5 --beta 0 --seeds 3 --device cpu)

source benchmarks/keep.sh  # keep FROM NAME: a finished sweep's reports into benchmarks/results/NAME

kdc sweep "${COMMON[@]}" --student resnet10t,mobilenetv4_conv_small --out artifacts/sweep-cifar3-losses
keep artifacts/sweep-cifar3-losses sweep-cifar3-losses
kdc sweep "${COMMON[@]}" --student mobilenetv4_conv_small --student-stem auto --out artifacts/sweep-cifar3-losses-stem
keep artifacts/sweep-cifar3-losses-stem sweep-cifar3-losses-stem
kdc sweep "${COMMON[@]}" --student resnet10t --epochs 60 --out artifacts/sweep-cifar3-losses-60ep
keep artifacts/sweep-cifar3-losses-60ep sweep-cifar3-losses-60ep
CHEST=(--dataset chest-xray --data-dir "$DATA" --image-size 64 --teacher resnet50 --kd-loss kl,dist --T 4 --alpha 0.5 --beta 0 --seeds 3 --device cpu)
kdc sweep "${CHEST[@]}" --student resnet10t,mobilenetv4_conv_small --out artifacts/sweep-chest-xray-losses-64
keep artifacts/sweep-chest-xray-losses-64 sweep-chest-xray-losses-64
kdc sweep "${CHEST[@]}" --student mobilenetv4_conv_small --student-stem auto --out artifacts/sweep-chest-xray-losses-64-stem
keep artifacts/sweep-chest-xray-losses-64-stem sweep-chest-xray-losses-64-stem
