#!/usr/bin/env bash
# ab_bench.sh -- old build against new build, interleaved, in one GPU call.
#
#   tools/ab_bench.sh BASE_DIR [bench_attention.py flags...]
#
# BASE_DIR is another source tree of the project (e.g. `git archive <commit> | tar -x -C DIR`,
# carried to the device). Both trees are built in place; the benchmark then runs four times,
# new, base, base, new, with the same flags (default: the fa suite, both families, bf16), each
# run in its own process (both builds are the module flashattn_c). The table printed at the end
# is the speed of new over base (base median time / new median time) per config and repetition
# pair, with the geomean per impl. CSVs and logs stay in $AB_DIR (default /tmp/flashattn_c_ab);
# the table is printed and written to $OUT/ab_table.md.
set -uo pipefail
cd "$(dirname "$0")/.."
new_dir=$PWD
base_dir=$(cd "${1:?usage: tools/ab_bench.sh BASE_DIR [bench flags]}" && pwd)
shift
flags=("$@")
[ ${#flags[@]} -gt 0 ] || flags=(--suite fa --impl sm90,sm80 --baselines none --dtype bf16 --repeats 10
                                 --warmup 3 --max-seconds-per-config 0.5)
OUT=${OUT:-/tmp/flashattn_c_out}
ab=${AB_DIR:-/tmp/flashattn_c_ab}
mkdir -p "$ab" "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

for tree in "$new_dir" "$base_dir"; do
    (cd "$tree" && $PY setup.py build_ext --inplace --build-temp build/obj >"$ab/build_$(basename "$tree").log" 2>&1) \
        || { echo "build failed in $tree"; tail -20 "$ab/build_$(basename "$tree").log"; exit 1; }
done

run() {  # run TAG TREE
    (cd "$2" && $PY benches/bench_attention.py "${flags[@]}" --save-csv --output-dir "$ab/$1" \
        --git-commit "$1" >"$ab/$1.log" 2>&1) || { echo "bench $1 failed"; tail -20 "$ab/$1.log"; exit 1; }
    echo "== $1 done"
}
run new1 "$new_dir" && run base1 "$base_dir" && run base2 "$base_dir" && run new2 "$new_dir" || exit 1

$PY - "$ab" <<'PY' | tee "$OUT/ab_table.md"
import csv, glob, math, os, sys
ab = sys.argv[1]
def load(tag):
    rows = {}
    for path in glob.glob(os.path.join(ab, tag, "*.csv")):
        for r in csv.DictReader(open(path)):
            if r["status"] != "ok" or not r["impl"].startswith("ours"):
                continue
            # The mask columns too: the masks suite runs several variants at one shape.
            mask = "".join("%s=%s " % (c, r[c]) for c in ("window_left", "window_right", "softcap", "sinks")
                           if r.get(c) not in (None, "", "0", "-1"))
            key = (r["impl"], r["dtype"], r["D"], r["causal"], r["B"], r["Hq"], r["Sq"], r["Sk"], mask.strip())
            rows[key] = (float(r["median_ms"]), float(r["tflops"]))
    return rows
runs = {t: load(t) for t in ("new1", "base1", "base2", "new2")}
keys = sorted(set(runs["new1"]) & set(runs["base1"]) & set(runs["base2"]) & set(runs["new2"]),
              key=lambda k: (k[0], k[1], int(k[2]), k[3], int(k[6])))
print("| impl | dtype | D | causal | Sq | Sk | mask | base TFLOP/s | new TFLOP/s | new/base rep1 | rep2 |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
geo = {}
for k in keys:
    r1 = runs["base1"][k][0] / runs["new1"][k][0]
    r2 = runs["base2"][k][0] / runs["new2"][k][0]
    geo.setdefault(k[0], []).extend([r1, r2])
    print("| %s | %s | %s | %s | %s | %s | %s | %.0f | %.0f | %.3f | %.3f |" % (
        k[0], k[1], k[2], k[3], k[6], k[7], k[8], runs["base1"][k][1], runs["new1"][k][1], r1, r2))
for impl, rs in sorted(geo.items()):
    print("%s: geomean new/base %.4f, min %.3f over %d ratios" % (
        impl, math.exp(sum(map(math.log, rs)) / len(rs)), min(rs), len(rs)))
PY
