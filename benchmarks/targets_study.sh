#!/usr/bin/env bash
# The targets measurement of issue #34 on the CPU at hand: a three-student cifar3 run (32 px, the default 60-epoch
# teacher from the cache), benchmarked on every target and precision, its recommendation under 2 ms and 5 ms;
# then the format timings at 32 and 224 px on both runtimes, and the small-input stem's cost. Records go to benchmarks/results/.
#   bash benchmarks/targets_study.sh [DATA_DIR]   (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
RUN=artifacts/cifar3-targets
python benchmarks/record.py compress-cifar3-targets -- kdc compress --dataset cifar3 --data-dir "$DATA" \
    --student resnet18,resnet10t,mobilenetv4_conv_small --control none --int8 --device cpu --out "$RUN"
python benchmarks/record.py benchmark-cifar3-targets-2ms -- kdc benchmark "$RUN" --max-ms 2
cp "$RUN/benchmark.md" benchmarks/results/benchmark-cifar3-targets-2ms.md
python benchmarks/record.py benchmark-cifar3-targets-5ms -- kdc benchmark "$RUN" --max-ms 5
cp "$RUN/benchmark.md" benchmarks/results/benchmark-cifar3-targets-5ms.md
python benchmarks/format_timings.py --models resnet18,resnet10t,mobilenetv4_conv_small --sizes 32,224 --name format-timings-targets
python benchmarks/stem_cost.py
