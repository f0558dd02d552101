#!/usr/bin/env bash
# The pretrained-teacher study of issue #43, one sweep after another (one heavy job at a time on a small CPU):
# cifar3 at 64 px, teacher EfficientNet-Lite2 with ImageNet weights (../shared/hub, read offline), 3 seeds.
# Each sweep resumes where it stopped when this script runs again; each finished one is copied into
# benchmarks/results/ (results, summary, plots).
#   bash benchmarks/pretrained_study.sh [DATA_DIR] [HUB]   (defaults ../shared/data, ../shared/hub)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
export HF_HUB_CACHE="${2:-../shared/hub}" HF_HUB_OFFLINE=1

source benchmarks/keep.sh  # keep FROM NAME: a finished sweep's reports into benchmarks/results/NAME

CIFAR=(--dataset cifar3 --data-dir "$DATA" --image-size 64 --teacher tf_efficientnet_lite2 --pretrained --teacher-epochs 6
       --seeds 3 --device cpu)
# 1. The recipe as it stood (5fe54a7's teacher recipe): KL at T 4, with the labels (alpha 0.5) and alone (alpha 1),
#    logits only; each against the baseline and the label-smoothing control matched to it.
kdc sweep "${CIFAR[@]}" --student resnet10t --epochs 15 --T 4 --alpha 0.5,1 --beta 0 --out artifacts/study43-cifar3-t-alpha
keep artifacts/study43-cifar3-t-alpha study43-cifar3-t-alpha
# 2. The temperature for three classes: T 1 beside T 4 at alpha 0.5 (the same folder: its baselines and the T 4 cell
#    are reused, the T 1 cell and its control are trained).
kdc sweep "${CIFAR[@]}" --student resnet10t --epochs 15 --T 1,4 --alpha 0.5 --beta 0 --out artifacts/study43-cifar3-t-alpha
keep artifacts/study43-cifar3-t-alpha study43-cifar3-t1
