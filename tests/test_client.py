"""
Tests for L{indiserv.client}: client connections, pending connections, the
connection limits and time limits, and trusted peers.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from indiserv.access import Access
from indiserv.client import DEFAULT_HANDSHAKE_TIMEOUT, MAX_FIRST_MESSAGE, ClientFactory, ClientProtocol
from indiserv.link import DRIVER
from indiserv.router import Router
from indiserv.wire import Parser

from .support import RecordingLink, TestClient, attached_client, connect_client, logged_text, serve

#: A first message that asks for nothing back (BLOBs are off already).
HELLO = b"<enableBLOB>Never</enableBLOB>"


class ClientTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.router = Router(clock=self.clock)
        self.factory = self.make_factory(maxconnections=2)
        self.driver = RecordingLink(DRIVER, "driver")
        self.router.add_link(self.driver)
        self.driver.say(b"<defTextVector device='D' name='T'><defText name='A'>x</defText></defTextVector>")
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def make_factory(self, **kwargs) -> ClientFactory:
        self.factory = ClientFactory(self.router, **kwargs)
        return self.factory

    def connect(
        self, port: int = 40000, host: str = "127.0.0.1"
    ) -> tuple[ClientProtocol, StringTransport]:
        """A new connection, pending until it says something."""
        address = IPv4Address("TCP", host, port)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def client(self, port: int = 40000, host: str = "127.0.0.1") -> tuple[ClientProtocol, StringTransport]:
        """A connection that has said its first message."""
        protocol, transport = self.connect(port, host)
        protocol.dataReceived(HELLO)
        return protocol, transport

    def lose(self, protocol: ClientProtocol) -> None:
        protocol.connectionLost(None)

    def logs(self) -> str:
        return "\n".join(logged_text(event) for event in self.logged)


class ClientTests(ClientTestCase):
    def test_attached_with_label(self) -> None:
        """A connection becomes a client link named by its address once it has said something."""
        protocol, _ = self.client()
        self.assertIn(protocol, self.router.clients)
        self.assertEqual(protocol.label, "client 127.0.0.1:40000")
        self.assertFalse(protocol.trusted)

    def test_messages_routed(self) -> None:
        """What a client writes reaches the router; what drivers write reaches the client."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"<getProperties version='1.7'/>")
        self.assertEqual(self.driver.tags(), ["getProperties"])
        raw = b"<setTextVector device='D' name='T'><oneText name='A'>y</oneText></setTextVector>"
        self.driver.say(raw)
        self.assertEqual(transport.value(), raw)

    def test_connection_limit(self) -> None:
        """Past maxconnections a client gets a message saying the server is full, and is closed."""
        self.client(1)
        self.client(2)
        protocol, transport = self.client(3)
        self.assertTrue(transport.disconnecting)
        (message,) = Parser().feed(transport.value())
        self.assertIn("full", message.attrs["message"])
        self.assertNotIn(protocol, self.router.clients)
        self.assertEqual(len(self.router.clients), 2)
        self.assertEqual(self.driver.tags(), [])

    def test_slot_freed_on_disconnect(self) -> None:
        """A client that leaves frees its place."""
        first, _ = self.client(1)
        self.client(2)
        self.lose(first)
        _, transport = self.client(3)
        self.assertFalse(transport.disconnecting)

    def test_malformed_input_disconnects(self) -> None:
        """A client sending malformed XML is told why and disconnected; others are unaffected."""
        bad, bad_transport = self.client(1)
        good, good_transport = self.client(2)
        good.dataReceived(b"<enableBLOB device='D'>Never</enableBLOB>")
        bad.dataReceived(b"<getProperties version='1.7'/><newTextVector device='D' name='&x;'/>")
        self.assertTrue(bad_transport.disconnecting)
        self.assertNotIn(bad, self.router.clients)
        (message,) = Parser().feed(bad_transport.value())
        self.assertIn("not well-formed", message.attrs["message"])
        # The good message before the fault was still routed.
        self.assertEqual(self.driver.tags(), ["getProperties"])
        raw = b"<message device='D' message='still here'/>"
        self.driver.say(raw)
        self.assertEqual(good_transport.value(), raw)
        self.assertFalse(good_transport.disconnecting)

    def test_closing_client_aborted(self) -> None:
        """A client disconnected for bad input that does not let its connection close is aborted after the handshake timeout."""
        bad, transport = self.client()
        bad.dataReceived(b"<newTextVector device='D' name='&x;'/>")
        self.assertTrue(transport.disconnecting)
        self.clock.advance(DEFAULT_HANDSHAKE_TIMEOUT)
        self.assertTrue(transport.disconnected)  # StringTransport's mark of abortConnection
        self.lose(bad)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PendingTests(ClientTestCase):
    def test_pending_until_first_message(self) -> None:
        """A connection is not a client, and gets no traffic, until its first complete message, which is then routed."""
        protocol, transport = self.connect()
        self.assertTrue(protocol.pending)
        self.assertNotIn(protocol, self.router.clients)
        self.driver.say(b"<message device='D' message='not for you yet'/>")
        protocol.dataReceived(b"<getProperties ")
        self.assertTrue(protocol.pending)
        protocol.dataReceived(b"version='1.7'/>")
        self.assertFalse(protocol.pending)
        self.assertIn(protocol, self.router.clients)
        self.assertEqual(self.driver.tags(), ["getProperties"])
        self.assertEqual(transport.value(), b"")

    def test_silent_connection_closed(self) -> None:
        """A connection that sends no complete message within the handshake timeout is closed, with a logged reason."""
        protocol, transport = self.connect()
        self.clock.advance(DEFAULT_HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertIn("no INDI message within 10 s (--handshake-timeout)", self.logs())
        self.lose(protocol)
        self.assertEqual(self.factory.pending, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_dribbling_connection_closed(self) -> None:
        """A byte every few seconds does not keep a pending connection open."""
        protocol, transport = self.connect()
        for byte in b"<getProperties version='1.7'/>"[:-1]:
            protocol.dataReceived(bytes([byte]))
            self.clock.advance(3)
            if transport.disconnected:
                break
        self.assertTrue(transport.disconnected)
        self.assertNotIn(protocol, self.router.clients)

    def test_configured_timeout(self) -> None:
        """The handshake timeout is the factory's."""
        self.make_factory(handshake_timeout=2)
        _, transport = self.connect()
        self.clock.advance(2)
        self.assertTrue(transport.disconnected)

    def test_pending_do_not_take_client_places(self) -> None:
        """Ten silent connections leave room for a real client (they count as pending, not as clients)."""
        self.make_factory(maxconnections=10)
        for port in range(10):
            self.connect(port)
        protocol, transport = self.client(99)
        self.assertIn(protocol, self.router.clients)
        self.assertFalse(transport.disconnecting)

    def test_pending_limit(self) -> None:
        """Past max_pending a new connection is closed at once, with a logged reason; clients are unaffected."""
        self.make_factory(max_pending=2)
        client, _ = self.client(1)
        self.connect(2)
        self.connect(3)
        protocol, transport = self.connect(4)
        self.assertTrue(transport.disconnected)
        self.assertIn("--max-pending", self.logs())
        self.lose(protocol)
        self.assertEqual(len(self.factory.pending), 2)
        self.assertIn(client, self.router.clients)

    def test_pending_place_freed(self) -> None:
        """A pending connection that is admitted, times out or leaves frees its pending place."""
        self.make_factory(max_pending=1)
        self.client(1)
        silent, _ = self.connect(2)
        self.clock.advance(DEFAULT_HANDSHAKE_TIMEOUT)
        self.lose(silent)
        leaving, _ = self.connect(3)
        self.lose(leaving)
        _, transport = self.connect(4)
        self.assertFalse(transport.disconnected)

    def test_malformed_first_message(self) -> None:
        """A pending connection whose first message is malformed is told why and closed, never admitted."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"<getProperties version='1.7'/ >")
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(protocol, self.router.clients)
        (message,) = Parser().feed(transport.value())
        self.assertTrue(message.attrs["message"].startswith("Disconnected: "))
        self.lose(protocol)
        self.assertEqual(self.factory.pending, {})

    def test_first_message_bounded(self) -> None:
        """A pending connection whose first message grows past MAX_FIRST_MESSAGE is closed, never admitted."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"<newTextVector device='D' name='T'><oneText name='A'>")
        chunk = b"x" * 65536
        for _ in range(MAX_FIRST_MESSAGE // len(chunk) - 1):
            protocol.dataReceived(chunk)
        self.assertFalse(transport.disconnected)
        protocol.dataReceived(chunk + chunk)
        self.assertTrue(transport.disconnected)
        self.assertNotIn(protocol, self.router.clients)
        self.assertIn("first message is larger than", self.logs())

    def test_first_read_paced(self) -> None:
        """The messages after a client's first, in the same read, are routed a turn's worth at a time."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"<pingRequest uid='1'/>" * 300)
        replies = lambda: len(Parser().feed(transport.value()))
        self.assertEqual(replies(), protocol.messages_per_turn)
        self.clock.advance(0)
        self.assertEqual(replies(), 300)

    def test_stop_closes_pending(self) -> None:
        """close_pending aborts every pending connection and no client."""
        client, client_transport = self.client(1)
        _, transport = self.connect(2)
        self.factory.close_pending()
        self.assertTrue(transport.disconnected)
        self.assertFalse(client_transport.disconnected)


class PerHostTests(ClientTestCase):
    def test_clients_per_host(self) -> None:
        """With max_per_host, a host past its share of clients is told so; other hosts still get in."""
        self.make_factory(maxconnections=10, max_per_host=2)
        self.client(1)
        self.client(2)
        protocol, transport = self.client(3)
        self.assertTrue(transport.disconnecting)
        (message,) = Parser().feed(transport.value())
        self.assertIn("127.0.0.1 has 2 connections already", message.attrs["message"])
        self.lose(protocol)
        other, _ = self.client(4, host="127.0.0.2")
        self.assertIn(other, self.router.clients)

    def test_pending_per_host(self) -> None:
        """With max_per_host, one host cannot take every pending place."""
        self.make_factory(max_per_host=2)
        self.connect(1)
        self.connect(2)
        _, transport = self.connect(3)
        self.assertTrue(transport.disconnected)
        _, other = self.connect(4, host="127.0.0.2")
        self.assertFalse(other.disconnected)

    def test_unlimited_by_default(self) -> None:
        """Without max_per_host, one host may take every place."""
        self.make_factory(maxconnections=5)
        for port in range(5):
            _, transport = self.client(port)
            self.assertFalse(transport.disconnecting)


class IdleTimeoutTests(ClientTestCase):
    def test_off_by_default(self) -> None:
        """A silent client stays connected for days by default (INDI clients are often silent)."""
        protocol, transport = self.client()
        self.clock.advance(3 * 24 * 3600)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_client_disconnected(self) -> None:
        """With idle_timeout, a client silent that long is told why and disconnected; anything it sends restarts the count."""
        self.make_factory(idle_timeout=60)
        protocol, transport = self.client()
        self.clock.advance(50)
        protocol.dataReceived(b" ")
        self.clock.advance(50)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(protocol, self.router.clients)
        (message,) = Parser().feed(transport.value())
        self.assertEqual(message.attrs["message"], "Disconnected: nothing received for 60 s")
        self.assertIn("--idle-timeout", self.logs())
        self.lose(protocol)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TrustTests(ClientTestCase):
    def test_peer_by_address(self) -> None:
        """A client whose address a peer rule names is trusted when admitted; another is not."""
        self.router.verbose = 1
        self.make_factory(access=Access.build(["127.0.0.2"]))
        peer, _ = self.connect(1, host="127.0.0.2")
        self.assertFalse(peer.trusted)  # not before it is admitted
        peer.dataReceived(HELLO)
        plain, _ = self.client(2, host="127.0.0.1")
        self.assertTrue(peer.trusted)
        self.assertFalse(plain.trusted)
        self.assertIn("client 127.0.0.2:1 admitted as a peer by peer 127.0.0.2 (--peer 127.0.0.2)", self.logs())


class RealSocketTests(TestCase):
    """The same over real connections on 127.0.0.1."""

    timeout = 30

    @defer.inlineCallbacks
    def test_silent_sockets_leave_room(self):
        """Ten sockets that say nothing neither lock out the eleventh client nor stay open past the handshake timeout."""
        server = yield serve(self, maxconnections=10, handshake_timeout=0.5)
        silent = yield defer.gatherResults([connect_client(server.port) for _ in range(10)])
        for socket in silent:
            self.addCleanup(socket.transport.loseConnection)
        client = yield attached_client(self, server)
        self.assertFalse(client.lost.called)
        yield defer.gatherResults([socket.lost for socket in silent])
        self.assertEqual(server.factory.pending, {})
        self.assertEqual(len(server.router.clients), 1)

    @defer.inlineCallbacks
    def test_peer_by_source_address(self):
        """A client from 127.0.0.2, named by --peer, is trusted; one from 127.0.0.1 is not."""
        from twisted.internet import reactor

        server = yield serve(self, peers=["127.0.0.2"])
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port, bindAddress=("127.0.0.2", 0))
        peer = yield connectProtocol(endpoint, TestClient())
        self.addCleanup(peer.transport.loseConnection)
        peer.say(b"<pingRequest uid='peer'/>")
        yield peer.wait_for(lambda m: m.tag == "pingReply")
        yield attached_client(self, server)
        trusted = {link.host: link.trusted for link in server.router.clients}
        self.assertEqual(trusted, {"127.0.0.2": True, "127.0.0.1": False})
