#!/usr/bin/env bash
# One GPU check for a machine with torch, timm and onnx but no network (issue #10); its step limits add up to 550 s.
#
#   benchmarks/gpu_check.sh DATA_DIR [LOG_DIR]
#
# DATA_DIR holds cifar-10-batches-py/ and chest_xray/ (a copy of ../shared/data, 58 MB). Logs go to
# LOG_DIR (default $OUT, else /tmp/kdc-gpu-logs), at most 8 files; summary.log ends with the key figures.
# Steps, most important first, each under its own time limit so that one slow step cannot eat the rest:
#   1. the test suite with CUDA (pytest -m "not realdata": the gpu tests run, the CPU-pinned ones too)
#   2. the README's `kdc compress --dataset cifar3` with defaults on CUDA (target: <= 60 s end to end)
#   3. `kdc benchmark` on that run
#   4. benchmarks/train_throughput.py: img/s of teacher and student, 32 and 224 px, eager and compiled
#   5. a chest-xray run at 224 px
set -u
. "$(dirname "$0")/gpu_lib.sh" "$@"  # DATA, LOG, WORK, PY, SUMMARY and step
export KDC_SHARED_DATA="$DATA"  # the tests that read ../shared/data read this copy

{
    echo "# gpu_check $(date -u +%FT%TZ), commit ${KDC_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
    $PY -c "import torch, timm, onnxruntime; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| timm', timm.__version__, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"
} | tee "$SUMMARY"

step "1 pytest (CUDA)" 110 "$LOG/pytest.log" \
    $PY -m pytest -q -n 12 -m "not realdata" -p no:cacheprovider
tail -n 3 "$LOG/pytest.log" | tee -a "$SUMMARY"

step "2 compress cifar3 (defaults, CUDA)" 150 "$LOG/compress-cifar3.log" \
    $PY -m kdcompress compress --dataset cifar3 --data-dir "$DATA" --device cuda --int8 --out "$WORK/cifar3"

step "3 benchmark cifar3" 40 "$LOG/benchmark-cifar3.log" \
    $PY -m kdcompress benchmark "$WORK/cifar3" --quick

step "4 train_throughput" 140 "$LOG/throughput.log" \
    $PY benchmarks/train_throughput.py --device cuda --out "$LOG/train-throughput.json"

step "5 compress chest-xray 224 px (CUDA)" 110 "$LOG/compress-chest224.log" \
    $PY -m kdcompress compress --dataset chest-xray --data-dir "$DATA/chest_xray" --image-size 224 --device cuda --out "$WORK/chest224"

{
    echo "## key figures"
    grep -E "img/s" "$LOG/throughput.log"
    for run in cifar3 chest224; do
        [ -f "$WORK/$run/manifest.json" ] || { echo "$run: no manifest (see its log)"; continue; }
        $PY - "$WORK/$run" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
print(sys.argv[1].rsplit("/", 1)[-1], m["training"], m["config"]["epochs"], "epochs,", m["config"]["teacher_epochs"], "teacher epochs")
for role, e in m["models"].items():
    print(f"  {role:<9} test {e['test_accuracy']:.2%} ({e['test_correct']}/{m['dataset']['counts']['test']})  "
          f"train {e.get('train_seconds', '-')} s  best epoch {e.get('best_epoch', '-')}  val {e.get('best_val_accuracy', '-')}")
EOF
    done
    grep -E "^(teacher|baseline|distilled)|x faster|INT8|GPU:" "$LOG/benchmark-cifar3.log" | head -n 12
} 2>&1 | tee -a "$SUMMARY"
rm -rf "$WORK"
