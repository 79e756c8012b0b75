"""A local, signed package repository standing in for Grafana's, with a ``loki`` package that
behaves as Grafana's own does, served over HTTPS inside the rehearsal's network.

Grafana's ``loki`` package (built with nfpm from the Loki source, ``tools/packaging/``; see
``../shared/LOKI-FACTS.md``) installs the binary as ``/usr/bin/loki``, its unit as
``/etc/systemd/system/loki.service`` (``User=loki``, no ``Group=``) and the single-node example
config as ``/etc/loki/config.yml``, a conffile. Its post-install script, on a clean install only,
makes a system user ``loki`` with ``adduser --system`` when there is none (on Debian 12 that user
is in ``nogroup``: no ``loki`` group), then reloads systemd and unmasks, presets, enables and
restarts ``loki`` by calling ``systemctl`` directly (``policy-rc.d`` does not stop it). This
package does exactly that, with the real Loki from ``../shared/tools``: a stand-in kinder than the
real package would hide the defects the rehearsal is for.

``python -m offline.rehearsal.repository NETNS ADDRESS PORT ROOT CERT KEY`` serves ROOT.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import http.server
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
from functools import partial
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from offline.rehearsal.proxy import listening_socket_in

SUITE, COMPONENT, ARCH = "stable", "main", "amd64"
KEY_FILE_NAME = "gpg-full.key"

LOKI_UNIT = """[Unit]
Description=Loki service
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=loki
ExecStart=/usr/bin/loki -config.file /etc/loki/config.yml
# Give a reasonable amount of time for the server to start up/shut down
TimeoutSec = 120
Restart = on-failure
RestartSec = 2

[Install]
WantedBy=multi-user.target
"""
"""The unit Grafana's package ships (directives as in Loki's ``tools/packaging/loki.service``)."""

LOKI_EXAMPLE_CONFIG = """# The single-node example the package ships: plain HTTP on 3100, files on the local disk.
auth_enabled: false
server:
  http_listen_port: 3100
common:
  instance_addr: 127.0.0.1
  path_prefix: /tmp/loki
  storage:
    filesystem:
      chunks_directory: /tmp/loki/chunks
      rules_directory: /tmp/loki/rules
  replication_factor: 1
  ring:
    kvstore:
      store: inmemory
schema_config:
  configs:
    - from: 2020-10-24
      store: tsdb
      object_store: filesystem
      schema: v13
      index:
        prefix: index_
        period: 24h
"""

POSTINST = """#!/bin/sh
# What Grafana's loki package does after unpacking (Loki's tools/packaging/loki-postinstall.sh):
# on a clean install (dpkg passes no previous version), a system user without a group of its own,
# then the unit reloaded, unmasked, preset, enabled and restarted, directly through systemctl.
if ! command -V systemctl >/dev/null 2>&1; then
  echo "Could not find systemd. Skipping system installation." && exit 0
fi
if [ "$1" = configure ] && [ -z "$2" ]; then
  if ! id loki >/dev/null 2>&1; then
    adduser --system --shell /bin/false loki
  fi
  systemctl daemon-reload || :
  systemctl unmask loki || :
  systemctl preset loki || :
  systemctl enable loki || :
  systemctl restart loki || :
fi
exit 0
"""


def build_loki_deb(binary: Path, version: str, out: Path) -> Path:
    """``loki_<version>_amd64.deb`` in ``out``, made with dpkg-deb."""
    root = out / f"loki-{version}"
    if root.exists():
        shutil.rmtree(root)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy(binary, root / "usr/bin/loki")
    (root / "usr/bin/loki").chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/loki.service").write_text(LOKI_UNIT)
    (root / "etc/loki").mkdir(parents=True)
    (root / "etc/loki/config.yml").write_text(LOKI_EXAMPLE_CONFIG)
    (root / "DEBIAN/control").write_text(
        f"Package: loki\nVersion: {version}\nSection: default\nPriority: optional\nArchitecture: {ARCH}\n"
        "Maintainer: loki-stack rehearsal <rehearsal@invalid>\nProvides: loki\n"
        "Description: Loki (rehearsal stand-in for Grafana's package, same contents and scripts)\n")
    (root / "DEBIAN/conffiles").write_text("/etc/loki/config.yml\n")
    (root / "DEBIAN/postinst").write_text(POSTINST)
    (root / "DEBIAN/postinst").chmod(0o755)
    deb = out / f"loki_{version}_{ARCH}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)], check=True,
                   capture_output=True, timeout=600)
    shutil.rmtree(root)
    return deb


STANDIN = Path(__file__).with_name("s3_standin.py")


def build_standin_archive(directory: Path) -> Path:
    """The object store's server archive, as the setup downloads it: ``minio`` inside, here the
    rehearsal's S3 stand-in."""
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / "minio-standin.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tar.gettarinfo(str(STANDIN), arcname="minio")
        info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = 0o755, 0, 0, "root", "root", 0
        with open(STANDIN, "rb") as f:
            tar.addfile(info, f)
    return archive


def _control(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb)], check=True, capture_output=True, text=True,
                          timeout=60).stdout.strip()


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(partial(f.read, 1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_repository(debs: list[Path], root: Path, gnupg_home: Path) -> str:
    """An apt repository in ``root`` (``deb <url> stable main``), its ``InRelease`` signed by a
    key made here, that key at ``root/gpg-full.key``; returns the key's fingerprint."""
    pool = root / "pool" / COMPONENT
    pool.mkdir(parents=True, exist_ok=True)
    stanzas = []
    for deb in debs:
        target = pool / deb.name
        shutil.copy(deb, target)
        stanzas.append(f"{_control(target)}\nFilename: pool/{COMPONENT}/{deb.name}\nSize: {target.stat().st_size}\n"
                       f"MD5sum: {_digest(target, 'md5')}\nSHA256: {_digest(target, 'sha256')}\n")
    index_dir = root / "dists" / SUITE / COMPONENT / f"binary-{ARCH}"
    index_dir.mkdir(parents=True, exist_ok=True)
    packages = "\n".join(stanzas)
    (index_dir / "Packages").write_text(packages)
    (index_dir / "Packages.gz").write_bytes(gzip.compress(packages.encode(), mtime=0))
    indexes = [index_dir / "Packages", index_dir / "Packages.gz"]
    dist = root / "dists" / SUITE
    date = datetime.datetime.now(datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")
    release = (f"Origin: loki-stack rehearsal\nLabel: loki-stack rehearsal\nSuite: {SUITE}\nCodename: {SUITE}\n"
               f"Date: {date}\nArchitectures: {ARCH}\nComponents: {COMPONENT}\nSHA256:\n")
    release += "".join(f" {_digest(p, 'sha256')} {p.stat().st_size} {p.relative_to(dist)}\n" for p in indexes)
    (dist / "Release").write_text(release)
    gnupg_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {**os.environ, "GNUPGHOME": str(gnupg_home)}
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    try:
        subprocess.run([*gpg, "--quick-gen-key", "loki-stack rehearsal <rehearsal@invalid>", "ed25519", "sign", "1y"],
                       env=env, check=True, capture_output=True, timeout=120)
        listing = subprocess.run(["gpg", "--batch", "--with-colons", "--list-keys"], env=env, check=True,
                                 capture_output=True, text=True, timeout=60).stdout
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        subprocess.run([*gpg, "--yes", "--clearsign", "-o", str(dist / "InRelease"), str(dist / "Release")],
                       env=env, check=True, capture_output=True, timeout=60)
        subprocess.run([*gpg, "--yes", "--armor", "--export", "-o", str(root / KEY_FILE_NAME), fingerprint],
                       env=env, check=True, capture_output=True, timeout=60)
    finally:
        # gpg starts an agent for this home directory; it would outlive the rehearsal for minutes.
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False, capture_output=True, timeout=60)
    return fingerprint


def server_certificate(address: str, directory: Path) -> tuple[Path, Path, Path]:
    """A CA for the rehearsal's repository server and a certificate for ``address`` signed by it:
    (CA certificate, server certificate, server key) files in ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loki-stack rehearsal repository CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress  # noqa: PLC0415 (only here)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    files = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files[0].write_bytes(ca.public_bytes(ser.Encoding.PEM))
    files[1].write_bytes(cert.public_bytes(ser.Encoding.PEM))
    files[2].write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
    files[2].chmod(0o600)
    return files


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.address_string()} {format % args}\n")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    netns, address, port, root, cert, key = argv
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer((address, int(port)), partial(Quiet, directory=root),
                                             bind_and_activate=False)
    server.socket.close()
    server.socket = context.wrap_socket(listening_socket_in(netns, address, int(port)), server_side=True)
    print(f"repository on https://{address}:{port}/ serving {root}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
