"""
The INDI wire format: framing a byte stream into messages, and building the
few messages the server writes itself.

INDI is a stream of top-level XML elements with no enclosing document.  The
L{Parser} frames one element at a time with C-speed primitives
(C{bytes.find} for the end tag, a regular expression for the start tag),
and proves the element well-formed with expat before anybody sees it.  The
bodies of C{oneBLOB} elements are checked by their alphabet instead (base64
and whitespace), because expat over tens of megabytes of base64 would cost
more than moving them.  These checks advance as the element's bytes arrive,
so no read costs more than its own size (bar one markup token, which
expat checks whole and L{Limits.max_markup} bounds: a token growing past
it is refused while it arrives), and every tag is held to the attribute
limits before expat sees it.  Each L{Message} keeps the exact bytes it
arrived as, so routing never re-serialises anything.

Nothing here imports Twisted: this module is pure data handling.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Iterator, Mapping, NoReturn
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
    "ping_request",
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
    @ivar max_markup: bytes of any one markup token inside a message: a
        tag, comment, processing instruction, CDATA section or entity
        reference (character data between tags is not bounded by it).
        expat checks a token only once it is whole, so this bounds what
        one read can cost.
    """

    max_element: int = DEFAULT_MAX_ELEMENT
    max_attributes: int = 64
    max_attribute_length: int = 64 * 1024
    max_depth: int = 8
    max_markup: int = 1024 * 1024

    @property
    def max_start_tag(self) -> int:
        """The longest start tag the attribute limits allow, with room for names."""
        return self.max_attributes * (self.max_attribute_length + 256) + 256

    @property
    def max_tag(self) -> int:
        """The longest start tag allowed: L{max_start_tag}, capped by L{max_markup}."""
        return min(self.max_start_tag, self.max_markup)

_NAME = rb"[A-Za-z_:][-A-Za-z0-9_.:]*"
_ATTRIBUTE = rb"\s+" + _NAME + rb"\s*=\s*(?:\"[^\"<]*\"|'[^'<]*')"
_START_TAG = re.compile(rb"<(" + _NAME + rb")(?:" + _ATTRIBUTE + rb")*\s*(/?)>")
_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_BYTE_ORDER_MARK = b"\xef\xbb\xbf"
_NAME_START = re.compile(rb"[A-Za-z_:]")
# A tag's text up to its ">" or to a quote that has not closed yet.
_TAG_TEXT = re.compile(rb"[^>\"']*(?:(?:\"[^\"]*\"|'[^']*')[^>\"']*)*")
_QUOTED = re.compile(rb"\"[^\"]*\"|'[^']*'")
_TAG_NAME = re.compile(rb"[^ \t\r\n/>]*")
_REFERENCE = re.compile(rb"&[^;&]*;")
_UTF8_CONTINUATION = bytes(range(0x80, 0xC0))
# Whitespace allowed between an end tag's name and its ">".
_MAX_END_TAG_SPACE = 1024
# How much of an end tag's name a search looks for; the rest is compared
# as it arrives.
_END_TAG_PREFIX = 64
_END_OF_END_TAG = re.compile(rb"[ \t\r\n]*>")
# Where a driver's stream is picked up again after bad input: the start of
# an element that can begin an INDI message, or a declaration.
_RESYNC = re.compile(
    rb"<(?:\?xml|getProperties|(?:def|set|new)(?:Text|Number|Switch|Light|BLOB)Vector"
    rb"|message|delProperty|enableBLOB|pingRequest|pingReply)"
    rb"[\s/>]"
)
_RESYNC_TAIL = 32
_BLOB_START = b"<oneBLOB"
_BLOB_END = b"</oneBLOB"
_BASE64_AND_SPACE = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n"
)
# Where the BLOB scan of an element is (see _Element).
_SEEK, _BLOB_TAG, _BODY = range(3)
# Markup whose first bytes do not yet say which it is.
_OPENINGS = (b"<!--", b"<![CDATA[")
_NOT_MARKUP = bytes(sorted(set(range(256)) - set(b"<'\"")))
# How much of an element may arrive before its checks begin: a small one
# split between reads is checked whole at its end, which is quicker.
_CHECKS_FROM = 16 * 1024
# How much of a BLOB body is copied at a time to check its alphabet.
_PIECE = 1024 * 1024


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


class _Checker:
    """
    Proves elements well-formed with one long-lived expat parser, fed each
    element's bytes as they arrive.

    The parser is primed with a synthetic root element, and each framed
    message is fed to it as that root's next child, so no parser is built
    per message.  After a message, expat must be back at the root with the
    message's element closed; otherwise (a comment or CDATA section left
    open, say) the message is refused.  The first fault found in an element
    is kept until the element ends, and the parser is rebuilt, since expat
    cannot go on after an error.

    It also reads the message's routing keys and enforces the attribute and
    depth limits on every element.

    @ivar fed: bytes given to expat so far, to show its work follows the input.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.fed = 0
        self._new_parser()
        self.begin(False)

    def _new_parser(self) -> None:
        parser = expat.ParserCreate("UTF-8")
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.Parse(b"<indiserv-stream>", False)
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.StartDoctypeDeclHandler = self._doctype
        parser.EntityDeclHandler = self._entity
        self._parser = parser
        self._depth = 1
        self._closed = False

    def begin(self, enable_blob: bool) -> None:
        """Expect a new element; keep its character data if C{enable_blob}."""
        self.fault: WireError | None = None
        self._attrs: dict[str, str] = {}
        self._tag = ""
        self._blob = self._stream = self._closed = False
        self._enable_blob = enable_blob
        if enable_blob:
            self._text: list[str] = []
            self._parser.CharacterDataHandler = self._chars

    def feed(self, data: bytes | bytearray) -> None:
        """Check the next bytes of the element, unless it is already refused."""
        if self.fault is not None or not data:
            return
        self.fed += len(data)
        try:
            self._parser.Parse(data, False)
        except expat.ExpatError as e:
            self.refuse(MalformedElement(
                f"not well-formed XML ({expat.ErrorString(e.code)})"
            ))
        except WireError as e:
            # Its traceback would keep a view of the parser's buffer alive.
            self.refuse(e.with_traceback(None))

    def check(self, raw: bytes, enable_blob: bool) -> Message:
        """The L{Message} for C{raw}, a whole element with no BLOB body (L{begin}, L{feed}, L{finish})."""
        self.begin(enable_blob)
        self.feed(raw)
        return self.finish(raw)

    def refuse(self, fault: WireError) -> None:
        """Refuse the element (unless it already is) and start afresh."""
        if self.fault is None:
            self.fault = fault
        self._new_parser()

    def finish(self, raw: bytes) -> Message:
        """
        The L{Message} for C{raw}, once all of it (bar its BLOB bodies) has
        been fed.

        @raise WireError: the element's first fault.
        """
        if self.fault is None and (self._depth != 1 or not self._closed):
            self.refuse(MalformedElement(
                "not well-formed XML (the element does not end where it seems to:"
                " an unclosed comment, CDATA section or instruction)"
            ))
        if self.fault is not None:
            raise self.fault
        message = Message(self._tag, self._attrs, raw, self._blob)
        message.stream = self._stream
        if self._enable_blob:
            self._parser.CharacterDataHandler = None
            message.text = "".join(self._text).strip()
        return message

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        limits = self.limits
        if len(attrs) > limits.max_attributes:
            raise MalformedElement(_too_many_attributes(name, limits))
        for value in attrs.values():
            if len(value) > limits.max_attribute_length:
                raise MalformedElement(_attribute_too_long(name, limits))
        depth = self._depth
        if depth == 1:
            if self._closed:
                raise MalformedElement("more than one element where one was framed")
            self._tag = name
            self._attrs = attrs
        elif name == "oneBLOB":
            self._blob = True
            if "stream" in attrs.get("format", ""):
                self._stream = True
        depth += 1
        self._depth = depth
        if depth - 1 > limits.max_depth:
            raise MalformedElement(f"elements nested deeper than {limits.max_depth}")

    def _end(self, name: str) -> None:
        self._depth -= 1
        if self._depth == 1:
            self._closed = True

    def _chars(self, data: str) -> None:
        if self._depth == 2:
            self._text.append(data)

    def _doctype(self, *args: object) -> None:
        raise MalformedElement("document type declarations are not allowed")

    def _entity(self, *args: object) -> None:
        raise MalformedElement("entity declarations are not allowed")


def _too_many_attributes(name: str, limits: Limits) -> str:
    limit = limits.max_attributes
    return f"<{name}> has more than {limit} attributes (limit {limit})"


def _attribute_too_long(name: str, limits: Limits) -> str:
    return (
        f"an attribute of <{name}> is longer than"
        f" {limits.max_attribute_length} characters"
    )


def _scan_tag(
    buffer: bytearray, position: int, quote: bytes | None, end: int
) -> tuple[int, int, bytes | None]:
    """
    Go on scanning a tag, respecting quotes, from C{position} (inside
    C{quote}, unless None) to no further than C{end}.

    @return: where the tag ends (just past its ">"), or -1; where to go on
        scanning; the quote open there.
    """
    if quote is not None:
        closing = buffer.find(quote, position, end)
        if closing < 0:
            return -1, end, quote
        position = closing + 1
    position = _TAG_TEXT.match(buffer, position, end).end()  # type: ignore[union-attr]
    if position == end:
        return -1, end, None
    if buffer[position] == 0x3E:  # ">"
        return position + 1, position + 1, None
    return -1, end, bytes(buffer[position : position + 1])


def _characters(value: bytes) -> int:
    """How many characters expat makes of attribute value C{value}, if well-formed."""
    value = _REFERENCE.sub(b"&", value).translate(None, _UTF8_CONTINUATION)
    return len(value) - value.count(b"\r\n")


def _not_base64(buffer: bytearray, start: int, end: int) -> bool:
    """Whether C{buffer[start:end]} holds anything but base64 and whitespace."""
    for piece in range(start, end, _PIECE):
        if buffer[piece : min(piece + _PIECE, end)].translate(None, _BASE64_AND_SPACE):
            return True
    return False


class _Element:
    """
    What is known so far about the element being read, whose checks
    advance as its bytes arrive (see L{Parser._advance}).
    """

    __slots__ = (
        "fed", "lexed", "scanned", "opened", "terminator", "resume", "quote",
        "token_at", "token_what", "token_bound", "fault", "fault_at",
        "blob_state", "blob_at", "blob_resume", "blob_quote", "body_checked",
        "body_bad", "bodies", "blob_fault",
    )

    def __init__(self, body: int) -> None:
        # Given to expat up to here, bar BLOB bodies.
        self.fed = 0
        # Tags vetted up to here; the markup open there, if any: where it
        # opened (-1 for CDATA, which expat may read as it comes), what
        # ends it (None for a tag), where its scan goes on, the quote open.
        self.lexed = self.scanned = body
        self.opened = -1
        self.terminator: bytes | None = None
        self.resume = 0
        self.quote: bytes | None = None
        # The markup token open (CDATA included), if any: where it opened
        # (or -1), what it is, for a log, and how long it may be.
        self.token_at = -1
        self.token_what = ""
        self.token_bound = 0
        # The first tag that breaks the attribute limits, and where it opens.
        self.fault: WireError | None = None
        self.fault_at = -1
        # BLOB bodies: looking for one from blob_at (_SEEK), reading the
        # start tag at blob_at (_BLOB_TAG), or the body from blob_at (_BODY).
        self.blob_state = _SEEK
        self.blob_at = 0
        self.blob_resume = 0
        self.blob_quote: bytes | None = None
        self.body_checked = 0
        self.body_bad = False
        # Bodies found whole, which expat is not to see: (start, end).
        self.bodies: list[tuple[int, int]] = []
        self.blob_fault: WireError | None = None


class Parser:
    """
    Incremental framer of one INDI stream.

    Feed it bytes as they arrive; it returns the messages completed so far.
    On bad input it raises a L{WireError} (carrying the good messages that
    came before), drops the bad bytes and resynchronises at the next element
    that can begin an INDI message, so a caller that wants to go on (a
    driver link) calls C{feed(b"")} to get what follows.

    Every scan resumes where the previous feed stopped, so the cost is
    linear in the input however it is cut up.

    @ivar limits: the L{Limits} it enforces.
    """

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        self._checker = _Checker(limits)
        self._buffer = bytearray()
        self._resyncing = False
        self._at_stream_start = True
        # An unfinished start tag at offset 0: where its scan stopped, and
        # the quote it stopped inside.
        self._scan_from = 1
        self._scan_quote: bytes | None = None
        # An unfinished comment or processing instruction at offset 0.
        self._skip_from = 0
        # The element being read (always at offset 0 of the buffer), if any:
        # its end tag, and where to look for it next.
        self._end_tag: bytes | None = None
        self._search_from = 0
        # A place where the end tag may begin (or -1): how many of its bytes
        # matched so far, and how far the whitespace after its name goes.
        self._candidate = -1
        self._matched = 0
        self._space_from = 0
        # The checks of the element being read, and what they need to know.
        self._element: _Element | None = None
        self._body = 0
        self._end_prefix = b""
        self._fewest_for_too_many = 5 * (limits.max_attributes + 1) + 3
        # The longest start tag, and the longest of any other markup token.
        self._max_tag = limits.max_tag
        self._max_markup = limits.max_markup
        # More quoted values in a tag than it may have attributes, and a
        # cheap test for whether any tag could: a "<" followed by more
        # quotes than that before the next "<" (no "<" may be in a tag),
        # both once all but those characters are dropped.
        self._too_many = re.compile(
            rb"(?:\"[^\"<]*\"|'[^'<]*'){%d}" % (limits.max_attributes + 1)
        )
        # A start tag whose attributes are within the limit, whose regular
        # expression costs in proportion to the limit, not the attributes.
        self._start_tag = re.compile(
            rb"<(" + _NAME + rb")(?:" + _ATTRIBUTE + rb"){0,%d}\s*(/?)>" % limits.max_attributes
        )
        self._crowded = re.compile(rb"<[\"']{%d}" % (2 * (limits.max_attributes + 1)))

    @property
    def pending(self) -> int:
        """Bytes held for an element that has not ended yet."""
        return len(self._buffer)

    def read(self, data: bytes) -> Iterator[Message | WireError]:
        """
        Add C{data} to the stream; yield, in stream order, each message it
        completes and each error in it.  After an error the parser has
        resynchronised, and reading goes on past the bad element.
        """
        # An error drops at least one byte, so this many rounds suffice;
        # running out of them is a bug in the parser, never bad input.
        for _ in range(len(data) + len(self._buffer) + 2):
            try:
                messages = self.feed(data)
            except WireError as error:
                yield from error.messages
                yield error
                data = b""
            else:
                yield from messages
                return
        raise AssertionError("the parser stopped making progress")

    def feed(self, data: bytes) -> list[Message]:
        """
        Add C{data} to the stream; return the messages it completed.

        @raise WireError: bad input; the messages completed before it are
            its C{messages}, and C{feed(b"")} goes on after it (L{read}
            does all that).
        """
        buffer = self._buffer
        buffer += data
        if self._at_stream_start:
            if len(buffer) < 3 and _BYTE_ORDER_MARK.startswith(buffer):
                return []
            self._at_stream_start = False
            if buffer.startswith(_BYTE_ORDER_MARK):
                del buffer[:3]
        messages: list[Message] = []
        try:
            while buffer:
                if self._resyncing and not self._resync():
                    break
                if self._end_tag is None:
                    if not self._read_start(messages):
                        break
                elif not self._read_to_end(messages):
                    if self._end_tag is not None and (
                        len(buffer) > _CHECKS_FROM
                        or self._element is not None
                        or len(buffer) - self._body > self._max_tag
                    ):
                        # The last test: a token inside may be too long.
                        self._advance(self._safe_end())
                    break
            if len(buffer) > self.limits.max_element:
                if self._end_tag is not None:
                    self._too_large()
                self._fail(ElementTooLarge(
                    f"element larger than {self.limits.max_element} bytes"
                ))
        except WireError as e:
            e.messages = messages
            raise
        return messages

    def _fail(self, error: WireError, drop: int = 1) -> NoReturn:
        """
        Drop the first C{drop} bytes (at least the "<" of the bad element, so
        resynchronising moves past it), start resynchronising, and raise.
        """
        del self._buffer[:drop]
        if self._element is not None:
            self._element = None
            self._checker.refuse(error)
        self._end_tag = None
        self._scan_from = 1
        self._scan_quote = None
        self._skip_from = 0
        self._resyncing = True
        self._resync()
        raise error

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

    def _read_start(self, messages: list[Message]) -> bool:
        """Consume what lies between elements and the next start tag."""
        buffer = self._buffer
        if self._scan_from == 1 and self._skip_from == 0:
            start = _WHITESPACE.match(buffer).end()
            if start == len(buffer):
                buffer.clear()
                return False
            if buffer[start] != 0x3C:  # "<"
                self._fail(MalformedElement("text outside any element"), start + 1)
            if start:
                del buffer[:start]
            if len(buffer) < 2:
                return False
            second = buffer[1]
            if second == 0x3F:  # "<?": declaration or processing instruction
                return self._skip_to(b"?>", 2)
            if second == 0x21:  # "<!"
                if buffer.startswith(b"<!--"):
                    return self._skip_to(b"-->", 4)
                if len(buffer) < 4 and b"<!--".startswith(bytes(buffer)):
                    return False
                self._fail(MalformedElement(
                    "markup declarations (DOCTYPE, ENTITY, CDATA) are not allowed "
                    "between messages"
                ))
            if not _NAME_START.match(buffer, 1):
                self._fail(MalformedElement("malformed start tag"))
            start_tag = self._start_tag.match(buffer)
            if start_tag is not None:  # the usual case: the whole tag is here
                return self._start_tag_read(
                    start_tag.group(1), bool(start_tag.group(2)), start_tag.end(), messages
                )
        elif self._skip_from:
            return self._skip_to(b"-->" if buffer[1] == 0x21 else b"?>", 0)
        end, self._scan_from, self._scan_quote = _scan_tag(
            buffer, self._scan_from, self._scan_quote, len(buffer)
        )
        if end < 0:
            self._check_length(len(buffer), "start tag")
            return False
        self._check_length(end, "start tag")
        self._scan_from = 1
        self._scan_quote = None
        markup = self._markup(0, end)
        if markup is not None:
            if b"<" in markup:  # which no start tag may hold
                self._fail(MalformedElement("malformed start tag"))
            if self._too_many.match(markup):
                # Refused when the element ends, without a regular
                # expression over every attribute, which costs like expat.
                name = _TAG_NAME.match(buffer, 1).group()  # type: ignore[union-attr]
                return self._start_tag_read(name, buffer[end - 2] == 0x2F, end, messages)
        start_tag = _START_TAG.match(buffer, 0, end)
        if start_tag is None or start_tag.end() != end:
            self._fail(MalformedElement("malformed start tag"))
        return self._start_tag_read(
            start_tag.group(1), bool(start_tag.group(2)), end, messages
        )

    def _start_tag_read(
        self, name: bytes, empty: bool, end: int, messages: list[Message]
    ) -> bool:
        """Go on from a complete start tag at offset 0, of element C{name}, C{empty} or not."""
        self._check_length(end, "start tag")
        # The element's checks start when its bytes do not all come at
        # once (see _element_state), or when its start tag is at fault.
        self._body = end
        self._element = None
        if end >= self._fewest_for_too_many or end > self.limits.max_attribute_length:
            fault = self._attribute_fault(0, end)
            if fault is not None:
                element = self._element_state()
                element.fault = fault
                element.fault_at = 0
        if empty:
            self._emit(end, messages)
            return True
        end_tag = self._end_tag = b"</" + name
        self._end_prefix = end_tag[:_END_TAG_PREFIX]
        self._search_from = end
        self._candidate = -1
        return True

    def _attribute_fault(self, start: int, end: int) -> MalformedElement | None:
        """
        Why the whole start tag at C{start:end} breaks the attribute limits,
        if it does: found before expat sees it, since expat's work grows with
        the attributes it is given.  Only tags long enough to break a limit
        are looked at.
        """
        limits = self.limits
        length = end - start
        if length < self._fewest_for_too_many and length <= limits.max_attribute_length:
            return None
        if self._crowded_tag(start, end):
            return MalformedElement(_too_many_attributes(self._tag_name(start, end), limits))
        if length > limits.max_attribute_length:
            for value in _QUOTED.finditer(self._buffer, start, end):
                if (
                    value.end() - value.start() - 2 > limits.max_attribute_length
                    and _characters(value.group()[1:-1]) > limits.max_attribute_length
                ):
                    return MalformedElement(_attribute_too_long(self._tag_name(start, end), limits))
        return None

    def _crowded_tag(self, start: int, end: int) -> bool:
        """
        Whether the whole tag at C{start:end} has more quoted values than it
        may have attributes (none with a "<"), counted over its quotes alone
        so that values of any length cost little.
        """
        markup = self._markup(start, end)
        return markup is not None and bool(self._too_many.match(markup))

    def _markup(self, start: int, end: int) -> bytes | None:
        """The quotes and "<" of the tag at C{start:end} after its own "<", if it is long enough to have too many attributes."""
        if end - start < self._fewest_for_too_many:
            return None
        return self._buffer[start + 1 : end].translate(None, _NOT_MARKUP)

    def _tag_name(self, start: int, end: int) -> str:
        """The name of the tag at C{start:end}, for a log."""
        name = _TAG_NAME.match(self._buffer, start + 1, end).group()  # type: ignore[union-attr]
        return name.decode("utf-8", "replace")

    def _safe_end(self) -> int:
        """Where the element's end tag may begin, at the earliest."""
        return self._candidate if self._candidate >= 0 else self._search_from

    def _element_state(self) -> _Element:
        """The checks of the element being read, begun if they were not."""
        element = self._element
        if element is None:
            element = self._element = _Element(self._body)
            self._checker.begin(self._buffer.startswith(b"<enableBLOB"))
        return element

    def _advance(self, end: int, final: bool = False) -> None:
        """
        Check the element being read up to C{end} (its end, if C{final}):
        vet its tags, check its BLOB bodies, and give the rest to expat, so
        that each read costs work in proportion to what it brought, however
        large the element.
        """
        element = self._element_state()
        if element.blob_fault is None:
            self._scan_blobs(element, end, final)
        # Lexed even past a bad BLOB body or a bad tag, so that a markup
        # token too long is refused at the same byte however the element
        # is cut.
        if final and self._plain(element, end):
            element.lexed = element.scanned = end
        else:
            self._lex(element, end)
        if element.blob_fault is not None:
            return
        if final:
            self._give_checker(element, element.fault_at if element.fault else end)
            if element.fault is not None:
                self._checker.refuse(element.fault)
            return
        if element.fault is not None:
            upto = element.fault_at
        elif element.opened >= 0:
            upto = element.opened
        elif element.terminator is not None:  # inside CDATA
            upto = end
        else:
            upto = element.lexed
        if element.blob_state == _BODY:
            upto = min(upto, element.blob_at)
        self._give_checker(element, upto)

    def _plain(self, element: _Element, end: int) -> bool:
        """Whether no tag in the rest of the element can break an attribute limit."""
        if element.terminator is not None or element.opened >= 0:
            return False
        return self._plain_from(element.lexed, end)

    def _plain_from(self, start: int, end: int) -> bool:
        """Whether no tag in C{start:end} can break an attribute limit, or the markup limit."""
        if end - start > self._max_tag:
            return False
        if end - start < self._fewest_for_too_many:
            return True
        if end - start > self.limits.max_attribute_length:
            return False
        markup = self._buffer[start:end].translate(None, _NOT_MARKUP)
        return self._crowded.search(markup) is None

    def _give_checker(self, element: _Element, upto: int) -> None:
        """Feed expat the element up to C{upto}, bar the BLOB bodies found."""
        fed = element.fed
        if upto <= fed:
            return
        checker = self._checker
        with memoryview(self._buffer) as view:
            bodies = element.bodies
            while bodies and bodies[0][0] < upto:
                start, end = bodies.pop(0)
                checker.feed(view[fed:start])
                fed = end
            if fed < upto:
                checker.feed(view[fed:upto])
                fed = upto
        element.fed = fed

    def _lex(self, element: _Element, end: int) -> None:
        """
        Find the tags of the element body up to C{end}, and vet each whole
        start tag against the attribute limits, before expat sees it; refuse
        any markup token longer than the markup limit as soon as it is.
        """
        buffer = self._buffer
        position = element.lexed
        element.scanned = max(element.scanned, end)
        # The next "<" from position (found once, not once per reference).
        opening = -1
        while True:
            terminator = element.terminator
            if terminator is None and element.opened >= 0:  # a tag
                done, element.resume, element.quote = _scan_tag(
                    buffer, element.resume, element.quote, end
                )
                if done < 0:
                    break
                self._token_length(element, done)
                element.token_at = -1
                if element.fault is None:
                    # The first fault decides; lexing goes on for the token limit.
                    fault = self._attribute_fault(element.opened, done)
                    if fault is not None:
                        element.fault = fault
                        element.fault_at = element.opened
                position = done
                element.opened = -1
                continue
            if terminator is not None:
                found = buffer.find(terminator, element.resume, end)
                if found < 0:
                    element.resume = max(element.resume, end - len(terminator) + 1)
                    break
                position = found + len(terminator)
                self._token_length(element, position)
                element.token_at = -1
                element.terminator = None
                element.opened = -1
                continue
            if opening < position:
                opening = buffer.find(b"<", position, end)
                if opening < 0:
                    opening = end
            reference = buffer.find(b"&", position, opening)
            if reference >= 0:
                # The usual case, such as "&amp;", without noting it open.
                ends = buffer.find(b";", reference + 1, end)
                if 0 <= ends < reference + self._max_markup:
                    position = ends + 1
                    continue
                self._open(element, reference, b";", reference + 1, "an entity reference", self._max_markup)
                continue
            if opening == end:
                position = end
                break
            if end - opening < 9:
                head = bytes(buffer[opening:end])
                if any(o.startswith(head) and o != head for o in _OPENINGS):
                    position = opening
                    break
            second = buffer[opening + 1]
            markup = self._max_markup
            if second == 0x2F:  # "</"
                self._open(element, opening, b">", opening + 2, "an end tag", markup)
            elif second == 0x3F:  # "<?"
                self._open(element, opening, b"?>", opening + 2, "a processing instruction", markup)
            elif second != 0x21:  # a start tag, or what expat will refuse
                self._open(element, opening, None, opening + 1, "a tag", self._max_tag)
            elif buffer.startswith(b"<!--", opening):
                self._open(element, opening, b"-->", opening + 4, "a comment", markup)
            elif buffer.startswith(b"<![CDATA[", opening):
                # expat reads CDATA as it comes, without scanning it again
                self._open(element, opening, b"]]>", opening + 9, "a CDATA section", markup)
                element.opened = -1
            else:  # a declaration, which expat will refuse
                self._open(element, opening, b">", opening + 2, "a declaration", markup)
        element.lexed = position
        if element.token_at >= 0:
            self._token_length(element, end)

    @staticmethod
    def _open(
        element: _Element, at: int, terminator: bytes | None, resume: int, what: str, bound: int
    ) -> None:
        """Note markup C{what} opened at C{at}, ended by C{terminator} (None: a tag), at most C{bound} bytes."""
        element.opened = element.token_at = at
        element.terminator = terminator
        element.resume = resume
        element.quote = None
        element.token_what = what
        element.token_bound = bound

    def _token_length(self, element: _Element, upto: int) -> None:
        """
        Refuse the markup token open in the element if, seen up to C{upto}
        (its end, or as far as it has arrived), it is longer than its
        bound: the same refusal whether it arrived whole or is still
        arriving, since it is decided by the token's first bytes.  A
        token whose first byte too many lies past C{max_element} is left to
        the element limit, which a cut stream meets first.
        """
        at = element.token_at
        bound = element.token_bound
        if upto - at > bound and at + bound < self.limits.max_element:
            name = self._tag_name(0, self._body)
            self._fail(ElementTooLarge(
                f"{element.token_what} inside <{name}> is longer than {bound} bytes"
            ))

    def _scan_blobs(self, element: _Element, end: int, final: bool) -> None:
        """
        Find the C{oneBLOB} bodies up to C{end} and check each is base64:
        expat is not to see them, since they are most of a large element.
        A body that is not base64 decides the element's fate.
        """
        buffer = self._buffer
        while True:
            state = element.blob_state
            if state == _SEEK:
                found = buffer.find(_BLOB_START, element.blob_at, end)
                if found < 0:
                    element.blob_at = max(element.blob_at, end - len(_BLOB_START) + 1)
                    return
                element.blob_state = _BLOB_TAG
                element.blob_at = found
                element.blob_resume = found + 1
                element.blob_quote = None
            elif state == _BLOB_TAG:
                done, element.blob_resume, element.blob_quote = _scan_tag(
                    buffer, element.blob_resume, element.blob_quote, end
                )
                if done < 0:
                    if final:
                        element.blob_fault = MalformedElement("malformed oneBLOB start tag")
                    return
                if self._crowded_tag(element.blob_at, done):
                    # Refused by the tag checks, unless a BLOB fault comes first.
                    element.blob_state = _SEEK
                    element.blob_at = done
                    continue
                start_tag = _START_TAG.match(buffer, element.blob_at, done)
                if start_tag is None or start_tag.end() != done:
                    element.blob_fault = MalformedElement("malformed oneBLOB start tag")
                    return
                element.blob_at = element.body_checked = done
                if start_tag.group(1) != b"oneBLOB" or start_tag.group(2):
                    element.blob_state = _SEEK
                else:
                    element.blob_state = _BODY
                    element.blob_resume = done
                    element.body_bad = False
            else:
                found = buffer.find(_BLOB_END, element.blob_resume, end)
                checked = found if found >= 0 else end if final else max(
                    element.blob_resume, end - len(_BLOB_END) + 1
                )
                if not element.body_bad and checked > element.body_checked:
                    element.body_bad = _not_base64(buffer, element.body_checked, checked)
                    element.body_checked = checked
                if found < 0:
                    if final:
                        element.blob_fault = MalformedElement("oneBLOB element is not closed")
                    element.blob_resume = checked
                    return
                if element.body_bad:
                    element.blob_fault = MalformedElement("oneBLOB body is not base64")
                    return
                element.bodies.append((element.blob_at, found))
                element.blob_state = _SEEK
                element.blob_at = found

    def _check_length(self, length: int, what: str) -> None:
        """
        Refuse a start tag, comment or instruction between messages longer
        than the limits allow, the same whether it arrived whole or is still
        arriving, so that how the stream is cut never changes the outcome.
        """
        bound = self._max_tag if what == "start tag" else self._max_markup
        limit = min(bound, self.limits.max_element)
        if length > limit:
            self._fail(ElementTooLarge(f"{what} longer than {limit} bytes"))

    def _skip_to(self, terminator: bytes, start: int) -> bool:
        """Skip a comment or processing instruction at offset 0, once it ends."""
        buffer = self._buffer
        end = buffer.find(terminator, max(start, self._skip_from))
        if end < 0:
            self._skip_from = max(start, len(buffer) - len(terminator) + 1)
            self._check_length(len(buffer), "comment or instruction")
            return False
        self._check_length(end + len(terminator), "comment or instruction")
        self._skip_from = 0
        del buffer[: end + len(terminator)]
        return True

    def _read_to_end(self, messages: list[Message]) -> bool:
        """
        Look for the end tag of the element being read, resuming where the
        last look stopped: a candidate whose name is still arriving is
        compared only in its new bytes, so even a name of megabytes costs
        each read no more than what it brought.
        """
        buffer = self._buffer
        end_tag = self._end_tag
        assert end_tag is not None
        while True:
            found = self._candidate
            if found < 0:
                # The name's first bytes are enough to find candidates; they
                # cannot overlap, since a name holds no "<".
                prefix = self._end_prefix
                found = buffer.find(prefix, self._search_from)
                if found < 0:
                    self._search_from = max(
                        self._search_from, len(buffer) - len(prefix) + 1
                    )
                    return False
                if prefix is end_tag or len(prefix) == len(end_tag):
                    # The usual case: the whole end tag is here.
                    after = found + len(end_tag)
                    closing = _END_OF_END_TAG.match(buffer, after, after + _MAX_END_TAG_SPACE)
                    if closing is not None:
                        self._end_tag = None
                        self._emit(closing.end(), messages)
                        return True
                self._candidate = found
                self._matched = len(prefix)
                self._space_from = found + len(end_tag)
            matched = self._matched
            if matched < len(end_tag):
                arrived = min(len(end_tag), len(buffer) - found)
                if buffer[found + matched : found + arrived] != end_tag[matched:arrived]:
                    self._next_candidate(found)
                    continue
                self._matched = arrived
                if arrived < len(end_tag):
                    return False
            limit = found + len(end_tag) + _MAX_END_TAG_SPACE
            space = _WHITESPACE.match(buffer, self._space_from, limit).end()
            if space < limit and space < len(buffer) and buffer[space] == 0x3E:  # ">"
                self._end_tag = None
                self._emit(space + 1, messages)
                return True
            if space == len(buffer):
                self._space_from = space
                return False
            # A longer name sharing the prefix, such as </setTextVectorX>, or
            # an end tag padded beyond reason (expat will judge the element).
            self._next_candidate(found)

    def _next_candidate(self, rejected: int) -> None:
        """Look for the end tag again, after a candidate that was not it."""
        self._candidate = -1
        self._search_from = rejected + 1

    def _too_large(self) -> None:
        """
        Before the element being read is refused as larger than
        C{max_element}, lex its first C{max_element} bytes: a markup token
        too long within them is refused for that instead, as it is when
        the element arrives in pieces (see L{_token_length}).
        """
        element = self._element_state()
        limit = self.limits.max_element
        if element.scanned < limit:
            self._lex(element, limit)

    def _emit(self, end: int, messages: list[Message]) -> None:
        """Finish the element that ends at C{end}: the message, or its first fault."""
        if end > self.limits.max_element:
            self._too_large()
            self._fail(
                ElementTooLarge(f"element larger than {self.limits.max_element} bytes")
            )
        buffer = self._buffer
        self._search_from = 0
        if (
            self._element is None
            and buffer.find(_BLOB_START, 0, end) < 0
            and self._plain_from(self._body, end)
        ):
            # The usual case: a small element, read at once, with no BLOB.
            raw = bytes(buffer[:end])
            del buffer[:end]
            messages.append(self._checker.check(raw, raw.startswith(b"<enableBLOB")))
            return
        element = self._element_state()
        self._advance(end, final=True)
        self._element = None
        if element.blob_fault is not None:
            del buffer[:end]
            self._checker.refuse(element.blob_fault)
            raise element.blob_fault
        # One copy: bytes(buffer[:end]) would make two.
        with memoryview(buffer) as view:
            raw = bytes(view[:end])
        del buffer[:end]
        messages.append(self._checker.finish(raw))


def timestamp(when: datetime | None = None) -> str:
    """An INDI timestamp (UTC, ISO 8601 without zone) for C{when} or now."""
    if when is None:
        when = datetime.now(timezone.utc)
    elif when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.replace(tzinfo=None, microsecond=0).isoformat(sep="T")


# Characters XML 1.0 forbids, which must never reach a peer.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
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
    xml = _element(tag, present, text) + "\n"
    return Message(tag, present, xml.encode("utf-8"), text=text or "")


#: The kinds of INDI property, as they appear in element names.
KINDS = ("Text", "Number", "Switch", "Light", "BLOB")


def _attributes(attrs: Mapping[str, object]) -> str:
    """Attributes, escaped; those whose value is None are left out (optional in INDI)."""
    return "".join(
        f' {key}="{escape(str(value))}"' for key, value in attrs.items() if value is not None
    )


def _element(tag: str, attrs: Mapping[str, object], text: str | None = None) -> str:
    """One element with C{text} (escaped) or empty."""
    if text is None:
        return f"<{tag}{_attributes(attrs)}/>"
    return f"<{tag}{_attributes(attrs)}>{escape(text)}</{tag}>"


#: What an attribute name may be, here (XML allows more; INDI uses less).
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][\w.-]*\Z")


def _vector(
    verb: str,
    member_verb: str,
    kind: str,
    attrs: dict[str, object],
    members: Iterable[tuple[str, Mapping[str, object], object]],
) -> Message:
    if kind not in KINDS:
        raise ValueError(f"unknown kind of property {kind!r} (one of {', '.join(KINDS)})")
    present = {key: str(value) for key, value in attrs.items() if value is not None}
    body = []
    blob = stream = False
    for name, extra, value in members:
        member = {"name": name, **extra}
        for key in (*present, *member):
            if not _ATTRIBUTE_NAME.match(key):
                raise ValueError(f"{key!r} cannot be an attribute name")
        text = None if value is None else str(value)
        body.append("\n  " + _element(f"{member_verb}{kind}", member, text))
        if member_verb == "one" and kind == "BLOB":
            blob = True
            stream = stream or "stream" in str(member.get("format", ""))
    tag = f"{verb}{kind}Vector"
    xml = f"<{tag}{_attributes(present)}>{''.join(body)}\n</{tag}>\n"
    message = Message(tag, present, xml.encode("utf-8"), blob=blob)
    message.stream = stream
    return message


def def_vector(
    kind: str,
    device: str,
    name: str,
    members: Mapping[str, object],
    member_attrs: Mapping[str, Mapping[str, object]] | None = None,
    **attrs: object,
) -> Message:
    """
    A C{def*Vector} (C{kind} is C{"Number"}, C{"Switch"} and so on)
    defining property C{name} of C{device}: each member's value (None for
    BLOBs; numbers are written with C{str}), its attributes from C{member_attrs} (C{label}, and C{format},
    C{min}, C{max}, C{step} for numbers) and the vector's C{attrs}
    (C{label}, C{group}, C{state}, C{perm}, C{rule}, C{timeout}, ...).
    C{timestamp} is now unless given.
    """
    member_attrs = member_attrs or {}
    return _vector(
        "def", "def", kind,
        {"device": device, "name": name, "timestamp": timestamp(), **attrs},
        ((member, member_attrs.get(member, {}), value) for member, value in members.items()),
    )


def set_vector(
    kind: str, device: str, name: str, members: Mapping[str, object], **attrs: object
) -> Message:
    """
    A C{set*Vector} giving C{members} new values (for BLOBs use
    L{set_blob_vector}); C{attrs} such as C{state} and C{message}, and
    C{timestamp}, now unless given.
    """
    if kind == "BLOB":
        raise ValueError("BLOB values need set_blob_vector")
    return _vector(
        "set", "one", kind,
        {"device": device, "name": name, "timestamp": timestamp(), **attrs},
        ((member, {}, value) for member, value in members.items()),
    )


def set_blob_vector(
    device: str,
    name: str,
    blobs: Mapping[str, tuple[bytes, str] | tuple[bytes, str, int]],
    **attrs: object,
) -> Message:
    """
    A C{setBLOBVector} carrying, for each member, C{(data, format)}: the
    data base64-encoded, with its C{size} and C{enclen}.  For compressed
    data (format C{.fits.z}, say) give C{(data, format, size)}: INDI's
    C{size} is the size before compression.
    """
    members = []
    for member, (data, blob_format, *size) in blobs.items():
        encoded = base64.b64encode(data).decode("ascii")
        members.append((
            member,
            {"size": str(size[0] if size else len(data)), "format": blob_format,
             "enclen": str(len(encoded))},
            encoded,
        ))
    return _vector(
        "set", "one", "BLOB",
        {"device": device, "name": name, "timestamp": timestamp(), **attrs},
        members,
    )


def new_vector(
    kind: str, device: str, name: str, members: Mapping[str, object], **attrs: object
) -> Message:
    """A client's C{new*Vector} asking C{device} to give C{members} these values."""
    if kind == "BLOB":
        raise ValueError("sending BLOBs to a device is not supported here")
    return _vector(
        "new", "one", kind, {"device": device, "name": name, **attrs},
        ((member, {}, value) for member, value in members.items()),
    )


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
    device: str | None = None,
    name: str | None = None,
    version: str = "1.7",
    hop: str | None = None,
) -> Message:
    """
    A C{getProperties} request, for everything or one device or property.

    C{hop} marks a request passed between servers, so that a loop of
    servers can recognise one it has already passed on.
    """
    return _build(
        "getProperties",
        {"version": version, "device": device, "name": name, HOP: hop},
    )


#: The attribute marking a getProperties passed between servers (letters
#: only: indiserver's lilxml drops elements with a "-" in an attribute name).
HOP = "indiservHop"


def del_property(
    device: str, name: str | None = None, text: str | None = None
) -> Message:
    """A C{delProperty} telling clients a device (or one property) is gone."""
    return _build(
        "delProperty",
        {"device": device, "name": name, "timestamp": timestamp(), "message": text},
    )


def enable_blob(policy: str, device: str | None, name: str | None = None) -> Message:
    """
    An C{enableBLOB} asking a server to send (or withhold) BLOBs; with no
    C{device} (only between a server and its own links) for every device.
    """
    return _build("enableBLOB", {"device": device, "name": name}, policy)


def ping_request(uid: str) -> Message:
    """A C{pingRequest}: is the peer there?"""
    return _build("pingRequest", {"uid": uid})


def ping_reply(uid: str) -> Message:
    """The answer to a C{pingRequest}."""
    return _build("pingReply", {"uid": uid})
