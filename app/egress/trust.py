"""How a session's CA reaches the agent's container: a trust bundle (the image's own with
the session CA added) mounted read-only over the image's bundle, and named by the variables
that agents' runtimes read, for those that do not look at the system's file."""

from __future__ import annotations

import io
import logging
import ssl
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from app.container import BindMount, ContainerAdditions
from app.egress.ca import SessionCA
from app.egress.interception import route_authority
from app.profiles import Network

log = logging.getLogger(__name__)

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's, and what OpenSSL reads there
MAX_BUNDLE = 4 * 1024 * 1024
# Each names a file of CA certificates, read at the program's start: OpenSSL (Python's ssl,
# curl's and git's default), requests, curl, git, Node (added to its own roots), pip, the AWS
# SDKs, Deno, Cargo.
VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "PIP_CERT",
    "AWS_CA_BUNDLE",
    "DENO_CERT",
    "CARGO_HTTP_CAINFO",
)


class ArchiveSource(Protocol):
    """A container whose files can be read (docker's `Container.get_archive`)."""

    def get_archive(self, path: str) -> tuple[Iterator[bytes], Any]: ...


def inspects(network: Network) -> bool:
    """Whether a session with these rules may ever decrypt: it needs a CA then."""
    rules = (*network.allow, *network.ask)
    return (
        network.inspect
        or any(rule.inspect for rule in rules)
        or any(route.intercept for route in network.routes)
    )


def known_hosts(network: Network) -> list[str]:
    """The inspected hosts named exactly (not `*.suffix`), whose leaves can be made ahead."""
    hosts = [
        rule.host
        for rule in (*network.allow, *network.ask)
        if not rule.host.startswith("*.")
        and (network.inspect if rule.inspect is None else rule.inspect)
    ]
    hosts += [route_authority(route)[0] for route in network.routes if route.intercept]
    return list(dict.fromkeys(hosts))


def image_bundle(container: ArchiveSource) -> bytes:
    """The image's own trust bundle, read from a container of it (blocking: run it in a
    thread). Falls back on the host's when the image has none."""
    try:
        stream, _ = container.get_archive(SYSTEM_BUNDLE)
        data = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = archive.next()
            if member is not None and member.isfile() and member.size <= MAX_BUNDLE:
                extracted = archive.extractfile(member)
                if extracted is not None:
                    return extracted.read()
    except Exception as e:  # noqa: BLE001 - any failure of the engine: use the host's
        log.info("the image's trust bundle could not be read (%s): using the host's", e)
    cafile = ssl.get_default_verify_paths().cafile
    return Path(cafile).read_bytes() if cafile else b""


def trust_additions(ca: SessionCA, system: bytes, directory: Path) -> ContainerAdditions:
    """Writes the session's bundle under `directory` and says how the container gets it."""
    directory.mkdir(mode=0o755, exist_ok=True)
    bundle = directory / "ca-bundle.pem"
    bundle.write_bytes(ca.trust_bundle(system))
    bundle.chmod(0o644)  # read by the agent's uid, which is not the supervisor's under sudo
    return ContainerAdditions(
        mounts=(BindMount(bundle, Path(SYSTEM_BUNDLE), read_only=True),),
        environment=dict.fromkeys(VARIABLES, SYSTEM_BUNDLE),
    )
