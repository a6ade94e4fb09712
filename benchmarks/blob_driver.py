#!/usr/bin/env python3
"""
A synthetic INDI driver for benchmarks and load tests, in plain Python
with no dependencies, so every server under test runs exactly the same
program.

It defines device C{--device} with a BLOB property C{FRAME}, a number
C{VALUE} and a switch C{START}.  Setting C{START} makes it write
C{--blobs} BLOBs of C{--size} bytes (base64 as real drivers write them,
with indilib's C{enclen} unless C{--no-enclen}) and then C{--numbers}
setNumberVector updates, as fast as its stdout takes them, followed by a
C{message} "done".  A C{newNumberVector VALUE} is answered at once with
C{setNumberVector VALUE} (round-trip measurements).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys

_TAG = re.compile(rb"<(newSwitchVector|newNumberVector|getProperties)\b([^>]*)>")
_VALUE = re.compile(rb"<oneNumber[^>]*>\s*([^<\s]+)\s*</oneNumber>")


def definitions(device: str) -> bytes:
    return (
        f"<defBLOBVector device='{device}' name='FRAME' label='Frame' group='Main'"
        f" state='Idle' perm='ro' timeout='0'><defBLOB name='FRAME' label='Frame'/>"
        f"</defBLOBVector>\n"
        f"<defNumberVector device='{device}' name='VALUE' label='Value' group='Main'"
        f" state='Idle' perm='rw' timeout='0'><defNumber name='VALUE' label='Value'"
        f" format='%g' min='0' max='0' step='0'>0</defNumber></defNumberVector>\n"
        f"<defSwitchVector device='{device}' name='START' label='Start' group='Main'"
        f" state='Idle' perm='rw' rule='AtMostOne' timeout='0'>"
        f"<defSwitch name='START' label='Start'>Off</defSwitch></defSwitchVector>\n"
    ).encode()


def blob(device: str, size: int, enclen: bool, format: str) -> bytes:
    encoded = base64.encodebytes(os.urandom(size))  # lines of 76, as libindi writes
    extra = f" enclen='{len(encoded)}'" if enclen else ""
    return (
        f"<setBLOBVector device='{device}' name='FRAME' state='Ok'>"
        f"<oneBLOB name='FRAME' size='{size}' format='{format}'{extra}>\n"
    ).encode() + encoded + b"</oneBLOB></setBLOBVector>\n"


def number(device: str, value: str) -> bytes:
    return (
        f"<setNumberVector device='{device}' name='VALUE' state='Ok'>"
        f"<oneNumber name='VALUE'>{value}</oneNumber></setNumberVector>\n"
    ).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--device", default="Bench")
    parser.add_argument("--blobs", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024 * 1024)
    parser.add_argument("--numbers", type=int, default=0)
    parser.add_argument("--format", default=".fits")
    parser.add_argument("--no-enclen", action="store_true")
    args = parser.parse_args()
    out = sys.stdout.buffer
    frame = blob(args.device, args.size, not args.no_enclen, args.format)
    pending = b""
    while True:
        data = os.read(0, 65536)
        if not data:
            return 0
        pending += data
        last = 0
        for found in _TAG.finditer(pending):
            tag = found.group(1)
            if tag == b"getProperties":
                out.write(definitions(args.device))
            elif tag == b"newSwitchVector" and b"START" in found.group(2):
                for _ in range(args.blobs):
                    out.write(frame)
                for index in range(args.numbers):
                    out.write(number(args.device, str(index)))
                out.write(f"<message device='{args.device}' message='done'/>\n".encode())
            elif tag == b"newNumberVector":
                end = pending.find(b"</newNumberVector>", found.end())
                if end < 0:
                    break
                value = _VALUE.search(pending, found.end(), end)
                out.write(number(args.device, value.group(1).decode() if value else "0"))
            last = found.end()
            out.flush()
        pending = pending[last:][-65536:]


if __name__ == "__main__":
    sys.exit(main())
