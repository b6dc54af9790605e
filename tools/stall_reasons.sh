#!/usr/bin/env bash
# tools/stall_reasons.sh -- where a kernel's warps wait: Nsight Compute over one program, clocks
# left as they are (--clock-control none), then one summary per profiled launch (grid,
# duration, issue-stall reasons in warps per issued instruction, the busiest pipes;
# tools/ncu_summary.py).
#
#   tools/stall_reasons.sh NAME KERNEL_REGEX PROGRAM [ARGS...]
#
# e.g., on an H100/H200 after a build and dev/fwd_sm90_consumers built as its header says:
#   tools/stall_reasons.sh three 'fwd_kernel' ./fwd_sm90_consumers --profile
#   tools/stall_reasons.sh cases 'fwd_kernel|bwd_kernel|bwd_sm80_kernel' python3 dev/profile_cases.py
# The report ($OUT/NAME.ncu-rep) and its raw CSV ($OUT/NAME.csv) stay for a closer look
# (OUT defaults to /tmp/flashattn_c_out). Every launch the regex matches is profiled, each
# replayed once per metric pass: give programs that launch each kernel of interest once.
set -uo pipefail
name=${1:?usage: tools/stall_reasons.sh NAME KERNEL_REGEX PROGRAM [ARGS...]}
regex=${2:?kernel name regex}
shift 2
OUT=${OUT:-/tmp/flashattn_c_out}
mkdir -p "$OUT"
NCU=${NCU:-ncu}
sections=(--section WarpStateStats --section SpeedOfLight --section ComputeWorkloadAnalysis
          --section SchedulerStats --section InstructionStats)
"$NCU" --clock-control none "${sections[@]}" -k "regex:$regex" --export "$OUT/$name" -f "$@" 2>&1 \
    | grep -v '^==PROF=='
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || echo "stall_reasons: ncu or the program exited with status $status"
[ -f "$OUT/$name.ncu-rep" ] || { echo "stall_reasons: no report written ($OUT/$name.ncu-rep)"; exit 1; }
"$NCU" --import "$OUT/$name.ncu-rep" --csv --page raw > "$OUT/$name.csv" || exit 1
"${PYTHON:-python3}" "$(dirname "$0")/ncu_summary.py" "$OUT/$name.csv" || exit 1
exit "$status"
