"""
The twistd plugin: C{twistd -n indiserver --port 7624 DRIVER ...}.
"""

from __future__ import annotations

import shlex
from typing import Any

from twisted.python import usage

from indiserv.driver import DriverNotFound, find_driver
from indiserv.service import IndiServer, endpoint_description

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    synopsis = "[options] DRIVER [DRIVER ...]"
    longdesc = (
        "Run an INDI server. Each DRIVER is an executable INDI driver found on"
        " PATH (or a path to one); quote a driver with arguments as one word,"
        " such as 'indi_simulator_ccd --verbose'. Clients such as KStars,"
        " PHD2 or indi_getprop connect to --port."
    )
    optParameters = [
        [
            "port",
            "p",
            "7624",
            "Port number, or a Twisted server endpoint string such as"
            " tcp:7624:interface=0.0.0.0 or unix:/run/indi.sock.",
        ],
        ["host", None, "localhost", "Interface a numeric --port listens on."],
        [
            "max-connections",
            None,
            10,
            "Most clients connected at once.",
            int,
        ],
        [
            "keepalive",
            None,
            30.0,
            "Seconds of silence before clients get a keepalive message; 0 disables.",
            float,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["verbose"] = 0
        self["drivers"] = []

    def opt_verbose(self) -> None:
        """More logging: -v key events, -vv a line per message, -vvv full XML."""
        self["verbose"] += 1

    opt_v = opt_verbose

    def parseArgs(self, *drivers: str) -> None:
        self["drivers"] = [shlex.split(driver) for driver in drivers]

    def postOptions(self) -> None:
        if self["max-connections"] < 1:
            raise usage.UsageError("--max-connections must be at least 1")
        if self["keepalive"] < 0:
            raise usage.UsageError("--keepalive cannot be negative")
        for command in self["drivers"]:
            if not command:
                raise usage.UsageError("empty driver name")
            try:
                find_driver(command[0])
            except DriverNotFound as e:
                raise usage.UsageError(str(e))
        self["endpoint"] = endpoint_description(self["port"], self["host"])


def makeService(config: Options, reactor: Any = None) -> IndiServer:
    """Build the server twistd will run from parsed L{Options}."""
    server = IndiServer(
        host=config["host"],
        port=config["endpoint"],
        maxconnections=config["max-connections"],
        reactor=reactor,
        verbose=config["verbose"],
    )
    server.keepalive = config["keepalive"]
    for program, *args in config["drivers"]:
        server.add_exdriver(program, *args)
    return server
