"""
Load: many clients, many connections, many driver starts, over real TCP and
real processes; afterwards nothing may be left behind.

The memory bound asserted here (RSS_GROWTH_BOUND) is documented in
docs/limits.rst: repeated load must not make the server grow by more than
that.
"""

from __future__ import annotations

import re
import sys

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SkipTest, TestCase

from indiserv import IndiServer

from .support import (
    child_processes,
    connect_client,
    open_fds,
    peak_rss_bytes,
    rss_bytes,
    serve,
)
from .test_link import BLOB_DRIVER, START

RSS_GROWTH_BOUND = 20 * 1024 * 1024


class LoadTestCase(TestCase):
    timeout = 120

    def start_server(self, *drivers: list[str], **kwargs):
        return serve(self, *drivers, **kwargs)


class ManyClientsTests(LoadTestCase):
    @defer.inlineCallbacks
    def test_fifty_clients_receive_stream(self):
        """Fifty clients at once each receive every update of a driver's stream."""
        server = yield self.start_server(
            [sys.executable, BLOB_DRIVER, "--blobs", "2", "--size", "65536", "--numbers", "2000"],
            maxconnections=50,
        )
        clients = yield defer.gatherResults([connect_client(server.port) for _ in range(50)])
        for client in clients:
            self.addCleanup(client.transport.loseConnection)
            client.say(b"<getProperties version='1.7'/><enableBLOB device='Bench'>Also</enableBLOB>")
        yield defer.gatherResults([c.wait_for(lambda m: m.name == "START") for c in clients])
        clients[0].say(START)
        done = lambda m: m.tag == "message" and m.attrs.get("message") == "done"
        yield defer.gatherResults([c.wait_for(done) for c in clients])
        for client in clients:
            self.assertEqual(len([m for m in client.received if m.tag == "setNumberVector"]), 2000)
            self.assertEqual(len([m for m in client.received if m.blob]), 2)

    @defer.inlineCallbacks
    def test_thousand_connections_leave_nothing_behind(self):
        """1000 connect/disconnect cycles leave no client, file descriptor or memory behind."""
        server = yield self.start_server(maxconnections=50)
        yield self.cycle(server, 100)  # warm up allocator and caches
        fds, rss = open_fds(), rss_bytes()
        yield self.cycle(server, 1000)
        self.assertEqual(len(server.router.clients), 0)
        self.assertEqual(open_fds(), fds)
        self.assertLess(rss_bytes() - rss, RSS_GROWTH_BOUND)

    @defer.inlineCallbacks
    def cycle(self, server: IndiServer, count: int):
        for start in range(0, count, 25):
            clients = yield defer.gatherResults(
                [connect_client(server.port) for _ in range(min(25, count - start))]
            )
            for client in clients:
                client.say(b"<pingRequest uid='1'/>")
            yield defer.gatherResults([c.wait_for(lambda m: m.tag == "pingReply") for c in clients])
            for client in clients:
                client.transport.loseConnection()
            yield defer.gatherResults([c.lost for c in clients])
        # The server side notices each close within a reactor turn or two.
        while server.router.clients:
            yield deferLater(0.01)


class MidMessageTests(LoadTestCase):
    @defer.inlineCallbacks
    def test_client_leaves_in_middle_of_blob_it_sends(self):
        """A client that closes half-way through sending a BLOB costs nothing and harms no one."""
        server = yield self.start_server([sys.executable, BLOB_DRIVER, "--blobs", "1", "--size", "1000"])
        quitter, stayer = yield defer.gatherResults([connect_client(server.port), connect_client(server.port)])
        self.addCleanup(stayer.transport.loseConnection)
        quitter.say(
            b"<newBLOBVector device='Bench' name='FRAME'><oneBLOB name='FRAME' size='99'"
            b" format='.fits'>" + b"QUJD" * 50000
        )
        quitter.transport.loseConnection()
        yield quitter.lost
        stayer.say(b"<getProperties version='1.7'/>")
        yield stayer.wait_for(lambda m: m.name == "START")
        self.assertEqual(len(server.router.clients), 1)

    @defer.inlineCallbacks
    def test_client_leaves_in_middle_of_blob_it_receives(self):
        """A client that closes while a large BLOB is being written to it leaves the others served."""
        server = yield self.start_server(
            [sys.executable, BLOB_DRIVER, "--blobs", "5", "--size", str(4 * 1024 * 1024)]
        )
        quitter, stayer = yield defer.gatherResults([connect_client(server.port), connect_client(server.port)])
        self.addCleanup(stayer.transport.loseConnection)
        for client in (quitter, stayer):
            client.say(b"<getProperties version='1.7'/><enableBLOB device='Bench'>Also</enableBLOB>")
            yield client.wait_for(lambda m: m.name == "START")
        closer = _CloseOnFirstByte()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), closer)
        closer.transport.write(b"<getProperties version='1.7'/><enableBLOB device='Bench'>Also</enableBLOB>")
        quitter.dataReceived = lambda data: quitter.transport.abortConnection()
        stayer.say(START)
        yield stayer.wait_for(lambda m: m.tag == "message" and m.attrs.get("message") == "done")
        self.assertEqual(len([m for m in stayer.received if m.blob]), 5)
        yield quitter.lost
        yield closer.lost
        self.assertEqual(len(server.router.clients), 1)


class _CloseOnFirstByte(Protocol):
    """A client that hangs up as soon as anything arrives."""

    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.seen = 0

    def dataReceived(self, data: bytes) -> None:
        self.seen += len(data)
        if self.seen > 100_000:
            self.transport.abortConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class ManyDriversTests(LoadTestCase):
    @defer.inlineCallbacks
    def test_ten_drivers_started_and_stopped_repeatedly(self):
        """Ten drivers started and stopped three times leave no process, zombie, descriptor or timer."""
        yield self.run_drivers()  # the reactor sets up child handling once
        fds = open_fds()
        timers = set(reactor.getDelayedCalls())  # trial's own timeout among them
        running = []
        for _ in range(3):
            running.append((yield self.run_drivers()))
        self.assertEqual(running, [10, 10, 10])
        self.assertEqual(child_processes(), [])
        self.assertEqual(open_fds(), fds)
        self.assertEqual(
            [call for call in reactor.getDelayedCalls() if call.active() and call not in timers], []
        )

    @defer.inlineCallbacks
    def run_drivers(self):
        """Serve ten drivers until each has defined its device, then stop; fires with how many ran."""
        drivers = [
            [sys.executable, BLOB_DRIVER, "--device", f"Bench {i}", "--blobs", "0"]
            for i in range(10)
        ]
        server = yield self.start_server(*drivers)
        client = yield connect_client(server.port)
        client.say(b"<getProperties version='1.7'/>")
        for i in range(10):
            yield client.wait_for(lambda m, i=i: m.device == f"Bench {i}" and m.name == "START")
        running = len(child_processes())
        yield server.stopService()
        yield client.lost
        return running


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


def reset_peak_rss() -> None:
    """Start this process's peak resident memory (VmHWM) afresh from now."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError as e:
        raise SkipTest(f"cannot reset the peak resident memory: {e}")




class _Reader(Protocol):
    """A client that counts what it receives, keeps none of it, and tells when a pattern arrives."""

    def __init__(self) -> None:
        self.received = 0
        self._tail = b""
        self._pattern: re.Pattern[bytes] | None = None
        self._seen: defer.Deferred[None] | None = None

    def wait_for(self, pattern: bytes) -> defer.Deferred[None]:
        self._pattern = re.compile(pattern)
        self._seen = defer.Deferred()
        return self._seen

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        window = self._tail + data
        self._tail = data[-64:]
        if self._seen is not None and self._pattern.search(window):  # type: ignore[union-attr]
            seen, self._seen = self._seen, None
            seen.callback(None)


class BlobMemoryTests(LoadTestCase):
    @defer.inlineCallbacks
    def test_large_blob_costs_at_most_twice_its_size(self):
        """A 100 MB BLOB from a driver to a client grows the server's peak memory by under 2.5 times its size (it was 3)."""
        size = 75 * 1000 * 1000  # about 100 MB as base64
        server = yield self.start_server(
            [sys.executable, BLOB_DRIVER, "--blobs", "1", "--size", str(size), "--no-enclen"]
        )
        client = _Reader()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), client)
        self.addCleanup(client.transport.loseConnection)
        defined = client.wait_for(rb"<defSwitchVector")
        client.transport.write(
            b"<getProperties version='1.7'/><enableBLOB device='Bench'>Also</enableBLOB>"
        )
        yield defined
        done = client.wait_for(rb"""message=["']done["']""")
        reset_peak_rss()
        idle, before = rss_bytes(), client.received
        client.transport.write(START)
        yield done
        blob = client.received - before
        self.assertGreater(blob, 100 * 1000 * 1000)
        self.assertLess(peak_rss_bytes() - idle, 2.5 * blob)
