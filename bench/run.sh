#!/usr/bin/env bash
# The benchmark driver (issue 7). On this machine, in one run: generate synthetic HLS and
# TS content, start a local origin (nginx when installed, else `m3u-load origin`), start
# the proxy, then run every workload against the origin directly and through the proxy in
# alternation for a few rounds, and print a table of medians and proxy/direct ratios.
#
#   bench/run.sh            full run: release build, then ~14 minutes
#   bench/run.sh --smoke    CI: debug build, tiny N, a few seconds per workload; exits
#                           non-zero if any request failed
#
# Knobs (environment): ROUNDS, DURATION (s per flat-out run), HLS_DURATION, HLS_RAMP,
# HLS_VIEWERS ("100 1000 5000"), DIRECT_VIEWERS, FILE_VIEWERS, LIVE_VIEWERS, LIVE_BITRATE,
# LATENCY_REQUESTS, RANGE_REQUESTS, ORIGIN (auto | nginx |
# builtin), TARGETS ("direct proxy"; "direct" alone needs no proxy; "memory", "sqlite" and
# "redis" are each a proxy with that store, so TARGETS="memory redis" compares two stores
# in one run; the table compares the first target with the last), STORE (the store of
# the "proxy" target; the binary's default when unset), WORKLOADS (a subset
# of "latency playlist segment direct file live range hls"), BENCH_OUT (where the JSON
# reports and the table are kept; default target/bench), SETTLE (seconds to wait after the
# last workload before the settled RSS; default 35, past the 30 s segment cache TTL),
# PREBUILT (set: use the release binaries already in the target directory, no build).
#
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
SMOKE=0
case "${1:-}" in
    --smoke) SMOKE=1 ;;
    "") ;;
    *) echo "usage: bench/run.sh [--smoke]" >&2; exit 2 ;;
esac

if [[ $SMOKE == 1 ]]; then
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-2} HLS_DURATION=${HLS_DURATION:-5}
    HLS_RAMP=${HLS_RAMP:-1} HLS_VIEWERS=${HLS_VIEWERS:-20} DIRECT_VIEWERS=${DIRECT_VIEWERS:-4}
    LATENCY_REQUESTS=${LATENCY_REQUESTS:-200} RANGE_REQUESTS=${RANGE_REQUESTS:-500}
    LIVE_VIEWERS=${LIVE_VIEWERS:-4} FILE_VIEWERS=${FILE_VIEWERS:-4} SETTLE=${SETTLE:-2}
    GEN_ARGS=(--segments 10 --file-mb 8)
    # Shares the CI test build instead of compiling a release.
    cargo build --bin m3u-proxy --example m3u-load
    PROFILE=debug
else
    ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-15} HLS_DURATION=${HLS_DURATION:-20}
    HLS_RAMP=${HLS_RAMP:-5} HLS_VIEWERS=${HLS_VIEWERS:-"100 1000 5000"}
    DIRECT_VIEWERS=${DIRECT_VIEWERS:-50} LATENCY_REQUESTS=${LATENCY_REQUESTS:-2000}
    RANGE_REQUESTS=${RANGE_REQUESTS:-20000} LIVE_VIEWERS=${LIVE_VIEWERS:-50}
    FILE_VIEWERS=${FILE_VIEWERS:-100} SETTLE=${SETTLE:-35}
    GEN_ARGS=(--segments 150 --file-mb 64)
    [[ -n ${PREBUILT:-} ]] || cargo build --release --bin m3u-proxy --example m3u-load
    PROFILE=release
fi
TARGETS=${TARGETS:-"direct proxy"}
WORKLOADS=${WORKLOADS:-"latency playlist segment direct file live range hls"}
LIVE_BITRATE=${LIVE_BITRATE:-4000000}
ORIGIN=${ORIGIN:-auto}
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE
LOAD=$BIN/examples/m3u-load
OUT=${BENCH_OUT:-${CARGO_TARGET_DIR:-target}/bench}
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$OUT/results-$STAMP.jsonl
: >"$RESULTS"

WORK=$(mktemp -d /tmp/m3u-bench.XXXXXX)
# nginx workers run as nobody when started by root: they must be able to read the content.
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 5,000 viewers through the proxy take 5,000 sockets in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

wait_http() {
    local url=$1 i
    for i in $(seq 100); do
        if curl -sf -o /dev/null "$url"; then return 0; fi
        sleep 0.1
    done
    echo "bench: $url did not come up" >&2
    return 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# A string field of a flat JSON object, without requiring jq.
json_field() { sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" <<<"$2"; }

echo "== machine"
echo "cpus: $(nproc) x $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "kernel: $(uname -r); load average at start: $LOAD_START"

echo "== content"
"$LOAD" gen --dir "$WORK/media" "${GEN_ARGS[@]}"

OPORT=$("$LOAD" free-port)
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
if [[ $ORIGIN != builtin && -x $NGINX ]]; then
    mkdir -p "$WORK/nginx"
    sed -e "s|@PREFIX@|$WORK/nginx|g" -e "s|@ROOT@|$WORK/media|g" -e "s|@PORT@|$OPORT|g" \
        bench/nginx.conf.tmpl >"$WORK/nginx/nginx.conf"
    "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
    PIDS+=($!)
    ORIGIN_NAME=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
    echo "origin: $ORIGIN_NAME on 127.0.0.1:$OPORT"
elif [[ $ORIGIN == nginx ]]; then
    echo "bench: ORIGIN=nginx but $NGINX is not installed" >&2
    exit 1
else
    "$LOAD" origin --dir "$WORK/media" --port "$OPORT" &
    PIDS+=($!)
    ORIGIN_NAME="built-in (m3u-load origin)"
    echo "origin: $ORIGIN_NAME on 127.0.0.1:$OPORT"
fi
ORIGIN_URL=http://127.0.0.1:$OPORT
wait_http "$ORIGIN_URL/small.ts"
# The processes that do the origin's work: nginx's workers, or the built-in server.
ORIGIN_PIDS=("${PIDS[0]}")
if [[ $ORIGIN_NAME == nginx* ]]; then
    mapfile -t ORIGIN_PIDS < <(pgrep -P "${PIDS[0]}")
fi
# nginx cannot make an endless live TS; the built-in origin's /live.ts does, for the
# live-viewers workload, whichever origin serves the files.
LPORT=$("$LOAD" free-port)
"$LOAD" origin --dir "$WORK/media" --port "$LPORT" 2>/dev/null &
PIDS+=($!)
LIVE_ORIGIN_PIDS=($!)
LIVE_URL="http://127.0.0.1:$LPORT/live.ts?bitrate=$LIVE_BITRATE"
wait_http "http://127.0.0.1:$LPORT/small.ts"

# Per target: the URLs each workload requests.
declare -A MASTER MEDIA SEGMENT SMALL BIG LIVE
MASTER[direct]=$ORIGIN_URL/hls/live.m3u8
MEDIA[direct]=$ORIGIN_URL/hls/v0/live.m3u8
SEGMENT[direct]=$ORIGIN_URL/hls/v0/seg00000.ts
SMALL[direct]=$ORIGIN_URL/small.ts
BIG[direct]=$ORIGIN_URL/big.ts
LIVE[direct]=$LIVE_URL

# Every target but "direct" is a proxy of its own: "proxy" with $STORE (or the binary's
# default store), "memory", "sqlite" or "redis" with that store.
declare -A PROXY_PID PROXY_URL PROXY_STORE IDLE_RSS
PROXIES=()
for t in $TARGETS; do
    case $t in
        direct) ;;
        proxy) PROXIES+=("$t"); PROXY_STORE[$t]=${STORE:-} ;;
        memory | sqlite | redis) PROXIES+=("$t"); PROXY_STORE[$t]=$t ;;
        *) echo "bench: unknown target $t (direct, proxy, memory, sqlite, redis)" >&2; exit 2 ;;
    esac
done
REDIS_PID=""
for t in "${PROXIES[@]}"; do
    [[ ${PROXY_STORE[$t]} == redis && -z $REDIS_PID ]] || continue
    # A Redis of the run's own on a free port, nothing saved: the fleet store's cost on one
    # machine, with the network a loopback hop.
    RPORT=$("$LOAD" free-port)
    redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no \
        --protected-mode no --loglevel warning >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    REDIS_BENCH_URL=redis://127.0.0.1:$RPORT/0
    for i in $(seq 101); do
        redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break
        if ((i == 101)); then
            echo "bench: redis-server did not come up" >&2
            cat "$WORK/redis.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "redis: $(redis-server --version | cut -d' ' -f3) on 127.0.0.1:$RPORT (pid $REDIS_PID)"
done

# POST /streams to proxy $1 for URL $2 and return the absolute URL in field $3.
create_stream() {
    local base=${PROXY_URL[$1]} answer path
    answer=$(curl -sf -X POST -H 'Content-Type: application/json' \
        -d "{\"url\": \"$2\"}" "$base/streams") || {
        echo "bench: POST /streams for $2 failed" >&2
        return 1
    }
    path=$(json_field "$3" "$answer")
    [[ -n $path ]] || { echo "bench: no $3 in $answer" >&2; return 1; }
    [[ $path == http* ]] && echo "$path" || echo "$base$path"
}

for t in "${PROXIES[@]}"; do
    PPORT=$("$LOAD" free-port)
    PROXY_URL[$t]=http://127.0.0.1:$PPORT
    store_env=()
    case ${PROXY_STORE[$t]} in
        "") ;;
        redis) store_env=(M3U_PROXY_STORE=redis REDIS_URL="$REDIS_BENCH_URL") ;;
        *) store_env=(M3U_PROXY_STORE="${PROXY_STORE[$t]}") ;;
    esac
    env "${store_env[@]}" M3U_PROXY_DATA_DIR="$WORK/data-$t" LOG_LEVEL="${LOG_LEVEL:-warn}" \
        "$BIN/m3u-proxy" --host 127.0.0.1 --port "$PPORT" >"$WORK/proxy-$t.log" 2>&1 &
    PROXY_PID[$t]=$!
    PIDS+=("${PROXY_PID[$t]}")
    if ! wait_http "${PROXY_URL[$t]}/health"; then
        cat "$WORK/proxy-$t.log" >&2
        exit 1
    fi
    echo "$t: $BIN/m3u-proxy (pid ${PROXY_PID[$t]}, store ${PROXY_STORE[$t]:-default}) on ${PROXY_URL[$t]}"
    MASTER[$t]=$(create_stream "$t" "${MASTER[direct]}" playlist_url)
    MEDIA[$t]=$(create_stream "$t" "${MEDIA[direct]}" playlist_url)
    SEGMENT[$t]=$("$LOAD" probe --url "${MEDIA[$t]}")
    SMALL[$t]=$("$LOAD" probe --url "$(create_stream "$t" "$ORIGIN_URL/small.m3u8" playlist_url)")
    BIG[$t]=$(create_stream "$t" "${BIG[direct]}" direct_url)
    LIVE[$t]=$(create_stream "$t" "${LIVE[direct]}" direct_url)
done
if ((${#PROXIES[@]} > 0)); then
    sleep 1
    for t in "${PROXIES[@]}"; do
        IDLE_RSS[$t]=$(rss_kb "${PROXY_PID[$t]}")
        echo "$t RSS idle: $((${IDLE_RSS[$t]} / 1024)) MB"
    done
fi

FAILED=0
# run LABEL ROUND -- m3u-load arguments with @URL@ standing for the target's URL variable
# named by the first argument after the subcommand.
run_one() {
    local label=$1 round=$2 target=$3 sub=$4 var=$5
    shift 5
    local -n urls=$var
    local extra=() pid
    [[ $target != direct ]] && extra=(--pid "${PROXY_PID[$target]}")
    if [[ $var == LIVE ]]; then
        for pid in "${LIVE_ORIGIN_PIDS[@]}"; do extra+=(--origin-pid "$pid"); done
    else
        for pid in "${ORIGIN_PIDS[@]}"; do extra+=(--origin-pid "$pid"); done
    fi
    echo "  $label, $target, round $round" >&2
    if ! "$LOAD" "$sub" --url "${urls[$target]}" "$@" --json --label "$label" \
        --target "$target" --round "$round" "${extra[@]}" >>"$RESULTS"; then
        FAILED=1
    fi
    sleep 1
}

# Alternate direct and proxy, flipping the order every round so drift (thermal, other
# jobs on the machine) does not favour one side. KEY selects it in $WORKLOADS.
workload() {
    local key=$1 label=$2 round targets t
    shift 2
    [[ " $WORKLOADS " == *" $key "* ]] || return 0
    echo "== $label"
    for round in $(seq "$ROUNDS"); do
        targets=$TARGETS
        if ((round % 2 == 0)); then targets=$(tr ' ' '\n' <<<"$TARGETS" | tac | xargs); fi
        for t in $targets; do
            run_one "$label" "$round" "$t" "$@"
        done
    done
}

workload latency "latency, small segment, concurrency 1" latency SMALL --requests "$LATENCY_REQUESTS"
workload playlist "playlist, 64 connections" get MEDIA --concurrency 64 --duration "$DURATION"
workload segment "segment, 64 connections" get SEGMENT --concurrency 64 --duration "$DURATION"
workload direct "direct, $DIRECT_VIEWERS flat out" direct BIG --viewers "$DIRECT_VIEWERS" \
    --duration "$DURATION"
workload file "direct file, $FILE_VIEWERS viewers at $((LIVE_BITRATE / 1000)) kbit/s" direct BIG \
    --viewers "$FILE_VIEWERS" --duration "$DURATION" --bitrate "$LIVE_BITRATE"
workload live "live TS, $LIVE_VIEWERS viewers at $((LIVE_BITRATE / 1000)) kbit/s" direct LIVE \
    --viewers "$LIVE_VIEWERS" --duration "$DURATION" --bitrate "$LIVE_BITRATE"
workload range "range, 16 connections" range BIG --concurrency 16 --requests "$RANGE_REQUESTS"
for n in $HLS_VIEWERS; do
    workload hls "HLS, $n real-time viewers" hls MASTER --viewers "$n" --duration "$HLS_DURATION" \
        --ramp "$HLS_RAMP"
done

# The table compares the first target with the last (direct with proxy by default).
read -ra TARGET_LIST <<<"$TARGETS"
BASELINE=${TARGET_LIST[0]}
SUBJECT=${TARGET_LIST[${#TARGET_LIST[@]} - 1]}
# The segment cache's bytes, as proxy $1 reports them, beside each RSS figure.
cache_mb() {
    curl -sf "${PROXY_URL[$1]}/metrics" | awk '/^m3u_proxy_cache_bytes / {printf "%.1f", $2 / 1048576}'
}
declare -A FINAL_RSS FINAL_CACHE SETTLED_RSS SETTLED_CACHE
if ((${#PROXIES[@]} > 0)); then
    for t in "${PROXIES[@]}"; do
        FINAL_RSS[$t]=$(rss_kb "${PROXY_PID[$t]}")
        FINAL_CACHE[$t]=$(cache_mb "$t")
    done
    sleep "$SETTLE"
    for t in "${PROXIES[@]}"; do
        SETTLED_RSS[$t]=$(rss_kb "${PROXY_PID[$t]}")
        SETTLED_CACHE[$t]=$(cache_mb "$t")
    done
fi
TABLE_RSS=()
if [[ $SUBJECT != direct && -n ${IDLE_RSS[$SUBJECT]:-} ]]; then
    TABLE_RSS=(--idle-rss-kb "${IDLE_RSS[$SUBJECT]}" --final-rss-kb "${FINAL_RSS[$SUBJECT]}")
fi
TABLE=$OUT/results-$STAMP.md
{
    echo "Command: bench/run.sh${1:+ $1} (TARGETS=\"$TARGETS\"${STORE:+ STORE=$STORE} ROUNDS=$ROUNDS DURATION=$DURATION HLS_DURATION=$HLS_DURATION HLS_RAMP=$HLS_RAMP)"
    echo "Machine: $(nproc) x $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
    echo "Proxy: $(git rev-parse --short HEAD 2>/dev/null || echo unknown) ($PROFILE); origin: $ORIGIN_NAME"
    echo "Load average (1, 5, 15 min) at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    "$LOAD" table --input "$RESULTS" --baseline "$BASELINE" --subject "$SUBJECT" "${TABLE_RSS[@]}"
    for t in "${PROXIES[@]}"; do
        echo
        echo "RSS of $t (store ${PROXY_STORE[$t]:-default}): idle $((${IDLE_RSS[$t]} / 1024)) MB; right after the last workload $((${FINAL_RSS[$t]} / 1024)) MB with ${FINAL_CACHE[$t]} MB in the segment cache; ${SETTLE} s later $((${SETTLED_RSS[$t]} / 1024)) MB with ${SETTLED_CACHE[$t]} MB in the cache."
    done
    if [[ -n $REDIS_PID ]]; then
        # utime + stime, in clock ticks, fields 14 and 15 of /proc/PID/stat.
        ticks=$(awk '{print $14 + $15}' "/proc/$REDIS_PID/stat")
        echo
        echo "redis-server CPU over the whole run: $(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz}') s."
    fi
} >"$TABLE"
echo
cat "$TABLE"
echo
echo "reports: $RESULTS"
echo "table:   $TABLE"
if [[ $FAILED == 1 ]]; then
    echo "bench: some requests failed (see the table's failed-requests rows)" >&2
    [[ $SMOKE == 1 ]] && exit 1
fi
exit 0
