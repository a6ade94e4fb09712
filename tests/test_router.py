"""
Tests for L{indiserv.router.Router}: docs/protocol.rst's routing table, row by row.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from indiserv.interest import Interest
from indiserv.link import CLIENT, DRIVER
from indiserv.router import KEEPALIVE_TEXT, Router

from .support import GET_ALL, RecordingLink

TELESCOPE_DEF = (
    b"<defNumberVector device='Telescope' name='EQ' perm='rw' state='Idle'>"
    b"<defNumber name='RA'>1</defNumber></defNumberVector>"
)
TELESCOPE_SET = (
    b"<setNumberVector device='Telescope' name='EQ'><oneNumber name='RA'>2"
    b"</oneNumber></setNumberVector>"
)
TELESCOPE_OTHER_SET = (
    b"<setNumberVector device='Telescope' name='TIME'><oneNumber name='T'>2"
    b"</oneNumber></setNumberVector>"
)
CCD_DEF = (
    b"<defBLOBVector device='CCD' name='CCD1' perm='ro' state='Idle'>"
    b"<defBLOB name='CCD1'/></defBLOBVector>"
)
CCD_BLOB = (
    b"<setBLOBVector device='CCD' name='CCD1'><oneBLOB name='CCD1' size='1'"
    b" format='.fits'>QQ==</oneBLOB></setBLOBVector>"
)

NEW_EQ = (
    b"<newNumberVector device='Telescope' name='EQ'><oneNumber name='RA'>3"
    b"</oneNumber></newNumberVector>"
)


class RouterTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.router = Router(clock=self.clock)
        self.telescope = self.attach(DRIVER, "driver telescope")
        self.ccd = self.attach(DRIVER, "driver ccd")
        self.alice = self.attach(CLIENT, "client alice")
        self.bob = self.attach(CLIENT, "client bob")
        # Both clients ask for every device (interest routing has its own tests).
        self.alice.say(GET_ALL)
        self.bob.say(GET_ALL)
        self.telescope.say(TELESCOPE_DEF)
        self.ccd.say(CCD_DEF)
        for link in (self.telescope, self.ccd, self.alice, self.bob):
            link.take()

    def attach(self, kind: str, label: str) -> RecordingLink:
        link = RecordingLink(kind, label)
        self.router.add_link(link)
        return link


class ClientRowsTests(RouterTestCase):
    def test_get_properties_fans_out(self) -> None:
        """A client's getProperties without a device reaches every driver."""
        self.alice.say(b"<getProperties version='1.7'/>")
        self.assertEqual(self.telescope.tags(), ["getProperties"])
        self.assertEqual(self.ccd.tags(), ["getProperties"])
        self.assertEqual(self.bob.tags(), [])

    def test_get_properties_star_fans_out(self) -> None:
        """getProperties device='*' (a chained indiserver) is treated as all devices."""
        self.alice.say(b"<getProperties version='1.7' device='*'/>")
        self.assertEqual(self.telescope.tags(), ["getProperties"])
        self.assertEqual(self.ccd.tags(), ["getProperties"])

    def test_get_properties_for_known_device(self) -> None:
        """getProperties for a known device reaches its owner only."""
        self.alice.say(b"<getProperties version='1.7' device='CCD' name='CCD1'/>")
        self.assertEqual(self.ccd.tags(), ["getProperties"])
        self.assertEqual(self.telescope.tags(), [])

    def test_get_properties_for_unknown_device(self) -> None:
        """getProperties for a device nobody announced yet reaches every driver."""
        self.alice.say(b"<getProperties version='1.7' device='Focuser'/>")
        self.assertEqual(self.telescope.tags(), ["getProperties"])
        self.assertEqual(self.ccd.tags(), ["getProperties"])

    def test_new_vector_to_owner_and_echoed(self) -> None:
        """new*Vector goes to the device's owner and is echoed to other clients, not the sender."""
        self.alice.say(NEW_EQ)
        self.assertEqual([m.raw for m in self.telescope.received], [NEW_EQ])
        self.assertEqual(self.ccd.tags(), [])
        self.assertEqual([m.raw for m in self.bob.received], [NEW_EQ])
        self.assertEqual(self.alice.tags(), [])

    def test_new_vector_unknown_device_dropped(self) -> None:
        """new*Vector for an unknown device is dropped and counted."""
        self.alice.say(
            b"<newSwitchVector device='Nope' name='X'><oneSwitch name='A'>On"
            b"</oneSwitch></newSwitchVector>"
        )
        self.assertEqual(self.telescope.tags() + self.ccd.tags() + self.bob.tags(), [])
        self.assertEqual(self.router.dropped, 1)

    def test_enable_blob_consumed(self) -> None:
        """enableBLOB updates the client's policy and goes nowhere."""
        self.alice.say(b"<enableBLOB device='CCD'>Also</enableBLOB>")
        self.assertEqual(self.alice.blob_policy.policy("CCD"), "Also")
        self.assertEqual(self.ccd.tags() + self.telescope.tags() + self.bob.tags(), [])

    def test_enable_blob_bad_value_ignored(self) -> None:
        """An enableBLOB with an unknown value leaves the policy as it was."""
        self.alice.say(b"<enableBLOB device='CCD'>always</enableBLOB>")
        self.assertEqual(self.alice.blob_policy.policy("CCD"), "Never")

    def test_ping_answered(self) -> None:
        """pingRequest is answered by the server with the same uid and never forwarded."""
        self.alice.say(b"<pingRequest uid='42'/>")
        self.assertEqual(self.alice.tags(), ["pingReply"])
        self.assertEqual(self.alice.received[0].attrs["uid"], "42")
        self.assertEqual(self.telescope.tags() + self.ccd.tags() + self.bob.tags(), [])

    def test_client_announcing_devices_is_a_peer(self) -> None:
        """A trusted client that announces a device is another server: it owns the device and is asked for definitions."""
        self.alice.trusted = True
        self.alice.say(b"<defSwitchVector device='Far Cam' name='C'><defSwitch name='A'>On</defSwitch></defSwitchVector>")
        self.assertIs(self.router.owners["Far Cam"], self.alice)
        self.assertIn(self.alice, self.router.peers)
        self.assertEqual(self.bob.tags(), ["defSwitchVector"])
        self.assertEqual(self.alice.tags(), [])
        self.bob.say(b"<getProperties version='1.7'/>")
        (asked,) = self.alice.take()
        self.assertEqual(asked.tag, "getProperties")
        self.assertIn("indiservHop", asked.attrs)

    def test_peer_gets_commands_once(self) -> None:
        """A command for a peer's device reaches the peer once, not also as an echo."""
        self.alice.trusted = True
        self.alice.say(b"<defSwitchVector device='Far Cam' name='C'><defSwitch name='A'>On</defSwitch></defSwitchVector>")
        self.bob.take()
        command = b"<newSwitchVector device='Far Cam' name='C'><oneSwitch name='A'>Off</oneSwitch></newSwitchVector>"
        self.bob.say(command)
        self.assertEqual([m.raw for m in self.alice.received], [command])

    def test_peer_notices_stay_local(self) -> None:
        """A device-less message from another server reaches plain clients only."""
        self.alice.trusted = True
        self.alice.say(b"<defSwitchVector device='Far Cam' name='C'><defSwitch name='A'>On</defSwitch></defSwitchVector>")
        carol = self.attach(CLIENT, "client carol")
        carol.trusted = True
        carol.say(b"<defTextVector device='Other' name='T'><defText name='A'/></defTextVector>")
        for link in (self.alice, self.bob, carol):
            link.take()
        self.alice.say(b"<message message='driver X stopped'/>")
        self.assertEqual(self.bob.tags(), ["message"])
        self.assertEqual(carol.tags(), [])

    def test_looping_get_properties_dropped(self) -> None:
        """A getProperties that comes back with a hop mark this server issued goes no further."""
        self.alice.trusted = True
        self.alice.say(b"<defSwitchVector device='Far Cam' name='C'><defSwitch name='A'>On</defSwitch></defSwitchVector>")
        self.bob.say(b"<getProperties version='1.7'/>")
        (asked,) = self.alice.take()
        self.telescope.take()
        self.ccd.take()
        self.alice.say(asked.raw)
        self.assertEqual(self.telescope.tags() + self.ccd.tags(), [])

    def test_unknown_tag_dropped(self) -> None:
        """A tag outside the table is dropped and counted."""
        self.alice.say(b"<frobnicate device='CCD'/>")
        self.assertEqual(self.router.dropped, 1)
        self.assertEqual(self.ccd.tags(), [])


class DriverRowsTests(RouterTestCase):
    def test_device_traffic_to_clients(self) -> None:
        """def*/set*/message/delProperty from a driver reach every client."""
        for raw in (
            TELESCOPE_SET,
            b"<message device='Telescope' message='slewing'/>",
            b"<delProperty device='Telescope' name='EQ'/>",
        ):
            self.telescope.say(raw)
        for client in (self.alice, self.bob):
            self.assertEqual(
                client.tags(), ["setNumberVector", "message", "delProperty"]
            )
        self.assertEqual(self.ccd.tags(), [])

    def test_bytes_forwarded_unchanged(self) -> None:
        """Clients receive exactly the bytes the driver wrote."""
        self.telescope.say(b"<?xml version='1.0'?>\n" + TELESCOPE_SET)
        self.assertEqual(self.alice.received[0].raw, TELESCOPE_SET)

    def test_owner_learned(self) -> None:
        """The first link to announce a device becomes its owner."""
        self.assertIs(self.router.owners["Telescope"], self.telescope)
        self.assertIs(self.router.owners["CCD"], self.ccd)

    def test_blob_policy_per_client(self) -> None:
        """BLOB data reaches only clients that enabled BLOBs for that device."""
        self.alice.say(b"<enableBLOB device='CCD'>Also</enableBLOB>")
        self.ccd.say(CCD_BLOB)
        self.assertEqual(self.alice.tags(), ["setBLOBVector"])
        self.assertEqual(self.bob.tags(), [])

    def test_blob_only_withholds_the_rest(self) -> None:
        """A client with Only gets that device's BLOBs and nothing else of it."""
        self.alice.say(b"<enableBLOB device='CCD'>Only</enableBLOB>")
        self.ccd.say(b"<message device='CCD' message='exposing'/>")
        self.ccd.say(CCD_BLOB)
        self.telescope.say(TELESCOPE_SET)
        self.assertEqual(self.alice.tags(), ["setBLOBVector", "setNumberVector"])

    def test_duplicate_device_guard(self) -> None:
        """A second link announcing an owned device is ignored, logged, and clients told once."""
        intruder = self.attach(DRIVER, "driver intruder")
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        intruder.say(TELESCOPE_SET)
        intruder.say(TELESCOPE_SET)
        for client in (self.alice, self.bob):
            self.assertEqual(client.tags(), ["message"])
            self.assertIn("Telescope", client.received[0].attrs["message"])
        self.assertIs(self.router.owners["Telescope"], self.telescope)
        errors = [e for e in logged if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)

    def test_clash_notice_names_no_link(self) -> None:
        """The clash notice clients get names the device, not the links (a peer's label is its address)."""
        peer = self.attach(CLIENT, "client 192.0.2.7:40000")
        peer.trusted = True
        peer.say(TELESCOPE_SET)
        (notice,) = self.bob.take()
        self.assertEqual(notice.device, "Telescope")
        self.assertNotIn("192.0.2.7", notice.attrs["message"])
        self.assertNotIn("driver telescope", notice.attrs["message"])

    def test_driver_ping_answered(self) -> None:
        """A driver's pingRequest (sent after each BLOB) is answered at once."""
        self.ccd.say(b"<pingRequest uid='SetBLOB/1'/>")
        self.assertEqual(self.ccd.tags(), ["pingReply"])
        self.assertEqual(self.alice.tags(), [])

    def test_driver_new_vector_to_owner(self) -> None:
        """A driver's new*Vector for another device reaches that device's owner only."""
        self.ccd.say(NEW_EQ)
        self.assertEqual(self.telescope.tags(), ["newNumberVector"])
        self.assertEqual(self.alice.tags(), [])

    def test_driver_exit(self) -> None:
        """When a driver goes, clients get delProperty for its devices and a message; ownership ends."""
        self.router.remove_link(self.telescope, "Driver telescope stopped")
        self.assertEqual(self.alice.tags(), ["delProperty", "message"])
        self.assertEqual(self.alice.received[0].device, "Telescope")
        self.assertNotIn("Telescope", self.router.owners)

    def test_client_leaving_sends_nothing(self) -> None:
        """A client that leaves causes no traffic."""
        self.router.remove_link(self.alice)
        self.assertEqual(self.bob.tags() + self.telescope.tags() + self.ccd.tags(), [])


class SnoopTests(RouterTestCase):
    def test_snoop_registers_and_asks_owner(self) -> None:
        """A driver's getProperties registers a snoop and reaches the device's owner."""
        self.ccd.say(b"<getProperties version='1.7' device='Telescope' name='EQ'/>")
        self.assertEqual(self.telescope.tags(), ["getProperties"])
        self.assertEqual(self.alice.tags(), [])

    def test_snooper_gets_its_property_only(self) -> None:
        """A property snoop delivers that property's traffic and nothing else."""
        self.ccd.say(b"<getProperties version='1.7' device='Telescope' name='EQ'/>")
        self.telescope.say(TELESCOPE_SET)
        self.telescope.say(TELESCOPE_OTHER_SET)
        self.assertEqual([m.name for m in self.ccd.received], ["EQ"])

    def test_device_snoop(self) -> None:
        """A device snoop delivers every property of the device and its messages."""
        self.ccd.say(b"<getProperties version='1.7' device='Telescope'/>")
        self.telescope.say(TELESCOPE_SET)
        self.telescope.say(TELESCOPE_OTHER_SET)
        self.telescope.say(b"<message device='Telescope' message='hi'/>")
        self.assertEqual(
            self.ccd.tags(), ["setNumberVector", "setNumberVector", "message"]
        )

    def test_no_snoop_no_traffic(self) -> None:
        """A driver receives nothing of devices it did not snoop."""
        self.telescope.say(TELESCOPE_SET)
        self.assertEqual(self.ccd.tags(), [])

    def test_blob_snoop_needs_enable_blob(self) -> None:
        """A snooper gets BLOBs only after enableBLOB for that scope."""
        self.telescope.say(b"<getProperties version='1.7' device='CCD'/>")
        self.telescope.take()
        self.ccd.say(CCD_BLOB)
        self.assertEqual(self.telescope.tags(), [])
        self.telescope.say(b"<enableBLOB device='CCD'>Also</enableBLOB>")
        self.ccd.say(CCD_BLOB)
        self.assertEqual(self.telescope.tags(), ["setBLOBVector"])

    def test_enable_blob_without_snoop_ignored(self) -> None:
        """A driver's enableBLOB for a device it does not snoop changes nothing."""
        self.telescope.say(b"<enableBLOB device='CCD'>Also</enableBLOB>")
        self.ccd.say(CCD_BLOB)
        self.assertEqual(self.telescope.tags(), [])

    def test_snoops_forgotten_when_driver_goes(self) -> None:
        """A removed driver's snoops are dropped with it."""
        self.ccd.say(b"<getProperties version='1.7' device='Telescope'/>")
        self.router.remove_link(self.ccd)
        self.telescope.say(TELESCOPE_SET)
        self.assertEqual(self.ccd.tags(), [])


class InterestRoutingTests(RouterTestCase):
    """A client receives a device's traffic only once it has asked about that device."""

    def setUp(self) -> None:
        super().setUp()
        self.carol = self.attach(CLIENT, "client carol")

    def test_silent_client_gets_no_device_traffic(self) -> None:
        """A client that said nothing gets no definitions, updates or deletions, only the server's own notices."""
        self.telescope.say(TELESCOPE_DEF + TELESCOPE_SET + b"<message device='Telescope' message='slewing'/>")
        self.router.remove_link(self.ccd)
        self.assertEqual(self.carol.tags(), [])
        self.router.send_message("Dome closing")
        self.assertEqual([m.attrs["message"] for m in self.carol.take()], ["Dome closing"])
        self.telescope.say(b"<message message='no device'/>")
        self.assertEqual(self.carol.tags(), ["message"])

    def test_device_scoped_client(self) -> None:
        """A client that asked for one device gets that device's traffic only, its deletion included."""
        self.carol.say(b"<getProperties version='1.7' device='CCD'/>")
        self.telescope.say(TELESCOPE_SET)
        self.ccd.say(CCD_DEF)
        self.router.remove_link(self.telescope)
        self.router.remove_link(self.ccd)
        self.assertEqual(
            [(m.tag, m.device) for m in self.carol.received],
            [("defBLOBVector", "CCD"), ("delProperty", "CCD")],
        )

    def test_property_scoped_client(self) -> None:
        """A client that asked for one property gets that property's updates, not the device's others."""
        self.carol.say(b"<getProperties version='1.7' device='Telescope' name='EQ'/>")
        self.telescope.say(TELESCOPE_OTHER_SET + TELESCOPE_SET)
        self.assertEqual([m.raw for m in self.carol.received], [TELESCOPE_SET])

    def test_one_connection_per_device(self) -> None:
        """Clients that each asked for one device (PHD2's way) get no traffic of the other's device."""
        dave = self.attach(CLIENT, "client dave")
        self.carol.say(b"<getProperties version='1.7' device='Telescope'/>")
        dave.say(b"<getProperties version='1.7' device='CCD'/>")
        self.telescope.say(TELESCOPE_SET)
        self.ccd.say(CCD_DEF)
        self.assertEqual({m.device for m in self.carol.received}, {"Telescope"})
        self.assertEqual({m.device for m in dave.received}, {"CCD"})

    def test_echo_only_to_interested_clients(self) -> None:
        """A client's new*Vector is echoed only to the clients that asked about its device."""
        self.carol.say(b"<getProperties version='1.7' device='CCD'/>")
        self.alice.say(NEW_EQ)
        self.assertEqual([m.raw for m in self.bob.received], [NEW_EQ])
        self.assertEqual(self.carol.tags(), [])

    def test_blob_only_client_gets_only_blobs(self) -> None:
        """A client whose one word was enableBLOB Only for a device gets that device's BLOBs and nothing else."""
        self.carol.say(b"<enableBLOB device='CCD'>Only</enableBLOB>")
        self.telescope.say(TELESCOPE_DEF + TELESCOPE_SET)
        self.ccd.say(CCD_DEF + b"<message device='CCD' message='exposing'/>" + CCD_BLOB)
        self.assertEqual([m.raw for m in self.carol.received], [CCD_BLOB])

    def test_clash_notice_to_interested_clients(self) -> None:
        """The notice of a device announced twice goes to the clients that asked about that device."""
        self.carol.say(b"<getProperties version='1.7' device='CCD'/>")
        self.ccd.say(TELESCOPE_DEF)
        self.assertEqual(self.carol.tags(), [])
        self.assertEqual(self.alice.tags(), ["message"])

    def test_interest_table_full(self) -> None:
        """A client that names more devices than the table holds hears every device, and the server logs it."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        class Small(Interest):
            max_entries = 2

        self.carol.interest = Small()
        for device in (b"A", b"B", b"C"):
            self.carol.say(b"<getProperties version='1.7' device='" + device + b"'/>")
        self.telescope.say(TELESCOPE_SET)
        self.assertEqual([m.raw for m in self.carol.received], [TELESCOPE_SET])
        self.assertEqual(
            [formatEvent(e) for e in logged if "now receives every device" in formatEvent(e)],
            ["client carol asked about more than 2 devices and properties;"
             " it now receives every device's traffic"],
        )


class KeepaliveTests(RouterTestCase):
    def test_keepalive_after_silence(self) -> None:
        """After keepalive seconds without traffic every client gets a keepalive message."""
        self.router.startService()
        self.addCleanup(self.router.stopService)
        self.clock.advance(30)
        for client in (self.alice, self.bob):
            self.assertEqual(client.tags(), ["message"])
            self.assertEqual(client.received[0].attrs["message"], KEEPALIVE_TEXT)
        self.assertEqual(self.telescope.tags(), [])

    def test_no_keepalive_while_busy(self) -> None:
        """Traffic within the period holds the keepalive back."""
        self.router.startService()
        self.addCleanup(self.router.stopService)
        self.clock.advance(20)
        self.telescope.say(TELESCOPE_SET)
        self.clock.advance(10)
        self.assertEqual(self.alice.tags(), ["setNumberVector"])

    def test_keepalive_disabled(self) -> None:
        """keepalive 0 sends nothing and schedules nothing."""
        self.router.keepalive = 0
        self.router.startService()
        self.addCleanup(self.router.stopService)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_keepalive(self) -> None:
        """Stopping the router leaves no timer behind."""
        self.router.startService()
        self.router.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SendMessageTests(RouterTestCase):
    def test_send_message(self) -> None:
        """send_message reaches every client, not drivers."""
        self.router.send_message("Dome closing")
        for client in (self.alice, self.bob):
            self.assertEqual(client.received[0].attrs["message"], "Dome closing")
        self.assertEqual(self.telescope.tags(), [])


class VerbosityTests(SynchronousTestCase):
    """-v key events, -vv a line per message, -vvv its XML; each line names the link."""

    def lines(self, verbose: int, output: bytes = TELESCOPE_SET) -> list[str]:
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        router = Router(clock=Clock(), verbose=verbose)
        driver = RecordingLink(DRIVER, "driver indi_telescope")
        router.add_link(driver)
        driver.say(output)
        return [formatEvent(event) for event in logged]

    def test_quiet(self) -> None:
        """Without -v the router logs nothing of routine traffic."""
        self.assertEqual(self.lines(0), [])

    def test_key_events(self) -> None:
        """-v logs links coming and devices appearing, naming the link, and no message lines."""
        self.assertEqual(
            self.lines(1),
            ["driver indi_telescope attached", "driver indi_telescope owns device Telescope"],
        )

    def test_message_summaries(self) -> None:
        """-vv adds one line per message: its source, tag, device and property."""
        self.assertIn("driver indi_telescope: setNumberVector Telescope.EQ", self.lines(2))

    def test_full_xml(self) -> None:
        """-vvv logs each message's XML with its source."""
        self.assertIn(f"driver indi_telescope: {TELESCOPE_SET.decode()}", self.lines(3))

    def test_blob_summed_up_at_full_xml(self) -> None:
        """-vvv logs a BLOB message as a summary with its size, never its data."""
        frame = (
            b"<setBLOBVector device='Telescope' name='IMG'><oneBLOB name='IMG' size='3'"
            b" format='.fits'>QUJD</oneBLOB></setBLOBVector>"
        )
        lines = self.lines(3, frame)
        self.assertIn(f"driver indi_telescope: setBLOBVector Telescope.IMG ({len(frame)} bytes)", lines)
        self.assertFalse([line for line in lines if "QUJD" in line])


MOUNT_DEF = TELESCOPE_DEF.replace(b"'Telescope'", b"'Mount'")
FAKE_DEF = (
    b"<defNumberVector device='Fake Mount' name='EQ' perm='rw' state='Idle'>"
    b"<defNumber name='RA'>1</defNumber></defNumberVector>"
)


class UntrustedClientTests(RouterTestCase):
    """A plain client never owns a device, and what it says of devices reaches no other client."""

    def test_definition_owns_nothing(self) -> None:
        """A client's def* makes it no owner, reaches no client, and a command for that device goes nowhere."""
        self.alice.say(FAKE_DEF)
        self.assertNotIn("Fake Mount", self.router.owners)
        self.assertNotIn(self.alice, self.router.peers)
        self.assertEqual(self.bob.tags(), [])
        self.bob.say(NEW_EQ.replace(b"'Telescope'", b"'Fake Mount'"))
        self.assertEqual(self.alice.tags(), ["message"])  # only the notice below

    def test_told_once(self) -> None:
        """The client is told once why its device traffic is dropped, and each drop is counted."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for _ in range(3):
            self.alice.say(FAKE_DEF)
        (notice,) = self.alice.take()
        self.assertEqual(notice.tag, "message")
        self.assertIn("--peer", notice.attrs["message"])
        self.assertEqual(self.router.dropped, 3)
        self.assertEqual(len([e for e in logged if e["log_level"] == LogLevel.info]), 1)

    def test_message_without_device_reaches_nobody(self) -> None:
        """A client's device-less message is no server notice: no client or driver gets it."""
        self.alice.say(b"<message message='The server restarts now'/>")
        self.assertEqual(self.bob.tags() + self.telescope.tags() + self.ccd.tags(), [])

    def test_update_of_served_device_dropped(self) -> None:
        """A client's set* for a device a driver serves reaches neither clients nor snoopers."""
        self.ccd.say(b"<getProperties version='1.7' device='Telescope'/>")
        for link in (self.telescope, self.ccd):
            link.take()
        self.alice.say(TELESCOPE_SET)
        self.assertEqual(self.bob.tags() + self.ccd.tags() + self.telescope.tags(), [])

    def test_update_of_unserved_device_reaches_snoopers(self) -> None:
        """A client's set* for a device nobody serves reaches drivers snooping it, and no client."""
        self.ccd.say(b"<getProperties version='1.7' device='Far Scope'/>")
        self.ccd.take()
        update = TELESCOPE_SET.replace(b"'Telescope'", b"'Far Scope'")
        self.alice.say(update)
        self.assertEqual([m.raw for m in self.ccd.received], [update])
        self.assertEqual(self.bob.tags() + self.alice.tags(), [])
        self.assertNotIn("Far Scope", self.router.owners)

    def mount_driver(self, claim: object) -> RecordingLink:
        """A driver of device Mount, run by C{claim} (its service)."""
        mount = RecordingLink(DRIVER, "driver mount")
        mount.claim = claim
        self.router.add_link(mount)
        mount.say(MOUNT_DEF)
        return mount

    def test_restarting_driver_keeps_its_devices(self) -> None:
        """While a driver restarts its devices stay reserved: clients cannot feed snoopers, other links cannot take them."""
        claim = object()
        first = self.mount_driver(claim)
        self.ccd.say(b"<getProperties version='1.7' device='Mount'/>")
        self.router.remove_link(first)
        self.ccd.take()
        self.alice.say(TELESCOPE_SET.replace(b"'Telescope'", b"'Mount'"))
        self.assertEqual(self.ccd.tags(), [])
        intruder = self.attach(DRIVER, "driver intruder")
        intruder.say(MOUNT_DEF)
        self.assertNotIn("Mount", self.router.owners)
        again = self.mount_driver(claim)
        self.assertIs(self.router.owners["Mount"], again)

    def test_released_devices_free(self) -> None:
        """Once a restarting driver gives up, its devices may be served by another."""
        claim = object()
        self.router.remove_link(self.mount_driver(claim))
        self.router.release(claim)
        other = self.attach(DRIVER, "driver other")
        other.say(MOUNT_DEF)
        self.assertIs(self.router.owners["Mount"], other)


def many_devices(count: int, start: int = 0) -> bytes:
    return b"".join(b"<message device='d%d' message='x'/>" % n for n in range(start, start + count))


class BoundedTablesTests(RouterTestCase):
    """What one link can make the router remember, and the work of its leaving, are bounded."""

    def test_devices_per_link_limited(self) -> None:
        """A link owns at most max_devices devices; the rest are dropped and logged once each."""
        self.router.max_devices = 10
        server = self.attach(DRIVER, "driver many")
        for n in range(20):
            server.say(many_devices(1, n))
            server.say(many_devices(1, n))
        self.assertEqual(len(self.router.devices_of(server)), 10)
        self.assertEqual(len([d for d in self.router.owners if d.startswith("d")]), 10)

    def test_snoops_per_link_limited(self) -> None:
        """A driver snoops at most max_snoops devices; further getProperties are ignored."""
        self.router.max_snoops = 5
        for n in range(10):
            self.ccd.say(b"<getProperties version='1.7' device='s%d'/>" % n)
        self.assertEqual(self.router.dropped, 5)

    def test_leaving_spread_over_turns(self) -> None:
        """A link leaving with many devices has its delProperty messages sent a slice per reactor turn."""
        server = self.attach(DRIVER, "driver many")
        server.say(many_devices(200))
        self.alice.take()
        self.router.remove_link(server)
        self.assertEqual(len(self.alice.take()), self.router.retire_per_turn)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        # (Clock runs a call scheduled for now by a call it runs at once;
        # the reactor leaves it to its next turn.)
        self.clock.advance(0)
        self.assertEqual(len(self.alice.take()), 200 - self.router.retire_per_turn)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_device_back_before_its_delproperty(self) -> None:
        """A device announced again while its delProperty waits gets the delProperty first."""
        server = self.attach(DRIVER, "driver many")
        server.say(many_devices(200))
        self.router.remove_link(server)
        self.alice.take()
        again = self.attach(DRIVER, "driver again")
        again.say(many_devices(1, 199))
        self.assertEqual(
            [(m.tag, m.device) for m in self.alice.take()], [("delProperty", "d199"), ("message", "d199")]
        )
        self.clock.advance(0)
        self.assertNotIn("d199", [m.device for m in self.alice.take()])

    def test_stop_sends_the_rest(self) -> None:
        """Stopping the router sends every delProperty still waiting and leaves no timer."""
        server = self.attach(DRIVER, "driver many")
        server.say(many_devices(200))
        self.router.startService()
        self.router.remove_link(server)
        self.alice.take()
        self.router.stopService()
        self.assertEqual(len(self.alice.take()), 200 - self.router.retire_per_turn)
        self.assertEqual(self.clock.getDelayedCalls(), [])
