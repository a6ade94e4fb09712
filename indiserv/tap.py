"""
The twistd plugin: C{twistd -n indiserver --port 7624 DRIVER ...}.
"""

from __future__ import annotations

import importlib
import math
import re
import shlex
import sys
from typing import Any, NoReturn

import twisted
from twisted.internet.error import CannotListenError
from twisted.python import usage

import indiserv
from indiserv.access import Access, AccessError
from indiserv.client import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PENDING
from indiserv.driver import DriverNotFound, DriverService, find_driver
from indiserv.inprocess import WrongReactor, require_asyncio_reactor
from indiserv.remote import parse_remote
from indiserv.service import (
    DEFAULT_GRACE,
    IndiServer,
    endpoint_description,
    listen_problem,
    tls_options,
    unix_description,
)
from indiserv.wire import Limits

__all__ = ["Options", "makeService", "TwistdServer", "version_text"]


def version_text() -> str:
    """What C{--version} prints: indiserv's version, INDI's and Twisted's."""
    return f"indiserv {indiserv.__version__} (INDI protocol 1.7, Twisted {twisted.__version__})"


def _one_paragraph(method: Any) -> Any:
    """
    usage.Options shows an C{opt_} method's docstring as its help: as one
    paragraph, or its line breaks and indentation show as gaps.
    """
    method.__doc__ = " ".join((method.__doc__ or "").split())
    return method


class Options(usage.Options):
    synopsis = "[options] DRIVER|[DEVICE]@HOST[:PORT] ..."
    longdesc = (
        "Run an INDI server. Each DRIVER is an executable INDI driver found on"
        " PATH (or a path to one); quote a driver with arguments as one word,"
        " such as 'indi_simulator_ccd --verbose'. An argument of the form"
        " [DEVICE]@HOST[:PORT] links to another INDI server (for DEVICE only,"
        " if given), as with indiserver. Clients such as KStars, PHD2 or"
        " indi_getprop connect to --port."
    )
    optParameters = [
        [
            "port",
            "p",
            "7624",
            "Port number, or a Twisted server endpoint string such as"
            " tcp:7624:interface=0.0.0.0 or unix:/run/indi.sock.",
        ],
        ["host", None, "localhost", "Interface a numeric --port listens on."],
        [
            "max-connections",
            None,
            DEFAULT_MAX_CONNECTIONS,
            "Most clients connected at once.",
            int,
        ],
        [
            "max-pending",
            None,
            DEFAULT_MAX_PENDING,
            "Most connections at once that have not yet sent their first"
            " message (they do not count as clients until they have).",
            int,
        ],
        [
            "max-connections-per-host",
            None,
            0,
            "Most clients, and most pending connections, from one address;"
            " 0 for no limit.",
            int,
        ],
        [
            "handshake-timeout",
            None,
            DEFAULT_HANDSHAKE_TIMEOUT,
            "Seconds a connection has to finish its TLS handshake and send its"
            " first complete message before it is closed.",
            float,
        ],
        [
            "idle-timeout",
            None,
            0.0,
            "Seconds a client may send nothing before it is disconnected;"
            " 0 never (INDI clients are often silent for hours).",
            float,
        ],
        [
            "grace",
            None,
            DEFAULT_GRACE,
            "Seconds a stop (SIGTERM) may take in all: drivers get SIGTERM,"
            " SIGKILL after 4/5 of it, and clients that have not read what"
            " was queued for them by the end are cut off.",
            float,
        ],
        [
            "access",
            None,
            None,
            "A file of access rules, one a line: 'peer ADDRESS[/BITS]',"
            " 'peer sha256:FINGERPRINT' or 'peer subject:CN=...' names a server"
            " trusted to share its devices when it links here as a client.",
        ],
        [
            "keepalive",
            None,
            30.0,
            "Seconds of silence before clients get a keepalive message; 0 disables.",
            float,
        ],
        [
            "restarts",
            "r",
            10,
            "Restarts of a failing driver in a row (with growing delay) before"
            " it is left down; 0 never restarts.",
            int,
        ],
        [
            "max-queue",
            "m",
            128.0,
            "MB a client may fall behind: one that stays further behind is"
            " disconnected (a burst it is draining may reach twice this).",
            float,
        ],
        [
            "max-stream",
            "d",
            5.0,
            "MB behind after which a client skips video stream BLOB frames;"
            " 0 never skips them.",
            float,
        ],
        [
            "fifo",
            "f",
            None,
            "Start and stop drivers as told by lines written into this FIFO"
            " (made, mode 0600, if missing), as with indiserver -f:"
            ' start DRIVER [-n "device"] [-c "config"] [-s "skeleton"]'
            ' [-p "prefix"], stop DRIVER [-n "device"], start|stop'
            " [device]@host[:port].",
        ],
        [
            "log-dir",
            "l",
            None,
            "Write the messages of drivers to DIR/YYYY-MM-DD.islog, as with"
            " indiserver -l.",
        ],
        [
            "unix",
            None,
            None,
            "Also accept clients on this unix socket path; @NAME is a Linux"
            " abstract socket, which is what indiserver -u makes.",
        ],
        [
            "max-client-message",
            None,
            16.0,
            "MB of the largest message a client may send.",
            float,
        ],
        [
            "max-driver-message",
            None,
            300.0,
            "MB of the largest message a driver may send (camera frames).",
            float,
        ],
        ["max-attributes", None, 64, "Attributes allowed on one element.", int],
        [
            "max-attribute-length",
            None,
            65536,
            "Characters allowed in one attribute value.",
            int,
        ],
        ["max-depth", None, 8, "Nesting of elements allowed in a message.", int],
        [
            "max-markup",
            None,
            1024 * 1024,
            "Bytes allowed in one tag, comment, processing instruction or CDATA"
            " section (also caps a start tag's attributes; not text between tags).",
            int,
        ],
        ["tls-cert", None, None, "Serve INDI over TLS with this PEM certificate file."],
        ["tls-key", None, None, "The PEM private key file of --tls-cert."],
        [
            "require-client-cert",
            None,
            None,
            "With --tls-cert: refuse clients without a certificate signed by"
            " the CA in this PEM file.",
        ],
    ]

    optFlags = [
        ["remote-blobs", None, "Let BLOBs cross the links to remote servers."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["verbose"] = 0
        self["drivers"] = []
        self["remotes"] = []
        self["ipydrivers"] = []
        self["peers"] = []

    def opt_version(self) -> NoReturn:
        """Print indiserv's version (and Twisted's), and exit."""
        print(version_text())
        sys.exit(0)

    @_one_paragraph
    def opt_peer(self, address: str) -> None:
        """
        Trust the server linking here as a client from this address or
        network (10.0.0.0/8, 2001:db8::/32) to share its devices. Repeatable.
        """
        self["peers"].append(address)

    @_one_paragraph
    def opt_remote(self, spec: str) -> None:
        """
        Link to another INDI server: [device@]host[:port], or a Twisted
        client endpoint string such as tls:host:port. Repeatable.
        """
        self["remotes"].append(_remote(spec))

    @_one_paragraph
    def opt_ipydriver(self, spec: str) -> None:
        """
        Serve an indipydriver IPyDriver in process: MODULE:FACTORY names a
        callable returning it, such as mypackage.thermostat:make_driver.
        Needs --reactor=asyncio (before the plugin name). Repeatable.
        """
        module, _, factory = spec.partition(":")
        if not module or not factory:
            raise usage.UsageError(f"bad --ipydriver {spec!r}: expected MODULE:FACTORY")
        try:
            make = getattr(importlib.import_module(module), factory)
        except (ImportError, AttributeError) as e:
            raise usage.UsageError(f"--ipydriver {spec}: {e}")
        self["ipydrivers"].append(make)

    def opt_verbose(self) -> None:
        """More logging: -v key events, -vv a line per message, -vvv full XML."""
        self["verbose"] += 1

    opt_v = opt_verbose

    def parseArgs(self, *drivers: str) -> None:
        for driver in drivers:
            if _REMOTE_ARGUMENT.match(driver):
                # indiserver's syntax for a device of a remote server.
                self["remotes"].append(_remote(driver))
            else:
                try:
                    self["drivers"].append(shlex.split(driver))
                except ValueError as e:
                    raise usage.UsageError(f"cannot read driver {driver!r}: {e}")

    def postOptions(self) -> None:
        for option, value in self.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise usage.UsageError(f"--{option} must be a finite number, not {value}")
        if self["max-connections"] < 1:
            raise usage.UsageError("--max-connections must be at least 1")
        if self["keepalive"] < 0:
            raise usage.UsageError("--keepalive cannot be negative")
        if self["max-pending"] < 1:
            raise usage.UsageError("--max-pending must be at least 1")
        if self["handshake-timeout"] <= 0:
            raise usage.UsageError("--handshake-timeout must be positive")
        for option in ("max-connections-per-host", "idle-timeout", "grace"):
            if self[option] < 0:
                raise usage.UsageError(f"--{option} cannot be negative")
        if self["restarts"] < 0:
            raise usage.UsageError("--restarts cannot be negative")
        if self["max-stream"] < 0:
            raise usage.UsageError("--max-stream cannot be negative")
        for option in (
            "max-queue",
            "max-client-message",
            "max-driver-message",
            "max-attributes",
            "max-attribute-length",
            "max-depth",
            "max-markup",
        ):
            if self[option] <= 0:
                raise usage.UsageError(f"--{option} must be positive")
        for option in ("max-queue", "max-stream", "max-client-message", "max-driver-message"):
            if 0 < self[option] and megabytes(self[option]) < 1:
                raise usage.UsageError(f"--{option} {self[option]} MB is less than a byte")
        for command in self["drivers"]:
            if not command:
                raise usage.UsageError("empty driver name")
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if self["require-client-cert"] and not self["tls-cert"]:
            raise usage.UsageError("--require-client-cert needs --tls-cert and --tls-key")
        try:
            access = Access.build(self["peers"], self["access"])
        except AccessError as e:
            raise usage.UsageError(str(e))
        if access.needs_certificates and not self["require-client-cert"]:
            raise usage.UsageError(
                "certificate rules in --access need --require-client-cert:"
                " without it no client certificate is asked for"
            )
        self["endpoint"] = endpoint_description(self["port"], self["host"])
        if self["ipydrivers"]:
            _require_asyncio_reactor()


# indiserver's [device]@host[:port]: device names may have spaces, hosts not.
_REMOTE_ARGUMENT = re.compile(r"^[^@]*@[^\s@/:]+(:\d+)?$")


def _remote(spec: str) -> tuple[str | None, str, int]:
    if spec.startswith(("tcp:", "tls:", "unix:", "ssl:")):
        return None, spec, 0
    try:
        return parse_remote(spec)
    except ValueError:
        raise usage.UsageError(f"bad remote {spec!r}: expected [device@]host[:port]")


def _require_asyncio_reactor() -> None:
    """--ipydriver needs twistd's asyncio reactor, chosen before the plugin."""
    try:
        require_asyncio_reactor(installed_later=False)
    except WrongReactor:
        raise usage.UsageError(
            "--ipydriver serves asyncio code and needs Twisted's asyncio"
            " reactor: twistd --reactor=asyncio -n indiserver --ipydriver ..."
        )


def megabytes(value: float) -> int:
    """Bytes in C{value} MB (MiB, as indiserver counts them)."""
    return int(value * 1024 * 1024)


class TwistdServer(IndiServer):
    """
    The server as twistd starts it: a start that cannot go ahead (a driver
    that is not there, a port that cannot be listened on) ends twistd with
    one plain line and exit status 2, not with a traceback or a page of
    usage.  Started as a plain service (the C{indiserv} command, a parent
    service), it is an L{IndiServer} like any other: a missing driver is
    logged and the others served, as indiserver does.
    """

    def privilegedStartService(self) -> None:
        for child in self:
            if isinstance(child, DriverService):
                try:
                    find_driver(child.program)
                except DriverNotFound as e:
                    self._give_up(f"{e}; install it, or give its path")
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self._give_up(listen_problem(e))

    def _give_up(self, why: str) -> NoReturn:
        self.log.error("{why}", why=why)
        raise SystemExit(2)


def makeService(config: Options, reactor: Any = None) -> IndiServer:
    """Build the server twistd will run from parsed L{Options}."""
    shape = {
        "max_attributes": config["max-attributes"],
        "max_attribute_length": config["max-attribute-length"],
        "max_depth": config["max-depth"],
        "max_markup": config["max-markup"],
    }
    server = TwistdServer(
        *(make() for make in config["ipydrivers"]),
        host=config["host"],
        port=config["endpoint"],
        maxconnections=config["max-connections"],
        reactor=reactor,
        verbose=config["verbose"],
        restarts=config["restarts"],
        max_queue=megabytes(config["max-queue"]),
        max_stream=megabytes(config["max-stream"]) or sys.maxsize,  # 0: never skip
        client_limits=Limits(megabytes(config["max-client-message"]), **shape),
        driver_limits=Limits(megabytes(config["max-driver-message"]), **shape),
        tls=(
            tls_options(config["tls-cert"], config["tls-key"], config["require-client-cert"])
            if config["tls-cert"]
            else None
        ),
        max_pending=config["max-pending"],
        max_connections_per_host=config["max-connections-per-host"],
        handshake_timeout=config["handshake-timeout"],
        idle_timeout=config["idle-timeout"],
        peers=config["peers"],
        access=config["access"],
        grace=config["grace"],
    )
    server.keepalive = config["keepalive"]
    add_operations(server, config)
    for program, *args in config["drivers"]:
        server.add_exdriver(program, *args)
    for device, host, port in config["remotes"]:
        server.add_remote(host, port, bool(config["remote-blobs"]), device=device)
    return server


def add_operations(server: IndiServer, config: Options) -> None:
    """
    Give C{server} what C{--unix}, C{--log-dir} and C{--fifo} ask for.
    Called before the drivers are added, so that a socket, directory or
    FIFO that cannot be used stops startup before any driver starts.
    """
    if config["unix"]:
        server.add_listener(unix_description(config["unix"]))
    if config["log-dir"]:
        server.add_daylog(config["log-dir"])
    if config["fifo"]:
        server.add_fifo(config["fifo"], remote_blobs=bool(config["remote-blobs"]))
