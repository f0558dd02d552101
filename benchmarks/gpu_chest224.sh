#!/usr/bin/env bash
# Issue #11 at the users' resolution: chest-xray at 224 px, 3 seeds, today's recipe against the high-resolution
# levers, each as a sweep with its label-smoothing control. Prepared for a GPU session; its step limits add up to 560 s.
#
#   benchmarks/gpu_chest224.sh DATA_DIR [LOG_DIR]
#
# DATA_DIR holds chest_xray/ (a copy of ../shared/data/chest_xray, 38 MB). Logs go to LOG_DIR (default $OUT, else
# /tmp/kdc-gpu-logs); summary.log ends with, per recipe: the teacher, the baseline, the control and the distilled
# student (mean over seeds), and the noise verdicts.
#   1. recipe as today: crop of size/8, teacher CE, best validation accuracy
#   2. levers: random-resized crop + rotation + intensity jitter (all models), teacher label smoothing 0.1,
#      teacher EMA 0.999, teacher epoch chosen on validation loss
set -u
. "$(dirname "$0")/gpu_lib.sh" "$@"  # DATA, LOG, WORK, PY, SUMMARY and step
COMMON=(--dataset chest-xray --data-dir "$DATA/chest_xray" --image-size 224 --device cuda --T 4 --alpha 0.5 --beta 0.3 --seeds 3)

{
    echo "# gpu_chest224 $(date -u +%FT%TZ), commit ${KDC_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
} | tee "$SUMMARY"

step "1 sweep 224 px, recipe as today" 260 "$LOG/sweep-today.log" \
    $PY -m kdcompress sweep "${COMMON[@]}" --out "$WORK/today"
step "2 sweep 224 px, levers" 300 "$LOG/sweep-levers.log" \
    $PY -m kdcompress sweep "${COMMON[@]}" --augment rrc --teacher-smoothing 0.1 --teacher-ema 0.999 \
    --teacher-select loss --out "$WORK/levers"

for run in today levers; do
    [ -f "$WORK/$run/results.json" ] || { echo "$run: no results.json (see its log)" | tee -a "$SUMMARY"; continue; }
    $PY - "$WORK/$run/results.json" <<'EOF' 2>&1 | tee -a "$SUMMARY"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"## {sys.argv[1].split('/')[-2]}: teacher {r['teacher']['test_accuracy']:.2%}, baseline {r['baseline']['mean']:.2%} "
      f"± {r['baseline']['std']:.2%} over seeds {r['grid']['seeds']}")
for c in r["controls"]:
    print(f"  label smoothing {c['matched']['smoothing']:.3f}: {c['mean']:.2%}: {c['words']}")
for c in r["cells"]:
    print(f"  distilled T {c['temperature']:g} a {c['alpha']:g} b {c['beta']:g}: {c['mean']:.2%}: {c['words']}")
    if "vs_control" in c:
        print(f"    vs label smoothing: {c['vs_control']['words']}")
EOF
done
cp "$WORK"/today/summary.md "$LOG/summary-today.md" 2>/dev/null
cp "$WORK"/levers/summary.md "$LOG/summary-levers.md" 2>/dev/null
rm -rf "$WORK"
