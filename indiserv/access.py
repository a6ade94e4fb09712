"""
Who a connection is, and what it may do.

A client of this server is known by its source address and, over TLS with
client certificates, by its certificate.  Access rules name some of them
and give each a role; the one role today is C{peer}: another INDI server
linked to this one, trusted to share its devices (a plain client never owns
a device).  Rules come from C{--peer ADDRESS} and from an access file, one
rule a line, role first::

    # the observatory's other servers
    peer 10.0.0.0/8
    peer 2001:db8::7
    peer sha256:9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:B0:F0:0A:08
    peer subject:CN=observatory-b

An address is an IPv4 or IPv6 address or network; C{sha256:} is a client
certificate's SHA-256 fingerprint (colons optional, any case);
C{subject:} a client certificate's whole subject, as RFC 4514 writes it.
Certificate rules are only as good as the CA that signed the
certificates (C{--require-client-cert}).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes

__all__ = ["PEER", "ROLES", "Access", "AccessError", "Identity", "Rule", "parse_rule"]

PEER = "peer"
#: The roles a rule may give.  Observers and controllers are to come.
ROLES = (PEER,)

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
# A comment: from a # that begins the line or follows a space (RFC 4514
# writes hex values as CN=#04..., so not every # begins one).
_COMMENT = re.compile(r"(^|\s)#.*$")


class AccessError(ValueError):
    """A rule that cannot be read; the message says where and why."""


@dataclass(frozen=True)
class Identity:
    """
    What is known of a connection when it is admitted: its source address
    (L{None} on a unix socket) and its verified TLS client certificate, if
    it has one.
    """

    address: str | None
    certificate: x509.Certificate | None = None


@dataclass(frozen=True)
class Rule:
    """
    One line of access rules: C{role} for connections matching C{text}.

    @ivar where: where the rule was written, for logs (C{--peer}, or a file
        and line).
    """

    role: str
    text: str
    where: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    fingerprint: bytes | None = None
    subject: x509.Name | None = None

    @property
    def needs_certificate(self) -> bool:
        """Whether only a client certificate can match this rule."""
        return self.network is None

    def matches(self, identity: Identity) -> bool:
        """Whether C{identity} is what this rule names."""
        if self.network is not None:
            return _in_network(identity.address, self.network)
        certificate = identity.certificate
        if certificate is None:
            return False
        if self.fingerprint is not None:
            return certificate.fingerprint(hashes.SHA256()) == self.fingerprint
        return certificate.subject == self.subject

    def __str__(self) -> str:
        return f"{self.role} {self.text} ({self.where})"


def _in_network(
    address: str | None, network: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> bool:
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # An IPv4 client of a dual-stack (::) listener.
        ip = ip.ipv4_mapped
    return ip.version == network.version and ip in network


def parse_rule(line: str, where: str) -> Rule:
    """
    The rule written as C{line} (C{ROLE WHAT}) at C{where}.

    @raise AccessError: the line is not a rule; the message begins with
        C{where}.
    """
    words = line.split(None, 1)
    if len(words) != 2:
        raise AccessError(f"{where}: expected ROLE ADDRESS|sha256:...|subject:..., not {line!r}")
    role, what = words[0], words[1].strip()
    if role not in ROLES:
        raise AccessError(f"{where}: unknown role {role!r} (known: {', '.join(ROLES)})")
    if what.startswith("sha256:"):
        digits = what[len("sha256:"):].replace(":", "").lower()
        if not _FINGERPRINT.match(digits):
            raise AccessError(f"{where}: a sha256 fingerprint is 64 hex digits, not {what!r}")
        return Rule(role, what, where, fingerprint=bytes.fromhex(digits))
    if what.startswith("subject:"):
        try:
            subject = x509.Name.from_rfc4514_string(what[len("subject:"):])
        except ValueError as e:
            raise AccessError(f"{where}: bad certificate subject {what!r}: {e}") from None
        if not list(subject):
            raise AccessError(f"{where}: empty certificate subject")
        return Rule(role, what, where, subject=subject)
    try:
        network = ipaddress.ip_network(what)
    except ValueError as e:
        raise AccessError(f"{where}: {e}") from None
    return Rule(role, what, where, network=network)


class Access:
    """
    The access rules of a server: the role of a connection is that of the
    first rule it matches.
    """

    def __init__(self, rules: Iterable[Rule] = ()):
        self.rules: tuple[Rule, ...] = tuple(rules)

    @classmethod
    def build(cls, peers: Sequence[str] = (), path: str | None = None) -> Access:
        """
        The rules of C{--peer} addresses C{peers} and of the access file at
        C{path}.

        @raise AccessError: a bad address or line, or a file that cannot be read.
        """
        rules = [parse_rule(f"{PEER} {peer}", f"--peer {peer}") for peer in peers]
        if path is not None:
            try:
                with open(path, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise AccessError(f"cannot read access file {path}: {e}") from None
            for number, line in enumerate(lines, 1):
                text = _COMMENT.sub("", line).strip()
                if text:
                    rules.append(parse_rule(text, f"{path} line {number}"))
        return cls(rules)

    @property
    def needs_certificates(self) -> bool:
        """Whether some rule can only match a client certificate."""
        return any(rule.needs_certificate for rule in self.rules)

    def rule_for(self, identity: Identity) -> Rule | None:
        """The first rule C{identity} matches, if any."""
        for rule in self.rules:
            if rule.matches(identity):
                return rule
        return None
