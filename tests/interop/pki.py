# The interop suite's test PKI, made with the openssl command on first use:
# a CA, certificates it signs for the names gimlet reaches a TLS server by
# (localhost, 127.0.0.1, ::1) and for another host only, and a self-signed
# certificate no CA vouches for. Keys are P-256 (fast to make), valid 2 days.
#
#   pki_dir(sandbox) / "ca.pem"          the CA certificate gimlet is given
#   certificate(sandbox, "localhost")    (cert, key) for the loopback names
#   certificate(sandbox, "other")        for other.example only
#   certificate(sandbox, "selfsigned")   for the loopback names, self-signed
from __future__ import annotations

from pathlib import Path

from harness import Sandbox, run_ok

LOOPBACK_NAMES = "DNS:localhost,IP:127.0.0.1,IP:::1"
LEAVES = {  # name -> subjectAltName; "selfsigned" is its own issuer
    "localhost": LOOPBACK_NAMES,
    "other": "DNS:other.example",
    "selfsigned": LOOPBACK_NAMES,
}
DAYS = "2"
TIMEOUT = 60


def _openssl(*args: str) -> None:
    run_ok(["openssl", *args], TIMEOUT, f"openssl {args[0]}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path))
    path.chmod(0o600)  # stunnel warns about wider modes


def pki_dir(sandbox: Sandbox) -> Path:
    """The directory holding the PKI, made (CA and every certificate) on first call."""
    d = sandbox.root / "pki"
    if (d / "done").exists():
        return d
    d.mkdir(exist_ok=True)
    _key(d / "ca.key")
    _openssl("req", "-x509", "-new", "-key", str(d / "ca.key"), "-out", str(d / "ca.pem"),
             "-days", DAYS, "-subj", "/CN=gimlet interop CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, names in LEAVES.items():
        key, cert, config = d / f"{name}.key", d / f"{name}.pem", d / f"{name}.cnf"
        _key(key)
        config.write_text("[req]\ndistinguished_name=dn\n[dn]\n[leaf]\n"
                          f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
                          "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
        if name == "selfsigned":
            # Its own issuer, so a name no system root has. (Debian's ssl-cert
            # snakeoil certificate, in /etc/ssl/certs, is "CN=localhost".)
            _openssl("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", DAYS,
                     "-subj", "/CN=gimlet interop self-signed", "-config", str(config),
                     "-extensions", "leaf")
        else:
            csr = d / f"{name}.csr"
            subject = f"/CN={names.split(',')[0].split(':', 1)[1]}"
            _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", subject,
                     "-config", str(config))
            _openssl("x509", "-req", "-in", str(csr), "-CA", str(d / "ca.pem"),
                     "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(cert),
                     "-days", DAYS, "-extfile", str(config), "-extensions", "leaf")
    (d / "done").touch()
    return d


def certificate(sandbox: Sandbox, name: str) -> tuple[Path, Path]:
    """(certificate, key) of one of LEAVES. The keys are root's, mode 0600:
    squid reads its key before it drops root, stunnel keeps root."""
    d = pki_dir(sandbox)
    return d / f"{name}.pem", d / f"{name}.key"
