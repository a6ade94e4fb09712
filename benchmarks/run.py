#!/usr/bin/env python3
"""
Benchmark indiserv against indilib's indiserver and indipyserver.

Every server serves the same synthetic driver (benchmarks/blob_driver.py)
to the same clients, on 127.0.0.1, one server at a time; a bare Twisted byte
pump (no parsing at all) is measured too, as the ceiling Twisted allows.

    python benchmarks/run.py              # every scenario, 3 repetitions
    python benchmarks/run.py --smoke      # tiny sizes, one repetition (CI)
    python benchmarks/run.py --scenario slow_client --repeat 5

It prints a table of medians with the ratio to indiserver and writes JSON
(--json, default benchmarks/results/latest.json).  A peer that is not
installed is reported and skipped: indiserver comes from Debian's indi-bin,
indipyserver from PyPI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DRIVER = os.path.join(HERE, "blob_driver.py")
PUMP = os.path.join(HERE, "pump.py")
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
IPYSERVER = (
    "import asyncio, sys\n"
    "from indipyserver import IPyServer\n"
    "server = IPyServer(host='127.0.0.1', port=int(sys.argv[1]), maxconnections=10)\n"
    "server.add_exdriver(sys.argv[2])\n"
    "asyncio.run(server.asyncrun())\n"
)
START = (
    b"<newSwitchVector device='Bench' name='START'><oneSwitch name='START'>On"
    b"</oneSwitch></newSwitchVector>"
)
HELLO = b"<getProperties version='1.7'/><enableBLOB device='Bench'>Also</enableBLOB>"
# indiserver re-serialises what it forwards (double quotes, new layout), so
# markers avoid quotes and whitespace.
DONE = b"done"
MiB = 1024 * 1024


# -- servers ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """
    One server under test, serving the benchmark driver with given
    arguments; with C{upstream_of}, a second server linked to that one
    (for the chained scenario) and serving no driver of its own.
    """

    def __init__(self, kind: str, driver_args: list[str], workdir: str, max_queue_mb: int = 0,
                 upstream_of: Server | None = None):
        self.kind = kind
        self.port = free_port()
        self.lower = upstream_of
        wrapper = os.path.join(workdir, f"bench_driver_{self.port}")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(DRIVER)} "
                    + " ".join(shlex.quote(a) for a in driver_args) + "\n")
        os.chmod(wrapper, 0o755)
        env = dict(os.environ, HOME=workdir, PYTHONPATH=ROOT)
        if kind == "indiserv":
            argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=/dev/null",
                    "indiserver", "--port", str(self.port), "--host", "127.0.0.1",
                    "--max-connections", "100"]
            if max_queue_mb:
                argv += ["--max-queue", str(max_queue_mb)]
            if upstream_of is not None:
                argv += ["--remote", f"127.0.0.1:{upstream_of.port}", "--remote-blobs"]
            else:
                argv.append(wrapper)
        elif kind == "indiserver":
            argv = ["indiserver", "-p", str(self.port), "-u", os.path.join(workdir, f"u{self.port}")]
            if max_queue_mb:
                argv += ["-m", str(max_queue_mb)]
            if upstream_of is not None:
                argv.append(f"Bench@127.0.0.1:{upstream_of.port}")
            else:
                argv.append(wrapper)
        elif kind == "indipyserver":
            argv = [sys.executable, "-c", IPYSERVER, str(self.port), wrapper]
        elif kind == "twisted-pump":
            argv = [sys.executable, PUMP, str(self.port), wrapper]
        else:
            raise ValueError(kind)
        self.process = subprocess.Popen(argv, env=env, cwd=workdir, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not start")
                time.sleep(0.05)
        time.sleep(0.3)  # let the driver start and define its properties
        self.idle_rss = self.memory("VmRSS")

    def memory(self, field: str) -> int:
        """VmRSS (now) or VmHWM (peak) of the server process, in bytes."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.lower is not None:
            self.lower.stop()


def available(kind: str) -> str | None:
    """Why C{kind} cannot be benchmarked here, or None."""
    if kind == "indiserver" and shutil.which("indiserver") is None:
        return "indiserver not found (Debian: apt-get install indi-bin)"
    if kind == "indipyserver":
        try:
            import indipyserver  # noqa: F401
        except ImportError:
            return "indipyserver not installed (pip install indipyserver)"
    return None


# -- clients ------------------------------------------------------------------


def connect(port: int, hello: bytes = HELLO) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(hello)
    return sock


#: Seconds a client waits for more data before the run counts as wedged.
READ_TIMEOUT = 30.0


def read_until(sock: socket.socket, marker: bytes, timeout: float | None = None) -> int:
    """Read until C{marker} arrives; return the bytes read."""
    sock.settimeout(timeout or READ_TIMEOUT)
    buffer = bytearray(4 * MiB)
    view = memoryview(buffer)
    total = 0
    tail = b""
    while True:
        n = sock.recv_into(view)
        if not n:
            raise RuntimeError("server closed the connection")
        total += n
        chunk = tail + bytes(view[: min(n, 4096)]) if n < 4096 else tail + bytes(view[:n])
        if marker in chunk:
            return total
        tail = bytes(view[max(0, n - len(marker)) : n])


def settle(socks: list[socket.socket], marker: bytes = b"defSwitchVector") -> None:
    for sock in socks:
        read_until(sock, marker, timeout=20)


def stream(port: int, clients: int) -> dict[str, float]:
    """Clients read the driver's output until 'done'; MB/s per client."""
    import threading

    socks = [connect(port) for _ in range(clients)]
    settle(socks)
    results: list[float] = [0.0] * clients
    errors: list[BaseException] = []

    def reader(index: int) -> None:
        try:
            results[index] = read_until(socks[index], DONE)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    socks[0].sendall(START)
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    for sock in socks:
        sock.close()
    if errors:
        raise RuntimeError(f"no 'done' within {READ_TIMEOUT:g} s (wedged?): {errors[0]}")
    per_client = statistics.mean(results) / MiB / elapsed
    return {"MB/s per client": per_client, "MB/s total": per_client * clients, "seconds": elapsed}


def updates(port: int, clients: int, count: int) -> dict[str, float]:
    result = stream(port, clients)
    return {"msg/s per client": count / result["seconds"]}


def round_trip(port: int, count: int) -> dict[str, float]:
    sock = connect(port, b"<getProperties version='1.7'/>")
    settle([sock])
    times = []
    for i in range(count):
        value = str(i + 1).encode()  # the driver answers each with one setNumberVector
        begin = time.perf_counter()
        sock.sendall(b"<newNumberVector device='Bench' name='VALUE'><oneNumber name='VALUE'>"
                     + value + b"</oneNumber></newNumberVector>")
        read_until(sock, b"</setNumberVector>", timeout=10)
        times.append((time.perf_counter() - begin) * 1e6)
    sock.close()
    times.sort()
    return {"p50 us": times[len(times) // 2], "p99 us": times[int(len(times) * 0.99) - 1]}


def slow_client(server: Server, port: int) -> dict[str, float]:
    """One client enables BLOBs and never reads; another reads everything."""
    slow = connect(port)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    fast = connect(port)
    settle([fast])
    begin = time.perf_counter()
    fast.sendall(START)
    received = read_until(fast, DONE)
    elapsed = time.perf_counter() - begin
    slow_cut = _is_closed(slow)
    peak = server.memory("VmHWM")
    slow.close()
    fast.close()
    return {
        "fast MB/s": received / MiB / elapsed,
        "peak RSS over idle MB": (peak - server.idle_rss) / MiB,
        "slow client cut": 1.0 if slow_cut else 0.0,
    }


def _is_closed(sock: socket.socket) -> bool:
    """Whether the server hung up on C{sock} (after what it already sent)."""
    sock.settimeout(5)
    try:
        while True:
            if not sock.recv(4 * MiB):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (socket.timeout, OSError):
        return False


# -- scenarios ----------------------------------------------------------------


def scenarios(smoke: bool) -> dict[str, tuple[list[str], int, Callable]]:
    """name -> (driver arguments, --max-queue MB, measurement(server, port))."""
    blobs, size = (5, 64 * 1024) if smoke else (50, MiB)
    numbers = 500 if smoke else 20000
    trips = 100 if smoke else 2000
    slow_blobs = 10 if smoke else 100
    return {
        "blob_stream_1": (["--blobs", str(blobs), "--size", str(size)], 0,
                          lambda s, p: stream(p, 1)),
        "blob_stream_4": (["--blobs", str(blobs), "--size", str(size)], 0,
                          lambda s, p: stream(p, 4)),
        "blob_stream_1_no_enclen": (["--blobs", str(blobs), "--size", str(size), "--no-enclen"], 0,
                                    lambda s, p: stream(p, 1)),
        "updates_1": (["--blobs", "0", "--numbers", str(numbers)], 0,
                      lambda s, p: updates(p, 1, numbers)),
        "updates_4": (["--blobs", "0", "--numbers", str(numbers)], 0,
                      lambda s, p: updates(p, 4, numbers)),
        "round_trip": (["--blobs", "0"], 0, lambda s, p: round_trip(p, trips)),
        # Without enclen: with it, indiserver 1.9.9 wedges (PROTOCOL.md, defect 7)
        # and there would be nothing to compare with.
        "fan_out_50": (["--blobs", "0", "--numbers", str(200 if smoke else 2000)], 0,
                       lambda s, p: updates(p, 50, 200 if smoke else 2000)),
        # Without enclen, which wedges indiserver (see slow_client).
        "chained_blob_stream": (["--blobs", str(blobs), "--size", str(size), "--no-enclen"], 0,
                                lambda s, p: stream(p, 1)),
        "slow_client": (["--blobs", str(slow_blobs), "--size", str(MiB), "--no-enclen"], 32,
                        lambda s, p: slow_client(s, p)),
        "fast_client_alone": (["--blobs", str(slow_blobs), "--size", str(MiB), "--no-enclen"], 32,
                              lambda s, p: stream(p, 1)),
    }


SERVERS = ["indiserv", "indiserver", "indipyserver", "twisted-pump"]


def main() -> int:
    parser = argparse.ArgumentParser(description="indiserv benchmark")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenario", action="append", help="run only these (repeatable)")
    parser.add_argument("--server", action="append", choices=SERVERS, help="only these servers")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"))
    args = parser.parse_args()
    repeat = 1 if args.smoke else args.repeat
    chosen = scenarios(args.smoke)
    if args.scenario:
        chosen = {name: chosen[name] for name in args.scenario}
    servers = args.server or SERVERS
    missing = {kind: why for kind in servers if (why := available(kind))}
    for kind, why in missing.items():
        print(f"skipping {kind}: {why}", file=sys.stderr)
    results: dict[str, dict[str, dict[str, float]]] = {}
    failures: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="indiserv-bench-") as workdir:
        for name, (driver_args, max_queue, measure) in chosen.items():
            results[name] = {}
            for kind in servers:
                if kind in missing or (kind == "twisted-pump" and name.startswith("slow")):
                    continue
                if name.startswith("chained") and kind not in ("indiserv", "indiserver"):
                    continue  # only these two chain servers (device@host / --remote)
                runs = []
                for _ in range(repeat):
                    if name.startswith("chained"):
                        server = Server(kind, driver_args, workdir, max_queue,
                                        upstream_of=Server(kind, driver_args, workdir, max_queue))
                    else:
                        server = Server(kind, driver_args, workdir, max_queue)
                    try:
                        runs.append(measure(server, server.port))
                    except Exception as e:  # a peer that fails a scenario is reported, not fatal
                        print(f"{name} on {kind}: failed ({type(e).__name__}: {e})", file=sys.stderr)
                        failures.setdefault(name, {})[kind] = f"{type(e).__name__}: {e}"
                    finally:
                        server.stop()
                if runs:
                    results[name][kind] = {
                        key: statistics.median(run[key] for run in runs) for key in runs[0]
                    }
    report(results, failures)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine(), "repeat": repeat, "smoke": args.smoke,
                   "results": results, "failures": failures}, f, indent=2)
    return 0


def machine() -> dict[str, str]:
    return {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
    }


def report(results: dict[str, dict[str, dict[str, float]]], failures: dict[str, dict[str, str]]) -> None:
    print(f"# machine: {machine()}")
    for name, by_server in results.items():
        print(f"\n## {name}")
        for kind, why in failures.get(name, {}).items():
            print(f"  {kind:14} FAILED: {why}")
        base = by_server.get("indiserver", {})
        for kind, figures in by_server.items():
            cells = []
            for key, value in figures.items():
                ratio = f" ({value / base[key]:.2f}x)" if base.get(key) else ""
                cells.append(f"{key} {value:,.1f}{ratio}")
            print(f"  {kind:14} " + "; ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
