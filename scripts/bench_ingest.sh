#!/usr/bin/env bash
# Benchmark of `longtail ingest` (exact dedup + near-duplicate clusters) against
# `sort | uniq -c`, pandas, pyarrow and pandas + datasketch MinHashLSH, on the same
# >= 1M-line input, in one run. Prints a table; docs/benchmarks.md records one run.
#
#   scripts/bench_ingest.sh [LINES] [WORKDIR]     (defaults: 1000000, /tmp/longtail-bench-ingest)
#   SKIP_DATASKETCH=1 scripts/bench_ingest.sh     (skip the slow pure-Python near-dup row)
#
# Input: LINES command lines resampled from ../shared/data/cmdlines/*.jsonl (or $CORPUS) with
# Zipf-like frequencies, 30% of them given 1-3 small random edits so near-duplicates exist;
# written as text (one line each) and as JSONL (cmd, label, platform). Wall time and peak RSS
# come from GNU time (`/usr/bin/time -v`), with CPU seconds (user + system), which vary less
# than wall time when the machine is shared. It is a benchmark, not a test: nothing asserts.
set -euo pipefail

LINES="${1:-1000000}"
WORK="${2:-/tmp/longtail-bench-ingest}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CORPUS="${CORPUS:-$ROOT/../shared/data/cmdlines}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$WORK"

if [ ! -x /usr/bin/time ]; then
  echo "installing GNU time (Debian package 'time')" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y time >/dev/null; else sudo apt-get install -y time >/dev/null; fi
fi
python3 - <<'EOF' 2>/dev/null || { echo "installing pandas, pyarrow, datasketch" >&2; python3 -m pip install -q pandas pyarrow datasketch; }
import pandas, pyarrow, datasketch
EOF

echo "building longtail (release)" >&2
(cd "$ROOT" && cargo build --release --quiet --bin longtail)
LONGTAIL="$CARGO_TARGET_DIR/release/longtail"

TXT="$WORK/input.txt"
JSONL="$WORK/input.jsonl"
if [ ! -s "$TXT" ] || [ "$(wc -l < "$TXT")" != "$LINES" ]; then
  echo "generating $LINES lines from $CORPUS" >&2
  python3 "$HERE/bench_ingest_ref.py" gen --corpus "$CORPUS" --lines "$LINES" --out-text "$TXT" --out-jsonl "$JSONL" >&2
fi
BYTES_TXT=$(stat -c %s "$TXT")
BYTES_JSONL=$(stat -c %s "$JSONL")

RESULTS="$WORK/results.tsv"
: > "$RESULTS"

# measure NAME WHAT COMMAND...: run under GNU time, record wall seconds, peak RSS and the
# unique/cluster counts the command reports (longtail: its summary JSON; Python: stdout JSON).
measure() {
  local name="$1" what="$2"; shift 2
  local tlog="$WORK/time.log" out="$WORK/stdout.log"
  sync
  echo "running: $name" >&2
  /usr/bin/time -v "$@" > "$out" 2> "$tlog" || { cat "$tlog" >&2; echo "$name failed" >&2; exit 1; }
  local wall rss cpu
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$tlog")
  cpu=$(awk -F': ' '/User time|System time/ {s+=$2} END {print s}' "$tlog")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tlog")
  local unique="-" clusters="-"
  if [ -s "$WORK/summary.json" ]; then
    unique=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["unique"])' "$WORK/summary.json")
    clusters=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["clusters"] if d["clusters"] is not None else "-")' "$WORK/summary.json")
    rm -f "$WORK/summary.json"
  elif grep -q '"unique"' "$out"; then
    unique=$(python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(d["unique"])' "$out")
    clusters=$(python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(d["clusters"] if d["clusters"] is not None else "-")' "$out")
  elif [ "$name" = "sort | uniq -c" ]; then
    unique=$(wc -l < "$WORK/uniq.txt")
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$what" "$wall" "$cpu" "$rss" "$unique" "$clusters" >> "$RESULTS"
}

rm -f "$WORK/summary.json"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
measure "longtail ingest (text)" "exact" \
  "$LONGTAIL" -q ingest "$TXT" --no-near-dup -o "$WORK/lt_exact.parquet" --summary-json "$WORK/summary.json"
measure "longtail ingest (text)" "exact + near-dup" \
  "$LONGTAIL" -q ingest "$TXT" -o "$WORK/lt_near.parquet" --summary-json "$WORK/summary.json"
measure "longtail ingest (JSONL)" "exact + near-dup + labels" \
  "$LONGTAIL" -q ingest "$JSONL" -o "$WORK/lt_jsonl.parquet" --summary-json "$WORK/summary.json"
measure "longtail ingest (text, 1 thread)" "exact + near-dup" \
  "$LONGTAIL" -q ingest "$TXT" --threads 1 -o "$WORK/lt_near1.parquet" --summary-json "$WORK/summary.json"
measure "sort | uniq -c" "exact (LC_ALL=C)" \
  bash -c "LC_ALL=C sort '$TXT' | LC_ALL=C uniq -c > '$WORK/uniq.txt'"
measure "pandas" "exact (value_counts)" \
  python3 "$HERE/bench_ingest_ref.py" pandas "$TXT" "$WORK/pd.parquet"
measure "pyarrow" "exact (group_by)" \
  python3 "$HERE/bench_ingest_ref.py" pyarrow "$TXT" "$WORK/pa.parquet"
if [ -z "${SKIP_DATASKETCH:-}" ]; then
  measure "pandas + datasketch" "exact + near-dup (MinHashLSH)" \
    python3 "$HERE/bench_ingest_ref.py" minhash "$TXT" "$WORK/ds.parquet"
fi

echo
echo "load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ingest benchmark: $LINES lines ($((BYTES_TXT / 1000000)) MB text, $((BYTES_JSONL / 1000000)) MB JSONL), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo
printf '| %-34s | %-30s | %8s | %8s | %12s | %13s | %9s | %9s |\n' "tool" "work" "wall s" "CPU s" "lines/s" "peak RSS MiB" "unique" "clusters"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..36})" "$(printf -- '-%.0s' {1..32})" "---------:" "---------:" "-------------:" "--------------:" "----------:" "----------:"
while IFS=$'\t' read -r name what wall cpu rss unique clusters; do
  rate=$(awk -v n="$LINES" -v w="$wall" 'BEGIN { if (w > 0) printf "%d", n / w; else print "-" }')
  mib=$(awk -v k="$rss" 'BEGIN { printf "%.0f", k / 1024 }')
  printf '| %-34s | %-30s | %8.2f | %8.2f | %12s | %13s | %9s | %9s |\n' "$name" "$what" "$wall" "$cpu" "$rate" "$mib" "$unique" "$clusters"
done < "$RESULTS"
