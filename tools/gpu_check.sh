#!/usr/bin/env bash
# gpu_check.sh -- everything a GPU session needs, in one call, from the repository root:
#   build in place, C self-test, smoke test, GPU tests, a benchmark, SASS evidence.
# Logs (and the benchmark's CSV/PNG) go to $OUT (default /tmp/flashattn_c_out); the last lines
# printed are a summary. Steps can be picked: tools/gpu_check.sh build selftest smoke tests bench sass
# Environment: BENCH_ARGS (bench_attention.py flags), PYTEST_ARGS (extra pytest flags),
# SELFTEST_ARGS; every step runs under a timeout (a hung kernel must not eat the whole call):
# SELFTEST_TIMEOUT (per family), SMOKE_TIMEOUT, TESTS_TIMEOUT, BENCH_TIMEOUT, in seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/flashattn_c_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(build selftest smoke tests bench sass)
summary=()
want() { local s; for s in "${steps[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
note() { summary+=("$1"); echo "== $1"; }
t0=$SECONDS

# $OUT brings back at most 8 files: build.log also holds the GPU line and the SASS counts.
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"

if want build; then
    s=$SECONDS
    cat "$OUT/gpu.txt" >"$OUT/build.log"
    $PY setup.py build_ext --inplace --build-temp build/obj >>"$OUT/build.log" 2>&1
    rc=$?
    perf=$(grep -c 'C75[0-9][0-9]' "$OUT/build.log")
    note "build rc=$rc in $((SECONDS - s)) s; ptxas C75xx warnings: $perf"
    [ $rc -eq 0 ] || { tail -30 "$OUT/build.log"; exit 1; }
fi

if want selftest; then
    s=$SECONDS
    tools/build_selftest.sh >"$OUT/selftest.log" 2>&1
    for fam in sm80 sm90; do
        timeout "${SELFTEST_TIMEOUT:-150}" tools/fa_selftest --family $fam ${SELFTEST_ARGS:-} \
            >>"$OUT/selftest.log" 2>&1
        rc=$?
        note "selftest $fam rc=$rc in $((SECONDS - s)) s: $(tail -1 "$OUT/selftest.log")"
    done
fi

if want smoke; then
    s=$SECONDS
    timeout "${SMOKE_TIMEOUT:-120}" $PY smoke_test.py >"$OUT/smoke.log" 2>&1
    rc=$?
    note "smoke rc=$rc in $((SECONDS - s)) s"
    cat "$OUT/smoke.log"
fi

if want tests; then
    s=$SECONDS
    timeout "${TESTS_TIMEOUT:-400}" $PY -m pytest -q -p no:cacheprovider -rfEs ${PYTEST_ARGS:-} tests \
        >"$OUT/pytest.log" 2>&1
    rc=$?
    note "pytest rc=$rc in $((SECONDS - s)) s: $(grep -E '(passed|failed|error)' "$OUT/pytest.log" | tail -1)"
fi

if want bench; then
    s=$SECONDS
    timeout "${BENCH_TIMEOUT:-420}" $PY benches/bench_attention.py --save-csv --output-dir "$OUT" \
        ${BENCH_ARGS:---suite fa --plot} >"$OUT/bench.log" 2>&1
    rc=$?
    note "bench rc=$rc in $((SECONDS - s)) s"
fi

if want sass; then
    {
        for obj in build/obj/csrc/kernels/*.cu.o; do
            sass=$(cuobjdump --dump-sass "$obj" 2>/dev/null)
            printf '%s: HGMMA %s  HMMA %s  LDL/STL %s  USETMAXREG %s\n' "$(basename "$obj")" \
                "$(grep -c HGMMA <<<"$sass")" "$(grep -c 'HMMA' <<<"$sass")" \
                "$(grep -cE '\b(LDL|STL)\b' <<<"$sass")" "$(grep -c USETMAXREG <<<"$sass")"
        done
    } >"$OUT/sass.txt" 2>&1
    note "sass: $(tr '\n' ';' <"$OUT/sass.txt")"
    cat "$OUT/sass.txt" >>"$OUT/build.log"
fi

rm -f "$OUT/gpu.txt" "$OUT/sass.txt"
echo
echo "== summary ($((SECONDS - t0)) s)"
printf '%s\n' "${summary[@]}"
