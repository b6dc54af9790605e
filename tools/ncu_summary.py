#!/usr/bin/env python3
"""ncu_summary.py -- one summary per kernel launch of an Nsight Compute raw CSV
(`ncu --import R.ncu-rep --csv --page raw > R.csv`; tools/stall_reasons.sh makes both):
its name, grid and duration, the issue-stall reasons (average warps stalled per issued
instruction, WarpStateStats) largest first, the busiest pipes (% of peak while active) and
the scheduler's issue rate.

    tools/ncu_summary.py R.csv [R2.csv ...]

Only the standard library is used, so the summary can be made wherever the CSV is.
"""
import csv
import sys

STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"
PIPE_SUFFIX = ".avg.pct_of_peak_sustained_active"
EXTRA = ("smsp__issue_active.avg.pct_of_peak_sustained_active",
         "smsp__warps_eligible.avg.per_cycle_active",
         "smsp__inst_executed.sum",
         "sm__throughput.avg.pct_of_peak_sustained_elapsed")


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def read(path):
    """(header, units, rows) of a raw-page CSV; ncu may print lines before the header."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    start = next((i for i, r in enumerate(rows) if r and r[0] == "ID"), None)
    if start is None:
        raise SystemExit(f"{path}: no 'ID' header row (not an ncu --page raw --csv file)")
    return rows[start], rows[start + 1], rows[start + 2:]


def summarise(path):
    header, units, rows = read(path)
    col = {name: i for i, name in enumerate(header)}
    print(f"== {path}: {len(rows)} launches")
    for r in rows:
        value = lambda name: number(r[col[name]]) if name in col else None
        time_col = "gpu__time_duration.sum"
        print(f"-- {r[col.get('Kernel Name', 4)][:100]}  grid {r[col['Grid Size']] if 'Grid Size' in col else '?'}"
              f"  time {value(time_col)} {units[col[time_col]] if time_col in col else ''}")
        stalls = sorted(((value(n) or 0.0, n[len(STALL_PREFIX):-len(STALL_SUFFIX)]) for n in header
                         if n.startswith(STALL_PREFIX) and n.endswith(STALL_SUFFIX)), reverse=True)
        if stalls:
            print("   stalls (warps per issue): " + ", ".join(f"{n} {v:.2f}" for v, n in stalls if v >= 0.05))
        else:  # another ncu version's names: whatever it reports on stalls, largest first
            other = sorted(((value(n) or 0.0, n) for n in header if "stalled" in n), reverse=True)
            print("   stall metrics: " + ", ".join(f"{n} {v:.2f}" for v, n in other[:12]))
        pipes = sorted(((value(n) or 0.0, n[4:-len(PIPE_SUFFIX)]) for n in header
                        if n.startswith("sm__") and "pipe" in n and n.endswith(PIPE_SUFFIX)), reverse=True)
        print("   pipes (% of peak, active): " + ", ".join(f"{n} {v:.1f}" for v, n in pipes[:10] if v >= 1.0))
        for n in EXTRA:
            if n in col:
                print(f"   {n} {r[col[n]]}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for path in sys.argv[1:]:
        summarise(path)
