#!/usr/bin/env bash
# Issue #12 on one GPU: streaming (--stream) against in-memory batches at 224 px on chest-xray, and a
# streamed 224 px compress. One GPU cannot show a multi-GPU speed-up, and this script does not try.
#
#   benchmarks/gpu_stream.sh DATA_DIR [LOG_DIR]     (DATA_DIR holds chest_xray/; steps add up to 300 s)
set -u
. "$(dirname "$0")/gpu_lib.sh" "$@"  # DATA, LOG, WORK, PY, SUMMARY and step

echo "# gpu_stream $(date -u +%FT%TZ), commit ${KDC_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" | tee "$SUMMARY"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$SUMMARY"

step "1 stream_throughput 224 px (CUDA)" 150 "$LOG/stream-throughput.log" \
    $PY benchmarks/stream_throughput.py --data-dir "$DATA/chest_xray" --device cuda --out "$LOG/stream-throughput-cuda.json"
tail -n 12 "$LOG/stream-throughput.log" | tee -a "$SUMMARY"

step "2 compress chest-xray 224 px, streamed (CUDA)" 150 "$LOG/compress-stream224.log" \
    $PY -m kdcompress compress --dataset chest-xray --data-dir "$DATA/chest_xray" --image-size 224 --stream \
    --device cuda --control none --out "$WORK/stream224"
grep -E "^│|Run written" "$LOG/compress-stream224.log" | tee -a "$SUMMARY"
rm -rf "$WORK"
