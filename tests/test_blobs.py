"""
Tests for L{indiserv.blobs.BlobPolicy}: the Never/Also/Only table of a link.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from indiserv.blobs import ALSO, NEVER, ONLY, BlobPolicy, BlobPolicyFull
from indiserv.wire import Message

from .support import message_from

BLOB = message_from(
    b"<setBLOBVector device='CCD' name='CCD1'><oneBLOB name='CCD1' size='1'"
    b" format='.fits'>QQ==</oneBLOB></setBLOBVector>"
)
OTHER_BLOB = message_from(
    b"<setBLOBVector device='CCD' name='CCD2'><oneBLOB name='CCD2' size='1'"
    b" format='.fits'>QQ==</oneBLOB></setBLOBVector>"
)
BLOB_OF_OTHER_DEVICE = message_from(
    b"<setBLOBVector device='Cam' name='CCD1'><oneBLOB name='CCD1' size='1'"
    b" format='.fits'>QQ==</oneBLOB></setBLOBVector>"
)
EMPTY_BLOB = message_from(b"<setBLOBVector device='CCD' name='CCD1' state='Busy'></setBLOBVector>")
DEF_BLOB = message_from(
    b"<defBLOBVector device='CCD' name='CCD1' perm='ro' state='Idle'>"
    b"<defBLOB name='CCD1'/></defBLOBVector>"
)
NUMBER = message_from(
    b"<setNumberVector device='CCD' name='CCD_EXPOSURE'><oneNumber name='V'>1"
    b"</oneNumber></setNumberVector>"
)
DEVICE_MESSAGE = message_from(b"<message device='CCD' message='hi'/>")
SERVER_MESSAGE = message_from(b"<message message='hi'/>")

ALL = [BLOB, EMPTY_BLOB, DEF_BLOB, NUMBER, DEVICE_MESSAGE, SERVER_MESSAGE]


def delivered(policy: BlobPolicy, messages: list[Message] = ALL) -> list[Message]:
    return [m for m in messages if policy.allows(m)]


class BlobPolicyTests(SynchronousTestCase):
    def test_default_never(self) -> None:
        """A new link gets everything but BLOB data."""
        self.assertEqual(delivered(BlobPolicy()), [m for m in ALL if m is not BLOB])

    def test_also(self) -> None:
        """Also delivers BLOB data and everything else."""
        policy = BlobPolicy()
        policy.set(ALSO, "CCD")
        self.assertEqual(delivered(policy), ALL)

    def test_only(self) -> None:
        """Only delivers BLOB data and empty setBLOBVectors, nothing else of that device."""
        policy = BlobPolicy()
        policy.set(ONLY, "CCD")
        self.assertEqual(delivered(policy), [BLOB, EMPTY_BLOB, SERVER_MESSAGE])

    def test_device_scope(self) -> None:
        """A device-scoped enableBLOB leaves other devices alone (unlike indiserver)."""
        policy = BlobPolicy()
        policy.set(ALSO, "CCD")
        self.assertTrue(policy.allows(BLOB))
        self.assertFalse(policy.allows(BLOB_OF_OTHER_DEVICE))

    def test_property_scope(self) -> None:
        """A property-scoped enableBLOB affects that property only."""
        policy = BlobPolicy()
        policy.set(ALSO, "CCD", "CCD1")
        self.assertTrue(policy.allows(BLOB))
        self.assertFalse(policy.allows(OTHER_BLOB))

    def test_property_overrides_device(self) -> None:
        """The property entry wins over the device entry."""
        policy = BlobPolicy()
        policy.set(ALSO, "CCD")
        policy.set(NEVER, "CCD", "CCD1")
        self.assertFalse(policy.allows(BLOB))
        self.assertTrue(policy.allows(OTHER_BLOB))

    def test_device_resets_properties(self) -> None:
        """A later device-scoped enableBLOB replaces earlier property entries of that device."""
        policy = BlobPolicy()
        policy.set(NEVER, "CCD", "CCD1")
        policy.set(ALSO, "CCD")
        self.assertTrue(policy.allows(BLOB))

    def test_no_device_sets_default(self) -> None:
        """An enableBLOB without a device applies to every device."""
        policy = BlobPolicy()
        policy.set(ALSO)
        self.assertTrue(policy.allows(BLOB))
        self.assertTrue(policy.allows(BLOB_OF_OTHER_DEVICE))

    def test_unknown_value(self) -> None:
        """Values are case-sensitive; anything else is refused."""
        policy = BlobPolicy()
        self.assertRaises(ValueError, policy.set, "also", "CCD")
        self.assertFalse(policy.allows(BLOB))


class BoundedTableTests(SynchronousTestCase):
    """A link's BLOB table is bounded, and a device's entries are found without looking at others'."""

    def test_entries_limited(self) -> None:
        """Past max_entries devices and properties, a new entry is refused; existing ones still change."""
        policy = BlobPolicy()
        for n in range(policy.max_entries):
            policy.set(ALSO, f"d{n}", "p")
        self.assertRaises(BlobPolicyFull, policy.set, ALSO, "d0", "q")
        self.assertRaises(BlobPolicyFull, policy.set, ALSO, "other")
        policy.set(NEVER, "d0", "p")
        self.assertEqual(policy.policy("d0", "p"), NEVER)

    def test_device_entry_frees_its_properties(self) -> None:
        """A device-wide enableBLOB drops that device's property entries, making room for others."""
        policy = BlobPolicy()
        for n in range(policy.max_entries):
            policy.set(ALSO, "CCD", f"p{n}")
        policy.set(NEVER, "CCD")
        policy.set(ALSO, "Cam", "p")
        self.assertEqual(policy.policy("CCD", "p1"), NEVER)
        self.assertEqual(policy.policy("Cam", "p"), ALSO)

    def test_device_entry_leaves_other_devices(self) -> None:
        """A device-wide enableBLOB changes nothing of other devices' property entries."""
        policy = BlobPolicy()
        policy.set(ONLY, "Cam", "IMG")
        policy.set(NEVER, "CCD")
        self.assertEqual(policy.policy("Cam", "IMG"), ONLY)

    def test_default_empties_the_table(self) -> None:
        """A device-less enableBLOB replaces every entry, and the table can fill again."""
        policy = BlobPolicy()
        for n in range(policy.max_entries):
            policy.set(ALSO, f"d{n}")
        policy.set(NEVER)
        policy.set(ALSO, "CCD", "CCD1")
        self.assertTrue(policy.allows(BLOB))
        self.assertEqual(policy.policy("d1"), NEVER)
