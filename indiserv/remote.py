"""
Remote links: this server as a client of another INDI server.

A remote's devices become devices of this server (clients here see and
control them, drivers here can snoop them), and this server's devices flow
to the remote the same way, so servers connected in a tree form one INDI
network.  The connection is kept up by Twisted's C{ClientService}, which
reconnects with exponential backoff whenever it is refused or lost.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.interfaces import (
    ISSLTransport,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from indiserv import wire
from indiserv.blobs import ALSO
from indiserv.link import REMOTE, Link, send_in_large_chunks
from indiserv.router import KEEPALIVE_TEXT, Router
from indiserv.wire import Limits, Message, WireError

__all__ = ["RemoteProtocol", "RemoteService", "parse_remote"]

DEFAULT_PORT = 7624


def parse_remote(spec: str) -> tuple[str | None, str, int]:
    """
    Split indiserver's C{[device]@host[:port]} (or plain C{host[:port]}) into
    (device or None, host, port).

    @raise ValueError: the port is not a number.
    """
    device: str | None = None
    if "@" in spec:
        device, spec = spec.rsplit("@", 1)
        device = device or None
    host, _, port = spec.partition(":")
    return device, host or "localhost", int(port) if port else DEFAULT_PORT


class RemoteProtocol(Protocol, Link):
    """
    The connection to one remote INDI server, as a link.

    @ivar heard: the remote has sent something (over TLS: the handshake
        succeeded, certificate and hostname verified).
    """

    log = Logger()
    kind = REMOTE
    #: A whole TCP read (Twisted's 64 KiB) of another server's frames at once.
    bytes_per_turn = 64 * 1024

    def __init__(self, service: RemoteService):
        Link.__init__(self, service.limits)
        self.service = service
        self.label = f"remote {service.address}"
        self._probe: LoopingCall | None = None
        self._last_heard = 0.0
        self._pinged = False
        self._uids = itertools.count(1)
        self.heard = False

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        send_in_large_chunks(self.transport)
        router = self.service.router
        self.service.protocol = self
        router.add_link(self)
        self.transport.registerProducer(self, True)
        if self.service.blob_enable:
            self.blob_policy.set(ALSO)  # our BLOBs may go up this link too
        self.log.info("connected to {remote}", remote=self.label)
        self.write(wire.get_properties(self.service.device).raw)
        if ISSLTransport.providedBy(self.transport):
            # Data can only come back once the TLS handshake has succeeded;
            # a ping makes sure some does, even from a server with no devices.
            self._ping()
        self._last_heard = router.clock.seconds()
        period = router.keepalive or 30
        self._probe = LoopingCall(self._check_alive, period)
        self._probe.clock = router.clock
        self._probe.start(period, now=False)

    def dataReceived(self, data: bytes) -> None:
        router = self.router
        if router is None:
            return
        self._last_heard = router.clock.seconds()
        self._pinged = False
        if not self.heard:
            # Over TLS, data only comes once the handshake has succeeded.
            self.heard = True
            self.service.failures = 0
        self.bytes_received(data)

    def screen(self, message: Message) -> bool:
        """
        Messages from the remote: keep only the scoped device's, ask for the
        BLOBs of each BLOB vector it defines (when enabled), drop its
        keepalives.
        """
        if self.service.debug_enable:
            self.log.info("{remote}: {xml}", remote=self.label,
                          xml=message.raw.decode("utf-8", "replace").strip())
        scope = self.service.device
        if scope is not None and message.device is not None and message.device != scope:
            return False
        if message.tag == "defBLOBVector" and self.service.blob_enable:
            self.write(wire.enable_blob(ALSO, message.device, message.name).raw)  # type: ignore[arg-type]
        if (
            message.tag == "message"
            and message.device is None
            and message.attrs.get("message") == KEEPALIVE_TEXT
        ):
            return False
        return True

    def send(self, message: Message) -> bool:
        scope = self.service.device
        if scope is not None:
            if message.tag == "getProperties" and message.device is None:
                message = wire.get_properties(scope, version=message.attrs.get("version", "1.7"))
            elif message.device is not None and message.device != scope:
                return True  # not this link's business
        return Link.send(self, message)

    def wire_error(self, error: WireError) -> bool:
        self.log.warn(
            "{remote} sent bad INDI ({reason}); skipped to its next message",
            remote=self.label,
            reason=error.reason,
        )
        return True

    def overflow(self, message: Message) -> bool:
        self.log.warn(
            "dropping the connection to {remote}: {queued} bytes behind and not"
            " catching up; it will be reconnected",
            remote=self.label,
            queued=self.queued,
        )
        self.stopProducing()
        self.transport.abortConnection()
        return False

    def close(self) -> defer.Deferred[None]:
        # TLS shuts down only once no producer is registered, and then
        # the queue is the transport's to write.
        self.transport.unregisterProducer()
        self.hand_over_queue()
        self.transport.loseConnection()
        return defer.succeed(None)

    def _check_alive(self, period: float) -> None:
        """Probe a remote silent for two keepalive periods; drop it if it stays silent."""
        router = self.router
        if router is None:
            return
        if router.clock.seconds() - self._last_heard < 2 * period:
            return
        if self._pinged:
            self.log.warn(
                "{remote} did not answer a ping; reconnecting", remote=self.label
            )
            self.transport.abortConnection()
            return
        self._pinged = True
        self._ping()

    def _ping(self) -> None:
        self.write(wire.ping_request(f"indiserv-{next(self._uids)}").raw)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.heard and ISSLTransport.providedBy(self.transport):
            self.log.warn(
                "TLS handshake with {remote} failed: {why}; will retry",
                remote=self.label,
                why=reason.getErrorMessage() if reason is not None else "unknown",
            )
        self.service.protocol = None
        if self._probe is not None and self._probe.running:
            self._probe.stop()
        router = self.router
        if router is not None:
            self.log.info("lost {remote}", remote=self.label)
            router.remove_link(self, f"Lost the connection to {self.label}")


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """Logs each failed attempt to reach the remote, with why."""

    log = Logger()

    def __init__(self, endpoint: IStreamClientEndpoint, address: str):
        self._endpoint = endpoint
        self._address = address

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        d = self._endpoint.connect(factory)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Failure) -> Failure:
        self.log.warn(
            "cannot reach remote {address}: {why}; will retry",
            address=self._address,
            why=failure.getErrorMessage(),
        )
        return failure


class _RemoteFactory(Factory):
    def __init__(self, service: RemoteService):
        self.service = service

    def buildProtocol(self, addr: Any) -> RemoteProtocol:
        return RemoteProtocol(self.service)


class RemoteService(ClientService):
    """
    Keeps a link to one remote INDI server up while the service runs.

    @ivar address: what the user named, for logs and clients.
    @ivar device: the one device wanted (indiserver's C{device@host}), or
        L{None} for all of them.
    @ivar blob_enable: whether BLOBs cross this link.
    @ivar debug_enable: log every message that arrives over the link.
    """

    log = Logger()

    def __init__(
        self,
        router: Router,
        endpoint: IStreamClientEndpoint,
        address: str,
        device: str | None = None,
        blob_enable: bool = False,
        debug_enable: bool = False,
        limits: Limits = Limits(),
        clock: Any = None,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
    ):
        self.router = router
        self.address = address if device is None else f"{device}@{address}"
        self.device = device
        self.blob_enable = blob_enable
        self.debug_enable = debug_enable
        self.limits = limits
        #: The link while connected.
        self.protocol: RemoteProtocol | None = None
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        #: Attempts in a row that did not reach a talking remote.
        self.failures = 0

        super().__init__(
            _ReportingEndpoint(endpoint, self.address),
            _RemoteFactory(self),
            retryPolicy=self._retry_delay,
            clock=clock if clock is not None else router.clock,
        )

    def stopService(self) -> defer.Deferred[None]:
        if self.protocol is not None and self.protocol.transport is not None:
            # TLS shuts down only once no producer is registered.
            self.protocol.transport.unregisterProducer()
        return super().stopService()

    def abort(self) -> None:
        """Drop the link now, with whatever the remote has not read (a stop that ran out of time)."""
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abortConnection()

    def _retry_delay(self, attempt: int) -> float:
        """
        The delay before the next attempt.  ClientService counts a TCP
        connection as success, so a TLS handshake that then fails would
        reset its count: failures are counted here instead, and only a
        remote that has answered (L{RemoteProtocol.heard}) resets them.
        """
        self.failures += 1
        delay = self.initial_delay * 2.0 ** min(self.failures - 1, 64)
        # Up to a second of jitter, so that servers do not retry in step.
        return min(delay, self.max_delay) + random.random()
