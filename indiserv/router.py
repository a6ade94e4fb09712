"""
The router: the one place that decides who receives each INDI message.

Links hand it messages; it keeps the few facts routing needs (which link
owns which device, who snoops what, each link's BLOB policy) and calls
C{send} on the receivers.  The table it implements is in docs/protocol.rst.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from indiserv import wire
from indiserv.blobs import BlobPolicyFull
from indiserv.link import CLIENT, DRIVER, REMOTE, Link
from indiserv.wire import Message

__all__ = ["Router", "KEEPALIVE_TEXT", "MiB"]

MiB = 1024 * 1024

KEEPALIVE_TEXT = "Keep alive message"
# How many getProperties hop marks are remembered for loop detection.
_HOPS_REMEMBERED = 4096

# The families of top-level tags, as routing sees them.
_DEVICE_TRAFFIC = "device traffic"
_COMMAND = "command"
_tag_family: dict[str, str] = {
    "getProperties": "getProperties",
    "enableBLOB": "enableBLOB",
    "pingRequest": "pingRequest",
    "pingReply": "pingReply",
    "message": _DEVICE_TRAFFIC,
    "delProperty": _DEVICE_TRAFFIC,
}
for _kind in ("Text", "Number", "Switch", "Light", "BLOB"):
    _tag_family[f"def{_kind}Vector"] = _DEVICE_TRAFFIC
    _tag_family[f"set{_kind}Vector"] = _DEVICE_TRAFFIC
    if _kind != "Light":
        _tag_family[f"new{_kind}Vector"] = _COMMAND


class Router(Service):
    """
    Routes messages between clients, drivers and remote servers.

    @ivar owners: device name to the link that first announced it.
    @ivar keepalive: seconds without traffic after which clients and
        remote links get a C{message}; 0 disables.  Set before starting.
    @ivar verbose: 0 quiet, 1 key events, 2 a line per message, 3 full XML.
    @ivar dropped: messages no rule of the table accepted.
    """

    log = Logger()
    name = "router"

    #: Bytes a peer may have waiting before it is cut off (or, for a
    #: driver, before commands to it are refused).
    max_queue = 128 * MiB
    #: Bytes behind after which a client skips video stream frames.
    max_stream = 5 * MiB
    #: Bytes behind at which a peer counts as saturated (at most half of
    #: max_queue): when every receiver of a driver's output is, the
    #: driver's output is paused.
    high_water = 16 * MiB
    #: Seconds a peer that is draining may stay over max_queue (up to
    #: twice it) before it counts as too slow.
    burst_window = 5.0
    #: Seconds a driver may be paused for its receivers.  A receiver that
    #: has not caught up once in that time no longer holds drivers back:
    #: what it is sent queues up to max_queue, where it is cut off.
    stall_limit = 5.0
    #: Devices one link may own, and devices (or properties) one driver
    #: may snoop: what a link can make the router remember is bounded.
    max_devices = 1024
    max_snoops = 1024
    #: delProperty messages sent per reactor turn when a link with many
    #: devices goes; the rest follow on the next turns.
    retire_per_turn = 64
    #: Called with each message of device traffic from a driver or another
    #: server, before it is routed (the per-day log of C{--log-dir}).
    message_log: Callable[[Message, Link], None] | None = None

    def __init__(
        self,
        clock: IReactorTime | None = None,
        keepalive: float = 30,
        verbose: int = 0,
    ):
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock = clock
        self.keepalive = keepalive
        self.verbose = verbose
        self.stream_skipped = 0
        #: Messages routed since the router was made.
        self.routed = 0
        #: Inside a batch (the messages of one chunk of input), links
        #: collect what they are sent and write it when the batch ends.
        self.batching = 0
        self.dirty: list[Link] = []
        # A paused source -> the timer that ends its pause, and how often
        # each of the receivers that were behind had caught up by then.
        self._paused_sources: dict[Link, tuple[Any, dict[Link, int]]] = {}
        # Receivers that let a paused driver wait for stall_limit without
        # catching up: they no longer count when deciding to pause one.
        self._stalled: set[Link] = set()
        # Snapshot of the clients for delivery loops, so a client cut off
        # in the middle of a delivery does not disturb the iteration; and
        # the same clients parted by interest: those that hear every
        # device, and those whose interest is checked message by message.
        self._receivers: tuple[Link, ...] = ()
        self._open: tuple[Link, ...] = ()
        self._scoped: tuple[Link, ...] = ()
        self.clients: dict[Link, None] = {}
        self.drivers: dict[Link, None] = {}
        self.remotes: dict[Link, None] = {}
        self.owners: dict[str, Link] = {}
        # link -> the devices it owns, in the order it announced them.
        self._owned: dict[Link, dict[str, None]] = {}
        # Devices of a driver that is restarting, kept for it (its claim)
        # until it is back or gives up.
        self._reserved: dict[str, object] = {}
        self._reservations: dict[object, set[str]] = {}
        # Devices gone whose delProperty is still to be sent, with who owned them.
        self._retiring: dict[str, Link] = {}
        self._retire_call: Any = None
        # link -> what it was told (or warned of) once, not at every
        # message: kinds of trouble, and its devices refused.
        self._told: dict[Link, set[object]] = {}
        #: Trusted clients that announced devices: other servers connected
        #: to us, sharing theirs.
        self.peers: dict[Link, None] = {}
        #: Clients that are other servers, trusted or not: peers, and those
        #: whose getProperties says so (indiserver's device="*", our hop
        #: mark).  Other servers' notices and command echoes never go to
        #: them: passed on between servers they could go round a loop.
        self.chained: dict[Link, None] = {}
        self._hop_ids = itertools.count(1)
        self._hop_prefix = uuid.uuid4().hex[:12]
        self._hops_seen: dict[str, None] = {}
        # device (None: every device) -> snooping link -> property names
        # (None among them: the whole device)
        self._snoops: dict[str | None, dict[Link, set[str | None]]] = {}
        # snooping link -> the devices (None: every device) it snoops.
        self._snooped: dict[Link, set[str | None]] = {}
        self._quiet = True
        self._keepalive_call: LoopingCall | None = None
        self.dropped = 0
        self._routes: dict[tuple[str, str], Callable[[Message, Link], None]] = {
            (CLIENT, "getProperties"): self._get_properties,
            (CLIENT, _COMMAND): self._client_command,
            (CLIENT, "enableBLOB"): self._client_enable_blob,
            (CLIENT, _DEVICE_TRAFFIC): self._client_traffic,
            (REMOTE, "getProperties"): self._get_properties,
            (REMOTE, _COMMAND): self._driver_command,
            (REMOTE, "enableBLOB"): self._client_enable_blob,
            (DRIVER, _DEVICE_TRAFFIC): self._device_traffic,
            (DRIVER, "getProperties"): self._driver_get_properties,
            (DRIVER, "enableBLOB"): self._driver_enable_blob,
            (DRIVER, _COMMAND): self._driver_command,
            (REMOTE, _DEVICE_TRAFFIC): self._device_traffic,
        }
        for kind in (CLIENT, DRIVER, REMOTE):
            self._routes[(kind, "pingRequest")] = self._ping
            self._routes[(kind, "pingReply")] = self._consume

    # -- service ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._quiet = True
        if self.keepalive and self.keepalive > 0:
            self._keepalive_call = LoopingCall(self._keepalive_tick)
            self._keepalive_call.clock = self.clock
            self._keepalive_call.start(self.keepalive, now=False).addErrback(
                lambda failure: self.log.failure("keepalive stopped", failure)
            )

    def stopService(self) -> None:
        super().stopService()
        if self._keepalive_call is not None and self._keepalive_call.running:
            self._keepalive_call.stop()
        self._keepalive_call = None
        while self._retiring:
            self._retire_some()
        for source in list(self._paused_sources):
            self._end_pause(source)

    def _keepalive_tick(self) -> None:
        if self._quiet:
            keepalive = wire.message(KEEPALIVE_TEXT)
            for link in (*self._receivers, *self.remotes):
                link.send(keepalive)
        self._quiet = True

    # -- links -----------------------------------------------------------

    def _registry(self, link: Link) -> dict[Link, None]:
        return {CLIENT: self.clients, DRIVER: self.drivers, REMOTE: self.remotes}[
            link.kind
        ]

    def add_link(self, link: Link) -> None:
        """Start routing to and from C{link}."""
        link.router = self
        self._registry(link)[link] = None
        self._sort_receivers()
        self.event("{link} attached", link=link.label)

    def remove_link(self, link: Link, reason: str | None = None) -> None:
        """
        Stop routing to and from C{link}; forget its devices and snoops.

        Clients are told, by C{delProperty}, of every device it owned (a few
        at a time when there are many), and then given C{reason} as a
        C{message} when there is one.  A driver's devices stay reserved for
        its L{Link.claim} until it is back, or until L{release}.
        """
        self._registry(link).pop(link, None)
        link.stop_reading_input()
        self.peers.pop(link, None)
        self.chained.pop(link, None)
        self._sort_receivers()
        self._told.pop(link, None)
        self._stalled.discard(link)
        if link in self._paused_sources:
            self._end_pause(link, resume=False)
        if link.saturated:
            self.link_drained(link)
        for device in self._snooped.pop(link, ()):
            snoopers = self._snoops.get(device)
            if snoopers is not None:
                snoopers.pop(link, None)
                if not snoopers:
                    del self._snoops[device]
        devices = self._owned.pop(link, {})
        claim = link.claim
        for device in devices:
            del self.owners[device]
            self._retiring[device] = link
            if claim is not None:
                self.reserve(device, claim)
        self._retire_some()
        if reason:
            self.send_message(reason)
        link.router = None
        self.event("{link} detached", link=link.label)

    def _sort_receivers(self) -> None:
        self._receivers = tuple(self.clients)
        self._open = tuple(c for c in self._receivers if c.interest.everything)
        self._scoped = tuple(c for c in self._receivers if not c.interest.everything)

    def devices_of(self, link: Link) -> list[str]:
        """The devices C{link} owns, in the order it announced them."""
        return list(self._owned.get(link, ()))

    def reserve(self, device: str, claim: object) -> None:
        """
        Keep C{device} for C{claim} (a driver's service) before its program
        has announced it: a driver started with a device name of its own.
        """
        if device not in self.owners and device not in self._reserved:
            self._reserved[device] = claim
            self._reservations.setdefault(claim, set()).add(device)

    def release(self, claim: object) -> None:
        """A driver that was restarting is not coming back: free its devices."""
        for device in self._reservations.pop(claim, ()):
            if self._reserved.get(device) is claim:
                del self._reserved[device]

    def _retire_some(self) -> None:
        """Send the next delProperty messages of devices that went."""
        retiring = self._retiring
        for _ in range(min(self.retire_per_turn, len(retiring))):
            self._retire(next(iter(retiring)))
        if retiring and self._retire_call is None:
            self._retire_call = self.clock.callLater(0, self._retire_later)
        elif not retiring and self._retire_call is not None:
            self._retire_call.cancel()
            self._retire_call = None

    def _retire_later(self) -> None:
        self._retire_call = None
        self._retire_some()

    def _retire(self, device: str) -> None:
        source = self._retiring.pop(device)
        self._deliver(wire.del_property(device), source)

    @property
    def saturation(self) -> int:
        """
        Bytes behind at which a peer is saturated: well before the cut-off,
        so that a driver is held back while its receivers can catch up.
        """
        return min(self.high_water, self.max_queue // 2)

    def begin_batch(self) -> None:
        """Collect sends until the matching L{end_batch}."""
        self.batching += 1

    def end_batch(self) -> None:
        """Write what each link was sent since the outermost L{begin_batch}."""
        self.batching -= 1
        if not self.batching:
            dirty, self.dirty = self.dirty, []
            for link in dirty:
                link.flush()

    def link_drained(self, link: Link) -> None:
        """
        C{link} is no longer saturated: let paused drivers talk again (any
        whose receivers are all still saturated pauses at its next message).
        """
        self._stalled.discard(link)
        for source in list(self._paused_sources):
            self._end_pause(source)

    def _pause(self, source: Link, behind: list[Link]) -> None:
        """Stop reading C{source} for a while: every receiver of its output is C{behind}."""
        self.log.info(
            "pausing {source}: every receiver of its output is behind",
            source=source.label,
        )
        timer = self.clock.callLater(self.stall_limit, self._pause_expired, source)
        self._paused_sources[source] = (timer, {link: link.drains for link in behind})
        source.pause_reading()

    def _end_pause(self, source: Link, resume: bool = True) -> None:
        timer, _ = self._paused_sources.pop(source)
        if timer.active():
            timer.cancel()
        if resume:
            source.resume_reading()

    def _pause_expired(self, source: Link) -> None:
        """
        C{source} waited C{stall_limit} seconds: receivers that did not catch
        up once meanwhile are stuck, and hold nobody back from now on.
        """
        _, behind = self._paused_sources[source]
        for link, drains in behind.items():
            if link.router is self and link.drains == drains and link.saturated:
                self._stalled.add(link)
                self.log.warn(
                    "{link} has read nothing for {seconds} s while {queued} bytes"
                    " behind; it no longer holds drivers back, and is cut off"
                    " past --max-queue",
                    link=link.label,
                    seconds=self.stall_limit,
                    queued=link.queued,
                )
        self._end_pause(source)

    def event(self, format: str, **fields: object) -> None:
        """Log a key event (connections, drivers, devices) at verbosity 1 and up."""
        if self.verbose >= 1:
            self.log.info(format, **fields)

    # -- routing ---------------------------------------------------------

    def route(self, message: Message, source: Link) -> None:
        """Decide who receives C{message}, which arrived from C{source}."""
        self._quiet = False
        self.routed += 1
        if self.verbose >= 2:
            self._trace(message, source)
        kind = source.kind
        if kind == CLIENT:
            self._hear(message, source)
        family = _tag_family.get(message.tag, message.tag)
        handler = self._routes.get((kind, family))
        if handler is None:
            self.dropped += 1
            self.log.debug(
                "dropped {tag} from {source}: no route",
                tag=message.tag,
                source=source.label,
            )
            return
        handler(message, source)

    def _hear(self, message: Message, source: Link) -> None:
        """Record the interest a client's message shows, before routing it."""
        interest = source.interest
        everything = interest.everything
        if not interest.hear(message):
            self.log.warn(
                "{source} asked about more than {limit} devices and properties;"
                " it now receives every device's traffic",
                source=source.label,
                limit=interest.max_entries,
            )
        if interest.everything != everything and source in self.clients:
            self._sort_receivers()

    def _trace(self, message: Message, source: Link) -> None:
        # BLOB data is summed up even at -vvv: a camera's frames copied
        # into the log would drown it (indiserver leaves them out too).
        if self.verbose >= 3 and not message.blob:
            self.log.info(
                "{source}: {xml}",
                source=source.label,
                xml=message.raw.decode("utf-8", "replace").strip(),
            )
        else:
            self.log.info(
                "{source}: {summary}", source=source.label, summary=message.summary()
            )

    def _consume(self, message: Message, source: Link) -> None:
        """Messages meant for the server itself and nobody else."""

    def _ping(self, message: Message, source: Link) -> None:
        # libindi drivers hold back their next BLOB until this answer comes.
        source.send(wire.ping_reply(message.attrs.get("uid", "")))

    def _servers(self) -> Iterable[Link]:
        """The other servers we are linked to, either way round."""
        return (*self.remotes, *self.peers)

    def _from_server(self, source: Link) -> bool:
        return source.kind == REMOTE or source in self.peers

    def _get_properties(self, message: Message, source: Link) -> None:
        """A client's, or another server's, request for definitions."""
        hop = message.attrs.get(wire.HOP)
        if source.kind == CLIENT and source not in self.chained and (
            hop is not None or message.device == "*"
        ):
            self.chained[source] = None
            self.event("{link} is another server", link=source.label)
        if hop is not None and (source.kind == REMOTE or source in self.chained):
            if hop in self._hops_seen:
                self.log.debug("dropped a getProperties that came round a loop")
                return
            self._saw_hop(hop)
        device = message.device
        owner = self.owners.get(device) if device and device != "*" else None
        if owner is not None:
            if owner is not source:
                self._ask(owner, message)
            return
        for link in (*self.drivers, *self._servers()):
            if link is not source:
                self._ask(link, message)

    def _ask(self, link: Link, message: Message) -> None:
        """Pass a getProperties on; between servers it carries a hop mark."""
        if link.kind != DRIVER and wire.HOP not in message.attrs:
            hop = f"{self._hop_prefix}-{next(self._hop_ids)}"
            self._saw_hop(hop)
            message = wire.get_properties(
                message.device if message.device != "*" else None,
                message.name,
                message.attrs.get("version", "1.7"),
                hop,
            )
        link.send(message)

    def _saw_hop(self, hop: str) -> None:
        seen = self._hops_seen
        seen[hop] = None
        if len(seen) > _HOPS_REMEMBERED:
            del seen[next(iter(seen))]

    def _client_command(self, message: Message, source: Link) -> None:
        owner = self.owners.get(message.device)  # type: ignore[arg-type]
        if owner is not None:
            if not owner.send(message):
                source.send(
                    wire.message(
                        f"{owner.label} is not reading its commands:"
                        f" {message.tag} {message.name} was dropped",
                        device=message.device,
                    )
                )
                return
        elif self.remotes:
            for remote in self.remotes:
                remote.send(message)
        else:
            self.dropped += 1
            self.log.debug(
                "dropped {summary} from {source}: no such device",
                summary=message.summary(),
                source=source.label,
            )
            return
        # Other clients learn what was asked, as with indiserver (not other
        # servers: for them it would be a second command).
        for client in self._receivers:
            if (
                client is not source
                and client not in self.chained
                and client.interest.wants(message)
                and client.blob_policy.allows(message)
            ):
                client.send(message)

    def _client_enable_blob(self, message: Message, source: Link) -> None:
        try:
            source.blob_policy.set(message.text, message.device, message.name)
        except BlobPolicyFull as e:
            self.dropped += 1
            if self._first_time(source, "BLOB table full"):
                self.log.warn(
                    "ignoring enableBLOB from {source}: {why}", source=source.label, why=e
                )
        except ValueError:
            self.log.debug(
                "ignored enableBLOB {text!r} from {source}",
                text=message.text,
                source=source.label,
            )

    def _driver_command(self, message: Message, source: Link) -> None:
        owner = self.owners.get(message.device)  # type: ignore[arg-type]
        if owner is not None and owner is not source:
            owner.send(message)
        else:
            self.dropped += 1

    def _driver_get_properties(self, message: Message, source: Link) -> None:
        device = message.device if message.device != "*" else None
        snooped = self._snooped.setdefault(source, set())
        if device not in snooped and len(snooped) >= self.max_snoops:
            self.dropped += 1
            self.log.warn(
                "{link} snoops more than {limit} devices; ignored its"
                " getProperties for {device}",
                link=source.label,
                limit=self.max_snoops,
                device=device,
            )
            return
        names = self._snoops.setdefault(device, {}).setdefault(source, set())
        if message.name not in names and len(names) >= self.max_snoops:
            self.dropped += 1
            return
        snooped.add(device)
        names.add(message.name)
        self.event(
            "{link} snoops {device}.{name}",
            link=source.label,
            device=device or "*",
            name=message.name or "*",
        )
        owner = self.owners.get(device) if device else None
        if owner is not None:
            if owner is not source:
                self._ask(owner, message)
            return
        # A local driver of a device not seen yet will announce it anyway
        # when it starts; only another server might already have it (even
        # one not trusted to share devices: what it says of devices nobody
        # here serves may still feed snoopers, as with indiserver).
        servers = (*self.remotes, *self.chained)
        receivers = servers if device else (*self.drivers, *servers)
        for link in receivers:
            if link is not source:
                self._ask(link, message)

    def _driver_enable_blob(self, message: Message, source: Link) -> None:
        if source not in self._snoops.get(
            message.device, ()
        ) and source not in self._snoops.get(None, ()):
            self.log.debug(
                "ignored enableBLOB from {source}: it does not snoop {device}",
                source=source.label,
                device=message.device,
            )
            return
        self._client_enable_blob(message, source)

    def _client_traffic(self, message: Message, source: Link) -> None:
        """
        Device traffic from a client.  A trusted one is another server sharing
        its devices.  Any other never owns a device and never reaches other
        clients, as with indiserver; what it says of a device that no
        driver, remote or peer serves (or keeps for a restart) may still
        reach drivers that snoop that device (a chained indiserver passes
        snooped devices down this way).
        """
        if source.trusted:
            if source not in self.peers:
                self.peers[source] = None
                self.chained[source] = None
                self.event("{link} is a server sharing its devices", link=source.label)
            return self._device_traffic(message, source)
        device = message.device
        if device is None:
            why = "a message without a device goes to no one"
        elif device in self.owners or device in self._reserved:
            why = f"device {device} is served by this server"
        else:
            # Only drivers snoop (a driver's getProperties registers it).
            snoopers = self._snoopers(message)
            for snooper in snoopers:
                if snooper.blob_policy.allows(message):
                    snooper.send(message)
            if snoopers:
                return
            why = f"no driver here snoops device {device}"
        self._refuse(message, source, why)

    def _refuse(self, message: Message, source: Link, why: str) -> None:
        """Drop device traffic from a client; tell it why, the first time."""
        self.dropped += 1
        self.log.debug(
            "dropped {summary} from {source}: {why}",
            summary=message.summary(),
            source=source.label,
            why=why,
        )
        if not self._first_time(source, "device traffic"):
            return
        self.log.info(
            "{source} sends device traffic ({summary}); only drivers, remote"
            " servers and --peer servers own devices here, so it is dropped ({why})",
            source=source.label,
            summary=message.summary(),
            why=why,
        )
        if source in self.chained:
            # Another server would show the notice to its own clients, who
            # sent nothing: the log here says it.
            return
        source.send(
            wire.message(
                f"This server takes device definitions and updates only from its"
                f" drivers and from servers named with --peer: your {message.tag}"
                f" was dropped ({why}), and so will be the rest"
            )
        )

    def _device_traffic(self, message: Message, source: Link) -> None:
        device = message.device
        if device is not None:
            owner = self.owners.get(device)
            if owner is None:
                if not self._claim(device, message, source):
                    return
            elif owner is not source:
                return self._clash(device, owner, source)
        if self.message_log is not None and source.kind != CLIENT:
            self.message_log(message, source)
        if device is None and self._from_server(source):
            # Another server's own notices are for our clients only: passed
            # on between servers they could go round a loop for ever.
            for client in self._receivers:
                if client not in self.chained:
                    client.send(message)
            return
        self._deliver(message, source)

    def _claim(self, device: str, message: Message, source: Link) -> bool:
        """
        Whether C{source} may speak for C{device}, which nobody owns: a
        C{delProperty} needs no owner; anything else makes C{source} its
        owner, unless the device is kept for a restarting driver or
        C{source} owns as many devices as it may.
        """
        reserved = self._reserved.get(device)
        if reserved is not None and reserved is not source.claim:
            self._clash(device, None, source)
            return False
        if device in self._retiring:
            # Clients hear of the old device going before of the new one.
            self._retire(device)
        if message.tag == "delProperty":
            return True
        owned = self._owned.setdefault(source, {})
        if len(owned) >= self.max_devices:
            self.dropped += 1
            if self._first_time(source, ("refused", device)):
                self.log.error(
                    "{link} announces more than {limit} devices; {device} is ignored",
                    link=source.label,
                    limit=self.max_devices,
                    device=device,
                )
            return False
        if reserved is not None:
            del self._reserved[device]
            self._reservations[reserved].discard(device)
        owned[device] = None
        self.owners[device] = source
        self.event("{link} owns device {device}", link=source.label, device=device)
        return True

    def _first_time(self, link: Link, what: object) -> bool:
        """
        Whether C{link} is told of C{what} for the first time (at most
        C{max_devices} things are remembered per link).
        """
        told = self._told.setdefault(link, set())
        if what in told or len(told) >= self.max_devices:
            return False
        told.add(what)
        return True

    def _deliver(self, message: Message, source: Link) -> None:
        """
        Send device traffic to clients and snoopers, each as they asked; if
        every receiver is saturated, pause the source.

        The receivers are the clients interested in the device (see
        L{indiserv.interest}), the servers up the tree and the snoopers.
        Every one of them counts, whether or not its BLOB policy takes this
        message: a client that stopped reading its camera's frames must not
        hold back the camera's other clients.
        """
        high_water = self.saturation
        candidates = saturated = 0
        stalled = self._stalled
        # Clients; then up the tree, the servers we link to; then snoopers.
        snoopers = self._snoopers(message) if self._snoops else ()
        clients = self._open
        if self._scoped:
            clients = (*clients, *(c for c in self._scoped if c.interest.wants(message)))
        for link in itertools.chain(clients, self.remotes, snoopers):
            if link is source:
                continue
            if link.blob_policy.allows(message):
                link.send(message)
            if stalled and link in stalled:
                continue
            candidates += 1
            saturated += link.queued > high_water
        if (
            saturated
            and saturated == candidates
            and source.router is self
            and source not in self._paused_sources
        ):
            behind = [
                link
                for link in itertools.chain(clients, self.remotes, snoopers)
                if link is not source and link.queued > high_water
            ]
            self._pause(source, behind)

    def _snoopers(self, message: Message) -> list[Link]:
        found = []
        name = message.name
        for device in (message.device, None):
            for snooper, names in self._snoops.get(device, {}).items():
                if None in names or name in names or name is None:
                    if snooper not in found:
                        found.append(snooper)
        return found

    def _clash(self, device: str, owner: Link | None, source: Link) -> None:
        """
        The same device from two links (a loop or a name clash), or one kept
        for a restarting driver: logged once, and clients told without
        naming either link (a peer's label is its address).
        """
        self.dropped += 1
        if not self._first_time(source, ("refused", device)):
            return
        self.log.error(
            "device {device} from {source} is already served by {owner};"
            " its messages are dropped",
            device=device,
            source=source.label,
            owner=owner.label if owner is not None else "a driver that is restarting",
        )
        built = wire.message(
            f"Device {device} is announced twice; the second copy is ignored",
            device=device,
        )
        for client in self._receivers:
            if client not in self.chained and client.interest.wants(built):
                client.send(built)

    # -- messages from the server ---------------------------------------

    def send_message(self, text: str, timestamp: datetime | None = None) -> None:
        """Send a server C{message} to every client."""
        built = wire.message(text, when=timestamp)
        for client in self._receivers:
            client.send(built)
