"""
Tests for L{indiserv.service.IndiServer}: the public server object, over real TCP.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from datetime import datetime, timezone

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from indiserv import IndiServer
from indiserv.client import ClientProtocol
from indiserv.service import SHUTDOWN_TEXT, endpoint_description, listen_problem, unix_description

from .support import (
    attached_client,
    child_env,
    child_processes,
    client_of,
    connect_client,
    load_example,
    logged,
    logged_text,
    require_programs,
    serve,
    short_directory,
)
from .test_driver import FakeProcessReactor
from .test_tap import interrupted

SIMULATOR = "indiserv Simulator"
SIMULATOR_COMMAND = [sys.executable, "-m", "indiserv.simulator"]


class ListenProblemTests(SynchronousTestCase):
    def problem(self, interface: str, port: object, error: BaseException) -> str:
        return listen_problem(CannotListenError(interface, port, error))

    def test_in_use(self) -> None:
        """A port in use: said in words, with what to do."""
        self.assertEqual(
            self.problem("0.0.0.0", 7624, OSError(errno.EADDRINUSE, "Address already in use")),
            "cannot listen on 0.0.0.0:7624: the address is in use (another INDI server?);"
            " stop that one, or choose another port",
        )

    def test_others(self) -> None:
        """Unknown hosts, foreign addresses, privileged ports, unix sockets: each said in words."""
        self.assertIn(
            "there is no host 'nohost'; give --host an address of this machine",
            self.problem("nohost", 7624, socket.gaierror(-2, "Name or service not known")),
        )
        self.assertIn(
            "that is not an address of this machine",
            self.problem("10.9.9.9", 7624, OSError(errno.EADDRNOTAVAIL, "Cannot assign")),
        )
        self.assertIn("ports below 1024 need root", self.problem("", 624, OSError(errno.EACCES, "Permission denied")))
        self.assertEqual(
            self.problem(None, "\0/tmp/indiserver", OSError(errno.EPERM, "Operation not permitted")),
            "cannot listen on @/tmp/indiserver: Operation not permitted",
        )


class EndpointDescriptionTests(SynchronousTestCase):
    def test_host_and_port(self) -> None:
        """HOST:PORT, as users type it, is TCP on that host; endpoint strings stay as they are."""
        self.assertEqual(endpoint_description("localhost:7624"), "tcp:7624:interface=localhost")
        self.assertEqual(endpoint_description("127.0.0.1:7000", "0.0.0.0"), "tcp:7000:interface=127.0.0.1")
        self.assertEqual(endpoint_description("[::1]:7624"), "tcp:7624:interface=\\:\\:1")
        self.assertEqual(endpoint_description("observatory:7624"), "tcp:7624:interface=observatory")
        for description in ("tcp:7624", "unix:/run/indi.sock", "ssl:7624", "systemd:domain=INET:index=0"):
            self.assertEqual(endpoint_description(description), description)

    def test_number(self) -> None:
        """A port number listens on TCP at the given host."""
        self.assertEqual(endpoint_description(7624, "localhost"), "tcp:7624:interface=localhost")
        self.assertEqual(endpoint_description("7624", "0.0.0.0"), "tcp:7624:interface=0.0.0.0")

    def test_ipv6_host_escaped(self) -> None:
        """Colons of an IPv6 host are escaped for the endpoint parser."""
        self.assertEqual(endpoint_description(1, "::1"), "tcp:1:interface=\\:\\:1")

    def test_endpoint_string(self) -> None:
        """Anything else is an endpoint string already."""
        self.assertEqual(endpoint_description("unix:/tmp/indi.sock"), "unix:/tmp/indi.sock")

    def test_unix_description(self) -> None:
        """A unix socket path becomes an endpoint string, colons escaped; @name is abstract, without a lock file."""
        self.assertEqual(unix_description("/run/indi:1.sock"), "unix:/run/indi\\:1.sock:lockfile=1")
        self.assertEqual(unix_description("@/tmp/indiserver"), "unix:\0/tmp/indiserver:lockfile=0")


class IndiServerTests(TestCase):
    timeout = 30

    def make_server(self, **kwargs) -> IndiServer:
        server = IndiServer(host="127.0.0.1", port=0, **kwargs)
        self.addCleanup(lambda: server.stopService() if server.running else None)
        return server

    def add_simulator(self, server: IndiServer) -> None:
        server.add_exdriver(sys.executable, "-m", "indiserv.simulator").env = child_env()

    @defer.inlineCallbacks
    def test_serves_driver_to_client(self):
        """A client of a started server sees the definitions of its executable driver."""
        server = yield serve(self, SIMULATOR_COMMAND)
        self.assertNotEqual(server.port, 0)
        client = yield client_of(self, server)
        defined = yield client.wait_for(lambda m: m.tag == "defSwitchVector")
        self.assertEqual(defined.device, SIMULATOR)

    @defer.inlineCallbacks
    def test_exdriver_debug_enable(self):
        """add_exdriver(debug_enable=True) logs each message the driver writes, as IPyServer does."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        server = IndiServer(host="127.0.0.1", port=0)
        server.add_exdriver(*SIMULATOR_COMMAND, debug_enable=True, env=child_env())
        server.startService()
        self.addCleanup(server.stopService)
        yield server.listening
        client = yield client_of(self, server)
        yield client.wait_for(lambda m: m.tag == "defSwitchVector")
        lines = [e["xml"] for e in logged if "xml" in e]
        self.assertTrue(any(line.startswith("<defSwitchVector") for line in lines), lines)

    @defer.inlineCallbacks
    def test_tcp_nodelay(self):
        """Client sockets have Nagle's algorithm off."""
        server = yield serve(self)
        yield attached_client(self, server)
        (link,) = server.router.clients
        self.assertTrue(link.transport.getTcpNoDelay())

    @defer.inlineCallbacks
    def test_send_message(self):
        """send_message reaches connected clients with the given timestamp."""
        server = yield serve(self)
        client = yield attached_client(self, server)
        server.send_message("Clouds", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
        said = yield client.wait_for(lambda m: m.tag == "message")
        self.assertEqual(said.attrs["message"], "Clouds")
        self.assertEqual(said.attrs["timestamp"], "2026-01-02T03:04:05")

    @defer.inlineCallbacks
    def test_shutdown(self):
        """shutdown tells clients why, ends drivers and connections, sets stop and fires stopped."""
        server = self.make_server()
        self.add_simulator(server)
        server.startService()
        yield server.listening
        client = yield connect_client(server.port)
        client.say(b"<getProperties version='1.7'/>")
        yield client.wait_for(lambda m: m.tag == "defSwitchVector")
        self.assertFalse(server.stop)
        stopped = server.shutdown("Observatory closing")
        self.assertTrue(server.stop)
        said = yield client.wait_for(
            lambda m: m.tag == "message" and m.attrs.get("message") == "Observatory closing"
        )
        self.assertIsNone(said.device)
        yield stopped
        self.assertIs(stopped, server.stopped)
        self.assertFalse(server.running)
        yield client.lost

    @defer.inlineCallbacks
    def test_port_in_use(self):
        """A port that cannot be bound stops startup with an error."""
        first = yield serve(self)
        second = IndiServer(host="127.0.0.1", port=first.port)
        self.assertRaises(CannotListenError, second.startService)

    def test_keepalive_setting(self) -> None:
        """keepalive is 30 by default and settable before start."""
        server = IndiServer(port=0)
        self.assertEqual(server.keepalive, 30)
        server.keepalive = 5
        self.assertEqual(server.router.keepalive, 5)
        self.assertEqual((server.host, server.maxconnections), ("localhost", 10))

    @defer.inlineCallbacks
    def test_embedded_in_application(self):
        """An IndiServer runs as a child of any Twisted service tree."""
        application = MultiService()
        server = IndiServer(host="127.0.0.1", port=0)
        server.setServiceParent(application)
        application.startService()
        yield server.listening
        client = yield attached_client(self, server)
        yield application.stopService()
        yield client.lost
        self.assertTrue(server.stopped.called)


class EmbeddingTests(TestCase):
    """docs/examples/observatory_web.py: a web site with an IndiServer child service."""

    timeout = 30

    @defer.inlineCallbacks
    def test_stopping_parent_stops_server_drivers_and_connections(self):
        """Stopping the application closes both ports, stops both drivers (the in-process one withdrawn, the executable one reaped) and tells clients before hanging up."""
        require_programs("indi_simulator_telescope")
        example = load_example("observatory_web")
        top = example.observatory(web_port="tcp:0:interface=127.0.0.1", indi_port=0)
        indi = next(s for s in top if isinstance(s, IndiServer))
        (driver,) = [s for s in indi if hasattr(s, "program")]
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        driver.env = child_env(HOME=home)
        top.startService()
        self.addCleanup(lambda: top.stopService() if top.running else None)
        yield indi.listening
        client = yield client_of(self, indi)
        yield client.wait_for(lambda m: m.tag == "defSwitchVector" and m.device == SIMULATOR)
        yield client.wait_for(lambda m: m.device == "Telescope Simulator")
        web = next(s for s in top if not isinstance(s, IndiServer))
        ports = []
        web._waitingForPort.addCallback(lambda port: ports.append(port) or port)
        web_port = ports[0].getHost().port
        page = yield connect_client(web_port)  # the site is up
        page.transport.loseConnection()
        running = [pid for pid, state in child_processes() if state != "Z"]
        self.assertTrue(running)

        yield top.stopService()

        yield client.lost
        self.assertTrue(indi.stopped.called)
        told = [m.attrs["message"] for m in client.received if m.tag == "message" and m.device is None]
        self.assertTrue([text for text in told if "shutting down" in text.lower()], told)
        withdrawn = [m.device for m in client.received if m.tag == "delProperty"]
        self.assertIn(SIMULATOR, withdrawn)  # the in-process simulator, stopped with the rest
        yield self.assertFailure(connect_client(web_port), ConnectionRefusedError)
        self.assertFalse([pid for pid, _ in child_processes() if pid in running])
        yield self.assertFailure(connect_client(indi.port), ConnectionRefusedError)


# A driver that ignores SIGTERM.  It answers each getProperties (the
# server's at its start, a client's) with its definition, so a client that
# asks after the first is sent still gets one; its input closed, it stays.
IGNORES_TERM = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "while os.read(0, 65536):\n"
    "    sys.stdout.write(\"<defTextVector device='Stubborn' name='T'><defText name='A'/></defTextVector>\")\n"
    "    sys.stdout.flush()\n"
    "time.sleep(600)\n"
)


class ShutdownTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_stops_accepting(self):
        """After shutdown the port refuses new clients."""
        server = IndiServer(host="127.0.0.1", port=0)
        server.startService()
        yield server.listening
        port = server.port
        yield server.shutdown()
        yield self.assertFailure(connect_client(port), ConnectionRefusedError)

    @defer.inlineCallbacks
    def test_default_message(self):
        """Stopping without a message still tells clients the server is going."""
        server = IndiServer(host="127.0.0.1", port=0)
        server.startService()
        yield server.listening
        client = yield attached_client(self, server)
        yield server.stopService()
        yield client.lost
        said = [m.attrs["message"] for m in client.received if m.tag == "message"]
        self.assertEqual(said, [SHUTDOWN_TEXT])

    @defer.inlineCallbacks
    def test_stubborn_driver_killed(self):
        """A driver that ignores SIGTERM is killed after the grace period, leaving no zombie."""
        server = IndiServer(host="127.0.0.1", port=0)
        driver = server.add_exdriver(sys.executable, "-c", IGNORES_TERM)
        driver.stop_timeout = 0.5
        server.startService()
        yield server.listening
        client = yield connect_client(server.port)
        client.say(b"<getProperties version='1.7'/>")
        yield client.wait_for(lambda m: m.device == "Stubborn")
        pid = driver.protocol.transport.pid
        yield server.shutdown("bye")
        yield client.lost
        self.assertIn("killed by signal 9", " ".join(
            m.attrs.get("message", "") for m in client.received if m.tag == "message"
        ))
        self.assertFalse(os.path.exists(f"/proc/{pid}"))
        self.assertEqual(child_processes(), [])


    @defer.inlineCallbacks
    def test_stubborn_driver_killed_within_grace(self):
        """A driver that ignores SIGTERM is killed within the server's grace."""
        server = IndiServer(host="127.0.0.1", port=0, grace=0.5)
        driver = server.add_exdriver(sys.executable, "-c", IGNORES_TERM)
        server.startService()
        yield server.listening
        client = yield attached_client(self, server)
        client.say(b"<getProperties version='1.7'/>")
        yield client.wait_for(lambda m: m.device == "Stubborn")
        pid = driver.protocol.transport.pid
        yield server.stopService()
        self.assertTrue(server.stopped.called)
        self.assertFalse(os.path.exists(f"/proc/{pid}"))

    @defer.inlineCallbacks
    def test_client_that_never_reads(self):
        """A client that reads nothing while megabytes are queued for it is aborted when the grace is over, and the stop ends."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        server = IndiServer(host="127.0.0.1", port=0, grace=0.5)
        server.startService()
        yield server.listening
        client = yield attached_client(self, server)
        client.transport.pauseProducing()  # it reads nothing from now on
        # One message, written to the socket at once: far more than the
        # kernel's buffers hold, so most of it waits in the transport.
        server.send_message("x" * 32 * 1024 * 1024)
        yield server.stopService()
        self.assertTrue(server.stopped.called)
        client.transport.abortConnection()
        yield client.lost
        self.assertTrue(any("--grace" in e["log_format"] for e in logged))
        self.assertEqual(server.factory.connections, {})

    test_client_that_never_reads.timeout = 10  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_pending_connection_closed(self):
        """Stopping closes connections that have not said anything yet."""
        server = IndiServer(host="127.0.0.1", port=0, handshake_timeout=60)
        server.startService()
        yield server.listening
        silent = yield connect_client(server.port)
        yield attached_client(self, server)  # by then the silent one is pending
        self.assertEqual(len(server.factory.pending), 1)
        yield server.stopService()
        yield silent.lost


class GraceTests(SynchronousTestCase):
    """The bounded stop, on a fake reactor whose time the test keeps."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.server = IndiServer(host="127.0.0.1", port=0, reactor=self.reactor, grace=5)
        self.server.startService()

    def client(self) -> tuple[ClientProtocol, StringTransport]:
        """A client admitted by the server."""
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = self.server.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"<enableBLOB>Never</enableBLOB>")
        return protocol, transport

    def test_driver_that_will_not_die(self) -> None:
        """A driver gets SIGTERM, SIGKILL after 4/5 of the grace, and a driver that outlives even that does not hold the stop past the grace."""
        driver = self.server.add_exdriver("sh")
        process = driver.protocol.transport
        stopped = []
        self.server.stopService().addCallback(stopped.append)
        self.assertEqual(process.signals, ["TERM"])
        self.reactor.advance(4)
        self.assertEqual(process.signals, ["TERM", "KILL"])
        self.assertEqual(stopped, [])
        self.reactor.advance(1)
        self.assertEqual(stopped, [None])
        self.assertTrue(self.server.stopped.called)
        (error,) = [e for e in self.logged if e["log_level"].name == "error"]
        self.assertIn("sh", error["what"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_client_that_will_not_read(self) -> None:
        """A client still not done when the grace is over is aborted, and the stop ends with its connection."""
        protocol, transport = self.client()
        stopped = []
        self.server.stopService().addCallback(stopped.append)
        self.assertTrue(transport.disconnecting)  # closing, once what is queued is written
        self.reactor.advance(5)
        self.assertTrue(transport.disconnected)  # aborted
        self.assertEqual(stopped, [])
        protocol.connectionLost(None)
        self.assertEqual(stopped, [None])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_quick_stop_cancels_grace(self) -> None:
        """A stop that ends early leaves no timer behind."""
        protocol, transport = self.client()
        stopped = []
        self.server.stopService().addCallback(stopped.append)
        protocol.connectionLost(None)
        self.assertEqual(stopped, [None])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


# IndiServer.run() as a program runs it, serving indilib's telescope.
RUNS = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from indiserv import IndiServer
server = IndiServer(port=0)
server.add_exdriver("indi_simulator_telescope")
server.run()
print("run() returned", flush=True)
"""


class RunTests(TestCase):
    """IndiServer.run(), the IPyServer way of serving."""

    timeout = 30

    @defer.inlineCallbacks
    def test_ctrl_c(self):
        """Ctrl-C (SIGINT to the program's whole process group) ends run() cleanly: no traceback, no restart, the driver reaped, exit 0."""
        require_programs("indi_simulator_telescope")
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        output, ended, drivers = yield interrupted(
            self, [sys.executable, "-c", RUNS], rb"HaAxis", env=child_env(HOME=home), path=home
        )
        self.assertEqual(ended.exitCode, 0, output)
        self.assertEqual(len(drivers), 1)
        self.assertIn("run() returned", output)
        self.assertNotIn("signal 2", output)


class ExtraListenerTests(TestCase):
    """add_listener: clients on a unix socket as well as on TCP."""

    timeout = 30

    def socket_path(self) -> str:
        """A unix socket path short enough for sun_path (108 bytes), wherever the tests run."""
        return os.path.join(short_directory(self), "sock")

    @defer.inlineCallbacks
    def connect_unix(self, address: str):
        from twisted.internet import reactor
        from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol

        from .support import TestClient

        client = yield connectProtocol(UNIXClientEndpoint(reactor, address), TestClient())
        self.addCleanup(client.transport.loseConnection)
        client.say(b"<pingRequest uid='unix'/>")
        yield client.wait_for(lambda m: m.tag == "pingReply")
        return client

    @defer.inlineCallbacks
    def check_unix(self, path: str, address: str):
        server = yield serve(self, SIMULATOR_COMMAND, env=child_env())
        server.add_listener(unix_description(path))
        client = yield self.connect_unix(address)
        tcp_client = yield attached_client(self, server)
        client.say(b"<getProperties version='1.7'/>")
        defined = yield client.wait_for(lambda m: m.tag == "defSwitchVector")
        self.assertEqual(defined.device, SIMULATOR)
        unix_label, tcp_label = sorted(
            (link.label for link in server.router.clients), key=lambda label: "127.0.0.1:" in label
        )
        self.assertTrue(tcp_label.startswith("client 127.0.0.1:"), tcp_label)
        self.assertRegex(unix_label, r"^client .+ fd \d+$")
        return server, client, tcp_client

    @defer.inlineCallbacks
    def test_abstract_unix_socket(self):
        """A client on an abstract unix socket (@name, what indiserver -u makes on Linux) is served as on TCP."""
        if not sys.platform.startswith("linux"):
            raise SkipTest("abstract unix sockets are Linux only")
        name = f"/tmp/indiserv-test-{os.getpid()}-{id(self)}"
        yield self.check_unix("@" + name, "\0" + name)

    @defer.inlineCallbacks
    def test_unix_socket_file(self):
        """A client on a unix socket file is served as on TCP."""
        path = self.socket_path()
        yield self.check_unix(path, path)

    @defer.inlineCallbacks
    def test_counts_towards_max_connections(self):
        """Clients of both listeners share one connection limit."""
        path = self.socket_path()
        server = yield serve(self, maxconnections=1)
        server.add_listener(unix_description(path))
        yield self.connect_unix(path)
        refused = yield connect_client(server.port)
        refused.say(b"<getProperties version='1.7'/>")
        said = yield refused.wait_for(lambda m: m.tag == "message")
        self.assertIn("full", said.attrs["message"])

    @defer.inlineCallbacks
    def test_optional_listener_taken(self):
        """A listener not required that cannot listen is logged as a warning, and the server serves on without it."""
        if not sys.platform.startswith("linux"):
            raise SkipTest("abstract unix sockets are Linux only")
        warned = logged(self, "going on without it")
        name = f"@/tmp/indiserv-test-{os.getpid()}-{id(self)}"
        first = yield serve(self)
        first.add_listener(unix_description(name))
        second = yield serve(self)
        second.add_listener(unix_description(name), required=False)
        event = yield warned
        self.assertEqual(
            logged_text(event),
            f"not listening on unix:{name}:lockfile=0: [Errno 98] Address already in use; going on without it",
        )
        yield attached_client(self, second)
        yield second.shutdown()  # and it stops as any other

    def test_cannot_listen(self) -> None:
        """A listener that cannot listen stops startup with an error."""
        path = os.path.join(os.path.abspath(self.mktemp()), "no-such-dir", "sock")
        server = IndiServer(host="127.0.0.1", port=0)
        server.add_listener(f"unix:{path}")
        self.addCleanup(lambda: server.stopService() if server.running else None)
        self.assertRaises((CannotListenError, OSError), server.startService)
