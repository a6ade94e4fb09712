"""
What a client has asked to hear about: its C{Interest}.

A client receives a device's traffic only once it has shown interest in
that device, as with indiserver (C{indiserver/ClInfo.cpp}: C{onMessage},
C{findDevice}, C{addDevice}, C{allprops}).  Every message a client sends that
names a device adds that device, or that device's property when it names
one; a C{getProperties} without a device opens every device, and one for
device C{*} marks another server (every device too), each only while
nothing was recorded before it, so that a server chained for one device
does not start receiving every other.  Traffic without a device reaches
every client.

One deliberate difference: a C{delProperty} of a whole device reaches the
clients that asked for one of its properties (indiserver leaves them holding
a property that no longer exists).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indiserv.wire import Message

__all__ = ["Interest"]


class Interest:
    """
    The devices and properties one client has asked about.

    Entries are kept per device, so recording and looking up cost the same
    however many there are; at most L{max_entries} are kept, past which the
    client hears every device (more than it asked for, never less).

    @ivar everything: the client hears every device.
    @ivar server: the client said it is another server (C{device="*"}).
    """

    __slots__ = ("everything", "server", "_devices", "_entries")

    #: Devices and properties recorded for one client, at most.
    max_entries = 1024

    def __init__(self, everything: bool = False) -> None:
        self.everything = everything
        self.server = False
        # device -> property names asked for (None: the whole device)
        self._devices: dict[str, set[str | None]] = {}
        self._entries = 0

    def hear(self, message: Message) -> bool:
        """
        Record the interest C{message}, sent by this client, shows.

        @return: C{False} if it overflowed the table (the client now hears
            every device), else C{True}.
        """
        device = message.device
        if device:
            if device[0] == "*" and not self._entries:
                self.everything = self.server = True
                return True
            return self._add(device, message.name or None)
        if message.tag == "getProperties" and not self._entries and not self.server:
            self.everything = True
        return True

    def _add(self, device: str, name: str | None) -> bool:
        if self.everything:
            return True
        names = self._devices.get(device)
        if names is not None and (None in names or name in names):
            return True
        if self._entries >= self.max_entries:
            self.everything = True
            return False
        self._entries += 1
        if names is None:
            self._devices[device] = {name}
        else:
            names.add(name)
        return True

    def wants(self, message: Message) -> bool:
        """Whether this client is to receive C{message}, device traffic."""
        if self.everything:
            return True
        device = message.device
        if not device:
            return True
        names = self._devices.get(device)
        if names is None:
            return False
        if None in names:
            return True
        name = message.name
        if not name:
            return message.tag == "delProperty"
        return name in names
