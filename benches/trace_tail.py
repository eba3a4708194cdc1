#!/usr/bin/env python3
"""Where the slow requests of an open_load.py trace waited.

    trace_tail.py TRACE [TRACE ...]

Reads traces written by benches/open_load.py with OPEN_LOAD_TRACE (noisy_neighbour.sh's
NOISY_TRACE_DIR keeps one per phase) and prints, for each, the mean of every part of a
request's latency over all requests, over the slowest 1 % and over the slowest 0.1 %:

- late: the client sent it late (its own thread waited for a core);
- the server's stages from Server-Timing: prepare, queue, dispatch, run, settle;
- server-other: the rest of the server's total (routing, authentication, the hand-off of the
  cast to its task and back, the run's set-up before its clock starts and, after a trap, the
  replay that finds its exact fuel, rendering);
- outside: latency − late − the server's total: the request and the answer between the
  client's and the server's sockets (the kernel, the HTTP runtime reading it, the client
  reading the answer).

Standard library only.
"""

import sys

STAGES = ("prepare", "queue", "dispatch", "run", "settle")


def parts(fields: list[str]) -> dict[str, float] | None:
    """One request's latency split into its parts, or None when it has no server timing."""
    if len(fields) < 10 or "-" in fields[4:9] or fields[9] == "-":
        return None
    latency, late = float(fields[1]), float(fields[3])
    stages = dict(zip(STAGES, map(float, fields[4:9])))
    total = float(fields[9])
    split = {"latency": latency, "late": late, **stages}
    split["server-other"] = max(0.0, total - sum(stages.values()))
    split["outside"] = max(0.0, latency - late - total)
    return split


def summary(path: str) -> None:
    with open(path) as trace:
        rows = [parts(line.split()) for line in trace if line.strip()]
    timed = sorted((row for row in rows if row), key=lambda row: row["latency"])
    print(f"{path}: {len(rows)} requests, {len(timed)} with the server's timing")
    if not timed:
        return
    names = ["latency", "late", *STAGES, "server-other", "outside"]
    print(f"  {'mean ms of':<22}" + "".join(f"{name:>13}" for name in names))
    for label, share in (("all", 1.0), ("slowest 1 %", 0.01), ("slowest 0.1 %", 0.001)):
        tail = timed[-max(1, int(len(timed) * share)):]
        means = [sum(row[name] for row in tail) / len(tail) for name in names]
        print(f"  {label + f' ({len(tail)})':<22}" + "".join(f"{mean:>13.3f}" for mean in means))


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        summary(path)


if __name__ == "__main__":
    main()
