"""
Executable drivers: programs that speak INDI on their stdin and stdout.

Any language will do; indilib's C++ drivers are the common case.  Each
running program is a L{DriverProcessProtocol} (a L{Link}); the
L{DriverService} that owns it starts the program with the server and stops
it with the server.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from typing import Any, Sequence

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessExitedAlready
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from indiserv import wire
from indiserv.link import DRIVER, Link
from indiserv.router import Router
from indiserv.wire import Limits, Message, WireError

__all__ = [
    "DriverProcessProtocol",
    "DriverService",
    "DriverNotFound",
    "describe_exit",
    "find_driver",
]

#: A driver's stderr line longer than this is logged in pieces.
MAX_STDERR_LINE = 64 * 1024
#: Seconds a driver gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0


#: Bytes of a driver's output read per system call, and the pipe size
#: asked for.  Twisted reads pipes 8 KiB at a time, a reactor turn per
#: 8 KiB of a camera frame; reading 256 KiB at a time moves frames at
#: about twice the speed (benchmarks/run.py, blob_stream_1).
READ_SIZE = 256 * 1024
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux


def read_in_large_chunks(process: Any) -> None:
    """
    Make C{process} (a Twisted process transport) read its child's stdout
    C{READ_SIZE} bytes at a time, from a pipe of C{PIPE_SIZE} bytes where
    the system allows.  Anything unexpected leaves Twisted's own reading.
    """
    reader = getattr(process, "pipes", {}).get(1)
    if reader is None or not hasattr(reader, "fileno"):
        return
    fd = reader.fileno()
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: keep the default

    def doRead() -> object:
        try:
            output = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return CONNECTION_LOST
        if not output:
            return CONNECTION_DONE
        reader.dataReceived(output)
        return None

    reader.doRead = doRead


class DriverNotFound(Exception):
    """The driver program is neither a path to an executable nor on PATH."""


#: Run between fork and the driver's exec, in a Python of its own: the
#: driver gets a process group of its own, so that the Ctrl-C a terminal
#: sends to the server's group does not reach it (the server stops its
#: drivers itself, and a driver dying of that SIGINT would be taken for a
#: crash).  Twisted's spawnProcess has no such option; the driver keeps
#: its pid and its argv.  Python ignores SIGPIPE and SIGXFSZ, and an exec
#: would pass that on: the driver gets them back as Twisted gives them.
NEW_PROCESS_GROUP = (
    "import os, signal, sys; os.setpgid(0, 0);"
    " [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGPIPE, signal.SIGXFSZ)];"
    " os.execv(sys.argv[1], sys.argv[2:])"
)


def in_own_process_group(executable: str, argv: list[str]) -> tuple[str, list[str]]:
    """The executable and argv that run C{executable} as C{argv} in a new process group."""
    return sys.executable, [sys.executable, "-I", "-S", "-c", NEW_PROCESS_GROUP, executable, *argv]


def find_driver(program: str) -> str:
    """
    The full path of C{program}, looked up on PATH unless it names a path.

    @raise DriverNotFound: there is no such executable.
    """
    if os.sep in program:
        if not os.path.isfile(program):
            raise DriverNotFound(f"driver {program!r} does not exist")
        if not os.access(program, os.X_OK):
            raise DriverNotFound(f"driver {program!r} is not executable")
        return os.path.abspath(program)
    else:
        found = shutil.which(program)
        if found is not None:
            return found
    raise DriverNotFound(f"driver {program!r} is not an executable on PATH")


class DriverProcessProtocol(ProcessProtocol, Link):
    """The pipes of one running driver program, as a link."""

    log = Logger()
    kind = DRIVER
    #: A whole read of a camera's frame is framed in one turn.
    bytes_per_turn = READ_SIZE

    def __init__(
        self,
        router: Router,
        name: str,
        limits: Limits | None = None,
        claim: object | None = None,
    ):
        Link.__init__(self, limits)
        self.router_to_join = router
        self.claim = claim
        self.name = name
        self.label = f"driver {name}"
        #: Fires (with None) once the program has exited, its pipes maybe still open.
        self.exited: defer.Deferred[None] = defer.Deferred()
        #: Fires (with None) once the program has ended and its pipes closed.
        self.ended: defer.Deferred[None] = defer.Deferred()
        #: Why it ended, once it has.
        self.reason: Failure | None = None
        self._stderr = bytearray()
        self._refusing: Message | None = None
        #: Set when the server stops the program: once it has exited, what
        #: it left holding its pipes (a child of a wrapper script) is not
        #: waited for.
        self.stopping = False

    @property
    def writer(self) -> Any:
        """The writer of the program's stdin, if it has one."""
        pipes = getattr(self.transport, "pipes", None)
        return self.transport if pipes is None else pipes.get(0)

    def connectionMade(self) -> None:
        self.router_to_join.add_link(self)
        self.transport.registerProducer(self, True)
        # Ask for its definitions, as indiserver does when a driver starts.
        self.write(wire.get_properties().raw)

    def overflow(self, message: Message) -> bool:
        if self._refusing is None:
            self.log.warn(
                "{driver} is not reading its input ({queued} bytes waiting);"
                " commands to it are dropped until it catches up",
                driver=self.name,
                queued=self.queued,
            )
        self._refusing = message
        return False

    def resumeProducing(self) -> None:
        Link.resumeProducing(self)
        if not self.paused and self._refusing is not None:
            self._refusing = None
            self.log.info("{driver} is reading its input again", driver=self.name)

    def outReceived(self, data: bytes) -> None:
        self.bytes_received(data)

    def errReceived(self, data: bytes) -> None:
        buffer = self._stderr
        buffer += data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_STDERR_LINE:
                    end = MAX_STDERR_LINE
                else:
                    return
            self._log_stderr(bytes(buffer[:end]))
            del buffer[: end + 1]

    def _log_stderr(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            self.log.info("{driver}: {line}", driver=self.name, line=text)

    def wire_error(self, error: WireError) -> bool:
        self.log.warn(
            "{driver} wrote bad INDI ({reason}); skipped to its next message",
            driver=self.name,
            reason=error.reason,
        )
        return True

    def drop_input(self) -> None:
        """
        Close the program's stdin now, with whatever is still queued for
        it: a driver being stopped needs none of it, and a child it left
        behind holding the pipe may never read it.
        """
        pipes = getattr(self.transport, "pipes", None)
        writer = pipes.get(0) if pipes is not None else None
        if writer is not None and not writer.disconnected:
            writer.connectionLost(Failure(ConnectionDone("the driver is being stopped")))

    def processExited(self, reason: Failure) -> None:
        """The program is gone; its pipes may still drain into L{processEnded}."""
        if self.stopping:
            self.transport.loseConnection()
        self.exited.callback(None)

    def processEnded(self, reason: Failure) -> None:
        if self._stderr:
            self._log_stderr(bytes(self._stderr))
            self._stderr.clear()
        self.reason = reason
        if self.router is not None:
            # Clients hear of its devices going; the service says why.
            self.router.remove_link(self)
        self.ended.callback(None)


def describe_exit(reason: Failure | None) -> str:
    """How a driver process ended, in words for logs and clients."""
    if reason is None or reason.check(ProcessDone):
        return "exited"
    value = reason.value
    if getattr(value, "signal", None):
        return f"killed by signal {value.signal}"
    if getattr(value, "exitCode", None) is not None:
        return f"exited with status {value.exitCode}"
    return str(value).rstrip(".")


class DriverService(Service):
    """
    Runs one executable driver while the service runs, restarting it when
    it dies.

    Restarts back off exponentially: C{first_delay} seconds after the first
    failure, doubling up to C{max_delay}.  After C{restarts} consecutive
    failures the driver stays down.  A run of C{stable_after} seconds or
    more counts as a success and resets the count.

    @ivar driver_name: the program's name, for logs and clients (the
        service itself is unnamed: one driver may run several times).
    @ivar program: the name or path given by the user.
    @ivar args: its command-line arguments.
    @ivar protocol: the link of the running program, if it runs.
    @ivar failures: consecutive failures so far.
    """

    log = Logger()
    restarts = 10
    #: Seconds a driver gets to exit after SIGTERM before it is killed.
    stop_timeout = STOP_TIMEOUT
    first_delay = 1.0
    max_delay = 60.0
    stable_after = 60.0

    def __init__(
        self,
        router: Router,
        program: str,
        args: Sequence[str] = (),
        reactor: Any = None,
        env: dict[str, str] | None = None,
        restarts: int | None = None,
        limits: Limits | None = None,
        debug_enable: bool = False,
        stop_timeout: float | None = None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.router = router
        self.program = program
        self.args = list(args)
        self.reactor = reactor
        self.env = env
        if restarts is not None:
            self.restarts = restarts
        if stop_timeout is not None:
            self.stop_timeout = stop_timeout
        self.limits = limits
        #: Log every message the program writes (IPyServer's debug_enable).
        self.debug_enable = debug_enable
        self.driver_name = os.path.basename(program)
        self.protocol: DriverProcessProtocol | None = None
        self.failures = 0
        self._started_at = 0.0
        self._restart_call: Any = None

    @property
    def device(self) -> str | None:
        """The device name the program was told to use (C{INDIDEV}), if any."""
        return (os.environ if self.env is None else self.env).get("INDIDEV")

    @property
    def devices(self) -> list[str]:
        """The devices the running program serves now."""
        protocol = self.protocol
        if protocol is None:
            return []
        return self.router.devices_of(protocol)

    @property
    def alive(self) -> bool:
        """Whether the program runs, or is about to be restarted."""
        restart = self._restart_call
        return self.protocol is not None or (restart is not None and restart.active())

    def startService(self) -> None:
        super().startService()
        if self.device:
            # Its name is known before the program runs: nobody else's.
            self.router.reserve(self.device, self)
        self.spawn()

    def _debug(self, message: Message) -> bool:
        self.log.info("{driver}: {xml}", driver=self.driver_name,
                      xml=message.raw.decode("utf-8", "replace").strip())
        return True

    def spawn(self) -> None:
        """Start the program on pipes, in a process group of its own."""
        self._restart_call = None
        try:
            executable = find_driver(self.program)
        except DriverNotFound as e:
            self.log.error("cannot start {driver}: {why}", driver=self.driver_name, why=e)
            self.router.send_message(f"Driver {self.driver_name} could not start: {e}")
            return
        # Its devices stay reserved for this service while it restarts.
        protocol = DriverProcessProtocol(self.router, self.driver_name, self.limits, claim=self)
        if self.debug_enable:
            protocol.screen = self._debug
        env = dict(os.environ if self.env is None else self.env)
        self._started_at = self.reactor.seconds()
        executable, argv = in_own_process_group(executable, [self.program, *self.args])
        process = self.reactor.spawnProcess(
            protocol, executable, argv, env=env, childFDs={0: "w", 1: "r", 2: "r"}
        )
        read_in_large_chunks(process)
        self.protocol = protocol
        self.log.info("started {driver} (pid {pid})", driver=self.driver_name, pid=process.pid)
        protocol.ended.addCallback(self._ended, protocol)

    def _ended(self, _: None, protocol: DriverProcessProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None
        how = describe_exit(protocol.reason)
        if not self.running:
            self.router.release(self)
            self.log.info("{driver} stopped: {how}", driver=self.driver_name, how=how)
            self.router.send_message(f"Driver {self.driver_name} stopped: {how}")
            return
        if self.reactor.seconds() - self._started_at >= self.stable_after:
            self.failures = 0
        if self.failures >= self.restarts:
            self.log.error(
                "{driver} {how}; it failed {failures} times in a row and is not"
                " restarted again (--restarts {restarts})",
                driver=self.driver_name,
                how=how,
                failures=self.failures + 1,
                restarts=self.restarts,
            )
            self.router.release(self)
            self.router.send_message(
                f"Driver {self.driver_name} {how}; giving up after"
                f" {self.restarts} restarts"
            )
            return
        delay = min(self.first_delay * 2**self.failures, self.max_delay)
        self.failures += 1
        self.log.warn(
            "{driver} {how}; restart {count} of {restarts} in {delay} s",
            driver=self.driver_name,
            how=how,
            count=self.failures,
            restarts=self.restarts,
            delay=delay,
        )
        self.router.send_message(
            f"Driver {self.driver_name} {how}; restarting in {delay:g} s"
        )
        self._restart_call = self.reactor.callLater(delay, self.spawn)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        protocol = self.protocol
        if protocol is None or protocol.transport is None:
            self.router.release(self)
            return None
        if protocol.router is not None:
            # Clients hear of its devices going now, as with indiserver, and
            # a driver started in its place is not taken for a clash while
            # this one takes its time to exit.
            protocol.router.remove_link(protocol)
        self.router.release(self)
        protocol.stopping = True
        protocol.drop_input()
        ended: defer.Deferred[None] = defer.Deferred()
        protocol.ended.addBoth(lambda _: ended.callback(None))
        kill = self.reactor.callLater(self.stop_timeout, self._signal, protocol, "KILL")
        ended.addBoth(lambda _: kill.cancel() if kill.active() else None)
        self._signal(protocol, "TERM")
        return ended

    def _signal(self, protocol: DriverProcessProtocol, name: str) -> None:
        try:
            protocol.transport.signalProcess(name)
        except ProcessExitedAlready:
            # Gone, but something it started still holds its pipes.
            protocol.transport.loseConnection()
