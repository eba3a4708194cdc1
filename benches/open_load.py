#!/usr/bin/env python3
"""An open-model load generator: POSTs a body at a fixed rate, whatever the answers' latency.

Latency is measured from each request's *scheduled* send time, so a stalled server shows as
latency rather than as fewer requests (no coordinated omission, as wrk2 and oha -q do).

    open_load.py URL BEARER_KEY BODY_JSON RATE_PER_SECOND SECONDS

Prints one line: "sent ok non2xx p50_ms p99_ms max_ms". Standard library only. With
OPEN_LOAD_TRACE=FILE it also writes one line per request to FILE: its scheduled send time
(CLOCK_MONOTONIC, seconds, as `perf record -k CLOCK_MONOTONIC` stamps events), its latency in
ms, its HTTP status (0 for a failed connection), how late this client sent it (ms: its own
thread waiting for a core, not the server), then the server's own account of it from the
answer's Server-Timing header, in ms: prepare, queue, dispatch, run, settle and total ("-" for
what the answer did not carry). That tells a slow server from a slow client, and which stage
of the server a slow cast waited in.
"""

import ctypes
import os
import http.client
import platform
import struct
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor


def ask_for_a_short_slice() -> None:
    """Stands in for a client on another machine: on Linux 6.12+, this thread and those it
    starts take the shortest time slice (sched_setattr's sched_runtime, 100 µs), so they run
    as soon as they wake rather than waiting for the server's computing threads to finish
    theirs, and the latency measured is the server's. A no-op where the call is missing."""
    number = {"x86_64": 314, "aarch64": 274}.get(platform.machine())  # sched_setattr
    if not sys.platform.startswith("linux") or number is None:
        return
    try:
        attr = struct.pack("IIQiIQQQ", 48, 0, 0, 0, 0, 100_000, 0, 0)  # SCHED_OTHER, nice 0
        ctypes.CDLL(None, use_errno=True).syscall(number, 0, attr, 0)
    except OSError:
        pass


def main() -> None:
    ask_for_a_short_slice()
    url, key, body, rate, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
    target = urllib.parse.urlsplit(url)
    local = threading.local()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    payload = body.encode()

    def connection() -> http.client.HTTPConnection:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        return local.conn

    stages = ("prepare", "queue", "dispatch", "run", "settle", "total")

    def server_timing(value: str) -> dict[str, float]:
        timing = {}
        for entry in value.split(","):
            name, _, duration = entry.strip().partition(";dur=")
            try:
                timing[name] = float(duration)
            except ValueError:
                pass
        return timing

    def one(scheduled: float) -> tuple[float, float, int, float, dict[str, float]]:
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        late = max(0.0, time.perf_counter() - scheduled) * 1000.0
        timing = {}
        try:
            conn = connection()
            conn.request("POST", target.path, payload, headers)
            response = conn.getresponse()
            response.read()
            status = response.status
            timing = server_timing(", ".join(response.headers.get_all("Server-Timing") or []))
        except (OSError, http.client.HTTPException):
            local.conn = None
            status = 0
        return scheduled, (time.perf_counter() - scheduled) * 1000.0, status, late, timing

    count = int(rate * seconds)
    start = time.perf_counter() + 0.2
    # Enough threads that a slow answer never delays the next send.
    with ThreadPoolExecutor(max_workers=64) as pool:
        futures = [pool.submit(one, start + i / rate) for i in range(count)]
        results = [f.result() for f in futures]
    latencies = sorted(ms for _, ms, _, _, _ in results)
    ok = sum(1 for _, _, status, _, _ in results if 200 <= status < 300)
    trace = os.environ.get("OPEN_LOAD_TRACE")
    if trace:
        def server(timing: dict[str, float]) -> str:
            return " ".join(f"{timing[name]:.3f}" if name in timing else "-" for name in stages)

        with open(trace, "w") as out:
            out.writelines(f"{at:.6f} {ms:.3f} {status} {late:.3f} {server(timing)}\n"
                           for at, ms, status, late, timing in results)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    print(f"{count} {ok} {count - ok} {pct(0.50):.2f} {pct(0.99):.2f} {latencies[-1] if latencies else 0:.2f}")


if __name__ == "__main__":
    main()
