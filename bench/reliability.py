#!/usr/bin/env python3
"""Hostile and careless clients against the proxy binary (issue 18), on 127.0.0.1 only.

    python3 bench/reliability.py [--bin target/release/m3u-proxy] [--scale 1.0]

Each scenario starts a fresh proxy (and a paced live TS origin of its own), attacks it,
and prints one line of JSON; the RELIABILITY section of BENCHMARKS.md quotes them:

- memory:    RSS with N connections open and silent, with a partial request head, and
             idle after one request (timeouts set to an hour so that they stay).
- slowloris: 3,000 connections that send a header line every 5 s (default timeouts),
             while a live viewer plays and /health is asked every 0.5 s.
- silent:    10,000 connections that never send a byte (default timeouts), same watch.
- limit:     MAX_CONNECTIONS=1000 and a flood of 3,000 connections asking for /health.

Every process started here is stopped on exit.
"""

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

HOST = "127.0.0.1"
TS_CHUNK = bytes([0x47] + [0] * 187) * 100  # 100 TS packets, 18,800 bytes


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


ORIGIN_SENT = [0]


async def live_origin():
    """An endless TS stream of at most 3.76 Mbit/s on /live.ts; counts what it sends."""

    async def serve(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n")
            while True:
                writer.write(TS_CHUNK)
                await writer.drain()
                ORIGIN_SENT[0] += len(TS_CHUNK)
                await asyncio.sleep(0.04)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    return server, server.sockets[0].getsockname()[1]


class Proxy:
    def __init__(self, binary, env):
        self.port = free_port()
        full = dict(os.environ, M3U_PROXY_HOST=HOST, M3U_PROXY_PORT=str(self.port), LOG_LEVEL="warn")
        full.update(env)
        self.proc = subprocess.Popen([binary], env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def request(self, method, path, body=None, timeout=5.0):
        """One request on a new connection: (status, body, seconds)."""
        started = time.monotonic()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), timeout)
        try:
            data = json.dumps(body).encode() if body is not None else b""
            head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
            writer.write(head.encode() + b"\r\n" + data)
            answer = await asyncio.wait_for(reader.read(), timeout)
        finally:
            writer.close()
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
        return status, answer.split(b"\r\n\r\n", 1)[-1], time.monotonic() - started

    async def ready(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if (await self.request("GET", "/health", timeout=1))[0] == 200:
                    return
            except (OSError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("proxy did not start")

    async def health(self):
        status, body, took = await self.request("GET", "/health")
        return json.loads(body) if status == 200 else {}, took

    def metric(self, page, series):
        for line in page.splitlines():
            if line.startswith(series + " "):
                return int(float(line.split()[-1]))
        return None

    async def metrics(self):
        return (await self.request("GET", "/metrics"))[1].decode()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Viewer:
    """Reads a live channel through the proxy and records the longest gap between chunks."""

    def __init__(self):
        self.bytes = 0
        self.longest_gap = 0.0
        self.ended = False

    def report(self, bytes_before, origin_before, since):
        seconds = time.monotonic() - since
        return {
            "kbit_per_s": round((self.bytes - bytes_before) * 8 / 1000 / seconds, 1),
            "origin_kbit_per_s": round((ORIGIN_SENT[0] - origin_before) * 8 / 1000 / seconds, 1),
            "longest_gap_s": round(self.longest_gap, 2),
            "cut": self.ended,
        }

    async def run(self, proxy, origin_port):
        status, body, _ = await proxy.request("POST", "/streams", {"url": f"http://{HOST}:{origin_port}/live.ts"})
        endpoint = json.loads(body)["stream_endpoint"]
        reader, writer = await asyncio.open_connection(HOST, proxy.port)
        writer.write(f"GET {endpoint} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        last = time.monotonic()
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                now = time.monotonic()
                self.longest_gap = max(self.longest_gap, now - last)
                last = now
                self.bytes += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.ended = True
            writer.close()


async def viewer_child(proxy_port, seconds):
    """Runs in its own process, so that the attack's load on this script's event loop
    cannot delay the viewer: a live origin, the stream registered, and a viewer reading it
    for `seconds` (after 2 s of warm-up); prints what the viewer saw."""
    origin, origin_port = await live_origin()
    proxy = Proxy.__new__(Proxy)
    proxy.port = proxy_port
    viewer = Viewer()
    task = asyncio.create_task(viewer.run(proxy, origin_port))
    await asyncio.sleep(2)
    viewer.longest_gap = 0.0
    before, origin_before, since = viewer.bytes, ORIGIN_SENT[0], time.monotonic()
    await asyncio.sleep(seconds)
    print(json.dumps(viewer.report(before, origin_before, since)), flush=True)
    task.cancel()
    origin.close()


class WatchedViewer:
    """A viewer in a child process (see `viewer_child`)."""

    def __init__(self, proxy, seconds):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--viewer-child", str(proxy.port), str(seconds)],
            stdout=subprocess.PIPE,
        )

    def report(self):
        out, _ = self.proc.communicate(timeout=120)
        return json.loads(out.decode().strip().splitlines()[-1])


async def open_many(port, n, send=b""):
    """Opens n connections, 200 at a time; returns (reader, writer, opened_at) triples."""
    conns = []
    for start in range(0, n, 200):
        batch = await asyncio.gather(
            *(asyncio.open_connection(HOST, port) for _ in range(min(200, n - start))),
            return_exceptions=True,
        )
        for c in batch:
            if isinstance(c, Exception):
                continue
            reader, writer = c
            if send:
                writer.write(send)
            conns.append((reader, writer, time.monotonic()))
    return conns


async def until_closed(reader, opened_at, limit):
    try:
        while True:
            if not await asyncio.wait_for(reader.read(4096), limit):
                break
    except (ConnectionError, asyncio.TimeoutError):
        pass
    return time.monotonic() - opened_at


async def watch_health(proxy, stop, samples):
    while not stop.is_set():
        try:
            _, took = await proxy.health()
            samples.append(took)
        except (OSError, asyncio.TimeoutError):
            samples.append(float("inf"))
        await asyncio.sleep(0.5)


def ms(values):
    finite = [v for v in values if v != float("inf")]
    return {
        "p50_ms": round(statistics.median(finite) * 1000, 2) if finite else None,
        "max_ms": round(max(values) * 1000, 2) if values else None,
        "failed": len(values) - len(finite),
    }


async def memory(binary, n):
    out = {"scenario": "memory", "connections": n}
    for shape, send in [("silent", b""), ("partial_head", b"GET /health HTTP/1.1\r\nHost: x\r\n"),
                        ("idle_after_request", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")]:
        proxy = Proxy(binary, {"HEADER_READ_TIMEOUT": "3600", "KEEPALIVE_TIMEOUT": "3600",
                               "MAX_CONNECTIONS": str(n + 10)})
        try:
            await proxy.ready()
            await asyncio.sleep(0.5)
            before = rss_kb(proxy.proc.pid)
            conns = await open_many(proxy.port, n, send)
            if shape == "idle_after_request":
                await asyncio.gather(*(r.readuntil(b"}") for r, _, _ in conns), return_exceptions=True)
            for _ in range(50):
                health, _ = await proxy.health()
                if health.get("open_connections", 0) >= len(conns):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1)
            after = rss_kb(proxy.proc.pid)
            out[shape] = {
                "open": health.get("open_connections"),
                "rss_before_kb": before,
                "rss_after_kb": after,
                "kb_per_connection": round((after - before) / len(conns), 2),
            }
            for _, w, _ in conns:
                w.close()
        finally:
            proxy.stop()
    return out


async def attack(binary, scenario, n, env, send, trickle):
    proxy = Proxy(binary, env)
    try:
        await proxy.ready()
        viewer = WatchedViewer(proxy, 25)
        await asyncio.sleep(2.5)
        stop, samples = asyncio.Event(), []
        watcher = asyncio.create_task(watch_health(proxy, stop, samples))
        started = time.monotonic()
        conns = await open_many(proxy.port, n, send)
        opened_in = time.monotonic() - started

        async def slow(writer):
            i = 0
            while True:
                await asyncio.sleep(trickle)
                writer.write(f"X-Slow-{i}: still coming\r\n".encode())
                i += 1

        trickles = [asyncio.create_task(slow(w)) for _, w, _ in conns] if trickle else []
        closes = await asyncio.gather(*(until_closed(r, t, 60) for r, _, t in conns))
        for t in trickles:
            t.cancel()
        stop.set()
        await watcher
        page = await proxy.metrics()
        out = {
            "scenario": scenario,
            "connections": len(conns),
            "opened_in_s": round(opened_in, 2),
            "closed_by_server_s": {
                "p50": round(statistics.median(closes), 2),
                "max": round(max(closes), 2),
                "still_open_after_60s": sum(1 for c in closes if c >= 60),
            },
            "timed_out_header_read": proxy.metric(page, 'm3u_proxy_connections_timed_out_total{timeout="header_read"}'),
            "health_during": ms(samples),
            "proxy_rss_kb_after": rss_kb(proxy.proc.pid),
            "viewer_over_25s": viewer.report(),
        }
        return out
    finally:
        proxy.stop()


async def limit(binary, n, max_connections):
    proxy = Proxy(binary, {"MAX_CONNECTIONS": str(max_connections)})
    try:
        await proxy.ready()
        viewer = WatchedViewer(proxy, 15)
        await asyncio.sleep(2.5)
        # Hold max_connections - 1 silent connections (the viewer has the last place)...
        held = await open_many(proxy.port, max_connections - 1)
        await asyncio.sleep(0.5)

        # ... then a flood, each asking for /health and waiting for its answer.
        async def one():
            t = time.monotonic()
            try:
                reader, writer = await asyncio.open_connection(HOST, proxy.port)
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = await asyncio.wait_for(reader.read(200), 5)
                writer.close()
                return answer[9:12].decode() or "closed", time.monotonic() - t
            except (OSError, asyncio.TimeoutError) as e:
                return type(e).__name__, time.monotonic() - t

        # A flood as it arrives: 100 at a time (all at once would overflow the listen
        # backlog of any server, and the kernel's SYN retries would be measured).
        results = []
        for i in range(0, n, 100):
            results += await asyncio.gather(*(one() for _ in range(min(100, n - i))))
        statuses = {}
        for status, _ in results:
            statuses[status] = statuses.get(status, 0) + 1
        refused_in = [t for s, t in results if s == "503"]
        for _, w, _ in held:
            w.close()
        await asyncio.sleep(1)
        page = await proxy.metrics()
        out = {
            "scenario": "limit",
            "max_connections": max_connections,
            "flood": n,
            "answers": statuses,
            "refusal_ms": {"p50": round(statistics.median(refused_in) * 1000, 2), "max": round(max(refused_in) * 1000, 2)} if refused_in else None,
            "refused_metric": proxy.metric(page, 'm3u_proxy_connections_refused_total{reason="max_connections"}'),
            "viewer_over_15s": viewer.report(),
        }
        return out
    finally:
        proxy.stop()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/m3u-proxy")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--only", default="memory,slowloris,silent,limit")
    ap.add_argument("--viewer-child", nargs=2, type=int, metavar=("PORT", "SECONDS"))
    args = ap.parse_args()
    if args.viewer_child:
        return await viewer_child(*args.viewer_child)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = lambda x: max(1, int(x * args.scale))
    only = args.only.split(",")
    if "memory" in only:
        print(json.dumps(await memory(args.bin, n(10000))), flush=True)
    if "slowloris" in only:
        print(json.dumps(await attack(args.bin, "slowloris", n(3000), {}, b"GET /health HTTP/1.1\r\nHost: x\r\n", 5.0)), flush=True)
    if "silent" in only:
        print(json.dumps(await attack(args.bin, "silent", n(10000), {"MAX_CONNECTIONS": str(n(12000))}, b"", 0)), flush=True)
    if "limit" in only:
        print(json.dumps(await limit(args.bin, n(3000), n(1000))), flush=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
