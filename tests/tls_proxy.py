"""nginx with TLS in front of a Prefect server on 127.0.0.1, from deployments/nginx.conf, for the tests.

Debian's `nginx` package provides the binary (the README's test command installs it where the machine
allows). The certificate is self-signed for 127.0.0.1 / localhost, made with `cryptography` (a Prefect
dependency); clients trust it through PREFECT_API_SSL_CERT_FILE. Tests call `skip_reason()` first.
"""

from __future__ import annotations

import datetime
import os
import ipaddress
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.prefect_server import free_port, start, stop

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deployments" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def skip_reason() -> str | None:
    if not Path(NGINX).exists():
        return "nginx is not installed (Debian: apt-get install nginx; `make test` does it as root)"
    return None


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "prefect.crt", folder / "prefect.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def render(values: dict[str, str]) -> str:
    """deployments/nginx.conf with its ${NAME} placeholders filled in, as `envsubst` does."""
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


class TlsProxy:
    """`with TlsProxy(folder, upstream_port) as proxy:` -> https://127.0.0.1:<proxy.port>, cert at proxy.cert."""

    def __init__(self, folder: Path, upstream_port: int) -> None:
        self.folder = folder
        self.port = free_port()
        self.upstream_port = upstream_port
        self.url = f"https://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "TlsProxy":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = self_signed(self.folder)
        site = render({"PREFECT_PUBLIC_NAME": "localhost", "PREFECT_PUBLIC_PORT": f"127.0.0.1:{self.port}",
                       "PREFECT_UPSTREAM": f"127.0.0.1:{self.upstream_port}",
                       "PREFECT_TLS_CERT": str(self.cert), "PREFECT_TLS_KEY": str(self.key)})
        (self.folder / "site.conf").write_text(site)
        tmp = self.folder / "tmp"
        tmp.mkdir(exist_ok=True)
        # What Debian's /etc/nginx/nginx.conf gives the site, in the test's own folder. As root the
        # workers would switch to www-data; they stay this user, so the temporary folders stay writable.
        main = f"""
user root;
worker_processes 1;
pid {self.folder / 'nginx.pid'};
error_log {self.folder / 'error.log'} info;
events {{ worker_connections 512; }}
http {{
    access_log {self.folder / 'access.log'};
    client_body_temp_path {tmp / 'body'};
    proxy_temp_path {tmp / 'proxy'};
    fastcgi_temp_path {tmp / 'fastcgi'};
    uwsgi_temp_path {tmp / 'uwsgi'};
    scgi_temp_path {tmp / 'scgi'};
    include {self.folder / 'site.conf'};
}}
"""

        conf = self.folder / "nginx.conf"
        conf.write_text(main if os.geteuid() == 0 else main.replace("user root;\n", ""))
        check = subprocess.run([NGINX, "-t", "-p", str(self.folder), "-c", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError("nginx refused the configuration:\n" + check.stderr)
        self.proc = start([NGINX, "-p", str(self.folder), "-c", str(conf), "-g", "daemon off;"], dict(os.environ),
                          self.folder / "nginx.out")
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    stop(self.proc)
                    raise RuntimeError("nginx did not start:\n" + (self.folder / "error.log").read_text()[-3000:])
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop(self.proc)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.folder / "access.log", self.folder / "error.log",
                                                               self.folder / "nginx.out") if p.exists())
