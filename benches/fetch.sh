#!/usr/bin/env bash
# benches/fetch.sh [RUNS]
#
# Side-by-side `cargo fetch --locked` timings of a pinned workload, in one session:
#   direct   cargo against the public registry, no proxy
#   cold     through a fresh wharf (empty cache: everything fetched once upstream)
#   warm     through the same wharf again (everything cached), fresh client each time
#   floor    the same files served by a static nginx (the best a proxy could do)
# then wrk micro-benchmarks of one cached index file and one cached .crate on wharf and
# on nginx. Prints every run and the medians.
#
# Needs: network access to the public registry (direct and cold runs), and for the
# floor and micro parts nginx and wrk (`apt-get install -y nginx wrk`).
# Knobs: TLS=1 serves wharf over HTTPS with ALPN h2 (a throwaway private CA made with
# openssl; cargo gets it through CARGO_HTTP_CAINFO), WORKLOAD (small), BENCH_DIR (the shared bench scripts, default ../shared/bench
# next to this checkout), PORT (18180), FLOOR_PORT (18181), DURATION (wrk, 10s).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
bench=${BENCH_DIR:-$top/../shared/bench}
[ -x "$bench/fetch-bench.sh" ] || { echo "no fetch-bench.sh in $bench (set BENCH_DIR)" >&2; exit 2; }
bench=$(cd "$bench" && pwd)
workload=${WORKLOAD:-small} runs=${1:-5}
port=${PORT:-18180} floor_port=${FLOOR_PORT:-18181}
work=$(mktemp -d /tmp/wharf-bench.XXXXXX)
chmod 755 "$work"   # nginx workers run as nobody and must reach the floor's files
wharf_pid=""
cleanup() {
  [ -n "$wharf_pid" ] && kill "$wharf_pid" 2>/dev/null || true
  [ -f "$work/floor/nginx.pid" ] && "$bench/static-floor.sh" stop "$work/floor" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

(cd "$top" && cargo build --release -q)
wharf=$top/target/release/wharf

scheme=http
: >"$work/wharf.toml"
proxy_env=()
if [ -n "${TLS:-}" ]; then
  (cd "$work" &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj "/CN=wharf bench CA" -keyout ca.key -out ca.pem 2>/dev/null &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=127.0.0.1" -keyout key.pem -out leaf.csr 2>/dev/null &&
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >leaf.ext &&
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile leaf.ext -out cert.pem 2>/dev/null)
  printf '[server]\ntls_cert = "%s"\ntls_key = "%s"\n' "$work/cert.pem" "$work/key.pem" >"$work/wharf.toml"
  scheme=https
  proxy_env=(env CARGO_HTTP_CAINFO="$work/ca.pem")
fi

start_wharf() { # DATA_DIR
  RUST_LOG=warn "$wharf" serve --config "$work/wharf.toml" --listen "127.0.0.1:$port" --data-dir "$1" >"$work/wharf.log" 2>&1 &
  wharf_pid=$!
  for _ in $(seq 100); do curl -skf "$scheme://127.0.0.1:$port/health" >/dev/null && return; sleep 0.05; done
  echo "wharf did not start" >&2; cat "$work/wharf.log" >&2; exit 1
}
stop_wharf() { kill "$wharf_pid"; wait "$wharf_pid" 2>/dev/null || true; wharf_pid=""; }
wall() { sed -n 's/.*wall_s=\([0-9.]*\).*/\1/p'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
proxy_url="sparse+$scheme://127.0.0.1:$port/index/"

: >"$work/direct" ; : >"$work/cold" ; : >"$work/warm"; : >"$work/floor.t"
for i in $(seq "$runs"); do
  "$bench/fetch-bench.sh" "$workload" direct | tee -a "$work/runs.log" | wall >>"$work/direct"
  rm -rf "$work/data"; start_wharf "$work/data"
  "${proxy_env[@]}" "$bench/fetch-bench.sh" "$workload" proxy "$proxy_url" | tee -a "$work/runs.log" | wall >>"$work/cold"
  "${proxy_env[@]}" "$bench/fetch-bench.sh" "$workload" proxy "$proxy_url" | tee -a "$work/runs.log" | wall >>"$work/warm"
  stop_wharf
done

# The floor: wharf's cache laid out as a static registry (index records lose wharf's
# two-line header; crates keep their bytes) and served by nginx.
have_floor=0
if command -v nginx >/dev/null && command -v wrk >/dev/null; then
  mkdir -p "$work/plain"
  find "$work/data/index-v1" -type f ! -name '.*' | while read -r f; do
    tail -n +3 "$f" >"$work/plain/$(basename "$f")"
  done
  find "$work/data/crates-v1" -type f -name '*.crate' -exec cp {} "$work/plain/" \;
  "$bench/static-floor.sh" "$work/plain" "$work/floor" "$floor_port" >&2
  for i in $(seq "$runs"); do
    "$bench/fetch-bench.sh" "$workload" proxy "sparse+http://127.0.0.1:$floor_port/index/" \
      | tee -a "$work/runs.log" | wall >>"$work/floor.t"
  done
  have_floor=1
fi

echo "every run:"
cat "$work/runs.log"
echo
echo "cargo fetch --locked, workload=$workload, wharf over $scheme, $runs runs each, median seconds:"
printf '  %-7s %s   (runs: %s)\n' direct "$(median <"$work/direct")" "$(tr '\n' ' ' <"$work/direct")"
printf '  %-7s %s   (runs: %s)\n' cold "$(median <"$work/cold")" "$(tr '\n' ' ' <"$work/cold")"
printf '  %-7s %s   (runs: %s)\n' warm "$(median <"$work/warm")" "$(tr '\n' ' ' <"$work/warm")"
[ "$have_floor" = 1 ] &&
  printf '  %-7s %s   (runs: %s)\n' floor "$(median <"$work/floor.t")" "$(tr '\n' ' ' <"$work/floor.t")"

# micro.sh takes plain-http loopback URLs only: the wrk comparison runs without TLS=1.
if [ "$have_floor" = 1 ] && [ "$scheme" = http ]; then
  # A ~27 KB index file and the .crate closest to 100 KB, cached in both servers.
  idx=$(find "$work/data/index-v1" -type f ! -name '.*' -printf '%s %P\n' |
        awk '{d=$1-27000; if (d<0) d=-d; print d, $2}' | sort -n | head -1 | cut -d' ' -f2)
  crate=$(find "$work/data/crates-v1" -type f -name '*.crate' -printf '%s %f\n' |
          awk '{d=$1-100000; if (d<0) d=-d; print d, $2}' | sort -n | head -1 | cut -d' ' -f2)
  stem=${crate%.crate} head=${stem%%.*} name=${head%-*} vers=${stem#"$name"-}
  start_wharf "$work/data"
  curl -sk -o /dev/null "$scheme://127.0.0.1:$port/index/$idx"
  curl -sk -o /dev/null "$scheme://127.0.0.1:$port/api/v1/crates/$name/$vers/download"
  echo
  echo "wrk micro-benchmark (cached):"
  "$bench/micro.sh" \
    "http://127.0.0.1:$port/index/$idx" "http://127.0.0.1:$floor_port/index/$idx" \
    "http://127.0.0.1:$port/api/v1/crates/$name/$vers/download" \
    "http://127.0.0.1:$floor_port/crates/$name/$crate"
  echo "wharf RSS after load: $(awk '/VmRSS/ {print $2, $3}' "/proc/$wharf_pid/status")"
  stop_wharf
fi
