#!/usr/bin/env bash
# tools/sanitize.sh -- the `sanitizer` pytest subset (small shapes, both kernel families:
# tests/test_reliability_sanitizer.py) under compute-sanitizer's memcheck, racecheck, synccheck
# and initcheck. Prints exactly one line per tool on stdout:
#     <tool>: PASS|FAIL (<errors> errors, <n> tests[; what was not checked])
# PASS needs a sanitizer error count of 0, every selected test passed and at least one ran.
# initcheck first runs tools/tma_store_initcheck.cu: where this initcheck does not record TMA
# stores, the sm90 cases run without its host-copy checks, and the line says so.
# Why a test failed, and the full reports, are in the logs (their folder is named on stderr).
#
# Every buffer is allocated at its exact size, so memcheck sees the first byte past an end:
# PYTORCH_NO_CUDA_MEMORY_CACHING=1 (torch inputs) and FLASHATTN_C_EXACT_ALLOC=1 (DeviceArray
# outputs: cudaMalloc instead of the stream-ordered pool, see csrc/device_array.h). Hopper-only
# checks (--check-bulk-copy, --check-warpgroup-mma) and racecheck's cp.async tracking
# (--racecheck-memcpy-async) are passed explicitly where this compute-sanitizer lists them in
# --help and the tool does not refuse them; the flags used are logged per tool.
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
#     SANITIZE_TIMEOUT   seconds allowed per sanitizer run (default 220); one that runs out FAILs
#     NVCC               builds the TMA probe (default: on PATH, else $CUDA_HOME/bin)
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
rm -f "$LOG_DIR"/*.flags "$LOG_DIR"/*.log "$LOG_DIR"/*.rc "$LOG_DIR"/tma_store_initcheck  # this script's own files only

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

# Optional flags for one tool: listed in --help, and not refused by that tool. A dry run on a
# program without CUDA calls always ends in "terminated before first instrumented API call";
# an option the tool does not take is refused before that, with a message naming the option.
extra_flags() {
    local tool=$1 opt out
    local opts="--check-bulk-copy --check-warpgroup-mma"
    [ "$tool" = racecheck ] && opts="$opts --racecheck-memcpy-async"
    for opt in $opts; do
        grep -q -- "$opt" <<<"$HELP" || continue
        out=$("$SANITIZER" --tool "$tool" "$opt" yes true 2>&1)
        grep -qiE "unrecogni[sz]ed|unknown option|invalid (option|value)|not (supported|valid)" \
            <<<"$out" || printf '%s yes ' "$opt"
    done
}

# initcheck does not record every way a kernel can write global memory: tools/
# tma_store_initcheck.cu writes a tile with st.global (control) and with a TMA store (what the
# sm90 epilogue does), checks every value itself, and copies it to the host. When the control is
# clean and the TMA copy is reported, the sm90 cases run with host-copy checks off
# (--check-api-memory-access no): device-side reads are still checked, and an output element
# the kernel never wrote is caught by the tests themselves (NaN-filled out= buffers, every value
# compared with the reference). Prints "yes", "no" or why it could not tell.
initcheck_sees_tma() {
    local nvcc=${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}
    local probe=$LOG_DIR/tma_store_initcheck mode
    "$nvcc" -O2 -gencode arch=compute_90a,code=sm_90a -o "$probe" tools/tma_store_initcheck.cu \
        >"$LOG_DIR/tma_probe.log" 2>&1 || { echo "probe did not build"; return; }
    for mode in plain tma; do
        "$SANITIZER" --tool initcheck --print-limit 1 "$probe" "$mode" \
            >"$LOG_DIR/tma_probe.$mode.log" 2>&1
        echo "exit $?" >>"$LOG_DIR/tma_probe.$mode.log"
    done
    grep -q "ERROR SUMMARY: 0 errors" "$LOG_DIR/tma_probe.plain.log" &&
        grep -q "plain store: 0 of" "$LOG_DIR/tma_probe.plain.log" &&
        grep -q "tma store: 0 of" "$LOG_DIR/tma_probe.tma.log" ||
        { echo "probe inconclusive (see tma_probe.*.log)"; return; }
    if grep -q "ERROR SUMMARY: 0 errors" "$LOG_DIR/tma_probe.tma.log"; then echo yes; else echo no; fi
}

# One sanitizer run over (part of) the subset. $1: tool, $2: run name (log file stem), $3: a
# pytest -k expression or "", $4...: flags beyond extra_flags.
run_part() {
    local tool=$1 name=$2 expr=$3 flags select=()
    shift 3
    flags="$(extra_flags "$tool")$*"
    echo "$flags" >"$LOG_DIR/$name.flags"
    if [ -n "${SANITIZE_SELECT:-}" ] && [ -n "$expr" ]; then
        select=(-k "($SANITIZE_SELECT) and ($expr)")
    elif [ -n "${SANITIZE_SELECT:-}$expr" ]; then
        select=(-k "${SANITIZE_SELECT:-}$expr")
    fi
    # shellcheck disable=SC2086  # flags is a list of words
    timeout --kill-after=15 "$TIMEOUT" \
        "$SANITIZER" --tool "$tool" $flags --print-limit 100 \
        --log-file "$LOG_DIR/$name.sanitizer.log" \
        "$PYTHON" -m pytest -q -p no:cacheprovider -m sanitizer ${select[@]+"${select[@]}"} tests \
        >"$LOG_DIR/$name.pytest.log" 2>&1
    echo $? >"$LOG_DIR/$name.rc"
}

# The runs of one tool, one per line: name, -k expression, extra flags.
parts_of() {
    if [ "$1" = initcheck ] && [ "$SEES_TMA" = no ]; then
        echo "initcheck-sm80|sm80|"
        echo "initcheck-sm90|sm90|--check-api-memory-access no"
    else
        echo "$1||"
    fi
}

run_tool() {
    local tool=$1 name expr flags
    while IFS='|' read -r name expr flags; do
        # shellcheck disable=SC2086  # flags is a list of words
        run_part "$tool" "$name" "$expr" $flags </dev/null
    done < <(parts_of "$tool")
}

SEES_TMA=yes
if grep -qw initcheck <<<"$TOOLS"; then
    SEES_TMA=$(initcheck_sees_tma)
    echo "sanitize.sh: initcheck records TMA stores: $SEES_TMA" >&2
fi

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

# Verdict of one run: prints "errors tests why" (why empty when it passed).
judge_part() {
    local name=$1 rc summary errors last passed failed broken tests why=""
    rc=$(cat "$LOG_DIR/$name.rc" 2>/dev/null || echo 1)
    # memcheck/synccheck/initcheck end with "ERROR SUMMARY: N errors"; racecheck with
    # "RACECHECK SUMMARY: H hazards displayed (N errors, W warnings)".
    summary=$(grep -E "(ERROR|RACECHECK) SUMMARY: .*[0-9]+ errors?" "$LOG_DIR/$name.sanitizer.log" \
              2>/dev/null | tail -n 1)
    errors=$(grep -oE "[0-9]+ error" <<<"$summary" | grep -oE "[0-9]+")
    last=$(grep -E "[0-9]+ (passed|failed|error)" "$LOG_DIR/$name.pytest.log" | tail -n 1)
    count() { grep -oE "[0-9]+ $1" <<<"$last" | grep -oE "[0-9]+" || echo 0; }
    passed=$(count passed)
    failed=$(count failed)
    broken=$(count "errors?")
    tests=$((passed + failed + broken))
    if [ -z "$errors" ]; then
        errors=0
        why="no error summary in $name.sanitizer.log"
    fi
    [ "$errors" -gt 0 ] && why="sanitizer errors"
    { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && why="timed out after ${TIMEOUT}s"
    { [ "$failed" -gt 0 ] || [ "$broken" -gt 0 ]; } && why="tests failed"
    [ "$tests" -eq 0 ] && why="no test ran"
    [ -z "$why" ] && [ "$rc" != 0 ] && why="exit status $rc"
    echo "$errors $tests $why"
}

status=0
for tool in $TOOLS; do
    total_errors=0
    total_tests=0
    verdict=PASS
    while IFS='|' read -r name _; do
        read -r errors tests why < <(judge_part "$name")
        total_errors=$((total_errors + errors))
        total_tests=$((total_tests + tests))
        if [ -n "$why" ]; then
            verdict=FAIL
            echo "sanitize.sh: $name: $why" >&2
        fi
    done < <(parts_of "$tool")
    [ "$verdict" = FAIL ] && status=1
    note=""
    [ "$tool" = initcheck ] && [ "$SEES_TMA" = no ] &&
        note="; sm90 host copies unchecked: initcheck does not record TMA stores"
    [ "$tool" = initcheck ] && [ "$SEES_TMA" != no ] && [ "$SEES_TMA" != yes ] &&
        note="; TMA probe: $SEES_TMA"
    echo "$tool: $verdict ($total_errors errors, $total_tests tests$note)"
done
echo "sanitize.sh: logs and flags used in $LOG_DIR" >&2
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    tar -czf "$OUT/sanitizer-logs.tar.gz" -C "$LOG_DIR" . &&
        echo "sanitize.sh: packed into $OUT/sanitizer-logs.tar.gz" >&2
fi
exit $status
