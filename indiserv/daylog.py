"""
Per-day logs of what drivers say: indiserver's C{-l DIR} (C{--log-dir}).

Every element from a driver or another server that carries a C{message}
attribute (a C{message}, or a C{def*}/C{set*}/C{delProperty} with one) is
appended to C{DIR/YYYY-MM-DD.islog} as one line::

    2026-11-28T21:04:05: Telescope Simulator: Telescope is parked.

that is C{TIMESTAMP: DEVICE: MESSAGE}, the line indiserver writes.  As with
indiserver the timestamp is the message's own (UTC, as INDI prescribes) or,
when it has none, the time it arrived.  Unlike indiserver, the file is the
one of the day the message arrived, by the server's clock: indiserver takes
the date from the message's timestamp, which lets whoever sends a message
choose (and multiply) the files.  Only drivers and remote servers are
logged, never clients (the router sees to that).  A timestamp that is not an
INDI date is replaced by the arrival time, and line breaks inside a message
become spaces, so one line is one message.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from indiserv.link import Link
from indiserv.wire import Message

__all__ = ["DayLog", "DayLogError", "SUFFIX"]

SUFFIX = ".islog"

# The date that names the file must be a date, not a path.
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T")
_LINE_BREAKS = str.maketrans({"\r": " ", "\n": " "})


class DayLogError(Exception):
    """The log directory cannot be made or written to."""


class DayLog(Service):
    """
    Appends the messages of drivers to one file per day in C{directory}.

    @ivar directory: where the C{YYYY-MM-DD.islog} files go; made at start
        if it does not exist.
    @ivar written: lines written so far.
    """

    log = Logger()

    def __init__(self, directory: str, clock: Any = None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.directory = directory
        self.clock = clock
        self.written = 0
        self._failing: str | None = None

    def startService(self) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise DayLogError(
                f"cannot use {self.directory} for driver logs: {e.strerror or e}"
            ) from e
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise DayLogError(f"cannot write driver logs to {self.directory}: permission denied")
        super().startService()

    def path(self, date: str) -> str:
        """The file of C{date} (C{YYYY-MM-DD})."""
        return os.path.join(self.directory, date + SUFFIX)

    def record(self, message: Message, source: Link) -> None:
        """Append C{message} to the file of its day, if it has something to say."""
        text = message.attrs.get("message")
        if not text or not self.running:
            return
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        stamp = message.attrs.get("timestamp", "")
        if not _STAMP.match(stamp):
            stamp = now.strftime("%Y-%m-%dT%H:%M:%S")
        line = f"{stamp}: {message.device or ''}: {text.translate(_LINE_BREAKS)}\n"
        self._append(self.path(now.strftime("%Y-%m-%d")), line)

    def _append(self, path: str, line: str) -> None:
        # Opened for each line, as indiserver does: the files can be
        # rotated, moved or removed at any time, and messages are rare.
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:
            why = e.strerror or str(e)
            if self._failing != why:
                # Once per kind of trouble, not once per message.
                self.log.error("cannot write driver log {path}: {why}", path=path, why=why)
                self._failing = why
            return
        self._failing = None
        self.written += 1
