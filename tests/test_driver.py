"""
Tests for L{indiserv.driver}: executable drivers as links.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.internet.error import ProcessTerminated
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from indiserv.driver import DriverNotFound, DriverService, find_driver, in_own_process_group
from indiserv.link import CLIENT, DRIVER
from indiserv.router import Router

from .support import GET_ALL, RecordingLink, child_env

SIMULATOR = (sys.executable, "-m", "indiserv.simulator")
DEVICE = "indiserv Simulator"


class FakeProcess:
    """The process transport a fake reactor hands out: records signals."""

    pid = 4242

    def __init__(self) -> None:
        self.signals: list[str] = []
        self.written: list[bytes] = []
        self.producer = None
        self.reading = True

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writeSequence(self, chunks: list[bytes]) -> None:
        self.written.extend(chunks)

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

    def test_not_executable(self) -> None:
        """A path to a file that cannot be executed is refused with a clear reason."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("#!/bin/sh\n")
        error = self.assertRaises(DriverNotFound, find_driver, path)
        self.assertIn(path, str(error))

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
        self.assertEqual((executable, args), in_own_process_group(shutil.which("sh"), ["sh", "-c", "cat"]))
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

    def test_device_from_indidev(self) -> None:
        """device is the INDIDEV the program is given, or None."""
        self.assertIsNone(DriverService(self.router, "sh", env={}).device)
        self.assertEqual(DriverService(self.router, "sh", env={"INDIDEV": "Scope"}).device, "Scope")

    def test_named_device_reserved_from_the_start(self) -> None:
        """A driver given a device name (INDIDEV) has it kept for it before it runs, and freed when it stops."""
        service = DriverService(self.router, "sh", ["-c", "cat"], reactor=self.reactor, env={"INDIDEV": "Dome"})
        other = RecordingLink(DRIVER, "driver other")
        self.router.add_link(other)
        service.startService()
        other.say(b"<message device='Dome' message='mine'/>")
        self.assertNotIn("Dome", self.router.owners)
        service.protocol.bytes_received(b"<message device='Dome' message='hi'/>")
        self.assertIs(self.router.owners["Dome"], service.protocol)
        service.stopService()
        other.say(b"<message device='Dome' message='mine now'/>")
        self.assertIs(self.router.owners["Dome"], other)

    def test_devices_and_alive(self) -> None:
        """devices lists what the running program announced; alive holds while it runs or a restart is due."""
        self.assertFalse(self.service.alive)
        self.service.startService()
        self.assertTrue(self.service.alive)
        self.service.protocol.bytes_received(b"<message device='Scope' message='hi'/>")
        self.assertEqual(self.service.devices, ["Scope"])
        end(self.service)
        self.assertEqual(self.service.devices, [])
        self.assertTrue(self.service.alive)  # a restart is due
        self.service.stopService()
        self.assertFalse(self.service.alive)


def end(service: DriverService, code: int = 1) -> None:
    """Make the fake driver process of C{service} exit with C{code}."""
    service.protocol.processEnded(Failure(ProcessTerminated(exitCode=code)))


class RestartTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.router = Router(clock=self.reactor)
        self.client = RecordingLink(CLIENT, "client")
        self.router.add_link(self.client)
        self.service = DriverService(self.router, "sh", reactor=self.reactor, restarts=3)
        self.service.startService()

    def test_backoff_doubles(self) -> None:
        """Restarts come after 1 s, then 2 s, then 4 s of failures in a row."""
        for delay in (1, 2, 4):
            end(self.service)
            self.assertIsNone(self.service.protocol)
            self.reactor.advance(delay - 0.01)
            self.assertIsNone(self.service.protocol)
            self.reactor.advance(0.01)
            self.assertIsNotNone(self.service.protocol)
        self.assertEqual(len(self.reactor.spawned), 4)

    def test_backoff_capped(self) -> None:
        """The delay stops growing at max_delay."""
        self.service.restarts = 20
        self.service.max_delay = 8
        delays = []
        for _ in range(6):
            end(self.service)
            delays.append(self.reactor.getDelayedCalls()[0].getTime() - self.reactor.seconds())
            self.reactor.advance(delays[-1])
        self.assertEqual(delays, [1, 2, 4, 8, 8, 8])

    def test_gives_up_after_restarts(self) -> None:
        """After the last allowed restart fails the driver stays down, logged as an error, clients told."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for delay in (1, 2, 4):
            end(self.service)
            self.reactor.advance(delay)
        end(self.service)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(self.reactor.spawned), 4)
        self.assertIn("giving up", self.client.received[-1].attrs["message"])
        self.assertTrue(any(e["log_level"] == LogLevel.error for e in logged))

    def test_stable_run_resets_count(self) -> None:
        """A driver that ran for stable_after seconds starts again from the first delay."""
        end(self.service)
        self.reactor.advance(1)
        end(self.service)
        self.reactor.advance(2)
        self.reactor.advance(self.service.stable_after)
        end(self.service)
        self.assertEqual(self.service.failures, 1)
        self.reactor.advance(1)
        self.assertIsNotNone(self.service.protocol)

    def test_clients_told_of_restart(self) -> None:
        """Clients learn that the driver stopped, how, and when it comes back."""
        end(self.service, 3)
        self.assertEqual(
            self.client.received[-1].attrs["message"],
            "Driver sh exited with status 3; restarting in 1 s",
        )

    def test_stop_cancels_restart(self) -> None:
        """Stopping the service cancels a pending restart."""
        end(self.service)
        self.service.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_no_restart_when_stopping(self) -> None:
        """A driver that ends because the server stops is not restarted."""
        stopped = self.service.stopService()
        end(self.service)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(self.reactor.spawned), 1)


class RealDriverTests(TestCase):
    """A real driver program, run by the real reactor."""

    timeout = 30

    def start(self, *command: str) -> tuple[DriverService, RecordingLink]:
        router = Router(clock=reactor)
        client = RecordingLink(CLIENT, "client")
        router.add_link(client)
        client.say(GET_ALL)
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
    def test_own_process_group(self):
        """The driver runs in a process group of its own (a terminal's Ctrl-C to the server's group misses it), under its own argv."""
        service, client = self.start(*SIMULATOR)
        yield client.wait_for(lambda m: m.tag.startswith("def"))
        pid = service.protocol.transport.pid
        self.assertEqual(os.getpgid(pid), pid)
        self.assertNotEqual(os.getpgid(pid), os.getpgid(0))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            self.assertEqual(f.read().split(b"\0")[:-1], [arg.encode() for arg in SIMULATOR])

    @defer.inlineCallbacks
    def test_signals_as_twisted_gives_them(self):
        """The driver ignores no signal it did not ask to (the Python that puts it in its process group ignores SIGPIPE and SIGXFSZ)."""
        report = (
            "printf '<message device=\"Signals\" message=\"%s\"/>' \"$(grep SigIgn /proc/$$/status)\"; exec cat"
        )
        service, client = self.start("/bin/sh", "-c", report)
        said = yield client.wait_for(lambda m: m.device == "Signals")
        ignored = int(said.attrs["message"].split()[1], 16)
        self.assertFalse(ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)), hex(ignored))

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
        self.assertIn("killed by signal 9", said.attrs["message"])
        self.assertNotIn(DEVICE, service.router.owners)

    @defer.inlineCallbacks
    def test_killed_driver_restarted(self):
        """A driver killed with SIGKILL is restarted and its definitions reach clients again."""
        service, client = self.start(*SIMULATOR)
        yield client.wait_for(lambda m: m.tag.startswith("def"))
        service.protocol.transport.signalProcess("KILL")
        yield client.wait_for(lambda m: m.tag == "delProperty")
        client.take()
        defined = yield client.wait_for(lambda m: m.tag.startswith("def"))
        self.assertEqual(defined.device, DEVICE)
        self.assertEqual(service.failures, 1)

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
    def leftover_driver(self, holds_input: bool = False, exits: bool = False):
        """
        A shell-script driver that starts a child holding its output pipes
        (and, with C{holds_input}, its stdin, unread) and then stays, or
        with C{exits} exits at once; fire with its service once it runs.
        """
        leftover = os.path.abspath(self.mktemp())
        child = "exec 3<&0; sleep 300 <&3 3<&- &" if holds_input else "sleep 300 &"
        script = f"{child} echo $! > {leftover}; echo '<message message=\"up\"/>'; " + (
            "exit 0" if exits else "exec sleep 300"
        )
        service, client = self.start("/bin/sh", "-c", script)
        service.stop_timeout = 600  # SIGKILL must not be what ends it
        yield client.wait_for(lambda m: m.tag == "message")
        self.addCleanup(lambda: os.kill(int(open(leftover).read()), signal.SIGKILL))
        return service

    @defer.inlineCallbacks
    def test_stop_does_not_wait_for_what_the_driver_left_running(self):
        """A driver whose leftover child holds its output pipes has ended for the server once it exits on SIGTERM."""
        service = yield self.leftover_driver()
        yield service.stopService()

    test_stop_does_not_wait_for_what_the_driver_left_running.timeout = 10  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_stop_drops_input_a_leftover_holds(self):
        """Input queued for a stopped driver is dropped, not waited on, when a leftover child holds its stdin unread."""
        service = yield self.leftover_driver(holds_input=True)
        service.protocol.write(b" " * (4 * 1024 * 1024))  # far more than a pipe holds
        yield service.stopService()

    test_stop_drops_input_a_leftover_holds.timeout = 10  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_stop_after_exit_does_not_wait_for_what_the_driver_left_running(self):
        """A driver that exited by itself, its leftover child holding its pipes, is done with at once when stopped."""
        service = yield self.leftover_driver(exits=True)
        protocol = service.protocol
        yield protocol.exited
        self.assertFalse(protocol.ended.called)  # the pipes are still open
        yield service.stopService()

    test_stop_after_exit_does_not_wait_for_what_the_driver_left_running.timeout = 10  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_stop_service_ends_driver(self):
        """Stopping the service ends the driver process."""
        service, client = self.start(*SIMULATOR)
        yield client.wait_for(lambda m: m.tag.startswith("def"))
        ended = service.protocol.ended
        yield service.stopService()
        self.assertTrue(ended.called)
        self.assertIsNone(service.protocol)
