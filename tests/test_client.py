"""
Tests for L{indiserv.client}: client connections and the connection limit.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from indiserv.client import ClientFactory, ClientProtocol
from indiserv.link import DRIVER
from indiserv.router import Router
from indiserv.wire import Parser

from .support import RecordingLink


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.router = Router(clock=Clock())
        self.factory = ClientFactory(self.router, maxconnections=2)
        self.driver = RecordingLink(DRIVER, "driver")
        self.router.add_link(self.driver)
        self.driver.say(b"<defTextVector device='D' name='T'><defText name='A'>x</defText></defTextVector>")

    def connect(self, port: int = 40000) -> tuple[ClientProtocol, StringTransport]:
        address = IPv4Address("TCP", "127.0.0.1", port)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_attached_with_label(self) -> None:
        """A connection becomes a client link named by its address."""
        protocol, _ = self.connect()
        self.assertIn(protocol, self.router.clients)
        self.assertEqual(protocol.label, "client 127.0.0.1:40000")

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
        self.connect(1)
        self.connect(2)
        protocol, transport = self.connect(3)
        self.assertTrue(transport.disconnecting)
        (message,) = Parser().feed(transport.value())
        self.assertIn("full", message.attrs["message"])
        self.assertNotIn(protocol, self.router.clients)
        self.assertEqual(len(self.router.clients), 2)

    def test_slot_freed_on_disconnect(self) -> None:
        """A client that leaves frees its place."""
        first, _ = self.connect(1)
        self.connect(2)
        first.connectionLost(None)
        _, transport = self.connect(3)
        self.assertFalse(transport.disconnecting)

    def test_malformed_input_disconnects(self) -> None:
        """A client sending malformed XML is told why and disconnected; others are unaffected."""
        bad, bad_transport = self.connect(1)
        good, good_transport = self.connect(2)
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
