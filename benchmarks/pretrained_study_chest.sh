#!/usr/bin/env bash
# The pretrained-teacher study of issue #43 on chest-xray at 96 px: teacher EfficientNet-Lite2 with ImageNet weights
# (../shared/hub, read offline), ResNet10-T from scratch, KL at T 4 with the labels (alpha 0.5), logits only, against
# the baseline and the label-smoothing control, 3 seeds. Resumes where it stopped; the finished sweep is copied into
# benchmarks/results/.
#   bash benchmarks/pretrained_study_chest.sh [DATA_DIR] [HUB]   (defaults ../shared/data, ../shared/hub)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
export HF_HUB_CACHE="${2:-../shared/hub}" HF_HUB_OFFLINE=1

source benchmarks/keep.sh

kdc sweep --dataset chest-xray --data-dir "$DATA" --image-size 96 --teacher tf_efficientnet_lite2 --pretrained \
    --teacher-epochs 6 --seeds 3 --device cpu --student resnet10t --epochs 10 --T 4 --alpha 0.5 --beta 0 \
    --out artifacts/study43-chest-96
keep artifacts/study43-chest-96 study43-chest-96
