"""
Per-link BLOB policies: what C{enableBLOB} asked for, by device and property.

A client (or a snooping driver) says C{Never}, C{Also} or C{Only} for a
device or for one property of it.  Unlike indiserver, a device-scoped
C{enableBLOB} affects that device only; one without a device sets the default
for every device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indiserv.wire import Message

__all__ = ["BlobPolicy", "BlobPolicyFull", "NEVER", "ALSO", "ONLY", "POLICIES"]

NEVER = "Never"
ALSO = "Also"
ONLY = "Only"
POLICIES = frozenset((NEVER, ALSO, ONLY))


class BlobPolicyFull(Exception):
    """An C{enableBLOB} would grow a link's table past its limit."""


class BlobPolicy:
    """
    The C{enableBLOB} table of one link.

    The most specific entry wins: property, then device, then the default
    set by a device-less C{enableBLOB}, then C{Never}.  Entries are kept
    per device, so every change and lookup costs the same however large
    the table, and the table holds at most L{max_entries} of them.
    """

    __slots__ = ("default", "_devices", "_properties", "_entries")

    #: Devices and properties with a policy of their own, at most: a peer
    #: cannot make the table, or the server's memory, grow without end.
    max_entries = 1024

    def __init__(self) -> None:
        self.default = NEVER
        self._devices: dict[str, str] = {}
        # device -> property name -> policy
        self._properties: dict[str, dict[str, str]] = {}
        self._entries = 0

    def set(self, policy: str, device: str | None = None, name: str | None = None) -> None:
        """
        Record C{policy} for a property, a device or (no device) every device.

        @raise ValueError: C{policy} is not C{Never}, C{Also} or C{Only}
            (INDI values are case-sensitive).
        @raise BlobPolicyFull: the table holds L{max_entries} already.
        """
        if policy not in POLICIES:
            raise ValueError(f"unknown BLOB policy {policy!r}")
        if device is None:
            self.default = policy
            self._devices = {}
            self._properties = {}
            self._entries = 0
        elif name is None:
            dropped = self._properties.pop(device, {})
            self._entries -= len(dropped)
            if device not in self._devices:
                self._make_room()
            self._devices[device] = policy
        else:
            names = self._properties.get(device)
            if names is None or name not in names:
                self._make_room()
                names = self._properties.setdefault(device, {})
            names[name] = policy

    def _make_room(self) -> None:
        if self._entries >= self.max_entries:
            raise BlobPolicyFull(
                f"more than {self.max_entries} devices and properties with a BLOB policy"
            )
        self._entries += 1

    def policy(self, device: str | None, name: str | None = None) -> str:
        """The policy that applies to C{device}, or to its property C{name}."""
        if name is not None and self._properties:
            names = self._properties.get(device)  # type: ignore[arg-type]
            if names is not None:
                found = names.get(name)
                if found is not None:
                    return found
        if device is not None and self._devices:
            return self._devices.get(device, self.default)
        return self.default

    def allows(self, message: Message) -> bool:
        """
        Whether C{message} may be delivered under this policy.

        BLOB data goes only under C{Also} and C{Only}; under C{Only} nothing
        else of that scope goes, except a C{setBLOBVector} without data
        (a state change of the BLOB property itself).
        """
        if message.blob:
            return self.policy(message.device, message.name) != NEVER
        if message.device is None:
            return True
        if self.default == NEVER and not self._devices and not self._properties:
            return True
        if self.policy(message.device, message.name) != ONLY:
            return True
        return message.tag == "setBLOBVector"
