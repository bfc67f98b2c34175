#!/usr/bin/env python3
"""What the state store costs (issue 12): POST /streams latency with the sqlite store
against memory, 10,000 streams registered through the API, and the start-up time with
100,000 stored streams.

    python3 bench/store.py [--bin target/release/m3u-proxy] [--streams 10000]
                           [--stored 100000] [--rounds 3]

Everything listens on 127.0.0.1; the streams point at a closed local port and have an
.m3u8 extension, so registering one never probes an origin. Each round runs memory and
sqlite back to back (the order flips every round) and the medians over the rounds are
printed as a Markdown table. Temporary data directories are removed at the end.
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


def start(binary, store, data_dir):
    port = free_port()
    env = dict(os.environ)
    env.update(
        M3U_PROXY_HOST="127.0.0.1",
        M3U_PROXY_PORT=str(port),
        M3U_PROXY_STORE=store,
        M3U_PROXY_DATA_DIR=data_dir,
        LOG_LEVEL="warn",
    )
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
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="m3u-store-bench-")
    results = {s: {"p50": [], "p99": [], "seq_s": [], "conc_s": [], "empty_start_s": []}
               for s in ("memory", "sqlite")}
    starts = []
    try:
        for r in range(args.rounds):
            order = ("memory", "sqlite") if r % 2 == 0 else ("sqlite", "memory")
            for store in order:
                data = os.path.join(work, f"{store}-{r}")
                proc, port, took = start(args.bin, store, data)
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
        fill_database(args.bin, data, args.stored)
        for r in range(args.rounds):
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
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    m, s = results["memory"], results["sqlite"]
    n = args.streams
    print(f"| figure ({args.rounds} rounds, medians) | memory | sqlite | sqlite/memory |")
    print("| --- | --- | --- | --- |")
    for label, key, fmt in [
        ("POST /streams p50, sequential (ms)", "p50", "{:.3f}"),
        ("POST /streams p99, sequential (ms)", "p99", "{:.3f}"),
        (f"{n:,} streams, one connection (s)", "seq_s", "{:.2f}"),
        (f"{n:,} streams, 16 connections (s)", "conc_s", "{:.2f}"),
        ("start-up, empty store (s)", "empty_start_s", "{:.3f}"),
    ]:
        a, b = med(m[key]), med(s[key])
        print(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {b / a:.2f} |")
    took = med([t for t, _, _ in starts])
    rss = med([r for _, r, _ in starts]) / 1024
    peak = med([p for _, _, p in starts]) / 1024
    print(f"| start-up with {args.stored:,} stored streams, to /health answering (s) | | "
          f"{took:.3f} | |")
    print(f"| RSS after that start-up (MB) | | {rss:.0f} | |")
    print(f"| peak RSS during that start-up (VmHWM, MB) | | {peak:.0f} | |")


if __name__ == "__main__":
    main()
