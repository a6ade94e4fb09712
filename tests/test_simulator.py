"""
Tests for L{indiserv.simulator}, run as the real driver process.

The simulator is what users point the server at first, so these tests
start it exactly as the server would, feed it a script of requests on
stdin and read its answers back with L{indiserv.wire.Parser}.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from xml.etree import ElementTree

from twisted.trial import unittest

from indiserv import wire

DEVICE = "indiserv Simulator"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = [sys.executable, "-m", "indiserv.simulator"]


def _environment() -> dict[str, str]:
    """The environment with this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (ROOT, env.get("PYTHONPATH")) if part
    )
    return env


def _new(kind: str, name: str, member: str, value: str) -> bytes:
    """A client's C{new*Vector} setting one member of a simulator property."""
    return (
        f'<new{kind}Vector device="{DEVICE}" name="{name}">'
        f'<one{kind} name="{member}">{value}</one{kind}>'
        f"</new{kind}Vector>\n"
    ).encode("utf-8")


GET_PROPERTIES = b'<getProperties version="1.7"/>\n'
CONNECT = _new("Switch", "CONNECTION", "CONNECT", "On")
EXPOSE = _new("Switch", "EXPOSE", "EXPOSE", "On")


class SimulatorTests(unittest.TestCase):
    """The simulator driver, fed a script on stdin until end of input."""

    def run_script(self, *requests: bytes) -> tuple[list[wire.Message], str]:
        """Run the simulator over C{requests}; return its messages and stderr."""
        done = subprocess.run(
            COMMAND,
            input=b"".join(requests),
            capture_output=True,
            timeout=30,
            env=_environment(),
            cwd=ROOT,
        )
        stderr = done.stderr.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 0, stderr)
        return wire.Parser().feed(done.stdout), stderr

    def find(self, messages: list[wire.Message], tag: str, name: str) -> list[wire.Message]:
        """The messages with C{tag} about property C{name} of the simulator."""
        return [m for m in messages if m.tag == tag and m.name == name and m.device == DEVICE]

    def members(self, message: wire.Message) -> dict[str, str]:
        """The member values of a vector message, by member name."""
        element = ElementTree.fromstring(message.raw)
        return {one.get("name"): (one.text or "").strip() for one in element}

    def test_exitsOnEndOfInput(self) -> None:
        """With empty input the driver logs its start and exits with status 0."""
        messages, stderr = self.run_script()
        self.assertEqual(messages, [])
        self.assertIn("serving device indiserv Simulator", stderr)

    def test_getPropertiesDefinesAll(self) -> None:
        """getProperties yields the definitions of all six properties."""
        messages, _ = self.run_script(GET_PROPERTIES)
        self.assertEqual(
            [(m.tag, m.device, m.name) for m in messages],
            [
                ("defSwitchVector", DEVICE, "CONNECTION"),
                ("defNumberVector", DEVICE, "TEMPERATURE"),
                ("defTextVector", DEVICE, "SITE_NAME"),
                ("defLightVector", DEVICE, "STATUS"),
                ("defBLOBVector", DEVICE, "IMAGE"),
                ("defSwitchVector", DEVICE, "EXPOSE"),
            ],
        )
        self.assertEqual(messages[0].attrs["rule"], "OneOfMany")
        self.assertEqual(self.members(messages[0]), {"CONNECT": "Off", "DISCONNECT": "On"})

    def test_getPropertiesOneProperty(self) -> None:
        """getProperties naming a property yields only its definition."""
        messages, _ = self.run_script(
            f'<getProperties version="1.7" device="{DEVICE}" name="SITE_NAME"/>'.encode(),
            b'<getProperties version="1.7" device="Other"/>',
        )
        self.assertEqual([(m.tag, m.name) for m in messages], [("defTextVector", "SITE_NAME")])
        self.assertEqual(self.members(messages[0]), {"NAME": "Backyard"})

    def test_connect(self) -> None:
        """Connecting sets CONNECT On and turns the STATUS light Ok."""
        messages, _ = self.run_script(CONNECT)
        [connection] = self.find(messages, "setSwitchVector", "CONNECTION")
        self.assertEqual(connection.attrs["state"], "Ok")
        self.assertEqual(self.members(connection), {"CONNECT": "On", "DISCONNECT": "Off"})
        [status] = self.find(messages, "setLightVector", "STATUS")
        self.assertEqual(self.members(status), {"READY": "Ok"})

    def test_exposeWhileConnected(self) -> None:
        """EXPOSE when connected sends a base64 BLOB of the expected text and size."""
        messages, _ = self.run_script(CONNECT, EXPOSE, EXPOSE)
        images = self.find(messages, "setBLOBVector", "IMAGE")
        self.assertEqual(len(images), 2)
        for number, image in enumerate(images, 1):
            self.assertTrue(image.blob)
            [blob] = ElementTree.fromstring(image.raw)
            data = base64.b64decode(blob.text)
            self.assertEqual(data, f"indiserv simulator image {number}\n".encode())
            self.assertEqual(int(blob.get("size")), len(data))
            self.assertEqual(int(blob.get("enclen")), len(blob.text.strip()))
            self.assertEqual(blob.get("format"), ".txt")
        expose = self.find(messages, "setSwitchVector", "EXPOSE")
        self.assertEqual([m.attrs["state"] for m in expose], ["Ok", "Ok"])
        self.assertEqual(self.members(expose[-1]), {"EXPOSE": "Off"})

    def test_exposeWhileDisconnected(self) -> None:
        """EXPOSE when not connected is refused with state Alert and a message."""
        messages, _ = self.run_script(EXPOSE)
        self.assertEqual(self.find(messages, "setBLOBVector", "IMAGE"), [])
        [expose] = self.find(messages, "setSwitchVector", "EXPOSE")
        self.assertEqual(expose.attrs["state"], "Alert")
        self.assertIn("not connected", expose.attrs["message"])

    def test_temperature(self) -> None:
        """A TEMPERATURE in range is taken; out of range or not a number is Alert."""
        messages, _ = self.run_script(
            _new("Number", "TEMPERATURE", "TEMPERATURE", "-12.5"),
            _new("Number", "TEMPERATURE", "TEMPERATURE", "51"),
            _new("Number", "TEMPERATURE", "TEMPERATURE", "warm"),
        )
        replies = self.find(messages, "setNumberVector", "TEMPERATURE")
        self.assertEqual([m.attrs["state"] for m in replies], ["Ok", "Alert", "Alert"])
        self.assertNotIn("message", replies[0].attrs)
        self.assertIn("message", replies[1].attrs)
        self.assertIn("message", replies[2].attrs)
        self.assertEqual(
            [float(self.members(m)["TEMPERATURE"]) for m in replies], [-12.5] * 3
        )

    def test_siteName(self) -> None:
        """A new SITE_NAME is stored, escaped correctly, and acknowledged Ok."""
        messages, _ = self.run_script(
            _new("Text", "SITE_NAME", "NAME", 'Bob &amp; "Alice" &lt;roof&gt;'),
            f'<getProperties version="1.7" device="{DEVICE}" name="SITE_NAME"/>'.encode(),
        )
        [reply] = self.find(messages, "setTextVector", "SITE_NAME")
        self.assertEqual(reply.attrs["state"], "Ok")
        [definition] = self.find(messages, "defTextVector", "SITE_NAME")
        for message in (reply, definition):
            self.assertEqual(self.members(message), {"NAME": 'Bob & "Alice" <roof>'})

    def test_otherDevicesIgnored(self) -> None:
        """Requests for other devices, and enableBLOB, get no answer."""
        messages, _ = self.run_script(
            CONNECT.replace(DEVICE.encode(), b"Other"),
            f'<enableBLOB device="{DEVICE}">Also</enableBLOB>'.encode(),
        )
        self.assertEqual(messages, [])

    def test_ping(self) -> None:
        """A pingRequest is answered by a pingReply with the same uid."""
        messages, _ = self.run_script(b'<pingRequest uid="abc 1"/>')
        self.assertEqual([(m.tag, m.attrs) for m in messages], [("pingReply", {"uid": "abc 1"})])

    def test_garbageIsReported(self) -> None:
        """Input that is not XML is logged on stderr and later requests still work."""
        messages, stderr = self.run_script(b"not xml <<<\n", GET_PROPERTIES)
        self.assertIn("bad input", stderr)
        self.assertEqual(len(self.find(messages, "defSwitchVector", "CONNECTION")), 1)
        self.assertEqual(len(messages), 6)

    def test_sigterm(self) -> None:
        """SIGTERM makes the driver exit with status 0."""
        process = subprocess.Popen(
            COMMAND,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_environment(),
            cwd=ROOT,
        )
        self.addCleanup(process.stdin.close)
        self.addCleanup(process.stdout.close)
        self.addCleanup(process.stderr.close)
        # The start line comes after the handler is installed.
        self.assertIn(b"serving device", process.stderr.readline())
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(timeout=30), 0)
