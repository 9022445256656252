#!/usr/bin/env bash
# benches/load.sh [DURATION] [CONNS]
#
# Load test on loopback: wrk with 256 connections for 60 s against a warm wharf ("B"),
# on a random mix of cached index files and crates, plus a trickle of misses and index
# revalidations that B sends to its upstream. B's upstream is another wharf ("A") on
# loopback holding the pinned `small` workload, so the load never leaves the machine
# (only A's one-time setup prefetch reads the public registry).
# Prints wrk's summary (req/s, latency percentiles, errors) and B's RSS every 5 s.
#
# Needs: wrk (`apt-get install -y wrk`), network for the setup prefetch.
# Knobs: BENCH_DIR (../shared/bench), PORT_A (18280), PORT_B (18281).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
bench=${BENCH_DIR:-$top/../shared/bench}
lock=$bench/workloads/small/Cargo.lock
[ -f "$lock" ] || { echo "no workload lockfile at $lock (set BENCH_DIR)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk not installed (apt-get install -y wrk)" >&2; exit 2; }
duration=${1:-60s} conns=${2:-256}
pa=${PORT_A:-18280} pb=${PORT_B:-18281}
work=$(mktemp -d /tmp/wharf-load.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

(cd "$top" && cargo build --release -q)
wharf=$top/target/release/wharf
wait_up() { for _ in $(seq 100); do curl -sf "$1/health" >/dev/null && return; sleep 0.05; done; echo "no $1" >&2; exit 1; }

RUST_LOG=warn "$wharf" serve --listen "127.0.0.1:$pa" --data-dir "$work/a" >"$work/a.log" 2>&1 &
pids+=($!)
wait_up "http://127.0.0.1:$pa"
"$wharf" prefetch "$lock" --server "http://127.0.0.1:$pa" 2>&1 | tail -1

# B revalidates index files every second against A, so upstream traffic runs throughout.
cat >"$work/b.toml" <<TOML
[cache]
index_ttl = "1s"
index_stale_while_revalidate = "1s"
TOML
RUST_LOG=warn "$wharf" serve --config "$work/b.toml" --listen "127.0.0.1:$pb" \
  --data-dir "$work/b" --upstream "http://127.0.0.1:$pa/index/" >"$work/b.log" 2>&1 &
bpid=$!
pids+=($bpid)
wait_up "http://127.0.0.1:$pb"

# URL list: every crate of the workload; B is warmed with all but the last 10 (the misses).
awk '/^name = / {gsub(/"/,"",$3); n=$3} /^version = / {gsub(/"/,"",$3); v=$3}
     /^checksum = / {print n, v}' "$lock" >"$work/crates"
total=$(wc -l <"$work/crates")
: >"$work/urls"
i=0
while read -r n v; do
  l=${n,,}
  case ${#l} in 1) p=1/$l ;; 2) p=2/$l ;; 3) p=3/${l:0:1}/$l ;; *) p=${l:0:2}/${l:2:2}/$l ;; esac
  echo "/index/$p" >>"$work/urls"
  echo "/api/v1/crates/$n/$v/download" >>"$work/urls"
  i=$((i + 1))
  if [ "$i" -le $((total - 10)) ]; then
    curl -sf -o /dev/null "http://127.0.0.1:$pb/index/$p"
    curl -sf -o /dev/null "http://127.0.0.1:$pb/api/v1/crates/$n/$v/download"
  fi
done <"$work/crates"
echo "load: $(wc -l <"$work/urls") URLs, $((total - 10)) crates warm, 10 cold; $conns connections for $duration"


rss() { awk '/VmRSS/ {print $2}' "/proc/$bpid/status"; }
echo "B RSS before: $(rss) kB"
( while kill -0 "$bpid" 2>/dev/null; do sleep 5; echo "B RSS: $(rss) kB"; done ) &
sampler=$!
wrk -t2 -c"$conns" -d"$duration" --latency -s "$here/mix.lua" "http://127.0.0.1:$pb" -- "$work/urls"
kill "$sampler" 2>/dev/null || true
echo "B RSS after: $(rss) kB"
curl -s "http://127.0.0.1:$pb/metrics" | grep -E '^wharf_(requests_total|cache_events_total|upstream_requests_total)' | sort
