"""A session's own certificate authority, for the hosts whose HTTPS the proxy inspects.

Made when the session starts and dropped with it: the CA's key exists only in this object
(never written anywhere, never handed to OpenSSL), so once the session ends no certificate
it signed can be made again, and one it made expires within `LIFETIME` anyway. Only the
container of that session trusts it (`trust_bundle` goes into its trust store).

Leaf certificates are made per host on first use and kept for the session. All leaves share
one ECDSA P-256 key, made with the CA: a P-256 signature takes well under a millisecond, so a
leaf costs one signature and the TLS context that carries it, not a key generation.

Python's `ssl` loads a certificate and key only from files. The leaf key goes to an
anonymous memory file (memfd) that is read through /proc/self/fd and closed at once: no
path on any file system ever holds it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIFETIME = datetime.timedelta(days=7)  # past any session's timeout; the key dies sooner
BACKDATE = datetime.timedelta(hours=1)  # clocks in containers are the host's, but be lenient
ALPN = ("http/1.1",)  # what the agent may speak inside: HTTP/2 is refused with a reason
MAX_LEAVES = 1024  # hosts kept; `*.suffix` rules let an agent name any number of them


class SessionCA:
    """The CA of one session: its certificate (public, for the container) and the TLS
    server contexts that present a leaf for each inspected host."""

    def __init__(self, session: str, *, now: Callable[[], datetime.datetime] | None = None) -> None:
        self._now = now or (lambda: datetime.datetime.now(datetime.UTC))
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        start = self._now() - BACKDATE
        self._expires = start + BACKDATE + LIFETIME
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Airlock"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Airlock session {session}"[:64]),
            ]
        )
        public = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(self._expires)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self._authority_key = x509.AuthorityKeyIdentifier.from_issuer_public_key(public)
        self._contexts: dict[str, ssl.SSLContext] = {}
        # The name each handshake asked for (SNI), until its connection goes.
        self._names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"SessionCA({self.certificate.subject.rfc4514_string()!r})"

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def trust_bundle(self, system: bytes) -> bytes:
        """The container's trust store: the image's own bundle with this CA added."""
        if system and not system.endswith(b"\n"):
            system += b"\n"
        return (
            system
            + b"# Airlock: this session's CA, for the hosts it inspects\n"
            + self.certificate_pem
        )

    def leaf(self, host: str) -> x509.Certificate:
        """A server certificate for `host` (a DNS name or an IP literal), signed now."""
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            san = x509.DNSName(host)
        start = self._now() - BACKDATE
        public = self._leaf_key.public_key()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(self._expires)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(self._authority_key, critical=False)
            .sign(self._key, hashes.SHA256())
        )

    def server_context(self, host: str) -> ssl.SSLContext:
        """The TLS server side the agent meets for `host`: its leaf, TLS 1.2 or newer, and
        HTTP/1.1 the only protocol offered. Made once per host."""
        context = self._contexts.get(host)
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.set_alpn_protocols(list(ALPN))
            context.sni_callback = self._heard
            chain = self.leaf(host).public_bytes(serialization.Encoding.PEM) + self.certificate_pem
            key = self._leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            with _memory_file(chain) as chain_path, _memory_file(key) as key_path:
                context.load_cert_chain(chain_path, key_path)
            if len(self._contexts) >= MAX_LEAVES:
                del self._contexts[next(iter(self._contexts))]  # the oldest: made again if need be
            self._contexts[host] = context
        return context

    def warm(self, hosts: Iterable[str]) -> None:
        """Makes the leaves of hosts known ahead (blocking: run it in a thread at the
        session's start), so that no first request waits for one."""
        for host in hosts:
            self.server_context(host)

    def sni_of(self, connection: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """The TLS name the agent's client sent on `connection`, if any."""
        return self._names.get(connection)

    def _heard(self, connection: Any, name: str | None, context: ssl.SSLContext) -> None:
        if name is not None:
            self._names[connection] = name


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path that reads as `data` while the block runs, backed by memory only."""
    fd = os.memfd_create("airlock-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
