#!/usr/bin/env python3
"""
The worst single read: how long one C{Parser.feed} of a client's stream can
take, for inputs built to make one read expensive.

Each case is one message of up to 16 MB (the client limit) read 64 KiB at
a time, as a link reads it; the script times every C{feed} and prints the
slowest, the total, the outcome (the message, or the refusal) and the most
the parser held.  The issue 11 requirement is that no read of up to 16 MB
of input makes other clients wait more than 50 ms.

    python benchmarks/worst_read.py                 # every case
    python benchmarks/worst_read.py --case comment --size 15

It runs each case once (they take a second or so each); run it on a quiet
machine, since it measures wall-clock time.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from indiserv.client import CLIENT_LIMITS  # noqa: E402
from indiserv.wire import Parser, WireError  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
START = b"<newTextVector device='Dev' name='TEXT'>"
END = b"</newTextVector>"


def cases(size: int) -> dict[str, bytes]:
    """Each case's message, about C{size} bytes."""
    fill = b"> " * (size // 2)
    attributes = b"".join(
        b" a%d='%s'" % (n, b"x" * (64 * KiB - 8)) for n in range(64)
    )
    # Just under the markup limit, so they pass.
    under = getattr(CLIENT_LIMITS, "max_markup", MiB) - 64  # also before it existed
    fifteen = b"".join(b" a%d='%s'" % (n, b"x" * (under // 16 - 16)) for n in range(16))
    return {
        "comment_under_limit": START + b"<!--" + b">" * (under - 7) + b"-->" + END,
        "tag_under_limit": START + b"<oneText" + fifteen + b">x</oneText>" + END,
        "comment": START + b"<!--" + fill + b"-->" + END,
        "instruction": START + b"<?pi " + fill + b"?>" + END,
        "cdata": START + b"<oneText name='T'><![CDATA[" + fill + b"]]></oneText>" + END,
        "reference": START + b"<oneText name='T'>&" + b"a" * size + b";</oneText>" + END,
        "start_tag": START + b"<oneText" + attributes + b">x</oneText>" + END,
        "text": START + b"<oneText name='T'>" + b"lorem > ipsum &amp; " * (size // 20)
        + b"</oneText>" + END,
        "blob": b"<newBLOBVector device='Dev' name='BLOB'><oneBLOB name='B' size='0'"
        b" format='.fits'>" + base64.encodebytes(b"\0" * (size * 3 // 4)) + b"</oneBLOB>"
        b"</newBLOBVector>",
    }


def measure(data: bytes, read: int) -> tuple[float, float, str, int]:
    """The slowest feed, the total, the outcome and the most held."""
    parser = Parser(CLIENT_LIMITS)
    worst = total = 0.0
    highest = 0
    outcome = "nothing yet"
    for start in range(0, len(data), read):
        chunk = data[start : start + read]
        began = time.perf_counter()
        try:
            messages = parser.feed(chunk)
        except WireError as e:
            elapsed = time.perf_counter() - began
            outcome = f"refused at {start + len(chunk)} bytes: {e.reason}"
            worst, total = max(worst, elapsed), total + elapsed
            highest = max(highest, parser.pending)
            break
        elapsed = time.perf_counter() - began
        worst, total = max(worst, elapsed), total + elapsed
        highest = max(highest, parser.pending)
        if messages:
            outcome = f"passed: {messages[0].tag}, {len(messages[0].raw)} bytes"
    return worst, total, outcome, highest


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    options.add_argument("--case", action="append", help="one case (repeatable); all by default")
    options.add_argument("--size", type=float, default=15, help="message size in MB (default 15)")
    options.add_argument("--read", type=int, default=64 * KiB, help="bytes per read")
    args = options.parse_args()
    built = cases(int(args.size * MiB))
    for name in args.case or built:
        worst, total, outcome, highest = measure(built[name], args.read)
        print(
            f"{name:12} worst read {worst * 1000:7.1f} ms  total {total * 1000:7.1f} ms"
            f"  held {highest / MiB:5.1f} MiB  {outcome}"
        )


if __name__ == "__main__":
    main()
