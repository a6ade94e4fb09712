"""
Tests for L{indiserv.wire}: framing, checking and building INDI messages.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from xml.etree import ElementTree

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from indiserv import wire
from indiserv.wire import ElementTooLarge, Limits, MalformedElement, Parser, WireError

KiB = 1024
MiB = 1024 * KiB

# What an indilib driver writes: a declaration before every message.
STREAM = (
    b"<?xml version='1.0'?>\n"
    b"<defNumberVector device=\"Tel &amp; Co\" name='EQUATORIAL_EOD_COORD' state=\"Idle\""
    b" perm='rw' timeout='60' timestamp='2026-01-01T00:00:00'>\n"
    b"  <defNumber name='RA' format='%10.6m' min='0' max='24' step='0'>1.5</defNumber>\n"
    b"</defNumberVector>\n"
    b"<?xml version='1.0'?>\n"
    b"<getProperties version='1.7'/>"
    b"<enableBLOB device='CCD Simulator'>Also</enableBLOB>\r\n"
    b"<setBLOBVector device='CCD Simulator' name='CCD1' state='Ok'>"
    b"<oneBLOB name='CCD1' size='6' enclen='8' format='.fits'>QUJD\nREVG</oneBLOB>"
    b"</setBLOBVector>"
    b"<setBLOBVector device='CCD Simulator' name='CCD1' state='Busy'></setBLOBVector>"
    b"<message device='Tel &amp; Co' message='caf\xc3\xa9 &lt;ok&gt;'/>"
)


def feed_all(parser: Parser, chunks: list[bytes]) -> list[wire.Message]:
    messages = []
    for chunk in chunks:
        messages += parser.feed(chunk)
    return messages


class ParserTests(SynchronousTestCase):
    def test_whole_stream(self) -> None:
        """A stream of several messages yields each with its tag, device, name and attributes."""
        messages = Parser().feed(STREAM)
        self.assertEqual(
            [m.tag for m in messages],
            [
                "defNumberVector",
                "getProperties",
                "enableBLOB",
                "setBLOBVector",
                "setBLOBVector",
                "message",
            ],
        )
        self.assertEqual(messages[0].device, "Tel & Co")
        self.assertEqual(messages[0].name, "EQUATORIAL_EOD_COORD")
        self.assertEqual(messages[0].attrs["state"], "Idle")
        self.assertEqual(messages[1].attrs, {"version": "1.7"})
        self.assertEqual(messages[2].text, "Also")
        self.assertEqual(messages[5].attrs["message"], "café <ok>")

    def test_raw_bytes_kept(self) -> None:
        """Each message keeps exactly the bytes of its element, without declarations or whitespace between."""
        messages = Parser().feed(STREAM)
        self.assertTrue(messages[0].raw.startswith(b"<defNumberVector device=\"Tel &amp; Co\""))
        self.assertTrue(messages[0].raw.endswith(b"</defNumberVector>"))
        self.assertEqual(messages[1].raw, b"<getProperties version='1.7'/>")
        self.assertEqual(b"".join(m.raw for m in messages).count(b"<?xml"), 0)
        for message in messages:
            self.assertIn(message.raw, STREAM)

    def test_blob_flag(self) -> None:
        """Only a setBLOBVector with oneBLOB children is BLOB data; an empty one is state."""
        messages = Parser().feed(STREAM)
        self.assertEqual([m.blob for m in messages], [False] * 3 + [True, False, False])

    def test_split_at_every_byte(self) -> None:
        """The stream cut in two at any offset yields the same messages as the whole."""
        whole = [m.raw for m in Parser().feed(STREAM)]
        for cut in range(len(STREAM) + 1):
            parser = Parser()
            got = feed_all(parser, [STREAM[:cut], STREAM[cut:]])
            self.assertEqual([m.raw for m in got], whole, f"cut at {cut}")
            self.assertEqual(parser.pending, 0)

    def test_one_byte_at_a_time(self) -> None:
        """Fed one byte per call, the parser yields the same messages as the whole."""
        whole = [m.raw for m in Parser().feed(STREAM)]
        chunks = [STREAM[i : i + 1] for i in range(len(STREAM))]
        self.assertEqual([m.raw for m in feed_all(Parser(), chunks)], whole)

    def test_incomplete_element_waits(self) -> None:
        """An element not yet ended is held, not reported as an error."""
        parser = Parser()
        self.assertEqual(parser.feed(b"<setTextVector device='a' name='b'><oneText"), [])
        self.assertEqual(parser.feed(b" name='c'>x</oneText></setTextVec"), [])
        (message,) = parser.feed(b"tor  >")
        self.assertTrue(message.raw.endswith(b"</oneText></setTextVector  >"))

    def test_longer_tag_with_same_prefix(self) -> None:
        """A child whose end tag shares the top element's name prefix does not end it early."""
        raw = b"<message device='a'><messageX></messageX></message>"
        (message,) = Parser().feed(raw)
        self.assertEqual(message.raw, raw)

    def test_greater_than_in_attribute(self) -> None:
        """A '>' inside an attribute value does not end the start tag."""
        raw = b"<message device='a' message='x > y'/>"
        (message,) = Parser().feed(raw)
        self.assertEqual(message.attrs["message"], "x > y")

    def test_byte_order_mark_at_stream_start_skipped(self) -> None:
        """A UTF-8 byte order mark at the very start of a stream is skipped, even split."""
        parser = Parser()
        self.assertEqual(parser.feed(b"\xef\xbb"), [])
        (message,) = parser.feed(b"\xbf<getProperties version='1.7'/>")
        self.assertEqual(message.tag, "getProperties")

    def test_comments_and_instructions_between_messages_skipped(self) -> None:
        """Comments and processing instructions between messages are dropped."""
        messages = Parser().feed(b"<!-- hi --><?pi x?><getProperties version='1.7'/>")
        self.assertEqual([m.tag for m in messages], ["getProperties"])


class MalformedTests(SynchronousTestCase):
    def assertRefused(self, data: bytes, exception: type[WireError] = MalformedElement) -> WireError:
        error = self.assertRaises(exception, Parser().feed, data)
        self.assertTrue(error.reason)
        return error

    def test_text_outside_elements(self) -> None:
        """Text between messages is refused."""
        self.assertRefused(b"garbage<getProperties/>")

    def test_doctype(self) -> None:
        """A DOCTYPE with entity declarations (billion laughs) is refused."""
        error = self.assertRefused(
            b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
            b"<message message='&lol2;'/>"
        )
        self.assertIn("DOCTYPE", error.reason)

    def test_undefined_entity(self) -> None:
        """An entity reference other than the five XML ones is refused."""
        self.assertRefused(b"<message device='a' message='&xxe;'/>")

    def test_invalid_utf8(self) -> None:
        """Bytes that are not UTF-8 are refused."""
        self.assertRefused(b"<message device='\xff\xfe'/>")

    def test_mismatched_tags(self) -> None:
        """Children that do not nest properly are refused."""
        self.assertRefused(b"<setTextVector><oneText></setTextVector>")

    def test_blob_body_not_base64(self) -> None:
        """A BLOB body with characters outside base64 is refused."""
        error = self.assertRefused(
            b"<setBLOBVector device='a' name='b'><oneBLOB name='c'>AB&lt;</oneBLOB>"
            b"</setBLOBVector>"
        )
        self.assertIn("base64", error.reason)

    def test_malformed_start_tag(self) -> None:
        """A start tag that cannot be completed is refused at once."""
        self.assertRefused(b"<message device=a/>")

    def test_good_messages_before_the_fault_are_kept(self) -> None:
        """Messages completed before bad input travel with the error."""
        error = self.assertRefused(b"<getProperties version='1.7'/>junk")
        self.assertEqual([m.tag for m in error.messages], ["getProperties"])

    def test_resynchronises_at_next_message(self) -> None:
        """After bad input, parsing resumes at the next element that can begin a message."""
        parser = Parser()
        self.assertRaises(
            MalformedElement,
            parser.feed,
            b"<setTextVector device='a'><oneText>&bad;</oneText></setTextVector>"
            b"oops <oneText/> <setTextVector device='b' name='c'></setTextVector>",
        )
        self.assertRaises(MalformedElement, parser.feed, b"")
        self.assertEqual([m.device for m in parser.feed(b"")], ["b"])

    def test_element_too_large(self) -> None:
        """An element that grows past the limit is refused and its bytes released."""
        parser = Parser(Limits(max_element=1000))
        parser.feed(b"<setBLOBVector device='a' name='b'><oneBLOB>")
        self.assertRaises(ElementTooLarge, parser.feed, b"A" * 2000)
        self.assertLessEqual(parser.pending, 100)
        parser.feed(b"A" * 5000 + b"</oneBLOB></setBLOBVector>")
        self.assertLessEqual(parser.pending, 100)
        self.assertEqual(
            [m.tag for m in parser.feed(b"<getProperties version='1.7'/>")],
            ["getProperties"],
        )


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=8))
    def test_any_split_same_messages(self, cuts: list[int]) -> None:
        """Any split of a valid stream yields the same messages as the whole."""
        edges = [0, *sorted(cuts), len(STREAM)]
        chunks = [STREAM[a:b] for a, b in zip(edges, edges[1:])]
        got = feed_all(Parser(), chunks)
        self.assertEqual([m.raw for m in got], [m.raw for m in Parser().feed(STREAM)])

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300), st.binary(max_size=300))
    def test_any_bytes_only_wire_errors(self, first: bytes, second: bytes) -> None:
        """Arbitrary bytes never raise anything but WireError, and stay under the limit."""
        parser = Parser(Limits(max_element=256, max_attribute_length=16, max_attributes=2))
        for chunk in (first, second, b""):
            try:
                parser.feed(chunk)
            except WireError:
                pass
            self.assertLessEqual(parser.pending, 256)


class BuilderTests(SynchronousTestCase):
    def test_message_escaped(self) -> None:
        """Built messages escape markup and drop characters XML forbids, and parse back."""
        built = wire.message('a<b"&\n\x00c', device="Dev & Co")
        (parsed,) = Parser().feed(built.raw)
        self.assertEqual(parsed.attrs["message"], 'a<b"&\nc')
        self.assertEqual(parsed.device, "Dev & Co")

    def test_message_timestamp(self) -> None:
        """A message carries an INDI timestamp: UTC, ISO 8601, no zone."""
        when = datetime(2026, 11, 28, 21, 0, 5, 123456, tzinfo=timezone.utc)
        built = wire.message("hi", when=when)
        self.assertEqual(built.attrs["timestamp"], "2026-11-28T21:00:05")

    def test_get_properties(self) -> None:
        """getProperties carries version 1.7 and, when given, device and name."""
        self.assertEqual(wire.get_properties().raw, b'<getProperties version="1.7"/>\n')
        built = wire.get_properties("CCD", "CCD1")
        self.assertEqual((built.device, built.name), ("CCD", "CCD1"))

    def test_del_property(self) -> None:
        """delProperty names the device and has a timestamp."""
        (parsed,) = Parser().feed(wire.del_property("Telescope Simulator").raw)
        self.assertEqual(parsed.tag, "delProperty")
        self.assertEqual(parsed.device, "Telescope Simulator")
        self.assertIn("timestamp", parsed.attrs)

    def test_enable_blob(self) -> None:
        """enableBLOB puts the policy in its text."""
        (parsed,) = Parser().feed(wire.enable_blob("Also", "CCD", "CCD1").raw)
        self.assertEqual((parsed.text, parsed.device, parsed.name), ("Also", "CCD", "CCD1"))

    def test_ping_reply(self) -> None:
        """pingReply echoes the uid."""
        self.assertEqual(wire.ping_reply("SetBLOB/1").raw, b'<pingReply uid="SetBLOB/1"/>\n')

    def test_def_vector(self) -> None:
        """def_vector defines a property: vector and member attributes, values escaped, a timestamp, parsed back whole."""
        built = wire.def_vector(
            "Number", "Dome & Co", "TEMPERATURE", {"T": "1.5"},
            {"T": {"label": "Inside", "format": "%6.2f", "min": "-50", "max": "50", "step": "0.1"}},
            label="Temperature", group="Main", state="Idle", perm="rw", message=None,
        )
        (parsed,) = Parser().feed(built.raw)
        self.assertEqual((parsed.tag, parsed.device, parsed.name), ("defNumberVector", "Dome & Co", "TEMPERATURE"))
        self.assertEqual(parsed.attrs, built.attrs)
        self.assertNotIn("message", parsed.attrs)
        self.assertRegex(parsed.attrs["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
        (member,) = ElementTree.fromstring(built.raw)
        self.assertEqual(member.tag, "defNumber")
        self.assertEqual(
            member.attrib, {"name": "T", "label": "Inside", "format": "%6.2f", "min": "-50", "max": "50", "step": "0.1"}
        )
        self.assertEqual(member.text, "1.5")

    def test_def_blob_vector_members_empty(self) -> None:
        """A BLOB property's definition has empty defBLOB members and carries no BLOB."""
        built = wire.def_vector("BLOB", "CCD", "IMAGE", {"IMAGE": None}, state="Idle", perm="ro")
        (member,) = ElementTree.fromstring(built.raw)
        self.assertEqual((member.tag, member.text), ("defBLOB", None))
        self.assertFalse(Parser().feed(built.raw)[0].blob)

    def test_set_vector(self) -> None:
        """set_vector gives members new values in one* elements, with state and message."""
        built = wire.set_vector("Switch", "Dev", "CONNECTION", {"CONNECT": "On", "DISCONNECT": "Off"},
                                state="Ok", message="a<b")
        element = ElementTree.fromstring(built.raw)
        self.assertEqual(element.tag, "setSwitchVector")
        self.assertEqual(element.get("message"), "a<b")
        self.assertEqual([(one.tag, one.get("name"), one.text) for one in element],
                         [("oneSwitch", "CONNECT", "On"), ("oneSwitch", "DISCONNECT", "Off")])

    def test_set_blob_vector(self) -> None:
        """set_blob_vector carries each member's data base64-encoded with size, format and enclen; it is a BLOB."""
        data = bytes(range(256))
        built = wire.set_blob_vector("CCD", "IMAGE", {"IMAGE": (data, ".fits")}, state="Ok")
        (parsed,) = Parser().feed(built.raw)
        self.assertTrue(parsed.blob and built.blob)
        (blob,) = ElementTree.fromstring(built.raw)
        self.assertEqual(base64.b64decode(blob.text), data)
        self.assertEqual((blob.get("size"), blob.get("format"), blob.get("enclen")),
                         ("256", ".fits", str(len(blob.text))))

    def test_new_vector(self) -> None:
        """new_vector is a client's request, escaped, without a timestamp unless given."""
        built = wire.new_vector("Text", "Dev", "SITE", {"NAME": "x & y"})
        element = ElementTree.fromstring(built.raw)
        self.assertEqual((element.tag, element.attrib), ("newTextVector", {"device": "Dev", "name": "SITE"}))
        self.assertEqual(element[0].text, "x & y")

    def test_vector_kinds_checked(self) -> None:
        """An unknown kind, or BLOB values through set_vector or new_vector, is a ValueError."""
        self.assertRaises(ValueError, wire.def_vector, "Numbers", "D", "P", {})
        self.assertRaises(ValueError, wire.set_vector, "BLOB", "D", "P", {})
        self.assertRaises(ValueError, wire.new_vector, "BLOB", "D", "P", {})

    def test_values_written_with_str(self) -> None:
        """Numbers may be given as numbers, for values and attributes alike."""
        built = wire.set_vector("Number", "Dev", "T", {"T": 21.5}, timeout=60)
        element = ElementTree.fromstring(built.raw)
        self.assertEqual((element[0].text, element.get("timeout")), ("21.5", "60"))

    def test_compressed_blob_size(self) -> None:
        """A compressed BLOB carries the size it was given, its size before compression."""
        built = wire.set_blob_vector("CCD", "IMAGE", {"IMAGE": (b"zz", ".fits.z", 2880)})
        (blob,) = ElementTree.fromstring(built.raw)
        self.assertEqual((blob.get("size"), blob.get("enclen")), ("2880", "4"))

    def test_built_blob_flags_as_parsed(self) -> None:
        """A built message is flagged blob and stream exactly as the parser flags it read back."""
        for built in (
            wire.set_blob_vector("CCD", "VIDEO", {"FRAME": (b"x", ".stream_jpg")}),
            wire.set_blob_vector("CCD", "IMAGE", {"IMAGE": (b"x", ".fits")}),
            wire.set_blob_vector("CCD", "IMAGE", {}),
            wire.def_vector("BLOB", "CCD", "IMAGE", {"IMAGE": None}),
        ):
            (parsed,) = Parser().feed(built.raw)
            self.assertEqual((built.blob, built.stream), (parsed.blob, parsed.stream), built.raw)

    def test_bad_attribute_names_refused(self) -> None:
        """An attribute name that is not a plain XML name is a ValueError, not markup let in."""
        self.assertRaises(ValueError, wire.def_vector, "Text", "D", "P", {"A": "x"}, {"A": {'x"/><y z="': "1"}})
        self.assertRaises(ValueError, wire.set_vector, "Text", "D", "P", {"A": "x"}, **{"bad name": "1"})

    def test_characters_xml_forbids_dropped(self) -> None:
        """Control characters and lone surrogates in values are dropped, so the message still parses."""
        built = wire.set_vector("Text", "D", "P", {"A": "a\x01b\udc80c"})
        (parsed,) = Parser().feed(built.raw)
        self.assertEqual(ElementTree.fromstring(parsed.raw)[0].text, "abc")


class CountingBuffer(bytearray):
    """A parser buffer that adds up how many bytes its searches may look at, and its slices copy."""

    examined = 0
    sliced = 0

    def __getitem__(self, key):  # type: ignore[no-untyped-def, override]
        got = super().__getitem__(key)
        if isinstance(key, slice):
            self.sliced += len(got)
        return got

    def find(self, sub, start=0, end=None):  # type: ignore[no-untyped-def, override]
        stop = len(self) if end is None else min(end, len(self))
        self.examined += max(0, stop - (start if start >= 0 else len(self) + start))
        return super().find(sub, start, stop)

    def rfind(self, sub, start=0, end=None):  # type: ignore[no-untyped-def, override]
        stop = len(self) if end is None else min(end, len(self))
        self.examined += max(0, stop - (start if start >= 0 else len(self) + start))
        return super().rfind(sub, start, stop)


def counting_parser(limits: Limits = Limits()) -> tuple[Parser, CountingBuffer]:
    """A parser whose buffer counts the bytes its searches look at."""
    parser = Parser(limits)
    buffer = parser._buffer = CountingBuffer()
    return parser, buffer


class BoundedWorkTests(SynchronousTestCase):
    """However a peer cuts its input, the parser's work follows what it sends."""

    def test_long_name_dribbled_after_its_start_tag(self) -> None:
        """Bytes dribbled into an element with a long name are each searched once, not with the whole end tag."""
        name = b"x" * (60 * KiB)
        parser, buffer = counting_parser(Limits(max_attributes=1))
        parser.feed(b"<" + name + b">")
        buffer.examined = 0
        for _ in range(5000):
            parser.feed(b"y")
        # A read costs a look at a few dozen bytes, not the whole end tag or body.
        self.assertLess(buffer.examined, 5000 * 100)
        (message,) = parser.feed(b"</" + name + b">")
        self.assertEqual(message.raw, b"<" + name + b">" + b"y" * 5000 + b"</" + name + b">")

    def test_long_end_tag_name_dribbled(self) -> None:
        """An end tag with a long name, arriving a byte at a time, costs each byte a bounded look."""
        name = b"x" * (60 * KiB)
        end = b"</" + name + b"  >"
        parser, buffer = counting_parser(Limits(max_attributes=1))
        parser.feed(b"<" + name + b">")
        buffer.examined = 0
        messages = []
        for offset in range(len(end)):
            messages += parser.feed(end[offset : offset + 1])
        self.assertLess(buffer.examined, 100 * len(end))
        self.assertEqual([m.raw for m in messages], [b"<" + name + b">" + end])

    def test_many_attributes_refused_before_expat(self) -> None:
        """A start tag with 10,000 attributes is refused without expat reading it, top-level or child."""
        many = b"".join(b" a%d='x'" % n for n in range(10_000))
        for prefix, tag in [
            (b"", b"<newTextVector" + many + b">"),
            (b"<newTextVector device='a' name='b'>", b"<oneText" + many + b">"),
        ]:
            data = prefix + tag + (b"x</oneText>" if prefix else b"") + b"</newTextVector>"
            for chunk in (len(data), 4 * KiB):
                parser = Parser()
                with self.assertRaises(MalformedElement) as raised:
                    for start in range(0, len(data), chunk):
                        parser.feed(data[start : start + chunk])
                self.assertIn("has more than 64 attributes (limit 64)", raised.exception.reason)
                self.assertLessEqual(parser._checker.fed, len(prefix))

    def test_long_attribute_value_refused_before_expat(self) -> None:
        """An attribute value over the limit is refused without expat reading it; one of as many characters in more bytes is not."""
        limits = Limits(max_attribute_length=1000)
        long = b"<message device='a' message='" + b"x" * 1001 + b"'/>"
        parser = Parser(limits)
        error = self.assertRaises(MalformedElement, parser.feed, long)
        self.assertIn("longer than 1000 characters", error.reason)
        self.assertEqual(parser._checker.fed, 0)
        wide = "\u00e9&amp;\r\n" * 333 + "x"  # 1000 characters in 2998 bytes
        (message,) = Parser(limits).feed(
            b"<message device='a' message='" + wide.encode() + b"'/>"
        )
        self.assertEqual(len(message.attrs["message"]), 1000)

    def test_large_text_checked_as_it_arrives(self) -> None:
        """A 4 MB newTextVector read 64 KiB at a time is given to expat a read's worth at a time."""
        body = b"<oneText name='t'>" + b"lorem ipsum &amp; dolor\n" * (4 * MiB // 24) + b"</oneText>"
        data = b"<newTextVector device='a' name='b'>" + body + b"</newTextVector>"
        parser = Parser()
        messages = []
        for start in range(0, len(data), 64 * KiB):
            before = parser._checker.fed
            messages += parser.feed(data[start : start + 64 * KiB])
            self.assertLessEqual(parser._checker.fed - before, 64 * KiB + wire._CHECKS_FROM)
        self.assertEqual([m.raw for m in messages], [data])
        self.assertEqual(parser._checker.fed, len(data))

    def test_blob_checked_as_it_arrives(self) -> None:
        """A BLOB read 256 KiB at a time has each read's share of its body checked, and expat never reads the body."""
        encoded = base64.encodebytes(b"\x00\xff" * (2 * MiB))
        data = (
            b"<setBLOBVector device='a' name='b'><oneBLOB name='c' size='4194304'"
            b" format='.fits'>" + encoded + b"</oneBLOB></setBLOBVector>"
        )
        parser, buffer = counting_parser()
        messages = []
        for start in range(0, len(data), 256 * KiB):
            buffer.sliced = 0
            messages += parser.feed(data[start : start + 256 * KiB])
            self.assertLessEqual(buffer.sliced, 256 * KiB + 64)
        self.assertEqual([m.raw for m in messages], [data])
        self.assertLess(parser._checker.fed, 200)

    def test_bad_blob_body_refused_whatever_the_chunking(self) -> None:
        """A BLOB body with a bad byte anywhere is refused the same, whole or read in pieces."""
        encoded = b"QUJD" * (64 * KiB)
        for bad in (0, 100, len(encoded) - 1):
            body = encoded[:bad] + b"!" + encoded[bad + 1 :]
            data = b"<setBLOBVector><oneBLOB>" + body + b"</oneBLOB></setBLOBVector>"
            for chunk in (len(data), 1000, 64 * KiB):
                parser = Parser()
                with self.assertRaises(MalformedElement) as raised:
                    for start in range(0, len(data), chunk):
                        parser.feed(data[start : start + chunk])
                self.assertEqual(raised.exception.reason, "oneBLOB body is not base64")


class MarkupLimitTests(SynchronousTestCase):
    """Every markup token inside a message is bounded by Limits.max_markup; text is not."""

    START = b"<newTextVector device='a' name='b'>"
    # Each kind of token, opened and closed, inside the message above.
    KINDS = [
        ("a comment", b"<!--", b"-->"),
        ("a processing instruction", b"<?pi ", b"?>"),
        ("a CDATA section", b"<oneText name='t'><![CDATA[", b"]]></oneText>"),
        ("a tag", b"<oneText name='t' label='", b"'>x</oneText>"),
        ("an entity reference", b"<oneText name='t'>&", b";</oneText>"),
    ]

    def test_long_markup_refused_as_it_arrives(self) -> None:
        """15 MB of comment, instruction, CDATA, tag or reference, full of '>', is refused by the read that takes it past 1 MiB, never held whole nor given to expat whole."""
        limits = Limits(max_element=16 * MiB)
        chunk = b"> " * (32 * KiB)
        for what, opening, _ in self.KINDS:
            if what == "an entity reference":
                chunk = b"a" * (64 * KiB)
            parser = Parser(limits)
            parser.feed(self.START + opening)
            highest = 0
            with self.assertRaises(ElementTooLarge) as raised:
                for _ in range(15 * MiB // len(chunk)):
                    parser.feed(chunk)
                    highest = max(highest, parser.pending)
            self.assertEqual(
                raised.exception.reason,
                f"{what} inside <newTextVector> is longer than {limits.max_markup} bytes",
            )
            # Refused by the read that took it past the limit.
            self.assertLessEqual(highest, limits.max_markup + len(self.START) + len(opening))
            # expat never saw the token, bar CDATA, which it reads as it comes.
            seen = limits.max_markup if what == "a CDATA section" else 0
            self.assertLessEqual(parser._checker.fed, len(self.START) + len(opening) + seen)
            self.assertLess(parser.pending, 100)

    def test_limit_whatever_the_chunking(self) -> None:
        """A token of max_markup bytes passes and one byte more is refused, whole or cut anywhere."""
        limits = Limits(max_markup=100)
        for what, opening, closing in self.KINDS:
            # The token: from its "<" (or "&") to its end, as the lexer counts it.
            head = opening[opening.rindex(b"<") if what != "an entity reference" else -1 :]
            tail = closing[: closing.index(b">") + 1] if what != "an entity reference" else b";"
            for length, refused in ((100, False), (101, True)):
                token = head + b"x" * (length - len(head) - len(tail)) + tail
                self.assertEqual(len(token), length)
                data = self.START + opening + token[len(head) : -len(tail)] + closing + b"</newTextVector>"
                outcomes = set()
                for cut in range(len(data) + 1):
                    parser = Parser(limits)
                    try:
                        got = feed_all(parser, [data[:cut], data[cut:]])
                    except WireError as e:
                        outcomes.add((type(e).__name__, e.reason))
                    else:
                        outcomes.add(tuple(m.raw for m in got))
                self.assertEqual(len(outcomes), 1, (what, length, outcomes))
                (outcome,) = outcomes
                if refused:
                    self.assertEqual(outcome, (
                        "ElementTooLarge", f"{what} inside <newTextVector> is longer than 100 bytes"
                    ))
                elif what == "an entity reference":  # refused, but not for its length
                    self.assertEqual(outcome, ("MalformedElement", "not well-formed XML (undefined entity)"))
                else:
                    self.assertEqual(outcome, (data,), what)

    def test_start_tag_capped(self) -> None:
        """A message's own start tag, and comments between messages, are held to max_markup too."""
        limits = Limits(max_markup=100)
        self.assertEqual(limits.max_tag, 100)
        tag = b"<message message='" + b"x" * 200 + b"'/>"
        for data in (tag, b"<!--" + b"x" * 200 + b"-->"):
            for chunks in ([data], [data[:50], data[50:]], [data[:150], data[150:]]):
                error = self.assertRaises(ElementTooLarge, feed_all, Parser(limits), chunks)
                self.assertIn("longer than 100 bytes", error.reason)
        # With small attribute limits, a start tag's own bound is smaller.
        self.assertEqual(Limits(max_attributes=1, max_attribute_length=8).max_tag, 520)

    def test_text_not_bounded(self) -> None:
        """Text between tags, such as a long oneText value, is not a token: only max_element bounds it."""
        limits = Limits(max_markup=100)
        data = (
            self.START + b"<oneText name='t'>" + b"lorem > ipsum &amp; " * 1000
            + b"</oneText></newTextVector>"
        )
        for chunk in (len(data), 1000):
            parser = Parser(limits)
            messages = feed_all(parser, [data[i : i + chunk] for i in range(0, len(data), chunk)])
            self.assertEqual([m.raw for m in messages], [data])

    def test_long_markup_after_a_bad_tag(self) -> None:
        """A message already refused for a tag's attributes still has its long markup refused as it arrives, not held to max_element."""
        limits = Limits(max_element=16 * MiB, max_attributes=2)
        parser = Parser(limits)
        parser.feed(self.START + b"<oneText a='1' b='2' c='3'>x</oneText><!--")
        with self.assertRaises(ElementTooLarge) as raised:
            for _ in range(4 * MiB // (64 * KiB)):
                parser.feed(b">" * (64 * KiB))
                self.assertLessEqual(parser.pending, limits.max_markup + 100)
        self.assertIn("a comment inside <newTextVector> is longer than", raised.exception.reason)
        # Whole, the first fault (the attributes) decides, as before.
        data = self.START + b"<oneText a='1' b='2' c='3'>x</oneText><!-- -->" + b"</newTextVector>"
        error = self.assertRaises(MalformedElement, Parser(limits).feed, data)
        self.assertIn("has more than 2 attributes", error.reason)
