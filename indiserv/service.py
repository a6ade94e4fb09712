"""
L{IndiServer}: the public face of indiserv.

It mirrors indipyserver's C{IPyServer} (C{add_exdriver}, C{send_message},
C{shutdown}, C{stop}, C{stopped}, C{keepalive}, C{host}, C{port}, C{run})
and is a Twisted C{MultiService}, so it also runs under twistd or inside
any Twisted application via C{setServiceParent}.
"""

from __future__ import annotations

import asyncio
import errno
import re
import signal
import socket
import sys
from datetime import datetime
from typing import Any, Sequence

import twisted
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import asyncioreactor, defer, process
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import (
    IListeningPort,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, STDLibLogObserver, globalLogBeginner
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

import indiserv
from indiserv.access import Access
from indiserv.client import (
    CLIENT_LIMITS,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING,
    ClientFactory,
    describe,
)
from indiserv.control import FifoControl
from indiserv.daylog import DayLog
from indiserv.driver import DriverService
from indiserv.inprocess import (
    IInProcessDriver,
    InProcessService,
    IPyDriverAdapter,
    WrongReactor,
    is_ipydriver,
    require_asyncio_reactor,
)
from indiserv.remote import RemoteService
from indiserv.router import Router
from indiserv.wire import Limits

__all__ = [
    "IndiServer",
    "Milestone",
    "endpoint_description",
    "listen_problem",
    "tls_options",
    "SHUTDOWN_TEXT",
    "DEFAULT_GRACE",
]

SHUTDOWN_TEXT = "The INDI server is shutting down"
#: Seconds a stop may take, drivers and clients included.
DEFAULT_GRACE = 5.0
#: The share of the grace drivers get between SIGTERM and SIGKILL: the
#: rest is for clients to read that the drivers have stopped.
DRIVER_SHARE = 0.8


#: The first words of the server endpoint strings of Twisted and its usual
#: plugins: C{HOST:PORT} with any other host is a host and a port.
ENDPOINT_TYPES = frozenset(("tcp", "tcp6", "ssl", "tls", "unix", "systemd", "le", "lets", "onion"))

_HOST_AND_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+):(\d+)$")


def endpoint_description(port: int | str, host: str = "localhost") -> str:
    """
    A Twisted server endpoint string for C{port}.

    A number (or a string of digits) listens on TCP at C{host}; C{HOST:PORT}
    (C{localhost:7624}, C{127.0.0.1:7624}, C{[::1]:7624}), what users type,
    listens on TCP at that host; anything else is taken as an endpoint string
    already, such as C{tcp:7624:interface=::} or C{unix:/run/indi.sock}.
    """
    if isinstance(port, int) or str(port).isdigit():
        return _tcp_description(int(port), host)
    given = _HOST_AND_PORT.match(str(port))
    if given is not None and given.group(1) not in ENDPOINT_TYPES:
        return _tcp_description(int(given.group(2)), given.group(1).strip("[]"))
    return str(port)


def _tcp_description(port: int, host: str) -> str:
    interface = host.replace(":", "\\:")
    return f"tcp:{port}:interface={interface}"


def listen_problem(error: CannotListenError) -> str:
    """
    One line for a user whose server cannot listen where asked: where, why,
    and what to do about it.
    """
    where = str(error.port).replace("\0", "@")
    if error.interface:
        where = f"{error.interface}:{where}"
    reason = error.socketError
    number = getattr(reason, "errno", None)
    if isinstance(reason, socket.gaierror):
        why = (
            f"there is no host {error.interface!r}; give --host an address of this"
            " machine (127.0.0.1; 0.0.0.0 for every interface)"
        )
    elif number == errno.EADDRINUSE:
        why = "the address is in use (another INDI server?); stop that one, or choose another port"
    elif number == errno.EADDRNOTAVAIL:
        why = "that is not an address of this machine; give --host one of its addresses, or 0.0.0.0"
    elif number == errno.EACCES:
        why = "permission denied (ports below 1024 need root); choose another port"
    else:
        why = str(getattr(reason, "strerror", None) or reason)
    return f"cannot listen on {where}: {why}"


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


def _log_to_stdlib() -> None:
    """
    Like IPyServer, log through the standard logging module, so that
    logging.basicConfig() (or nothing, for silence) decides.
    """
    globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)


def _asyncio_reactor_on(loop: asyncio.AbstractEventLoop) -> Any:
    """Twisted's asyncio reactor on C{loop}, installed if no reactor is yet."""
    if "twisted.internet.reactor" not in sys.modules:
        asyncioreactor.install(loop)
    from twisted.internet import reactor

    if getattr(reactor, "_asyncioEventloop", None) is not loop:
        raise WrongReactor(
            "IndiServer.asyncrun() needs Twisted's asyncio reactor on the"
            f" running event loop, but {type(reactor).__name__} is installed"
            " already: do not import twisted.internet.reactor before"
            " asyncrun(), or use IndiServer.run() or twistd instead"
        )
    return reactor


class Milestone(defer.Deferred[Any]):
    """
    A Deferred for a moment in the server's life (L{IndiServer.listening},
    L{IndiServer.stopped}) that asyncio tasks can await too, also as
    IPyServer's C{stopped} event: C{await server.stopped.wait()}.
    """

    _future: asyncio.Future[Any] | None = None

    def __await__(self) -> Any:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running event loop
            task = None
        if task is None:
            return super().__await__()
        if self._future is None:
            # One future for every asyncio awaiter, fed from a copy of the
            # result, so that this Deferred's own chain is left alone.
            copy: defer.Deferred[Any] = defer.Deferred()
            self.addBoth(lambda result: (copy.callback(result), result)[1])
            self._future = copy.asFuture(asyncio.get_running_loop())
        # Shielded: an awaiter that is cancelled (asyncio.wait_for) leaves
        # the future for the others and nothing behind.
        return asyncio.shield(self._future).__await__()

    async def wait(self) -> None:
        """Wait for this moment (IPyServer's C{stopped.wait()})."""
        await self

    def is_set(self) -> bool:
        """Whether this moment has come (IPyServer's C{stopped.is_set()})."""
        return self.called


@implementer(IStreamClientEndpoint)
class _EndpointWhenUsed:
    """
    A client endpoint made from its description when first used: making
    some (C{tls:}) asks the reactor about itself, which would install the
    default reactor before asyncrun() can install the asyncio one.
    """

    def __init__(self, reactor: Any, description: str):
        self._reactor = reactor
        self._description = description
        self._endpoint: IStreamClientEndpoint | None = None

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self._endpoint is None:
            self._endpoint = clientFromString(self._reactor, self._description)
        return self._endpoint.connect(factory)


class _InstalledReactor:
    """
    Twisted's global reactor, imported when first used: importing it
    installs the default reactor, too early for an asyncio one.
    """

    def __getattr__(self, name: str) -> Any:
        from twisted.internet import reactor

        return getattr(reactor, name)


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
    """
    An endpoint wrapper that logs where it listens; unless C{required}, one
    that cannot listen is logged as a warning, and the server goes on
    without it (its listen gives L{None}).
    """

    log = Logger()

    def __init__(
        self, endpoint: IStreamServerEndpoint, required: bool = True, where: str = ""
    ):
        self._endpoint = endpoint
        self._required = required
        self._where = where or repr(endpoint)

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort | None]:
        listening = self._endpoint.listen(factory).addCallback(self._announce)
        if not self._required:
            listening.addErrback(self._go_without)
        return listening

    def _announce(self, port: IListeningPort) -> IListeningPort:
        self.log.info("listening on {address}", address=describe(port.getHost()))
        return port

    def _go_without(self, failure: Failure) -> None:
        failure.trap(CannotListenError)
        self.log.warn(
            "not listening on {where}: {why}; going on without it",
            where=self._where,
            why=failure.value.socketError,
        )


def _stop_reactor(reactor: Any) -> None:
    """Stop C{reactor}, unless it is stopping already (Ctrl-C, SIGTERM)."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


class IndiServer(MultiService):
    """
    An INDI server: listens for clients and serves drivers.

    @ivar host: the interface a numeric C{port} listens on.
    @ivar port: the TCP port; after start, the port actually bound (so
        C{port=0} asks the OS for a free one).
    @ivar maxconnections: how many clients may be connected at once.
    @ivar factory: the L{ClientFactory} that admits clients, with the other
        connection limits (C{max_pending}, C{max_per_host},
        C{handshake_timeout}, C{idle_timeout}) and the C{access} rules.
    @ivar restarts: how many times in a row a failing driver is restarted.
    @ivar grace: seconds a stop may take in all; what is still running
        then (a driver that outlives SIGKILL, a client that has not read
        what was queued for it) is aborted or left behind.
    @ivar stopped: fires once the server has stopped, after L{shutdown}.
    @ivar listening: fires with the listening port once clients can connect.
    """

    log = Logger()

    def __init__(
        self,
        *drivers: Any,
        host: str = "localhost",
        port: int | str = 7624,
        maxconnections: int = DEFAULT_MAX_CONNECTIONS,
        reactor: Any = None,
        verbose: int = 0,
        restarts: int = DriverService.restarts,
        max_queue: int = Router.max_queue,
        max_stream: int = Router.max_stream,
        client_limits: Limits = CLIENT_LIMITS,
        driver_limits: Limits = Limits(),
        tls: Any = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_connections_per_host: int = 0,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        idle_timeout: float = 0,
        peers: Sequence[str] = (),
        access: str | None = None,
        grace: float = DEFAULT_GRACE,
    ):
        """
        The connection options are those of twistd's C{--max-pending},
        C{--max-connections-per-host} (0: no limit), C{--handshake-timeout},
        C{--idle-timeout} (0: none); C{peers} are C{--peer} addresses and
        networks and C{access} an access file's path (see
        L{indiserv.access}), which raise L{indiserv.access.AccessError}
        when malformed.  C{grace} is C{--grace}, seconds for a stop.
        """
        super().__init__()
        # The global reactor is looked up when first used, not now, so that
        # asyncrun() can still install the asyncio reactor on its loop.
        self.reactor = reactor if reactor is not None else _InstalledReactor()
        self.host = host
        self.port = port
        self.maxconnections = maxconnections
        self.restarts = restarts
        self.grace = grace
        self.driver_limits = driver_limits
        self.router = Router(clock=self.reactor, verbose=verbose)
        self.router.max_queue = max_queue
        self.router.max_stream = max_stream
        self.factory = ClientFactory(
            self.router,
            maxconnections,
            client_limits,
            max_pending=max_pending,
            max_per_host=max_connections_per_host,
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            access=Access.build(peers, access),
            clock=self.reactor,
        )
        self.listening: defer.Deferred[IListeningPort] = Milestone()
        self.stopped: defer.Deferred[None] = Milestone()
        self.listening_port: IListeningPort | None = None
        self._announced = False
        self._stop = False
        self._children_stopped = False
        endpoint = serverFromString(self.reactor, endpoint_description(port, host))
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
        #: The names of the devices of the IPyDriver drivers served.
        self._ipydevices: set[str] = set()
        names = [name for driver in drivers if is_ipydriver(driver) for name in driver]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"Device name {name} is duplicated in the attached drivers.")
        for driver in drivers:
            if is_ipydriver(driver):
                self.add_ipydriver(driver)
            elif IInProcessDriver.providedBy(driver):
                self.add_inprocess(driver)
            else:
                raise TypeError(
                    f"{driver!r} is neither an indipydriver IPyDriver nor an"
                    " indiserv.inprocess.IInProcessDriver"
                )

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
        self.log.info("listening on {address}", address=describe(address))
        self.listening.callback(port)
        return port

    def add_exdriver(
        self,
        program: str,
        *args: str,
        debug_enable: bool = False,
        env: dict[str, str] | None = None,
    ) -> DriverService:
        """
        Serve the executable driver C{program}, run with C{args} in the
        environment C{env} (L{None}: this process's).  C{debug_enable} logs
        every message it writes, as with IPyServer.
        """
        driver = DriverService(
            self.router,
            program,
            args,
            reactor=self.reactor,
            env=env,
            restarts=self.restarts,
            limits=self.driver_limits,
            debug_enable=debug_enable,
            stop_timeout=self.grace * DRIVER_SHARE,
        )
        driver.setServiceParent(self)
        return driver

    def add_ipydriver(self, driver: Any) -> InProcessService:
        """
        Serve the indipydriver C{IPyDriver} C{driver} in this process, as
        IPyServer does.  It runs on Twisted's asyncio reactor
        (L{WrongReactor} says so if another one is installed).  A device
        name that another IPyDriver already serves is refused with
        C{ValueError}.
        """
        require_asyncio_reactor()
        adapter = IPyDriverAdapter(driver)
        taken = self._ipydevices.intersection(adapter.devices)
        if taken:
            raise ValueError(
                f"Device name {sorted(taken)[0]} is duplicated in the attached drivers."
            )
        self._ipydevices.update(adapter.devices)
        return self.add_inprocess(adapter)

    def add_inprocess(self, driver: IInProcessDriver) -> InProcessService:
        """
        Serve C{driver}, an L{IInProcessDriver}, in this process: a Twisted
        program's own devices, or an observer of all traffic.
        """
        service = InProcessService(self.router, driver, self.driver_limits)
        service.setServiceParent(self)
        return service

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
        endpoint = _EndpointWhenUsed(self.reactor, description)
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

    def add_listener(
        self, endpoint: IStreamServerEndpoint | str, required: bool = True
    ) -> StreamServerEndpointService:
        """
        Also accept clients on C{endpoint} (an endpoint, or an endpoint
        string), such as a local unix socket (L{unix_description}).  They count
        towards C{maxconnections} with the others.  If the server is
        running, it listens at once.  One that cannot listen stops startup,
        unless not C{required}: then a warning says so and the server goes
        on without it (the C{indiserv} command's default unix socket, which
        another server may hold).
        """
        where = ""
        if isinstance(endpoint, str):
            where = endpoint.replace("\0", "@")
            endpoint = serverFromString(self.reactor, endpoint)
        listener = StreamServerEndpointService(
            _AnnouncingEndpoint(endpoint, required, where), self.factory
        )
        listener._raiseSynchronously = required
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

    def send_message(
        self, message: str, timestamp: datetime | None = None
    ) -> defer.Deferred[None]:
        """
        Send a C{message} from the server to every client.  It is sent at
        once; the fired Deferred returned lets IPyServer code C{await} it.
        """
        self.router.send_message(message, timestamp)
        return defer.succeed(None)

    def privilegedStartService(self) -> None:
        # twistd binds the listeners here, before startService.
        self._announce()
        super().privilegedStartService()

    def _announce(self) -> None:
        """The first line of a start: which indiserv this is."""
        if not self._announced:
            self._announced = True
            self.log.info(
                "indiserv {version} starting (INDI protocol 1.7, Twisted {twisted})",
                version=indiserv.__version__,
                twisted=twisted.__version__,
            )

    def startService(self) -> None:
        self._announce()
        try:
            super().startService()
        except BaseException as e:
            # Nobody waits for ever on a server that never started.
            if not self.listening.called:
                self.listening.errback(e)
                self.listening.addErrback(lambda _: None)
            self._fire_stopped(None)
            raise

    def shutdown(self, shutdownmessage: str = "") -> defer.Deferred[None]:
        """
        Stop serving: tell clients why (C{shutdownmessage}, or a plain
        notice), stop the drivers, close the port and the connections.
        Returns L{stopped}.
        """
        if not self._stop:
            self._stop = True
            self.log.info("shutting down: {why}", why=shutdownmessage or "shutdown() was called")
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
        Stop listening and stop the drivers (TERM, then KILL after most of
        the grace), then hang up on the clients, so they still hear of the
        devices going away; whatever still runs when the grace is over is
        aborted, and the stop is over.
        """
        if not self._stop:
            # Stopped from outside (twistd on SIGTERM, a parent service).
            self._stop = True
            self.log.info("shutting down: the program is stopping the server")
            self.send_message(SHUTDOWN_TEXT)
        # Connections still to be admitted were told nothing, and need not be.
        self.factory.close_pending()
        stopped: defer.Deferred[None] = defer.Deferred()
        grace_over = self.reactor.callLater(self.grace, self._grace_over, stopped)
        children = defer.maybeDeferred(super().stopService)
        children.addBoth(self._close_clients)

        def done(result: object) -> object:
            if grace_over.active():
                grace_over.cancel()
            if not stopped.called:
                stopped.callback(None)
            return result

        children.addBoth(done)
        children.addErrback(lambda failure: self.log.failure("while stopping", failure))
        stopped.addBoth(lambda result: (self._fire_stopped(None), result)[1])
        return stopped

    def _close_clients(self, result: object) -> defer.Deferred[object]:
        self._children_stopped = True
        closing = [client.close() for client in list(self.router.clients)]
        return defer.gatherResults(closing).addCallback(lambda _: result)

    def _grace_over(self, stopped: defer.Deferred[None]) -> None:
        """
        The stop has taken all its grace: abort the connections (their
        ends, a reactor turn later, end the stop) and stop waiting for
        what would not stop.
        """
        for connection in self.factory.abort_all():
            self.log.warn(
                "aborted {client}: {queued} bytes it had not read when the"
                " --grace of {grace:g} s ran out",
                client=connection.label,
                queued=connection.queued,
                grace=self.grace,
            )
        for child in self:
            if isinstance(child, RemoteService):
                child.abort()
        if not self._children_stopped:
            drivers = [
                child.driver_name
                for child in self
                if isinstance(child, DriverService) and child.protocol is not None
            ]
            self.log.error(
                "stopped after the --grace of {grace:g} s without waiting any"
                " longer for {what}",
                grace=self.grace,
                what=", ".join(drivers) or "the links still stopping",
            )
            stopped.callback(None)

    def run(self) -> None:
        """
        Start the reactor, serve until L{shutdown} (or SIGINT/SIGTERM), and
        return once everything has stopped.  Logs go to the standard
        C{logging} module, as with IPyServer.  With IPyDriver drivers and no
        reactor installed yet, Twisted's asyncio reactor is installed.
        """
        if self._ipydevices and "twisted.internet.reactor" not in sys.modules:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            asyncioreactor.install(loop)
        reactor = self.reactor
        _log_to_stdlib()

        def start() -> None:
            try:
                self.startService()
            except Exception:
                self.log.failure("indiserv could not start")
                reactor.stop()

        reactor.callWhenRunning(start)
        reactor.addSystemEventTrigger("before", "shutdown", self._stop_with_reactor)
        self.stopped.addCallback(lambda _: _stop_reactor(reactor))
        reactor.run()

    async def asyncrun(self) -> None:
        """
        Serve inside a running asyncio event loop until L{shutdown}, as
        IPyServer's C{asyncrun} does::

            asyncio.run(server.asyncrun())

        Twisted's asyncio reactor is installed on the running loop (an
        error says so if another reactor is installed already).  SIGTERM
        shuts the server down; so does Ctrl-C, after which C{asyncio.run}
        raises C{KeyboardInterrupt} as usual.  Every driver process has been
        reaped when this returns.  One process can run this once: Twisted's
        reactor cannot be restarted.
        """
        loop = asyncio.get_running_loop()
        reactor = _asyncio_reactor_on(loop)
        _log_to_stdlib()
        if not reactor.running:
            # The loop is already running: only tell Twisted it is.  Signals
            # stay asyncio's; Twisted learns of exited children from ours.
            reactor.startRunning(installSignalHandlers=False)
        handlers = {signal.SIGCHLD: process.reapAllProcesses, signal.SIGTERM: self.shutdown}
        for signum, handler in list(handlers.items()):
            try:
                loop.add_signal_handler(signum, handler)
            except (ValueError, RuntimeError, NotImplementedError):
                del handlers[signum]  # not the main thread: no signals here
        reaping = None
        if signal.SIGCHLD not in handlers:
            # Without SIGCHLD, look for exited drivers every second.
            reaping = LoopingCall(process.reapAllProcesses)
            reaping.clock = reactor
            reaping.start(1.0)
        process.reapAllProcesses()
        try:
            self.startService()
            await self.stopped
        except asyncio.CancelledError:
            await self.shutdown()
            raise
        finally:
            if reaping is not None:
                reaping.stop()
            for signum in handlers:
                loop.remove_signal_handler(signum)
            # The reactor's shutdown never comes under asyncio.run: stop its
            # thread pool (host names are resolved there), whose threads
            # would keep the program from exiting.
            if getattr(reactor, "threadpool", None) is not None:
                reactor.threadpool.stop()

    def _stop_with_reactor(self) -> defer.Deferred[None] | None:
        if self.running:
            return self.stopService()
        return None
