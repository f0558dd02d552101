#!/usr/bin/env bash
# Issue #44's recovery study over 3 seeds: cifar3 at 64 px, the ImageNet-pretrained EfficientNet-Lite2 teacher of
# pretrained_study.sh (the same cached teacher), pruned by 50% and 80% (Torch-Pruning, round_to 8), each recovered
# three ways from the same pruned weights: CE fine-tuning (the baseline), distillation from the unpruned teacher
# (KL at T 4, alpha 0.5, logits only) and the matched label-smoothing control; 15 epochs, as ResNet10-T's sweep in
# pretrained_study.sh (artifacts/study43-cifar3-t-alpha), which it is compared with. Then the recovery's learning
# rate: pruned50 again at a quarter of the from-scratch peak (--lr 5e-4), the teacher given as its cached checkpoint
# so that --lr changes the students' training alone. The learning-rate sweep runs first (pruned50 at 2e-3 is recorded
# already, so it answers the open question soonest); the first sweep then resumes with pruned80. Resumes where it stopped.
#   bash benchmarks/prune_study_seeds.sh [DATA_DIR] [HUB]   (defaults ../shared/data, ../shared/hub)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
export HF_HUB_CACHE="${2:-../shared/hub}" HF_HUB_OFFLINE=1

source benchmarks/keep.sh

TEACHER=$(grep -l '"cat"' artifacts/.teachers/*/record.json | head -1 | xargs dirname)/teacher.pt  # cifar3's, with aux
kdc sweep --dataset cifar3 --data-dir "$DATA" --image-size 64 --teacher tf_efficientnet_lite2 --teacher-weights "$TEACHER" \
    --seeds 3 --device cpu --student pruned50 --epochs 15 --lr 5e-4 --T 4 --alpha 0.5 --beta 0 \
    --out artifacts/study44-cifar3-64-lr5e-4
keep artifacts/study44-cifar3-64-lr5e-4 study44-cifar3-64-lr5e-4

kdc sweep --dataset cifar3 --data-dir "$DATA" --image-size 64 --teacher tf_efficientnet_lite2 --pretrained \
    --teacher-epochs 6 --seeds 3 --device cpu --student pruned50,pruned80 --epochs 15 --T 4 --alpha 0.5 --beta 0 \
    --out artifacts/study44-cifar3-64
keep artifacts/study44-cifar3-64 study44-cifar3-64
