"""
Client links: TCP (or unix socket) connections from INDI clients.

KStars, PHD2, indi_getprop and scripts connect here.  The factory enforces
the connection limit; each connection is a L{Link} whose bad input closes
it, because a client that sends malformed XML cannot be trusted to be in
step with the stream any more.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from indiserv import wire
from indiserv.link import CLIENT, Link
from indiserv.router import Router
from indiserv.wire import Limits, Message, WireError

__all__ = ["ClientProtocol", "ClientFactory", "CLIENT_LIMITS", "DEFAULT_MAX_CLIENT_ELEMENT"]

#: Clients send commands, not camera frames: a much smaller element limit.
DEFAULT_MAX_CLIENT_ELEMENT = 16 * 1024 * 1024
CLIENT_LIMITS = Limits(max_element=DEFAULT_MAX_CLIENT_ELEMENT)


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


class ClientProtocol(Protocol, Link):
    """One connected INDI client."""

    log = Logger()
    kind = CLIENT
    limits = CLIENT_LIMITS
    factory: ClientFactory

    def __init__(self, limits: Limits | None = None) -> None:
        Link.__init__(self, limits)
        self.label = "client"
        self._closed: list[defer.Deferred[None]] = []

    def connectionMade(self) -> None:
        self.label = f"client {describe_peer(self.transport)}"
        if ITCPTransport.providedBy(self.transport):
            # A new*Vector round trip should cost microseconds, not Nagle's 40 ms.
            self.transport.setTcpNoDelay(True)
        factory = self.factory
        if len(factory.router.clients) >= factory.maxconnections:
            self.log.warn(
                "refused {client}: the server is full ({limit} connections)",
                client=self.label,
                limit=factory.maxconnections,
            )
            self.transport.write(
                wire.message(
                    f"The server is full ({factory.maxconnections} connections);"
                    " try again later"
                ).raw
            )
            self.transport.loseConnection()
            return
        factory.router.add_link(self)
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if self.router is not None:
            self.bytes_received(data)

    def wire_error(self, error: WireError) -> bool:
        self.log.warn(
            "disconnecting {client}: {reason}", client=self.label, reason=error.reason
        )
        router = self.router
        if router is not None:
            router.remove_link(self)
        self.transport.write(wire.message(f"Disconnected: {error.reason}").raw)
        self.transport.loseConnection()
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
        # TLS shuts down only once no producer is registered.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        return closed

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.router is not None:
            self.router.remove_link(self)
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)


class ClientFactory(Factory):
    """Makes L{ClientProtocol}s, up to C{maxconnections} at once."""

    protocol = ClientProtocol
    # "listening on ..." is logged by the server, once and in INDI terms.
    noisy = False

    def __init__(
        self,
        router: Router,
        maxconnections: int = 10,
        limits: Limits = CLIENT_LIMITS,
    ):
        self.router = router
        self.maxconnections = maxconnections
        self.limits = limits

    def buildProtocol(self, addr: IAddress) -> ClientProtocol:
        protocol = ClientProtocol(self.limits)
        protocol.factory = self
        return protocol
