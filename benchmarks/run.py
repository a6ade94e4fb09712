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
import re
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DRIVER = os.path.join(HERE, "blob_driver.py")
PUMP = os.path.join(HERE, "pump.py")
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
IPYSERVER = (
    "import asyncio, sys\n"
    "from indipyserver import IPyServer\n"
    # 10 is the most IPyServer allows.
    "server = IPyServer(host='127.0.0.1', port=int(sys.argv[1]), maxconnections=10)\n"
    "for driver in sys.argv[2:]:\n"
    "    server.add_exdriver(driver)\n"
    "asyncio.run(server.asyncrun())\n"
)
START = (
    b"<newSwitchVector device='Bench' name='START'><oneSwitch name='START'>On"
    b"</oneSwitch></newSwitchVector>"
)
HELLO = b"<getProperties version='1.7'/><enableBLOB device='Bench'>Also</enableBLOB>"
# The driver's last message.  indiserver re-serialises what it forwards
# (double quotes, new layout), so either quote will do; a quote cannot occur
# in base64, so BLOB data never looks like it (a bare b"done" did, about
# four times in 50 MiB of base64, and ended streams early).
DONE = rb"""message=["']done["']"""
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
                 upstream_of: Server | None = None, drivers: list[str] | None = None):
        self.kind = kind
        self.port = free_port()
        self.lower = upstream_of
        wrapper = os.path.join(workdir, f"bench_driver_{self.port}")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(DRIVER)} "
                    + " ".join(shlex.quote(a) for a in driver_args) + "\n")
        os.chmod(wrapper, 0o755)
        drivers = drivers or [wrapper]
        env = dict(os.environ, HOME=workdir, PYTHONPATH=ROOT)
        if kind == "indiserv":
            argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=/dev/null",
                    "indiserver", "--port", str(self.port), "--host", "127.0.0.1",
                    "--max-connections", "110"]
            if max_queue_mb:
                argv += ["--max-queue", str(max_queue_mb)]
            if upstream_of is not None:
                argv += ["--remote", f"127.0.0.1:{upstream_of.port}", "--remote-blobs"]
            else:
                argv += drivers
        elif kind == "indiserver":
            argv = ["indiserver", "-p", str(self.port), "-u", os.path.join(workdir, f"u{self.port}")]
            if max_queue_mb:
                argv += ["-m", str(max_queue_mb)]
            if upstream_of is not None:
                argv.append(f"Bench@127.0.0.1:{upstream_of.port}")
            else:
                argv += drivers
        elif kind == "indipyserver":
            argv = [sys.executable, "-c", IPYSERVER, str(self.port), *drivers]
        elif kind == "twisted-pump":
            if len(drivers) != 1:
                raise ValueError("the pump serves one driver")
            argv = [sys.executable, PUMP, str(self.port), *drivers]
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


@dataclass
class Waits:
    """How long the harness waits, in seconds: shorter for --smoke."""

    #: For more data, before the run counts as wedged.
    read: float = 30.0
    #: Of silence, after which a server has sent every definition it has.
    silence: float = 1.0
    #: For a server to hang up on a client that reads nothing.
    cut: float = 5.0


WAITS = Waits()
SMOKE_WAITS = Waits(read=3.0, silence=0.3, cut=0.5)


class Wedged(RuntimeError):
    """The server stopped sending in the middle of a run."""


#: The most clients each server takes at once, where it has a limit.
CLIENT_CAPS = {"indipyserver": 10}
#: One receive buffer for every read: allocating 4 MiB per call cost the
#: round trip more than some servers do.
_BUFFER = memoryview(bytearray(4 * MiB))
#: A property definition, as every server writes it (indiserver rewrites
#: the element with other quotes and attribute order).
DEFINITION = rb"<def[A-Za-z]+Vector[^>]*>"
_ATTRIBUTE = re.compile(rb"""\b(device|name)=["']([^"']*)["']""")


def property_of(definition: bytes) -> bytes:
    """The device and name of a definition's start tag."""
    attributes = dict(_ATTRIBUTE.findall(definition))
    return attributes.get(b"device", b"") + b"." + attributes.get(b"name", b"")


class Watch:
    """
    Waits for C{count} different matches of C{pattern} (told apart by
    C{key}) in what one socket receives, across reads: a match may
    straddle two.
    """

    def __init__(self, pattern: bytes, count: int = 1,
                 key: Callable[[bytes], bytes] = lambda match: match):
        self.pattern = re.compile(pattern)
        self.count = count
        self.key = key
        self.found: set[bytes] = set()
        self.tail = b""

    def seen(self, chunk: memoryview) -> bool:
        data = self.tail + bytes(chunk)
        for match in self.pattern.finditer(data):
            if match.end() > len(self.tail):  # else found on the last read
                self.found.add(self.key(match.group()))
        self.tail = data[-4096:]
        return len(self.found) >= self.count


def drain(socks: list[socket.socket], watches: list[Watch], timeout: float | None = None) -> list[int]:
    """
    Read every socket, in one thread, until its watch has seen what it
    waits for; return the bytes each received.
    """
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
    totals = [0] * len(socks)
    try:
        while selector.get_map():
            waited = timeout or WAITS.read
            events = selector.select(waited)
            if not events:
                raise Wedged(f"no more data within {waited:g} s")
            for key, _ in events:
                try:
                    n = key.fileobj.recv_into(_BUFFER)
                except BlockingIOError:
                    continue
                if not n:
                    raise RuntimeError("server closed the connection")
                totals[key.data] += n
                if watches[key.data].seen(_BUFFER[:n]):
                    selector.unregister(key.fileobj)
    finally:
        selector.close()
        for sock in socks:
            sock.setblocking(True)
    return totals


def settle(socks: list[socket.socket], marker: bytes = b"defSwitchVector") -> None:
    drain(socks, [Watch(marker) for _ in socks], timeout=20)


def stream(port: int, clients: int) -> dict[str, float]:
    """Clients read the driver's output until 'done'; MB/s per client."""
    socks = [connect(port) for _ in range(clients)]
    settle(socks)
    begin = time.perf_counter()
    socks[0].sendall(START)
    try:
        received = drain(socks, [Watch(DONE) for _ in socks])
    finally:
        for sock in socks:
            sock.close()
    elapsed = time.perf_counter() - begin
    per_client = statistics.mean(received) / MiB / elapsed
    return {"MB/s per client": per_client, "MB/s total": per_client * clients, "seconds": elapsed}


def updates(port: int, clients: int, count: int) -> dict[str, float]:
    result = stream(port, clients)
    return {"msg/s per client": count / result["seconds"]}


def round_trip(port: int, count: int) -> dict[str, float]:
    sock = connect(port, b"<getProperties version='1.7'/>")
    settle([sock])
    sock.settimeout(10)
    times = []
    for i in range(count):
        value = str(i + 1).encode()  # the driver answers each with one setNumberVector
        watch = Watch(b"</setNumberVector>")
        begin = time.perf_counter()
        sock.sendall(b"<newNumberVector device='Bench' name='VALUE'><oneNumber name='VALUE'>"
                     + value + b"</oneNumber></newNumberVector>")
        while not watch.seen(_BUFFER[: sock.recv_into(_BUFFER)]):
            pass
        times.append((time.perf_counter() - begin) * 1e6)
    sock.close()
    times.sort()
    return {"p50 us": times[len(times) // 2], "p99 us": times[int(len(times) * 0.99) - 1]}


def definitions_of(port: int) -> int:
    """How many properties the server's devices define, asked once."""
    sock = connect(port, b"<getProperties version='1.7'/>")
    watch = Watch(DEFINITION, count=10**9, key=property_of)
    try:
        drain([sock], [watch], timeout=WAITS.silence)  # until a moment of silence
    except Wedged:
        pass
    sock.close()
    return len(watch.found)


def connection_setup(port: int, clients: int) -> dict[str, float]:
    """
    C{clients} connect at once and ask for every property; seconds until
    the last has received every definition.
    """
    expected = definitions_of(port)
    if not expected:
        raise RuntimeError("the server's drivers defined nothing")
    begin = time.perf_counter()
    socks = [connect(port, b"<getProperties version='1.7'/>") for _ in range(clients)]
    try:
        received = drain(socks, [Watch(DEFINITION, expected, property_of) for _ in socks])
    finally:
        for sock in socks:
            sock.close()
    elapsed = time.perf_counter() - begin
    return {"seconds": elapsed, "properties": expected,
            "MB per client": statistics.mean(received) / MiB}


def slow_client(server: Server, port: int) -> dict[str, float]:
    """One client enables BLOBs and never reads; another reads everything."""
    slow = connect(port)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    fast = connect(port)
    settle([fast])
    server.idle_rss = server.memory("VmRSS")  # the driver's properties defined, nothing sent yet
    begin = time.perf_counter()
    fast.sendall(START)
    received = drain([fast], [Watch(DONE)])[0]
    elapsed = time.perf_counter() - begin
    slow_cut = _is_closed(slow)
    peak = server.memory("VmHWM")
    idle = server.idle_rss
    slow.close()
    fast.close()
    return {
        "fast MB/s": received / MiB / elapsed,
        "peak RSS over idle MB": (peak - idle) / MiB,
        "slow client cut": 1.0 if slow_cut else 0.0,
    }


def _is_closed(sock: socket.socket) -> bool:
    """Whether the server hung up on C{sock} (after what it already sent)."""
    sock.settimeout(WAITS.cut)
    try:
        while True:
            if not sock.recv(4 * MiB):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (socket.timeout, OSError):
        return False


# -- scenarios ----------------------------------------------------------------


@dataclass
class Scenario:
    """What the servers serve, and what is measured of them."""

    driver_args: list[str]
    measure: Callable[[Server, int], dict[str, float]]
    max_queue_mb: int = 0
    #: Executable drivers to serve instead of the benchmark driver.
    drivers: list[str] | None = None
    #: Servers this scenario does not apply to.
    not_for: tuple[str, ...] = ()
    chained: bool = False
    #: Clients connected at once.
    clients: int = 1


SIMULATORS = ["indi_simulator_telescope", "indi_simulator_ccd"]


def scenarios(smoke: bool) -> dict[str, Scenario]:
    blobs, size = (5, 64 * 1024) if smoke else (50, MiB)
    blob_args = ["--blobs", str(blobs), "--size", str(size)]
    numbers = 500 if smoke else 20000
    trips = 100 if smoke else 2000
    fan_out = 200 if smoke else 2000
    # A server may still count the connection that asked for the
    # definitions first: one more than the clients of the setup itself.
    setups = 8 if smoke else 100
    slow_args = ["--blobs", str(10 if smoke else 100), "--size", str(MiB), "--no-enclen"]
    return {
        "blob_stream_1": Scenario(blob_args, lambda s, p: stream(p, 1)),
        "blob_stream_4": Scenario(blob_args, lambda s, p: stream(p, 4), clients=4),
        # Without enclen: with it, indiserver 1.9.9 wedges (docs/benchmarks.rst)
        # and there would be nothing to compare with.
        "blob_stream_1_no_enclen": Scenario(blob_args + ["--no-enclen"], lambda s, p: stream(p, 1)),
        "blob_stream_4_no_enclen": Scenario(blob_args + ["--no-enclen"], lambda s, p: stream(p, 4), clients=4),
        "updates_1": Scenario(["--blobs", "0", "--numbers", str(numbers)],
                              lambda s, p: updates(p, 1, numbers)),
        "updates_4": Scenario(["--blobs", "0", "--numbers", str(numbers)],
                              lambda s, p: updates(p, 4, numbers), clients=4),
        "round_trip": Scenario(["--blobs", "0"], lambda s, p: round_trip(p, trips)),
        "fan_out_50": Scenario(["--blobs", "0", "--numbers", str(fan_out)],
                               lambda s, p: updates(p, 50, fan_out), clients=50),
        # The pump neither asks drivers for their properties nor serves two.
        "connection_setup_100": Scenario([], lambda s, p: connection_setup(p, setups),
                                         drivers=SIMULATORS, not_for=("twisted-pump",),
                                         clients=setups + 1),
        # Only indiserv and indiserver chain (--remote, device@host).
        "chained_blob_stream": Scenario(blob_args + ["--no-enclen"], lambda s, p: stream(p, 1),
                                        not_for=("indipyserver", "twisted-pump"), chained=True),
        "slow_client": Scenario(slow_args, slow_client, max_queue_mb=32, not_for=("twisted-pump",),
                                clients=2),
        "fast_client_alone": Scenario(slow_args, lambda s, p: stream(p, 1), max_queue_mb=32),
    }


SERVERS = ["indiserv", "indiserver", "indipyserver", "twisted-pump"]

#: What --smoke runs: every way of measuring once (and indiserver's wedge),
#: so that the harness cannot rot, in well under 30 s with every server.
SMOKE_SCENARIOS = ["blob_stream_1", "blob_stream_4_no_enclen", "updates_4", "round_trip", "fan_out_50",
                   "connection_setup_100", "chained_blob_stream", "slow_client"]


def run(scenario: Scenario, kind: str, workdir: str) -> dict[str, float]:
    """Start C{kind} for C{scenario}, measure once, stop it."""
    args = (scenario.driver_args, workdir, scenario.max_queue_mb)
    lower = Server(kind, *args, drivers=scenario.drivers) if scenario.chained else None
    server = Server(kind, *args, upstream_of=lower, drivers=None if lower else scenario.drivers)
    try:
        return scenario.measure(server, server.port)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description="indiserv benchmark")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, one repetition, one scenario of each kind, short waits")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenario", action="append", help="run only these (repeatable)")
    parser.add_argument("--server", action="append", choices=SERVERS, help="only these servers")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"))
    args = parser.parse_args()
    repeat = 1 if args.smoke else args.repeat
    global WAITS
    if args.smoke:
        WAITS = SMOKE_WAITS
    chosen = scenarios(args.smoke)
    if args.scenario:
        chosen = {name: chosen[name] for name in args.scenario}
    elif args.smoke:
        chosen = {name: chosen[name] for name in SMOKE_SCENARIOS}
    servers = args.server or SERVERS
    missing = {kind: why for kind in servers if (why := available(kind))}
    for kind, why in missing.items():
        print(f"skipping {kind}: {why}", file=sys.stderr)
    for name, scenario in list(chosen.items()):
        absent = [d for d in scenario.drivers or [] if shutil.which(d) is None]
        if absent:
            print(f"skipping {name}: {', '.join(absent)} not found"
                  " (Debian: apt-get install indi-bin)", file=sys.stderr)
            del chosen[name]
    results: dict[str, dict[str, dict[str, float]]] = {}
    failures: dict[str, dict[str, dict[str, object]]] = {}
    # What a server is known not to do: said as such, not counted as failures.
    outcomes: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="indiserv-bench-") as workdir:
        for name, scenario in chosen.items():
            results[name] = {}
            for kind in servers:
                if kind in missing or kind in scenario.not_for:
                    continue
                cap = CLIENT_CAPS.get(kind)
                if cap is not None and scenario.clients > cap:
                    outcomes.setdefault(name, {})[kind] = (
                        f"refuses {scenario.clients - cap} of {scenario.clients} clients"
                        f" (it takes at most {cap})")
                    continue
                runs = []
                for _ in range(repeat):
                    try:
                        runs.append(run(scenario, kind, workdir))
                    except Wedged as e:
                        outcomes.setdefault(name, {})[kind] = f"wedged ({e})"
                        print(f"{name} on {kind}: wedged ({e})", file=sys.stderr)
                        break
                    except Exception as e:  # a peer that fails a scenario is reported, not fatal
                        why = f"{type(e).__name__}: {e}"
                        print(f"{name} on {kind}: failed ({why})", file=sys.stderr)
                        failed = failures.setdefault(name, {}).setdefault(
                            kind, {"failed": 0, "of": repeat, "reason": why})
                        failed["failed"] += 1
                if runs:
                    results[name][kind] = {
                        key: statistics.median(run[key] for run in runs) for key in runs[0]
                    }
    report(results, failures, outcomes)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine(), "repeat": repeat, "smoke": args.smoke,
                   "results": results, "failures": failures, "outcomes": outcomes}, f, indent=2)
    return 0


def machine() -> dict[str, str]:
    return {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
    }


def report(results: dict[str, dict[str, dict[str, float]]],
           failures: dict[str, dict[str, dict[str, object]]],
           outcomes: dict[str, dict[str, str]]) -> None:
    """
    Medians with the ratio to indiserver; failed runs counted, not hidden;
    what a server is known not to do (wedge, refuse clients) said as such.
    """
    print(f"# machine: {machine()}")
    for name, by_server in results.items():
        print(f"\n## {name}")
        for kind, outcome in outcomes.get(name, {}).items():
            print(f"  {kind:14} {outcome}")
        base = by_server.get("indiserver", {})
        for kind, failed in failures.get(name, {}).items():
            print(f"  {kind:14} FAILED {failed['failed']} of {failed['of']}: {failed['reason']}")
        for kind, figures in by_server.items():
            cells = []
            for key, value in figures.items():
                ratio = f" ({value / base[key]:.2f}x)" if base.get(key) else ""
                cells.append(f"{key} {value:,.1f}{ratio}")
            failed = failures.get(name, {}).get(kind)
            survivors = f" (median of {failed['of'] - failed['failed']})" if failed else ""
            print(f"  {kind:14} " + "; ".join(cells) + survivors)


if __name__ == "__main__":
    sys.exit(main())
