"""
L{IndiServer}: the public face of indiserv.

It mirrors indipyserver's C{IPyServer} (C{add_exdriver}, C{send_message},
C{shutdown}, C{stop}, C{stopped}, C{keepalive}, C{host}, C{port}, C{run})
and is a Twisted C{MultiService}, so it also runs under twistd or inside
any Twisted application via C{setServiceParent}.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.logger import Logger, STDLibLogObserver, globalLogBeginner
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from indiserv.client import CLIENT_LIMITS, ClientFactory, describe
from indiserv.control import FifoControl
from indiserv.daylog import DayLog
from indiserv.driver import DriverService
from indiserv.remote import RemoteService
from indiserv.router import Router
from indiserv.wire import Limits

__all__ = ["IndiServer", "endpoint_description", "tls_options", "SHUTDOWN_TEXT"]

SHUTDOWN_TEXT = "The INDI server is shutting down"


def endpoint_description(port: int | str, host: str = "localhost") -> str:
    """
    A Twisted server endpoint string for C{port}.

    A number (or a string of digits) listens on TCP at C{host}; anything else
    is taken as an endpoint string already, such as C{tcp:7624:interface=::}
    or C{unix:/run/indi.sock}.
    """
    if isinstance(port, int) or str(port).isdigit():
        interface = host.replace(":", "\\:")
        return f"tcp:{int(port)}:interface={interface}"
    return str(port)


def unix_description(path: str) -> str:
    """
    A Twisted server endpoint string for a unix socket at C{path}.
    C{@name} is a socket in Linux's abstract namespace (no file; what
    indiserver's C{-u} makes on Linux); anything else a socket file, whose
    stale leftover from a crashed server is replaced.
    """
    abstract = path.startswith("@")
    if abstract:
        path = "\0" + path[1:]
    escaped = path.replace("\\", "\\\\").replace(":", "\\:")
    return f"unix:{escaped}:lockfile={0 if abstract else 1}"


def tls_options(certificate: str, key: str, client_ca: str | None = None) -> Any:
    """
    TLS options for serving: the server's PEM certificate and private key
    files and, with C{client_ca}, a PEM CA certificate file that every
    client's certificate must be signed by (clients without one are refused).
    """
    with open(certificate, "rb") as f:
        pem = f.read()
    with open(key, "rb") as f:
        pem += b"\n" + f.read()
    server = PrivateCertificate.loadPEM(pem)
    if client_ca is None:
        return server.options()
    with open(client_ca, "rb") as f:
        authority = Certificate.loadPEM(f.read())
    return server.options(authority)


@implementer(IStreamServerEndpoint)
class _ReportingEndpoint:
    """An endpoint wrapper that tells the server which port it got."""

    def __init__(self, endpoint: IStreamServerEndpoint, server: IndiServer):
        self._endpoint = endpoint
        self._server = server

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        return self._endpoint.listen(factory).addCallback(self._server._listening)


@implementer(IStreamServerEndpoint)
class _AnnouncingEndpoint:
    """An endpoint wrapper that logs where it listens."""

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint):
        self._endpoint = endpoint

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        return self._endpoint.listen(factory).addCallback(self._announce)

    def _announce(self, port: IListeningPort) -> IListeningPort:
        self.log.info("listening on {address}", address=describe(port.getHost()))
        return port


class IndiServer(MultiService):
    """
    An INDI server: listens for clients and serves drivers.

    @ivar host: the interface a numeric C{port} listens on.
    @ivar port: the TCP port; after start, the port actually bound (so
        C{port=0} asks the OS for a free one).
    @ivar maxconnections: how many clients may be connected at once.
    @ivar restarts: how many times in a row a failing driver is restarted.
    @ivar stopped: fires once the server has stopped, after L{shutdown}.
    @ivar listening: fires with the listening port once clients can connect.
    """

    log = Logger()

    def __init__(
        self,
        host: str = "localhost",
        port: int | str = 7624,
        maxconnections: int = 10,
        *,
        reactor: Any = None,
        verbose: int = 0,
        restarts: int = DriverService.restarts,
        max_queue: int = Router.max_queue,
        max_stream: int = Router.max_stream,
        client_limits: Limits = CLIENT_LIMITS,
        driver_limits: Limits = Limits(),
        tls: Any = None,
    ):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.host = host
        self.port = port
        self.maxconnections = maxconnections
        self.restarts = restarts
        self.driver_limits = driver_limits
        self.router = Router(clock=reactor, verbose=verbose)
        self.router.max_queue = max_queue
        self.router.max_stream = max_stream
        self.factory = ClientFactory(self.router, maxconnections, client_limits)
        self.listening: defer.Deferred[IListeningPort] = defer.Deferred()
        self.stopped: defer.Deferred[None] = defer.Deferred()
        self.listening_port: IListeningPort | None = None
        self._stop = False
        endpoint = serverFromString(reactor, endpoint_description(port, host))
        listening_factory: Any = self.factory
        if tls is not None:
            # INDI over TLS on any endpoint, with whatever the options demand
            # of clients (see tls_options).
            listening_factory = TLSMemoryBIOFactory(tls, False, self.factory)
        self._listener = StreamServerEndpointService(
            _ReportingEndpoint(endpoint, self), listening_factory
        )
        # Fail startup loudly when the port cannot be bound.
        self._listener._raiseSynchronously = True
        # The listener starts first: if the port cannot be bound, nothing
        # else has started (no timers, no drivers) when startup fails.
        self._listener.setServiceParent(self)
        self.router.setServiceParent(self)

    @property
    def keepalive(self) -> float:
        """Seconds of silence before clients get a keepalive C{message}; 0 disables."""
        return self.router.keepalive

    @keepalive.setter
    def keepalive(self, seconds: float) -> None:
        self.router.keepalive = seconds

    @property
    def stop(self) -> bool:
        """C{True} once L{shutdown} has been called."""
        return self._stop

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.listening_port = port
        address = port.getHost()
        if hasattr(address, "port"):
            self.port = address.port
        self.log.info("listening on {address}", address=address)
        self.listening.callback(port)
        return port

    def add_exdriver(
        self, program: str, *args: str, env: dict[str, str] | None = None
    ) -> DriverService:
        """
        Serve the executable driver C{program}, run with C{args} in the
        environment C{env} (L{None}: this process's).
        """
        driver = DriverService(
            self.router,
            program,
            args,
            reactor=self.reactor,
            env=env,
            restarts=self.restarts,
            limits=self.driver_limits,
        )
        driver.setServiceParent(self)
        return driver

    def add_remote(
        self,
        host: str,
        port: int = 7624,
        blob_enable: bool = False,
        debug_enable: bool = False,
        *,
        device: str | None = None,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> RemoteService:
        """
        Link to the INDI server at C{host:port}, for all its devices or only
        C{device}.  C{host} may also be a Twisted client endpoint string
        (C{tcp:...}, C{tls:...}), which then says where to connect.  BLOBs
        cross the link only with C{blob_enable}; C{debug_enable} logs every
        message that arrives over it.  A refused or lost link is retried
        after C{initial_delay} seconds, doubling up to C{max_delay}.
        """
        if host.startswith(("tcp:", "tls:", "unix:", "ssl:")):
            description, address = host, host
        else:
            escaped = host.replace(":", "\\:")
            description, address = f"tcp:host={escaped}:port={int(port)}", f"{host}:{port}"
        endpoint = clientFromString(self.reactor, description)
        remote = RemoteService(
            self.router,
            endpoint,
            address,
            device=device,
            blob_enable=blob_enable,
            debug_enable=debug_enable,
            limits=self.driver_limits,
            clock=self.reactor,
            initial_delay=initial_delay,
            max_delay=max_delay,
        )
        remote.setServiceParent(self)
        return remote

    def add_listener(self, endpoint: IStreamServerEndpoint | str) -> StreamServerEndpointService:
        """
        Also accept clients on C{endpoint} (an endpoint, or an endpoint
        string), such as a local unix socket (L{unix_description}).  They count
        towards C{maxconnections} with the others.  If the server is
        running, it listens at once; one that cannot listen stops startup.
        """
        if isinstance(endpoint, str):
            endpoint = serverFromString(self.reactor, endpoint)
        listener = StreamServerEndpointService(_AnnouncingEndpoint(endpoint), self.factory)
        listener._raiseSynchronously = True
        listener.setServiceParent(self)
        return listener

    def add_fifo(
        self, path: str, env: dict[str, str] | None = None, remote_blobs: bool = False
    ) -> FifoControl:
        """
        Start and stop drivers and remote links as told by the lines written
        into the FIFO C{path}, as indiserver's C{-f} does (see
        L{indiserv.control}).  Drivers started from it begin with the
        environment C{env} (L{None}: this process's); BLOBs cross the links
        it makes with C{remote_blobs}.  A FIFO that cannot be made or opened
        stops startup with a L{indiserv.control.FifoError}.
        """
        control = FifoControl(self, path, env=env, remote_blobs=remote_blobs)
        control.setServiceParent(self)
        return control

    def add_daylog(self, directory: str) -> DayLog:
        """
        Write each message of a driver (or remote server) to a file per day
        in C{directory}, C{YYYY-MM-DD.islog}, as indiserver's C{-l} does
        (see L{indiserv.daylog}).
        """
        daylog = DayLog(directory, clock=self.reactor)
        daylog.setServiceParent(self)
        self.router.message_log = daylog.record
        return daylog

    def send_message(self, message: str, timestamp: datetime | None = None) -> None:
        """Send a C{message} from the server to every client."""
        self.router.send_message(message, timestamp)

    def shutdown(self, shutdownmessage: str = "") -> defer.Deferred[None]:
        """
        Stop serving: tell clients why (C{shutdownmessage}, or a plain
        notice), stop the drivers, close the port and the connections.
        Returns L{stopped}.
        """
        if not self._stop:
            self._stop = True
            self.send_message(shutdownmessage or SHUTDOWN_TEXT)
            if self.running:
                defer.maybeDeferred(self.stopService).addBoth(self._fire_stopped)
            else:
                self._fire_stopped(None)
        return self.stopped

    def _fire_stopped(self, result: object) -> None:
        if not self.stopped.called:
            self.stopped.callback(None)

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop listening and stop the drivers (TERM, then KILL after a grace
        period), then hang up on the clients, so they still hear of the
        devices going away.
        """
        if not self._stop:
            # Stopped from outside (twistd on SIGTERM, a parent service).
            self._stop = True
            self.send_message(SHUTDOWN_TEXT)
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(self._close_clients)
        d.addBoth(lambda result: (self._fire_stopped(None), result)[1])
        return d

    def _close_clients(self, result: object) -> defer.Deferred[object]:
        closing = [client.close() for client in list(self.router.clients)]
        return defer.gatherResults(closing).addCallback(lambda _: result)

    def run(self) -> None:
        """
        Start the reactor, serve until L{shutdown} (or SIGINT/SIGTERM), and
        return once everything has stopped.  Logs go to the standard
        C{logging} module, as with IPyServer.
        """
        reactor = self.reactor
        # Like IPyServer, log through the standard logging module, so
        # logging.basicConfig() (or nothing, for silence) decides.
        globalLogBeginner.beginLoggingTo(
            [STDLibLogObserver()], redirectStandardIO=False
        )

        def start() -> None:
            try:
                self.startService()
            except Exception:
                self.log.failure("indiserv could not start")
                reactor.stop()

        reactor.callWhenRunning(start)
        reactor.addSystemEventTrigger("before", "shutdown", self._stop_with_reactor)
        self.stopped.addCallback(
            lambda _: reactor.stop() if reactor.running else None
        )
        reactor.run()

    def _stop_with_reactor(self) -> defer.Deferred[None] | None:
        if self.running:
            return self.stopService()
        return None
