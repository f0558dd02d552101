# What the GPU check scripts share: their arguments, folders and timed steps. Each sources it first:
#
#   . "$(dirname "$0")/gpu_lib.sh" "$@"      # the script's own arguments: DATA_DIR [LOG_DIR]
#
# It sets DATA (DATA_DIR, absolute), LOG (LOG_DIR, default $OUT, else /tmp/kdc-gpu-logs), WORK (an empty
# scratch folder), PY ($PYTHON, default python3) and SUMMARY ($LOG/summary.log), moves to the repository
# root, and defines step (KDC_GPU_STEPS picks steps by the first word of their names).
DATA=$(cd "${1:?usage: $0 DATA_DIR [LOG_DIR]}" && pwd) || exit 1
LOG=${2:-${OUT:-/tmp/kdc-gpu-logs}}
mkdir -p "$LOG" && LOG=$(cd "$LOG" && pwd)
WORK=$(mktemp -d /tmp/kdc-gpu-XXXX)
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1
SUMMARY="$LOG/summary.log"

step() {  # step NAME LIMIT_SECONDS LOGFILE COMMAND...: run, time it, note the exit code in the summary
    local name=$1 limit=$2 log=$3
    shift 3
    # KDC_GPU_STEPS="1 2d 4a" runs only the steps whose NAME starts with one of those words (default: all).
    if [ -n "${KDC_GPU_STEPS:-}" ] && [[ " $KDC_GPU_STEPS " != *" ${name%% *} "* ]]; then
        echo "$name: skipped (KDC_GPU_STEPS=$KDC_GPU_STEPS)" | tee -a "$SUMMARY"
        return 0
    fi
    local start=$SECONDS
    timeout "$limit" "$@" >"$log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s (limit $limit s)" | tee -a "$SUMMARY"
}
