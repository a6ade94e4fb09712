"""
Hostile input: every kind of link against bad bytes.

The same cases run over a client connection, a driver's pipes and a link
to a remote server (L{HostileInputMixin}); each kind's subclass says what
bad input costs that peer.  A client is told why in an INDI C{message},
disconnected and forgotten; a driver's or a remote server's bad output is
logged and skipped to its next message.
Either way a well-behaved client and driver on the same router never notice
(docs/design.rst, invariants 2 to 4).

Then property tests of L{Parser} over mixed streams (valid INDI,
whitespace, declarations, hostile markup, garbage, cut anywhere), and the
parser defects this file found (all fixed since).
The hypothesis tests are derandomized and keep no example database, so the
suite is repeatable; C{fuzz/fuzz_wire.py} does the open-ended random search.
"""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ProcessDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from indiserv.client import ClientFactory, ClientProtocol
from indiserv.driver import DriverProcessProtocol
from indiserv.link import Link
from indiserv.remote import RemoteProtocol, RemoteService
from indiserv.router import KEEPALIVE_TEXT, Router
from indiserv.wire import ElementTooLarge, Limits, Message, Parser, WireError

KiB = 1024
MiB = 1024 * KiB

GOOD_DEF = (
    b"<defSwitchVector device='Good' name='CONNECTION' label='Connection' group='Main'"
    b" state='Idle' perm='rw' rule='OneOfMany' timeout='60'>"
    b"<defSwitch name='CONNECT'>Off</defSwitch><defSwitch name='DISCONNECT'>On</defSwitch>"
    b"</defSwitchVector>"
)
GOOD_UPDATE = (
    b"<setSwitchVector device='Good' name='CONNECTION' state='Ok'>"
    b"<oneSwitch name='CONNECT'>On</oneSwitch><oneSwitch name='DISCONNECT'>Off</oneSwitch>"
    b"</setSwitchVector>"
)
GOOD_COMMAND = (
    b"<newSwitchVector device='Good' name='CONNECTION'>"
    b"<oneSwitch name='CONNECT'>Off</oneSwitch></newSwitchVector>"
)
SWITCH_ON = b"<oneSwitch name='CONNECT'>On</oneSwitch>"


def _billion_laughs() -> bytes:
    entities = [b'<!ENTITY lol "lol">']
    previous = b"lol"
    for n in range(1, 10):
        entities.append(b'<!ENTITY lol%d "%s">' % (n, (b"&%s;" % previous) * 10))
        previous = b"lol%d" % n
    return b"<!DOCTYPE lolz [" + b"".join(entities) + b"]>"


BILLION_LAUGHS = _billion_laughs()
EXTERNAL_ENTITY = b'<!ENTITY x SYSTEM "file:///etc/passwd">'
WARNINGS = (LogLevel.warn, LogLevel.error, LogLevel.critical)


def raws(data: bytes) -> list[bytes]:
    """The messages in C{data}, as raw bytes, without keepalives."""
    return [
        m.raw
        for m in Parser().feed(bytes(data))
        if not (m.tag == "message" and m.attrs.get("message") == KEEPALIVE_TEXT)
    ]


def connection_definition(device: bytes) -> bytes:
    """A driver's definition of C{device}'s CONNECTION switch."""
    return (
        b"<defSwitchVector device='" + device + b"' name='CONNECTION'"
        b" state='Idle' perm='rw' rule='OneOfMany'>"
        b"<defSwitch name='CONNECT'>Off</defSwitch></defSwitchVector>\n"
    )


class FakeProcess:
    """A driver's process transport: keeps what the server writes to its stdin."""

    pid = 4242

    def __init__(self) -> None:
        self.written = bytearray()
        self.signals: list[str] = []
        self.producer: object = None
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def writeSequence(self, data: list[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def stopProducing(self) -> None:
        pass

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def closeStdin(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass


class RecordingParser(Parser):
    """A L{Parser} that remembers the class of every error it raised."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self.raised: list[type[WireError]] = []
        self.highest = 0

    def feed(self, data: bytes) -> list[Message]:
        try:
            return super().feed(data)
        except WireError as e:
            self.raised.append(type(e))
            raise
        finally:
            self.highest = max(self.highest, self.pending)


class HostileInputMixin:
    """
    The hostile-input cases, one body for every link kind.

    A subclass attaches the hostile peer (L{new_hostile}), speaks for it
    (L{say}, L{end_hostile}), builds the valid messages that kind sends
    (L{vector}, L{blob_vector}, L{one_byte_traffic}), tells where they go
    (L{forwarded}) and what refusing bad input means for it
    (L{assertRefused}, L{assertStillServed}).
    """

    hostile: Link
    vector_tag: bytes

    def setUp(self) -> None:
        self.clock = Clock()
        self.router = Router(clock=self.clock, keepalive=30)
        self.factory = ClientFactory(self.router, maxconnections=1000)
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self._port = 40000
        self._mark = 0
        self.good_driver, self.good_process = self.attach_driver("good")
        self.good_driver.outReceived(GOOD_DEF + b"\n")
        self.good_client, self.good_transport = self.attach_client()
        self.good_client.dataReceived(b"<getProperties version='1.7'/><enableBLOB>Also</enableBLOB>\n")
        self.new_hostile()
        self.forget()

    # -- peers -------------------------------------------------------------

    def attach_client(self) -> tuple[ClientProtocol, StringTransport]:
        self._port += 1
        address = IPv4Address("TCP", "127.0.0.1", self._port)
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def attach_driver(self, name: str) -> tuple[DriverProcessProtocol, FakeProcess]:
        protocol = DriverProcessProtocol(self.router, name)
        process = FakeProcess()
        protocol.makeConnection(process)
        return protocol, process

    def forget(self) -> None:
        """Start the next observation afresh: what peers got, what was logged."""
        self.good_process.written.clear()
        self.good_transport.clear()
        self._mark = len(self.logged)

    def to_good_client(self) -> list[bytes]:
        return raws(self.good_transport.value())

    def to_good_driver(self) -> list[bytes]:
        return raws(self.good_process.written)

    def warnings(self) -> list[dict]:
        return [e for e in self.logged[self._mark :] if e.get("log_level") in WARNINGS]

    # -- assertions common to every kind ----------------------------------------

    def assertWarned(self, reason: str) -> None:
        reasons = [str(e.get("reason")) for e in self.warnings()]
        self.assertTrue(
            any(reason in logged for logged in reasons),
            f"no warning with reason {reason!r}; warnings: {reasons!r}",
        )

    def assertNotWarned(self) -> None:
        self.assertEqual(
            [e.get("log_format") for e in self.warnings()], [], "unexpected warnings"
        )

    def assertConsistent(self) -> None:
        """Every registered link is attached here, and every owner is registered."""
        router = self.router
        for registry in (router.clients, router.drivers, router.remotes):
            for link in registry:
                self.assertIs(link.router, router)
        sources = {*router.drivers, *router.remotes}
        for device, owner in router.owners.items():
            self.assertIsInstance(device, str)
            self.assertIn(owner, sources)
        self.assertIs(router.owners["Good"], self.good_driver)
        self.assertIn(self.good_client, router.clients)
        self.assertIn(self.good_driver, router.drivers)

    def assertOthersUnaffected(self) -> None:
        """The good driver still reaches the good client, and back."""
        self.forget()
        self.good_driver.outReceived(GOOD_UPDATE + b"\n")
        self.assertEqual(self.to_good_client(), [GOOD_UPDATE])
        self.good_client.dataReceived(GOOD_COMMAND + b"\n")
        self.assertEqual(self.to_good_driver(), [GOOD_COMMAND])
        self.assertFalse(self.good_transport.disconnecting)
        self.assertNotWarned()
        self.assertConsistent()

    def assertBadInput(self, data: bytes, reason: str) -> None:
        """C{data} is refused for C{reason}, none of it is routed, nobody else notices."""
        self.say(data)
        self.assertEqual(self.forwarded(), [], "bad input was routed")
        self.assertRefused(reason)
        self.assertOthersUnaffected()

    def fresh(self) -> None:
        """A new hostile peer for the next input (a refused client is gone)."""
        self.new_hostile()
        self.forget()

    # -- the cases ---------------------------------------------------------------

    def test_truncated_at_every_offset(self) -> None:
        """An element cut at any offset, then the connection's end: held, never routed, no error."""
        valid = b"<?xml version='1.0'?>\n" + self.vector(b"<!-- c -->\n" + SWITCH_ON)
        for offset in range(len(valid)):
            link = self.new_hostile()
            self.forget()
            self.say(valid[:offset])
            self.assertLessEqual(link.parser.pending, offset)
            self.assertEqual(self.forwarded(), [], f"routed at offset {offset}")
            self.end_hostile()
            self.assertNotIn(link, self.registry())
            self.assertIsNone(link.router)
            for got in (self.to_good_client(), self.to_good_driver()):
                self.assertFalse(
                    [raw for raw in got if raw.startswith(b"<" + self.vector_tag)],
                    f"routed at offset {offset}",
                )
            self.assertNotWarned()
        self.assertOthersUnaffected()

    def test_garbage(self) -> None:
        """Bytes that are not INDI at all are refused."""
        for data, reason in [
            (b"\x00\x07 GARBAGE \xff\xfe\x80 ;;", "text outside any element"),
            (b" \xef\xbb\xbf<getProperties version='1.7'/>", "text outside any element"),
            (b"</" + self.vector_tag + b">", "malformed start tag"),
            (b"<<<>>>", "malformed start tag"),
            (b"<" + self.vector_tag + b" device=Good/>", "malformed start tag"),
        ]:
            self.fresh()
            self.assertBadInput(data, reason)

    def test_invalid_utf8(self) -> None:
        """Bytes that are not UTF-8, in text or in an attribute, are refused."""
        for bad in [
            b"\xff\xfe",  # never UTF-8
            b"\xc0\xaf",  # overlong "/"
            b"\xed\xa0\x80",  # a surrogate
            b"\xf4\x90\x80\x80",  # past U+10FFFF
            b"caf\xe9",  # Latin-1
            b"\xe2\x82",  # cut short
        ]:
            for data in (
                self.vector(b"<oneSwitch name='CONNECT'>On" + bad + b"</oneSwitch>"),
                self.vector(attributes=b" label='" + bad + b"'"),
            ):
                self.fresh()
                self.assertBadInput(data, "not well-formed")

    def test_unknown_tags(self) -> None:
        """Unknown tags are routed nowhere and counted, and are not an error."""
        dropped = self.router.dropped
        self.say(
            b"<fooVector device='Good' name='CONNECTION'/>\n"
            b"<getValue device='Good'><x>1</x></getValue>\n"
        )
        self.assertEqual(self.router.dropped, dropped + 2)
        self.assertEqual(self.forwarded(), [])
        self.assertEqual(self.to_good_driver(), [])
        self.assertNotWarned()
        self.assertStillServed()
        self.assertOthersUnaffected()

    def test_missing_device_and_name(self) -> None:
        """set*, new*, def* and delProperty without device or name crash nothing."""
        for raw in [
            b"<newSwitchVector name='CONNECTION'>" + SWITCH_ON + b"</newSwitchVector>",
            b"<newSwitchVector device='Good'>" + SWITCH_ON + b"</newSwitchVector>",
            b"<newNumberVector/>",
            b"<newBLOBVector><oneBLOB name='x' size='1' format='.z'>QQ==</oneBLOB></newBLOBVector>",
            b"<setSwitchVector name='CONNECTION'>" + SWITCH_ON + b"</setSwitchVector>",
            b"<setNumberVector/>",
            b"<setBLOBVector><oneBLOB name='x' size='1' format='.z'>QQ==</oneBLOB></setBLOBVector>",
            b"<defTextVector><defText name='T'>x</defText></defTextVector>",
            b"<delProperty/>",
        ]:
            self.say(raw + b"\n")
        self.assertNotWarned()
        self.assertNotIn(None, self.router.owners)
        self.assertStillServed()
        self.assertOthersUnaffected()

    def test_doctype_and_entities_refused(self) -> None:
        """DOCTYPE, entity declarations (billion laughs, external) and entity references are refused."""
        for data, reason in [
            (
                BILLION_LAUGHS + self.vector(b"<oneSwitch name='CONNECT'>&lol9;</oneSwitch>"),
                "markup declarations",
            ),
            (
                EXTERNAL_ENTITY + self.vector(b"<oneSwitch name='CONNECT'>&x;</oneSwitch>"),
                "markup declarations",
            ),
            (b"<!DOCTYPE x SYSTEM 'file:///etc/passwd'>", "markup declarations"),
            (
                self.vector(
                    b"<!DOCTYPE x [" + EXTERNAL_ENTITY + b"]>"
                    b"<oneSwitch name='CONNECT'>&x;</oneSwitch>"
                ),
                "not well-formed",
            ),
            (self.vector(b"<oneSwitch name='CONNECT'>&x;</oneSwitch>"), "undefined entity"),
            (self.vector(attributes=b" label='&lol9;'"), "undefined entity"),
            (b"<![CDATA[ <x/> & ]]>", "markup declarations"),
        ]:
            self.fresh()
            self.assertBadInput(data, reason)
            self.assertNotIn(b"passwd", self.good_transport.value())
            self.assertNotIn(b"passwd", self.good_process.written)

    def test_markup_inside_message_forwarded(self) -> None:
        """CDATA, comments and processing instructions inside a message are forwarded byte for byte."""
        for inner in [
            b"<![CDATA[ <b>not markup</b> & ]]>" + SWITCH_ON,
            b"<!-- a comment -->" + SWITCH_ON,
            b"<?indi-pi some data?>" + SWITCH_ON,
            b"<oneSwitch name='CONNECT'><!--x-->On<![CDATA[]]><?pi?></oneSwitch>",
        ]:
            raw = self.vector(inner)
            self.forget()
            self.say(raw + b"\n")
            self.assertEqual(self.forwarded(), [raw])
        self.assertNotWarned()
        self.assertStillServed()
        self.assertOthersUnaffected()

    def test_markup_hiding_the_end_tag_refused(self) -> None:
        """A comment or CDATA hiding the message's own end tag is refused (framing stops at the first end tag)."""
        end = b"</" + self.vector_tag + b">"
        for inner in [b"<!-- " + end + b" -->", b"<![CDATA[" + end + b"]]>"]:
            self.fresh()
            self.assertBadInput(self.vector(inner + SWITCH_ON), "not well-formed")

    def test_markup_inside_blob_refused(self) -> None:
        """Inside a oneBLOB body anything but base64 is refused: markup, '<' and '&'."""
        for body in [
            b"QUJD<!-- c -->",
            b"<![CDATA[QUJD]]>",
            b"<?pi x?>QUJD",
            b"QU<JD",
            b"QU&amp;JD",
            b"&#81;UJD",
            b"QUJD&",
        ]:
            self.fresh()
            self.assertBadInput(self.blob_vector(body), "not base64")

    def test_blob_size_and_enclen_forwarded_unchanged(self) -> None:
        """Non-numeric, negative and huge size/enclen are never interpreted: the exact bytes go through."""
        for attributes in [
            b" size='abc' format='.fits'",
            b" size='-5' enclen='-1' format='.fits'",
            b" size='99999999999999999999999999999' enclen='1e400' format='.fits'",
            b" size='' enclen='0x10' format='.fits'",
            b" format='.fits'",
        ]:
            raw = self.blob_vector(b"QUJD\nREVG", attributes)
            self.forget()
            self.say(raw + b"\n")
            self.assertEqual(self.to_good_client(), [raw])
            self.assertEqual(self.forwarded(), [raw])
        self.assertNotWarned()
        self.assertStillServed()
        self.assertOthersUnaffected()

    def test_element_never_ends(self) -> None:
        """An element growing past max_element is refused (ElementTooLarge) and its bytes released."""
        limits = Limits(max_element=64 * KiB)
        parser = self.hostile.parser = RecordingParser(limits)
        chunk = b"QUJD" * (16 * KiB)
        start = self.blob_vector(b"\0").split(b"\0")[0]
        self.say(start)
        for _ in range(16):
            self.say(chunk)
            self.assertLessEqual(parser.pending, limits.max_element + len(chunk))
        self.assertIn(ElementTooLarge, parser.raised)
        self.assertRefused("element larger than")
        self.assertOthersUnaffected()

    def test_deep_nesting_refused(self) -> None:
        """100,000 nested elements are refused by the depth limit."""
        depth = 100_000
        end = b"</" + self.vector_tag + b">"
        for data in [
            self.vector(b"<oneSwitch name='CONNECT'>" * depth + b"On" + b"</oneSwitch>" * depth),
            self.vector_start() + b">" + (b"<" + self.vector_tag + b">") * depth + end * depth,
        ]:
            self.fresh()
            for start in range(0, len(data), 64 * KiB):
                self.say(data[start : start + 64 * KiB])
            self.assertEqual(self.forwarded(), [])
            self.assertRefused("nested deeper than")
            self.assertOthersUnaffected()

    def test_huge_attribute_value_not_buffered(self) -> None:
        """A 10 MB attribute value is refused before the parser holds more than a start tag's worth."""
        parser = self.hostile.parser = RecordingParser(self.hostile.limits)
        bound = self.hostile.limits.max_start_tag + 64 * KiB
        self.say(self.vector_start(b" label='"))
        chunk = b"x" * (64 * KiB)
        for _ in range(10 * MiB // len(chunk)):
            self.say(chunk)
            self.assertLessEqual(parser.pending, bound)
        self.say(b"'>" + SWITCH_ON + b"</" + self.vector_tag + b">")
        self.assertLessEqual(parser.highest, bound)
        self.assertIn(ElementTooLarge, parser.raised)
        self.assertRefused("start tag longer than")
        self.assertOthersUnaffected()

    def test_huge_child_attribute_value_not_buffered(self) -> None:
        """A 10 MB attribute value of a child element is refused without buffering 10 MB."""
        parser = self.hostile.parser = RecordingParser(self.hostile.limits)
        bound = self.hostile.limits.max_start_tag + 64 * KiB
        self.say(self.vector_start() + b"><oneSwitch name='CONNECT' label='")
        chunk = b"x" * (64 * KiB)
        for _ in range(10 * MiB // len(chunk)):
            self.say(chunk)
            self.assertLessEqual(parser.pending, bound)
        self.say(b"'>On</oneSwitch></" + self.vector_tag + b">")
        self.assertRefused("longer than")
        self.assertOthersUnaffected()


    def test_huge_markup_not_buffered(self) -> None:
        """A comment, instruction or CDATA section of megabytes full of '>' is refused once past max_markup, not buffered whole."""
        for opening, closing, what in [
            (b"<!--", b"-->", "a comment"),
            (b"<?pi ", b"?>", "a processing instruction"),
            (b"<![CDATA[", b"]]>", "a CDATA section"),
        ]:
            self.fresh()
            parser = self.hostile.parser = RecordingParser(self.hostile.limits)
            bound = self.hostile.limits.max_markup + 64 * KiB
            self.say(self.vector_start() + b">" + opening)
            chunk = b"> " * (32 * KiB)
            for _ in range(2 * MiB // len(chunk)):
                self.say(chunk)
                self.assertLessEqual(parser.pending, bound)
            self.say(closing + SWITCH_ON + b"</" + self.vector_tag + b">")
            self.assertLessEqual(parser.highest, bound)
            self.assertEqual(parser.raised[:1], [ElementTooLarge])
            self.assertEqual(self.forwarded(), [])
            self.assertRefused(f"{what} inside <{self.vector_tag.decode()}> is longer than")
            self.assertOthersUnaffected()

    def test_too_many_attributes_refused(self) -> None:
        """An element with more attributes than the limit is refused, top-level or child."""
        many = b"".join(b" a%d='%d'" % (n, n) for n in range(100))
        limit = f"(limit {self.hostile.limits.max_attributes})"
        for data in [
            self.vector(attributes=many),
            self.vector(b"<oneSwitch name='CONNECT'" + many + b">On</oneSwitch>"),
        ]:
            self.fresh()
            self.assertBadInput(data, limit)

    def test_one_byte_per_call(self) -> None:
        """A peer writing one byte a second is served correctly, and other links meanwhile too."""
        self.router.startService()
        self.addCleanup(self.router.stopService)
        self.admit_hostile()
        traffic = self.one_byte_traffic()
        data = b"\n".join(traffic) + b"\n"
        self.assertGreater(len(data), 180)
        updates = 0
        for offset in range(len(data)):
            self.say(data[offset : offset + 1])
            self.clock.advance(1)
            if offset % 50 == 0:
                self.good_driver.outReceived(GOOD_UPDATE + b"\n")
                updates += 1
                self.assertEqual(self.to_good_client()[-1], GOOD_UPDATE)
        got = [raw for raw in self.forwarded() if raw != GOOD_UPDATE]
        self.assertEqual(got, traffic)
        self.assertEqual(self.to_good_client().count(GOOD_UPDATE), updates)
        self.assertHostileServed(updates)
        self.assertNotWarned()
        self.assertStillServed()
        self.assertConsistent()

    def assertHostileServed(self, updates: int) -> None:
        """The slow peer got what was routed to it meanwhile (kinds that receive updates)."""

    def admit_hostile(self) -> None:
        """Let the peer in before it dawdles (a pending client is given only --handshake-timeout)."""


class ClientHostileTests(HostileInputMixin, SynchronousTestCase):
    """Bad input from a client: it is told why, disconnected and forgotten."""

    vector_tag = b"newSwitchVector"

    def new_hostile(self) -> ClientProtocol:
        # Admitted first: what a pending connection may send is bounded
        # more tightly still (tests/test_client.py).
        self.hostile, self.hostile_transport = self.attach_client()
        # Interested in the good device, whose updates it is to keep getting.
        self.hostile.dataReceived(b"<enableBLOB device='Good'>Never</enableBLOB>")
        return self.hostile

    def say(self, data: bytes) -> None:
        self.hostile.dataReceived(data)
        self.clock.advance(0)  # the reactor turns that route the rest of a large read

    def admit_hostile(self) -> None:
        self.say(b"<enableBLOB device='Good'>Never</enableBLOB>")

    def end_hostile(self) -> None:
        self.hostile.connectionLost(Failure(ConnectionDone()))

    def registry(self) -> dict[Link, None]:
        return self.router.clients

    def vector_start(self, attributes: bytes = b"") -> bytes:
        return b"<newSwitchVector device='Good' name='CONNECTION'" + attributes

    def vector(self, inner: bytes = SWITCH_ON, attributes: bytes = b"") -> bytes:
        return self.vector_start(attributes) + b">" + inner + b"</newSwitchVector>"

    def blob_vector(
        self, body: bytes, attributes: bytes = b" size='3' format='.txt'"
    ) -> bytes:
        return (
            b"<newBLOBVector device='Good' name='UPLOAD'><oneBLOB name='FILE'"
            + attributes
            + b">"
            + body
            + b"</oneBLOB></newBLOBVector>"
        )

    def one_byte_traffic(self) -> list[bytes]:
        return [
            b"<getProperties version='1.7'/>",
            b"<newSwitchVector device='Good' name='CONNECTION'"
            b" timestamp='2026-11-28T21:00:00'>\n"
            b"  <oneSwitch name='CONNECT'>\n    On\n  </oneSwitch>\n"
            b"  <oneSwitch name='DISCONNECT'>\n    Off\n  </oneSwitch>\n"
            b"</newSwitchVector>",
        ]

    def forwarded(self) -> list[bytes]:
        """A client's commands go to the device's driver."""
        return self.to_good_driver()

    def assertRefused(self, reason: str) -> None:
        """Disconnected, told why in a message, out of the router, and a warning logged."""
        self.assertTrue(self.hostile_transport.disconnecting)
        told = [
            m.attrs.get("message", "")
            for m in Parser().feed(self.hostile_transport.value())
            if m.tag == "message" and m.device is None
        ]
        self.assertTrue(
            any(reason in text for text in told), f"{reason!r} not in {told!r}"
        )
        self.assertNotIn(self.hostile, self.router.clients)
        self.assertIsNone(self.hostile.router)
        self.assertWarned(reason)
        # Later the reactor reports the connection closed: nothing more happens.
        self.hostile.connectionLost(Failure(ConnectionDone()))
        self.assertNotIn(self.hostile, self.router.clients)

    def assertStillServed(self) -> None:
        """Still connected, and its next command reaches the driver."""
        self.assertFalse(self.hostile_transport.disconnecting)
        self.assertIn(self.hostile, self.router.clients)
        self.forget()
        self.say(self.vector() + b"\n")
        self.assertEqual(self.forwarded(), [self.vector()])

    def assertHostileServed(self, updates: int) -> None:
        self.assertEqual(raws(self.hostile_transport.value()).count(GOOD_UPDATE), updates)
        self.assertFalse(self.hostile_transport.disconnecting)


class DriverHostileTests(HostileInputMixin, SynchronousTestCase):
    """Bad output from a driver: logged and skipped; the driver stays and is heard."""

    vector_tag = b"setSwitchVector"
    _drivers = 0

    def new_hostile(self) -> DriverProcessProtocol:
        self._drivers += 1
        self.device = b"Hostile %d" % self._drivers
        self.hostile, self.hostile_process = self.attach_driver(f"hostile{self._drivers}")
        self.hostile.outReceived(connection_definition(self.device))
        return self.hostile

    def say(self, data: bytes) -> None:
        self.hostile.outReceived(data)
        self.clock.advance(0)  # the reactor turns that route the rest of a large read

    def end_hostile(self) -> None:
        self.hostile.processEnded(Failure(ProcessDone(0)))

    def registry(self) -> dict[Link, None]:
        return self.router.drivers

    def vector_start(self, attributes: bytes = b"") -> bytes:
        return (
            b"<setSwitchVector device='" + self.device + b"' name='CONNECTION' state='Ok'"
            + attributes
        )

    def vector(self, inner: bytes = SWITCH_ON, attributes: bytes = b"") -> bytes:
        return self.vector_start(attributes) + b">" + inner + b"</setSwitchVector>"

    def blob_vector(
        self, body: bytes, attributes: bytes = b" size='3' format='.txt'"
    ) -> bytes:
        return (
            b"<setBLOBVector device='" + self.device + b"' name='CCD1' state='Ok'>"
            b"<oneBLOB name='CCD1'" + attributes + b">" + body + b"</oneBLOB></setBLOBVector>"
        )

    def one_byte_traffic(self) -> list[bytes]:
        return [
            self.vector_start(b" timestamp='2026-11-28T21:00:00'") + b">\n"
            b"  <oneSwitch name='CONNECT'>\n    On\n  </oneSwitch>\n"
            b"</setSwitchVector>",
            b"<message device='" + self.device + b"' timestamp='2026-11-28T21:00:01'"
            b" message='[INFO] connected, one byte at a time'/>",
        ]

    def forwarded(self) -> list[bytes]:
        """A driver's device traffic goes to the clients."""
        return self.to_good_client()

    def assertRefused(self, reason: str) -> None:
        """A warning logged; still attached, still the owner, and its next message gets through."""
        self.assertWarned(reason)
        self.assertIn(self.hostile, self.registry())
        self.assertIs(self.hostile.router, self.router)
        self.assertIs(self.router.owners[self.device.decode()], self.hostile)
        after = b"<message device='" + self.device + b"' message='after the bad bytes'/>"
        self.forget()
        self.say(after + b"\n")
        self.assertEqual(self.to_good_client(), [after])

    def assertStillServed(self) -> None:
        """Still attached, and its next update reaches the clients."""
        self.assertIn(self.hostile, self.registry())
        self.forget()
        self.say(self.vector() + b"\n")
        self.assertEqual(self.forwarded(), [self.vector()])


class RemoteHostileTests(DriverHostileTests):
    """Bad input from a remote server: logged and skipped, as from a driver; the link stays."""

    def new_hostile(self) -> RemoteProtocol:  # type: ignore[override]
        self._drivers += 1
        self.device = b"Hostile %d" % self._drivers
        service = RemoteService(self.router, None, f"far{self._drivers}:7624", clock=self.router.clock)  # type: ignore[arg-type]
        self.hostile = RemoteProtocol(service)
        self.hostile_transport = StringTransport()
        self.hostile.makeConnection(self.hostile_transport)
        self.addCleanup(self.end_hostile)
        self.say(connection_definition(self.device))
        return self.hostile

    def say(self, data: bytes) -> None:
        self.hostile.dataReceived(data)
        self.clock.advance(0)  # the reactor turns that route the rest of a large read

    def end_hostile(self) -> None:
        if self.hostile.router is not None or (self.hostile._probe and self.hostile._probe.running):
            self.hostile.connectionLost(Failure(ConnectionDone()))

    def registry(self) -> dict[Link, None]:
        return self.router.remotes


# -- property tests of the parser ---------------------------------------------

TOP_TAGS = [
    "getProperties", "defNumberVector", "defBLOBVector", "setTextVector",
    "setSwitchVector", "setBLOBVector", "newNumberVector", "newBLOBVector",
    "message", "delProperty", "enableBLOB", "pingRequest", "unknownTag", "oneBLOB",
]
CHILD_TAGS = ["oneText", "oneNumber", "oneSwitch", "oneBLOB", "defNumber"]
ATTRIBUTE_NAMES = ["device", "name", "state", "size", "enclen", "format", "message", "x:y"]
texts = st.sampled_from(
    ["", "On", "12:30:00", "-1e9", "caf\u00e9", "&amp;", "&lt;&gt;", "&#233;", "a > b",
     "&bad;", "&", "<", "]]>", "x" * 40]
)
contents = st.one_of(
    texts,
    st.sampled_from(
        ["QUJD\nREVG", " QQ== ", "<![CDATA[ <x> & ]]>", "<!-- c -->", "<?pi data?>",
         "<!-- </setTextVector> -->", "<?xml version='1.0'?>", "<!DOCTYPE x>"]
    ),
)


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> bytes:
    """An element, mostly INDI-shaped and well-formed, sometimes not."""
    tag = draw(st.sampled_from(CHILD_TAGS if depth else TOP_TAGS))
    attributes = ""
    for name in draw(st.lists(st.sampled_from(ATTRIBUTE_NAMES), max_size=5, unique=True)):
        quote = draw(st.sampled_from("'\""))
        space = draw(st.sampled_from([" ", "\n ", "\t"]))
        attributes += f"{space}{name}={quote}{draw(texts).replace(quote, '')}{quote}"
    if draw(st.booleans()):
        return f"<{tag}{attributes}/>".encode()
    if depth < 4 and draw(st.booleans()):
        body = b"".join(draw(st.lists(elements(depth + 1), max_size=3)))
    else:
        body = draw(contents).encode()
    end = draw(st.sampled_from(["", " ", "\n"]))
    return f"<{tag}{attributes}>".encode() + body + f"</{tag}{end}>".encode()


@st.composite
def truncated_elements(draw: st.DrawFn) -> bytes:
    element = draw(elements())
    return element[: draw(st.integers(0, len(element)))]


pieces = st.one_of(
    elements(),
    elements(),
    st.sampled_from([b" ", b"\n", b"\r\n\t"]),
    st.sampled_from(
        [b"<?xml version='1.0'?>", b"<!-- comment -->", BILLION_LAUGHS, EXTERNAL_ENTITY,
         b"<![CDATA[x]]>", b"</message>"]
    ),
    st.binary(max_size=16),
    st.text(alphabet="<>/&;'\"!?-[]=xA \n", max_size=16).map(str.encode),
    truncated_elements(),
)
streams = st.lists(pieces, max_size=10).map(b"".join)


@st.composite
def split_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(streams)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=10))))
    edges = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in zip(edges, edges[1:])]


SMALL_LIMITS = Limits(
    max_element=256, max_attributes=3, max_attribute_length=16, max_depth=3, max_markup=64
)


def roomy(data: bytes) -> Limits:
    """Small limits, except that no size limit can trigger on C{data}: those
    are enforced only on what is pending, so they depend on chunking (see
    L{ParserDefectTests})."""
    return Limits(
        max_element=len(data) + 1,
        max_attributes=SMALL_LIMITS.max_attributes,
        max_attribute_length=max(SMALL_LIMITS.max_attribute_length, len(data)),
        max_depth=SMALL_LIMITS.max_depth,
        max_markup=len(data) + 1,
    )


def run(testcase: SynchronousTestCase, limits: Limits, chunks: list[bytes]) -> list[object]:
    """
    Read C{chunks} as a link does (L{Parser.read}); return the messages'
    raw bytes and the errors (class, reason) in order.  Anything but a
    L{WireError}, or C{pending} past the bound, fails C{testcase}.
    """
    parser = Parser(limits)
    bound = max(limits.max_element, limits.max_start_tag)
    events: list[object] = []
    for chunk in chunks:
        for item in parser.read(chunk):
            if isinstance(item, WireError):
                events.append((type(item).__name__, item.reason))
            else:
                events.append(item.raw)
            testcase.assertLessEqual(parser.pending, bound + len(chunk))
        testcase.assertLessEqual(parser.pending, bound + len(chunk))
    return events


HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class ParserPropertyTests(SynchronousTestCase):
    """L{Parser} over any mix of INDI, declarations and garbage, cut anywhere."""

    @HYPOTHESIS
    @given(split_streams())
    def test_split_same_as_whole(self, case: tuple[bytes, list[bytes]]) -> None:
        """Any stream cut anywhere yields the same messages and the same errors as whole."""
        data, chunks = case
        limits = roomy(data)
        self.assertEqual(run(self, limits, chunks), run(self, limits, [data]))

    @HYPOTHESIS
    @given(split_streams())
    def test_only_wire_errors_and_bounded(self, case: tuple[bytes, list[bytes]]) -> None:
        """With small limits, feed raises only WireError and pending stays within the limits plus a chunk."""
        data, chunks = case
        run(self, SMALL_LIMITS, chunks)
        run(self, SMALL_LIMITS, [data])

    @HYPOTHESIS
    @given(split_streams())
    def test_messages_stand_alone(self, case: tuple[bytes, list[bytes]]) -> None:
        """Every emitted message, fed alone to a fresh parser, is exactly one message with the same bytes."""
        data, chunks = case
        for limits in (SMALL_LIMITS, roomy(data)):
            for event in run(self, limits, chunks):
                if isinstance(event, bytes):
                    parser = Parser(limits)
                    self.assertEqual([m.raw for m in parser.feed(event)], [event])
                    self.assertEqual(parser.pending, 0)


# -- defects found here --------------------------------------------------------


class ParserDefectTests(SynchronousTestCase):
    """What the hostile tests found wrong in L{Parser} once, kept so it stays fixed."""

    def test_max_element_whatever_the_chunking(self) -> None:
        """An element over max_element is refused even when it arrives in one chunk."""
        limits = Limits(max_element=1 * KiB)
        big = b"<setBLOBVector device='a' name='b'><oneBLOB name='c'>" + b"QUJD" * KiB
        big += b"</oneBLOB></setBLOBVector>"
        self.assertRaises(ElementTooLarge, Parser(limits).feed, big)
        parser = Parser(limits)
        self.assertRaises(ElementTooLarge, parser.feed, big[: 2 * KiB])


    def test_max_start_tag_whatever_the_chunking(self) -> None:
        """A start tag over max_start_tag (a long attribute name) is refused even in one chunk."""
        limits = Limits(max_attributes=1, max_attribute_length=8)
        tag = b"<message " + b"a" * (2 * limits.max_start_tag) + b"='x'/>"
        parser = Parser(limits)
        self.assertRaises(ElementTooLarge, parser.feed, tag[: limits.max_start_tag + 1])
        self.assertRaises(WireError, Parser(limits).feed, tag)


    def test_long_tag_or_comment_whatever_the_chunking(self) -> None:
        """A start tag or comment longer than max_element (below max_start_tag) gets the same refusal whole or cut."""
        limits = Limits(max_element=512)
        for data in (
            b"<message device='" + b"x" * 300 + b"' name='" + b"y" * 300 + b"'/>",
            b"<message device='<" + b"x" * 600 + b"'/>",
            b"<!--" + b"z" * 600 + b"-->",
        ):
            outcomes = []
            for chunks in ([data], [data[:520], data[520:]], [data[:100], data[100:]]):
                parser = Parser(limits)
                try:
                    for chunk in chunks:
                        parser.feed(chunk)
                except WireError as e:
                    outcomes.append((type(e).__name__, e.reason))
                else:
                    outcomes.append(None)
            self.assertEqual(len(set(outcomes)), 1, outcomes)
            self.assertEqual(outcomes[0][0], "ElementTooLarge")

    def test_resync_whatever_the_chunking(self) -> None:
        """After bad input, where the stream is cut does not change what is recovered."""
        data = (
            b"junk <defXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXVector device='a'/> more"
            b" <defSwitchVector device='a' name='b'></defSwitchVector>"
        )

        def messages(chunks: list[bytes]) -> list[bytes]:
            parser, found = Parser(), []
            for chunk in chunks:
                while True:
                    try:
                        found += [m.raw for m in parser.feed(chunk)]
                        break
                    except WireError as e:
                        found += [m.raw for m in e.messages]
                        chunk = b""
            return found

        whole = messages([data])
        self.assertEqual(whole, [b"<defSwitchVector device='a' name='b'></defSwitchVector>"])
        for cut in range(len(data) + 1):
            self.assertEqual(messages([data[:cut], data[cut:]]), whole, f"cut at {cut}")


    def test_comment_opening_is_not_its_end(self) -> None:
        """'<!-->' opens a comment; a message inside the comment is not routed."""
        parser = Parser()
        self.assertEqual(parser.feed(b"<!--><getProperties version='1.7'/>-->"), [])


    def dribble(self, opening: bytes, piece: bytes, count: int) -> float:
        """Seconds a client's parser spends on C{count} C{piece}s after C{opening}."""
        parser = Parser(ClientProtocol.limits)
        parser.feed(opening)
        started = time.perf_counter()
        for _ in range(count):
            parser.feed(piece)
        return time.perf_counter() - started

    def test_unfinished_start_tag_linear(self) -> None:
        """An unfinished start tag dribbled in small pieces costs time linear in its length."""
        elapsed = self.dribble(
            b"<newSwitchVector device='Good' name='CONNECTION' label='", b"x" * 64, 1024
        )
        self.assertLess(elapsed, 0.1, f"64 KiB in 64-byte pieces took {elapsed:.2f} s")


    def test_unfinished_comment_linear(self) -> None:
        """An unfinished comment dribbled in small pieces costs time linear in its length."""
        # Just under the markup limit (1 MiB), past which it is refused.
        elapsed = self.dribble(b"<!--", b"y" * KiB, KiB - 1)
        self.assertLess(elapsed, 0.1, f"1 MiB in 1 KiB pieces took {elapsed:.2f} s")


    def test_unfinished_end_tag_linear(self) -> None:
        """Whitespace dribbled inside an end tag costs time linear in its length."""
        elapsed = self.dribble(b"<message device='a'></message", b" " * 128, 1024)
        self.assertLess(elapsed, 0.1, f"128 KiB in 128-byte pieces took {elapsed:.2f} s")

