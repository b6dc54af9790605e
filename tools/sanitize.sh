#!/usr/bin/env bash
# tools/sanitize.sh -- the `sanitizer` pytest subset (small shapes, both kernel families:
# tests/test_reliability_sanitizer.py) under compute-sanitizer's memcheck, racecheck, synccheck
# and initcheck. Prints exactly one line per tool on stdout:
#     <tool>: PASS|FAIL (<errors> errors, <n> tests)
# PASS needs a sanitizer error count of 0, every selected test passed and at least one ran.
# Why a test failed, and the full reports, are in the logs (their folder is named on stderr).
#
# Every buffer is allocated at its exact size, so memcheck sees the first byte past an end:
# PYTORCH_NO_CUDA_MEMORY_CACHING=1 (torch inputs) and FLASHATTN_C_EXACT_ALLOC=1 (DeviceArray
# outputs: cudaMalloc instead of the stream-ordered pool, see csrc/device_array.h). Hopper-only
# checks (--check-bulk-copy, --check-warpgroup-mma) and racecheck's cp.async tracking are added
# where this compute-sanitizer lists them in --help and the tool accepts them (a dry run).
#
# Usage, from the repository root after a build (python setup.py build_ext --inplace ...), on a
# machine with a GPU and PyTorch:
#     tools/sanitize.sh
#     SANITIZE_TOOLS="memcheck initcheck" SANITIZE_SELECT=sm90 tools/sanitize.sh
# Environment:
#     COMPUTE_SANITIZER  the binary (default: on PATH, else $CUDA_HOME/bin, /usr/local/cuda/bin)
#     PYTHON             the interpreter (default: python)
#     SANITIZE_TOOLS     default "memcheck racecheck synccheck initcheck"
#     SANITIZE_SELECT    a pytest -k expression narrowing the subset (e.g. "sm90 and float16")
#     SANITIZE_PARALLEL  1 (default): the tools run side by side on the GPU; 0: one at a time
#     SANITIZE_TIMEOUT   seconds allowed per tool (default 220); a tool that runs out FAILs
#     SANITIZE_LOG_DIR   the per-tool logs (default /tmp/flashattn_c_sanitizer)
#     OUT                when set, the logs are also packed into one file there,
#                        $OUT/sanitizer-logs.tar.gz (a device call returns few files)
# Exit status: 0 when every tool passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.." || exit 1

PYTHON=${PYTHON:-python}
TOOLS=${SANITIZE_TOOLS:-"memcheck racecheck synccheck initcheck"}
TIMEOUT=${SANITIZE_TIMEOUT:-220}
PARALLEL=${SANITIZE_PARALLEL:-1}
LOG_DIR=${SANITIZE_LOG_DIR:-/tmp/flashattn_c_sanitizer}
mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR"/*.flags "$LOG_DIR"/*.log "$LOG_DIR"/*.rc  # this script's own files only

find_sanitizer() {
    if [ -n "${COMPUTE_SANITIZER:-}" ]; then echo "$COMPUTE_SANITIZER"; return; fi
    if command -v compute-sanitizer >/dev/null 2>&1; then command -v compute-sanitizer; return; fi
    for root in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
        if [ -n "$root" ] && [ -x "$root/bin/compute-sanitizer" ]; then
            echo "$root/bin/compute-sanitizer"
            return
        fi
    done
}
SANITIZER=$(find_sanitizer)

export PYTORCH_NO_CUDA_MEMORY_CACHING=1
export FLASHATTN_C_EXACT_ALLOC=1

fail_all() {  # $1: why, on stderr; every tool reports FAIL
    echo "sanitize.sh: $1" >&2
    for tool in $TOOLS; do echo "$tool: FAIL (0 errors, 0 tests)"; done
    exit 1
}
[ -n "$SANITIZER" ] || fail_all "compute-sanitizer not found (set COMPUTE_SANITIZER or CUDA_HOME)"
"$PYTHON" -c "import flashattn_c" 2>"$LOG_DIR/import.log" ||
    fail_all "flashattn_c does not import (build it first): $LOG_DIR/import.log"

HELP=$("$SANITIZER" --help 2>&1)

# Optional flags for one tool: listed in --help, and accepted by that tool in a dry run.
extra_flags() {
    local tool=$1 opt
    for opt in --check-bulk-copy --check-warpgroup-mma --racecheck-memcpy-async; do
        grep -q -- "$opt" <<<"$HELP" || continue
        if "$SANITIZER" --tool "$tool" "$opt" yes true >/dev/null 2>&1; then
            printf '%s yes ' "$opt"
        fi
    done
}

run_tool() {  # $1: tool; writes $LOG_DIR/<tool>.{flags,pytest,sanitizer,rc}
    local tool=$1 flags select=()
    flags=$(extra_flags "$tool")
    echo "$flags" >"$LOG_DIR/$tool.flags"
    [ -n "${SANITIZE_SELECT:-}" ] && select=(-k "$SANITIZE_SELECT")
    # shellcheck disable=SC2086  # flags is a list of words
    timeout --kill-after=15 "$TIMEOUT" \
        "$SANITIZER" --tool "$tool" $flags --print-limit 100 \
        --log-file "$LOG_DIR/$tool.sanitizer.log" \
        "$PYTHON" -m pytest -q -p no:cacheprovider -m sanitizer ${select[@]+"${select[@]}"} tests \
        >"$LOG_DIR/$tool.pytest.log" 2>&1
    echo $? >"$LOG_DIR/$tool.rc"
}

if [ "$PARALLEL" = 1 ]; then
    pids=()
    for tool in $TOOLS; do
        run_tool "$tool" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
else
    for tool in $TOOLS; do run_tool "$tool"; done
fi

status=0
for tool in $TOOLS; do
    rc=$(cat "$LOG_DIR/$tool.rc" 2>/dev/null || echo 1)
    # memcheck/synccheck/initcheck end with "ERROR SUMMARY: N errors"; racecheck with
    # "RACECHECK SUMMARY: H hazards displayed (N errors, W warnings)".
    summary=$(grep -E "(ERROR|RACECHECK) SUMMARY: .*[0-9]+ errors?" "$LOG_DIR/$tool.sanitizer.log" \
              2>/dev/null | tail -n 1)
    errors=$(grep -oE "[0-9]+ error" <<<"$summary" | grep -oE "[0-9]+")
    last=$(grep -E "[0-9]+ (passed|failed|error)" "$LOG_DIR/$tool.pytest.log" | tail -n 1)
    count() { grep -oE "[0-9]+ $1" <<<"$last" | grep -oE "[0-9]+" || echo 0; }
    passed=$(count passed)
    failed=$(count failed)
    broken=$(count "errors?")
    tests=$((passed + failed + broken))
    verdict=PASS
    why=""
    if [ -z "$errors" ]; then
        errors=0
        verdict=FAIL
        why="no error summary in $tool.sanitizer.log"
    fi
    [ "$errors" -gt 0 ] && { verdict=FAIL; why="sanitizer errors"; }
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && { verdict=FAIL; why="timed out after ${TIMEOUT}s"; }
    [ "$failed" -gt 0 ] || [ "$broken" -gt 0 ] && { verdict=FAIL; why="tests failed"; }
    [ "$tests" -eq 0 ] && { verdict=FAIL; why="no test ran"; }
    [ "$verdict" = PASS ] && [ "$rc" != 0 ] && { verdict=FAIL; why="exit status $rc"; }
    [ "$verdict" = FAIL ] && status=1 && echo "sanitize.sh: $tool: $why (exit $rc)" >&2
    echo "$tool: $verdict ($errors errors, $tests tests)"
done
echo "sanitize.sh: logs and flags used in $LOG_DIR" >&2
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    tar -czf "$OUT/sanitizer-logs.tar.gz" -C "$LOG_DIR" . &&
        echo "sanitize.sh: packed into $OUT/sanitizer-logs.tar.gz" >&2
fi
exit $status
