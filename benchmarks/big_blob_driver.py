#!/usr/bin/env python3
"""
An INDI driver that writes one huge inline BLOB, for the memory case of
benchmarks/hostile.py: how much memory does a server need to pass one
250 MB message from a driver to a client?

It defines device C{--device} with a BLOB property C{FRAME} and a switch
C{START}.  Setting C{START} makes it write one C{setBLOBVector} whose base64
body is C{--mb} MB (lines of 76 characters, as libindi writes them, no
C{enclen}), followed by a C{message} "done".  The body is written in pieces
from one repeated random block, so the driver itself stays small.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys

_TAG = re.compile(rb"<(newSwitchVector|getProperties)\b")
MB = 1000 * 1000


def definitions(device: str) -> bytes:
    return (
        f"<defBLOBVector device='{device}' name='FRAME' label='Frame' group='Main'"
        f" state='Idle' perm='ro' timeout='0'><defBLOB name='FRAME' label='Frame'/>"
        f"</defBLOBVector>\n"
        f"<defSwitchVector device='{device}' name='START' label='Start' group='Main'"
        f" state='Idle' perm='rw' rule='AtMostOne' timeout='0'>"
        f"<defSwitch name='START' label='Start'>Off</defSwitch></defSwitchVector>\n"
    ).encode()


def write_blob(out, device: str, body_bytes: int) -> None:
    """One setBLOBVector of about C{body_bytes} of base64 (whole lines)."""
    line_raw = 57  # 57 bytes encode to one 76-character line
    block = base64.encodebytes(os.urandom(line_raw * 16384))  # 16384 lines, 1.26 MB
    blocks = max(1, body_bytes // len(block))
    size = blocks * line_raw * 16384
    out.write(
        f"<setBLOBVector device='{device}' name='FRAME' state='Ok'>"
        f"<oneBLOB name='FRAME' size='{size}' format='.fits'>\n".encode()
    )
    for _ in range(blocks):
        out.write(block)
    out.write(b"</oneBLOB></setBLOBVector>\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--device", default="Big")
    parser.add_argument("--mb", type=float, default=250, help="MB of base64 in the BLOB")
    args = parser.parse_args()
    out = sys.stdout.buffer
    pending = b""
    while True:
        data = os.read(0, 65536)
        if not data:
            return 0
        pending += data
        last = 0
        for found in _TAG.finditer(pending):
            if found.group(1) == b"getProperties":
                out.write(definitions(args.device))
            else:
                write_blob(out, args.device, int(args.mb * MB))
                out.write(f"<message device='{args.device}' message='done'/>\n".encode())
            out.flush()
            last = found.end()
        pending = pending[last:][-64:]  # a tag cut in two is found next time


if __name__ == "__main__":
    sys.exit(main())
