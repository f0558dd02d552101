#!/usr/bin/env bash
# The --unlabeled lever of issue #43: cifar3 at 64 px, teacher EfficientNet-Lite2 with ImageNet weights (the cached
# teacher of pretrained_study.sh), ResNet10-T from scratch, KL at T 4 with the labels (alpha 0.5), logits only, 3 seeds;
# the distilled student also learns cifar3's 3,809 auxiliary images (CIFAR-10's 7 other classes) without their labels.
#   bash benchmarks/pretrained_study_unlabeled.sh [DATA_DIR] [HUB]   (defaults ../shared/data, ../shared/hub)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
export HF_HUB_CACHE="${2:-../shared/hub}" HF_HUB_OFFLINE=1

source benchmarks/keep.sh

kdc sweep --dataset cifar3 --data-dir "$DATA" --image-size 64 --teacher tf_efficientnet_lite2 --pretrained --teacher-epochs 6 \
    --seeds 3 --device cpu --student resnet10t --epochs 15 --T 4 --alpha 0.5 --beta 0 --unlabeled aux \
    --out artifacts/study43-cifar3-unlabeled-aux
keep artifacts/study43-cifar3-unlabeled-aux study43-cifar3-unlabeled-aux
