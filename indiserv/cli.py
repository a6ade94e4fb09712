"""
The C{indiserv} command: indiserver's own command line.

Astronomy software (web managers, KStars in local mode, scripts) starts
C{indiserver [options] driver [driver ...]} by name.  This command accepts
exactly that command line, translates it into the options of the twistd
plugin (L{indiserv.tap.Options}), builds the same service with
L{indiserv.tap.makeService} and runs it, logging to stderr in indiserver's
manner.  Installed under the name C{indiserver} (see docs/operations.rst),
it stands in for indiserver without any change to those tools.

C{-h}/C{--help} prints the usage and C{--version} the version, each on
stdout with exit status 0.  As with indiserver: options come first, and
parsing stops at the first argument that does not begin with C{-}; letters
may be combined, each taking its value from the next argument (C{-vvm 64});
clients may connect on every interface; an unknown option, or neither a
driver nor C{-f}, prints the usage and exits with status 2.  The plugin's
long options,
which indiserver does not have (C{--peer}, C{--grace} ...), pass through
as they are, with their value as the next argument or after C{=}.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import sys
import time
from typing import IO, Any, NoReturn

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.task import react
from twisted.logger import (
    ILogObserver,
    LogLevel,
    Logger,
    eventAsText,
    globalLogBeginner,
)
from twisted.python import usage
from zope.interface import provider

import indiserv
from indiserv.service import IndiServer, listen_problem, unix_description
from indiserv.tap import Options, makeService, version_text

__all__ = ["main", "translate", "parse", "usage_text", "indiserver_observer", "local_socket"]

#: indiserver's options that take a value: the twistd option each becomes,
#: and what the value is, for the message when it is missing.
VALUE_OPTIONS = {
    "l": ("--log-dir", "a log directory"),
    "m": ("--max-queue", "max MB behind"),
    "d": ("--max-stream", "max stream MB behind"),
    "u": ("--unix", "a local socket path"),
    "p": ("--port", "a port number"),
    "r": ("--restarts", "a number of restarts"),
    "f": ("--fifo", "a FIFO path"),
}

#: Where indiserver listens for local clients unless C{-u} says otherwise
#: (its INDIUNIXSOCK), and where indilib's client library looks for a
#: server when given the host C{localhost:}.
DEFAULT_UNIX = "/tmp/indiserver"

#: What the command sets that indiserver does without being asked: clients
#: on every interface, and room for many of them (indiserver has no limit;
#: Ekos opens a connection per driver).
DEFAULTS = ["--host", "0.0.0.0", "--max-connections", "100"]

USAGE = """\
Usage: {program} [options] driver [driver ...]
Purpose: INDI server for local and remote drivers (indiserv {version}, INDI protocol 1.7)
Options:
 -l d     : write driver messages to <d>/YYYY-MM-DD.islog
 -m m     : disconnect a client more than m MB behind, default 128
 -d m     : skip streaming BLOBs to a client more than m MB behind, default 5; 0 never skips
 -u path  : local socket to listen on (abstract on Linux), default /tmp/indiserver
 -p p     : TCP port, default 7624
 -r r     : restarts of a failing driver, default 10
 -f path  : FIFO to start and stop drivers through (made if missing)
 -v       : log key events
 -vv      : -v and a line per message
 -vvv     : -vv and each message's XML
driver    : executable or [device]@host[:port]
Also: the long options of twistd -n indiserver --help, such as --peer ADDRESS
or --grace SECONDS, before the drivers.
"""


def usage_text(program: str) -> str:
    """The usage message, naming the command as it was invoked."""
    return USAGE.format(program=program, version=indiserv.__version__)


def translate(args: list[str]) -> list[str]:
    """
    The twistd plugin's arguments for indiserver's C{args} (the command line
    without the program name).

    @raise usage.UsageError: an unknown option, an option without its
        value, or neither a driver nor a FIFO.
    """
    translated = list(DEFAULTS)
    index = 0
    while index < len(args) and args[index].startswith("-"):
        letters = args[index][1:]
        index += 1
        if letters.startswith("-") and len(letters) > 1:
            name, equals, _ = letters[1:].partition("=")
            takes_value = _long_options().get(name)
            if takes_value is None:
                raise usage.UsageError(f"unknown option --{name}")
            translated.append(args[index - 1])
            if takes_value and not equals:
                if index >= len(args):
                    raise usage.UsageError(f"--{name} requires a value")
                translated.append(args[index])
                index += 1
            continue
        for letter in letters:
            if letter == "v":
                translated.append("--verbose")
                continue
            if letter not in VALUE_OPTIONS:
                raise usage.UsageError(f"unknown option -{letter}")
            option, what = VALUE_OPTIONS[letter]
            if index >= len(args):
                raise usage.UsageError(f"-{letter} requires {what}")
            value = args[index]
            index += 1
            translated += [option, _value(letter, value)]
    drivers = args[index:]
    if not drivers and "--fifo" not in translated:
        raise usage.UsageError("no drivers to run and no FIFO (-f) to take them from")
    return [*translated, "--", *drivers]


def _long_options() -> dict[str, bool]:
    """The plugin's long option names, each with whether it takes a value."""
    names = Options().longOpt
    return {name.rstrip("="): name.endswith("=") for name in names}


def _value(letter: str, value: str) -> str:
    if letter in "pr":
        try:
            number = int(value)
        except ValueError:
            raise usage.UsageError(f"-{letter} requires a whole number, not {value!r}")
        if letter == "p":
            if not 0 <= number <= 65535:
                raise usage.UsageError(f"-p requires a port number (0-65535), not {value}")
            return value
        # indiserver takes a negative restart count for none.
        return str(max(number, 0))
    if letter in "md":
        try:
            float(value)
        except ValueError:
            raise usage.UsageError(f"-{letter} requires a number of MB, not {value!r}")
    if letter == "u":
        return local_socket(value)
    return value


def local_socket(path: str) -> str:
    """
    The plugin's C{--unix} value for indiserver's C{-u path}: on Linux the
    abstract name made of the whole path, as indiserver binds it (and as
    indilib's client library connects); elsewhere the socket file.
    """
    return "@" + path if sys.platform.startswith("linux") else path


def parse(args: list[str]) -> Options:
    """The plugin's L{Options} for indiserver's command line C{args}."""
    options = Options()
    try:
        options.parseOptions(translate(args))
    except usage.UsageError as e:
        # The plugin names its long options; say the letters given here.
        letters = {option: f"-{letter}" for letter, (option, _) in VALUE_OPTIONS.items()}
        text = re.sub(r"(?<![\w/.-])--[a-z-]+\b", lambda m: letters.get(m.group(), m.group()), str(e))
        raise usage.UsageError(text) from None
    return options


def indiserver_observer(stream: IO[str], verbose: int = 0) -> ILogObserver:
    """
    A log observer writing events to C{stream} as indiserver writes its log:
    C{YYYY-MM-DDTHH:MM:SS: text}, in UTC.  Debug events only with C{-vvv}.
    """

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.debug and verbose < 3:
            return
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.get("log_time")))
        stream.write(f"{when}: {text}\n")
        stream.flush()

    return observe


_log = Logger(namespace="indiserv.cli")


def serve(reactor: Any, server: IndiServer) -> defer.Deferred[None]:
    """
    Run C{server} until the reactor stops (SIGTERM, SIGINT); fail with
    C{SystemExit(2)} if it cannot listen where asked (a usage mistake: the
    line logged says what to change), C{SystemExit(1)} if it cannot start
    for another reason.
    """
    try:
        server.startService()
    except CannotListenError as e:
        _log.error("{why}", why=listen_problem(e))
        _log.error("good bye")
        return defer.fail(SystemExit(2))
    except Exception as e:
        _log.error("cannot start: {why}", why=e)
        _log.error("good bye")
        return defer.fail(SystemExit(1))
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    return server.stopped


#: prctl's PR_SET_NAME (linux/prctl.h): the name ps, pkill and psutil show.
_PR_SET_NAME = 15


def name_process(program: str) -> None:
    """
    Call this process C{program} where tools look for it by name (Linux's
    C{comm}: C{ps}, C{pkill indiserver}, indiwebmanager's psutil).  A
    console script usually has its own name there; installed under a long
    path (over 127 bytes), pip starts it through C{/bin/sh}, and it would
    be called C{python}.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(program.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # a libc without prctl: the name stays as it is


def main(argv: list[str] | None = None) -> NoReturn:
    """The C{indiserv} console script: C{indiserv [options] driver [driver ...]}."""
    argv = list(sys.argv if argv is None else argv)
    program = os.path.basename(argv[0]) if argv else "indiserv"
    leading = list(itertools.takewhile(lambda arg: arg.startswith("-"), argv[1:]))
    if "-h" in leading or "--help" in leading:
        sys.stdout.write(usage_text(program))
        sys.exit(0)
    if "--version" in leading:
        sys.stdout.write(version_text() + "\n")
        sys.exit(0)
    try:
        options = parse(argv[1:])
    except usage.UsageError as e:
        sys.stderr.write(f"{program}: {e}\n{usage_text(program)}")
        sys.exit(2)
    name_process(program)
    globalLogBeginner.beginLoggingTo(
        [indiserver_observer(sys.stderr, options["verbose"])], redirectStandardIO=False
    )
    _log.info("startup: {argv}", argv=" ".join(argv))
    server = makeService(options)
    if not options["unix"]:
        # As indiserver, also on its local socket; but where another server
        # has it already, on TCP alone (indiserver would exit).
        server.add_listener(unix_description(local_socket(DEFAULT_UNIX)), required=False)
    react(serve, [server])


if __name__ == "__main__":
    main(["indiserv", *sys.argv[1:]])
