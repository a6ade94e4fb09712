"""
Tests for L{indiserv.interest.Interest}: what a client receives, by what it
said, with indiserver's rules (C{ClInfo::onMessage}, C{findDevice},
C{addDevice}).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from indiserv.interest import Interest
from indiserv.wire import Message

from .support import message_from

GET_ALL = message_from(b"<getProperties version='1.7'/>")
GET_STAR = message_from(b"<getProperties version='1.7' device='*'/>")
GET_CCD = message_from(b"<getProperties version='1.7' device='CCD'/>")
GET_CCD_TEMPERATURE = message_from(b"<getProperties version='1.7' device='CCD' name='TEMPERATURE'/>")
GET_MOUNT = message_from(b"<getProperties version='1.7' device='Mount'/>")

CCD_TEMPERATURE = message_from(
    b"<setNumberVector device='CCD' name='TEMPERATURE'><oneNumber name='T'>1"
    b"</oneNumber></setNumberVector>"
)
CCD_EXPOSURE = message_from(
    b"<setNumberVector device='CCD' name='EXPOSURE'><oneNumber name='E'>1"
    b"</oneNumber></setNumberVector>"
)
MOUNT_COORDINATES = message_from(
    b"<setNumberVector device='Mount' name='EQ'><oneNumber name='RA'>1"
    b"</oneNumber></setNumberVector>"
)
MOUNT_PARK = message_from(
    b"<setSwitchVector device='Mount' name='PARK'><oneSwitch name='P'>On"
    b"</oneSwitch></setSwitchVector>"
)
CCD_MESSAGE = message_from(b"<message device='CCD' message='cooling'/>")
CCD_GONE = message_from(b"<delProperty device='CCD'/>")
CCD_TEMPERATURE_GONE = message_from(b"<delProperty device='CCD' name='TEMPERATURE'/>")
CCD_EXPOSURE_GONE = message_from(b"<delProperty device='CCD' name='EXPOSURE'/>")
NOTICE = message_from(b"<message message='server going down'/>")


class SmallInterest(Interest):
    max_entries = 3


def told(*messages: Message) -> Interest:
    interest = Interest()
    for message in messages:
        interest.hear(message)
    return interest


class InterestTests(SynchronousTestCase):
    def test_silent_client_hears_no_device(self) -> None:
        """A client that said nothing receives no device's traffic, only messages without a device."""
        interest = Interest()
        self.assertFalse(interest.wants(CCD_TEMPERATURE))
        self.assertFalse(interest.wants(CCD_GONE))
        self.assertTrue(interest.wants(NOTICE))

    def test_get_properties_without_device_opens_every_device(self) -> None:
        """A getProperties without a device opens every device."""
        interest = told(GET_ALL)
        self.assertTrue(interest.everything)
        self.assertFalse(interest.server)
        for message in (CCD_TEMPERATURE, MOUNT_COORDINATES, CCD_GONE, NOTICE):
            self.assertTrue(interest.wants(message))

    def test_device_scoped(self) -> None:
        """A getProperties for one device opens that device only, all its properties."""
        interest = told(GET_CCD)
        for message in (CCD_TEMPERATURE, CCD_EXPOSURE, CCD_MESSAGE, CCD_GONE):
            self.assertTrue(interest.wants(message))
        self.assertFalse(interest.wants(MOUNT_COORDINATES))

    def test_property_scoped(self) -> None:
        """A getProperties for one property opens that property only, not the device's messages."""
        interest = told(GET_CCD_TEMPERATURE)
        self.assertTrue(interest.wants(CCD_TEMPERATURE))
        self.assertTrue(interest.wants(CCD_TEMPERATURE_GONE))
        for message in (CCD_EXPOSURE, CCD_EXPOSURE_GONE, CCD_MESSAGE, MOUNT_COORDINATES):
            self.assertFalse(interest.wants(message))

    def test_whole_device_deleted_reaches_property_scoped(self) -> None:
        """A delProperty of the whole device reaches a client scoped to one of its properties (indiserver's does not)."""
        self.assertTrue(told(GET_CCD_TEMPERATURE).wants(CCD_GONE))

    def test_property_then_device(self) -> None:
        """A device-wide request after a property-scoped one opens the whole device."""
        interest = told(GET_CCD_TEMPERATURE, GET_CCD)
        self.assertTrue(interest.wants(CCD_EXPOSURE))
        self.assertTrue(interest.wants(CCD_MESSAGE))

    def test_get_all_after_a_device_opens_nothing_more(self) -> None:
        """A getProperties without a device after a device was named opens no other device (indiserver's order)."""
        interest = told(GET_CCD, GET_ALL)
        self.assertFalse(interest.everything)
        self.assertFalse(interest.wants(MOUNT_COORDINATES))
        self.assertTrue(interest.wants(CCD_EXPOSURE))

    def test_star_marks_a_server(self) -> None:
        """getProperties device='*' as the first word marks another server, which hears every device."""
        interest = told(GET_STAR)
        self.assertTrue(interest.server)
        self.assertTrue(interest.wants(MOUNT_COORDINATES))
        interest.hear(GET_ALL)
        self.assertTrue(interest.server)

    def test_star_after_a_device_is_a_device_name(self) -> None:
        """device='*' after a device was named is no more than a device called '*'."""
        interest = told(GET_MOUNT, GET_STAR)
        self.assertFalse(interest.server)
        self.assertFalse(interest.everything)
        self.assertFalse(interest.wants(CCD_EXPOSURE))

    def test_star_after_get_all_marks_a_server(self) -> None:
        """device='*' after a getProperties without a device still marks a server (no device was recorded)."""
        self.assertTrue(told(GET_ALL, GET_STAR).server)

    def test_any_message_naming_a_device_adds_it(self) -> None:
        """new*Vector and enableBLOB add the property they name."""
        interest = told(
            message_from(b"<newSwitchVector device='Mount' name='PARK'><oneSwitch name='P'>On</oneSwitch></newSwitchVector>"),
            message_from(b"<enableBLOB device='CCD' name='TEMPERATURE'>Only</enableBLOB>"),
        )
        self.assertTrue(interest.wants(MOUNT_PARK))
        self.assertFalse(interest.wants(MOUNT_COORDINATES))
        self.assertTrue(interest.wants(CCD_TEMPERATURE))
        self.assertFalse(interest.wants(CCD_EXPOSURE))

    def test_messages_without_device_add_nothing(self) -> None:
        """enableBLOB and pingRequest without a device open nothing."""
        interest = told(message_from(b"<enableBLOB>Also</enableBLOB>"), message_from(b"<pingRequest uid='1'/>"))
        self.assertFalse(interest.everything)
        self.assertFalse(interest.wants(CCD_EXPOSURE))

    def test_empty_device_is_no_device(self) -> None:
        """device='' counts as no device, as with indiserver."""
        interest = told(message_from(b"<getProperties version='1.7' device=''/>"))
        self.assertTrue(interest.everything)

    def test_bounded(self) -> None:
        """Past max_entries the client hears every device: the table stops growing, and nothing it asked for is lost."""
        interest = SmallInterest()
        results = [
            interest.hear(message_from(b"<getProperties version='1.7' device='D%d'/>" % number))
            for number in range(5)
        ]
        self.assertEqual(results, [True, True, True, False, True])
        self.assertTrue(interest.everything)
        self.assertTrue(interest.wants(MOUNT_COORDINATES))

    def test_repeats_take_no_room(self) -> None:
        """Asking again about a device, or about a property of a device already open, takes no entry."""
        interest = SmallInterest()
        for message in (GET_CCD, GET_CCD, GET_CCD_TEMPERATURE, CCD_MESSAGE, GET_MOUNT, GET_MOUNT):
            self.assertTrue(interest.hear(message))
        self.assertFalse(interest.everything)

    def test_other_kinds_hear_everything(self) -> None:
        """Interest(everything=True), what drivers and remote links have, wants every message."""
        self.assertTrue(Interest(everything=True).wants(MOUNT_COORDINATES))
