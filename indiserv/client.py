"""
Client links: TCP (or unix socket) connections from INDI clients.

KStars, PHD2, indi_getprop and scripts connect here.  Each connection is
I{pending} until its first complete INDI message (over TLS, that comes
after the handshake): it counts towards a limit of pending connections of
its own, receives nothing, and is closed if that message does not come in
time, so that sockets that say nothing cannot take the clients' places.
Then the factory admits it as a client (or says the server is full), and
it is a L{Link} whose bad input closes it, because a client that sends
malformed XML cannot be trusted to be in step with the stream any more.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IHandshakeListener, IReactorTime, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from indiserv import wire
from indiserv.access import PEER, Access, Identity
from indiserv.link import CLIENT, Link, send_in_large_chunks
from indiserv.router import Router
from indiserv.wire import Limits, Message, WireError

__all__ = [
    "ClientProtocol",
    "ClientFactory",
    "CLIENT_LIMITS",
    "DEFAULT_MAX_CLIENT_ELEMENT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_HANDSHAKE_TIMEOUT",
]

#: Clients send commands, not camera frames: a much smaller element limit.
DEFAULT_MAX_CLIENT_ELEMENT = 16 * 1024 * 1024
CLIENT_LIMITS = Limits(max_element=DEFAULT_MAX_CLIENT_ELEMENT)
#: A pending connection is closed if its first message grows past this:
#: clients begin with getProperties, and a connection not admitted yet
#: must not hold a whole --max-client-message each.
MAX_FIRST_MESSAGE = 1024 * 1024
#: Clients connected at once.
DEFAULT_MAX_CONNECTIONS = 10
#: Connections at once that have not yet sent their first message: room
#: for Ekos, which opens a connection per driver all at once.
DEFAULT_MAX_PENDING = 64
#: Seconds a connection has for its TLS handshake and first message.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


def describe(address: IAddress) -> str:
    """
    A short form of an address for logs: C{host:port}, or a unix socket's
    path (an abstract one, Linux only, written C{@name}).
    """
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{address.port}"  # type: ignore[attr-defined]
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if name and name.startswith("\0"):
        return "@" + name[1:]
    return str(name or address)


def describe_peer(transport: Any) -> str:
    """
    The peer of C{transport} for logs.  A client on a unix socket has no
    address of its own: it is named by the socket it came in on and its
    file descriptor, as indiserver names clients.
    """
    peer = transport.getPeer()
    if getattr(peer, "host", None) is not None or getattr(peer, "name", None):
        return describe(peer)
    return f"{describe(transport.getHost())} fd {transport.fileno()}"


@implementer(IHandshakeListener)
class ClientProtocol(Protocol, TimeoutMixin, Link):
    """
    One connection from an INDI client: pending, then a client link.

    @ivar pending: the connection has not been admitted, nor refused, yet.
    @ivar trusted: the client is another server, trusted to own devices
        (decided by the access rules when it is admitted).
    @ivar host: its source address, L{None} on a unix socket.
    """

    log = Logger()
    kind = CLIENT
    limits = CLIENT_LIMITS
    factory: ClientFactory
    trusted = False
    pending = False
    host: str | None = None

    def __init__(self, limits: Limits | None = None) -> None:
        Link.__init__(self, limits)
        self.label = "client"
        self._closed: list[defer.Deferred[None]] = []
        self._handshaken = False

    def callLater(self, period: float, call: Any) -> Any:
        """TimeoutMixin's timers run on the factory's clock."""
        return self.factory.clock.callLater(period, call)

    def connectionMade(self) -> None:
        self.label = f"client {describe_peer(self.transport)}"
        self.host = getattr(self.transport.getPeer(), "host", None)
        if ITCPTransport.providedBy(self.transport):
            # A new*Vector round trip should cost microseconds, not Nagle's 40 ms.
            self.transport.setTcpNoDelay(True)
        send_in_large_chunks(self.transport)
        refusal = self.factory.arrived(self)
        if refusal is not None:
            # Nothing was said yet, and over TLS nothing can be before the
            # handshake: just close.
            self.log.warn("refused {client}: {why}", client=self.label, why=refusal)
            self.transport.abortConnection()
            return
        self.pending = True
        self.setTimeout(self.factory.handshake_timeout)

    def handshakeCompleted(self) -> None:
        self._handshaken = True

    def dataReceived(self, data: bytes) -> None:
        if self.router is not None:
            if self.timeOut is not None:
                self.resetTimeout()
            self.bytes_received(data)
        elif self.pending:
            self._first_data(data)

    def _first_data(self, data: bytes) -> None:
        """Frame what a pending connection sent; admit it with its first message."""
        items = self.parser.read(data)
        first = next(items, None)
        if first is None:
            if self.parser.pending > MAX_FIRST_MESSAGE:
                self.pending = False
                self.log.warn(
                    "closed {client}: its first message is larger than {limit} bytes",
                    client=self.label,
                    limit=MAX_FIRST_MESSAGE,
                )
                self.transport.abortConnection()
            return
        if isinstance(first, WireError):
            # Never admitted: it keeps its pending place until it has gone.
            self.pending = False
            self.wire_error(first)
            return
        self.pending = False
        refusal = self.factory.admit(self)
        if refusal is not None:
            self.log.warn("refused {client}: {why}", client=self.label, why=refusal)
            self._hang_up(f"{refusal[0].upper()}{refusal[1:]}; try again later")
            return
        self._admitted()
        self.route_parsed(itertools.chain((first,), items))

    def _admitted(self) -> None:
        factory = self.factory
        rule = factory.access.rule_for(Identity(self.host, peer_certificate(self.transport)))
        if rule is not None and rule.role == PEER:
            self.trusted = True
            factory.router.event("{client} admitted as a peer by {rule}", client=self.label, rule=rule)
        # Idle clients are fine unless --idle-timeout says otherwise.
        self.setTimeout(factory.idle_timeout or None)
        factory.router.add_link(self)
        self.transport.registerProducer(self, True)

    def timeoutConnection(self) -> None:
        if self.pending:
            self.pending = False
            tls = hasattr(self.transport, "getPeerCertificate")
            waited_for = "TLS handshake" if tls and not self._handshaken else "INDI message"
            self.log.warn(
                "closed {client}: no {what} within {timeout:g} s (--handshake-timeout)",
                client=self.label,
                what=waited_for,
                timeout=self.factory.handshake_timeout,
            )
            self.transport.abortConnection()
        elif self.router is not None:
            timeout = self.factory.idle_timeout
            self.log.warn(
                "disconnecting {client}: nothing received for {timeout:g} s (--idle-timeout)",
                client=self.label,
                timeout=timeout,
            )
            self._hang_up(f"Disconnected: nothing received for {timeout:g} s")
        else:
            self.log.warn(
                "aborted {client}: it did not let its connection close", client=self.label
            )
            self.transport.abortConnection()

    def _hang_up(self, text: str) -> None:
        """
        Tell the client C{text} and close, aborting a client that does not
        let the connection close within the handshake timeout.
        """
        router = self.router
        if router is not None:
            router.remove_link(self)
            # TLS shuts down only once no producer is registered.
            self.transport.unregisterProducer()
        self.transport.write(wire.message(text).raw)
        self.transport.loseConnection()
        self.setTimeout(self.factory.handshake_timeout)

    def wire_error(self, error: WireError) -> bool:
        self.log.warn(
            "disconnecting {client}: {reason}", client=self.label, reason=error.reason
        )
        self._hang_up(f"Disconnected: {error.reason}")
        return False

    def overflow(self, message: Message) -> bool:
        router = self.router
        assert router is not None
        self.log.warn(
            "disconnecting {client}: {queued} bytes behind (--max-queue {limit})"
            " and not catching up",
            client=self.label,
            queued=self.queued,
            limit=router.max_queue,
        )
        router.remove_link(self)
        self.stopProducing()
        self.transport.abortConnection()
        return False

    def close(self) -> defer.Deferred[None]:
        """Hang up once what was queued for the client is written."""
        closed: defer.Deferred[None] = defer.Deferred()
        self._closed.append(closed)
        # TLS shuts down only once no producer is registered, and then
        # the queue is the transport's to write.
        self.transport.unregisterProducer()
        self.hand_over_queue()
        self.transport.loseConnection()
        return closed

    def abort(self) -> None:
        """Hang up now, dropping whatever the client has not taken."""
        self.stopProducing()
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.setTimeout(None)
        self.pending = False
        self.factory.gone(self)
        if self.router is not None:
            self.router.remove_link(self)
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)


def peer_certificate(transport: Any) -> Any:
    """The verified client certificate of a TLS C{transport}, or L{None}."""
    get = getattr(transport, "getPeerCertificate", None)
    certificate = get() if get is not None else None
    return certificate.to_cryptography() if certificate is not None else None


class ClientFactory(Factory):
    """
    Makes L{ClientProtocol}s and keeps their places: up to C{max_pending}
    connections waiting to be admitted and C{maxconnections} clients, and
    with C{max_per_host} at most that many of each from one address.

    @ivar pending: the connections not admitted, from their start until they
        are admitted or gone (one refused, or being closed, still holds its
        place until it has gone).
    """

    protocol = ClientProtocol
    # "listening on ..." is logged by the server, once and in INDI terms.
    noisy = False

    def logPrefix(self) -> str:
        """What Twisted's ports call this factory in their own log lines."""
        return "indiserv"

    def __init__(
        self,
        router: Router,
        maxconnections: int = DEFAULT_MAX_CONNECTIONS,
        limits: Limits = CLIENT_LIMITS,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_per_host: int = 0,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        idle_timeout: float = 0,
        access: Access = Access(),
        clock: IReactorTime | None = None,
    ):
        self.router = router
        self.maxconnections = maxconnections
        self.limits = limits
        self.max_pending = max_pending
        #: Most connections of each kind from one address; 0 for no limit.
        self.max_per_host = max_per_host
        self.handshake_timeout = handshake_timeout
        #: Seconds a client may send nothing before it is disconnected; 0 never.
        self.idle_timeout = idle_timeout
        self.access = access
        self.clock = clock if clock is not None else router.clock
        self.pending: dict[ClientProtocol, None] = {}
        #: Every connection still open.
        self.connections: dict[ClientProtocol, None] = {}
        self._pending_from: Counter[str | None] = Counter()
        self._clients_from: Counter[str | None] = Counter()
        self._admitted: dict[ClientProtocol, None] = {}

    def buildProtocol(self, addr: IAddress) -> ClientProtocol:
        protocol = ClientProtocol(self.limits)
        protocol.factory = self
        return protocol

    def arrived(self, connection: ClientProtocol) -> str | None:
        """Take a new connection as pending, or say why it cannot be."""
        self.connections[connection] = None
        if len(self.pending) >= self.max_pending:
            return f"{self.max_pending} connections are waiting to be admitted (--max-pending)"
        host = connection.host
        if self._over_per_host(self._pending_from, host):
            return (
                f"{self.max_per_host} connections from {host} are waiting to be"
                " admitted (--max-connections-per-host)"
            )
        self.pending[connection] = None
        self._pending_from[host] += 1
        return None

    def admit(self, connection: ClientProtocol) -> str | None:
        """Take a pending connection as a client, or say why it cannot be."""
        self._forget_pending(connection)
        if len(self.router.clients) >= self.maxconnections:
            return f"the server is full ({self.maxconnections} connections)"
        host = connection.host
        if self._over_per_host(self._clients_from, host):
            return f"{host} has {self.max_per_host} connections already (--max-connections-per-host)"
        self._admitted[connection] = None
        self._clients_from[host] += 1
        return None

    def gone(self, connection: ClientProtocol) -> None:
        """C{connection} has closed: it frees its place."""
        self.connections.pop(connection, None)
        self._forget_pending(connection)
        if connection in self._admitted:
            del self._admitted[connection]
            _decrement(self._clients_from, connection.host)

    def close_pending(self) -> None:
        """Close every connection that has not been admitted (when the server stops)."""
        for connection in list(self.pending):
            connection.abort()

    def abort_all(self) -> list[ClientProtocol]:
        """Abort every connection still open (the server's grace is over); return them."""
        connections = list(self.connections)
        for connection in connections:
            connection.abort()
        return connections

    def _forget_pending(self, connection: ClientProtocol) -> None:
        if connection in self.pending:
            del self.pending[connection]
            _decrement(self._pending_from, connection.host)

    def _over_per_host(self, counts: Counter[str | None], host: str | None) -> bool:
        # Unix socket clients share no address: the limit is for hosts.
        return bool(self.max_per_host) and host is not None and counts[host] >= self.max_per_host


def _decrement(counts: Counter[str | None], host: str | None) -> None:
    counts[host] -= 1
    if counts[host] <= 0:
        del counts[host]
