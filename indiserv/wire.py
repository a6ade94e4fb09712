"""
The INDI wire format: framing a byte stream into messages, and building the
few messages the server writes itself.

INDI is a stream of top-level XML elements with no enclosing document.  The
L{Parser} frames one element at a time with C-speed primitives
(C{bytes.find} for the end tag, a regular expression for the start tag),
then proves the element well-formed with expat before anybody sees it.  The
bodies of C{oneBLOB} elements are checked by their alphabet instead (base64
and whitespace), because expat over tens of megabytes of base64 would cost
more than moving them.  Each L{Message} keeps the exact bytes it arrived as,
so routing never re-serialises anything.

Nothing here imports Twisted: this module is pure data handling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from xml.parsers import expat

__all__ = [
    "Message",
    "Parser",
    "WireError",
    "MalformedElement",
    "ElementTooLarge",
    "escape",
    "message",
    "get_properties",
    "del_property",
    "enable_blob",
    "ping_reply",
    "timestamp",
    "DEFAULT_MAX_ELEMENT",
    "Limits",
]

#: Large enough for a 100-megapixel 16-bit frame, base64-encoded.
DEFAULT_MAX_ELEMENT = 300 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """
    What one stream may make the parser hold or accept.

    @ivar max_element: bytes of one top-level element, BLOBs included.
    @ivar max_attributes: attributes on any one element.
    @ivar max_attribute_length: characters of any one attribute value.
    @ivar max_depth: nesting of elements (INDI itself needs 2).
    """

    max_element: int = DEFAULT_MAX_ELEMENT
    max_attributes: int = 64
    max_attribute_length: int = 64 * 1024
    max_depth: int = 8

    @property
    def max_start_tag(self) -> int:
        """The longest start tag these limits allow, with room for names."""
        return self.max_attributes * (self.max_attribute_length + 256) + 256

_NAME = rb"[A-Za-z_:][-A-Za-z0-9_.:]*"
_ATTRIBUTE = rb"\s+" + _NAME + rb"\s*=\s*(?:\"[^\"<]*\"|'[^'<]*')"
_START_TAG = re.compile(rb"<(" + _NAME + rb")(?:" + _ATTRIBUTE + rb")*\s*(/?)>")
# What an unfinished start tag may look like at the end of the buffer.
_PARTIAL_START_TAG = re.compile(
    rb"<(?:"
    + _NAME
    + rb"(?:"
    + _ATTRIBUTE
    + rb")*(?:\s+(?:"
    + _NAME
    + rb"(?:\s*(?:=\s*(?:\"[^\"<]*|'[^'<]*)?)?)?)?|\s*/)?)?\Z"
)
_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_END_OF_END_TAG = re.compile(rb"[ \t\r\n]*>")
# Where a driver's stream is picked up again after bad input: the start of
# an element that can begin an INDI message, or a declaration.
_RESYNC = re.compile(
    rb"<(?:\?xml|getProperties|def[A-Za-z]+Vector|set[A-Za-z]+Vector"
    rb"|new[A-Za-z]+Vector|message|delProperty|enableBLOB|pingRequest|pingReply)"
    rb"[\s/>]"
)
_RESYNC_TAIL = 32
_BLOB_START = b"<oneBLOB"
_BLOB_END = b"</oneBLOB"
_BASE64_AND_SPACE = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n"
)


class WireError(Exception):
    """
    Input that is not a valid INDI stream.

    @ivar reason: why, for the log.
    @ivar messages: the messages completed before the fault in the same
        call to L{Parser.feed}; they are good and should still be routed.
    """

    def __init__(self, reason: str, messages: list[Message] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.messages = messages if messages is not None else []


class MalformedElement(WireError):
    """Bytes that are not a well-formed element, or not allowed in INDI."""


class ElementTooLarge(WireError):
    """An element grew past the parser's limit before it ended."""


class Message:
    """
    One top-level INDI element: its routing keys and its exact bytes.

    @ivar tag: the element name, such as C{"setNumberVector"}.
    @ivar device: the C{device} attribute, or L{None}.
    @ivar name: the C{name} attribute (the property), or L{None}.
    @ivar attrs: all attributes of the top-level element, decoded.
    @ivar raw: the element exactly as it arrived (or was built).
    @ivar blob: C{True} when the element carries C{oneBLOB} children, that is
        BLOB data, as opposed to a definition or a bare state change.
    @ivar stream: C{True} when a BLOB's format says it is a video stream
        frame, which a client that is far behind may skip.
    @ivar text: the character data directly inside the element (used by
        C{enableBLOB}); empty for everything else.
    """

    __slots__ = ("tag", "device", "name", "attrs", "raw", "blob", "stream", "text")

    def __init__(
        self,
        tag: str,
        attrs: dict[str, str],
        raw: bytes,
        blob: bool = False,
        text: str = "",
    ):
        self.tag = tag
        self.attrs = attrs
        self.device = attrs.get("device")
        self.name = attrs.get("name")
        self.raw = raw
        self.blob = blob
        self.stream = False
        self.text = text

    def __repr__(self) -> str:
        return f"<Message {self.summary()}>"

    def summary(self) -> str:
        """A one-line description for logs: tag, device and property."""
        where = ".".join(part for part in (self.device, self.name) if part)
        size = f" ({len(self.raw)} bytes)" if self.blob else ""
        return f"{self.tag} {where}{size}".rstrip()


class _Inspector:
    """
    Collects the top element's name, attributes and text during one expat
    run, and enforces the attribute and depth limits on every element.
    """

    __slots__ = ("limits", "depth", "tag", "attrs", "blob", "stream", "text")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.depth = 0
        self.tag = ""
        self.attrs: dict[str, str] = {}
        self.blob = False
        self.stream = False
        self.text: list[str] = []

    def start(self, name: str, attrs: dict[str, str]) -> None:
        limits = self.limits
        if len(attrs) > limits.max_attributes:
            raise MalformedElement(
                f"<{name}> has {len(attrs)} attributes (limit {limits.max_attributes})"
            )
        for value in attrs.values():
            if len(value) > limits.max_attribute_length:
                raise MalformedElement(
                    f"an attribute of <{name}> is longer than"
                    f" {limits.max_attribute_length} characters"
                )
        if self.depth == 0:
            self.tag = name
            self.attrs = attrs
        elif name == "oneBLOB":
            self.blob = True
            if "stream" in attrs.get("format", ""):
                self.stream = True
        self.depth += 1
        if self.depth > limits.max_depth:
            raise MalformedElement(f"elements nested deeper than {limits.max_depth}")

    def end(self, name: str) -> None:
        self.depth -= 1

    def chars(self, data: str) -> None:
        if self.depth == 1:
            self.text.append(data)

    def doctype(self, *args: object) -> None:
        raise MalformedElement("document type declarations are not allowed")

    def entity(self, *args: object) -> None:
        raise MalformedElement("entity declarations are not allowed")


def _inspect(raw: bytes, limits: Limits) -> Message:
    """
    Prove C{raw} is one well-formed element and read its routing keys.

    BLOB bodies are cut out and checked by alphabet; what remains goes
    through expat, which rejects anything that is not well-formed XML,
    including invalid UTF-8 and undefined entities.
    """
    checked = raw
    if _BLOB_START in raw:
        checked = _without_blob_bodies(raw)
    inspector = _Inspector(limits)
    parser = expat.ParserCreate("UTF-8")
    parser.StartElementHandler = inspector.start
    parser.EndElementHandler = inspector.end
    parser.CharacterDataHandler = inspector.chars
    parser.StartDoctypeDeclHandler = inspector.doctype
    parser.EntityDeclHandler = inspector.entity
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(checked, True)
    except expat.ExpatError as e:
        raise MalformedElement(
            f"not well-formed XML ({expat.ErrorString(e.code)}, offset {e.offset})"
        ) from None
    message = Message(
        inspector.tag,
        inspector.attrs,
        raw,
        inspector.blob,
        "".join(inspector.text).strip(),
    )
    message.stream = inspector.stream
    return message


def _without_blob_bodies(raw: bytes) -> bytes:
    """C{raw} with every C{oneBLOB} body removed, after checking each is base64."""
    parts = []
    kept = 0
    position = raw.find(_BLOB_START)
    while position >= 0:
        start_tag = _START_TAG.match(raw, position)
        if start_tag is None:
            raise MalformedElement("malformed oneBLOB start tag")
        if start_tag.group(1) != b"oneBLOB" or start_tag.group(2):
            position = raw.find(_BLOB_START, start_tag.end())
            continue
        body_end = raw.find(_BLOB_END, start_tag.end())
        if body_end < 0:
            raise MalformedElement("oneBLOB element is not closed")
        body = raw[start_tag.end() : body_end]
        if body.translate(None, _BASE64_AND_SPACE):
            raise MalformedElement("oneBLOB body is not base64")
        parts.append(raw[kept : start_tag.end()])
        kept = body_end
        position = raw.find(_BLOB_START, body_end)
    parts.append(raw[kept:])
    return b"".join(parts)


class Parser:
    """
    Incremental framer of one INDI stream.

    Feed it bytes as they arrive; it returns the messages completed so far.
    On bad input it raises a L{WireError} (carrying the good messages that
    came before), drops the bad bytes and resynchronises at the next element
    that can begin an INDI message, so a caller that wants to go on (a
    driver link) calls C{feed(b"")} to get what follows.

    @ivar limits: the L{Limits} it enforces.
    """

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        self._buffer = bytearray()
        # The element being read (always at offset 0 of the buffer), if any.
        self._end_tag: bytes | None = None
        self._search_from = 0
        self._resyncing = False

    @property
    def pending(self) -> int:
        """Bytes held for an element that has not ended yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        """Add C{data} to the stream; return the messages it completed."""
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        try:
            while buffer:
                if self._resyncing and not self._resync():
                    break
                if self._end_tag is None:
                    if not self._read_start(messages):
                        break
                elif not self._read_to_end(messages):
                    break
        except WireError as e:
            e.messages = messages
            raise
        if len(buffer) > self.limits.max_element:
            # Drop the oversized element's "<" so resynchronising moves past it.
            self._fail_resync(1)
            self._resync()
            raise ElementTooLarge(
                f"element larger than {self.limits.max_element} bytes", messages
            )
        return messages

    def _resync(self) -> bool:
        """Discard input up to the next plausible message start."""
        buffer = self._buffer
        found = _RESYNC.search(buffer)
        if found is None:
            del buffer[: max(0, len(buffer) - _RESYNC_TAIL)]
            return False
        del buffer[: found.start()]
        self._resyncing = False
        return True

    def _fail_resync(self, drop: int) -> None:
        del self._buffer[:drop]
        self._end_tag = None
        self._search_from = 0
        self._resyncing = True

    def _read_start(self, messages: list[Message]) -> bool:
        """Consume what lies between elements and the next start tag."""
        buffer = self._buffer
        start = _WHITESPACE.match(buffer).end()
        if start == len(buffer):
            buffer.clear()
            return False
        if buffer[start] != 0x3C:  # "<"
            self._fail_resync(start + 1)
            raise MalformedElement("text outside any element")
        if start:
            del buffer[:start]
        if len(buffer) < 2:
            return False
        second = buffer[1]
        if second == 0x3F:  # "<?": declaration or processing instruction
            return self._skip_to(b"?>")
        if buffer.startswith(b"<!--"):
            return self._skip_to(b"-->")
        if second == 0x21:  # "<!"
            if len(buffer) < 4 and b"<!--".startswith(bytes(buffer)):
                return False
            self._fail_resync(1)
            raise MalformedElement(
                "markup declarations (DOCTYPE, ENTITY, CDATA) are not allowed "
                "between messages"
            )
        start_tag = _START_TAG.match(buffer)
        if start_tag is None:
            if _PARTIAL_START_TAG.match(buffer):
                if len(buffer) > self.limits.max_start_tag:
                    self._fail_resync(1)
                    raise ElementTooLarge(
                        f"start tag longer than {self.limits.max_start_tag} bytes"
                    )
                return False
            self._fail_resync(1)
            raise MalformedElement("malformed start tag")
        if start_tag.group(2):
            self._emit(start_tag.end(), messages)
            return True
        self._end_tag = b"</" + start_tag.group(1)
        self._search_from = start_tag.end()
        return True

    def _skip_to(self, terminator: bytes) -> bool:
        end = self._buffer.find(terminator, 2)
        if end < 0:
            return False
        del self._buffer[: end + len(terminator)]
        return True

    def _read_to_end(self, messages: list[Message]) -> bool:
        """Look for the end tag of the element being read."""
        buffer = self._buffer
        end_tag = self._end_tag
        assert end_tag is not None
        while True:
            found = buffer.find(end_tag, self._search_from)
            if found < 0:
                self._search_from = max(
                    self._search_from, len(buffer) - len(end_tag) + 1
                )
                return False
            after = found + len(end_tag)
            closing = _END_OF_END_TAG.match(buffer, after)
            if closing is not None:
                self._end_tag = None
                self._emit(closing.end(), messages)
                return True
            if _WHITESPACE.match(buffer, after).end() == len(buffer):
                self._search_from = found
                return False
            # A longer name sharing the prefix, such as </setTextVectorX>.
            self._search_from = found + 1

    def _emit(self, end: int, messages: list[Message]) -> None:
        raw = bytes(self._buffer[:end])
        del self._buffer[:end]
        self._search_from = 0
        messages.append(_inspect(raw, self.limits))


def timestamp(when: datetime | None = None) -> str:
    """An INDI timestamp (UTC, ISO 8601 without zone) for C{when} or now."""
    if when is None:
        when = datetime.now(timezone.utc)
    elif when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.replace(tzinfo=None, microsecond=0).isoformat(sep="T")


# Characters XML 1.0 forbids, which must never reach a peer.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_ATTRIBUTE_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)


def escape(text: str) -> str:
    """
    C{text} made safe for an XML attribute value (or character data):
    markup escaped, characters XML forbids removed.
    """
    return _NOT_XML.sub("", text).translate(_ATTRIBUTE_ESCAPES)


def _build(tag: str, attrs: dict[str, str | None], text: str | None = None) -> Message:
    """Serialise a message the server writes itself."""
    present = {key: str(value) for key, value in attrs.items() if value is not None}
    rendered = "".join(f' {key}="{escape(value)}"' for key, value in present.items())
    if text is None:
        xml = f"<{tag}{rendered}/>\n"
    else:
        xml = f"<{tag}{rendered}>{escape(text)}</{tag}>\n"
    return Message(tag, present, xml.encode("utf-8"), text=text or "")


def message(
    text: str | None,
    device: str | None = None,
    when: datetime | str | None = None,
) -> Message:
    """A C{message} element, from the server or about a C{device}."""
    if not isinstance(when, str):
        when = timestamp(when)
    return _build("message", {"device": device, "timestamp": when, "message": text})


def get_properties(
    device: str | None = None, name: str | None = None, version: str = "1.7"
) -> Message:
    """A C{getProperties} request, for everything or one device or property."""
    return _build("getProperties", {"version": version, "device": device, "name": name})


def del_property(
    device: str, name: str | None = None, text: str | None = None
) -> Message:
    """A C{delProperty} telling clients a device (or one property) is gone."""
    return _build(
        "delProperty",
        {"device": device, "name": name, "timestamp": timestamp(), "message": text},
    )


def enable_blob(policy: str, device: str, name: str | None = None) -> Message:
    """An C{enableBLOB} asking a server to send (or withhold) BLOBs."""
    return _build("enableBLOB", {"device": device, "name": name}, policy)


def ping_reply(uid: str) -> Message:
    """The answer to a C{pingRequest}."""
    return _build("pingReply", {"uid": uid})
