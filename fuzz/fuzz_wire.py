#!/usr/bin/env python3
"""
Fuzz L{indiserv.wire.Parser} with hypothesis-generated INDI streams.

Usage, from the repository root::

    python fuzz/fuzz_wire.py --seconds 60
    python fuzz/fuzz_wire.py --seconds 600 --seed 7      # reproducible run
    python fuzz/fuzz_wire.py --seconds 60 --no-shrink

It runs batches of hypothesis examples until the time is up.  Each example
is a byte stream (valid INDI, valid INDI with random mutations, INDI mixed
with declarations, comments, DOCTYPEs and garbage, or plain random bytes)
and a random set of cut points; the stream goes through L{Parser} whole and
cut into chunks, and these invariants are checked:

 1. C{feed} raises nothing but L{WireError} (with small L{Limits}).
 2. After every C{feed}, C{parser.pending} is at most
    C{max(limits.max_element, limits.max_start_tag)} plus the chunk just fed.
 3. Fed whole or cut anywhere, the stream yields the same messages (raw
    bytes) and the same errors (class and reason), in the same order.
 4. Every emitted C{Message.raw} fed alone to a fresh parser yields exactly
    one message with the same raw bytes, tag and attributes, and a plain
    expat parser with DTDs refused accepts it (docs/design.rst, invariant 2).

Invariant 3 is checked twice: with the small limits, and with limits roomy
enough that no size limit can trigger (so whole and split are also compared
on streams the small limits would cut short).

It prints a summary line (examples, seconds) and exits 0, or prints the
failing input (repr of the stream and the cut points), after hypothesis has
minimised it unless C{--no-shrink}, and exits 1.
Uses hypothesis only (no atheris); no example database is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from xml.parsers import expat

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from indiserv.wire import Limits, Message, Parser, WireError  # noqa: E402

#: Small enough that generated streams hit every limit.
SMALL_LIMITS = Limits(
    max_element=512, max_attributes=4, max_attribute_length=32, max_depth=3, max_markup=128
)

TOP_TAGS = [
    "getProperties",
    "defTextVector",
    "defNumberVector",
    "defSwitchVector",
    "defLightVector",
    "defBLOBVector",
    "setTextVector",
    "setNumberVector",
    "setSwitchVector",
    "setLightVector",
    "setBLOBVector",
    "newTextVector",
    "newNumberVector",
    "newSwitchVector",
    "newBLOBVector",
    "message",
    "delProperty",
    "enableBLOB",
    "pingRequest",
    "pingReply",
    "unknownTag",
    "oneBLOB",
]
CHILD_TAGS = ["oneText", "oneNumber", "oneSwitch", "oneLight", "oneBLOB", "defText"]
ATTRIBUTE_NAMES = [
    "device", "name", "state", "perm", "timeout", "timestamp", "message",
    "size", "enclen", "format", "version", "uid", "x:y",
]

texts = st.sampled_from(
    ["", "On", "Off", "12:30:00", "-1e9", "caf\u00e9", "&amp;", "&lt;&gt;", "&#233;",
     "a > b", "&bad;", "&", "\u2603", "<", "]]>", "x" * 40]
)
base64_bodies = st.sampled_from(["", "QUJD", "QUJD\nREVG", " QQ== ", "AAAA" * 20])
child_content = st.one_of(
    texts,
    st.sampled_from(
        ["<![CDATA[ <x> & ]]>", "<!-- c -->", "<?pi data?>", "<!-- </setTextVector> -->",
         "<![CDATA[</message>]]>", "<?xml version='1.0'?>", "<!DOCTYPE x>"]
    ),
)


@st.composite
def attributes(draw: st.DrawFn) -> str:
    names = draw(st.lists(st.sampled_from(ATTRIBUTE_NAMES), max_size=6, unique=True))
    out = []
    for name in names:
        quote = draw(st.sampled_from(["'", '"']))
        value = draw(texts).replace(quote, "")
        space = draw(st.sampled_from([" ", "  ", "\n", "\t"]))
        out.append(f"{space}{name}={quote}{value}{quote}")
    return "".join(out)


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> str:
    tag = draw(st.sampled_from(CHILD_TAGS if depth else TOP_TAGS))
    attrs = draw(attributes())
    if draw(st.booleans()):
        return f"<{tag}{attrs}{draw(st.sampled_from(['', ' ']))}/>"
    if tag == "oneBLOB":
        body = draw(st.one_of(base64_bodies, child_content))
    elif depth < 4 and draw(st.booleans()):
        body = "".join(draw(st.lists(elements(depth + 1), max_size=3)))
    else:
        body = draw(child_content)
    end_space = draw(st.sampled_from(["", "", " ", "\n"]))
    return f"<{tag}{attrs}>{body}</{tag}{end_space}>"


garbage = st.one_of(
    st.binary(max_size=24),
    st.text(alphabet="<>/&;'\"!?-[]=xA \n", max_size=24).map(str.encode),
    st.sampled_from(
        [b"\xff\xfe", b"\xef\xbb\xbf", b"\x00", b"</message>", b"<", b"<!", b"<!-",
         b"<?", b"<!-->", b"]]>", b"<![CDATA[x]]>", b"&amp;"]
    ),
)
markup = st.sampled_from(
    [
        b"<?xml version='1.0'?>",
        b"<?xml version='1.0' encoding='UTF-8'?>\n",
        b"<!-- a comment -->",
        b"<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;'>]>",
        b'<!ENTITY x SYSTEM "file:///etc/passwd">',
        b"<message message='&lol2;'/>",
        b"<message message='&x;'/>",
    ]
)


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    element = draw(elements()).encode()
    return element[: draw(st.integers(0, len(element)))]


pieces = st.one_of(
    elements().map(str.encode),
    elements().map(str.encode),
    st.sampled_from([b" ", b"\n", b"\r\n", b"\t"]),
    markup,
    garbage,
    truncated(),
)
indi_streams = st.lists(pieces, max_size=10).map(b"".join)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A stream with random bytes inserted, deleted or replaced."""
    data = bytearray(draw(indi_streams))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(b"<>/&'\"!?-x \xff\x00"))
        if action == "insert" or position == len(data):
            data.insert(position, byte)
        elif action == "delete":
            del data[position]
        else:
            data[position] = byte
    return bytes(data)


streams = st.one_of(indi_streams, indi_streams, mutated(), st.binary(max_size=600))


@st.composite
def cut_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    data = draw(streams)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    if draw(st.booleans()) and len(data) < 300:
        cuts = list(range(len(data)))  # one byte per call
    return data, sorted(set(cuts))


class Failure(AssertionError):
    """An invariant does not hold."""


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def run(limits: Limits, chunks: list[bytes]) -> list[object]:
    """
    Read C{chunks} as a link does (L{Parser.read}), checking invariants 1
    and 2; return messages and errors in order.
    """
    parser = Parser(limits)
    bound = max(limits.max_element, limits.max_start_tag)
    events: list[object] = []
    for chunk in chunks:
        try:
            for item in parser.read(chunk):
                events.append(
                    (type(item).__name__, item.reason) if isinstance(item, WireError) else item
                )
                if parser.pending > bound + len(chunk):
                    raise Failure(f"pending {parser.pending} > {bound} + chunk of {len(chunk)}")
        except Failure:
            raise
        except Exception as e:
            raise Failure(
                f"read raised {type(e).__name__}, not a WireError:\n"
                + "".join(traceback.format_exception(e))
            ) from e
    return events


def comparable(events: list[object]) -> list[object]:
    return [e.raw if isinstance(e, Message) else e for e in events]


def check_alone(message: Message, limits: Limits) -> None:
    """Invariant 4 for one emitted message."""
    parser = Parser(limits)
    try:
        again = parser.feed(message.raw)
    except WireError as e:
        raise Failure(f"emitted {message.raw!r} is refused alone: {e.reason}") from e
    if len(again) != 1 or again[0].raw != message.raw or parser.pending:
        raise Failure(f"emitted {message.raw!r} re-parses as {again!r}")
    if (again[0].tag, again[0].attrs) != (message.tag, message.attrs):
        raise Failure(f"emitted {message.raw!r} re-parses with other keys")
    plain = expat.ParserCreate("UTF-8")

    def refuse(*args: object) -> None:
        raise Failure(f"emitted {message.raw!r} declares a DTD or entity")

    plain.StartDoctypeDeclHandler = refuse
    plain.EntityDeclHandler = refuse
    try:
        plain.Parse(message.raw, True)
    except expat.ExpatError as e:
        raise Failure(f"emitted {message.raw!r} is not well-formed: {e}") from e


def same_either_way(
    limits: Limits, data: bytes, chunks: list[bytes], which: str = ""
) -> tuple[list[object], list[object]]:
    """Invariant 3: C{data} read whole and in C{chunks} gives the same events; both."""
    whole = run(limits, [data])
    split = run(limits, chunks)
    if comparable(whole) != comparable(split):
        raise Failure(
            f"{which}whole != split:\n {comparable(whole)!r}\n {comparable(split)!r}"
        )
    return whole, split


def check(data: bytes, cuts: list[int]) -> None:
    """All four invariants for one stream and one way of cutting it."""
    chunks = chunked(data, cuts)
    try:
        whole, split = same_either_way(SMALL_LIMITS, data, chunks, "small limits, ")
        roomy = Limits(
            max_element=len(data) + 1,
            max_attributes=SMALL_LIMITS.max_attributes,
            max_attribute_length=max(SMALL_LIMITS.max_attribute_length, len(data)),
            max_depth=SMALL_LIMITS.max_depth,
            max_markup=len(data) + 1,
        )
        roomy_whole, _ = same_either_way(roomy, data, chunks)
        for limits, events in ((SMALL_LIMITS, whole + split), (roomy, roomy_whole)):
            for event in events:
                if isinstance(event, Message):
                    check_alone(event, limits)
    except Failure as e:
        raise Failure(f"{e}\n  stream: {data!r}\n  cuts: {cuts!r}") from None


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    options.add_argument("--seconds", type=float, default=60.0, help="how long to run")
    options.add_argument("--batch", type=int, default=100, help="examples per batch")
    options.add_argument("--seed", type=int, default=None, help="for a reproducible run")
    options.add_argument(
        "--no-shrink",
        action="store_true",
        help="report a failure as found, without minimising it (shrinking can take minutes)",
    )
    args = options.parse_args(argv)
    phases = [Phase.generate] if args.no_shrink else [Phase.generate, Phase.shrink]

    count = 0
    failing: list[tuple[bytes, list[int]]] = []
    start = time.monotonic()
    deadline = start + args.seconds

    @settings(
        max_examples=args.batch,
        deadline=None,
        database=None,
        derandomize=False,
        phases=phases,
        suppress_health_check=list(HealthCheck),
    )
    @given(cut_streams())
    def batch(case: tuple[bytes, list[int]]) -> None:
        nonlocal count
        if time.monotonic() >= deadline and not failing:
            return  # time is up: let the batch run out without work
        count += 1
        try:
            check(*case)
        except Failure:
            failing.append(case)  # keep checking while hypothesis shrinks it
            raise

    batches = 0
    try:
        while time.monotonic() < deadline:
            test = batch if args.seed is None else seed(args.seed + batches)(batch)
            test()
            batches += 1
    except Failure as e:
        print(f"FAILED after {count} examples, {time.monotonic() - start:.1f} s:")
        print(e)
        return 1
    print(
        f"fuzz_wire: {count} examples in {batches} batches, "
        f"{time.monotonic() - start:.1f} seconds, no failures"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
