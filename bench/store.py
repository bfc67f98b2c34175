#!/usr/bin/env python3
"""What the state store costs (issues 12 and 14): POST /streams latency with the sqlite
and redis stores against memory, 10,000 streams registered through the API, and the
start-up time with 100,000 stored streams (sqlite).

    python3 bench/store.py [--bin target/release/m3u-proxy] [--streams 10000]
                           [--stored 100000] [--rounds 3] [--stores memory,sqlite,redis]

Everything listens on 127.0.0.1; the streams point at a closed local port and have an
.m3u8 extension, so registering one never probes an origin. Each round runs the stores
back to back (the order reverses every round) and the medians over the rounds are
printed as a Markdown table. `redis` starts a redis-server of its own on a free port
(nothing saved), with a fresh key prefix for every round; `--stored 0` skips the
start-up with stored streams. Temporary data directories are removed at the end.
"""

import argparse
import hashlib
import hmac
import http.client
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, store, data_dir, redis_env=None):
    port = free_port()
    env = dict(os.environ)
    env.update(
        M3U_PROXY_HOST="127.0.0.1",
        M3U_PROXY_PORT=str(port),
        M3U_PROXY_STORE=store,
        M3U_PROXY_DATA_DIR=data_dir,
        LOG_LEVEL="warn",
    )
    env.update(redis_env or {})
    began = time.monotonic()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL)
    while True:
        if proc.poll() is not None:
            sys.exit(f"m3u-proxy exited: {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port, time.monotonic() - began
        except OSError:
            pass
        time.sleep(0.005)


def start_redis():
    """A redis-server on a free loopback port, nothing saved; (process, url)."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not come up")


def stop(proc):
    proc.terminate()
    proc.wait(timeout=20)


def body(i, prefix):
    return json.dumps(
        {
            "url": f"http://127.0.0.1:9/{prefix}/{i}/index.m3u8",
            "failover_urls": [f"http://127.0.0.1:9/{prefix}/{i}/backup.m3u8"],
            "headers": {"Authorization": f"Bearer token-{i}"},
            "metadata": {"channel": i},
        }
    )


def post_sequential(port, n, prefix):
    """n POSTs one after the other on one keep-alive connection; latencies in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    headers = {"Content-Type": "application/json"}
    for i in range(n):
        began = time.perf_counter()
        conn.request("POST", "/streams", body(i, prefix), headers)
        res = conn.getresponse()
        res.read()
        latencies.append((time.perf_counter() - began) * 1000)
        assert res.status == 201, res.status
    return latencies


def post_concurrent(port, n, prefix, workers=16):
    """n POSTs over `workers` connections; the wall time in seconds."""
    counter = iter(range(n))
    lock = threading.Lock()

    def work():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            conn.request("POST", "/streams", body(i, prefix), {"Content-Type": "application/json"})
            res = conn.getresponse()
            res.read()
            assert res.status == 201, res.status

    began = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - began


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def fill_database(binary, data_dir, count):
    """A database of `count` streams as the proxy writes them: start the proxy once so it
    creates the schema and the secret, then insert the documents with the ids the secret
    derives (HMAC-SHA256 of the URL, 96 bits)."""
    proc, _, _ = start(binary, "sqlite", data_dir)
    stop(proc)
    secret = open(os.path.join(data_dir, "secret"), "rb").read().strip()
    db = sqlite3.connect(os.path.join(data_dir, "m3u-proxy.db"))
    rows = []
    counters = []
    for i in range(count):
        url = f"http://127.0.0.1:9/stored/{i}/index.m3u8"
        sid = hmac.new(secret, b"stream-id\0" + url.encode(), hashlib.sha256).hexdigest()[:24]
        doc = {
            "original_url": url,
            "failover_urls": [f"http://127.0.0.1:9/stored/{i}/backup.m3u8"],
            "user_agent": None,
            "headers": [["authorization", f"Bearer token-{i}"]],
            "metadata": {"channel": i},
            "stream_type": "hls",
            "created_at": "2026-12-01T00:00:00Z",
            "failover_index": 0,
            "generation": 0,
        }
        rows.append(("stream", sid, json.dumps(doc)))
        counters.append((f"stream:{sid}", i, i % 7, 0, 0))
    db.executemany("INSERT INTO docs (kind, id, body) VALUES (?, ?, ?)", rows)
    db.executemany(
        "INSERT INTO counters (key, bytes, segments, errors, failovers) VALUES (?, ?, ?, ?, ?)",
        counters,
    )
    db.commit()
    db.close()


def count_streams(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())["streams"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/m3u-proxy")
    ap.add_argument("--streams", type=int, default=10000)
    ap.add_argument("--stored", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stores", default="memory,sqlite",
                    help="comma-separated, the first is the baseline (memory,sqlite,redis)")
    args = ap.parse_args()
    stores = args.stores.split(",")
    if any(s not in ("memory", "sqlite", "redis") for s in stores) or len(stores) < 2:
        sys.exit("--stores: two or more of memory, sqlite, redis")
    work = tempfile.mkdtemp(prefix="m3u-store-bench-")
    results = {s: {"p50": [], "p99": [], "seq_s": [], "conc_s": [], "empty_start_s": []}
               for s in stores}
    starts = []
    redis = start_redis() if "redis" in stores else None
    try:
        for r in range(args.rounds):
            order = stores if r % 2 == 0 else stores[::-1]
            for store in order:
                data = os.path.join(work, f"{store}-{r}")
                redis_env = None
                if store == "redis":
                    redis_env = {"REDIS_URL": redis[1], "REDIS_PREFIX": f"bench-{r}"}
                proc, port, took = start(args.bin, store, data, redis_env)
                results[store]["empty_start_s"].append(took)
                began = time.monotonic()
                lat = post_sequential(port, args.streams, "seq")
                results[store]["seq_s"].append(time.monotonic() - began)
                results[store]["p50"].append(percentile(lat, 50))
                results[store]["p99"].append(percentile(lat, 99))
                results[store]["conc_s"].append(post_concurrent(port, args.streams, "conc"))
                stop(proc)
                print(f"round {r + 1} {store}: p50 {percentile(lat, 50):.3f} ms, "
                      f"p99 {percentile(lat, 99):.3f} ms", file=sys.stderr)
        data = os.path.join(work, "stored")
        stored = args.stored if "sqlite" in stores else 0
        if stored:
            fill_database(args.bin, data, stored)
        for r in range(args.rounds if stored else 0):
            proc, port, took = start(args.bin, "sqlite", data)
            n = count_streams(port)
            assert n == args.stored, n
            status = open(f"/proc/{proc.pid}/status").read()
            rss = int(status.split("VmRSS:")[1].split()[0])
            peak = int(status.split("VmHWM:")[1].split()[0])
            stop(proc)
            starts.append((took, rss, peak))
            print(f"start with {n} stored streams: {took:.3f} s, RSS {rss // 1024} MB, "
                  f"peak {peak // 1024} MB", file=sys.stderr)
    finally:
        if redis:
            redis[0].kill()
            redis[0].wait()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    base, others = stores[0], stores[1:]
    n = args.streams
    print(f"| figure ({args.rounds} rounds, medians) | "
          + " | ".join(stores) + " | " + " | ".join(f"{o}/{base}" for o in others) + " |")
    print("|" + " --- |" * (1 + len(stores) + len(others)))
    for label, key, fmt in [
        ("POST /streams p50, sequential (ms)", "p50", "{:.3f}"),
        ("POST /streams p99, sequential (ms)", "p99", "{:.3f}"),
        (f"{n:,} streams, one connection (s)", "seq_s", "{:.2f}"),
        (f"{n:,} streams, 16 connections (s)", "conc_s", "{:.2f}"),
        ("start-up, empty store (s)", "empty_start_s", "{:.3f}"),
    ]:
        values = [med(results[st][key]) for st in stores]
        print(f"| {label} | " + " | ".join(fmt.format(v) for v in values) + " | "
              + " | ".join(f"{v / values[0]:.2f}" for v in values[1:]) + " |")
    if not starts:
        return
    took = med([t for t, _, _ in starts])
    rss = med([r for _, r, _ in starts]) / 1024
    peak = med([p for _, _, p in starts]) / 1024

    def sqlite_row(label, value):
        cells = [value if st == "sqlite" else "" for st in stores] + [""] * len(others)
        print(f"| {label} | " + " | ".join(cells) + " |")

    sqlite_row(f"start-up with {args.stored:,} stored streams, to /health answering (s)",
               f"{took:.3f}")
    sqlite_row("RSS after that start-up (MB)", f"{rss:.0f}")
    sqlite_row("peak RSS during that start-up (VmHWM, MB)", f"{peak:.0f}")

if __name__ == "__main__":
    main()
