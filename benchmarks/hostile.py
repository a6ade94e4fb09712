#!/usr/bin/env python3
"""
Hostile peers, measured: each case reproduces one attack on an INDI server
(indiserv, or indilib's indiserver for comparison) and measures what it
costs everyone else.

While each attack runs, an honest client (the bystander) sends
C{<pingRequest uid="N"/>} about every 10 ms, each after the last reply,
and times the C{pingReply}: its max and p99 are the delay the attack put
on honest clients.  The server's peak RSS (VmHWM) is read at the end of
the case, and each case reports its own outcome.

    python benchmarks/hostile.py                              # every case, both servers
    python benchmarks/hostile.py --server indiserv --case long_tag
    python benchmarks/hostile.py --server indiserv --indiserv-root /tmp/old-indiserv \\
        --json benchmarks/hostile-before.json

Every case starts a fresh server on 127.0.0.1 (indilib's telescope and CCD
simulators unless it needs other drivers), with its default limits, and
ends every process it started.  A case that runs past its time limit is
stopped and reported as such.  See docs/benchmarks.rst.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIG_BLOB_DRIVER = os.path.join(HERE, "big_blob_driver.py")
NUMBERS_DRIVER = os.path.join(HERE, "blob_driver.py")
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
INDISERV_CLI = "import sys; from indiserv.cli import main; sys.argv[0] = 'indiserv'; main()"
SIMULATORS = ["indi_simulator_telescope", "indi_simulator_ccd"]
TELESCOPE, CCD = "Telescope Simulator", "CCD Simulator"
HELLO = b"<getProperties version='1.7'/>"
MB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- servers ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrapper(workdir: str, name: str, script: str, *args: str) -> str:
    """An executable that runs a Python driver script (servers take programs)."""
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec {sys.executable} {script} {' '.join(args)}\n")
    os.chmod(path, 0o755)
    return path


class Server:
    """
    One server under test, in a session of its own so that it and every
    driver it starts can be ended together.
    """

    def __init__(self, kind: str, root: str, workdir: str, drivers: list[str],
                 log_dir: str | None = None, expect: tuple[str, ...] = (TELESCOPE, CCD)):
        self.kind = kind
        self.port = free_port()
        self.log = os.path.join(workdir, f"{kind}-{self.port}.log")
        env = dict(os.environ, HOME=workdir,
                   PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        if kind == "indiserv" and log_dir:
            # The indiserver-compatible command (it listens on every interface).
            argv = [sys.executable, "-c", INDISERV_CLI, "-p", str(self.port), "-l", log_dir,
                    *drivers]
        elif kind == "indiserv":
            argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--logfile={self.log}",
                    "indiserver", "--port", str(self.port), "--host", "127.0.0.1", *drivers]
        elif kind == "indiserver":
            # A local socket of its own: by default every indiserver takes the same one.
            argv = ["indiserver", "-p", str(self.port), "-u", os.path.join(workdir, f"u{self.port}"),
                    *(["-l", log_dir] if log_dir else []), *drivers]
        else:
            raise ValueError(kind)
        self.stderr = open(self.log if argv[0] == "indiserver" or log_dir else os.devnull, "ab")
        self.process = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self.stderr,
                                        start_new_session=True)
        self.pid = self.process.pid
        deadline = time.monotonic() + 20
        while True:
            try:
                # Not a silent connection: indiserv 839c604 never frees the slot of one.
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(HELLO)
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{kind} did not start (log: {self.log})")
                time.sleep(0.05)
        if expect:  # wait until every driver has defined its device
            probe = Client(self.port)
            try:
                for device in expect:
                    defined = rb"<def\w+Vector[^>]*device=[\"']" + re.escape(device.encode())
                    if not probe.wait(defined, 15):
                        raise RuntimeError(f"{kind}: no definitions from {device!r}")
            finally:
                probe.close()
        self.idle_rss = self.memory("VmRSS")

    def memory(self, field: str = "VmHWM") -> float:
        """VmRSS (now) or VmHWM (peak) of the server process, in MB."""
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def log_tail(self, lines: int = 5) -> list[str]:
        """The last lines the server logged (for the reasons of what it did)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log) - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line[:300] for line in text.splitlines()[-lines:]]

    def cpu(self) -> float:
        """CPU seconds (user and system) the server process has used."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def children(self, name: str) -> list[int]:
        """Process ids of the server's children whose command line has C{name}."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if ppid == self.pid and name.encode() in cmdline:
                found.append(int(pid))
        return found

    def stop(self, grace: float = 10) -> None:
        """SIGTERM, then SIGKILL to the server and everything it started."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.stderr.close()


# -- clients ------------------------------------------------------------------


class Client:
    """
    A plain-socket INDI client.  With C{read}, a thread reads everything
    the server sends into C{data}, and L{wait} looks for patterns in it;
    without, nothing is ever read (a stuck client).  C{data} keeps the
    first C{keep} bytes, or with C{tail} only the last C{keep} (positions
    in it then mean nothing: wait from 0).
    """

    def __init__(self, port: int, hello: bytes = HELLO, read: bool = True,
                 rcvbuf: int | None = None, keep: int = 64 * MB, tail: bool = False):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.address = self.sock.getsockname()
        self.data = bytearray()
        self.received = 0
        self.keep = keep
        self.tail = tail
        self.closed = False
        self.closed_at: float | None = None
        self.changed = threading.Condition()
        if hello:
            self.sock.sendall(hello)
        if read:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                chunk = b""
            with self.changed:
                if not chunk:
                    self.closed = True
                    self.closed_at = time.monotonic()
                    self.changed.notify_all()
                    return
                self.received += len(chunk)
                if self.tail:
                    self.data = (self.data + chunk)[-self.keep:]
                elif len(self.data) < self.keep:
                    self.data += chunk
                self.changed.notify_all()

    def send(self, data: bytes) -> bool:
        """Send C{data}; False if the server has hung up."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def mark(self) -> int:
        """A position in what was received: L{wait} from here on."""
        with self.changed:
            return len(self.data)

    def wait(self, pattern: bytes, timeout: float, start: int = 0) -> re.Match | None:
        """The first match of C{pattern} after C{start}, waiting C{timeout} s."""
        regex = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = regex.search(self.data, start)
                if found or self.closed:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)

    def wait_closed(self, timeout: float) -> bool:
        with self.changed:
            self.changed.wait_for(lambda: self.closed, timeout)
            return self.closed

    def messages(self, start: int = 0) -> list[str]:
        """The text of every C{message} element received."""
        with self.changed:
            data = bytes(self.data[start:])
        return [m.decode("utf-8", "replace")
                for m in re.findall(rb"<message\b[^>]*\bmessage=[\"']([^\"']*)", data)]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def hung_up(client: Client, timeout: float = 5, cap: float = 15) -> bool:
    """
    Whether the server has cut off a client that never read: read what it
    had queued until the end (cut), or C{timeout} s of silence or C{cap} s
    in all (not cut).
    """
    client.sock.settimeout(timeout)
    deadline = time.monotonic() + cap
    try:
        while client.sock.recv(1 << 20):
            if time.monotonic() > deadline:
                return False
        return True
    except (socket.timeout, BlockingIOError):
        return False
    except OSError:
        return True


def tag(element: bytes) -> dict[str, str]:
    """The attributes of a start tag."""
    return {k.decode(): v.decode() for k, v in
            re.findall(rb"""([\w:-]+)\s*=\s*["']([^"']*)["']""", element)}


def vector(device: str, name: str, kind: bytes = rb"set\w+Vector") -> bytes:
    """A pattern for a start tag of property C{device}.C{name} (any attribute order)."""
    q = rb"[\"']"
    return (rb"<" + kind + rb"(?=[^>]*\bdevice=" + q + re.escape(device.encode()) + q
            + rb")(?=[^>]*\bname=" + q + re.escape(name.encode()) + q + rb")[^>]*>")


def new_switch(device: str, name: str, element: str) -> bytes:
    return (f"<newSwitchVector device='{device}' name='{name}'>"
            f"<oneSwitch name='{element}'>On</oneSwitch></newSwitchVector>").encode()


class Pinger(threading.Thread):
    """
    The bystander: an honest client that pings the server about every
    10 ms, one ping at a time, and records when each was sent and how long
    its reply took.
    """

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.client = Client(port)
        self.times: list[tuple[float, float]] = []  # (sent, seconds to the reply)
        self.outstanding: float | None = None
        self.stopping = False
        self.error = ""
        self.start()

    def run(self) -> None:
        uid = 0
        while not self.stopping:
            uid += 1
            start = self.client.mark()
            sent = time.monotonic()
            self.outstanding = sent
            if not self.client.send(f'<pingRequest uid="p{uid}"/>'.encode()):
                self.error = "bystander cut off"
                return
            reply = rb"<pingReply[^>]*uid=[\"']p%d[\"']" % uid
            while not self.stopping and not self.client.wait(reply, 0.2, start):
                if self.client.closed:
                    self.error = "bystander cut off"
                    return
            if self.stopping:
                return
            self.times.append((sent, time.monotonic() - sent))
            self.outstanding = None
            with self.client.changed:  # keep only the tail: pings are all it reads
                if len(self.client.data) > MB:
                    del self.client.data[:]
            time.sleep(0.01)

    def calm(self, after: float, seconds: float = 1.0, cap: float = 30.0) -> bool:
        """
        Wait until every reply to pings sent after C{after} over the last
        C{seconds} came within 100 ms (the attack's effect is over), at
        most C{cap} s from now.
        """
        deadline = time.monotonic() + cap
        while time.monotonic() < deadline:
            if self.error:
                return False
            recent = [(s, d) for s, d in self.times if s > after]
            if recent and recent[-1][0] - recent[0][0] >= seconds:
                window = [d for s, d in recent if s >= recent[-1][0] - seconds]
                if max(window) < 0.1 and self.outstanding is None:
                    return True
            time.sleep(0.05)
        return False

    def stats(self, since: float) -> dict[str, Any]:
        """Max and p99 delay (ms) of pings sent since C{since}, and answered."""
        delays = sorted(d for s, d in self.times if s >= since)
        unanswered = 0.0
        if self.outstanding is not None and self.outstanding >= since:
            unanswered = time.monotonic() - self.outstanding  # still waiting: a lower bound
            delays.append(unanswered)
            delays.sort()
        if not delays:
            return {"ping_max_ms": None, "ping_p99_ms": None, "pings": 0}
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        return {"ping_max_ms": round(delays[-1] * 1000, 1), "ping_p99_ms": round(p99 * 1000, 1),
                "pings": len(delays), "unanswered_ms": round(unanswered * 1000, 1) or None,
                "bystander_error": self.error or None}

    def stop(self) -> None:
        self.stopping = True
        self.join(2)
        self.client.close()


class Case:
    """
    What one case has running: its server, its clients and the bystander,
    all ended by L{close}.
    """

    def __init__(self, kind: str, root: str, workdir: str, drivers: list[str] | None = None,
                 bystander: bool = True, **server_options: Any):
        self.kind = kind
        self.workdir = workdir
        self.clients: list[Client] = []
        self.servers: list[Server] = []
        self.pinger: Pinger | None = None
        self.log_dir: str | None = server_options.get("log_dir")
        self.server_args = (root, drivers or SIMULATORS)
        self.server_options = server_options
        self.server = self.start_server(root, drivers or SIMULATORS, **server_options)
        if bystander:
            self.pinger = Pinger(self.server.port)
            # The bystander answers before the attack starts, or it is no baseline.
            if not self.pinger.calm(after=0, seconds=0.3, cap=10):
                raise RuntimeError(f"{kind} does not answer pingRequest")
        self.attack()

    def start_server(self, root: str, drivers: list[str], **options: Any) -> Server:
        server = Server(self.kind, root, self.workdir, drivers, **options)
        self.servers.append(server)
        return server

    def client(self, *args: Any, **kwargs: Any) -> Client:
        client = Client(self.server.port, *args, **kwargs)
        self.clients.append(client)
        return client

    def attack(self) -> float:
        """The attack starts now: the bystander's figures count from here."""
        self.began = time.monotonic()
        self.cpu_at_attack = self.server.cpu()
        return self.began

    def measures(self) -> dict[str, Any]:
        """
        The bystander's figures since the attack began, once it is calm
        again (or 5 s from now), and the server's peak RSS.
        """
        if self.pinger:
            self.pinger.calm(after=self.began, seconds=0.5, cap=5)
        figures = self.pinger.stats(self.began) if self.pinger else {
            "ping_max_ms": None, "ping_p99_ms": None}
        figures["peak_rss_mb"] = round(self.server.memory("VmHWM"), 1)
        figures["server_alive"] = self.server.process.poll() is None
        if figures["server_alive"]:
            figures["server_cpu_s"] = round(self.server.cpu() - self.cpu_at_attack, 2)
        figures["idle_rss_mb"] = round(self.server.idle_rss, 1)
        return figures

    def close(self) -> None:
        if self.pinger:
            self.pinger.stop()
        for client in self.clients:
            client.close()
        for server in self.servers:
            server.stop(grace=3)


# -- cases --------------------------------------------------------------------
#
# Each takes its Case and returns (outcome, one-line summary); the bystander
# and memory figures are added by run_case.


def exposures(case: Case, honest: Client, seconds: float) -> tuple[int, float]:
    """
    Connect the CCD simulator and take 0.01 s exposures back to back for
    C{seconds}: how many finished, and the longest wait for one.
    """
    honest.send(new_switch(CCD, "CONNECTION", "CONNECT"))
    if not honest.wait(vector(CCD, "CCD_EXPOSURE", rb"def\w+Vector"), 10):
        raise RuntimeError("the CCD simulator did not connect")
    done, longest = 0, 0.0
    end = time.monotonic() + seconds
    exposure = vector(CCD, "CCD_EXPOSURE")
    while time.monotonic() < end:
        start = honest.mark()
        begin = time.monotonic()
        honest.send(f"<newNumberVector device='{CCD}' name='CCD_EXPOSURE'><oneNumber"
                    f" name='CCD_EXPOSURE_VALUE'>0.01</oneNumber></newNumberVector>".encode())
        busy = False
        while True:
            found = honest.wait(exposure, end + 5 - time.monotonic(), start)
            if not found:
                return done, max(longest, time.monotonic() - begin)
            start = found.end()
            state = tag(found.group()).get("state")
            if state == "Busy":
                busy = True
            elif busy and state in ("Ok", "Idle"):
                break
            elif state == "Alert":
                raise RuntimeError("exposure failed (Alert)")
        longest = max(longest, time.monotonic() - begin)
        done += 1
    return done, longest


def exposures_alone(case: Case) -> tuple[dict, str]:
    """The honest client of L{stuck_blob_client} on its own: its speed to compare with."""
    seconds = 15
    honest = case.client()
    case.attack()
    done, longest = exposures(case, honest, seconds)
    return ({"exposures": done, "seconds": seconds, "longest_wait_s": round(longest, 2)},
            f"{done} exposures in {seconds} s, longest {longest:.1f} s")


def stuck_blob_client(case: Case) -> tuple[dict, str]:
    """A client enables BLOBs and never reads; another takes exposures."""
    seconds = 15
    case.client(HELLO + b"<enableBLOB>Also</enableBLOB>", read=False, rcvbuf=4096)
    stuck = case.clients[-1]
    honest = case.client()
    case.attack()
    done, longest = exposures(case, honest, seconds)
    cut = hung_up(stuck)
    return ({"exposures": done, "seconds": seconds, "longest_wait_s": round(longest, 2),
             "stuck_client_cut": cut},
            f"{done} exposures in {seconds} s, longest {longest:.1f} s, stuck client "
            + ("cut" if cut else "not cut"))


def client_claims_device(case: Case) -> tuple[dict, str]:
    """A client defines devices of its own, and one whose driver is down."""
    other = case.client()
    evil = case.client()
    other.wait(vector(CCD, "CONNECTION", rb"def\w+Vector"), 5)
    case.attack()
    evil.send(b'<defTextVector device="Fake Mount" name="FAKE" label="Fake" group="Main"'
              b' state="Idle" perm="ro" timeout="0"><defText name="T" label="T">evil</defText>'
              b'</defTextVector><message device="Fake Mount" message="x"/>')
    fake_def = bool(other.wait(vector("Fake Mount", "FAKE", rb"def\w+Vector"), 2))
    fake_message = bool(other.wait(rb"<message[^>]*device=[\"']Fake Mount", 0.5))
    evil_cut = evil.closed
    # Now the telescope's own device, while its driver is down.
    pids = case.server.children("indi_simulator_telescope")
    if len(pids) != 1:
        raise RuntimeError(f"telescope driver processes: {pids}")
    start = other.mark()
    os.kill(pids[0], signal.SIGKILL)
    killed = time.monotonic()
    evil = case.client()
    time.sleep(0.2)
    evil.send(f'<defNumberVector device="{TELESCOPE}" name="EQUATORIAL_EOD_COORD" label="Eq"'
              f' group="Main" state="Idle" perm="rw" timeout="60">'
              f'<defNumber name="RA" label="RA" format="%g" min="0" max="24" step="0">12.3456'
              f'</defNumber><defNumber name="DEC" label="Dec" format="%g" min="-90" max="90"'
              f' step="0">-65.4321</defNumber></defNumberVector>'
              f'<setNumberVector device="{TELESCOPE}" name="EQUATORIAL_EOD_COORD" state="Ok">'
              f'<oneNumber name="RA">12.3456</oneNumber><oneNumber name="DEC">-65.4321'
              f'</oneNumber></setNumberVector>'.encode())
    fake_coords = bool(other.wait(rb"12\.3456", 2, start))
    # The real driver comes back: does a client's CONNECT reach it?
    back = other.wait(vector(TELESCOPE, "CONNECTION", rb"def\w+Vector"), 6, start)
    back_after = round(time.monotonic() - killed, 1) if back else None
    restarted = [p for p in case.server.children("indi_simulator_telescope") if p != pids[0]]
    connected = False
    if restarted:  # the driver runs again, whether or not clients were told
        start = other.mark()
        other.send(new_switch(TELESCOPE, "CONNECTION", "CONNECT"))
        on = rb"<oneSwitch[^>]*name=[\"']CONNECT[\"'][^>]*>\s*On"
        deadline = time.monotonic() + 5
        while not connected and time.monotonic() < deadline:
            found = other.wait(vector(TELESCOPE, "CONNECTION"), deadline - time.monotonic(), start)
            if not found:
                break
            end = other.wait(rb"</setSwitchVector>", 2, found.end())
            body = bytes(other.data[found.end():end.start() if end else found.end()])
            connected = bool(re.search(on, body))
            start = found.end()
    outcome = {"fake_device_def_seen": fake_def, "fake_device_message_seen": fake_message,
               "claimer_cut": evil_cut, "fake_coords_seen": fake_coords,
               "driver_restarted": bool(restarted), "driver_defs_seen_after_s": back_after,
               "connect_after_restart": connected}
    return outcome, (f"Fake Mount def {'seen' if fake_def else 'not seen'}, message "
                     f"{'seen' if fake_message else 'not seen'}; fake coords "
                     f"{'seen' if fake_coords else 'not seen'}; CONNECT after restart "
                     f"{'works' if connected else 'FAILS'}")


def client_server_notice(case: Case) -> tuple[dict, str]:
    """A client sends a message with no device: a notice from the server?"""
    other = case.client()
    evil = case.client()
    other.wait(vector(CCD, "CONNECTION", rb"def\w+Vector"), 5)
    case.attack()
    evil.send(b'<message message="fake notice"/>')
    seen = bool(other.wait(rb"fake notice", 2))
    return {"notice_seen_by_others": seen}, "others " + ("get it" if seen else "do not get it")


def daylog_flood(case: Case) -> tuple[dict, str]:
    """2,000 messages with 2,000 different dates: one log file each?"""
    evil = case.client()
    case.attack()
    lines = []
    for day in range(2000):
        date = time.strftime("%Y-%m-%d", time.gmtime(946684800 + day * 86400))  # from 2000-01-01
        lines.append(f'<setNumberVector device="X" name="Y" state="Ok" message="flood"'
                     f' timestamp="{date}T00:00:00"><oneNumber name="Z">1</oneNumber>'
                     f'</setNumberVector>')
    evil.send("".join(lines).encode())
    evil.send(b'<pingRequest uid="end"/>')
    evil.wait(rb"<pingReply[^>]*end", 10)
    time.sleep(1)
    directory = case.log_dir
    files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
    size = sum(os.path.getsize(f) for f in files)
    return ({"files": len(files), "bytes": size},
            f"{len(files)} files, {size:,} bytes in the log directory")


def idle_lockout(case: Case) -> tuple[dict, str]:
    """
    10 idle connections, then (on a fresh server) 10 that send a byte every
    2 s: is an 11th served?  And once the idle ones hang up?
    """
    outcome: dict[str, Any] = {}
    for variant in ("idle", "trickle"):
        if variant == "trickle":  # a server of its own: the first may be left full
            case.server = case.start_server(*case.server_args, **case.server_options)
        time.sleep(0.5)  # the server has seen the start-up probe go
        # Ten connections the server keeps: one it refused is replaced.
        idle: list[Client] = []
        for _ in range(5):
            idle += [case.client(b"") for _ in range(10 - len(idle))]
            time.sleep(0.5)
            idle = [client for client in idle if not client.closed]
            if len(idle) == 10:
                break
        stop = threading.Event()
        if variant == "trickle":
            def trickle() -> None:
                for byte in HELLO * 10:
                    for client in idle:
                        client.send(bytes([byte]))
                    if stop.wait(2):
                        return
            threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1)
        begin = time.monotonic()
        served_after = None
        while time.monotonic() - begin < 10:
            probe = case.client()
            if probe.wait(rb"<def\w+Vector", min(2, 10 - (time.monotonic() - begin))) \
                    and not probe.closed:
                served_after = round(time.monotonic() - begin, 2)
                break
            probe.close()
            time.sleep(0.2)
        stop.set()
        held = sum(not client.closed for client in idle)
        cut = [c.closed_at - begin for c in idle if c.closed_at is not None]
        for client in idle:
            client.close()
        outcome[variant] = {"served_within_2s": served_after is not None and served_after <= 2,
                            "served_after_s": served_after, "idle_held_at_end": held,
                            "first_idle_cut_s": round(min(cut), 1) if cut else None}
        time.sleep(1)
        probe = case.client()
        outcome[variant]["served_after_they_left"] = bool(
            probe.wait(rb"<def\w+Vector", 2)) and not probe.closed
    def said(o: dict) -> str:
        return f"served in {o['served_after_s']} s" if o["served_after_s"] is not None \
            else "not served in 10 s"
    left = ", ".join(v for v in outcome if not outcome[v]["served_after_they_left"])
    return outcome, (f"idle: {said(outcome['idle'])}; trickle: {said(outcome['trickle'])}"
                     + (f"; still refused after the {left} ones left" if left else ""))


def flood(case: Case, data: bytes, then_close: bool) -> dict:
    """
    Send C{data} from one client (which reads what it is sent) and wait
    until the server has dealt with it: the client's own ping is answered,
    or, with C{then_close}, the client hangs up and the bystander is calm.
    """
    evil = case.client()
    evil.wait(rb"<def\w+Vector", 5)
    began = case.attack()
    sent = evil.send(data)
    sent_after = time.monotonic() - began
    # The flood may still be in the socket buffers: the answer to a ping
    # sent after it says the server has read it all.  (Hanging up before
    # that would let the kernel discard what the server had not read.)
    evil.send(b'<pingRequest uid="end"/>')
    read_all = bool(evil.wait(rb"<pingReply[^>]*end", 30))
    cut = evil.closed or not sent  # before the client's own hang-up
    if then_close:
        evil.close()
    calm = case.pinger.calm(after=time.monotonic(), cap=30)
    return {"bytes": len(data), "send_s": round(sent_after, 2), "read_all": read_all,
            "attacker_cut": cut, "calm_again": calm, "total_s": round(time.monotonic() - began, 1)}


def freeze_enableblob(case: Case) -> tuple[dict, str]:
    """50,000 per-property enableBLOBs, then device-wide Nevers for them."""
    entries = b"".join(b'<enableBLOB device="d%d" name="p">Also</enableBLOB>' % i
                       for i in range(50000))
    nevers, i = [], 0
    while sum(map(len, nevers)) < 89 * 1024:
        nevers.append(b'<enableBLOB device="d%d">Never</enableBLOB>' % i)
        i += 1
    outcome = flood(case, entries + b"".join(nevers), then_close=False)
    return outcome, f"{outcome['bytes'] / MB:.1f} MB handled in {outcome['total_s']} s" + (
        ", attacker cut" if outcome["attacker_cut"] else "")


def freeze_messages(case: Case) -> tuple[dict, str]:
    """Messages for 100,000 device names, then the client hangs up."""
    data = b"".join(b'<message device="d%d" message="x"/>' % i for i in range(100000))
    outcome = flood(case, data, then_close=True)
    return outcome, f"{outcome['bytes'] / MB:.1f} MB, calm {outcome['total_s']} s after start" + (
        ", attacker cut" if outcome["attacker_cut"] else "")


def freeze_attributes(case: Case) -> tuple[dict, str]:
    """One element with 300,000 attributes."""
    data = (b"<getProperties version='1.7'"
            + b"".join(b' a%d="x"' % i for i in range(300000)) + b"/>")
    outcome = flood(case, data, then_close=False)
    return outcome, f"{outcome['bytes'] / MB:.1f} MB in one tag, {outcome['total_s']} s" + (
        ", attacker cut" if outcome["attacker_cut"] else "")


def long_tag(case: Case) -> tuple[dict, str]:
    """A 4 MB tag name, then one more byte of it every millisecond for 10 s."""
    evil = case.client(b"")
    case.attack()
    evil.send(b"<" + b"a" * (4 * MB))
    cpu = case.server.cpu()
    begin = time.monotonic()
    sends = 0
    cut_after = None
    while time.monotonic() - begin < 10:
        if not evil.send(b"a") or evil.closed:
            cut_after = round(time.monotonic() - begin, 2)
            break
        sends += 1
        time.sleep(0.001)
    time.sleep(max(0.0, 10 - (time.monotonic() - begin)))
    used = case.server.cpu() - cpu
    return ({"cpu_s_in_10s": round(used, 2), "bytes_sent_after": sends,
             "attacker_cut_after_s": cut_after},
            f"server CPU {used:.2f} s in 10 s" + (
                f", attacker cut after {cut_after} s" if cut_after is not None else ""))


def stop_with_stuck_client(case: Case) -> tuple[dict, str]:
    """A stuck BLOB client while images flow; then SIGTERM the server."""
    case.client(HELLO + b"<enableBLOB>Also</enableBLOB>", read=False, rcvbuf=4096)
    honest = case.client()
    case.attack()
    done, _ = exposures(case, honest, 3)
    measures = case.measures()
    server = case.server
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(30)
        took = round(time.monotonic() - sent, 2)
    except subprocess.TimeoutExpired:
        took = None
    case.stopped_measures = measures
    return ({"exposures_before": done, "exit_s": took if took is not None else ">30"},
            f"exited {took} s after SIGTERM" if took is not None
            else "still running 30 s after SIGTERM")


def memory_big_blob(case: Case) -> tuple[dict, str]:
    """One 250 MB BLOB from a driver to one client that reads it."""
    reader = case.client(HELLO + b"<enableBLOB device='Big'>Also</enableBLOB>", keep=4096,
                         tail=True)
    if not reader.wait(vector("Big", "START", rb"def\w+Vector"), 10):
        raise RuntimeError("no START from the big BLOB driver")
    began = case.attack()
    reader.send(new_switch("Big", "START", "START"))
    reader.wait(rb"message=[\"']done", 90)
    seconds = time.monotonic() - began
    got = reader.received
    rss = case.server.memory("VmHWM")
    return ({"received_mb": round(got / 1e6, 1), "seconds": round(seconds, 1),
             "reader_cut": reader.closed,
             "peak_over_idle_mb": round(rss - case.server.idle_rss, 1)},
            f"{got / 1e6:.0f} MB read in {seconds:.1f} s, peak RSS {rss:.0f} MB"
            + (", reader cut" if reader.closed else ""))


def memory_queue_flood(case: Case) -> tuple[dict, str]:
    """300,000 tiny updates queued for a client that never reads."""
    stuck = case.client(read=False, rcvbuf=4096)
    reader = case.client(keep=4096)
    if not reader.wait(vector("Bench", "START", rb"def\w+Vector"), 10):
        raise RuntimeError("no START from the numbers driver")
    time.sleep(0.5)
    base = case.server.memory("VmRSS")
    began = case.attack()
    at = reader.received
    reader.send(new_switch("Bench", "START", "START"))
    # The reader sees everything (it is never behind): its bytes are what the
    # stuck client has queued for it, less the little its socket took.
    last, still = reader.received, time.monotonic()
    while time.monotonic() - still < 2 and time.monotonic() - began < 30:
        time.sleep(0.1)
        if reader.received != last:
            last, still = reader.received, time.monotonic()
    queued = reader.received - at
    rss = case.server.memory("VmRSS")
    cut = hung_up(stuck, timeout=2)
    growth = rss - base
    counted = queued >= MB  # else the ratio means nothing
    return ({"queued_mb": round(queued / MB, 1), "rss_growth_mb": round(growth, 1),
             "ratio": round(growth / (queued / MB), 1) if counted else None,
             "stuck_cut": cut, "seconds": round(time.monotonic() - began, 1)},
            f"{queued / MB:.1f} MB queued, RSS +{growth:.0f} MB"
            + (f" ({growth / (queued / MB):.1f}x)" if counted else "")
            + (", stuck client cut" if cut else ""))


def memory_getproperties_flood(case: Case) -> tuple[dict, str]:
    """64 KB writes of tiny getProperties, back to back, for 5 s."""
    evil = case.client(keep=4096)
    chunk = b'<getProperties device="x" name="y"/>' * (65536 // 36)
    began = case.attack()
    sent = 0
    while time.monotonic() - began < 5:
        if not evil.send(chunk):
            break
        sent += len(chunk)
    seconds = time.monotonic() - began
    evil.close()
    calm = case.pinger.calm(after=time.monotonic(), cap=20)
    return ({"sent_mb": round(sent / MB, 1), "send_s": round(seconds, 1), "calm_again": calm,
             "attacker_cut": evil.closed},
            f"{sent / MB:.0f} MB of getProperties in {seconds:.1f} s"
            + ("" if calm else ", bystander not calm 20 s later"))


def clash_notice(case: Case) -> tuple[dict, str]:
    """Two drivers define the same device: what are clients told?"""
    watcher = case.client()
    other = case.client()
    watcher.wait(vector(TELESCOPE, "CONNECTION", rb"def\w+Vector"), 5)
    case.attack()
    time.sleep(1)
    # The clash happened at start, with nobody connected: make each copy
    # start again (both servers restart it) while clients watch.  One of
    # the two restarts finds the other copy serving the device, whichever
    # of them served it first.
    pids = sorted(case.server.children("indi_simulator_telescope"))
    if len(pids) != 2:
        raise RuntimeError(f"telescope driver processes: {pids}")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        time.sleep(3.5)
    texts = watcher.messages() + other.messages()
    addresses = [f"{host}:{port}" for host, port in (watcher.address, other.address)]
    mentions = sorted({a for a in addresses for t in texts if a in t or a.split(":")[1] in t})
    clash = [t for t in texts if "Telescope" in t or "already" in t.lower()
             or "clash" in t.lower() or "duplicate" in t.lower()]
    return ({"messages": texts[:20], "clash_messages": clash[:5],
             "mentions_client_address": bool(mentions),
             "server_log": case.server.log_tail(12)},
            (f"told: {clash[0][:70]!r}" if clash else "no message about it")
            + (", names a client's address" if mentions else ""))


#: name: (function, time limit in s, drivers (None: the simulators), extra Case options)
CASES: dict[str, tuple[Callable[[Case], tuple[dict, str]], int, Any, dict]] = {
    "exposures_alone": (exposures_alone, 45, None, {}),
    "stuck_blob_client": (stuck_blob_client, 45, None, {}),
    "client_claims_device": (client_claims_device, 40, None, {}),
    "client_server_notice": (client_server_notice, 20, None, {}),
    "daylog_flood": (daylog_flood, 30, None, {"log_dir": True}),
    "idle_lockout": (idle_lockout, 45, None, {"bystander": False}),
    "freeze_enableblob": (freeze_enableblob, 60, None, {}),
    "freeze_messages": (freeze_messages, 60, None, {}),
    "freeze_attributes": (freeze_attributes, 60, None, {}),
    "long_tag": (long_tag, 30, None, {}),
    "stop_with_stuck_client": (stop_with_stuck_client, 60, None, {}),
    "memory_big_blob": (memory_big_blob, 120, "big", {}),
    "memory_queue_flood": (memory_queue_flood, 90, "numbers", {}),
    "memory_getproperties_flood": (memory_getproperties_flood, 45, None, {}),
    "clash_notice": (clash_notice, 30, "two telescopes", {}),
}
#: Names for groups of cases, as the issue numbers them.
GROUPS = {"freezes": ["freeze_enableblob", "freeze_messages", "freeze_attributes"],
          "memory": ["memory_big_blob", "memory_queue_flood", "memory_getproperties_flood"]}


class CaseTimeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout()


def run_case(name: str, kind: str, root: str, workdir: str) -> dict[str, Any]:
    """Start a server for case C{name}, run it within its time limit, clean up."""
    function, limit, drivers, options = CASES[name]
    options = dict(options)
    expect: tuple[str, ...] = (TELESCOPE, CCD)
    if drivers == "big":
        drivers, expect = [wrapper(workdir, "big_blob_driver", BIG_BLOB_DRIVER)], ("Big",)
    elif drivers == "numbers":
        drivers, expect = [wrapper(workdir, "numbers_driver", NUMBERS_DRIVER, "--blobs", "0",
                                   "--numbers", "300000")], ("Bench",)
    elif drivers == "two telescopes":
        drivers, expect = ["indi_simulator_telescope", "indi_simulator_telescope"], (TELESCOPE,)
    log_dir = None
    if options.pop("log_dir", False):
        log_dir = tempfile.mkdtemp(prefix="daylog-", dir=workdir)
    result: dict[str, Any] = {"case": name, "server": kind}
    began = time.monotonic()
    case = None
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        case = Case(kind, root, workdir, drivers, log_dir=log_dir, expect=expect, **options)
        outcome, summary = function(case)
        result.update(getattr(case, "stopped_measures", None) or case.measures())
        result["outcome"], result["summary"] = outcome, summary
    except CaseTimeout:
        result["error"] = f"time limit ({limit} s) reached"
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        signal.alarm(0)
        if case is not None:
            if "error" in result:  # what was measured until it failed
                try:
                    result.update({k: v for k, v in case.measures().items() if k not in result})
                except Exception:
                    pass
            result["server_log_tail"] = case.server.log_tail()
            case.close()
    result["seconds"] = round(time.monotonic() - began, 1)
    if result.get("server_alive") is False:
        result["summary"] = result.get("summary", "") + "; SERVER DIED"
    if "error" in result:
        result["summary"] = "ERROR: " + result["error"]
    return result


def describe(root: str) -> dict[str, str]:
    """Which indiserv C{root} runs (its import path and git commit)."""
    env = dict(os.environ, PYTHONPATH=root)
    found = subprocess.run([sys.executable, "-c", "import indiserv; print(indiserv.__file__)"],
                           env=env, cwd=tempfile.gettempdir(), capture_output=True,
                           text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "indiserv"],
                           capture_output=True, text=True).stdout.strip()
    return {"root": root, "imports": found, "commit": commit + (" (modified)" if dirty else "")}


def table(results: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:,.1f}" if isinstance(value, float) else str(value)
    rows = [("case", "server", "ping max", "ping p99", "peak RSS", "outcome")]
    for r in results:
        rows.append((r["case"], r["server"], cell(r.get("ping_max_ms")), cell(r.get("ping_p99_ms")),
                     cell(r.get("peak_rss_mb")), r.get("summary", "")))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row[:5], widths))) + "  " + row[5] for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 7)
    return "\n".join(lines) + "\n(ping in ms, RSS in MB)"


def main() -> int:
    parser = argparse.ArgumentParser(description="INDI servers under hostile peers")
    parser.add_argument("--server", action="append", choices=["indiserv", "indiserver"],
                        help="servers to measure (repeatable; default both)")
    parser.add_argument("--case", action="append",
                        choices=sorted([*CASES, *GROUPS]),
                        help="cases to run (repeatable; default all)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--indiserv-root", default=ROOT,
                        help="the source tree indiserv is run from (default: this repository)")
    args = parser.parse_args()
    servers = args.server or ["indiserv", "indiserver"]
    names = []
    for name in args.case or list(CASES):
        for member in GROUPS.get(name, [name]):
            if member not in names:
                names.append(member)
    root = os.path.abspath(args.indiserv_root)
    missing = [p for p in ["indi_simulator_telescope", "indi_simulator_ccd"]
               + (["indiserver"] if "indiserver" in servers else []) if not shutil.which(p)]
    if missing:
        print(f"not found: {', '.join(missing)} (Debian: apt-get install indi-bin)", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="indiserv-hostile-") as workdir:
        for name in names:
            for kind in servers:
                result = run_case(name, kind, root, workdir)
                print(f"{name:28} {kind:10} {result['seconds']:5.1f} s  {result.get('summary', '')}",
                      file=sys.stderr, flush=True)
                results.append(result)
    print(table(results))
    if args.json:
        report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "machine": {"python": platform.python_version(), "platform": platform.platform(),
                              "cpus": os.cpu_count()},
                  "indiserv": describe(root), "results": results}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
