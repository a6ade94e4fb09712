"""
Tests for L{indiserv.daylog}: indiserver's per-day driver message logs (-l DIR).
"""

from __future__ import annotations

import os
import sys

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from indiserv.daylog import DayLog, DayLogError
from indiserv.link import CLIENT, DRIVER
from indiserv.router import Router

from .support import RecordingLink, child_env, client_of, serve

# 2026-11-28T23:59:58 UTC
BEFORE_MIDNIGHT = 1795910398.0


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


class DayLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(BEFORE_MIDNIGHT)
        self.daylog = DayLog(self.directory, clock=self.clock)
        self.daylog.startService()
        self.router = Router(clock=self.clock)
        self.router.message_log = self.daylog.record
        self.driver = RecordingLink(DRIVER, "driver scope")
        self.router.add_link(self.driver)

    def path(self, date: str) -> str:
        return os.path.join(self.directory, f"{date}.islog")

    def test_directory_made(self) -> None:
        """A log directory that does not exist yet is made at start."""
        self.assertTrue(os.path.isdir(self.directory))

    def test_message_with_timestamp(self) -> None:
        """A driver message goes to the file of the server's day as TIMESTAMP: DEVICE: MESSAGE, with its own timestamp."""
        self.driver.say(b"<message device='Scope' timestamp='2026-03-04T05:06:07' message='Parked &amp; safe'/>")
        self.assertEqual(read(self.path("2026-11-28")), "2026-03-04T05:06:07: Scope: Parked & safe\n")

    def test_timestamps_do_not_choose_files(self) -> None:
        """Messages stamped with many dates all go to the one file of the day they arrived."""
        for day in range(1, 29):
            self.driver.say(
                b"<message device='Scope' timestamp='2025-02-%02dT00:00:00' message='x'/>" % day
            )
        self.assertEqual(os.listdir(self.directory), ["2026-11-28.islog"])
        self.assertEqual(len(read(self.path("2026-11-28")).splitlines()), 28)

    def test_any_element_with_a_message(self) -> None:
        """Definitions and updates carrying a message attribute are logged too; those without are not."""
        self.driver.say(
            b"<defNumberVector device='Scope' name='EQ' timestamp='2026-03-04T05:06:07'"
            b" message='Ready'><defNumber name='RA'>1</defNumber></defNumberVector>"
            b"<setNumberVector device='Scope' name='EQ' timestamp='2026-03-04T05:06:08'>"
            b"<oneNumber name='RA'>2</oneNumber></setNumberVector>"
            b"<message device='Scope' timestamp='2026-03-04T05:06:09' message=''/>"
        )
        self.assertEqual(read(self.path("2026-11-28")), "2026-03-04T05:06:07: Scope: Ready\n")

    def test_no_timestamp_uses_clock_and_rolls_over(self) -> None:
        """Without a timestamp the arrival time (UTC) is used; after midnight lines go to the next day's file."""
        self.driver.say(b"<message device='Scope' message='before'/>")
        self.clock.advance(3)
        self.driver.say(b"<message message='after'/>")
        self.assertEqual(read(self.path("2026-11-28")), "2026-11-28T23:59:58: Scope: before\n")
        self.assertEqual(read(self.path("2026-11-29")), "2026-11-29T00:00:01: : after\n")
        self.assertEqual(self.daylog.written, 2)

    def test_timestamp_is_not_a_path(self) -> None:
        """A timestamp that is not an INDI date is replaced by the arrival time, not used as a file name."""
        self.driver.say(b"<message device='Scope' timestamp='../../etc/x' message='sneaky'/>")
        self.assertEqual(os.listdir(self.directory), ["2026-11-28.islog"])
        self.assertEqual(read(self.path("2026-11-28")), "2026-11-28T23:59:58: Scope: sneaky\n")

    def test_one_line_per_message(self) -> None:
        """Line breaks inside a message become spaces."""
        self.driver.say(b"<message device='Scope' message='two&#10;lines'/>")
        self.assertEqual(read(self.path("2026-11-28")), "2026-11-28T23:59:58: Scope: two lines\n")

    def test_clients_not_logged(self) -> None:
        """What clients send, commands or device traffic of their own, trusted or not, is not driver talk."""
        for trusted in (False, True):
            client = RecordingLink(CLIENT, "client")
            client.trusted = trusted
            self.router.add_link(client)
            client.say(
                b"<newTextVector device='Scope' name='T' message='hi'><oneText name='A'>x</oneText></newTextVector>"
                b"<message device='Scope' message='fake'/><message message='fake'/>"
                b"<defTextVector device='Mine' name='T' message='fake'><defText name='A'/></defTextVector>"
            )
        self.assertEqual(os.listdir(self.directory), [])

    def test_write_failure_logged_once(self) -> None:
        """A file that cannot be written is logged as an error once, not once per message."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        os.mkdir(self.path("2026-11-28"))  # a directory where the file should be
        for _ in range(3):
            self.driver.say(b"<message device='Scope' message='lost'/>")
        errors = [e for e in logged if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("2026-11-28.islog", errors[0]["path"])
        self.assertEqual(self.daylog.written, 0)

    def test_stopped_writes_nothing(self) -> None:
        """After stopService nothing more is written."""
        self.daylog.stopService()
        self.driver.say(b"<message device='Scope' message='late'/>")
        self.assertEqual(os.listdir(self.directory), [])


class DayLogStartTests(SynchronousTestCase):
    def test_unusable_directory(self) -> None:
        """A log directory that cannot be made stops startup with an error naming it."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("a file, not a directory")
        error = self.assertRaises(DayLogError, DayLog(os.path.join(path, "logs")).startService)
        self.assertIn(path, str(error))


MESSAGING_DRIVER = (
    "import sys; sys.stdout.write(\"<message device='Talker' timestamp='2026-05-06T07:08:09'"
    " message='hello from a driver'/>\"); sys.stdout.flush(); sys.stdin.read()"
)


class ServerDayLogTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_driver_message_logged(self):
        """A real driver's message reaches the client and the day's file."""
        directory = os.path.abspath(self.mktemp())
        server = yield serve(self)
        server.add_daylog(directory)
        client = yield client_of(self, server)
        server.add_exdriver(sys.executable, "-c", MESSAGING_DRIVER, env=child_env())
        yield client.wait_for(lambda m: m.tag == "message" and m.device == "Talker")
        (name,) = os.listdir(directory)
        self.assertEqual(
            read(os.path.join(directory, name)),
            "2026-05-06T07:08:09: Talker: hello from a driver\n",
        )
