"""
indiserver's FIFO: starting and stopping drivers while the server runs.

Web managers, and KStars in local mode, start indiserver with C{-f PATH}
and then write lines like these into that named pipe::

    start indi_simulator_telescope -n "Telescope Simulator"
    start indi_simulator_ccd -n "CCD Simulator" -c "/home/me/.indi/ccd.xml"
    stop indi_simulator_telescope -n "Telescope Simulator"
    start "CCD Simulator"@camera.local:7624
    stop "CCD Simulator"@camera.local:7624

The options mean what they mean to indiserver: C{-n} sets C{INDIDEV} (the
device name the driver takes), C{-c} C{INDICONFIG} (its configuration file),
C{-s} C{INDISKEL} (its skeleton file), and C{-p} C{INDIPREFIX}, running
C{PREFIX/bin/DRIVER}; C{INDIDEV}, C{INDICONFIG} and C{INDISKEL} that a
line does not set are not inherited from the server (C{INDIPREFIX} is).
C{stop} ends the driver of that name (the one serving the C{-n} device, if
given) without restarting it, and clients get C{delProperty} for its
devices at once.  A line whose first word after the verb is
C{[device]@host[:port]} names another server, to link to or unlink from.

Where indiserv differs from indiserver: a verb other than C{start} and
C{stop} is refused with a log line (indiserver takes any other word for
C{stop}); a C{start} of a driver already running under the same device name
is refused with a log line (indiserver runs a second copy, whose device
then clashes with the first); a missing FIFO is made, mode 0600, and a
path that cannot be used stops startup with the reason (indiserver exits
when the FIFO does not exist); a line longer than L{MAX_LINE} bytes is
dropped with a log line.  As with indiserver, the FIFO is opened afresh
whenever its writer closes it, so that every C{echo ... > FIFO} is heard.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from indiserv.driver import DriverNotFound, DriverService, find_driver
from indiserv.remote import DEFAULT_PORT, RemoteService

if TYPE_CHECKING:
    from indiserv.service import IndiServer

__all__ = [
    "Command",
    "CommandError",
    "FifoControl",
    "FifoError",
    "MAX_LINE",
    "open_fifo",
    "parse_command",
]

#: The longest command line accepted, in bytes (indiserver's buffer holds 1 KiB).
MAX_LINE = 4096
#: Bytes read from the FIFO per system call.
READ_SIZE = 65536

START = "start"
STOP = "stop"

# Driver options of a start line, and the settings they fill.
_OPTIONS = {"-n": "device", "-c": "config", "-s": "skeleton", "-p": "prefix"}
# The environment variables those settings become for the driver.
_ENVIRONMENT = {"device": "INDIDEV", "config": "INDICONFIG", "skeleton": "INDISKEL"}
# A remote server as indiserver reads it: [device]@host[:port], quotes
# removed; and a driver option, which no device name of a server holds.
_REMOTE = re.compile(r"(?P<device>[^@]*)@(?P<host>[^\s:@/]+)(?::(?P<port>\d{1,6}))?")
_OPTION = re.compile(r"(?:^|\s)-[a-z](?:\s|$)")


class FifoError(Exception):
    """The FIFO cannot be made, opened or read."""


class CommandError(ValueError):
    """A FIFO line that cannot be obeyed."""


@dataclass(frozen=True)
class Command:
    """
    One line of the FIFO.

    @ivar verb: C{"start"} or C{"stop"}.
    @ivar driver: the driver program, for a local driver.
    @ivar remote: (device or None, host, port), for another server.
    @ivar ignored: words of the line that mean nothing to the command.
    """

    verb: str
    driver: str = ""
    device: str | None = None
    config: str | None = None
    skeleton: str | None = None
    prefix: str | None = None
    remote: tuple[str | None, str, int] | None = None
    ignored: str = ""


def parse_command(line: str) -> Command:
    """
    Read one FIFO line.

    @raise CommandError: it is not a start or stop command with a driver
        or a server to act on.
    """
    parts = line.split(None, 1)
    if not parts:
        raise CommandError("empty line")
    verb, rest = parts[0], parts[1] if len(parts) > 1 else ""
    if verb not in (START, STOP):
        raise CommandError(f"unknown command {verb!r} (only start and stop are known)")
    if "@" in rest:
        server = _server(rest)
        if server is not None:
            remote, ignored = server
            return Command(verb, remote=remote, ignored=ignored)
    try:
        words = shlex.split(rest)
    except ValueError as e:
        raise CommandError(f"cannot read {rest!r}: {e}") from None
    if not words:
        raise CommandError(f"{verb} needs a driver")
    driver, words = words[0], words[1:]
    if "@" in driver:
        raise CommandError(f"bad server {driver!r}: expected [device]@host[:port]")
    settings: dict[str, str] = {}
    while len(words) >= 2 and words[0] in _OPTIONS:
        settings[_OPTIONS[words[0]]] = words[1]
        words = words[2:]
    return Command(verb, driver=driver, ignored=shlex.join(words), **settings)


def _server(rest: str) -> tuple[tuple[str | None, str, int], str] | None:
    """
    The server that the rest of a line names, C{[device]@host[:port]}
    (quotes removed, as indiserver does, so a device name may have spaces),
    and what follows it; None if the @ is part of a driver's line instead,
    such as C{indi_x -c /home/me@laptop/ccd.xml} (indiserver would link to
    a host "laptop/ccd.xml" there).
    """
    spec = rest.replace('"', "").strip()
    found = _REMOTE.match(spec)
    if (
        found is None
        or _OPTION.search(found["device"])
        or (found.end() < len(spec) and not spec[found.end()].isspace())
    ):
        return None
    port = int(found["port"] or DEFAULT_PORT)
    if not 0 < port < 65536:
        raise CommandError(f"bad server {spec!r}: port {port} is out of range")
    device = found["device"].strip() or None
    return (device, found["host"], port), spec[found.end():].strip()


def open_fifo(path: str) -> int:
    """
    Open the FIFO at C{path} for reading without blocking, first making it
    (mode 0600) if nothing is there.

    @raise FifoError: C{path} is not a FIFO, or cannot be made or opened.
    """
    try:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            os.mkfifo(path, 0o600)
            info = os.stat(path)
        if not stat.S_ISFIFO(info.st_mode):
            raise FifoError(f"cannot use {path} as the FIFO: it exists and is not a FIFO")
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise FifoError(f"cannot use {path} as the FIFO: {e.strerror or e}") from e


@implementer(IReadDescriptor)
class FifoReader:
    """
    Reads the lines written into a FIFO, by one writer after another.

    A FIFO whose writer has closed it reads as ended for ever after, so it
    is opened again each time.  A line longer than C{max_line} bytes is
    dropped, with a log line, without being held in memory.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        line_received: Callable[[str], None],
        reactor: Any,
        max_line: int = MAX_LINE,
    ):
        self.path = path
        self.line_received = line_received
        self.reactor = reactor
        self.max_line = max_line
        self.fd = open_fifo(path)
        self.closed = False
        self._partial = b""
        self._discarding = False
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"FIFO {self.path}"

    def doRead(self) -> object:
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        self._received(data)
        return None

    def _received(self, data: bytes) -> None:
        *lines, rest = (self._partial + data).split(b"\n")
        for line in lines:
            if self._discarding:
                # The end of an over-long line.
                self._discarding = False
            elif len(line) > self.max_line:
                self._too_long()
            else:
                self._line(line)
        if len(rest) > self.max_line:
            if not self._discarding:
                self._too_long()
            self._discarding = True
            rest = b""
        self._partial = rest

    def _too_long(self) -> None:
        self.log.warn(
            "FIFO {path}: dropped a line longer than {limit} bytes",
            path=self.path,
            limit=self.max_line,
        )

    def _line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        if text:
            try:
                self.line_received(text)
            except Exception:
                self.log.failure("FIFO {path}: {line!r} failed", path=self.path, line=text)

    def connectionLost(self, reason: Failure) -> None:
        """The writer closed the FIFO (the reactor has stopped reading it)."""
        partial, self._partial = self._partial, b""
        if partial and not self._discarding:
            self._line(partial)  # a last line without a newline, as indiserver takes it
        self._discarding = False
        if self.closed:
            return
        try:
            # Open the next one before closing this one, so that the FIFO
            # always has a reader and what a new writer says is not lost.
            fd = open_fifo(self.path)
        except FifoError as e:
            self.log.error("{why}; no more commands are read from it", why=e)
            self.close()
            return
        os.close(self.fd)
        self.fd = fd
        self.reactor.addReader(self)

    def close(self) -> None:
        """Stop reading and close the FIFO."""
        if not self.closed:
            self.closed = True
            self.reactor.removeReader(self)
            os.close(self.fd)


class FifoControl(Service):
    """
    Obeys the start and stop commands written into a FIFO, as indiserver
    does with C{-f}.

    @ivar server: the L{IndiServer} whose drivers and remote links it starts
        and stops.
    @ivar path: the FIFO.
    @ivar env: the environment drivers started from the FIFO begin with
        (L{None}: this process's), before their line's settings.
    @ivar remote_blobs: whether BLOBs cross the links to servers started here.
    """

    log = Logger()

    def __init__(
        self,
        server: IndiServer,
        path: str,
        env: dict[str, str] | None = None,
        remote_blobs: bool = False,
    ):
        self.server = server
        self.path = path
        self.env = env
        self.remote_blobs = remote_blobs
        self.reader: FifoReader | None = None
        # Drivers and links told to stop that have not ended yet.
        self._ending: set[defer.Deferred[None]] = set()

    def startService(self) -> None:
        self.reader = FifoReader(self.path, self.line_received, self.server.reactor)
        self.log.info("reading driver commands from the FIFO {path}", path=self.path)
        super().startService()

    def stopService(self) -> defer.Deferred[object]:
        """Stop reading, then wait for what the FIFO stopped to end."""
        super().stopService()
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        return defer.gatherResults(list(self._ending))

    def line_received(self, line: str) -> None:
        """Obey one line of the FIFO."""
        try:
            command = parse_command(line)
        except CommandError as e:
            self._refuse(line, str(e))
            return
        if command.ignored:
            self.log.warn(
                "FIFO {path}: ignored {ignored!r} in {line!r}",
                path=self.path,
                ignored=command.ignored,
                line=line,
            )
        if command.remote is not None:
            action = self._start_remote if command.verb == START else self._stop_remote
        else:
            action = self._start_driver if command.verb == START else self._stop_driver
        action(command, line)

    def _refuse(self, line: str, why: str) -> None:
        self.log.warn("FIFO {path}: refused {line!r}: {why}", path=self.path, line=line, why=why)

    def _done(self, line: str) -> None:
        self.log.info("FIFO {path}: {line}", path=self.path, line=line)

    # -- drivers ---------------------------------------------------------

    def drivers(self, name: str, device: str | None) -> list[DriverService]:
        """
        The driver services of program C{name} serving C{device} (named so
        by C{INDIDEV}, or announced by the running program); for C{device}
        None, all of them.
        """
        return [
            service
            for service in self.server
            if isinstance(service, DriverService)
            and service.driver_name == name
            and (device is None or device == service.device or device in service.devices)
        ]

    def environment(self, command: Command) -> dict[str, str]:
        """The environment of a driver started by C{command}."""
        env = dict(os.environ if self.env is None else self.env)
        for setting, variable in _ENVIRONMENT.items():
            value = getattr(command, setting)
            if value:
                env[variable] = value
            else:
                # As with indiserver: not inherited from the server.
                env.pop(variable, None)
        if command.prefix:
            env["INDIPREFIX"] = command.prefix
        return env

    def _start_driver(self, command: Command, line: str) -> None:
        name = os.path.basename(command.driver)
        same = [
            driver
            for driver in self.drivers(name, command.device)
            if command.device is not None or driver.device is None
        ]
        if any(driver.alive for driver in same):
            self._refuse(line, f"{name} is running already")
            return
        program = command.driver
        if command.prefix:
            program = os.path.join(command.prefix, "bin", command.driver)
        try:
            find_driver(program)
        except DriverNotFound as e:
            self._refuse(line, str(e))
            return
        for gone in same:
            # One that gave up restarting makes way for the new one.
            gone.disownServiceParent()
        self.server.add_exdriver(program, env=self.environment(command))
        self._done(line)

    def _stop_driver(self, command: Command, line: str) -> None:
        found = self.drivers(os.path.basename(command.driver), command.device)
        if not found:
            self._refuse(line, "no such driver is running")
            return
        # Like indiserver, one driver: the first that still runs.
        driver = next((driver for driver in found if driver.alive), found[0])
        self._stopping(driver.disownServiceParent(), line)
        self._done(line)

    def _stopping(self, stopped: Any, line: str) -> None:
        """Keep C{stopped} until it fires, so the server's stop waits for it."""
        if stopped is None:
            return
        ending: defer.Deferred[None] = defer.Deferred()
        self._ending.add(ending)

        def ended(result: object) -> None:
            if isinstance(result, Failure):
                self.log.failure(
                    "FIFO {path}: {line!r} failed", result, path=self.path, line=line
                )
            self._ending.discard(ending)
            ending.callback(None)

        stopped.addBoth(ended)

    # -- other servers ---------------------------------------------------

    def remotes(self, device: str | None, host: str, port: int) -> list[RemoteService]:
        """The links to the server at C{host:port} (for C{device} only, or all its devices)."""
        address = f"{host}:{port}" if device is None else f"{device}@{host}:{port}"
        return [
            service
            for service in self.server
            if isinstance(service, RemoteService) and service.address == address
        ]

    def _start_remote(self, command: Command, line: str) -> None:
        assert command.remote is not None
        device, host, port = command.remote
        if self.remotes(device, host, port):
            self._refuse(line, "that server is linked already")
            return
        self.server.add_remote(host, port, self.remote_blobs, device=device)
        self._done(line)

    def _stop_remote(self, command: Command, line: str) -> None:
        assert command.remote is not None
        found = self.remotes(*command.remote)
        if not found:
            self._refuse(line, "that server is not linked")
            return
        self._stopping(found[0].disownServiceParent(), line)
        self._done(line)
