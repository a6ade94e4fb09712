"""
Tests for L{indiserv.tap} and the twistd plugin: options, service, discovery.
"""

from __future__ import annotations

import io
import os
import re
import signal
import sys

from twisted.application.service import IServiceMaker
from twisted.internet import defer, reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.plugin import IPlugin, getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

import indiserv
from indiserv.control import FifoControl
from indiserv.daylog import DayLog
from indiserv.driver import in_own_process_group
from indiserv.service import IndiServer
from indiserv.tap import Options, makeService, version_text

from .support import (
    LISTENING, PACKAGE_ROOT, SIMULATOR_COMMAND_LINE, child_env, child_processes, connect_client, executable_script,
    free_port, process_running, serve,
)


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    def test_help_has_no_gaps(self) -> None:
        """--help's text reads as sentences: no gaps left by docstrings' line breaks."""
        text = str(Options())
        self.assertIn("MODULE:FACTORY names a callable", " ".join(text.split()))
        for line in text.splitlines():
            # A gap between two words of a sentence (the option column ends
            # before a capital).
            self.assertNotRegex(line, r"[a-z,] {2,}[a-z(]", line)

    def test_version(self) -> None:
        """--version prints indiserv's version (not only Twisted's) and exits 0."""
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        exited = self.assertRaises(SystemExit, parse, "--version")
        self.assertEqual(exited.code, 0)
        self.assertEqual(stdout.getvalue(), version_text() + "\n")

    def test_defaults(self) -> None:
        """Without options: port 7624 on localhost, 10 connections, keepalive 30, quiet."""
        options = parse()
        self.assertEqual(options["endpoint"], "tcp:7624:interface=localhost")
        self.assertEqual(options["max-connections"], 10)
        self.assertEqual(options["keepalive"], 30.0)
        self.assertEqual(options["verbose"], 0)
        self.assertEqual(options["drivers"], [])

    def test_port_and_host(self) -> None:
        """A numeric --port listens at --host."""
        options = parse("--port", "7700", "--host", "0.0.0.0")
        self.assertEqual(options["endpoint"], "tcp:7700:interface=0.0.0.0")

    def test_endpoint_string(self) -> None:
        """--port also takes any server endpoint string."""
        options = parse("--port", "unix:/tmp/indi-test.sock")
        self.assertEqual(options["endpoint"], "unix:/tmp/indi-test.sock")

    def test_verbose_repeatable(self) -> None:
        """-v may be repeated, as with indiserver."""
        self.assertEqual(parse("-vvv")["verbose"], 3)
        self.assertEqual(parse("-v", "--verbose")["verbose"], 2)

    def test_drivers_with_arguments(self) -> None:
        """Each positional argument is a driver; one quoted word may carry its arguments."""
        options = parse("sh", "sh -c 'exit 0'")
        self.assertEqual(options["drivers"], [["sh"], ["sh", "-c", "exit 0"]])

    def test_remotes(self) -> None:
        """[device]@host[:port] arguments and --remote name remote servers; --remote-blobs lets BLOBs cross."""
        options = parse("--remote", "far:7700", "--remote-blobs", "sh", "@near", "CCD Simulator@far:7701")
        self.assertEqual(options["drivers"], [["sh"]])
        self.assertEqual(
            options["remotes"],
            [(None, "far", 7700), (None, "near", 7624), ("CCD Simulator", "far", 7701)],
        )
        self.assertTrue(options["remote-blobs"])
        server = makeService(options)
        remotes = [child for child in server if hasattr(child, "blob_enable")]
        self.assertEqual([r.address for r in remotes], ["far:7700", "near:7624", "CCD Simulator@far:7701"])
        self.assertTrue(all(r.blob_enable for r in remotes))

    def test_bad_remote(self) -> None:
        """A remote whose port is not a number is a usage error."""
        self.assertRaises(UsageError, parse, "--remote", "far:seven")

    def test_missing_driver_not_a_usage_error(self) -> None:
        """A driver that is not on PATH is no usage error (twistd would print its whole usage): the start says so."""
        self.assertEqual(parse("indi_no_such_driver")["drivers"], [["indi_no_such_driver"]])

    def test_bad_ipydriver(self) -> None:
        """--ipydriver needs MODULE:FACTORY naming something importable; each fault is a usage error saying which."""
        for spec, said in [
            ("tests.ipydrivers", "expected MODULE:FACTORY"),
            ("no_such_module_here:make", "no_such_module_here"),
            ("tests.ipydrivers:no_such_factory", "no_such_factory"),
        ]:
            error = self.assertRaises(UsageError, parse, "--ipydriver", spec)
            self.assertIn(said, str(error))

    def test_bad_numbers(self) -> None:
        """Nonsensical limits are usage errors."""
        self.assertRaises(UsageError, parse, "--max-connections", "0")
        self.assertRaises(UsageError, parse, "--keepalive", "-1")
        self.assertRaises(UsageError, parse, "--max-connections", "many")

    def test_connection_options(self) -> None:
        """Pending, per-host, time-limit, grace and peer options reach the server and its client factory."""
        access = os.path.abspath(self.mktemp())
        with open(access, "w") as f:
            f.write("peer 10.0.0.0/8\n")
        server = makeService(
            parse(
                "--port", "0", "--max-pending", "5", "--max-connections-per-host", "2",
                "--handshake-timeout", "3", "--idle-timeout", "600", "--grace", "1.5",
                "--peer", "127.0.0.2", "--peer", "::1", "--access", access,
            )
        )
        factory = server.factory
        self.assertEqual(
            (factory.max_pending, factory.max_per_host, factory.handshake_timeout, factory.idle_timeout),
            (5, 2, 3.0, 600.0),
        )
        self.assertEqual(server.grace, 1.5)
        self.assertEqual([rule.text for rule in factory.access.rules], ["127.0.0.2", "::1", "10.0.0.0/8"])

    def test_connection_defaults(self) -> None:
        """By default: 64 pending, no per-host limit, 10 s to say something, no idle timeout, a 5 s grace, no peers."""
        options = parse()
        self.assertEqual(
            [options[o] for o in ("max-pending", "max-connections-per-host", "handshake-timeout", "idle-timeout", "grace")],
            [64, 0, 10.0, 0.0, 5.0],
        )
        self.assertEqual(makeService(options).factory.access.rules, ())

    def test_bad_connection_options(self) -> None:
        """Nonsensical connection limits and bad peer addresses are usage errors."""
        for argv in (
            ["--max-pending", "0"],
            ["--handshake-timeout", "0"],
            ["--idle-timeout", "-1"],
            ["--grace", "-1"],
            ["--max-connections-per-host", "-1"],
            ["--peer", "observatory-b"],
        ):
            self.assertRaises(UsageError, parse, *argv)

    def test_malformed_access_file(self) -> None:
        """A malformed access file stops startup with a usage error naming the line."""
        access = os.path.abspath(self.mktemp())
        with open(access, "w") as f:
            f.write("# peers\npeer 10.0.0.1\npeers 10.0.0.2\n")
        error = self.assertRaises(UsageError, parse, "--access", access)
        self.assertIn(f"{access} line 3", str(error))

    def test_certificate_rules_need_client_certificates(self) -> None:
        """Certificate rules without --require-client-cert are a usage error: no certificate would be asked for."""
        access = os.path.abspath(self.mktemp())
        with open(access, "w") as f:
            f.write("peer subject:CN=observatory-b\n")
        error = self.assertRaises(UsageError, parse, "--access", access)
        self.assertIn("--require-client-cert", str(error))

    def test_limits(self) -> None:
        """Queue, message-size and shape limits reach the router and the links' parsers."""
        server = makeService(
            parse(
                "--port", "0", "--max-queue", "32", "--max-stream", "2", "--restarts", "3",
                "--max-client-message", "1", "--max-driver-message", "100",
                "--max-attributes", "10", "--max-attribute-length", "100", "--max-depth", "4",
                "--max-markup", "4096", "sh",
            )
        )
        self.assertEqual(server.router.max_queue, 32 * 1024 * 1024)
        self.assertEqual(server.router.max_stream, 2 * 1024 * 1024)
        self.assertEqual(server.factory.limits.max_element, 1024 * 1024)
        self.assertEqual(
            (server.factory.limits.max_attributes, server.factory.limits.max_attribute_length,
             server.factory.limits.max_depth, server.factory.limits.max_markup),
            (10, 100, 4, 4096),
        )
        (driver,) = [child for child in server if getattr(child, "program", None) == "sh"]
        self.assertEqual(driver.restarts, 3)
        self.assertEqual(driver.limits.max_element, 100 * 1024 * 1024)
        self.assertEqual(driver.limits.max_markup, 4096)

    def test_limit_defaults(self) -> None:
        """Defaults: 128 MB queue, 5 MB stream, 10 restarts, 16 MB client and 300 MB driver messages."""
        options = parse()
        self.assertEqual(
            (options["max-queue"], options["max-stream"], options["restarts"],
             options["max-client-message"], options["max-driver-message"]),
            (128, 5, 10, 16, 300),
        )

    def test_bad_limits(self) -> None:
        """Zero or negative limits are usage errors."""
        self.assertRaises(UsageError, parse, "--max-queue", "0")
        self.assertRaises(UsageError, parse, "--restarts", "-1")
        self.assertRaises(UsageError, parse, "--max-depth", "0")
        self.assertRaises(UsageError, parse, "--max-markup", "0")

    def test_make_service(self) -> None:
        """makeService builds an IndiServer with the options and one child per driver."""
        server = makeService(parse("--port", "0", "--keepalive", "0", "--max-connections", "3", "-vv", "sh"))
        self.assertIsInstance(server, IndiServer)
        self.assertEqual(server.keepalive, 0)
        self.assertEqual(server.maxconnections, 3)
        self.assertEqual(server.router.verbose, 2)
        drivers = [child for child in server if getattr(child, "program", None) == "sh"]
        self.assertEqual(len(drivers), 1)


    def test_operations_options(self) -> None:
        """--fifo/-f, --log-dir/-l and --unix add their services before the drivers, so they fail first."""
        fifo, logs = os.path.abspath(self.mktemp()), os.path.abspath(self.mktemp())
        options = parse("--port", "0", "-f", fifo, "--log-dir", logs, "--unix", "@indiserv-tap-test", "sh")
        self.assertEqual((options["fifo"], options["log-dir"], options["unix"]), (fifo, logs, "@indiserv-tap-test"))
        server = makeService(options)
        kinds = [type(child).__name__ for child in server]
        self.assertEqual(
            kinds[kinds.index("Router") + 1 :],
            ["StreamServerEndpointService", "DayLog", "FifoControl", "DriverService"],
        )
        self.assertEqual(server.router.message_log, [c for c in server if isinstance(c, DayLog)][0].record)
        control = [c for c in server if isinstance(c, FifoControl)][0]
        self.assertEqual(control.path, fifo)

    def test_no_stream_skipping(self) -> None:
        """-d/--max-stream 0 never skips stream frames, as with indiserver -d 0."""
        self.assertEqual(makeService(parse("--port", "0", "-d", "0")).router.max_stream, sys.maxsize)
        self.assertEqual(makeService(parse("--port", "0", "-d", "2")).router.max_stream, 2 * 1024 * 1024)
        self.assertRaises(UsageError, parse, "--max-stream", "-1")


class PluginTests(SynchronousTestCase):
    def test_discovered(self) -> None:
        """twistd finds the indiserver plugin and it provides IServiceMaker."""
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("indiserver", makers)
        maker = makers["indiserver"]
        self.assertTrue(verifyObject(IServiceMaker, maker))
        self.assertTrue(IPlugin.providedBy(maker))
        self.assertIs(maker.options, Options)


class _Collect(ProcessProtocol):
    """Gathers a process's output and fires when a pattern shows up in it."""

    def __init__(self, pattern: bytes) -> None:
        self.output = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._waiting: list[tuple[re.Pattern[bytes], defer.Deferred[re.Match[bytes]]]] = []
        self.seen = self.wait_for(pattern)

    def wait_for(self, pattern: bytes) -> defer.Deferred[re.Match[bytes]]:
        """Fires with the first match of C{pattern} in the output, so far or to come."""
        found: defer.Deferred[re.Match[bytes]] = defer.Deferred()
        self._waiting.append((re.compile(pattern), found))
        self.outReceived(b"")
        if self.ended.called and not found.called:
            self._waiting.pop()
            found.errback(AssertionError(self.output.decode("utf-8", "replace")))
        return found

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for waiting in list(self._waiting):
            match = waiting[0].search(self.output)
            if match:
                self._waiting.remove(waiting)
                waiting[1].callback(match)

    errReceived = outReceived

    def processEnded(self, reason: object) -> None:
        #: How it ended: ProcessDone, or ProcessTerminated with exitCode.
        self.reason = reason
        waiting, self._waiting = self._waiting, []
        for _, found in waiting:
            found.errback(AssertionError(self.output.decode("utf-8", "replace")))
        self.ended.callback(None)


TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


@defer.inlineCallbacks
def interrupted(testcase: TestCase, argv: list[str], ready: bytes, **spawn: object):
    """
    Run the server C{argv} in a process group of its own, as a terminal
    runs a command; once C{ready} is in its output, send SIGINT to that whole
    group, as Ctrl-C does.  Fires with its output, how it ended (the
    ProcessDone or ProcessTerminated) and the pids of the drivers it ran,
    once it has exited; fails the test if the output shows a traceback or a
    driver restarting, or a driver is left.
    """
    output = _Collect(ready)
    executable, group_argv = in_own_process_group(argv[0], argv)
    process = reactor.spawnProcess(output, executable, group_argv, **spawn)
    testcase.addCleanup(lambda: output.ended if output.ended.called else _end(process, output))
    yield output.seen
    drivers = [pid for pid, _ in child_processes(process.pid)]
    os.killpg(process.pid, signal.SIGINT)
    yield output.ended
    text = output.output.decode("utf-8", "replace")
    testcase.assertNotIn("Traceback", text)
    testcase.assertNotIn("Unhandled", text)
    testcase.assertNotRegex(text, r"restart(ing)? ")
    testcase.assertEqual([pid for pid in drivers if process_running(pid)], [])
    return text, output.reason.value, drivers


def _end(process: object, output: _Collect) -> defer.Deferred[None]:
    process.signalProcess("KILL")  # type: ignore[attr-defined]
    return output.ended


class TwistdSmokeTests(TestCase):
    """The command users run: twistd -n indiserver."""

    timeout = 60

    @defer.inlineCallbacks
    def test_twistd_serves_driver(self):
        """twistd -n indiserver serves the demo driver to a TCP client and stops on SIGTERM."""
        script = executable_script(os.path.abspath(self.mktemp()), "indiserv-test-simulator", SIMULATOR_COMMAND_LINE)
        output = _Collect(LISTENING)
        process = reactor.spawnProcess(
            output,
            sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "indiserver",
             "--port", "0", "--host", "127.0.0.1", "-v", script],
            env=child_env(),
            path=PACKAGE_ROOT,
        )
        listening = yield output.seen
        client = yield connect_client(int(listening.group(1)))
        client.say(b"<getProperties version='1.7'/>")
        defined = yield client.wait_for(lambda m: m.tag == "defSwitchVector")
        self.assertEqual(defined.device, "indiserv Simulator")
        process.signalProcess("TERM")
        yield output.ended
        yield client.lost
        self.assertIn(b"indiserv-simulator: serving device", output.output)
        # In words: which server, where, which drivers; and at the end, why.
        text = output.output.decode()
        port = listening.group(1).decode()
        for said in (f"indiserv {indiserv.__version__} starting (INDI protocol 1.7, Twisted ",
                     f"listening on 127.0.0.1:{port}\n", "started indiserv-test-simulator (pid ",
                     "Received SIGTERM, shutting down.", "shutting down: the program is stopping the server"):
            self.assertIn(said, text)
        self.assertNotIn("IPv4Address", text)

    @defer.inlineCallbacks
    def test_ctrl_c(self):
        """Ctrl-C (SIGINT to twistd's whole process group) stops twistd -n indiserver: no traceback, no restart, the driver reaped; twistd then ends by the same signal, as is its way."""
        script = executable_script(os.path.abspath(self.mktemp()), "indiserv-test-simulator", SIMULATOR_COMMAND_LINE)
        output, ended, drivers = yield interrupted(
            self,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "indiserver", "--port", "0", "--host", "127.0.0.1",
             script],
            rb"serving device",
            env=child_env(),
            path=PACKAGE_ROOT,
        )
        self.assertEqual((ended.exitCode, ended.signal), (None, signal.SIGINT), output)
        self.assertEqual(len(drivers), 1)
        self.assertIn("Received SIGINT, shutting down.", output)
        self.assertIn("indiserv-test-simulator stopped: ", output)  # by the server, not by the Ctrl-C
        self.assertNotIn("signal 2", output)

    @defer.inlineCallbacks
    def twistd_mistake(self, *args: str):
        """Run twistd -n indiserver ARGS to its end: its output and exit status."""
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-c", TWISTD, "-n", "--pidfile=", "indiserver", *args],
            env=child_env(), path=PACKAGE_ROOT,
        )
        output = (out + err).decode()
        self.assertNotIn("Traceback", output)
        return output, code

    @defer.inlineCallbacks
    def test_busy_port(self):
        """A port in use ends twistd with one plain line saying so and what to do, exit status 2."""
        taken = yield serve(self)
        output, code = yield self.twistd_mistake("--port", str(taken.port), "--host", "127.0.0.1", "sh")
        self.assertEqual(code, 2, output)
        self.assertIn(
            f"cannot listen on 127.0.0.1:{taken.port}: the address is in use (another INDI server?);"
            " stop that one, or choose another port\n",
            output,
        )

    @defer.inlineCallbacks
    def test_unknown_host(self):
        """A --host that does not resolve ends twistd with one plain line, exit status 2."""
        output, code = yield self.twistd_mistake("--port", "0", "--host", "no-such-host.invalid", "sh")
        self.assertEqual(code, 2, output)
        self.assertIn("cannot listen on no-such-host.invalid:0: there is no host 'no-such-host.invalid';", output)

    @defer.inlineCallbacks
    def test_missing_driver(self):
        """A driver that is not on PATH ends twistd with one plain line naming it, exit status 2, and no usage page."""
        output, code = yield self.twistd_mistake("--port", "0", "indi_no_such_driver")
        self.assertEqual(code, 2, output)
        self.assertIn("driver 'indi_no_such_driver' is not an executable on PATH; install it, or give its path\n", output)
        self.assertNotIn("--max-queue", output)

    @defer.inlineCallbacks
    def test_host_and_port(self):
        """--port HOST:PORT, as users type it, listens there."""
        port = free_port()
        output = _Collect(LISTENING)
        process = reactor.spawnProcess(
            output, sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "indiserver", "--port", f"127.0.0.1:{port}"],
            env=child_env(), path=PACKAGE_ROOT,
        )
        listening = yield output.seen
        self.assertEqual(int(listening.group(1)), port)
        self.assertIn(f"listening on 127.0.0.1:{port}".encode(), output.output)
        process.signalProcess("TERM")
        yield output.ended

    @defer.inlineCallbacks
    def test_sigterm_with_unread_blob(self):
        """On SIGTERM twistd indiserver exits within --grace while a client with a BLOB queued for it reads nothing."""
        from .test_link import BLOB_DRIVER, START

        output = _Collect(LISTENING)
        reactor.spawnProcess(
            output,
            sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "indiserver",
             "--port", "0", "--host", "127.0.0.1", "--grace", "1",
             f"{sys.executable} {BLOB_DRIVER} --blobs 1 --size {16 * 1024 * 1024}"],
            env=child_env(),
            path=PACKAGE_ROOT,
        )
        listening = yield output.seen
        port = int(listening.group(1))
        stuck, reader = yield defer.gatherResults([connect_client(port), connect_client(port)])
        self.addCleanup(stuck.transport.loseConnection)
        for client in (stuck, reader):
            client.say(b"<getProperties version='1.7'/><enableBLOB device='Bench'>Also</enableBLOB>")
            yield client.wait_for(lambda m: m.name == "START")
        stuck.transport.pauseProducing()  # it reads nothing from now on
        reader.say(START)
        # Once the reader has the frame, the server has it queued for the other.
        yield reader.wait_for(lambda m: m.tag == "message" and m.attrs.get("message") == "done")
        output.transport.signalProcess("TERM")
        yield output.ended
        self.assertIn(b"--grace", output.output)

    @defer.inlineCallbacks
    def test_daemon_with_pid_file_and_log_file(self):
        """twistd indiserver as docs/twistd.rst runs it: a daemon that writes its pid file and log file, serves, and on SIGTERM to that pid tells clients, exits and removes the pid file."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        pidfile, logfile = os.path.join(directory, "indiserv.pid"), os.path.join(directory, "indiserv.log")
        script = executable_script(directory, "indiserv-test-simulator", SIMULATOR_COMMAND_LINE)
        port = free_port()
        # twistd's first process returns once the daemon has started its services.
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-c", TWISTD, "--pidfile", pidfile, "--logfile", logfile, "indiserver",
             "--port", str(port), "--host", "127.0.0.1", script],
            env=child_env(), path=PACKAGE_ROOT,
        )
        self.assertEqual(code, 0, out + err)
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(_kill_if_running, pid)
        client = yield connect_client(port)
        client.say(b"<getProperties version='1.7'/>")
        defined = yield client.wait_for(lambda m: m.tag == "defSwitchVector")
        self.assertEqual(defined.device, "indiserv Simulator")
        with open(logfile) as f:
            self.assertIn(f"listening on 127.0.0.1:{port}\n", f.read())
        os.kill(pid, signal.SIGTERM)
        said = yield client.wait_for(lambda m: m.tag == "message" and m.device is None)
        self.assertIn("shut", said.attrs["message"].lower())
        yield client.lost
        # Not our child, so no event says it has gone: look until it has.
        while process_running(pid) or os.path.exists(pidfile):
            yield deferLater(reactor, 0.05)


def _kill_if_running(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
