"""
Tests for L{indiserv.driver}: executable drivers as links.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from indiserv.driver import DriverNotFound, DriverService, find_driver
from indiserv.link import CLIENT
from indiserv.router import Router

from .support import RecordingLink, child_env

SIMULATOR = (sys.executable, "-m", "indiserv.simulator")
DEVICE = "indiserv Simulator"


class FakeProcess:
    """The process transport a fake reactor hands out: records signals."""

    def __init__(self) -> None:
        self.signals: list[str] = []
        self.written: list[bytes] = []
        self.producer = None
        self.reading = True

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True


class FakeProcessReactor(MemoryReactor, Clock):
    """A reactor that spawns nothing and keeps time by hand."""

    def __init__(self) -> None:
        MemoryReactor.__init__(self)
        Clock.__init__(self)
        self.spawned: list[tuple] = []

    def spawnProcess(self, protocol, executable, args=(), env=None, path=None,
                     uid=None, gid=None, usePTY=0, childFDs=None):
        self.spawned.append((executable, args, childFDs))
        process = FakeProcess()
        protocol.makeConnection(process)
        return process


class FindDriverTests(SynchronousTestCase):
    def test_on_path(self) -> None:
        """A bare name is looked up on PATH."""
        self.assertEqual(os.path.basename(find_driver("sh")), "sh")

    def test_missing(self) -> None:
        """A name that is not an executable on PATH is refused with a clear reason."""
        error = self.assertRaises(DriverNotFound, find_driver, "indi_no_such_driver")
        self.assertIn("indi_no_such_driver", str(error))


class DriverServiceUnitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.router = Router(clock=self.reactor)
        self.service = DriverService(self.router, "sh", ["-c", "cat"], reactor=self.reactor)

    def test_spawn_on_pipes(self) -> None:
        """The driver starts on pipes with its arguments and is asked for its properties."""
        self.service.startService()
        ((executable, args, child_fds),) = self.reactor.spawned
        self.assertEqual(os.path.basename(executable), "sh")
        self.assertEqual(args, ["sh", "-c", "cat"])
        self.assertEqual(child_fds, {0: "w", 1: "r", 2: "r"})
        self.assertEqual(
            self.service.protocol.transport.written, [b'<getProperties version="1.7"/>\n']
        )
        self.assertIn(self.service.protocol, self.router.drivers)

    def test_stop_terminates_then_kills(self) -> None:
        """Stopping sends SIGTERM, and SIGKILL if the driver has not gone after the timeout."""
        self.service.startService()
        process = self.service.protocol.transport
        stopped = self.service.stopService()
        self.assertEqual(process.signals, ["TERM"])
        self.reactor.advance(5)
        self.assertEqual(process.signals, ["TERM", "KILL"])
        self.assertNoResult(stopped)

    def test_missing_driver_reported(self) -> None:
        """A driver that cannot be found is logged and clients are told."""
        client = RecordingLink(CLIENT, "client")
        self.router.add_link(client)
        service = DriverService(self.router, "indi_no_such_driver", reactor=self.reactor)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        service.startService()
        self.assertEqual(self.reactor.spawned, [])
        self.assertIn("indi_no_such_driver", client.received[0].attrs["message"])
        self.assertTrue(any("indi_no_such_driver" in str(e.get("why")) for e in logged))


class RealDriverTests(TestCase):
    """A real driver program, run by the real reactor."""

    timeout = 30

    def start(self, *command: str) -> tuple[DriverService, RecordingLink]:
        router = Router(clock=reactor)
        client = RecordingLink(CLIENT, "client")
        router.add_link(client)
        service = DriverService(
            router, command[0], command[1:], reactor=reactor, env=child_env()
        )
        service.startService()
        self.addCleanup(service.stopService)
        return service, client

    @defer.inlineCallbacks
    def test_defines_devices(self):
        """The started driver answers getProperties and its definitions reach clients."""
        service, client = self.start(*SIMULATOR)
        yield client.wait_for(lambda m: m.tag == "defSwitchVector" and m.name == "CONNECTION")
        self.assertIs(service.router.owners[DEVICE], service.protocol)

    @defer.inlineCallbacks
    def test_stderr_logged_with_name(self):
        """Each stderr line of the driver is logged with the driver's name."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        line = defer.Deferred()
        globalLogPublisher.addObserver(
            lambda e: not line.called and "serving device" in str(e.get("line")) and line.callback(e)
        )
        self.start(*SIMULATOR)
        event = yield line
        self.assertEqual(event["driver"], os.path.basename(sys.executable))
        self.assertTrue(logged)

    @defer.inlineCallbacks
    def test_exit_deletes_devices(self):
        """When the driver dies, clients get delProperty for its device and a message why."""
        service, client = self.start(*SIMULATOR)
        yield client.wait_for(lambda m: m.tag.startswith("def"))
        ended = service.protocol.ended
        service.protocol.transport.signalProcess("KILL")
        yield ended
        deleted = yield client.wait_for(lambda m: m.tag == "delProperty")
        self.assertEqual(deleted.device, DEVICE)
        said = yield client.wait_for(lambda m: m.tag == "message" and m.device is None)
        self.assertIn("stopped", said.attrs["message"])
        self.assertNotIn(DEVICE, service.router.owners)

    @defer.inlineCallbacks
    def test_bad_output_skipped(self):
        """Garbage from a driver is logged and skipped; its next message still gets through."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        script = (
            "import sys; sys.stdout.write(\"junk <x & <message device='Z' message='after'/>\");"
            " sys.stdout.flush(); sys.stdin.read()"
        )
        _, client = self.start(sys.executable, "-c", script)
        said = yield client.wait_for(lambda m: m.tag == "message")
        self.assertEqual(said.attrs["message"], "after")
        self.assertTrue(any("bad INDI" in e["log_format"] for e in logged))

    @defer.inlineCallbacks
    def test_stop_service_ends_driver(self):
        """Stopping the service ends the driver process."""
        service, client = self.start(*SIMULATOR)
        yield client.wait_for(lambda m: m.tag.startswith("def"))
        ended = service.protocol.ended
        yield service.stopService()
        self.assertTrue(ended.called)
        self.assertIsNone(service.protocol)
