"""The control plane's certificates and keys, made with the openssl command.

One CA signs the API server's serving certificate (127.0.0.1, localhost and the in-cluster
names) and any webhook certificate a test needs; one RSA key pair signs and verifies
service-account tokens. Everything is written under one folder, readable by its owner.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

#: In-cluster names of the API server (what a pod's client may dial).
API_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclasses.dataclass(frozen=True)
class Pki:
    """Paths of the files :func:`make_pki` writes."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def sign(self, name: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A serving certificate for ``dns``/``ips`` signed by the CA: (cert, key) paths."""
        sans = ",".join([*(f"DNS:{d}" for d in dns), *(f"IP:{i}" for i in ips)])
        key, csr, crt = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", csr.name,
                 "-subj", f"/CN={dns[0] if dns else name}", cwd=self.dir)
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName={sans}\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n")
        _openssl("x509", "-req", "-in", csr.name, "-CA", self.ca_cert.name, "-CAkey", self.ca_key.name,
                 "-CAcreateserial", "-days", "30", "-extfile", ext.name, "-out", crt.name, cwd=self.dir)
        csr.unlink()
        ext.unlink()
        return crt, key


def make_pki(folder: Path, *, service_ip: str) -> Pki:
    """A CA, the API server's serving certificate and the service-account key pair."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    pki = Pki(folder)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", pki.ca_key.name, "-out", pki.ca_cert.name,
             "-days", "30", "-subj", "/CN=shardwright-local-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    pki.sign("apiserver", dns=API_NAMES, ips=("127.0.0.1", service_ip))
    _openssl("genrsa", "-out", pki.sa_key.name, "2048", cwd=folder)
    _openssl("rsa", "-in", pki.sa_key.name, "-pubout", "-out", pki.sa_pub.name, cwd=folder)
    return pki
