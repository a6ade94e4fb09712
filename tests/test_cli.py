"""
Tests for L{indiserv.cli}: the indiserv command, which takes indiserver's
command line and runs the twistd plugin's service.
"""

from __future__ import annotations

import configparser
import io
import itertools
import os
import re
import shlex
import sys

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from indiserv import cli
from indiserv.cli import DEFAULTS, indiserver_observer, parse, translate
from indiserv.tap import version_text
from indiserv.tap import Options, makeService

from .support import (
    LISTENING, PACKAGE_ROOT, SIMULATOR_COMMAND_LINE, TestClient, cannot_run, child_env, free_port, kill_processes_naming,
    network_namespace, require_command,
    require_module, require_programs, run_in_own_group, serve, short_directory, write_fifo,
)
from .test_interop import LIBINDICLIENT_EXPOSURE
from .test_tap import _Collect, interrupted

ABSTRACT = sys.platform.startswith("linux")


def drivers_of(translated: list[str]) -> list[str]:
    return translated[translated.index("--") + 1 :]


def options_of(translated: list[str]) -> list[str]:
    return translated[len(DEFAULTS) : translated.index("--")]


UNIX = "@/tmp/sock" if ABSTRACT else "/tmp/sock"

#: Each of indiserver's options alone: the plugin's long options it
#: becomes, and the setting of those it gives.
FLAGS = [
    (["-p", "7000"], ["--port", "7000"], "endpoint", "tcp:7000:interface=0.0.0.0"),
    (["-m", "64"], ["--max-queue", "64"], "max-queue", 64),
    (["-d", "2"], ["--max-stream", "2"], "max-stream", 2),
    (["-d", "0"], ["--max-stream", "0"], "max-stream", 0),
    (["-r", "3"], ["--restarts", "3"], "restarts", 3),
    (["-r", "-1"], ["--restarts", "0"], "restarts", 0),
    (["-f", "/run/fifo"], ["--fifo", "/run/fifo"], "fifo", "/run/fifo"),
    (["-l", "/var/log/indi"], ["--log-dir", "/var/log/indi"], "log-dir", "/var/log/indi"),
    (["-u", "/tmp/sock"], ["--unix", UNIX], "unix", UNIX),
    (["-v"], ["--verbose"], "verbose", 1),
    (["-vv"], ["--verbose"] * 2, "verbose", 2),
    (["-vvv"], ["--verbose"] * 3, "verbose", 3),
    (["-v", "-v"], ["--verbose"] * 2, "verbose", 2),
]


class TranslateTests(SynchronousTestCase):
    def test_drivers(self) -> None:
        """Every argument after the options is a driver or [device]@host[:port]; clients may come from anywhere."""
        translated = translate(["indi_simulator_telescope", "CCD Simulator@far:7700"])
        self.assertEqual(drivers_of(translated), ["indi_simulator_telescope", "CCD Simulator@far:7700"])
        self.assertEqual(options_of(translated), [])
        self.assertEqual(translated[:4], ["--host", "0.0.0.0", "--max-connections", "100"])

    def test_each_option(self) -> None:
        """Each of indiserver's options (FLAGS) becomes the plugin's long option and gives the setting it names."""
        for argv, long_form, setting, value in FLAGS:
            with self.subTest(argv=argv):
                self.assertEqual(options_of(translate([*argv, "sh"])), long_form)
                self.assertEqual(parse([*argv, "sh"])[setting], value)

    def test_combined_letters(self) -> None:
        """Letters combine, each value coming from the next argument in turn (-vvm 64, -mp 64 7000)."""
        self.assertEqual(
            options_of(translate(["-vvm", "64", "drv"])),
            ["--verbose", "--verbose", "--max-queue", "64"],
        )
        self.assertEqual(
            options_of(translate(["-mp", "64", "7000", "-v", "drv"])),
            ["--max-queue", "64", "--port", "7000", "--verbose"],
        )

    def test_value_never_attached(self) -> None:
        """As with indiserver, -p7000 is -p with the next argument, then the unknown option -7."""
        error = self.assertRaises(UsageError, translate, ["-p7000", "7000", "drv"])
        self.assertEqual(str(error), "unknown option -7")

    def test_options_end_at_first_driver(self) -> None:
        """Parsing stops at the first argument without a dash; a lone - is no option at all."""
        translated = translate(["-", "-v", "drv", "-v"])
        self.assertEqual(options_of(translated), ["--verbose"])
        self.assertEqual(drivers_of(translated), ["drv", "-v"])

    def test_unknown_options(self) -> None:
        """Unknown letters and unknown long options are usage errors naming them."""
        self.assertEqual(str(self.assertRaises(UsageError, translate, ["-x", "drv"])), "unknown option -x")
        self.assertEqual(str(self.assertRaises(UsageError, translate, ["--colour", "d"])), "unknown option --colour")
        self.assertEqual(str(self.assertRaises(UsageError, translate, ["--peer"])), "--peer requires a value")

    def test_long_options_pass_through(self) -> None:
        """The plugin's long options pass through, with their value next or after =; flags alone."""
        translated = translate(["-v", "--peer", "10.0.0.0/8", "--grace=2", "--remote-blobs", "-p", "7000", "drv"])
        self.assertEqual(
            options_of(translated),
            ["--verbose", "--peer", "10.0.0.0/8", "--grace=2", "--remote-blobs", "--port", "7000"],
        )
        self.assertEqual(drivers_of(translated), ["drv"])

    def test_missing_value(self) -> None:
        """An option whose value is missing says what it needs."""
        error = self.assertRaises(UsageError, translate, ["-f"])
        self.assertEqual(str(error), "-f requires a FIFO path")

    def test_numbers(self) -> None:
        """-p takes a port number and -r a whole number; a negative -r means no restarts, as with indiserver."""
        self.assertEqual(options_of(translate(["-r", "-3", "drv"])), ["--restarts", "0"])
        error = self.assertRaises(UsageError, translate, ["-p", "seven", "drv"])
        self.assertIn("'seven'", str(error))
        for port in ("-1", "65536"):
            error = self.assertRaises(UsageError, translate, ["-p", port, "drv"])
            self.assertIn("0-65535", str(error))

    def test_nothing_to_serve(self) -> None:
        """No drivers and no FIFO is a usage error saying so; a FIFO alone will do."""
        for args in ([], ["-v", "-p", "7000"]):
            error = self.assertRaises(UsageError, translate, args)
            self.assertIn("no drivers", str(error))
        self.assertEqual(drivers_of(translate(["-f", "/run/fifo"])), [])


class ParseTests(SynchronousTestCase):
    def test_plugin_options(self) -> None:
        """The result is the twistd plugin's Options, filled as the long form would fill them."""
        fifo = os.path.abspath(self.mktemp())
        options = parse(["-vv", "-p", "7000", "-m", "64", "-d", "2", "-r", "3", "-f", fifo, "sh"])
        self.assertIsInstance(options, Options)
        self.assertEqual(options["endpoint"], "tcp:7000:interface=0.0.0.0")
        self.assertEqual(
            (options["verbose"], options["max-queue"], options["max-stream"], options["restarts"], options["fifo"]),
            (2, 64, 2, 3, fifo),
        )
        self.assertEqual(options["drivers"], [["sh"]])
        self.assertEqual(options["max-connections"], 100)

    def test_long_options_reach_plugin(self) -> None:
        """Long options given to the command fill the plugin's Options, and their errors name them."""
        options = parse(["--peer", "127.0.0.2", "--idle-timeout=600", "sh"])
        self.assertEqual((options["peers"], options["idle-timeout"]), (["127.0.0.2"], 600.0))
        error = self.assertRaises(UsageError, parse, ["--max-pending", "0", "sh"])
        self.assertIn("--max-pending", str(error))

    def test_same_service_as_twistd(self) -> None:
        """makeService builds the same server from the short form as twistd does from the long form."""
        fifo = os.path.abspath(self.mktemp())
        ours = makeService(parse(["-v", "-p", "7000", "-d", "0", "-f", fifo, "sh", "@far:7700"]))
        long_form = Options()
        long_form.parseOptions(
            ["--host", "0.0.0.0", "--max-connections", "100", "--verbose", "--port", "7000",
             "--max-stream", "0", "--fifo", fifo, "sh", "@far:7700"]
        )
        theirs = makeService(long_form)
        shape = lambda server: (  # noqa: E731
            [type(child).__name__ for child in server],
            server.host, server.port, server.maxconnections, server.router.verbose,
            server.router.max_queue, server.router.max_stream,
        )
        self.assertEqual(shape(ours), shape(theirs))

    def test_errors_name_short_options(self) -> None:
        """A value the plugin refuses is reported under indiserver's letter, not the long option."""
        for args, said in [
            (["-d", "-1"], "-d cannot be negative"),
            (["-m", "0"], "-m must be positive"),
            (["-m", "many"], "-m requires a number of MB, not 'many'"),
            (["-d", "nan"], "-d must be a finite number, not nan"),
            (["-m", "inf"], "-m must be a finite number, not inf"),
            (["-m", "1e-9"], "-m 1e-09 MB is less than a byte"),
        ]:
            error = self.assertRaises(UsageError, parse, [*args, "sh"])
            self.assertEqual(str(error), said)

    def test_option_names_in_paths_left_alone(self) -> None:
        """Only whole option names become letters: a path holding --port in a message keeps it."""
        error = self.assertRaises(UsageError, parse, ["-m", "/opt/x--port/7", "sh"])
        self.assertIn("/opt/x--port/7", str(error))

    def test_driver_not_checked(self) -> None:
        """A driver that is not on PATH is no usage error: as with indiserver, the others are served (see CommandTests)."""
        self.assertEqual(parse(["indi_no_such_driver"])["drivers"], [["indi_no_such_driver"]])

    def test_unreadable_driver_word(self) -> None:
        """A driver word with an unbalanced quote is a usage error, not a crash."""
        error = self.assertRaises(UsageError, parse, ["indi_o'brien"])
        self.assertIn("indi_o'brien", str(error))


class MainUsageTests(SynchronousTestCase):
    def run_main(self, *args: str) -> tuple[int, str]:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        exited = self.assertRaises(SystemExit, cli.main, ["/usr/local/bin/indiserver", *args])
        return exited.code, stderr.getvalue()

    def test_unknown_option(self) -> None:
        """An unknown option prints indiserver-style usage under the invoked name and exits 2."""
        code, text = self.run_main("-x", "indi_simulator_telescope")
        self.assertEqual(code, 2)
        self.assertTrue(text.startswith("indiserver: unknown option -x\nUsage: indiserver [options] driver [driver ...]\n"), text)
        for flag in ("-l d", "-m m", "-d m", "-u path", "-p p", "-r r", "-f path", "-v", "-vv", "-vvv"):
            self.assertIn(f"\n {flag} ", text)
        self.assertIn("\ndriver    : executable or [device]@host[:port]\n", text)

    def test_help(self) -> None:
        """-h and --help print the usage on stdout and exit 0, before anything else is read."""
        for flag in ("-h", "--help"):
            stdout = io.StringIO()
            self.patch(sys, "stdout", stdout)
            code, text = self.run_main("-v", flag, "no-such-driver")
            self.assertEqual((code, text), (0, ""))
            self.assertTrue(stdout.getvalue().startswith("Usage: indiserver [options] driver [driver ...]\n"))

    def test_version(self) -> None:
        """--version prints indiserv's version, INDI's and Twisted's on stdout and exits 0."""
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        code, text = self.run_main("--version")
        self.assertEqual((code, text), (0, ""))
        self.assertEqual(stdout.getvalue(), version_text() + "\n")
        self.assertRegex(version_text(), r"^indiserv \d+\.\d+\.\d+ \(INDI protocol 1\.7, Twisted \d")

    def test_nothing_to_serve(self) -> None:
        """With no drivers and no FIFO it says so, prints the usage and exits 2, as indiserver exits."""
        code, text = self.run_main("-v")
        self.assertEqual(code, 2)
        self.assertIn("no drivers to run and no FIFO (-f)", text)
        self.assertIn("Usage: indiserver", text)


class ObserverTests(SynchronousTestCase):
    def lines(self, verbose: int, **event: object) -> str:
        stream = io.StringIO()
        event.setdefault("log_level", LogLevel.info)
        event.setdefault("log_time", 1795910398.5)
        indiserver_observer(stream, verbose)(event)
        return stream.getvalue()

    def test_format(self) -> None:
        """Lines read TIMESTAMP: TEXT with the UTC time, as indiserver's log lines do."""
        self.assertEqual(
            self.lines(0, log_format="driver {name} attached", name="indi_x"),
            "2026-11-28T23:59:58: driver indi_x attached\n",
        )

    def test_debug_only_at_vvv(self) -> None:
        """Debug events show only with -vvv."""
        self.assertEqual(self.lines(2, log_level=LogLevel.debug, log_format="dropped"), "")
        self.assertIn("dropped", self.lines(3, log_level=LogLevel.debug, log_format="dropped"))

    def test_failure_traceback(self) -> None:
        """A logged failure comes with its traceback."""
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        text = self.lines(0, log_level=LogLevel.critical, log_format="oops", log_failure=failure)
        self.assertIn("ZeroDivisionError", text)


class EntryPointTests(SynchronousTestCase):
    def test_console_script(self) -> None:
        """setup.cfg installs the indiserv command as indiserv.cli:main."""
        path = os.path.join(PACKAGE_ROOT, "setup.cfg")
        if not os.path.exists(path):
            raise SkipTest("setup.cfg is not beside this indiserv (an installed copy)")
        config = configparser.ConfigParser()
        config.read(path)
        scripts = config["options.entry_points"]["console_scripts"]
        self.assertIn("indiserv = indiserv.cli:main", scripts.strip().splitlines())


    def test_systemd_unit(self) -> None:
        """The systemd unit in docs/ runs indiserv with a command line it accepts, FIFO included."""
        path = os.path.join(PACKAGE_ROOT, "docs", "indiserv.service")
        if not os.path.exists(path):
            raise SkipTest("docs/ is not beside this indiserv (an installed copy)")
        unit = configparser.ConfigParser(interpolation=None)
        unit.optionxform = str  # type: ignore[assignment, method-assign]
        unit.read(path)
        program, *args = shlex.split(unit["Service"]["ExecStart"])
        self.assertEqual(os.path.basename(program), "indiserv")
        translated = translate(args)
        self.assertIn("--fifo", translated)
        self.assertEqual(unit["Service"]["KillMode"], "mixed")



# indiwebmanager's class for running indiserver, as its web application
# drives it: start the server with two drivers, stop one, stop the server.
INDIWEB = """
import subprocess, sys
import psutil
from indiweb.driver import DeviceDriver
from indiweb.indi_server import IndiServer

port, fifo, conf = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def tool(*argv):
    return subprocess.call(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0


def defined(device):
    return tool("indi_eval", "-h", "127.0.0.1", "-p", str(port), "-t", "30", f'"{device}.CONNECTION.CONNECT"==0')


def served(device):
    return tool("indi_getprop", "-h", "127.0.0.1", "-p", str(port), "-t", "1", f"{device}.CONNECTION.CONNECT")


def found_by_name():
    # What indiweb's stop() looks for: a process named indiserver with -p PORT.
    return any(
        process.info["name"] == "indiserver" and str(port) in process.cmdline()
        for process in psutil.process_iter(["name"])
    )


server = IndiServer(fifo=fifo, conf_dir=conf)
telescope = DeviceDriver("Telescope Simulator", "Telescope Simulator", "1.0", "indi_simulator_telescope", "Telescopes")
ccd = DeviceDriver("CCD Simulator", "CCD Simulator", "1.0", "indi_simulator_ccd", "CCDs")
server.start(port, [telescope, ccd])
server.wait_for_drivers_started(30)
print("running:", server.is_running(port))
print("defined:", defined("Telescope Simulator"), defined("CCD Simulator"))
print("found by name:", found_by_name())
server.stop_driver(ccd)
# Each check waits out a second: together longer than a first restart delay.
gone = not served("CCD Simulator") and not served("CCD Simulator")
print("ccd gone:", gone, "telescope still:", served("Telescope Simulator"))
print("drivers:", sorted(server.get_running_drivers()))
server.stop(port)
print("stopped:", not server.is_running(port) and not found_by_name(), flush=True)
"""
#: A web manager's use of indiserver, as a shell script (see its comment).
WEB_MANAGER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webmanager.sh")


_sockets = itertools.count(1)


class CommandTests(TestCase):
    """The command as tools run it: a real process, real drivers, real clients."""

    timeout = 60

    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.env = child_env(HOME=self.home)

    def indiserv(
        self, *args: str, pattern: bytes = LISTENING, namespace: str | None = None
    ) -> _Collect:
        """
        Run C{indiserv ARGS}, in the network C{namespace} if one is given;
        stopped with SIGTERM when the test ends.  Outside a namespace of the
        test's own, its local socket is one of its own unless ARGS name one:
        tests never take indiserver's default, which a real server may hold.
        """
        argv = [sys.executable, "-m", "indiserv.cli"]
        if namespace is not None:
            argv = ["ip", "netns", "exec", namespace, *argv]
        elif "-u" not in args:
            argv += ["-u", f"/tmp/indiserv-test-{os.getpid()}-{next(_sockets)}"]
        watch = _Collect(pattern)
        process = reactor.spawnProcess(watch, argv[0], [*argv, *args], env=self.env, path=self.home)
        watch.process = process

        def stop() -> defer.Deferred[None]:
            if not watch.ended.called:
                process.signalProcess("TERM")
            return watch.ended

        self.addCleanup(stop)
        return watch

    @defer.inlineCallbacks
    def stop(self, watch: _Collect):
        """SIGTERM, then the exit status."""
        watch.process.signalProcess("TERM")
        yield watch.ended
        return getattr(watch.reason.value, "exitCode", None)

    @defer.inlineCallbacks
    def getprop(self, port: int, spec: str):
        out, err, code = yield getProcessOutputAndValue(
            "indi_getprop", ["-h", "127.0.0.1", "-p", str(port), "-t", "2", spec], env=self.env
        )
        return code, out.decode().splitlines()

    @defer.inlineCallbacks
    def test_serves_telescope(self):
        """indiserv -v -p 0 -u NAME indi_simulator_telescope serves indi_getprop on TCP and a client on the unix socket, logs driver stderr with its name, and exits 0 on SIGTERM."""
        require_programs("indi_simulator_telescope", "indi_getprop")
        name = f"/tmp/indiserv-cli-test-{os.getpid()}"
        watch = self.indiserv("-v", "-p", "0", "-u", name, "indi_simulator_telescope")
        listening = yield watch.seen
        code, lines = yield self.getprop(int(listening.group(1)), "Telescope Simulator.CONNECTION.*")
        self.assertEqual(code, 0, watch.output)
        self.assertIn("Telescope Simulator.CONNECTION.CONNECT=Off", lines)
        socket_path = ("\0" + name) if ABSTRACT else name
        client = yield connectProtocol(UNIXClientEndpoint(reactor, socket_path), TestClient())
        self.addCleanup(client.transport.loseConnection)
        client.say(b"<getProperties version='1.7'/>")
        defined = yield client.wait_for(lambda m: m.name == "CONNECTION")
        self.assertEqual(defined.device, "Telescope Simulator")
        client.transport.loseConnection()
        yield client.lost
        exit_code = yield self.stop(watch)
        self.assertEqual(exit_code, 0, watch.output)
        output = watch.output.decode()
        self.assertTrue(output.startswith("20"), output)
        self.assertRegex(output, r"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d: startup: indiserv -v -p 0 ")
        self.assertRegex(output, r"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d: indi_simulator_telescope: \S")
        self.assertRegex(output, r"(?m): driver indi_simulator_telescope attached$")

    @defer.inlineCallbacks
    def test_libindiclient_finds_it_at_localhost(self):
        """Without -u, indiserv listens where indiserver does: pyindi-client given the host "localhost:" takes a CCD exposure through it (in a network namespace of the test's own, where that name is private)."""
        require_module("PyIndi", "pip install --no-deps pyindi-client")
        require_programs("indi_simulator_ccd")
        namespace = yield network_namespace(self)
        watch = self.indiserv("-v", "-p", "0", "indi_simulator_ccd", namespace=namespace)
        yield watch.wait_for(rb": listening on @/tmp/indiserver\n")
        out, err, code = yield getProcessOutputAndValue(
            "ip",
            ["netns", "exec", namespace, sys.executable, "-c", LIBINDICLIENT_EXPOSURE, "7624", "localhost:"],
            env=self.env,
        )
        self.assertEqual(code, 0, err + watch.output)
        blob_format, size, received, start = out.decode().split()
        self.assertEqual((blob_format, start), (".fits", "SIMPLE"))
        self.assertEqual(received, size)
        self.assertRegex(watch.output.decode(), r"client @/tmp/indiserver fd \d+")

    @defer.inlineCallbacks
    def test_default_socket_taken(self):
        """A second indiserv without -u finds indiserver's local socket taken, says so, and serves TCP alone."""
        require_programs("indi_simulator_telescope", "indi_getprop")
        namespace = yield network_namespace(self)
        first = self.indiserv("-p", "0", "indi_simulator_telescope", namespace=namespace)
        yield first.wait_for(rb": listening on @/tmp/indiserver\n")
        second = self.indiserv("-p", "0", "indi_simulator_telescope", namespace=namespace)
        warning = yield second.wait_for(rb": not listening on unix:@/tmp/indiserver:lockfile=0: (.*); going on without it\n")
        self.assertIn(b"Address already in use", warning.group(1))
        listening = yield second.seen
        out, err, code = yield getProcessOutputAndValue(
            "ip",
            ["netns", "exec", namespace, "indi_getprop", "-p", listening.group(1).decode(), "-t", "3",
             "Telescope Simulator.CONNECTION.*"],
            env=self.env,
        )
        self.assertEqual(code, 0, err + second.output)
        self.assertIn(b"Telescope Simulator.CONNECTION.CONNECT=Off", out)

    @defer.inlineCallbacks
    def verbose_lines(self, level: str, pattern: bytes):
        """
        Run indiserv at C{level} linked to a server of the simulator, have
        a client ask for the simulator's properties, and fire with the
        output once a line matches C{pattern} (in which {port} stands for
        the linked server's port).
        """
        lower = yield serve(self, SIMULATOR_COMMAND_LINE.split(), env=self.env)
        watch = self.indiserv(level, "-p", "0", f"@127.0.0.1:{lower.port}")
        listening = yield watch.seen
        code, _ = yield self.getprop(int(listening.group(1)), "indiserv Simulator.CONNECTION.*")
        self.assertEqual(code, 0, watch.output)
        yield watch.wait_for(pattern.replace(b"{port}", str(lower.port).encode()))
        return watch.output.decode()

    @defer.inlineCallbacks
    def test_vv_summaries_name_links(self):
        """-vv logs a summary line per message, each naming its link: the linked server (remote host:port) and the client (client host:port)."""
        output = yield self.verbose_lines(
            "-vv", rb"remote 127\.0\.0\.1:{port}: defSwitchVector indiserv Simulator\.CONNECTION\n"
        )
        self.assertRegex(output, r"client 127\.0\.0\.1:\d+: getProperties indiserv Simulator")
        self.assertNotIn("<defSwitchVector", output)

    @defer.inlineCallbacks
    def test_vvv_full_xml(self):
        """-vvv logs messages' XML, naming their links: the linked server's and the client's."""
        output = yield self.verbose_lines("-vvv", rb"remote 127\.0\.0\.1:{port}: <defSwitchVector [^\n]*name=.CONNECTION")
        self.assertRegex(output, r"client 127\.0\.0\.1:\d+: <getProperties [^\n]*device=.indiserv Simulator")

    @defer.inlineCallbacks
    def test_serves_installed_simulator_command(self):
        """indiserv serves the installed indiserv-simulator command by name, as any driver on PATH."""
        require_programs("indi_getprop")
        command = require_command("indiserv-simulator")
        self.env["PATH"] = os.path.dirname(command) + os.pathsep + self.env["PATH"]
        watch = self.indiserv("-p", "0", "indiserv-simulator")
        listening = yield watch.seen
        code, lines = yield self.getprop(int(listening.group(1)), "indiserv Simulator.CONNECTION.*")
        self.assertEqual(code, 0, watch.output)
        self.assertIn("indiserv Simulator.CONNECTION.CONNECT=Off", lines)

    @defer.inlineCallbacks
    def test_indiwebmanager(self):
        """indiwebmanager's own server control (indiweb.indi_server) starts indiserv as indiserver, starts and stops drivers through its FIFO, finds it by name and stops it."""
        require_programs("indi_simulator_telescope", "indi_simulator_ccd", "indi_getprop", "indi_eval")
        require_module("indiweb", "pip install --no-deps indiweb")
        require_module("psutil", "pip install psutil")
        command = require_command("indiserv")
        # indiweb's one fixed path: the server's output goes there, shared.
        log = "/tmp/indiserver.log"
        if os.path.exists(log) and not os.access(log, os.W_OK):
            cannot_run(f"indiweb writes {log}, which this user cannot write (another user's run made it)")
        directory = os.path.join(self.home, "bin")
        os.makedirs(directory)
        os.symlink(command, os.path.join(directory, "indiserver"))
        self.env["PATH"] = directory + os.pathsep + self.env["PATH"]
        # indiweb names its local socket after the FIFO: a short path for both.
        directory = short_directory(self)
        fifo = os.path.join(directory, "indiFIFO")
        # indiweb starts the server in a session of its own: gone with the test.
        self.addCleanup(kill_processes_naming, directory)
        out, err, code = yield run_in_own_group(
            self, [sys.executable, "-c", INDIWEB, str(free_port()), fifo, self.home],
            env=self.env, path=self.home,
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out.decode().splitlines(), [
            "running: True",
            "defined: True True",
            "found by name: True",
            "ccd gone: True telescope still: True",
            "drivers: ['Telescope Simulator']",
            "stopped: True",
        ], err)

    @defer.inlineCallbacks
    def test_fifo_only(self):
        """With only -f it waits for drivers; a start written into the FIFO serves the telescope under its -n name."""
        require_programs("indi_simulator_telescope", "indi_getprop")
        fifo = os.path.join(self.home, "indiFIFO")
        watch = self.indiserv("-p", "0", "-f", fifo, pattern=LISTENING + rb"(?s:.*)reading driver commands")
        listening = yield watch.seen
        self.assertTrue(os.path.exists(fifo))
        write_fifo(fifo, 'start indi_simulator_telescope -n "Scope Via FIFO"\n')
        code, lines = yield self.getprop(int(listening.group(1)), "Scope Via FIFO.CONNECTION.*")
        self.assertEqual(code, 0, watch.output)
        self.assertIn("Scope Via FIFO.CONNECTION.CONNECT=Off", lines)

    @defer.inlineCallbacks
    def test_unusable_fifo(self):
        """A FIFO path that cannot be used is a clear startup error: the reason, good bye, exit status 1."""
        fifo = os.path.join(self.home, "no-such-dir", "fifo")
        watch = self.indiserv("-p", "0", "-f", fifo, pattern=rb"good bye")
        yield watch.seen
        yield watch.ended
        self.assertEqual(watch.reason.value.exitCode, 1)
        self.assertIn(
            f"cannot start: cannot use {fifo} as the FIFO: No such file or directory", watch.output.decode()
        )
        self.assertNotIn("Traceback", watch.output.decode())

    @defer.inlineCallbacks
    def test_missing_driver_others_served(self):
        """A driver that is not on PATH is logged, and the other drivers served, as indiserver does."""
        require_programs("indi_simulator_telescope", "indi_getprop")
        watch = self.indiserv("-p", "0", "indi_no_such_driver", "indi_simulator_telescope")
        listening = yield watch.seen
        yield watch.wait_for(rb"cannot start indi_no_such_driver: driver 'indi_no_such_driver' is not an executable on PATH")
        code, lines = yield self.getprop(int(listening.group(1)), "Telescope Simulator.CONNECTION.*")
        self.assertEqual(code, 0, watch.output)

    @defer.inlineCallbacks
    def test_busy_port(self):
        """A port in use: one plain line saying so and what to do, good bye, exit status 2."""
        taken = yield serve(self)
        watch = self.indiserv("-p", str(taken.port), "sh", pattern=rb"good bye")
        yield watch.ended
        self.assertEqual(watch.reason.value.exitCode, 2)
        self.assertRegex(
            watch.output.decode(),
            rf": cannot listen on 0\.0\.0\.0:{taken.port}: the address is in use \(another INDI server\?\);"
            r" stop that one, or choose another port\n[^\n]*: good bye\n",
        )
        self.assertNotIn(b"Traceback", watch.output)

    @defer.inlineCallbacks
    def test_named_as_started(self):
        """The process takes the name it was started under, where ps, pkill and psutil look (pip starts scripts under long paths through sh)."""
        if not sys.platform.startswith("linux"):
            raise SkipTest("process names are set on Linux only")
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-c", "from indiserv.cli import name_process; name_process('indiserver');"
                   " print(open('/proc/self/comm').read().strip())"],
            env=self.env,
        )
        self.assertEqual((out.decode().strip(), code), ("indiserver", 0), err)

    @defer.inlineCallbacks
    def test_python_m_indiserv(self):
        """python -m indiserv is the indiserv command."""
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "indiserv", "--version"], env=self.env, path=self.home
        )
        self.assertEqual((out.decode(), code), (version_text() + "\n", 0), err)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "indiserv", "-Z"], env=self.env, path=self.home
        )
        self.assertEqual(code, 2)
        self.assertTrue(err.startswith(b"indiserv: unknown option -Z\n"), err)

    @defer.inlineCallbacks
    def test_ctrl_c(self):
        """Ctrl-C (SIGINT to the command's whole process group) stops indiserv: exit 0, no traceback, no restart, the driver reaped."""
        require_programs("indi_simulator_telescope")
        output, ended, drivers = yield interrupted(
            self,
            [sys.executable, "-m", "indiserv", "-v", "-p", "0", "-u", f"/tmp/indiserv-test-{os.getpid()}-int",
             "indi_simulator_telescope"],
            rb"Telescope Simulator",
            env=self.env,
            path=self.home,
        )
        self.assertEqual(ended.exitCode, 0, output)
        self.assertEqual(len(drivers), 1)
        # Stopped by the server (its stdin closed, or TERM), not by the Ctrl-C.
        self.assertIn("indi_simulator_telescope stopped: ", output)
        self.assertNotIn("signal 2", output)

    @defer.inlineCallbacks
    def test_usage_exit(self):
        """The real command exits 2 with the usage for an unknown option."""
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "indiserv.cli", "-Z"], env=self.env, path=self.home
        )
        self.assertEqual(code, 2)
        self.assertTrue(re.match(rb"indiserv: unknown option -Z\nUsage: indiserv \[options\]", err), err)

    @defer.inlineCallbacks
    def test_web_manager(self):
        """indiserv linked on PATH as indiserver, started and driven through its FIFO as indiwebmanager does (webmanager.sh), serves both simulators under the name indiserver, and a stopped CCD stays gone."""
        require_programs("indi_simulator_telescope", "indi_simulator_ccd", "indi_getprop", "indi_eval")
        command = require_command("indiserv")
        out, err, code = yield run_in_own_group(
            self, ["/bin/sh", WEB_MANAGER, command, str(free_port()), self.home], env=self.env, path=self.home
        )
        self.assertEqual((code, out.splitlines()[-1:]), (0, [b"OK"]), (out + err).decode())
