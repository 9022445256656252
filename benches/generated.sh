#!/usr/bin/env bash
# benches/generated.sh [CRATES]
#
# A benchmark that needs no network: it generates a registry of CRATES synthetic crates
# (default 300; real gzip'd tars from 5 KB to 2 MB, plus one crate with a ~27 KB index
# file), serves it with nginx as a static sparse registry (static-floor.sh), and points a
# fresh wharf at that nginx as its upstream. Then, side by side:
#   cold   every index file + crate fetched through the empty wharf vs straight from nginx
#          (curl, 8 in parallel)
#   micro  wrk (2 threads, 64 connections, 10 s) on a cached ~27 KB index file and a
#          ~100 KB crate, wharf vs nginx: req/s, p50, p99
#   load   wrk with 256 connections on a random mix of all URLs, and wharf's RSS
#
# Needs: nginx, wrk, curl, python3 (`apt-get install -y nginx wrk`).
# Knobs: BENCH_DIR (../shared/bench), PORT (18380), FLOOR_PORT (18381), DURATION (10s),
# LOAD_DURATION (20s).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
bench=${BENCH_DIR:-$top/../shared/bench}
[ -x "$bench/static-floor.sh" ] || { echo "no static-floor.sh in $bench (set BENCH_DIR)" >&2; exit 2; }
for t in nginx wrk curl python3; do
  command -v "$t" >/dev/null || { echo "$t is not installed" >&2; exit 2; }
done
n=${1:-300} port=${PORT:-18380} floor=${FLOOR_PORT:-18381}
work=$(mktemp -d /tmp/wharf-gen.XXXXXX)
chmod 755 "$work"
wharf_pid=""
cleanup() {
  [ -n "$wharf_pid" ] && kill "$wharf_pid" 2>/dev/null || true
  "$bench/static-floor.sh" stop "$work/floor" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
(cd "$top" && cargo build --release -q)

# 1. The synthetic registry: flat files named <crate> (index) and <crate>-<version>.crate.
python3 - "$work/src" "$n" <<'PY'
import gzip, hashlib, io, json, os, random, sys, tarfile
out, n = sys.argv[1], int(sys.argv[2])
os.makedirs(out)
rnd = random.Random(7)
def crate(name, vers, size):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for path, data in [("Cargo.toml", f'[package]\nname = "{name}"\nversion = "{vers}"\n'.encode()),
                           ("src/lib.rs", rnd.randbytes(size))]:
            ti = tarfile.TarInfo(f"{name}-{vers}/{path}"); ti.size = len(data); ti.mtime = 1153704088
            t.addfile(ti, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), 6)
def line(name, vers, data):
    return json.dumps({"name": name, "vers": vers, "deps": [], "features": {}, "yanked": False,
                       "cksum": hashlib.sha256(data).hexdigest()})
sizes = [5_000, 20_000, 50_000, 100_000, 100_000, 200_000]
for i in range(n):
    name = f"gen{i:05d}"
    size = 2_000_000 if i % 97 == 0 else rnd.choice(sizes)
    data = crate(name, "1.0.0", size)
    open(f"{out}/{name}-1.0.0.crate", "wb").write(data)
    open(f"{out}/{name}", "w").write(line(name, "1.0.0", data) + "\n")
# One crate with many versions: a ~27 KB index file.
lines = []
for v in range(120):
    vers = f"0.{v}.0"
    data = crate("bigindex", vers, 1000)
    open(f"{out}/bigindex-{vers}.crate", "wb").write(data)
    lines.append(line("bigindex", vers, data))
open(f"{out}/bigindex", "w").write("\n".join(lines) + "\n")
PY
"$bench/static-floor.sh" "$work/src" "$work/floor" "$floor" >&2

# 2. URL list (paths are the same on wharf and nginx except for downloads).
python3 - "$work/src" >"$work/pairs" <<'PY'
import os, sys
def prefix(n):
    return {1: "1", 2: "2", 3: f"3/{n[0]}"}.get(len(n), f"{n[:2]}/{n[2:4]}")
for f in sorted(os.listdir(sys.argv[1])):
    if f.endswith(".crate"):
        stem = f[:-6]; name, vers = stem.split("-", 1)
        print(f"/api/v1/crates/{name}/{vers}/download /crates/{name}/{f}")
    else:
        print(f"/index/{prefix(f)}/{f} /index/{prefix(f)}/{f}")
PY
cut -d' ' -f1 "$work/pairs" >"$work/wharf-urls"
cut -d' ' -f2 "$work/pairs" >"$work/nginx-urls"

RUST_LOG=warn "$top/target/release/wharf" serve --listen "127.0.0.1:$port" --data-dir "$work/data" \
  --upstream "http://127.0.0.1:$floor/index/" >"$work/wharf.log" 2>&1 &
wharf_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.05; done

fetch_all() { # BASE URLFILE
  local s e
  s=$(date +%s%N)
  sed "s|^|$1|" "$2" | xargs -P 8 -n 1 curl -sf -o /dev/null
  e=$(date +%s%N)
  awk "BEGIN {printf \"%.3f\", ($e - $s) / 1e9}"
}
count=$(wc -l <"$work/pairs")
direct=$(fetch_all "http://127.0.0.1:$floor" "$work/nginx-urls")
cold=$(fetch_all "http://127.0.0.1:$port" "$work/wharf-urls")
warm=$(fetch_all "http://127.0.0.1:$port" "$work/wharf-urls")
echo "generated registry: $count index files and crates ($(du -sh "$work/src" | cut -f1))"
echo "fetch everything, 8 parallel curl: nginx ${direct}s, wharf cold ${cold}s, wharf warm ${warm}s"
awk "BEGIN {printf \"  cold through wharf / straight from origin: %.2fx\n\", $cold / $direct}"

echo
echo "wrk micro-benchmark (cached):"
crate=$(find "$work/src" -name 'gen*.crate' -size +90k -size -110k -print -quit)
cname=$(basename "$crate" .crate); cn=${cname%%-*}; cv=${cname#*-}
DURATION=${DURATION:-10s} "$bench/micro.sh" \
  "http://127.0.0.1:$port/index/bi/gi/bigindex" "http://127.0.0.1:$floor/index/bi/gi/bigindex" \
  "http://127.0.0.1:$port/api/v1/crates/$cn/$cv/download" "http://127.0.0.1:$floor/crates/$cn/$cname.crate"

echo
echo "load: 256 connections, random mix of all $count URLs, ${LOAD_DURATION:-20s}"
for target in "wharf http://127.0.0.1:$port $work/wharf-urls" "nginx http://127.0.0.1:$floor $work/nginx-urls"; do
  set -- $target
  out=$(wrk -t2 -c256 -d"${LOAD_DURATION:-20s}" --latency -s "$here/mix.lua" "$2" -- "$3")
  printf '  %-5s %s req/s, p50 %s, p99 %s, non-2xx %s\n' "$1" \
    "$(awk '/^Requests\/sec/ {print $2}' <<<"$out")" "$(awk '$1=="50%" {print $2}' <<<"$out")" \
    "$(awk '$1=="99%" {print $2}' <<<"$out")" "$(awk '/Non-2xx/ {print $NF}' <<<"$out" | grep . || echo 0)"
done
echo "  wharf RSS after load: $(awk '/VmRSS/ {print $2, $3}' "/proc/$wharf_pid/status")"
