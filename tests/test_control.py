"""
Tests for L{indiserv.control}: indiserver's FIFO for starting and stopping
drivers (-f, --fifo), from line parsing to real drivers and real clients.
"""

from __future__ import annotations

import os
import stat
import sys
from xml.etree import ElementTree

from twisted.internet import defer, reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from indiserv import IndiServer
from indiserv.control import (
    Command,
    CommandError,
    FifoError,
    FifoReader,
    open_fifo,
    parse_command,
)
from indiserv.driver import DriverService
from indiserv.remote import RemoteService

from .support import (
    SIMULATOR_COMMAND_LINE,
    attached_client,
    child_env,
    executable_script,
    logged_text,
    require_programs,
    serve,
    when_logged,
    write_fifo,
)
from .test_driver import FakeProcessReactor, end

SIMULATOR = "indiserv Simulator"

#: A driver that reports the settings a FIFO start gives it: a text
#: property ENVIRONMENT of device $INDIDEV (or "Env Reporter"), one member
#: per variable, "(unset)" for those not set.
ENV_REPORTER = """
import os, sys
from indiserv import wire
from tests.support import stdin_messages

VARIABLES = ("INDIDEV", "INDICONFIG", "INDISKEL", "INDIPREFIX")
device = os.environ.get("INDIDEV", "Env Reporter")
definition = wire.def_vector(
    "Text", device, "ENVIRONMENT",
    {variable: os.environ.get(variable, "(unset)") for variable in VARIABLES},
    state="Ok", perm="ro",
).raw
for message in stdin_messages():
    if message.tag == "getProperties":
        sys.stdout.buffer.write(definition)
        sys.stdout.buffer.flush()
"""


class ParseCommandTests(SynchronousTestCase):
    def test_start_with_settings(self) -> None:
        """start DRIVER takes -n, -c, -s and -p, each with a quoted value."""
        self.assertEqual(
            parse_command('start indi_simulator_ccd -n "My CCD" -c "/a b/c.xml" -s "/s.xml" -p "/opt/indi"'),
            Command("start", "indi_simulator_ccd", "My CCD", "/a b/c.xml", "/s.xml", "/opt/indi"),
        )

    def test_stop(self) -> None:
        """stop DRIVER, with or without the device name."""
        self.assertEqual(parse_command("stop indi_simulator_ccd"), Command("stop", "indi_simulator_ccd"))
        self.assertEqual(
            parse_command('stop indi_simulator_ccd -n "My CCD"'),
            Command("stop", "indi_simulator_ccd", device="My CCD"),
        )

    def test_trailing_words_ignored(self) -> None:
        """Words that are not settings are kept aside as ignored, as indiserver ignores them."""
        command = parse_command('stop indi_simulator_ccd "My CCD"')
        self.assertEqual((command.driver, command.device, command.ignored), ("indi_simulator_ccd", None, "'My CCD'"))

    def test_remote(self) -> None:
        """A line with @ names a server: quotes removed, default port 7624, trailing options ignored."""
        self.assertEqual(
            parse_command('start "CCD Simulator"@camera.local:7700'),
            Command("start", remote=("CCD Simulator", "camera.local", 7700)),
        )
        self.assertEqual(parse_command("stop @camera.local"), Command("stop", remote=(None, "camera.local", 7624)))
        command = parse_command('start Scope@far:7624 -c "/x.xml"')
        self.assertEqual((command.remote, command.ignored), (("Scope", "far", 7624), "-c /x.xml"))

    def test_unknown_verb(self) -> None:
        """Only start and stop are commands (indiserver would take any other word for stop)."""
        error = self.assertRaises(CommandError, parse_command, "restart indi_simulator_ccd")
        self.assertIn("'restart'", str(error))

    def test_bad_lines(self) -> None:
        """A line without a driver, with unbalanced quotes, or with a bad server is refused."""
        for line in ("", "start", 'start indi_x -n "open', "start @:7624",
                     "start @127.0.0.1:99999", "start indi_x@"):
            self.assertRaises(CommandError, parse_command, line)

    def test_at_sign_in_driver_settings(self) -> None:
        """An @ inside a driver's settings does not make the line a server (it would for indiserver)."""
        command = parse_command('start indi_x -c "/home/me@laptop/ccd.xml"')
        self.assertEqual((command.driver, command.config, command.remote),
                         ("indi_x", "/home/me@laptop/ccd.xml", None))


class OpenFifoTests(SynchronousTestCase):
    def test_missing_made_0600(self) -> None:
        """A FIFO that does not exist is made, readable and writable by its owner only."""
        path = os.path.abspath(self.mktemp())
        os.close(open_fifo(path))
        mode = os.stat(path).st_mode
        self.assertTrue(stat.S_ISFIFO(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600)

    def test_not_a_fifo(self) -> None:
        """A path holding a regular file is a clear error naming it."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("not a fifo")
        error = self.assertRaises(FifoError, open_fifo, path)
        self.assertIn(path, str(error))
        self.assertIn("not a FIFO", str(error))

    def test_no_such_directory(self) -> None:
        """A FIFO whose directory does not exist is a clear error saying so."""
        path = os.path.join(os.path.abspath(self.mktemp()), "fifo")
        error = self.assertRaises(FifoError, open_fifo, path)
        self.assertIn(path, str(error))
        self.assertIn("No such file or directory", str(error))


class FifoReaderTests(TestCase):
    """The real FIFO, read by the real reactor."""

    timeout = 10

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.lines: list[str] = []
        self.waiting: list[tuple[int, defer.Deferred[None]]] = []
        self.reader = FifoReader(self.path, self.received, reactor, max_line=64)
        self.addCleanup(self.reader.close)

    def received(self, line: str) -> None:
        self.lines.append(line)
        for count, d in list(self.waiting):
            if len(self.lines) >= count:
                self.waiting.remove((count, d))
                d.callback(None)

    def lines_read(self, count: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting.append((count, d))
        if len(self.lines) >= count:
            self.waiting.remove((count, d))
            d.callback(None)
        return d

    def reopened(self) -> defer.Deferred[None]:
        """Fires once the reader has seen its writer's EOF and opened the FIFO again."""
        d: defer.Deferred[None] = defer.Deferred()
        lost = self.reader.connectionLost

        def then(reason: object) -> None:
            del self.reader.connectionLost
            lost(reason)
            d.callback(None)

        self.reader.connectionLost = then
        return d

    @defer.inlineCallbacks
    def test_lines_from_writer_after_writer(self):
        """Each writer's lines are read; after a writer closes the FIFO the next one is heard too."""
        first_fd = self.reader.fd
        reopened = self.reopened()
        write_fifo(self.path, "start a\nstop a\n")
        yield self.lines_read(2)
        yield reopened
        self.assertNotEqual(self.reader.fd, first_fd)
        reopened = self.reopened()
        write_fifo(self.path, "start b\n")
        yield self.lines_read(3)
        yield reopened
        write_fifo(self.path, "  \n\nstop b\n")
        yield self.lines_read(4)
        self.assertEqual(self.lines, ["start a", "stop a", "start b", "stop b"])

    def test_long_line_across_reads_dropped(self) -> None:
        """A line that grows past the limit over several reads is dropped once, holding at most the limit."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for _ in range(3):
            self.reader._received(b"z" * 40)
            self.assertLessEqual(len(self.reader._partial), 64)
        self.reader._received(b"zz\nstart b\n")
        self.assertEqual(self.lines, ["start b"])
        self.assertEqual(len([e for e in logged if e["log_level"] == LogLevel.warn]), 1)

    @defer.inlineCallbacks
    def test_last_line_without_newline(self):
        """A last line without a newline counts once its writer closes the FIFO, as with indiserver."""
        write_fifo(self.path, "start a\nstop a")
        yield self.lines_read(2)
        self.assertEqual(self.lines, ["start a", "stop a"])

    @defer.inlineCallbacks
    def test_long_line_dropped(self):
        """A line over the limit is dropped with a warning, in one write or many; the next line is read."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        write_fifo(self.path, "x" * 65 + "\nstart a\n")
        yield self.lines_read(1)
        write_fifo(self.path, "y" * 64)  # at the limit, ended by its writer's EOF
        yield self.lines_read(2)
        fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            for _ in range(10):
                os.write(fd, b"z" * 1000)
            os.write(fd, b"\nstart b\n")
        finally:
            os.close(fd)
        yield self.lines_read(3)
        self.assertEqual(self.lines, ["start a", "y" * 64, "start b"])
        warnings = [e for e in logged if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 2)
        self.assertIn("longer than 64 bytes", logged_text(warnings[0]))
        self.assertLessEqual(len(self.reader._partial), 64)

    def test_closed_reader_leaves_nothing(self) -> None:
        """After close the reactor no longer watches the FIFO and its descriptor is closed."""
        fd = self.reader.fd
        self.reader.close()
        self.assertNotIn(self.reader, reactor.getReaders())
        self.assertRaises(OSError, os.fstat, fd)


class ControlUnitTests(SynchronousTestCase):
    """FifoControl's decisions, with a reactor that spawns nothing."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.server = IndiServer(host="127.0.0.1", port=0, reactor=self.reactor)
        self.env = {"PATH": os.environ["PATH"], "INDIDEV": "inherited", "HOME": "/nowhere"}
        self.control = self.server.add_fifo(os.path.abspath(self.mktemp()), env=self.env)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def drivers(self) -> list[DriverService]:
        return [s for s in self.server if isinstance(s, DriverService)]

    def warnings(self) -> list[str]:
        return [logged_text(e) for e in self.logged if e["log_level"] == LogLevel.warn]

    def test_start_sets_environment(self) -> None:
        """-n, -c and -s become INDIDEV, INDICONFIG and INDISKEL; unset ones are not inherited."""
        self.control.line_received('start sh -n "My Scope" -c "/c.xml"')
        (driver,) = self.drivers()
        self.assertTrue(driver.alive)
        self.assertEqual(driver.env["INDIDEV"], "My Scope")
        self.assertEqual(driver.env["INDICONFIG"], "/c.xml")
        self.assertNotIn("INDISKEL", driver.env)
        self.assertEqual(driver.env["HOME"], "/nowhere")
        self.assertEqual(driver.device, "My Scope")
        self.control.line_received("start sh")
        self.assertNotIn("INDIDEV", self.drivers()[1].env)

    def test_prefix(self) -> None:
        """-p PREFIX runs PREFIX/bin/DRIVER with INDIPREFIX set."""
        prefix = os.path.abspath(self.mktemp())
        program = executable_script(os.path.join(prefix, "bin"), "indi_mine", "true")
        self.control.line_received(f'start indi_mine -p "{prefix}"')
        (driver,) = self.drivers()
        self.assertEqual(driver.program, program)
        self.assertEqual(driver.driver_name, "indi_mine")
        self.assertEqual(driver.env["INDIPREFIX"], prefix)
        self.assertEqual(self.reactor.spawned[-1][1][-2:], [program, program])

    def test_duplicate_start_refused(self) -> None:
        """A second start of a running driver under the same device name is refused with a log line."""
        self.control.line_received('start sh -n "A"')
        self.control.line_received('start sh -n "A"')
        self.control.line_received('start sh -n "B"')
        self.assertEqual([d.device for d in self.drivers()], ["A", "B"])
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("sh is running already", self.warnings()[0])

    def test_restart_after_giving_up(self) -> None:
        """A driver that gave up restarting is replaced by a new start."""
        self.control.line_received("start sh")
        (old,) = self.drivers()
        old.restarts = 0
        end(old)
        self.assertFalse(old.alive)
        self.control.line_received("start sh")
        (new,) = self.drivers()
        self.assertIsNot(new, old)
        self.assertTrue(new.alive)

    def test_stop(self) -> None:
        """stop ends the named driver's service: detached and signalled, no restart pending."""
        self.control.line_received('start sh -n "A"')
        self.control.line_received('start sh -n "B"')
        first, second = self.drivers()
        self.control.line_received('stop sh -n "B"')
        self.assertEqual(self.drivers(), [first])
        self.assertFalse(second.running)
        stopped = second.protocol
        self.assertEqual(stopped.transport.signals, ["TERM"])
        # Its devices leave the router now, not when it has exited.
        self.assertNotIn(stopped, self.server.router.drivers)
        end(second)
        self.assertFalse(second.alive)  # no restart pending
        self.control.line_received("stop sh")
        self.assertEqual(self.drivers(), [])

    def test_start_right_after_stop_serves_the_device(self) -> None:
        """A driver started while the stopped one is still exiting owns its device (no clash, no late delProperty)."""
        define = b"<defTextVector device='A' name='T'><defText name='X'>x</defText></defTextVector>"
        self.control.line_received('start sh -n "A"')
        (old,) = self.drivers()
        old.protocol.outReceived(define)
        self.control.line_received('stop sh -n "A"')
        self.control.line_received('start sh -n "A"')
        (new,) = self.drivers()
        new.protocol.outReceived(define)
        self.assertIs(self.server.router.owners["A"], new.protocol)
        end(old)  # the old program exits only now
        self.assertIs(self.server.router.owners["A"], new.protocol)

    def test_server_stop_waits_for_stopped_driver(self) -> None:
        """A driver stopped from the FIFO that is still exiting holds up the server's stop until it ends."""
        self.control.line_received("start sh")
        (driver,) = self.drivers()
        self.control.line_received("stop sh")
        stopping = self.control.stopService()
        self.assertNoResult(stopping)
        end(driver)
        self.successResultOf(stopping)

    def test_stop_unknown(self) -> None:
        """Stopping a driver that does not run is refused with a log line."""
        self.control.line_received("stop indi_nothing")
        self.assertIn("no such driver", self.warnings()[0])

    def test_unknown_verb(self) -> None:
        """An unknown verb is refused with a log line and stops nothing."""
        self.control.line_received("start sh")
        self.control.line_received("kill sh")
        self.assertEqual(len(self.drivers()), 1)
        self.assertIn("unknown command 'kill'", self.warnings()[0])

    def test_missing_driver(self) -> None:
        """A driver that is not on PATH is refused with a log line; nothing is added."""
        self.control.line_received("start indi_no_such_driver")
        self.assertEqual(self.drivers(), [])
        self.assertIn("indi_no_such_driver", self.warnings()[0])

    def test_remote_start_stop(self) -> None:
        """start/stop [device]@host[:port] add and remove the link to that server, once."""
        self.control.line_received('start "CCD Simulator"@camera.local:7700')
        self.control.line_received("start CCD Simulator@camera.local:7700")
        (remote,) = [s for s in self.server if isinstance(s, RemoteService)]
        self.assertEqual((remote.device, remote.address), ("CCD Simulator", "CCD Simulator@camera.local:7700"))
        self.assertIn("linked already", self.warnings()[0])
        self.control.line_received("stop @camera.local:7700")
        self.assertIn("not linked", self.warnings()[1])
        self.control.line_received('stop "CCD Simulator"@camera.local:7700')
        self.assertEqual([s for s in self.server if isinstance(s, RemoteService)], [])


class ControlStartupTests(SynchronousTestCase):
    def test_unusable_path(self) -> None:
        """A FIFO path that cannot be used stops the server's startup with the reason."""
        path = os.path.join(os.path.abspath(self.mktemp()), "missing-dir", "fifo")
        server = IndiServer(host="127.0.0.1", port=0, reactor=FakeProcessReactor())
        server.add_fifo(path)
        error = self.assertRaises(FifoError, server.startService)
        self.assertIn(path, str(error))


TELESCOPE = "indi_simulator_telescope"


class FifoInteropTests(TestCase):
    """Commands written into a real FIFO, real drivers, a real client."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.path = os.path.abspath(self.mktemp())
        self.server = yield serve(self)
        # Settings the server itself runs with, which a start line replaces.
        inherited = {"INDIDEV": "Inherited", "INDICONFIG": "/inherited.xml",
                     "INDISKEL": "/inherited-skel.xml", "INDIPREFIX": "/inherited-prefix"}
        self.control = self.server.add_fifo(self.path, env=child_env(HOME=self.home, **inherited))
        self.client = yield attached_client(self, self.server)
        self.client.say(b"<getProperties version='1.7'/>")

    def command(self, line: str) -> defer.Deferred[dict]:
        """Write C{line} into the FIFO; fires with the log event saying what became of it."""
        seen = when_logged(self, lambda e: e.get("line") == line)
        write_fifo(self.path, line + "\n")
        return seen

    @defer.inlineCallbacks
    def test_start_and_stop_real_telescope(self):
        """start -n "My Scope" runs indi_simulator_telescope as My Scope; stop deletes it for clients and it stays down."""
        require_programs(TELESCOPE)
        self.command(f'start {TELESCOPE} -n "My Scope"')
        defined = yield self.client.wait_for(lambda m: m.tag.startswith("def") and m.name == "CONNECTION")
        self.assertEqual(defined.device, "My Scope")
        (driver,) = [s for s in self.server if isinstance(s, DriverService)]
        ended = driver.protocol.ended
        self.command(f'stop {TELESCOPE} -n "My Scope"')
        deleted = yield self.client.wait_for(lambda m: m.tag == "delProperty")
        self.assertEqual(deleted.device, "My Scope")
        said = yield self.client.wait_for(lambda m: m.tag == "message" and "stopped" in m.attrs["message"])
        self.assertIn(TELESCOPE, said.attrs["message"])
        yield ended
        self.assertFalse(driver.running)
        self.assertFalse(driver.alive)
        self.assertEqual([s for s in self.server if isinstance(s, DriverService)], [])
        self.assertNotIn("My Scope", self.server.router.owners)

    def env_reporter(self, directory: str | None = None) -> str:
        """The ENV_REPORTER driver as the program C{directory}/env-reporter; its path."""
        directory = directory or os.path.abspath(self.mktemp())
        os.makedirs(directory, exist_ok=True)
        script = os.path.join(directory, "env_reporter.py")
        with open(script, "w") as f:
            f.write(ENV_REPORTER)
        return executable_script(directory, "env-reporter", f"{sys.executable} {script}")

    @defer.inlineCallbacks
    def reported(self, line: str) -> defer.Deferred[dict[str, str]]:
        """Write C{line}; fire with the device and environment the started driver reports."""
        self.command(line)
        defined = yield self.client.wait_for(lambda m: m.name == "ENVIRONMENT")
        environment = {one.get("name"): (one.text or "").strip() for one in ElementTree.fromstring(defined.raw)}
        return {"device": defined.device, **environment}

    @defer.inlineCallbacks
    def test_start_settings_reach_driver(self):
        """start -n -c -s: the driver program runs with INDIDEV, INDICONFIG and INDISKEL set to them."""
        program = self.env_reporter()
        seen = yield self.reported(f'start {program} -n "Dev A" -c "/etc/my config.xml" -s "/usr/share/skel.xml"')
        self.assertEqual(seen, {
            "device": "Dev A", "INDIDEV": "Dev A", "INDICONFIG": "/etc/my config.xml",
            "INDISKEL": "/usr/share/skel.xml", "INDIPREFIX": "/inherited-prefix",
        })

    @defer.inlineCallbacks
    def test_bare_start_inherits_only_prefix(self):
        """A start without settings gives the driver no INDIDEV, INDICONFIG or INDISKEL, even the server's own; INDIPREFIX passes through, as with indiserver."""
        program = self.env_reporter()
        seen = yield self.reported(f"start {program}")
        self.assertEqual(seen, {
            "device": "Env Reporter", "INDIDEV": "(unset)", "INDICONFIG": "(unset)",
            "INDISKEL": "(unset)", "INDIPREFIX": "/inherited-prefix",
        })

    @defer.inlineCallbacks
    def test_prefix_runs_prefix_bin_driver(self):
        """start DRIVER -p PREFIX runs PREFIX/bin/DRIVER with INDIPREFIX set to PREFIX."""
        prefix = os.path.abspath(self.mktemp())
        self.env_reporter(os.path.join(prefix, "bin"))
        seen = yield self.reported(f'start env-reporter -p "{prefix}" -n "Dev P"')
        self.assertEqual((seen["device"], seen["INDIPREFIX"]), ("Dev P", prefix))

    @defer.inlineCallbacks
    def test_stop_by_announced_device(self):
        """stop DRIVER -n DEVICE stops a driver started without -n that announced DEVICE itself (as web managers stop drivers)."""
        program = self.env_reporter()
        yield self.reported(f"start {program}")
        self.command('stop env-reporter -n "Env Reporter"')
        deleted = yield self.client.wait_for(lambda m: m.tag == "delProperty")
        self.assertEqual(deleted.device, "Env Reporter")

    @defer.inlineCallbacks
    def test_refusals_logged(self):
        """An unknown verb and a duplicate start are refused with a log line; the driver keeps running."""
        script = executable_script(os.path.abspath(self.mktemp()), "indiserv-test-simulator", SIMULATOR_COMMAND_LINE)
        yield self.command(f"start {script}")
        yield self.client.wait_for(lambda m: m.device == SIMULATOR)
        event = yield self.command("frobnicate indiserv-test-simulator")
        self.assertIn("unknown command 'frobnicate'", logged_text(event))
        event = yield self.command(f"start {script}")
        self.assertIn("running already", logged_text(event))
        (driver,) = [s for s in self.server if isinstance(s, DriverService)]
        self.assertTrue(driver.alive)

    @defer.inlineCallbacks
    def test_remote_start_and_stop(self):
        """start @host:port links to another server, whose device clients then see; stop unlinks it and clients get delProperty."""
        other = yield serve(self, [sys.executable, "-m", "indiserv.simulator"], env=child_env())
        yield self.command(f"start @127.0.0.1:{other.port}")
        yield self.client.wait_for(lambda m: m.device == SIMULATOR and m.tag.startswith("def"))
        yield self.command(f'stop ""@127.0.0.1:{other.port}')
        deleted = yield self.client.wait_for(lambda m: m.tag == "delProperty")
        self.assertEqual(deleted.device, SIMULATOR)
        self.assertEqual([s for s in self.server if isinstance(s, RemoteService)], [])
