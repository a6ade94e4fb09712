"""
A device published by a Twisted program, in process: a thermometer whose
reading is sent to clients every few seconds.  Its messages come from the
builders of L{indiserv.wire}.  Run it as a server of its own with::

    python docs/examples/thermometer.py          # port 7624
"""

from __future__ import annotations

import random
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from indiserv import IndiServer, wire
from indiserv.inprocess import IInProcessDriver

log = Logger()

DEVICE = "Garden Thermometer"
PROPERTY = "TEMPERATURE"


@implementer(IInProcessDriver)
class Thermometer:
    """Defines TEMPERATURE when asked and sends each new reading."""

    name = "thermometer"

    def __init__(
        self,
        read: Callable[[], float] = lambda: random.uniform(-5.0, 25.0),
        every: float = 5.0,
        clock: IReactorTime | None = None,
    ):
        self.read = read
        self.celsius = read()
        self._reading = LoopingCall(self._update)
        if clock is not None:
            self._reading.clock = clock
        self._every = every
        self._send: Callable[[bytes], None] = lambda data: None

    def start(self, send: Callable[[bytes], None]) -> None:
        self._send = send
        self._reading.start(self._every, now=False)

    def messageReceived(self, message: wire.Message) -> None:
        if (
            message.tag == "getProperties"
            and message.device in (None, DEVICE)
            and message.name in (None, PROPERTY)
        ):
            self._send(wire.def_vector(
                "Number", DEVICE, PROPERTY, self._value(),
                {PROPERTY: {"label": "Temperature (C)", "format": "%6.2f",
                            "min": "-50", "max": "60", "step": "0"}},
                label="Temperature", group="Main", state="Ok", perm="ro",
            ).raw)

    def stop(self) -> None:
        if self._reading.running:
            self._reading.stop()

    def _value(self) -> dict[str, str]:
        return {PROPERTY: f"{self.celsius:.2f}"}

    def _update(self) -> None:
        try:
            self.celsius = self.read()
        except Exception:
            # Logged, and tried again next time: an error raised out of a
            # LoopingCall would stop it for good.
            log.failure("reading the thermometer failed")
            return
        self._send(wire.set_vector("Number", DEVICE, PROPERTY, self._value(), state="Ok").raw)


if __name__ == "__main__":
    IndiServer(Thermometer(), port=7624).run()
