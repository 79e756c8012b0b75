"""ObjectStore: a MinIO-protocol server (default Silo, the maintained fork of MinIO) on its VM.

Over SSH, in order: ``setup`` (data disk formatted once and mounted, service user, the server
binary from a pinned archive whose SHA-256 is checked on the host), then ``FileDelivery`` of the
env file, the TLS files and the systemd unit (restart only when one changed), then a wait until
``/minio/health/ready`` answers over HTTPS with the stack's CA. The root password is generated.
Bucket, policy, user and keys are made through the MinIO API by ``LokiBucket`` (below), with a
provider the stack builds from this component's outputs.

Server docs: https://silo.pgsty.com (MinIO's env variables, /minio/health routes, certs dir).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_command as command
import pulumi_minio as minio
import pulumi_random as random

from components import disk_arrival
from components.delivery import FileDelivery, FileDeliveryArgs, after, setup_deliver_wait
from components.hostfile import HostFile
from components.scripts import render_script
from components.systemd import hardening

OBJECTSTORE_TYPE = "lokistack:objectstore:ObjectStore"
BUCKET_TYPE = "lokistack:objectstore:LokiBucket"
METRICS_READER_TYPE = "lokistack:objectstore:MetricsReader"
LOKI_USER, METRICS_USER = "loki", "prometheus"
"""The users the stack makes in the object store: Loki's, and Prometheus' (metrics only)."""
API_PORT, CONSOLE_PORT = 9000, 9001
SERVICE_USER = "objectstore"
UNIT = "objectstore.service"
BINARY = "/usr/local/bin/objectstore-server"
DATA_DIR = "/srv/objectstore"
CONFIG_DIR = "/etc/objectstore"
CERTS_DIR = f"{CONFIG_DIR}/certs"
ENV_FILE = f"{CONFIG_DIR}/objectstore.env"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
READY_PATH = "/minio/health/ready"
READY_TIMEOUT_S = 180
RESTART = f"systemctl daemon-reload && systemctl enable {UNIT} && systemctl restart {UNIT}"


def render_env_file(*, fqdn: str, root_user: str, root_password: str) -> str:
    """/etc/objectstore/objectstore.env, read by systemd (as root) for the service."""
    values = {
        "MINIO_VOLUMES": f"{DATA_DIR}/data",
        "MINIO_OPTS": f"--address :{API_PORT} --console-address :{CONSOLE_PORT} --certs-dir {CERTS_DIR}",
        "MINIO_ROOT_USER": root_user,
        "MINIO_ROOT_PASSWORD": root_password,
        "MINIO_SERVER_URL": f"https://{fqdn}:{API_PORT}",
        "MINIO_BROWSER_REDIRECT_URL": f"https://{fqdn}:{CONSOLE_PORT}",
    }
    return "".join(f'{k}="{v}"\n' for k, v in values.items())


def render_unit() -> str:
    """The systemd unit (MinIO's upstream unit, hardened: nothing writable but the data)."""
    return f"""[Unit]
Description=loki-stack object store (MinIO protocol)
Documentation=https://silo.pgsty.com
Wants=network-online.target
After=network-online.target
RequiresMountsFor={DATA_DIR}
AssertFileIsExecutable={BINARY}

[Service]
Type=notify
User={SERVICE_USER}
Group={SERVICE_USER}
EnvironmentFile={ENV_FILE}
ExecStart={BINARY} server $MINIO_OPTS $MINIO_VOLUMES
Restart=always
LimitNOFILE=1048576
TimeoutStopSec=60
{hardening(DATA_DIR)}
[Install]
WantedBy=multi-user.target
"""


def loki_policy(bucket: str) -> dict[str, Any]:
    """Least privilege for Loki: list the bucket, and read, write and delete its objects."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"]},
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": [f"arn:aws:s3:::{bucket}/*"]},
        ],
    }


METRICS_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["admin:Prometheus"]}]}
"""Reading the metrics endpoints and nothing else. An admin statement needs no Resource (minio/pkg's
policy validation returns before it looks at resources for admin actions)."""
METRICS_TOKEN_ISSUER = "prometheus"  # noqa: S105 (a JWT issuer name, not a secret)
"""The server refuses a metrics token whose issuer is not ``prometheus`` (cmd/metrics.go, AuthMiddleware)."""
METRICS_TOKEN_EXPIRY = 4102444800
"""2100-01-01: fixed, so that the token (an output) stays the same from run to run; ``mc admin
prometheus generate`` gives 100 years. Revoke it by deleting the user."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def metrics_token(access_key: str, secret_key: str, expires: int = METRICS_TOKEN_EXPIRY) -> str:
    """The bearer token the object store takes on its metrics endpoints: a JWT (HS512, signed with
    the user's secret key) whose subject is the access key, as ``mc admin prometheus generate`` makes
    it. The server looks the access key up, checks the signature with its secret key, the issuer and
    then the user's policy for ``admin:Prometheus`` (cmd/jwt.go metricsRequestAuthenticate)."""
    header = _b64(json.dumps({"alg": "HS512", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = _b64(json.dumps({"exp": expires, "iss": METRICS_TOKEN_ISSUER, "sub": access_key},
                             separators=(",", ":")).encode())
    signature = hmac.new(secret_key.encode(), f"{header}.{claims}".encode(), hashlib.sha512).digest()
    return f"{header}.{claims}.{_b64(signature)}"


@dataclass(frozen=True, kw_only=True)
class ObjectStoreArgs:
    hostname: str
    """Host name of the object store VM."""
    fqdn: str
    """Its FQDN: the name in its certificate, and the endpoint's host."""
    connection: pulumi.Input[command.remote.ConnectionArgsDict]
    """SSH connection to a ready VM that already has the stack's CA at ``ca_file`` (secret)."""
    data_device: str
    """Device path of the VM's data disk."""
    root_user: str
    """Root user name."""
    package_url: str
    """Pinned server release archive (.tar.gz)."""
    package_sha256: str
    """Its SHA-256, checked on the host before anything is installed."""
    server_cert_pem: pulumi.Input[str]
    """The object store's server certificate."""
    server_key_pem: pulumi.Input[str]
    """Its key (secret)."""
    ca_cert_pem: pulumi.Input[str]
    """The stack's CA certificate."""
    ca_file: str
    """Path of the stack's CA on the host (for the readiness check)."""


class ObjectStore(pulumi.ComponentResource):
    """The object store server, installed, configured over TLS and answering as ready."""

    endpoint: pulumi.Output[str]
    """``https://<fqdn>:9000``."""
    root_user: pulumi.Output[str]
    root_password: pulumi.Output[str]
    """Generated root password (secret)."""
    ready: command.remote.Command
    """Exists once the server answered ``/minio/health/ready``; depend on it to use the API."""
    setup: command.remote.Command
    """The step that installs packages on the host (the host's next package step waits for it)."""
    host_files: list[HostFile]

    def __init__(self, name: str, args: ObjectStoreArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(OBJECTSTORE_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        password = random.RandomPassword(f"{name}-root-password", length=40, special=False, opts=child)
        self.root_password = pulumi.Output.secret(password.result)

        setup_script = render_script("objectstore-setup.sh", {
            "DATA_DEVICE": args.data_device, "DATA_DIR": DATA_DIR, "SERVICE_USER": SERVICE_USER,
            "CONFIG_DIR": CONFIG_DIR, "CERTS_DIR": CERTS_DIR, "PACKAGE_URL": args.package_url,
            "PACKAGE_SHA256": args.package_sha256, "BINARY": BINARY, "UNIT": UNIT,
        }, libraries=["lib-apt.sh", "lib-data-disk.sh"])
        owned = {"owner": "root", "group": SERVICE_USER, "mode": "0640"}  # readable by the server, written by root only
        host = args.hostname
        files = [
            HostFile(host=host, path=ENV_FILE, mode="0600", content=self.root_password.apply(
                lambda pw: render_env_file(fqdn=args.fqdn, root_user=args.root_user, root_password=pw))),
            HostFile(host=host, path=f"{CERTS_DIR}/public.crt", content=args.server_cert_pem, **owned),
            HostFile(host=host, path=f"{CERTS_DIR}/private.key", content=args.server_key_pem, **owned),
            HostFile(host=host, path=f"{CERTS_DIR}/CAs/lokistack-ca.crt", content=args.ca_cert_pem, **owned),
            HostFile(host=host, path=UNIT_FILE, content=render_unit()),
        ]
        wait_script = render_script("wait-https-ready.sh", {
            "URL": f"https://{args.fqdn}:{API_PORT}{READY_PATH}", "CA_FILE": args.ca_file,
            "TIMEOUT_S": READY_TIMEOUT_S, "UNIT": UNIT}, libraries=["lib-wait-ready.sh"])
        # The files need the service user that setup creates: they are delivered after it.
        steps = setup_deliver_wait(name, host=host, connection=args.connection, setup_script=setup_script,
                                   files=files, restart=RESTART, wait_script=wait_script, parent=self)
        self.ready = steps.ready
        self.setup = steps.setup
        # The server starts by itself once its data disk is there, also when it was missing at boot
        # (components/disk_arrival.py); watching from the next boot on (enabled, not started: the
        # server is running by now).
        path_unit, _ = disk_arrival.unit_names(UNIT)
        arrival = FileDelivery(f"{name}-disk-arrival", FileDeliveryArgs(
            host=host, connection=after(args.connection, steps.ready),
            files=disk_arrival.host_files(host, UNIT, args.data_device),
            then=f"systemctl daemon-reload && systemctl enable --quiet {path_unit}"), opts=child)

        self.endpoint = pulumi.Output.from_input(f"https://{args.fqdn}:{API_PORT}")
        self.root_user = pulumi.Output.from_input(args.root_user)
        self.host_files = steps.delivery.host_files + arrival.host_files
        self.register_outputs({"endpoint": self.endpoint, "root_user": self.root_user,
                               "root_password": self.root_password})


@dataclass(frozen=True, kw_only=True)
class LokiBucketArgs:
    bucket: str
    """Bucket name."""
    user: str
    """MinIO user whose keys Loki uses."""


class LokiBucket(pulumi.ComponentResource):
    """Loki's bucket, a least-privilege policy, a user with it and the user's access keys.
    Give it the MinIO provider with ``opts.providers``."""

    bucket: pulumi.Output[str]
    access_key: pulumi.Output[str]
    """Access key id for Loki."""
    secret_key: pulumi.Output[str]
    """Secret key for Loki (secret)."""

    def __init__(self, name: str, args: LokiBucketArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(BUCKET_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        bucket = minio.S3Bucket(f"{name}-bucket", bucket=args.bucket, acl="private", opts=child)
        policy = minio.IamPolicy(f"{name}-policy", name=f"{args.user}-{args.bucket}",
                                 policy=json.dumps(loki_policy(args.bucket), sort_keys=True),
                                 opts=pulumi.ResourceOptions(parent=self, depends_on=[bucket]))
        user_secret = random.RandomPassword(f"{name}-user-secret", length=40, special=False, opts=child)
        user = minio.IamUser(f"{name}-user", name=args.user, secret=user_secret.result, opts=child)
        attachment = minio.IamUserPolicyAttachment(f"{name}-policy-attachment", user_name=user.name,
                                                   policy_name=policy.name, opts=child)
        keys = minio.IamServiceAccount(f"{name}-keys", target_user=user.name,
                                       opts=pulumi.ResourceOptions(parent=self, depends_on=[attachment]))
        self.bucket = bucket.bucket
        self.access_key = keys.access_key
        self.secret_key = pulumi.Output.secret(keys.secret_key)
        self.register_outputs({"bucket": self.bucket, "access_key": self.access_key, "secret_key": self.secret_key})


@dataclass(frozen=True, kw_only=True)
class MetricsReaderArgs:
    user: str
    """MinIO user whose only permission is reading the metrics."""


class MetricsReader(pulumi.ComponentResource):
    """A user that may read the object store's metrics and nothing else, and Prometheus' bearer
    token for it. Give it the MinIO provider with ``opts.providers``."""

    token: pulumi.Output[str]
    """The bearer token (secret)."""

    def __init__(self, name: str, args: MetricsReaderArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(METRICS_READER_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        policy = minio.IamPolicy(f"{name}-policy", name=f"{args.user}-metrics",
                                 policy=json.dumps(METRICS_POLICY, sort_keys=True), opts=child)
        secret = random.RandomPassword(f"{name}-secret", length=40, special=False, opts=child)
        user = minio.IamUser(f"{name}-user", name=args.user, secret=secret.result, opts=child)
        minio.IamUserPolicyAttachment(f"{name}-policy-attachment", user_name=user.name, policy_name=policy.name,
                                      opts=child)
        self.token = pulumi.Output.secret(pulumi.Output.all(user.name, secret.result).apply(
            lambda v: metrics_token(v[0], v[1])))
        self.register_outputs({"token": self.token})
