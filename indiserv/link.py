"""
What every peer of the server has in common: a L{Link}.

Clients, executable drivers, remote servers and in-process drivers are all
links.  A link frames what it reads with its own L{Parser}, hands each
message to the router, and writes whatever the router sends it.  Only how
bytes travel, and what to do about bad input or a peer that stops
reading, differs between kinds.

Outbound flow control: a link is registered as the streaming producer of
its transport.  While the transport has room, messages go straight to it;
once the transport says "pause", messages wait in the link's own queue,
which counts its bytes, and the router's limits decide what happens when
that queue grows too long (see L{Link.send}).
"""

from __future__ import annotations

import sys
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterator

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from indiserv.blobs import BlobPolicy
from indiserv.interest import Interest
from indiserv.wire import Limits, Message, Parser, WireError

if TYPE_CHECKING:
    from indiserv.router import Router

__all__ = ["Link", "CLIENT", "DRIVER", "REMOTE", "write_now", "queued_cost", "send_in_large_chunks"]

CLIENT = "client"
DRIVER = "driver"
REMOTE = "remote"

#: What one queued message costs beyond its bytes: the bytes object's
#: header and the queue's slot.  Counting it keeps C{--max-queue} a bound
#: on memory for a flood of tiny messages too.
MESSAGE_OVERHEAD = sys.getsizeof(b"") + 8


def queued_cost(raw: bytes) -> int:
    """The bytes of memory C{raw} takes while it waits in a link's queue."""
    return len(raw) + MESSAGE_OVERHEAD


#: The largest message L{write_now} tries to write at once.  The kernel may
#: take only part of a larger one, and the rest would have to be copied
#: (Twisted takes only bytes): a second copy of a 250 MB BLOB.
WRITE_NOW_LIMIT = 64 * 1024


def write_now(writer: Any, data: bytes) -> None:
    """
    Write C{data} to C{writer} at once if nothing is waiting there and it is
    small, and leave only what the kernel did not take to Twisted.

    A Twisted transport writes on the next reactor turn, after asking epoll
    to watch the descriptor and before asking it to stop: three system calls
    and a turn of the loop, which were a fifth of a new*Vector round trip
    (benchmarks/run.py, round_trip).  For a stream of messages, waiting is
    better: the turn writes many together.  A large message is left to
    Twisted whole, which sends it through views of it (it copies one only
    to join it to a short remainder of an earlier write); so is anything
    else (TLS, test transports).
    """
    if (
        len(data) <= WRITE_NOW_LIMIT
        and isinstance(writer, FileDescriptor)
        and not writer.dataBuffer
        and not writer._tempDataBuffer
        and writer.connected
        and not writer.disconnecting
    ):
        written = writer.writeSomeData(data)
        if isinstance(written, int) and written > 0:
            data = data[written:]
        # An error is left for Twisted to find on its next write.
    if data:
        writer.write(data)


#: Bytes a TCP transport hands the kernel per send.  Twisted's own limit
#: (C{FileDescriptor.SEND_LIMIT}, 128 KiB, for old Windows) makes a camera's
#: frame go out 128 KiB per reactor turn, behind whatever else that turn
#: does; Linux takes what fits in the socket and says how much.
SEND_SIZE = 1024 * 1024


def send_in_large_chunks(transport: Any) -> None:
    """
    Let C{transport}, if it is one of Twisted's own socket transports, give
    the kernel up to L{SEND_SIZE} bytes per send (a Twisted internal:
    tests/test_link.py checks that Twisted still honours it).
    """
    if isinstance(transport, FileDescriptor) and isinstance(
        getattr(transport, "SEND_LIMIT", None), int
    ):
        transport.SEND_LIMIT = SEND_SIZE


@implementer(IPushProducer)
class Link:
    """
    One peer of the router.

    Subclasses set L{kind}, give a L{label} for logs, and implement
    L{wire_error}, L{overflow} and L{close}; writing and pausing go to the
    link's C{transport}.

    @ivar router: the router this link is attached to, once attached.
    @ivar blob_policy: what C{enableBLOB} asked for on this link: a client's
        BLOB delivery, or a driver's BLOB snooping.
    @ivar interest: the devices a client has asked about, and so receives;
        every device for the other kinds.
    @ivar queued: bytes of memory taken by what waits in the link's queue
        for the peer to read (see L{queued_cost}).
    @ivar paused: the transport asked for no more data for now.
    @ivar trusted: a client link that may share devices (another server
        named by C{--peer} or the access file); other clients never own a
        device.
    @ivar claim: who a driver link speaks for across restarts (its
        service): the router keeps its devices reserved while it restarts.
    """

    log = Logger()
    kind = CLIENT
    label = "link"
    #: What one element from this peer may be: set per link kind.
    limits = Limits()
    #: A link kind may look at each incoming message before the router and
    #: return False to drop it (see L{indiserv.remote.RemoteProtocol}).
    screen: Callable[[Message], bool] | None = None

    #: At most this many bytes of one read are framed and routed in one
    #: reactor turn, and at most L{messages_per_turn} messages: the rest
    #: waits for the next turns, so one peer's flood cannot keep every
    #: other peer waiting.  A read that arrives meanwhile waits too, and
    #: the peer is not read again until both are done.
    bytes_per_turn = 16 * 1024
    messages_per_turn = 128

    router: Router | None = None
    trusted = False
    claim: object | None = None
    #: The connection or process the peer is on (set by Twisted).
    transport: Any = None

    def __init__(self, limits: Limits | None = None) -> None:
        if limits is not None:
            self.limits = limits
        self.blob_policy = BlobPolicy()
        self.interest = Interest(everything=self.kind != CLIENT)
        self.parser = Parser(self.limits)
        # Messages sent during the router's current batch, written together
        # when the batch ends (one transport call per link per input chunk).
        self._out: list[bytes] = []
        self.queued = 0
        self.paused = False
        self._queue: deque[bytes] = deque()
        # Evidence of progress: how often the transport caught up, that
        # count when the queue last passed half of max_queue, and since when
        # the queue has been over max_queue.
        self._drains = 0
        self._drains_at_half: int | None = None
        self._over_since: float | None = None
        # Input not routed yet: chunks, and the messages of the one being read.
        self._unread: deque[memoryview] = deque()
        self._reading: Iterator[Message | WireError] | None = None
        self._later: Any = None
        # Reading is paused: by the router, or while earlier input waits.
        self._held_by_router = False
        self._holding = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"

    # -- outbound ----------------------------------------------------------

    def send(self, message: Message) -> bool:
        """
        Deliver C{message} to this peer, exactly as it arrived.

        While the peer keeps up this is a plain write.  While it is behind,
        the message is queued, unless it is a video stream frame and the
        queue is over the router's C{max_stream}, or the queue would pass
        C{max_queue}: then L{overflow} decides.

        @return: whether the message was accepted.
        """
        raw = message.raw
        router = self.router
        if not self.paused and not self._queue:
            if router is not None and router.batching:
                if not self._out:
                    router.dirty.append(self)
                self._out.append(raw)
            else:
                self.write(raw)
            return True
        cost = queued_cost(raw)
        if router is not None:
            if message.stream and self.queued > router.max_stream:
                router.stream_skipped += 1
                return False
            if self.queued + cost > router.max_queue and not self._draining(cost, router):
                return self.overflow(message)
        self._queue.append(raw)
        self.queued += cost
        if (
            self._drains_at_half is None
            and router is not None
            and self.queued > router.max_queue // 2
        ):
            self._drains_at_half = self._drains
        return True

    def _draining(self, size: int, router: Router) -> bool:
        """
        Whether a peer over C{max_queue} is working through a burst: its
        transport caught up at least once since the queue passed half the
        limit, it has been over the limit for no more than C{burst_window}
        seconds, and it stays under twice the limit.  A peer that has not
        caught up since it fell that far behind is stuck, however recently
        it read (the kernel's socket buffers let a stuck peer look alive for
        the first few megabytes).
        """
        if self._drains_at_half is None or self._drains == self._drains_at_half:
            return False
        if self.queued + size > 2 * router.max_queue:
            return False
        now = router.clock.seconds()
        if self._over_since is None:
            self._over_since = now
        return now - self._over_since <= router.burst_window

    @property
    def drains(self) -> int:
        """How often the peer has caught up with what was written to it."""
        return self._drains

    @property
    def saturated(self) -> bool:
        """Whether this peer is so far behind that its sources should wait."""
        router = self.router
        return router is not None and self.queued > router.saturation

    @property
    def writer(self) -> Any:
        """What writes to the peer: the transport, unless a kind says otherwise."""
        return self.transport

    def write(self, data: bytes) -> None:
        """Put C{data} on the way to the peer."""
        writer = self.writer
        if writer is not None:
            writer.write(data)

    def write_sequence(self, chunks: list[bytes]) -> None:
        """Put several messages on the way to the peer at once."""
        writer = self.writer
        if writer is not None:
            writer.writeSequence(chunks)

    def flush(self) -> None:
        """Write what the router's batch sent to this link."""
        out = self._out
        if out:
            self._out = []
            writer = self.writer
            if len(out) == 1 and writer is not None:
                # A lone message is most often an answer someone waits for.
                write_now(writer, out[0])
            else:
                # Part of a stream: Twisted's next turn writes it together
                # with whatever else arrives by then.
                self.write_sequence(out)

    def overflow(self, message: Message) -> bool:
        """
        The queue would pass the limit and the peer is not catching up.

        @return: whether C{message} was accepted after all (normally not).
        """
        raise NotImplementedError

    # IPushProducer, as seen by our transport

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._drains += 1
        router = self.router
        queue = self._queue
        was_saturated = self.saturated
        while queue and not self.paused:
            raw = queue.popleft()
            self.queued -= queued_cost(raw)
            self.write(raw)
        if router is not None:
            if self.queued <= router.max_queue:
                self._over_since = None
            if self.queued <= router.max_queue // 2:
                self._drains_at_half = None
            if was_saturated and not self.saturated:
                router.link_drained(self)

    def stopProducing(self) -> None:
        self._queue.clear()
        self.queued = 0

    def hand_over_queue(self) -> None:
        """
        Give what waits in the queue to the transport, which writes it as
        the peer reads: the link is closing and will produce nothing more.
        """
        queue, self._queue = self._queue, deque()
        self.queued = 0
        if queue:
            self.write_sequence(list(queue))

    # -- inbound -------------------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading from the peer until L{resume_reading} (the router's backpressure)."""
        self._held_by_router = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Read from the peer again, unless its earlier input is still being routed."""
        self._held_by_router = False
        if self.transport is not None and not self._holding:
            self.transport.resumeProducing()

    def close(self) -> Deferred[None]:
        """End the link; the Deferred fires once it has ended."""
        raise NotImplementedError

    def bytes_received(self, data: bytes) -> None:
        """
        Frame C{data} and route its messages, a turn's worth at a time: each
        turn's messages are one batch.
        """
        if self.router is None:
            return
        if self.transport is None:
            # An in-process driver: its own code, called synchronously, and
            # nothing to pause.
            self.router.begin_batch()
            try:
                self._route_turn(self.parser.read(data), None)
            finally:
                self.router.end_batch()
            return
        if self._later is not None:
            # Still routing an earlier read: this one waits, and the peer is
            # not read again until both are done.
            self._unread.append(memoryview(data))
            if not self._holding:
                self._holding = True
                self.transport.pauseProducing()
            return
        if len(data) > self.bytes_per_turn:
            self._unread.append(memoryview(data))
            self._route_input()
            return
        # The usual read: framed whole, its messages routed this turn
        # unless there are too many of them.
        self.route_parsed(self.parser.read(data))

    def route_parsed(self, items: Iterator[Message | WireError]) -> None:
        """
        Route C{items}, the messages of one read being framed (also a
        client's first read, once it is admitted): a turn's worth now, the
        rest on the next turns.
        """
        router = self.router
        assert router is not None and self._later is None
        budget = self.messages_per_turn
        router.begin_batch()
        try:
            routed = self._route_turn(items, budget)
        finally:
            router.end_batch()
        if routed == budget and self.router is router:
            self._reading = items
            self._later = router.clock.callLater(0, self._route_more)

    def _route_input(self) -> None:
        """Route up to a turn's worth of input; leave the rest for the next turn."""
        self._later = None
        router = self.router
        if router is None:
            self._unread.clear()
            self._reading = None
            return
        budget = self.messages_per_turn
        room = self.bytes_per_turn
        router.begin_batch()
        try:
            while budget > 0 and self.router is router:
                if self._reading is None:
                    if not self._unread or room <= 0:
                        break
                    chunk = self._next_slice(room)
                    room -= len(chunk)
                    self._reading = self.parser.read(chunk)
                routed = self._route_turn(self._reading, budget)
                if routed < 0:
                    self._reading = None
                    self._unread.clear()
                    return
                if routed < budget:
                    self._reading = None
                budget -= routed
        finally:
            router.end_batch()
        if self.router is router and (self._reading is not None or self._unread):
            self._later = router.clock.callLater(0, self._route_more)

    def _route_more(self) -> None:
        self._route_input()
        if self._later is None and self._holding:
            self._holding = False
            if not self._held_by_router and self.router is not None:
                self.transport.resumeProducing()

    def _next_slice(self, size: int) -> memoryview:
        """The next C{size} bytes of input at most."""
        chunk = self._unread[0]
        if len(chunk) <= size:
            return self._unread.popleft()
        self._unread[0] = chunk[size:]
        return chunk[:size]

    def _route_turn(self, items: Iterator[Message | WireError], budget: int | None) -> int:
        """
        Route messages from C{items}: all of them, or C{budget} messages
        (then the caller goes on with C{items} later).

        @return: how many were routed, or -1 once the link is being closed.
        """
        router = self.router
        assert router is not None
        route = router.route
        screen = self.screen
        routed = 0
        for item in items:
            if isinstance(item, WireError):
                if not self.wire_error(item):
                    return -1
            elif screen is None or screen(item):
                route(item, self)
            routed += 1
            if routed == budget:
                break
        return routed

    def stop_reading_input(self) -> None:
        """Forget input not routed yet (the link is going away)."""
        if self._later is not None and self._later.active():
            self._later.cancel()
        self._later = None
        self._holding = False
        self._unread.clear()
        self._reading = None

    def wire_error(self, error: WireError) -> bool:
        """
        React to bad input from this peer.

        @return: C{True} to go on reading after the bad element (the parser
            has resynchronised), C{False} if the link is being closed.
        """
        raise NotImplementedError
