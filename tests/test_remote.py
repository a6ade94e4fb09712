"""
Tests for L{indiserv.remote}: servers linked to servers.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from indiserv import IndiServer
from indiserv.remote import RemoteProtocol, RemoteService, parse_remote
from indiserv.router import Router
from indiserv.wire import Parser

from .support import client_of, logged, serve
from .test_link import BLOB_DRIVER

SIMULATOR = "indiserv Simulator"
CONNECT = (
    b"<newSwitchVector device='indiserv Simulator' name='CONNECTION'>"
    b"<oneSwitch name='CONNECT'>On</oneSwitch></newSwitchVector>"
)


class ParseRemoteTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """indiserver's [device]@host[:port] forms, and plain host[:port]."""
        self.assertEqual(parse_remote("far"), (None, "far", 7624))
        self.assertEqual(parse_remote("far:7700"), (None, "far", 7700))
        self.assertEqual(parse_remote("@far"), (None, "far", 7624))
        self.assertEqual(parse_remote("CCD Simulator@far:1"), ("CCD Simulator", "far", 1))

    def test_bad_port(self) -> None:
        """A port that is not a number is refused."""
        self.assertRaises(ValueError, parse_remote, "far:x")


class _RefusingEndpoint:
    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        return defer.fail(ConnectionRefusedError())


class ReconnectTests(SynchronousTestCase):
    def test_backoff_schedule(self) -> None:
        """A refused remote is retried after about 1, 2, 4 ... s, never more than 60 s (plus jitter)."""
        clock = Clock()
        endpoint = _RefusingEndpoint()
        service = RemoteService(Router(clock=clock), endpoint, "far:7624", clock=clock)
        service.startService()
        self.addCleanup(service.stopService)
        delays = []
        for _ in range(9):
            (call,) = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        self.assertEqual(endpoint.attempts, 10)
        for delay, base in zip(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]):
            self.assertGreaterEqual(delay, base)
            self.assertLess(delay, base + 1)

    def test_server_keeps_running(self) -> None:
        """A refused remote leaves the server running (indiserver exits: indilib#1927)."""
        reactor = MemoryReactorClock()
        server = IndiServer(host="127.0.0.1", port=0, reactor=reactor)
        server.add_remote("127.0.0.1", 9)
        server.startService()
        self.assertTrue(server.running)
        server.stopService()


class ProbeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.router = Router(clock=self.clock)
        self.service = RemoteService(self.router, _RefusingEndpoint(), "far:7624", clock=self.clock)
        self.protocol = RemoteProtocol(self.service)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.transport.clear()

    def test_silent_remote_pinged_then_dropped(self) -> None:
        """A remote silent for two keepalive periods gets a pingRequest, and is dropped if that goes unanswered."""
        self.clock.advance(30)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(30)
        (ping,) = Parser().feed(self.transport.value())
        self.assertEqual(ping.tag, "pingRequest")
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(30)
        self.assertTrue(self.transport.disconnecting)

    def test_answered_ping_keeps_link(self) -> None:
        """A pingReply (any data) keeps the link up."""
        self.clock.advance(60)
        self.protocol.dataReceived(b"<pingReply uid='indiserv-1'/>")
        self.clock.advance(30)
        self.assertFalse(self.transport.disconnecting)
        self.protocol.connectionLost(None)


class TwoServerTestCase(TestCase):
    timeout = 60

    def serve(self, *drivers: list[str], **kwargs):
        return serve(self, *drivers, **kwargs)

    def client_of(self, server: IndiServer):
        return client_of(self, server, hello=b"")


class TwoServerTests(TwoServerTestCase):
    @defer.inlineCallbacks
    def test_client_of_a_controls_device_of_b(self):
        """A client of server A sees and controls the device of a driver on server B."""
        b = yield self.serve([sys.executable, "-m", "indiserv.simulator"])
        a = yield self.serve()
        a.add_remote("127.0.0.1", b.port)
        client = yield self.client_of(a)
        client.say(b"<getProperties version='1.7'/>")
        yield client.wait_for(lambda m: m.device == SIMULATOR and m.name == "CONNECTION")
        client.say(CONNECT)
        lit = yield client.wait_for(lambda m: m.tag == "setLightVector" and m.name == "STATUS")
        self.assertEqual(lit.device, SIMULATOR)

    @defer.inlineCallbacks
    def test_device_of_a_reaches_client_of_b(self):
        """The devices of a server that links flow up the link to a server that trusts it: a client of B sees A's driver."""
        b = yield self.serve(peers=["127.0.0.2"])
        a = yield self.serve([sys.executable, "-m", "indiserv.simulator"])
        a.add_remote(f"tcp:host=127.0.0.1:port={b.port}:bindAddress=127.0.0.2")
        client = yield self.client_of(b)
        client.say(b"<getProperties version='1.7'/>")
        yield client.wait_for(lambda m: m.device == SIMULATOR and m.name == "CONNECTION")
        client.say(CONNECT)
        yield client.wait_for(lambda m: m.tag == "setLightVector" and m.device == SIMULATOR)

    @defer.inlineCallbacks
    def test_untrusted_server_shares_nothing(self):
        """A server that links to one that does not trust it gets its devices, but its own reach no client there."""
        b = yield self.serve([sys.executable, BLOB_DRIVER, "--device", "Upper", "--blobs", "0"])
        a = yield self.serve([sys.executable, "-m", "indiserv.simulator"])
        a.add_remote("127.0.0.1", b.port)
        client_of_a = yield self.client_of(a)
        client_of_a.say(b"<getProperties version='1.7'/>")
        yield client_of_a.wait_for(lambda m: m.device == "Upper" and m.name == "START")
        yield client_of_a.wait_for(lambda m: m.device == SIMULATOR and m.name == "CONNECTION")
        refused = logged(self, "sends device traffic")
        client_of_b = yield self.client_of(b)
        client_of_b.say(b"<getProperties version='1.7'/>")
        yield client_of_b.wait_for(lambda m: m.device == "Upper" and m.name == "START")
        yield refused  # A's simulator's definitions came to B, and went no further
        self.assertNotIn(SIMULATOR, b.router.owners)
        self.assertEqual([m for m in client_of_b.received if m.device == SIMULATOR], [])

    @defer.inlineCallbacks
    def test_blobs_cross_only_when_enabled(self):
        """BLOBs of B's driver reach A's clients only over a link with blob_enable."""
        b = yield self.serve([sys.executable, BLOB_DRIVER, "--blobs", "2", "--size", "1000"])
        with_blobs = yield self.serve()
        without = yield self.serve()
        with_blobs.add_remote("127.0.0.1", b.port, blob_enable=True)
        without.add_remote("127.0.0.1", b.port)
        clients = []
        for server in (with_blobs, without):
            client = yield self.client_of(server)
            client.say(b"<getProperties version='1.7'/><enableBLOB device='Bench'>Also</enableBLOB>")
            yield client.wait_for(lambda m: m.name == "START")
            clients.append(client)
        clients[0].say(b"<newSwitchVector device='Bench' name='START'><oneSwitch name='START'>On</oneSwitch></newSwitchVector>")
        done = lambda m: m.tag == "message" and m.attrs.get("message") == "done"
        yield defer.gatherResults([c.wait_for(done) for c in clients])
        self.assertEqual(len([m for m in clients[0].received if m.blob]), 2)
        self.assertEqual([m for m in clients[1].received if m.blob], [])

    @defer.inlineCallbacks
    def test_lost_remote_devices_deleted_and_back(self):
        """When B goes away A's clients get delProperty and a message; when B is back, so are its devices."""
        b = yield self.serve([sys.executable, "-m", "indiserv.simulator"])
        port = b.port
        a = yield self.serve()
        a.add_remote("127.0.0.1", port)
        client = yield self.client_of(a)
        client.say(b"<getProperties version='1.7'/>")
        yield client.wait_for(lambda m: m.device == SIMULATOR)
        yield b.stopService()
        yield client.wait_for(lambda m: m.tag == "delProperty" and m.device == SIMULATOR)
        said = yield client.wait_for(lambda m: m.tag == "message" and "remote" in m.attrs.get("message", ""))
        self.assertIn(f"127.0.0.1:{port}", said.attrs["message"])
        client.take()
        again = yield self.serve([sys.executable, "-m", "indiserv.simulator"], port=port)
        self.assertEqual(again.port, port)
        yield client.wait_for(lambda m: m.device == SIMULATOR and m.tag.startswith("def"))
        self.assertTrue(a.running)


class LoopTests(TwoServerTestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_three_server_loop_is_quiet(self):
        """In a loop of three servers every device is seen everywhere and no message circulates."""
        servers = []
        for name in ("A", "B", "C"):
            server = yield self.serve([sys.executable, BLOB_DRIVER, "--device", name, "--blobs", "0"])
            server.keepalive = 0.2
            servers.append(server)
        for this, that in zip(servers, servers[1:] + servers[:1]):
            this.add_remote("127.0.0.1", that.port)
        clients = []
        for server in servers:
            client = yield self.client_of(server)
            client.say(b"<getProperties version='1.7'/>")
            clients.append(client)
        for client in clients:
            for name in ("A", "B", "C"):
                yield client.wait_for(lambda m, name=name: m.device == name and m.name == "START")
        # Settled: now a quiet network must stay quiet.
        yield deferLater(0.5)
        before = [server.router.routed for server in servers]
        yield deferLater(1.0)  # five keepalive periods
        grown = [server.router.routed - b for server, b in zip(servers, before)]
        self.assertTrue(all(g < 60 for g in grown), grown)
        for server in servers:
            self.assertEqual(set(server.router.owners), {"A", "B", "C"})


def deferLater(seconds: float):
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)
