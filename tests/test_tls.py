"""
INDI over TLS: serving with certificates, remote links that verify them,
and client certificates, with certificates made by the test.
"""

from __future__ import annotations

import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from indiserv.remote import RemoteService
from indiserv.service import tls_options

from .support import client_of, connect_client, logged, logged_text, serve

SIMULATOR = "indiserv Simulator"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(common: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(ca, hostname: str):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostname))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def write_pair(directory: str, name: str, pair) -> tuple[str, str]:
    key, cert = pair
    cert_path = os.path.join(directory, f"{name}.pem")
    key_path = os.path.join(directory, f"{name}.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


class TLSTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dir, "trust"))
        self.ca = make_ca("indiserv test CA")
        self.ca_pem, _ = write_pair(os.path.join(self.dir, "trust"), "ca", self.ca)
        self.trust = os.path.join(self.dir, "trust")

    def leaf(self, name: str, hostname: str, ca=None) -> tuple[str, str]:
        return write_pair(self.dir, name, make_leaf(ca or self.ca, hostname))

    @defer.inlineCallbacks
    def serve_tls(self, cert: tuple[str, str], client_ca: str | None = None, **kwargs):
        return (
            yield serve(
                self,
                [sys.executable, "-m", "indiserv.simulator"],
                tls=tls_options(cert[0], cert[1], client_ca),
                **kwargs,
            )
        )

    @defer.inlineCallbacks
    def link(self, port: int, extra: str = ""):
        """Server A, linked over TLS to the server on C{port}; fires with A and a client of it."""
        a = yield serve(self)
        a.add_remote(f"tls:localhost:{port}:trustRoots={self.trust}{extra}")  # starts: a runs
        client = yield client_of(self, a)
        return a, client

    def handshake_failure(self, times: int = 1) -> defer.Deferred[dict]:
        """Fires when a remote link has logged C{times} failed TLS handshakes."""
        return logged(self, "TLS handshake", times)

    @defer.inlineCallbacks
    def test_verified_link(self):
        """A remote link over TLS to a server whose certificate the trust roots vouch for works."""
        b = yield self.serve_tls(self.leaf("server", "localhost"))
        a, client = yield self.link(b.port)
        yield client.wait_for(lambda m: m.device == SIMULATOR and m.name == "CONNECTION")

    @defer.inlineCallbacks
    def test_wrong_hostname_refused(self):
        """A certificate for another host name is refused, and each refusal counts towards the backoff."""
        failed = self.handshake_failure(times=2)
        b = yield self.serve_tls(self.leaf("server", "elsewhere.example"))
        a, client = yield self.link(b.port)
        yield failed
        self.assertNotIn(SIMULATOR, a.router.owners)
        (remote,) = [child for child in a if isinstance(child, RemoteService)]
        # ClientService saw a TCP connection each time and would have reset
        # its count; ours kept counting, so the delays keep growing.
        self.assertGreaterEqual(remote.failures, 1)

    @defer.inlineCallbacks
    def test_untrusted_ca_refused(self):
        """A certificate from a CA outside the trust roots is refused."""
        failed = self.handshake_failure()
        stranger = make_ca("someone else")
        b = yield self.serve_tls(self.leaf("server", "localhost", stranger))
        a, client = yield self.link(b.port)
        yield failed
        self.assertNotIn(SIMULATOR, a.router.owners)

    @defer.inlineCallbacks
    def test_client_certificate_required(self):
        """A server that requires client certificates refuses a link without one and accepts one with it."""
        failed = self.handshake_failure()
        b = yield self.serve_tls(self.leaf("server", "localhost"), client_ca=self.ca_pem)
        a, client = yield self.link(b.port)
        yield failed
        self.assertNotIn(SIMULATOR, a.router.owners)
        cert, key = self.leaf("client", "observatory-a")
        a2, client2 = yield self.link(b.port, f":certificate={cert}:privateKey={key}")
        yield client2.wait_for(lambda m: m.device == SIMULATOR and m.name == "CONNECTION")

    @defer.inlineCallbacks
    def test_unshaken_connections_leave_room(self):
        """Ten TCP connections that never start the TLS handshake neither lock out a client with a valid certificate nor stay open."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        b = yield self.serve_tls(
            self.leaf("server", "localhost"), client_ca=self.ca_pem, maxconnections=10,
            handshake_timeout=1,
        )
        silent = yield defer.gatherResults([connect_client(b.port) for _ in range(10)])
        for socket in silent:
            self.addCleanup(socket.transport.loseConnection)
        cert, key = self.leaf("client", "observatory-a")
        a, client = yield self.link(b.port, f":certificate={cert}:privateKey={key}")
        yield client.wait_for(lambda m: m.device == SIMULATOR and m.name == "CONNECTION")
        yield defer.gatherResults([socket.lost for socket in silent])
        self.assertIn("no TLS handshake within 1 s", "\n".join(logged_text(e) for e in logged))

    @defer.inlineCallbacks
    def test_peer_by_certificate(self):
        """A server linking with the certificate an access file names by fingerprint is trusted; one with another certificate is not."""
        cert, key = self.leaf("peer", "observatory-a")
        with open(cert, "rb") as f:
            fingerprint = x509.load_pem_x509_certificate(f.read()).fingerprint(hashes.SHA256())
        access = os.path.join(self.dir, "access")
        with open(access, "w") as f:
            f.write(f"# observatory a\npeer sha256:{fingerprint.hex(':').upper()}\n")
        b = yield self.serve_tls(self.leaf("server", "localhost"), client_ca=self.ca_pem, access=access)
        a, client = yield self.link(b.port, f":certificate={cert}:privateKey={key}")
        yield client.wait_for(lambda m: m.device == SIMULATOR and m.name == "CONNECTION")
        other_cert, other_key = self.leaf("other", "observatory-c")
        a2, client2 = yield self.link(b.port, f":certificate={other_cert}:privateKey={other_key}")
        yield client2.wait_for(lambda m: m.device == SIMULATOR and m.name == "CONNECTION")
        self.assertEqual(sorted(link.trusted for link in b.router.clients), [False, True])
