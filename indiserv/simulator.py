"""
A small INDI driver that simulates one device, for trying the server out.

It lets anybody run C{indiserver} and connect a client without owning any
hardware, and gives the tests a real driver process to supervise: it speaks
INDI 1.7 on standard input and output like any other driver, logs to
standard error, and exits with status 0 when its input ends or on SIGTERM.

The device itself, L{Simulator}, is an in-process driver
(L{indiserv.inprocess.IInProcessDriver}), so a server can also serve it in
its own process: C{IndiServer(Simulator())}.  As a program it is a plain
blocking loop over L{indiserv.wire} with no Twisted, because that is how
most drivers are written and a driver must not depend on the server's
event loop.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from typing import Callable
from xml.etree import ElementTree

from zope.interface import implementer

from indiserv import wire
from indiserv.inprocess import IInProcessDriver

DEVICE = "indiserv Simulator"
MAIN = "Main Control"

# What only a definition carries, by property: its kind and the attributes
# of its def*Vector.  Lights have no perm or timeout in the 1.7 DTD.
_PROPERTIES: dict[str, tuple[str, dict[str, str]]] = {
    "CONNECTION": (
        "Switch",
        {"label": "Connection", "group": MAIN, "perm": "rw",
         "rule": "OneOfMany", "timeout": "0"},
    ),
    "TEMPERATURE": (
        "Number",
        {"label": "Temperature", "group": MAIN, "perm": "rw", "timeout": "0"},
    ),
    "SITE_NAME": (
        "Text",
        {"label": "Site", "group": MAIN, "perm": "rw", "timeout": "0"},
    ),
    "STATUS": ("Light", {"label": "Status", "group": MAIN}),
    "IMAGE": (
        "BLOB",
        {"label": "Image", "group": "Image", "perm": "ro", "timeout": "0"},
    ),
    "EXPOSE": (
        "Switch",
        {"label": "Expose", "group": MAIN, "perm": "rw",
         "rule": "AtMostOne", "timeout": "0"},
    ),
}

def _switch(on: bool) -> str:
    return "On" if on else "Off"


@implementer(IInProcessDriver)
class Simulator:
    """
    The simulated device: its property values and its answers to clients.

    @ivar connected: whether a client has connected the device.
    @ivar exposures: how many images it has produced, so each one differs.
    """

    name = "indiserv-simulator"

    def __init__(self) -> None:
        self._write: Callable[[bytes], None] = lambda data: None
        self.connected = False
        self.temperature = 20.0
        self.site_name = "Backyard"
        self.exposures = 0
        self.states = dict.fromkeys(_PROPERTIES, "Idle")
        self._handlers = {
            ("newSwitchVector", "CONNECTION"): self._connection,
            ("newSwitchVector", "EXPOSE"): self._expose,
            ("newNumberVector", "TEMPERATURE"): self._temperature,
            ("newTextVector", "SITE_NAME"): self._site_name,
        }

    def start(self, send: Callable[[bytes], None]) -> None:
        """Write what the device says with C{send} from now on."""
        self._write = send

    def stop(self) -> None:
        """Nothing to let go of: the device is only memory."""

    def messageReceived(self, message: wire.Message) -> None:
        """Answer one message from the server; ignore what is not for us."""
        if message.tag == "pingRequest":
            self._write(wire.ping_reply(message.attrs.get("uid", "")).raw)
        elif message.tag == "getProperties":
            if message.device not in (None, DEVICE):
                return
            for name in _PROPERTIES:
                if message.name in (None, name):
                    self._send(self._vector("def", name))
        elif message.device == DEVICE:
            handler = self._handlers.get((message.tag, message.name or ""))
            if handler is not None:
                element = ElementTree.fromstring(message.raw)
                handler({one.get("name"): (one.text or "").strip() for one in element})

    def _send(self, message: wire.Message) -> None:
        self._write(message.raw)

    def _members(self, name: str) -> list[tuple[str, dict[str, str], str | None]]:
        """The members of property C{name}: name, definition attributes, value."""
        if name == "CONNECTION":
            return [
                ("CONNECT", {"label": "Connect"}, _switch(self.connected)),
                ("DISCONNECT", {"label": "Disconnect"}, _switch(not self.connected)),
            ]
        if name == "TEMPERATURE":
            limits = {"label": "Temperature (C)", "format": "%6.2f",
                      "min": "-50", "max": "50", "step": "0.1"}
            return [("TEMPERATURE", limits, repr(self.temperature))]
        if name == "SITE_NAME":
            return [("NAME", {"label": "Name"}, self.site_name)]
        if name == "STATUS":
            return [("READY", {"label": "Ready"}, "Ok" if self.connected else "Idle")]
        if name == "IMAGE":
            return [("IMAGE", {"label": "Image"}, None)]
        return [("EXPOSE", {"label": "Expose"}, "Off")]

    def _vector(self, verb: str, name: str, message: str | None = None) -> wire.Message:
        """A C{def} or C{set} vector of property C{name} as it stands now."""
        kind, definition = _PROPERTIES[name]
        members = self._members(name)
        values = {member: value for member, _, value in members}
        attrs = {"state": self.states[name], "message": message}
        if verb == "def":
            extras = {member: extra for member, extra, _ in members}
            return wire.def_vector(kind, DEVICE, name, values, extras, **definition, **attrs)
        return wire.set_vector(kind, DEVICE, name, values, **attrs)  # type: ignore[arg-type]

    def _connection(self, values: dict[str, str]) -> None:
        """Connect or disconnect, then show the new state on STATUS too."""
        if values.get("CONNECT") == "On":
            self.connected = True
        elif values.get("DISCONNECT") == "On" or values.get("CONNECT") == "Off":
            self.connected = False
        self.states["CONNECTION"] = "Ok"
        self.states["STATUS"] = "Ok" if self.connected else "Idle"
        self._send(self._vector("set", "CONNECTION"))
        self._send(self._vector("set", "STATUS"))

    def _expose(self, values: dict[str, str]) -> None:
        """Take a (tiny, textual) image, which needs a connected device."""
        if values.get("EXPOSE") != "On":
            self.states["EXPOSE"] = "Ok"
            self._send(self._vector("set", "EXPOSE"))
            return
        if not self.connected:
            self.states["EXPOSE"] = "Alert"
            self._send(self._vector("set", "EXPOSE", "cannot expose: not connected"))
            return
        self.exposures += 1
        image = f"indiserv simulator image {self.exposures}\n".encode("ascii")
        self.states["IMAGE"] = self.states["EXPOSE"] = "Ok"
        self._send(wire.set_blob_vector(DEVICE, "IMAGE", {"IMAGE": (image, ".txt")}, state="Ok"))
        self._send(self._vector("set", "EXPOSE"))

    def _temperature(self, values: dict[str, str]) -> None:
        """Set the temperature, refusing what is not a number in range."""
        try:
            value = float(values["TEMPERATURE"])
        except (KeyError, ValueError):
            problem = "TEMPERATURE must be a number"
        else:
            problem = None
            if not (math.isfinite(value) and -50 <= value <= 50):
                problem = f"TEMPERATURE {value:g} is outside -50 to 50"
        if problem is None:
            self.temperature = value
        self.states["TEMPERATURE"] = "Ok" if problem is None else "Alert"
        self._send(self._vector("set", "TEMPERATURE", problem))

    def _site_name(self, values: dict[str, str]) -> None:
        """Remember the site name a client gave."""
        self.site_name = values.get("NAME", self.site_name)
        self.states["SITE_NAME"] = "Ok"
        self._send(self._vector("set", "SITE_NAME"))


def _log(text: str) -> None:
    """A line on stderr, which the server copies into its own log."""
    sys.stderr.write(f"indiserv-simulator: {text}\n")
    sys.stderr.flush()


def _frame(parser: wire.Parser, data: bytes) -> list[wire.Message]:
    """Every message in C{data}, logging and skipping input that is not INDI."""
    messages: list[wire.Message] = []
    for item in parser.read(data):
        if isinstance(item, wire.WireError):
            _log(f"bad input from server: {item.reason}")
        else:
            messages.append(item)
    return messages


def _terminate(signum: int, frame: object) -> None:
    """Leave as cleanly on SIGTERM (the server stopping us) as on end of input."""
    raise SystemExit(0)


def main() -> int:
    """Serve the simulated device on stdin and stdout until input ends."""
    signal.signal(signal.SIGTERM, _terminate)
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    simulator = Simulator()
    simulator.start(write)
    parser = wire.Parser()
    _log(f"serving device {DEVICE}")
    try:
        while True:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            for message in _frame(parser, chunk):
                simulator.messageReceived(message)
    except BrokenPipeError:
        # The server went away; silence the flush Python retries at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        # Leaving already: a SIGTERM now (the server stopping us after our
        # input ended) must not raise inside the interpreter's shutdown.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 0


if __name__ == "__main__":
    sys.exit(main())
