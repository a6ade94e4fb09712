#!/usr/bin/env python3
"""
What clients that asked for little receive: bytes and messages, from
indiserv and from indilib's indiserver in the same run.

Each server serves indilib's telescope and CCD simulators.  Three clients
connect: one that says nothing but a C{pingRequest} (silent), one that asks
for the CCD only, one for the telescope's coordinates only.  Then an
operator connects both devices and lets the telescope track for
C{--seconds}; finally each client's ping is answered (so that everything
sent to it before has arrived) and what it received is counted.

    python benchmarks/interest.py                 # both servers, 5 s each
    python benchmarks/interest.py --server indiserv --seconds 2 --json out.json
    python benchmarks/interest.py --server indiserv --indiserv-root /tmp/old-checkout
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time

from hostile import CCD, ROOT, TELESCOPE, Client, Server, new_switch

CLIENTS = {
    "silent": b"<pingRequest uid='hello'/>",
    "ccd_only": f"<getProperties version='1.7' device='{CCD}'/>".encode(),
    "coordinates_only": (
        f"<getProperties version='1.7' device='{TELESCOPE}' name='EQUATORIAL_EOD_COORD'/>".encode()
    ),
}


def received(client: Client) -> dict[str, object]:
    """Bytes and top-level messages received, but for the pingReply answers."""
    with client.changed:
        data = bytes(client.data)
    replies = re.findall(rb"<pingReply\b[^>]*/>", data)
    messages = [m for m in re.finditer(rb"<(def\w+Vector|set\w+Vector|message|delProperty)\b[^>]*>", data)]
    devices = sorted({d.decode() for d in re.findall(rb"<(?:def|set)\w+Vector\b[^>]*\bdevice=[\"']([^\"']*)", data)})
    return {
        "bytes": len(data) - sum(len(r) for r in replies),
        "messages": len(messages),
        "devices": devices,
    }


def measure(kind: str, seconds: float, workdir: str, root: str) -> dict[str, dict[str, object]]:
    server = Server(kind, root, workdir, ["indi_simulator_telescope", "indi_simulator_ccd"])
    try:
        clients = {name: Client(server.port, hello) for name, hello in CLIENTS.items()}
        operator = Client(server.port)
        for device in (TELESCOPE, CCD):
            if not operator.wait(rb"<defSwitchVector[^>]*device=[\"']" + re.escape(device.encode()), 15):
                raise RuntimeError(f"{kind}: {device} not defined")
            operator.send(new_switch(device, "CONNECTION", "CONNECT"))
        time.sleep(seconds)  # the telescope tracks; its coordinates are sent about once a second
        results = {}
        for name, client in clients.items():
            client.send(b"<pingRequest uid='end'/>")
            if not client.wait(rb"<pingReply[^>]*uid=[\"']end", 15):
                raise RuntimeError(f"{kind}: {name} got no pingReply")
            results[name] = received(client)
            client.close()
        operator.close()
        return results
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="append", choices=["indiserv", "indiserver"])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--indiserv-root", default=ROOT,
                        help="the checkout whose indiserv is measured (default: this one)")
    parser.add_argument("--json")
    options = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for kind in options.server or ["indiserv", "indiserver"]:
            results[kind] = measure(kind, options.seconds, workdir, options.indiserv_root)
    print(f"{'client':18} {'server':11} {'bytes':>8} {'messages':>9}  devices")
    for name in CLIENTS:
        for kind, by_client in results.items():
            got = by_client[name]
            print(f"{name:18} {kind:11} {got['bytes']:8} {got['messages']:9}  {', '.join(got['devices']) or '-'}")
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"seconds": options.seconds, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
