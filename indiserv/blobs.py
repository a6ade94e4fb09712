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

__all__ = ["BlobPolicy", "NEVER", "ALSO", "ONLY", "POLICIES"]

NEVER = "Never"
ALSO = "Also"
ONLY = "Only"
POLICIES = frozenset((NEVER, ALSO, ONLY))


class BlobPolicy:
    """
    The C{enableBLOB} table of one link.

    The most specific entry wins: property, then device, then the default
    set by a device-less C{enableBLOB}, then C{Never}.
    """

    __slots__ = ("default", "_devices", "_properties")

    def __init__(self) -> None:
        self.default = NEVER
        self._devices: dict[str, str] = {}
        self._properties: dict[tuple[str, str], str] = {}

    def set(self, policy: str, device: str | None = None, name: str | None = None) -> None:
        """
        Record C{policy} for a property, a device or (no device) every device.

        @raise ValueError: C{policy} is not C{Never}, C{Also} or C{Only}
            (INDI values are case-sensitive).
        """
        if policy not in POLICIES:
            raise ValueError(f"unknown BLOB policy {policy!r}")
        if device is None:
            self.default = policy
            self._devices.clear()
            self._properties.clear()
        elif name is None:
            self._devices[device] = policy
            for key in [key for key in self._properties if key[0] == device]:
                del self._properties[key]
        else:
            self._properties[(device, name)] = policy

    def policy(self, device: str | None, name: str | None = None) -> str:
        """The policy that applies to C{device}, or to its property C{name}."""
        if name is not None and self._properties:
            found = self._properties.get((device, name))  # type: ignore[arg-type]
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
