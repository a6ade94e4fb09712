"""
In-process drivers: devices served from inside the server's own process.

Two kinds share one link:

- any object providing L{IInProcessDriver}, the Twisted-native interface:
  the server hands it a C{send} callable for the INDI XML it writes and
  calls C{messageReceived} with each L{Message} routed to it.  Twisted
  programs publish their own devices this way, or watch all traffic (a
  driver that sends C{<getProperties version='1.7'/>} snoops every device);
- indipydriver's C{IPyDriver} objects, through L{IPyDriverAdapter}, which
  runs them on Twisted's asyncio reactor as IPyServer would.

What an in-process driver sends is framed and checked by the same parser
as an executable driver's output, so a faulty one is no more trusted.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from typing import Any, Callable
from xml.etree import ElementTree

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from indiserv import wire
from indiserv.link import DRIVER, Link
from indiserv.router import Router
from indiserv.wire import Limits, Message, WireError

__all__ = [
    "IInProcessDriver",
    "InProcessLink",
    "InProcessService",
    "IPyDriverAdapter",
    "WrongReactor",
    "is_ipydriver",
    "require_asyncio_reactor",
]


class IInProcessDriver(Interface):
    """A driver living in the server's process."""

    name = Attribute("A name for logs, like an executable driver's program name.")

    def start(send: Callable[[bytes], None]) -> defer.Deferred[None] | None:
        """
        The server serves this driver from now on.  C{send(data)} routes
        INDI XML the driver writes (C{def*}, C{set*}, C{message},
        C{getProperties} to snoop ...), as an executable driver's stdout.
        A returned Deferred fires if the driver ends by itself; the server
        then stops serving it (clients get C{delProperty}).
        """

    def messageReceived(message: Message) -> None:
        """
        A message routed to this driver: C{getProperties}, C{new*Vector}
        for its devices, C{enableBLOB}, or traffic it snoops.
        """

    def stop() -> defer.Deferred[None] | None:
        """The server stops serving this driver; a Deferred delays the stop."""


class InProcessLink(Link):
    """
    The router's side of an in-process driver.

    Messages are handed over one at a time, in order, never while another
    is being handed over, and those routed while the router is busy only
    when its batch ends: a driver that answers at once, or two in-process
    drivers that snoop each other, never re-enter a delivery.
    """

    log = Logger()
    kind = DRIVER

    def __init__(self, driver: IInProcessDriver, limits: Limits | None = None):
        Link.__init__(self, limits)
        self.driver = driver
        self.name = getattr(driver, "name", None) or type(driver).__name__
        self.label = f"driver {self.name}"
        self._inbox: deque[Message] = deque()
        self._delivering = False
        self._waiting_for_batch = False

    def send(self, message: Message) -> bool:
        self._inbox.append(message)
        router = self.router
        if router is not None and router.batching:
            if not self._waiting_for_batch:
                self._waiting_for_batch = True
                router.dirty.append(self)
        else:
            self._deliver_all()
        return True

    def flush(self) -> None:
        self._waiting_for_batch = False
        self._deliver_all()

    def _deliver_all(self) -> None:
        if self._delivering:
            return  # the delivery under way goes on to these
        self._delivering = True
        try:
            inbox = self._inbox
            while inbox:
                message = inbox.popleft()
                try:
                    self.driver.messageReceived(message)
                except Exception:
                    self.log.failure(
                        "{driver} failed to handle {tag}", driver=self.name, tag=message.tag
                    )
        finally:
            self._delivering = False

    def wire_error(self, error: WireError) -> bool:
        self.log.warn(
            "dropped bad output of {driver}: {reason}", driver=self.name, reason=error.reason
        )
        return True

    def close(self) -> defer.Deferred[None]:
        self._inbox.clear()
        if self.router is not None:
            self.router.remove_link(self)
        return defer.succeed(None)


class InProcessService(Service):
    """Serves one in-process driver for as long as the service runs."""

    log = Logger()

    def __init__(self, router: Router, driver: IInProcessDriver, limits: Limits | None = None):
        self.router = router
        self.driver = driver
        self.link: InProcessLink | None = None
        self.limits = limits

    def startService(self) -> None:
        super().startService()
        link = self.link = InProcessLink(self.driver, self.limits)
        self.router.add_link(link)
        ended = self.driver.start(link.bytes_received)
        if isinstance(ended, defer.Deferred):
            ended.addBoth(self._ended, link)
        # Ask for its definitions, as for a driver program that starts.
        link.send(wire.get_properties())

    def _ended(self, result: object, link: InProcessLink) -> None:
        """The driver ended by itself: its devices go, as a crashed program's do."""
        if link is self.link:
            self.log.warn("{driver} ended by itself; its devices are gone", driver=link.name)
            self.link = None
            link.close()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self.link is not None:
            self.link.close()
            self.link = None
        return defer.maybeDeferred(self.driver.stop).addCallback(lambda _: None)


# -- indipydriver ---------------------------------------------------------------


class WrongReactor(RuntimeError):
    """IPyDriver objects need Twisted's asyncio reactor and another one runs."""


def require_asyncio_reactor(installed_later: bool = True) -> None:
    """
    Raise L{WrongReactor}, saying what to do, unless the installed reactor
    is Twisted's asyncio reactor, or none is installed yet and
    C{installed_later} (IndiServer.run() and asyncrun() install it; twistd
    would install its default one).
    """
    from twisted.internet import asyncioreactor

    # The installed reactor, without installing the default one by asking.
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None and installed_later:
        return
    if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
        installed = "no reactor" if reactor is None else type(reactor).__name__
        raise WrongReactor(
            "in-process IPyDriver drivers are asyncio code and need Twisted's"
            f" asyncio reactor, but {installed} is installed: run"
            " twistd --reactor=asyncio ..., await IndiServer.asyncrun() inside"
            " asyncio.run(), or call twisted.internet.asyncioreactor.install()"
            " before anything imports twisted.internet.reactor"
        )


def is_ipydriver(driver: object) -> bool:
    """Whether C{driver} is an indipydriver C{IPyDriver}."""
    ipydriver = sys.modules.get("indipydriver")
    return ipydriver is not None and isinstance(driver, ipydriver.IPyDriver)


@implementer(IInProcessDriver)
class IPyDriverAdapter:
    """
    Serves an indipydriver C{IPyDriver} in process, as IPyServer does.

    The driver runs as an asyncio task on the reactor's event loop.  It
    talks to the server through its communications hook (C{_commsobj},
    the same one IPyServer uses): what it sends is serialised once, as it
    would be on its stdout; each message it is sent is handed to it in a
    task of its own, as IPyServer does, so a slow C{rxevent} holds up no
    other message.  When it asks for properties it also asks for their
    BLOBs (IPyServer passes BLOBs to drivers unasked).
    """

    log = Logger()

    #: Bytes of routed messages the driver may have in hand before more are
    #: dropped (a driver that stopped handling them must not grow the server).
    max_waiting = 16 * 1024 * 1024
    #: Seconds the driver gets to end after C{shutdown()} before its task is
    #: cancelled (an executable driver gets SIGKILL after as long).
    stop_timeout = 5.0

    def __init__(self, driver: Any):
        self.ipydriver = driver
        self.name = type(driver).__name__
        self._send: Callable[[bytes], None] | None = None
        self._waiting_bytes = 0
        self._dropping = False
        self._stopping = False
        self._task: asyncio.Future[None] | None = None
        driver._commsobj = self

    @property
    def devices(self) -> list[str]:
        """The names of the driver's devices."""
        return list(self.ipydriver)

    def start(self, send: Callable[[bytes], None]) -> defer.Deferred[None]:
        require_asyncio_reactor()
        self._send = send
        self._task = asyncio.ensure_future(self._run())
        return defer.Deferred.fromFuture(self._task)

    async def _run(self) -> None:
        if self._stopping:
            return  # stopped before it ever ran: asyncrun() would undo shutdown()
        try:
            await self.ipydriver.asyncrun()
        except asyncio.CancelledError:
            self.log.warn("{driver} did not end in time and was cancelled", driver=self.name)
        except Exception:
            self.log.failure("{driver} failed", driver=self.name)
        finally:
            self._send = None

    def messageReceived(self, message: Message) -> None:
        if self._send is None:
            return
        # IPyServer gives its drivers only getProperties of version 1.7.
        if message.tag == "getProperties" and message.attrs.get("version") != "1.7":
            return
        size = len(message.raw)
        if self._waiting_bytes + size > self.max_waiting:
            if not self._dropping:
                self._dropping = True
                self.log.warn(
                    "{driver} is not keeping up; messages to it are dropped until it does",
                    driver=self.name,
                )
            return
        self._dropping = False
        self._waiting_bytes += size
        asyncio.ensure_future(self._hand_over(message.raw, size))

    async def _hand_over(self, raw: bytes, size: int) -> None:
        try:
            # Parsed only now: an element tree is several times its text.
            await self.ipydriver._readdata(ElementTree.fromstring(raw))
        except Exception:
            self.log.failure("{driver} failed to handle a message", driver=self.name)
        finally:
            self._waiting_bytes -= size

    def stop(self) -> defer.Deferred[None] | None:
        self._stopping = True
        self.ipydriver.shutdown()
        task = self._task
        if task is None or task.done():
            return None
        timeout = asyncio.get_event_loop().call_later(self.stop_timeout, task.cancel)
        task.add_done_callback(lambda _: timeout.cancel())
        return defer.Deferred.fromFuture(asyncio.shield(task)).addErrback(lambda _: None)

    # The communications hook of IPyDriver.

    async def run_tx(self, xmldata: ElementTree.Element) -> None:
        """The driver sends C{xmldata}."""
        send = self._send
        if send is None:
            return
        send(ElementTree.tostring(xmldata) + b"\n")
        if xmldata.tag == "getProperties":
            # IPyServer hands a driver every BLOB of what it snoops; INDI
            # wants an enableBLOB, which indipydriver cannot send (with no
            # device, it covers every device the driver snoops).
            send(wire.enable_blob("Also", xmldata.get("device"), xmldata.get("name")).raw)

    async def run_rx(self) -> None:
        """The driver's receiving side: L{messageReceived} does that."""

    def shutdown(self) -> None:
        """The driver shuts itself down; L{_run} sees its asyncrun end."""
