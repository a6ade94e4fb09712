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

    def start(send: Callable[[bytes], None]) -> None:
        """
        The server serves this driver from now on.  C{send(data)} routes
        INDI XML the driver writes (C{def*}, C{set*}, C{message},
        C{getProperties} to snoop ...), as an executable driver's stdout.
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

    Messages routed to the driver while the router is busy are handed over
    when its batch ends, so a driver that answers at once never re-enters
    the router in the middle of a delivery.
    """

    log = Logger()
    kind = DRIVER

    def __init__(self, driver: IInProcessDriver, limits: Limits | None = None):
        Link.__init__(self, limits)
        self.driver = driver
        self.name = getattr(driver, "name", None) or type(driver).__name__
        self.label = f"driver {self.name}"
        self._inbox: list[Message] = []

    def send(self, message: Message) -> bool:
        router = self.router
        if router is not None and router.batching:
            if not self._inbox:
                router.dirty.append(self)
            self._inbox.append(message)
        else:
            self._deliver(message)
        return True

    def flush(self) -> None:
        inbox, self._inbox = self._inbox, []
        for message in inbox:
            self._deliver(message)

    def _deliver(self, message: Message) -> None:
        try:
            self.driver.messageReceived(message)
        except Exception:
            self.log.failure(
                "{driver} failed to handle {tag}", driver=self.name, tag=message.tag
            )

    def wire_error(self, error: WireError) -> bool:
        self.log.warn(
            "dropped bad output of {driver}: {reason}", driver=self.name, reason=error.reason
        )
        return True

    def close(self) -> defer.Deferred[None]:
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
        self.driver.start(link.bytes_received)
        # Ask for its definitions, as for a driver program that starts.
        link.send(wire.get_properties())

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self.link is not None:
            self.link.close()
            self.link = None
        return defer.maybeDeferred(self.driver.stop).addCallback(lambda _: None)


# -- indipydriver ---------------------------------------------------------------


class WrongReactor(RuntimeError):
    """IPyDriver objects need Twisted's asyncio reactor and another one runs."""


def require_asyncio_reactor() -> None:
    """
    Raise L{WrongReactor}, saying what to do, unless the installed reactor
    (or the one that will be installed) is Twisted's asyncio reactor.
    """
    if "twisted.internet.reactor" not in sys.modules:
        return  # IndiServer.run() and asyncrun() install it
    from twisted.internet import asyncioreactor, reactor

    if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
        raise WrongReactor(
            "in-process IPyDriver drivers are asyncio code and need Twisted's"
            f" asyncio reactor, but {type(reactor).__name__} is installed: run"
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
    would be on its stdout, and what it is sent is parsed into the
    ElementTree elements it expects and handed over one at a time, in
    order.
    """

    log = Logger()

    #: Bytes of routed messages the driver may have waiting before more are
    #: dropped (a driver that stopped reading must not grow the server).
    max_waiting = 64 * 1024 * 1024

    def __init__(self, driver: Any):
        self.ipydriver = driver
        self.name = type(driver).__name__
        self._send: Callable[[bytes], None] | None = None
        self._waiting: asyncio.Queue[Any] | None = None
        self._waiting_bytes = 0
        self._task: asyncio.Future[None] | None = None
        driver._commsobj = self

    @property
    def devices(self) -> list[str]:
        """The names of the driver's devices."""
        return list(self.ipydriver)

    def start(self, send: Callable[[bytes], None]) -> None:
        require_asyncio_reactor()
        self._send = send
        self._waiting = asyncio.Queue()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        handing = asyncio.ensure_future(self._hand_over())
        try:
            await self.ipydriver.asyncrun()
        except Exception:
            self.log.failure("{driver} failed", driver=self.name)
        finally:
            handing.cancel()

    async def _hand_over(self) -> None:
        assert self._waiting is not None
        while True:
            size, element = await self._waiting.get()
            self._waiting_bytes -= size
            try:
                await self.ipydriver._readdata(element)
            except Exception:
                self.log.failure("{driver} failed to handle {tag}", driver=self.name, tag=element.tag)

    def messageReceived(self, message: Message) -> None:
        if self._waiting is None:
            return
        # IPyServer gives its drivers only getProperties of version 1.7.
        if message.tag == "getProperties" and message.attrs.get("version") != "1.7":
            return
        if self._waiting_bytes + len(message.raw) > self.max_waiting:
            self.log.warn(
                "{driver} is not keeping up; dropped {tag}", driver=self.name, tag=message.tag
            )
            return
        try:
            element = ElementTree.fromstring(message.raw)
        except ElementTree.ParseError as e:  # checked by our parser already
            self.log.warn("cannot give {tag} to {driver}: {error}", tag=message.tag,
                          driver=self.name, error=e)
            return
        self._waiting_bytes += len(message.raw)
        self._waiting.put_nowait((len(message.raw), element))

    def stop(self) -> defer.Deferred[None] | None:
        self.ipydriver.shutdown()
        if self._task is None:
            return None
        return defer.Deferred.fromFuture(self._task)

    # The communications hook of IPyDriver.

    async def run_tx(self, xmldata: ElementTree.Element) -> None:
        """The driver sends C{xmldata}."""
        if self._send is not None:
            self._send(ElementTree.tostring(xmldata) + b"\n")

    async def run_rx(self) -> None:
        """The driver's receiving side: L{messageReceived} does that."""

    def shutdown(self) -> None:
        """The driver shuts itself down; L{_run} sees its asyncrun end."""
