"""
What every peer of the server has in common: a L{Link}.

Clients, executable drivers, remote servers and in-process drivers are all
links.  A link frames what it reads with its own L{Parser}, hands each
message to the router, and writes whatever the router sends it.  Only how
bytes travel, and what to do about bad input, differs between kinds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from indiserv.blobs import BlobPolicy
from indiserv.wire import Limits, Message, Parser, WireError

if TYPE_CHECKING:
    from indiserv.router import Router

__all__ = ["Link", "CLIENT", "DRIVER", "REMOTE"]

CLIENT = "client"
DRIVER = "driver"
REMOTE = "remote"


class Link:
    """
    One peer of the router.

    Subclasses set L{kind}, give a L{label} for logs, and implement
    L{write} and L{wire_error}.

    @ivar router: the router this link is attached to, once attached.
    @ivar blob_policy: what C{enableBLOB} asked for on this link: a client's
        BLOB delivery, or a driver's BLOB snooping.
    @ivar bytes_sent: bytes handed to the transport since the link began.
    """

    log = Logger()
    kind = CLIENT
    label = "link"
    #: What one element from this peer may be: set per link kind.
    limits = Limits()

    router: Router | None = None

    def __init__(self) -> None:
        self.blob_policy = BlobPolicy()
        self.parser = Parser(self.limits)
        self.bytes_sent = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"

    def send(self, message: Message) -> None:
        """Deliver C{message} to this peer, exactly as it arrived."""
        self.bytes_sent += len(message.raw)
        self.write(message.raw)

    def write(self, data: bytes) -> None:
        """Put C{data} on the way to the peer."""
        raise NotImplementedError

    def close(self) -> Deferred[None]:
        """End the link; the Deferred fires once it has ended."""
        raise NotImplementedError

    def bytes_received(self, data: bytes) -> None:
        """Frame C{data} and route every complete message."""
        router = self.router
        while True:
            try:
                messages = self.parser.feed(data)
            except WireError as e:
                if router is not None:
                    for message in e.messages:
                        router.route(message, self)
                if not self.wire_error(e):
                    return
                data = b""
                continue
            if router is not None:
                for message in messages:
                    router.route(message, self)
            return

    def wire_error(self, error: WireError) -> bool:
        """
        React to bad input from this peer.

        @return: C{True} to go on reading after the bad element (the parser
            has resynchronised), C{False} if the link is being closed.
        """
        raise NotImplementedError
