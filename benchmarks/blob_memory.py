#!/usr/bin/env python3
"""
Peak memory of a server forwarding one large BLOB from a driver to a client.

The driver (benchmarks/blob_driver.py) writes one setBLOBVector of about
C{--megabytes} MB of base64, which one client reads as fast as it can;
the server's peak resident memory (VmHWM) above its idle size is compared
with the message's size N.  indiserver needs about 1.0 N; indiserv's target
is at most 2 N (the bytes read off the pipe, and the message).

    python benchmarks/blob_memory.py                 # indiserv, 250 MB
    python benchmarks/blob_memory.py --server indiserver --max-queue 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import DONE, MiB, START, Server, Watch, available, connect, drain, settle  # noqa: E402

#: base64 as libindi writes it: 4 characters per 3 bytes, a newline per 76.
_EXPANSION = 4 / 3 * 77 / 76


def measure(kind: str, megabytes: int, max_queue_mb: int = 0) -> dict[str, float]:
    """Idle and peak resident memory of server C{kind} around one BLOB, in MB."""
    size = int(megabytes * 1e6 / _EXPANSION)
    with tempfile.TemporaryDirectory(prefix="indiserv-blob-memory-") as workdir:
        server = Server(
            kind, ["--blobs", "1", "--size", str(size), "--no-enclen"], workdir, max_queue_mb
        )
        try:
            sock = connect(server.port)
            try:
                settle([sock])
                idle = server.memory("VmRSS")
                sock.sendall(START)
                (received,) = drain([sock], [Watch(DONE)])
                peak = server.memory("VmHWM")
            finally:
                sock.close()
        finally:
            server.stop()
    return {
        "message MB": received / 1e6,
        "idle MB": idle / 1e6,
        "peak MB": peak / 1e6,
        "peak growth / N": (peak - idle) / received,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--server", default="indiserv",
                        choices=["indiserv", "indiserver", "indipyserver"])
    parser.add_argument("--megabytes", type=int, default=250, help="size of the BLOB message")
    parser.add_argument("--max-queue", type=int, default=0,
                        help="the server's queue limit in MB (indiserver drops a client"
                             " whose queue passes its default of 128)")
    options = parser.parse_args()
    why = available(options.server)
    if why:
        print(why, file=sys.stderr)
        return 1
    result = measure(options.server, options.megabytes, options.max_queue)
    print(options.server, ", ".join(f"{key} {value:.2f}" for key, value in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
