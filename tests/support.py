"""
Shared test helpers: links that record what the router sends, and the
rules for tests that need indilib's programs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import sys

from typing import Any, Callable, Iterator, NoReturn

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SkipTest, TestCase

from indiserv.link import Link
from indiserv.wire import Message, Parser, WireError

import indiserv

REQUIRE_INTEROP = os.environ.get("INDISERV_REQUIRE_INTEROP") == "1"

#: Where the indiserv being tested lives, for child processes (trial runs
#: tests inside _trial_temp, away from the source tree).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(indiserv.__file__)))


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process that must import this indiserv."""
    env = dict(os.environ, **extra)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + path if path else "")
    return env


def require_programs(*programs: str) -> None:
    """
    Skip the test when an indilib program is missing, unless CI demands
    interop (INDISERV_REQUIRE_INTEROP=1), where a missing program fails it.
    """
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        cannot_run(f"needs {', '.join(missing)} (Debian package indi-bin)")


def require_module(name: str, install: str) -> None:
    """Skip (fail under INDISERV_REQUIRE_INTEROP=1) unless Python module C{name} imports."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        cannot_run(f"needs the Python module {name} ({install})")


def cannot_run(why: str) -> NoReturn:
    """Skip the test for C{why}, or fail it where CI demands interop."""
    if REQUIRE_INTEROP:
        raise AssertionError(f"INDISERV_REQUIRE_INTEROP=1 but this test {why}")
    raise SkipTest(why)


@defer.inlineCallbacks
def network_namespace(testcase: TestCase):
    """
    The name of a network namespace of its own for C{testcase}, its loopback
    up, deleted when the test ends: there, Linux's abstract unix socket names
    (indiserver's C{/tmp/indiserver}) are private to the test.  Run programs
    in it with C{ip netns exec NAME}.  Needs root and iproute2's C{ip}.
    """
    from twisted.internet.utils import getProcessOutputAndValue

    if shutil.which("ip") is None:
        cannot_run("needs ip (Debian package iproute2)")
    name = f"indiserv-test-{os.getpid()}-{next(_namespaces)}"
    out, err, code = yield getProcessOutputAndValue("ip", ["netns", "add", name])
    if code != 0:
        cannot_run(f"needs a network namespace of its own (as root): {err.decode().strip()}")
    testcase.addCleanup(getProcessOutputAndValue, "ip", ["netns", "delete", name])
    out, err, code = yield getProcessOutputAndValue(
        "ip", ["netns", "exec", name, "ip", "link", "set", "lo", "up"]
    )
    testcase.assertEqual(code, 0, err)
    return name


_namespaces = itertools.count(1)


def short_directory(testcase: TestCase) -> str:
    """
    A directory of the test's own under the system's temp dir, removed when
    the test ends: for unix sockets (and FIFOs whose socket is named after
    them), whose names must fit in 108 bytes wherever the tests run.
    """
    import tempfile

    directory = tempfile.mkdtemp(prefix="indiserv-test-")
    testcase.addCleanup(shutil.rmtree, directory, True)
    return directory


def run_in_own_group(testcase: TestCase, argv: list[str], **spawn: Any) -> defer.Deferred:
    """
    Run C{argv} to its end in a process group of its own and fire with its
    (stdout, stderr, exit code).  If the test ends first (a failure, a
    timeout), the whole group is killed: nothing it started is left behind.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import ProcessProtocol

    from indiserv.driver import in_own_process_group

    class Collect(ProcessProtocol):
        def __init__(self) -> None:
            self.out, self.err = [], []
            self.ended: defer.Deferred = defer.Deferred()

        def outReceived(self, data: bytes) -> None:
            self.out.append(data)

        def errReceived(self, data: bytes) -> None:
            self.err.append(data)

        def processEnded(self, reason: Any) -> None:
            code = getattr(reason.value, "exitCode", None)
            self.ended.callback((b"".join(self.out), b"".join(self.err), code))

    collect = Collect()
    executable, group_argv = in_own_process_group(argv[0], argv)
    process = reactor.spawnProcess(collect, executable, group_argv, **spawn)

    # The caller gets its own Deferred, fired only while the test runs (one
    # that timed out has finished with it); the cleanup waits on the end.
    ended: defer.Deferred = defer.Deferred()
    test_over = []

    def kill_group() -> defer.Deferred:
        test_over.append(True)
        try:
            os.killpg(process.pid, 9)
        except (ProcessLookupError, TypeError):
            pass
        return collect.ended

    def report(result: Any) -> Any:
        if not test_over:
            ended.callback(result)
        return result

    testcase.addCleanup(kill_group)
    collect.ended.addCallback(report)
    return ended


def kill_processes_naming(text: str) -> None:
    """
    SIGKILL every process of ours whose command line has C{text} (a test's
    own directory): what a program under test started in a session of its
    own (indiweb starts indiserver so) is gone when the test is.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            if text.encode() in cmdline:
                os.kill(int(entry), 9)
        except OSError:
            pass


def require_command(name: str) -> str:
    """
    The path of the console script C{name} that installing indiserv puts
    beside Python or on PATH; skip (fail under INDISERV_REQUIRE_INTEROP=1)
    when indiserv is not installed.
    """
    beside = os.path.join(os.path.dirname(sys.executable), name)
    path = beside if os.access(beside, os.X_OK) else shutil.which(name)
    if path is None:
        cannot_run(f"needs the {name} command (pip install .)")
    return path


def load_example(name: str) -> Any:
    """The module docs/examples/<name>.py, loaded from its file (docs/ is not a package)."""
    import importlib.util

    path = os.path.join(PACKAGE_ROOT, "docs", "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A port number the OS just handed out (for programs that need a number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged(testcase: TestCase, text: str, times: int = 1) -> defer.Deferred[dict]:
    """Fires with the C{times}th log event, from now on, whose format contains C{text}."""
    from twisted.logger import globalLogPublisher

    seen: defer.Deferred[dict] = defer.Deferred()
    count = [0]

    def watch(event: dict) -> None:
        if text in event.get("log_format", "") and not seen.called:
            count[0] += 1
            if count[0] == times:
                seen.callback(event)

    globalLogPublisher.addObserver(watch)
    testcase.addCleanup(globalLogPublisher.removeObserver, watch)
    return seen


class MessageLog:
    """Keeps the INDI messages a test peer received, and lets a test wait for one."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self._waiting: list[tuple[Callable[[Message], bool], defer.Deferred[Message]]] = []

    def arrived(self, message: Message) -> None:
        self.received.append(message)
        for waiting in list(self._waiting):
            if waiting[0](message):
                self._waiting.remove(waiting)
                waiting[1].callback(message)

    def wait_for(self, matches: Callable[[Message], bool]) -> defer.Deferred[Message]:
        """Fires with the first message, already here or still to come, that C{matches}."""
        for message in self.received:
            if matches(message):
                return defer.succeed(message)
        d: defer.Deferred[Message] = defer.Deferred()
        self._waiting.append((matches, d))
        return d

    def tags(self) -> list[str]:
        return [message.tag for message in self.received]

    def take(self) -> list[Message]:
        """What arrived since the last call."""
        received, self.received = self.received, []
        return received


class RecordingLink(Link, MessageLog):
    """A link whose peer is the test: it keeps every message sent to it."""

    def __init__(self, kind: str, label: str):
        self.kind = kind
        Link.__init__(self)
        MessageLog.__init__(self)
        self.label = label
        self.wire_errors: list[WireError] = []

    def write(self, data: bytes) -> None:
        for message in Parser().feed(data):
            self.arrived(message)

    def write_sequence(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def wire_error(self, error: WireError) -> bool:
        self.wire_errors.append(error)
        return True

    def say(self, data: bytes) -> None:
        """Bytes from this peer to the router."""
        self.bytes_received(data)


class TestClient(Protocol, MessageLog):
    """An INDI client over a real connection, driven by the test."""

    def __init__(self) -> None:
        MessageLog.__init__(self)
        self.parser = Parser()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        for message in self.parser.feed(data):
            self.arrived(message)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)

    def say(self, data: bytes) -> None:
        self.transport.write(data)


@defer.inlineCallbacks
def serve(
    testcase: TestCase,
    *drivers: list[str],
    env: dict[str, str] | None = None,
    remotes: tuple[int, ...] = (),
    blob_enable: bool = False,
    port: int = 0,
    inprocess: tuple[Any, ...] | list[Any] = (),
    bind: str | None = None,
    **kwargs: Any,
):
    """
    An IndiServer on 127.0.0.1 serving C{drivers} (argument lists) and the
    C{inprocess} drivers, linked to the servers on C{remotes} (from the
    source address C{bind}, to be told from other clients there), stopped
    when C{testcase} ends; fires with it once it listens.
    """
    from indiserv import IndiServer

    server = IndiServer(*inprocess, host="127.0.0.1", port=port, **kwargs)
    for driver in drivers:
        server.add_exdriver(*driver).env = env if env is not None else child_env()
    for remote in remotes:
        if bind is None:
            server.add_remote("127.0.0.1", remote, blob_enable=blob_enable)
        else:
            server.add_remote(
                f"tcp:host=127.0.0.1:port={remote}:bindAddress={bind}", blob_enable=blob_enable
            )
    server.startService()
    testcase.addCleanup(lambda: server.stopService() if server.running else None)
    yield server.listening
    return server


@defer.inlineCallbacks
def client_of(
    testcase: TestCase, server: Any, hello: bytes = b"<getProperties version='1.7'/>"
):
    """A L{TestClient} of C{server} that has said C{hello}, hung up when C{testcase} ends."""
    client = yield connect_client(server.port)
    testcase.addCleanup(client.transport.loseConnection)
    if hello:
        client.say(hello)
    return client


@defer.inlineCallbacks
def attached_client(testcase: TestCase, server: Any, hello: bytes = b""):
    """
    A client of C{server} that has said C{hello} and that the server has
    surely attached: its ping was answered.
    """
    client = yield client_of(testcase, server, hello + b"<pingRequest uid='attached'/>")
    yield client.wait_for(lambda m: m.tag == "pingReply")
    return client


def connect_client(port: int, host: str = "127.0.0.1") -> defer.Deferred[TestClient]:
    """Connect a L{TestClient} to a server listening on C{host:port}."""
    from twisted.internet import reactor

    endpoint = TCP4ClientEndpoint(reactor, host, port)
    return connectProtocol(endpoint, TestClient())


def open_fds() -> int:
    """File descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    """This process's resident memory now."""
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """This process's peak resident memory (since it was last reset)."""
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def message_from(raw: bytes) -> Message:
    """The one message C{raw} holds, framed as a link frames it."""
    (message,) = Parser().feed(raw)
    return message


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first, then parent), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def child_processes(parent: int | None = None) -> list[tuple[int, str]]:
    """(pid, state) of every child of C{parent} (this process), zombies included."""
    children = []
    me = os.getpid() if parent is None else parent
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is not None and int(fields[1]) == me:
            children.append((int(entry), fields[0]))
    return children


def process_running(pid: int) -> bool:
    """Whether process C{pid} is still there, and not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def stdin_messages() -> Iterator[Message]:
    """
    The INDI messages a test driver program reads on its stdin, until the
    server closes it (for driver scripts that tests write).
    """
    parser = Parser()
    while True:
        data = os.read(0, 65536)
        if not data:
            return
        yield from parser.feed(data)


def when_logged(testcase: TestCase, matches: Callable[[dict], bool]) -> defer.Deferred[dict]:
    """Fires with the first log event, from now on, that C{matches}."""
    from twisted.logger import globalLogPublisher

    found: defer.Deferred[dict] = defer.Deferred()

    def observe(event: dict) -> None:
        if not found.called and matches(event):
            found.callback(event)

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return found


def logged_text(event: dict) -> str:
    """The text of a log event, its fields filled in."""
    from twisted.logger import formatEvent

    return formatEvent(event)


def write_fifo(path: str, text: str) -> None:
    """Write C{text} into the FIFO at C{path} as one writer, then close it (EOF for the reader)."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def executable_script(directory: str, name: str, command: str) -> str:
    """An executable shell script C{directory/name} that runs C{command}; its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexec {command}\n")
    os.chmod(path, 0o755)
    return path


#: The server's log line saying which TCP port it listens on.
LISTENING = rb"listening on \S*:(\d+)\s"

#: What a client says to hear every device.
GET_ALL = b"<getProperties version='1.7'/>"

#: indiserv's demo driver, as a shell command line.
SIMULATOR_COMMAND_LINE = f"{sys.executable} -m indiserv.simulator"
