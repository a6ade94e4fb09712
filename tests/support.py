"""
Shared test helpers: links that record what the router sends, and the
rules for tests that need indilib's programs.
"""

from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import SkipTest

from indiserv.link import Link
from indiserv.wire import Message, Parser, WireError

REQUIRE_INTEROP = os.environ.get("INDISERV_REQUIRE_INTEROP") == "1"


def require_programs(*programs: str) -> None:
    """
    Skip the test when an indilib program is missing, unless CI demands
    interop (INDISERV_REQUIRE_INTEROP=1), where a missing program fails it.
    """
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        why = f"needs {', '.join(missing)} (Debian package indi-bin)"
        if REQUIRE_INTEROP:
            raise AssertionError(f"INDISERV_REQUIRE_INTEROP=1 but this test {why}")
        raise SkipTest(why)


class RecordingLink(Link):
    """A link whose peer is the test: it keeps every message sent to it."""

    def __init__(self, kind: str, label: str):
        super().__init__()
        self.kind = kind
        self.label = label
        self.received: list[Message] = []
        self.wire_errors: list[WireError] = []

    def write(self, data: bytes) -> None:
        self.received.extend(Parser().feed(data))

    def wire_error(self, error: WireError) -> bool:
        self.wire_errors.append(error)
        return True

    def say(self, data: bytes) -> None:
        """Bytes from this peer to the router."""
        self.bytes_received(data)

    def tags(self) -> list[str]:
        return [message.tag for message in self.received]

    def take(self) -> list[Message]:
        """What arrived since the last call."""
        received, self.received = self.received, []
        return received
