"""
Tests for L{indiserv.access}: access rules and who they name.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from twisted.trial.unittest import SynchronousTestCase

from indiserv.access import PEER, Access, AccessError, Identity, parse_rule

from .test_tls import make_ca, make_leaf


class RuleTests(SynchronousTestCase):
    def test_address(self) -> None:
        """An address rule names that address only."""
        rule = parse_rule("peer 127.0.0.2", "here")
        self.assertEqual(rule.role, PEER)
        self.assertTrue(rule.matches(Identity("127.0.0.2")))
        self.assertFalse(rule.matches(Identity("127.0.0.1")))

    def test_network(self) -> None:
        """A network in CIDR names every address in it, IPv4 and IPv6."""
        rule = parse_rule("peer 10.0.0.0/8", "here")
        self.assertTrue(rule.matches(Identity("10.1.2.3")))
        self.assertFalse(rule.matches(Identity("11.0.0.1")))
        rule6 = parse_rule("peer 2001:db8::/32", "here")
        self.assertTrue(rule6.matches(Identity("2001:db8::7")))
        self.assertFalse(rule6.matches(Identity("2001:db9::7")))
        self.assertFalse(rule6.matches(Identity("10.1.2.3")))

    def test_ipv4_mapped(self) -> None:
        """An IPv4 client of a dual-stack listener (::ffff:a.b.c.d) matches its IPv4 rule."""
        self.assertTrue(parse_rule("peer 192.168.1.0/24", "here").matches(Identity("::ffff:192.168.1.9")))

    def test_unix_socket(self) -> None:
        """A connection without an address matches no address rule."""
        self.assertFalse(parse_rule("peer 0.0.0.0/0", "here").matches(Identity(None)))

    def test_fingerprint(self) -> None:
        """A sha256 rule names the certificate with that fingerprint, written with or without colons, in any case."""
        ca = make_ca("test CA")
        _, mine = make_leaf(ca, "observatory-b")
        _, other = make_leaf(ca, "observatory-b")
        digest = mine.fingerprint(hashes.SHA256())
        colons = ":".join(f"{byte:02X}" for byte in digest)
        for text in (colons, digest.hex()):
            rule = parse_rule(f"peer sha256:{text}", "here")
            self.assertTrue(rule.matches(Identity("10.0.0.1", mine)))
            self.assertFalse(rule.matches(Identity("10.0.0.1", other)))
            self.assertFalse(rule.matches(Identity("10.0.0.1")))
            self.assertTrue(rule.needs_certificate)

    def test_subject(self) -> None:
        """A subject rule names certificates with exactly that subject."""
        ca = make_ca("test CA")
        _, b = make_leaf(ca, "observatory-b")
        _, c = make_leaf(ca, "observatory-c")
        rule = parse_rule("peer subject:CN=observatory-b", "here")
        self.assertTrue(rule.matches(Identity(None, b)))
        self.assertFalse(rule.matches(Identity(None, c)))

    def test_malformed(self) -> None:
        """Unknown roles, bad addresses, fingerprints and subjects are refused, saying where."""
        for line in (
            "peer",
            "observer 10.0.0.1",
            "peer 10.0.0.300",
            "peer 10.0.0.1/8",
            "peer sha256:ABCD",
            "peer subject:nonsense",
        ):
            with self.assertRaises(AccessError, msg=line) as caught:
                parse_rule(line, "access.txt line 3")
            self.assertTrue(str(caught.exception).startswith("access.txt line 3: "), caught.exception)


class AccessTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_file(self) -> None:
        """An access file has a rule a line, with comments and blank lines."""
        path = self.write("# servers\n\npeer 127.0.0.2  # observatory b\n  peer 10.0.0.0/8\n")
        access = Access.build(path=path)
        self.assertEqual([rule.text for rule in access.rules], ["127.0.0.2", "10.0.0.0/8"])
        rule = access.rule_for(Identity("10.9.9.9"))
        self.assertEqual(rule.where, f"{path} line 4")
        self.assertIsNone(access.rule_for(Identity("127.0.0.1")))

    def test_peers_and_file(self) -> None:
        """--peer addresses come first, then the file's rules."""
        access = Access.build(["::1"], self.write("peer 127.0.0.2\n"))
        self.assertEqual(str(access.rule_for(Identity("::1"))), "peer ::1 (--peer ::1)")
        self.assertIsNotNone(access.rule_for(Identity("127.0.0.2")))
        self.assertFalse(access.needs_certificates)

    def test_malformed_file(self) -> None:
        """A bad line in the file is refused, naming the file and the line."""
        path = self.write("peer 127.0.0.2\npeer sha256:zz\n")
        with self.assertRaises(AccessError) as caught:
            Access.build(path=path)
        self.assertIn(f"{path} line 2", str(caught.exception))

    def test_missing_file(self) -> None:
        """A file that cannot be read is refused, naming it."""
        with self.assertRaises(AccessError) as caught:
            Access.build(path="/no/such/access")
        self.assertIn("/no/such/access", str(caught.exception))

    def test_bad_peer(self) -> None:
        """A bad --peer address is refused, naming the option."""
        with self.assertRaises(AccessError) as caught:
            Access.build(["observatory-b"])
        self.assertIn("--peer observatory-b", str(caught.exception))
