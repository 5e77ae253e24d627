"""The files a configuration refers to: certificates, CA bundles, crt-lists.

Owns their names (content addressed under `CERT_DIR`, so that a changed
certificate is a new file and an unchanged one keeps its name across
reloads), their content, and the bind options that ask clients for a
certificate.  `RunFiles` collects them by path relative to the run directory;
the worker writes them.

Pure: never runs haproxy, never writes a file itself.
"""

from __future__ import annotations

import hashlib

from agent.proxy.escape import word
from agent.state import L7Listener, TLSCertificate

CERT_DIR = "certs"


def certificate_id(cert: TLSCertificate) -> str:
    """Content address of a certificate + key pair (its file name)."""
    digest = hashlib.sha256(cert.cert_pem + b"\0" + cert.key_pem).hexdigest()
    return digest[:32]


def certificate_file(cert: TLSCertificate) -> str:
    return f"{CERT_DIR}/{certificate_id(cert)}.pem"


def certificate_pem(cert: TLSCertificate) -> bytes:
    chain = cert.cert_pem if cert.cert_pem.endswith(b"\n") else cert.cert_pem + b"\n"
    return chain + cert.key_pem + (b"" if cert.key_pem.endswith(b"\n") else b"\n")


class RunFiles:
    """The files of one configuration: `contents` maps a path relative to
    `run_dir` to its content; each method adds one and returns the full path
    the configuration names it by."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.contents: dict[str, bytes] = {}

    def _add(self, path: str, content: bytes) -> str:
        self.contents[path] = content
        return f"{self.run_dir}/{path}"

    def certificate(self, cert: TLSCertificate) -> str:
        """A certificate chain and its key, in one PEM file."""
        return self._add(certificate_file(cert), certificate_pem(cert))

    def ca(self, pem: bytes) -> str:
        """A CA bundle."""
        return self._add(f"{CERT_DIR}/ca-{hashlib.sha256(pem).hexdigest()[:16]}.pem", pem)

    def crt_list(self, listeners: list[L7Listener], rejected: dict[str, str]) -> str:
        """The certificates of `listeners` but the `rejected` ones, with the
        names each may be chosen for by SNI."""
        lines: list[str] = []
        for ls in listeners:
            for cert in ls.certificates:
                if certificate_id(cert) in rejected:
                    continue
                # SNI filters: the listener's hostname; without one, the names
                # in the certificate itself.
                filt = f" {ls.hostname}" if ls.hostname else ""
                lines.append(f"{self.certificate(cert)}{filt}")
        content = ("\n".join(lines) + "\n").encode()
        return self._add(
            f"{CERT_DIR}/crt-list-{hashlib.sha256(content).hexdigest()[:16]}.txt", content
        )


def client_verify(files: RunFiles, listeners: list[L7Listener]) -> str:
    """Bind options that ask clients for a certificate (Gateway
    spec.tls.frontend).  Validation is per port, and a bind is one port
    of one Gateway, so its listeners agree; AllowValidOnly wins if not."""
    found = [ls.client_validation for ls in listeners if ls.client_validation is not None]
    if not found:
        return ""
    strict = [v for v in found if not v.insecure_fallback]
    validation = (strict or found)[0]
    ca = word(files.ca(validation.ca_pem))
    if validation.insecure_fallback:
        # Asked for, checked, and let through whatever the outcome.
        return f" verify optional ca-file {ca} ca-ignore-err all crt-ignore-err all"
    return f" verify required ca-file {ca}"
