"""
Tests for L{indiserv.link}: outbound queues, slow peers and backpressure.
"""

from __future__ import annotations

import os
import socket
import sys

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from indiserv.client import ClientFactory, ClientProtocol
from indiserv.driver import DriverProcessProtocol
from indiserv.link import DRIVER, SEND_SIZE, WRITE_NOW_LIMIT, Link, queued_cost, send_in_large_chunks, write_now
from indiserv.router import Router
from indiserv.service import IndiServer
from indiserv.wire import Parser

from .support import RecordingLink, connect_client, logged
from .test_driver import FakeProcess

KiB = 1024


def blob(size: int, name: str = "CCD1", format: str = ".fits") -> bytes:
    body = b"A" * size
    return (
        b"<setBLOBVector device='CCD' name='" + name.encode() + b"'>"
        b"<oneBLOB name='" + name.encode() + b"' size='1' format='" + format.encode() + b"'>"
        + body + b"</oneBLOB></setBLOBVector>"
    )


class ThrottledTransport(StringTransport):
    """
    Like Twisted's own transports, asks its producer to pause once it holds
    more than C{room} bytes; L{drain} is the peer reading everything.
    """

    room = 10 * KiB

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.room and self.producer is not None:
            self.producer.pauseProducing()

    def writeSequence(self, chunks: list[bytes]) -> None:
        for data in chunks:
            self.write(data)

    def drain(self) -> None:
        self.clear()
        self.producer.resumeProducing()


class QueueTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.router = Router(clock=self.clock)
        self.router.max_queue = 100 * KiB
        self.router.max_stream = 20 * KiB
        self.router.high_water = 50 * KiB
        self.factory = ClientFactory(self.router, maxconnections=10)
        self.camera = RecordingLink(DRIVER, "driver camera")
        self.router.add_link(self.camera)
        self.port = 40000

    def connect(
        self,
        blobs: bool = True,
        transport_type: type[StringTransport] = StringTransport,
        hello: bytes | None = None,
    ) -> tuple[ClientProtocol, StringTransport]:
        self.port += 1
        address = IPv4Address("TCP", "127.0.0.1", self.port)
        protocol = self.factory.buildProtocol(address)
        transport = transport_type(peerAddress=address)
        protocol.makeConnection(transport)
        if hello is None:
            hello = (
                b"<enableBLOB device='CCD'>Also</enableBLOB>"
                if blobs
                else b"<getProperties version='1.7'/>"
            )
        protocol.dataReceived(hello)
        transport.clear()
        return protocol, transport


class OutboundQueueTests(QueueTestCase):
    def test_direct_write_while_keeping_up(self) -> None:
        """A peer that keeps up gets each message written at once, nothing queued."""
        client, transport = self.connect()
        self.camera.say(blob(1000))
        self.assertEqual(len(Parser().feed(transport.value())), 1)
        self.assertEqual(client.queued, 0)
        self.assertIs(transport.producer, client)

    def test_queue_while_paused_then_flush_in_order(self) -> None:
        """While the transport is full messages wait, counted in bytes, and go out in order on resume."""
        client, transport = self.connect()
        client.pauseProducing()
        self.camera.say(blob(1000, "A") + blob(2000, "B"))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(client.queued, queued_cost(blob(1000, "A")) + queued_cost(blob(2000, "B")))
        client.resumeProducing()
        self.assertEqual([m.name for m in Parser().feed(transport.value())], ["A", "B"])
        self.assertEqual(client.queued, 0)

    def test_close_writes_the_queue(self) -> None:
        """A client closed while behind has what was queued for it handed to the transport, in order, before the hang-up."""
        client, transport = self.connect()
        client.pauseProducing()
        self.camera.say(blob(1000, "A") + blob(2000, "B"))
        client.close()
        self.assertEqual([m.name for m in Parser().feed(transport.value())], ["A", "B"])
        self.assertEqual(client.queued, 0)
        self.assertTrue(transport.disconnecting)

    def test_stuck_client_cut_off(self) -> None:
        """A client that reads nothing is cut off, with a logged reason, once its queue passes max_queue."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        stuck, stuck_transport = self.connect()
        reader, reader_transport = self.connect()
        stuck.pauseProducing()
        for _ in range(20):
            self.camera.say(blob(10 * KiB))
        self.assertNotIn(stuck, self.router.clients)
        self.assertEqual(stuck.queued, 0)
        self.assertLessEqual(max(stuck.queued, 0), self.router.max_queue)
        self.assertTrue(stuck_transport.disconnected)
        self.assertTrue(any("max-queue" in e["log_format"] for e in logged))
        # The reading client got every frame.
        self.assertEqual(len(Parser().feed(reader_transport.value())), 20)

    def fall_behind_while_draining(self, transport: ThrottledTransport, rounds: int) -> None:
        """Two frames arrive for each one the client reads."""
        for _ in range(rounds):
            self.camera.say(blob(10 * KiB))
            self.camera.say(blob(10 * KiB))
            transport.drain()

    def test_draining_client_survives_burst(self) -> None:
        """A client that keeps reading may go over max_queue for a while (up to twice it)."""
        client, transport = self.connect(transport_type=ThrottledTransport)
        self.fall_behind_while_draining(transport, 13)
        self.assertIn(client, self.router.clients)
        self.assertGreater(client.queued, self.router.max_queue)
        self.assertLessEqual(client.queued, 2 * self.router.max_queue)

    def test_burst_limited_in_time(self) -> None:
        """A draining client that stays over max_queue longer than the burst window is cut off."""
        client, transport = self.connect(transport_type=ThrottledTransport)
        self.fall_behind_while_draining(transport, 11)
        self.assertIn(client, self.router.clients)
        self.clock.advance(self.router.burst_window + 1)
        self.fall_behind_while_draining(transport, 1)
        self.assertNotIn(client, self.router.clients)

    def test_burst_bounded_at_twice_the_limit(self) -> None:
        """Even a draining client is cut off past twice max_queue."""
        client, transport = self.connect(transport_type=ThrottledTransport)
        self.fall_behind_while_draining(transport, 25)
        self.assertNotIn(client, self.router.clients)

    def test_caught_up_client_never_cut(self) -> None:
        """A client that reads as fast as frames come is never queued past the limit."""
        client, transport = self.connect(transport_type=ThrottledTransport)
        for _ in range(100):
            self.camera.say(blob(10 * KiB))
            transport.drain()
        self.assertIn(client, self.router.clients)
        self.assertEqual(client.queued, 0)

    def test_stream_frames_skipped_when_behind(self) -> None:
        """Video stream frames are skipped for a client more than max_stream behind; other BLOBs still queue."""
        client, transport = self.connect()
        client.pauseProducing()
        for _ in range(4):
            self.camera.say(blob(10 * KiB, "STREAM", ".stream_jpg"))
        self.camera.say(blob(10 * KiB, "CCD1", ".fits"))
        client.resumeProducing()
        names = [m.name for m in Parser().feed(transport.value())]
        # Two frames put it past 20 KiB behind; the next two are skipped.
        self.assertEqual(names, ["STREAM", "STREAM", "CCD1"])
        self.assertEqual(self.router.stream_skipped, 2)


class BackpressureTests(QueueTestCase):
    def test_driver_paused_when_every_receiver_saturated(self) -> None:
        """A driver's output is paused when every receiver is past high water, and resumed when one drains."""
        process = FakeProcess()
        camera = DriverProcessProtocol(self.router, "camera")
        camera.makeConnection(process)
        camera.outReceived(b"<defBLOBVector device='Cam' name='X'><defBLOB name='X'/></defBLOBVector>")
        client, transport = self.connect(blobs=False)
        client.dataReceived(b"<enableBLOB device='Cam'>Also</enableBLOB>")
        client.pauseProducing()
        frame = blob(10 * KiB).replace(b"'CCD'", b"'Cam'")
        for _ in range(4):
            camera.outReceived(frame)
        self.assertTrue(process.reading)
        camera.outReceived(frame)  # now more than 50 KiB behind
        self.assertFalse(process.reading)
        client.resumeProducing()
        self.assertTrue(process.reading)

    def test_driver_not_paused_while_one_receiver_keeps_up(self) -> None:
        """One saturated client does not hold the driver back while another keeps up."""
        process = FakeProcess()
        camera = DriverProcessProtocol(self.router, "camera")
        camera.makeConnection(process)
        camera.outReceived(b"<defBLOBVector device='Cam' name='X'><defBLOB name='X'/></defBLOBVector>")
        slow, _ = self.connect(blobs=False)
        fast, _ = self.connect(blobs=False)
        for client in (slow, fast):
            client.dataReceived(b"<enableBLOB device='Cam'>Also</enableBLOB>")
        slow.pauseProducing()
        frame = blob(10 * KiB).replace(b"'CCD'", b"'Cam'")
        for _ in range(8):
            camera.outReceived(frame)
        self.assertTrue(process.reading)

    def camera_with_clients(self, *blob_enabled: bool) -> tuple[DriverProcessProtocol, FakeProcess, list]:
        process = FakeProcess()
        camera = DriverProcessProtocol(self.router, "camera")
        camera.makeConnection(process)
        camera.outReceived(b"<defBLOBVector device='Cam' name='X'><defBLOB name='X'/></defBLOBVector>")
        clients = []
        for blobs in blob_enabled:
            client, transport = self.connect(blobs=False)
            if blobs:
                client.dataReceived(b"<enableBLOB device='Cam'>Also</enableBLOB>")
            clients.append((client, transport))
        return camera, process, clients

    def test_stuck_blob_client_does_not_pause_for_others(self) -> None:
        """A client that takes BLOBs and reads nothing never pauses a camera that other clients follow; it is cut off."""
        camera, process, [(stuck, stuck_transport), _] = self.camera_with_clients(True, False)
        stuck.pauseProducing()
        frame = blob(10 * KiB).replace(b"'CCD'", b"'Cam'")
        for _ in range(12):
            camera.outReceived(frame)
            self.assertTrue(process.reading)
        self.assertNotIn(stuck, self.router.clients)
        self.assertTrue(stuck_transport.disconnected)

    def test_clients_of_other_devices_do_not_count(self) -> None:
        """A camera whose only interested client is behind is paused, whatever clients of other devices do."""
        camera, process, [(slow, _)] = self.camera_with_clients(True)
        self.connect(hello=b"<getProperties version='1.7' device='Mount'/>")
        slow.pauseProducing()
        frame = blob(10 * KiB).replace(b"'CCD'", b"'Cam'")
        for _ in range(5):
            camera.outReceived(frame)
        self.assertFalse(process.reading)

    def test_stalled_receiver_stops_holding_back(self) -> None:
        """A receiver that does not catch up once within stall_limit lets the driver go on, and is then cut off."""
        camera, process, [(stuck, stuck_transport)] = self.camera_with_clients(True)
        stuck.pauseProducing()
        frame = blob(10 * KiB).replace(b"'CCD'", b"'Cam'")
        for _ in range(5):
            camera.outReceived(frame)
        self.assertFalse(process.reading)
        self.clock.advance(self.router.stall_limit)
        self.assertTrue(process.reading)
        for _ in range(6):
            camera.outReceived(frame)
            self.assertTrue(process.reading)
        self.assertNotIn(stuck, self.router.clients)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_receiver_catching_up_keeps_holding_back(self) -> None:
        """A slow receiver that reads now and then still pauses its driver after stall_limit: flow control, not a cut-off."""
        camera, process, _ = self.camera_with_clients()
        slow, transport = self.connect(blobs=False, transport_type=ThrottledTransport)
        slow.dataReceived(b"<enableBLOB device='Cam'>Also</enableBLOB>")
        slow.pauseProducing()
        frame = blob(10 * KiB).replace(b"'CCD'", b"'Cam'")
        for _ in range(8):
            camera.outReceived(frame)
        self.assertFalse(process.reading)
        transport.drain()  # the peer reads one frame's worth, and is still behind
        self.assertTrue(slow.saturated)
        self.clock.advance(self.router.stall_limit)
        camera.outReceived(frame)
        self.assertFalse(process.reading)
        self.assertIn(slow, self.router.clients)

    def test_commands_to_stuck_driver_dropped_with_message(self) -> None:
        """Commands to a driver that stops reading are dropped past max_queue, and the sender told."""
        process = FakeProcess()
        driver = DriverProcessProtocol(self.router, "mount")
        driver.makeConnection(process)
        driver.outReceived(b"<defTextVector device='Mount' name='T'><defText name='A'/></defTextVector>")
        client, transport = self.connect(blobs=False)
        driver.pauseProducing()
        command = (
            b"<newTextVector device='Mount' name='T'><oneText name='A'>"
            + b"x" * (10 * KiB) + b"</oneText></newTextVector>"
        )
        for _ in range(12):
            client.dataReceived(command)
        self.assertLessEqual(driver.queued, self.router.max_queue)
        # 9 commands fit in 100 KiB; each of the other 3 is refused and said so.
        self.assertEqual(driver.queued, 9 * queued_cost(command))
        said = [m for m in Parser().feed(transport.value()) if m.tag == "message"]
        self.assertEqual(len(said), 3)
        self.assertIn("not reading", said[0].attrs["message"])
        self.assertEqual(said[0].device, "Mount")
        self.assertIn(client, self.router.clients)


PING = b"<pingRequest uid='1'/>"


class InputPacingTests(QueueTestCase):
    """One read's worth of input is routed a turn's worth at a time, with reading paused meanwhile."""

    def pings_answered(self, transport: StringTransport) -> int:
        return len([m for m in Parser().feed(transport.value()) if m.tag == "pingReply"])

    def test_many_messages_over_several_turns(self) -> None:
        """Past messages_per_turn, the rest of a read waits for the next turn; a read arriving meanwhile waits, and the peer is not read until both are done."""
        client, transport = self.connect(blobs=False)
        client.dataReceived(PING * 300)
        self.assertEqual(self.pings_answered(transport), client.messages_per_turn)
        self.assertEqual(transport.producerState, "producing")
        client.dataReceived(PING * 10)
        self.assertEqual(self.pings_answered(transport), client.messages_per_turn)
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(0)
        self.assertEqual(self.pings_answered(transport), 310)
        self.assertEqual(transport.producerState, "producing")

    def test_large_read_in_slices(self) -> None:
        """A read larger than bytes_per_turn is framed a slice per turn, and its messages come out whole, in order."""
        client, transport = self.connect(blobs=False)
        text = b"x" * (40 * KiB)
        command = b"<newTextVector device='Cam' name='T'><oneText name='A'>" + text + b"</oneText></newTextVector>"
        self.camera.say(b"<defTextVector device='Cam' name='T'><defText name='A'/></defTextVector>")
        self.camera.take()
        client.dataReceived(command + PING)
        self.assertEqual(self.camera.tags(), [])
        self.clock.advance(0)
        self.assertEqual([m.raw for m in self.camera.take()], [command])
        self.assertEqual(self.pings_answered(transport), 1)

    def test_backpressure_outlasts_the_backlog(self) -> None:
        """A driver the router paused stays paused when its backlog of input is done, until the router resumes it."""
        process = FakeProcess()
        driver = DriverProcessProtocol(self.router, "chatty")
        driver.makeConnection(process)
        driver.outReceived(PING * 300)
        driver.pause_reading()
        self.clock.advance(0)
        self.assertFalse(process.reading)
        driver.resume_reading()
        self.assertTrue(process.reading)

    def test_backlog_dropped_when_link_goes(self) -> None:
        """Input not routed yet is forgotten with its link, and no timer is left behind."""
        client, transport = self.connect(blobs=False)
        client.dataReceived(PING * 300)
        self.router.remove_link(client)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.pings_answered(transport), client.messages_per_turn)


BLOB_DRIVER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "blob_driver.py")
START = (
    b"<newSwitchVector device='Bench' name='START'><oneSwitch name='START'>On"
    b"</oneSwitch></newSwitchVector>"
)


class RealSlowClientTests(TestCase):
    """A never-reading client over real TCP, next to one that reads."""

    timeout = 60

    @defer.inlineCallbacks
    def camera_and_two_clients(self):
        """A server streaming 100 BLOBs of 256 KiB when told, and two clients of it."""
        server = IndiServer(host="127.0.0.1", port=0)
        # Well above one read from the driver, well below what a stuck
        # client's socket buffers and queue could hide.
        server.router.max_queue = 8 * 1024 * KiB
        server.add_exdriver(sys.executable, BLOB_DRIVER, "--blobs", "100", "--size", str(256 * KiB))
        server.startService()
        self.addCleanup(server.stopService)
        yield server.listening
        clients = yield defer.gatherResults(
            [connect_client(server.port), connect_client(server.port)]
        )
        for client in clients:
            self.addCleanup(client.transport.loseConnection)
        return (server, *clients)

    @defer.inlineCallbacks
    def test_stuck_client_cut_fast_client_served(self):
        """While a driver streams BLOBs, a client that stops reading is cut off and the reading one gets every frame."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        server, slow, fast = yield self.camera_and_two_clients()
        for client in (slow, fast):
            client.say(b"<getProperties version='1.7'/><enableBLOB device='Bench'>Also</enableBLOB>")
            yield client.wait_for(lambda m: m.name == "START")
        slow.transport.pauseProducing()  # it reads nothing from now on
        fast.say(START)
        yield fast.wait_for(lambda m: m.tag == "message" and m.attrs.get("message") == "done")
        self.assertEqual(len([m for m in fast.received if m.blob]), 100)
        self.assertEqual(len(server.router.clients), 1)
        self.assertTrue(any("max-queue" in e["log_format"] for e in logged))
        slow.transport.resumeProducing()
        yield slow.lost
        self.assertLess(len([m for m in slow.received if m.blob]), 100)

    @defer.inlineCallbacks
    def test_stuck_blob_client_does_not_stall_others(self):
        """A client that takes BLOBs and stops reading does not hold a camera back from a client that takes none: it is cut off."""
        server, stuck, honest = yield self.camera_and_two_clients()
        stuck.say(b"<getProperties version='1.7'/><enableBLOB device='Bench'>Also</enableBLOB>")
        honest.say(b"<getProperties version='1.7'/>")
        for client in (stuck, honest):
            yield client.wait_for(lambda m: m.name == "START")
        stuck.transport.pauseProducing()  # it reads nothing from now on
        honest.say(START)
        yield honest.wait_for(lambda m: m.tag == "message" and m.attrs.get("message") == "done")
        self.assertEqual(len(server.router.clients), 1)
        stuck.transport.resumeProducing()
        yield stuck.lost

    @defer.inlineCallbacks
    def test_only_client_stuck_driver_paused(self):
        """With its only receiver stuck, a driver is paused (memory stays bounded) and resumes when it reads."""
        paused = logged(self, "pausing")
        server = IndiServer(host="127.0.0.1", port=0)
        server.router.high_water = 1024 * KiB
        server.add_exdriver(sys.executable, BLOB_DRIVER, "--blobs", "60", "--size", str(256 * KiB))
        server.startService()
        self.addCleanup(server.stopService)
        yield server.listening
        client = yield connect_client(server.port)
        self.addCleanup(client.transport.loseConnection)
        client.say(b"<getProperties version='1.7'/><enableBLOB device='Bench'>Also</enableBLOB>")
        yield client.wait_for(lambda m: m.name == "START")
        client.transport.pauseProducing()
        client.say(START)
        yield paused
        (link,) = server.router.clients
        frame = 360 * KiB  # one base64 frame of 256 KiB, with its markup
        self.assertLessEqual(link.queued, server.router.high_water + frame)
        client.transport.resumeProducing()
        yield client.wait_for(lambda m: m.tag == "message" and m.attrs.get("message") == "done")
        self.assertEqual(len([m for m in client.received if m.blob]), 60)
        self.assertIn(link, server.router.clients)


NUMBER = (
    b"<setNumberVector device='Bench' name='VALUE'>"
    b"<oneNumber name='VALUE'>1</oneNumber></setNumberVector>"
)


class WriteNowTests(TestCase):
    """Lone messages go to the kernel at once; streams wait for Twisted's turn."""

    @defer.inlineCallbacks
    def setUp(self):
        from twisted.internet import reactor

        connected: defer.Deferred[Protocol] = defer.Deferred()

        class Accepted(Protocol):
            def connectionMade(self) -> None:
                connected.callback(self)

        port = reactor.listenTCP(0, Factory.forProtocol(Accepted), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(self.peer.close)
        accepted = yield connected
        self.transport = accepted.transport
        self.addCleanup(self.transport.abortConnection)
        self.router = Router()
        self.link = Link()
        self.link.transport = self.transport
        self.router.add_link(self.link)

    def pending_at_peer(self) -> bytes:
        try:
            return self.peer.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b""

    def test_large_sends(self):
        """A TCP transport given send_in_large_chunks hands the kernel more than Twisted's 128 KiB per send (fails if Twisted stops honouring SEND_LIMIT)."""
        for sock in (self.transport.socket, self.peer):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        send_in_large_chunks(self.transport)
        self.assertEqual(self.transport.SEND_LIMIT, SEND_SIZE)
        written = self.transport.writeSomeData(b"x" * (1 << 20))
        self.assertGreater(written, 128 * 1024)

    def test_lone_message_written_at_once(self):
        """A batch of one message is in the peer's socket before the reactor turns again."""
        (update,) = Parser().feed(NUMBER)
        self.router.begin_batch()
        self.link.send(update)
        self.router.end_batch()
        self.assertEqual(self.pending_at_peer(), NUMBER)

    def test_stream_waits_for_reactor(self):
        """A batch of several messages is left to Twisted, which writes it on its next turn."""
        updates = Parser().feed(NUMBER * 3)
        self.router.begin_batch()
        for update in updates:
            self.link.send(update)
        self.router.end_batch()
        self.assertEqual(self.pending_at_peer(), b"")
        self.assertEqual(self.transport._tempDataLen, 3 * len(NUMBER))

    def test_what_the_kernel_refuses_is_left_to_twisted(self):
        """A message the kernel has no room for is left to Twisted, in order."""
        while self.transport.writeSomeData(b"x" * (1 << 20)) > 0:
            pass  # until the kernel's buffers are full
        data = os.urandom(WRITE_NOW_LIMIT)
        write_now(self.transport, data)
        self.assertEqual(b"".join(self.transport._tempDataBuffer), data)

    def test_large_message_left_to_twisted_whole(self):
        """A message larger than WRITE_NOW_LIMIT goes to Twisted as it is, never copied in part."""
        data = os.urandom(32 << 20)
        write_now(self.transport, data)
        self.assertEqual(self.pending_at_peer(), b"")
        self.assertEqual(len(self.transport._tempDataBuffer), 1)
        self.assertIs(self.transport._tempDataBuffer[0], data)
