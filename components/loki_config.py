"""Loki 3.7 configuration for one node of an "HA monolithic" cluster, built as a dict.

One small function per section (reference: https://grafana.com/docs/loki/latest/configure/),
merged and dumped once. Every node runs ``-target=all``; the ring and the key-value store are on
memberlist; chunks and the TSDB index go to S3 (the stack's object store) with schema v13.
TLS files come from systemd credentials (``LoadCredential=``), so the keys stay root-only on disk.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from components.loki_limits import LokiLimits, runtime_config_section
from components.timeouts import DEFAULT as DEFAULT_TIMEOUTS
from components.timeouts import Timeouts

HTTP_PORT, GRPC_PORT, MEMBERLIST_PORT = 3100, 9095, 7946
"""Loki's public HTTP port is served by the node's gateway (``components.loki_gateway``)."""
LOKI_LOCAL_ADDRESS, LOKI_LOCAL_PORT = "127.0.0.1", 3101
"""Where Loki itself listens for HTTP: loopback only, behind the gateway."""
SERVICE_USER = "loki"
"""The user Loki runs as: the one Grafana's loki package names in its unit (``User=loki``,
tools/packaging/loki.service) and makes in its post-install; loki-setup.sh makes it first."""
CREDENTIALS_DIR = "/run/credentials/loki.service"
"""Where systemd hands the service its TLS files (``LoadCredential=``)."""
CERT_FILE, KEY_FILE, CA_FILE = (f"{CREDENTIALS_DIR}/server.pem", f"{CREDENTIALS_DIR}/server.key",
                                f"{CREDENTIALS_DIR}/ca.pem")
S3_ACCESS_KEY_VAR, S3_SECRET_KEY_VAR = "LOKI_S3_ACCESS_KEY", "LOKI_S3_SECRET_KEY"
S3_REGION = "us-east-1"  # MinIO's default region; Loki's S3 client wants one
GRACEFUL_SHUTDOWN_TIMEOUT = "30s"
"""How long Loki's HTTP server lets requests in flight finish when the node stops: Loki's default,
rendered so that it stays. With the VIP handed over first, no client of the VIP is left on the
node; a request to the node's own address (a scrape, a query) gets this long. What a stop takes
(1.4-9.6 s in the rehearsal's roll) is the flush and ring leave (about 1 s) and then gRPC's graceful
stop, which waits for peers to drop their streams to this node: dskit's ``Server.Shutdown`` bounds
only the HTTP part with this timeout. The unit's ``TimeoutStopSec`` bounds the whole stop."""
MIN_READY_DURATION = "5s"
"""How long the ingester waits, once its own view of the ring is whole, before it reports ready
(Loki's default: 15s; dskit's ``Lifecycler.CheckReady``). The wait exists to give the other nodes
time to see this one ACTIVE before a roll moves on; the roll here does not trust it: before a node
stops, every other node's own view of the ring must show the nodes that stay ACTIVE
(``templates/lib-ring-check.sh``). Measured in the rehearsal: a restart is ready 12.2 s after its
start instead of 18.3 s, and in every roll the next node's check found every view whole at once
(0.1-0.3 s): the memberlist gossip had carried the restarted node's state by then."""
WAL_DISK_FULL_THRESHOLD = 0.9
"""Share of the data disk in use at which a node's ingester refuses pushes, until it is below again
(Loki 3.7.6, ``pkg/ingester/wal.go``: ``monitorDisk`` reads ``statfs`` of the WAL's directory every
10 s; ``Ingester.Push`` then answers "Ingester is shutting down"). Loki's default, rendered so that
the alert (``components.monitoring``) and the config agree. With replication factor 3 the other two
nodes take each push, so the cluster stays writable while one disk is full, and the WAL is not
written on a full disk."""
COMPACTOR_HEARTBEAT_PERIOD, COMPACTOR_HEARTBEAT_TIMEOUT = "5s", "15s"
"""The compactor ring's heartbeats (Loki's defaults: 15s and 1m). A crashed compactor keeps its
place in the ring until it has been unhealthy for 10 heartbeat timeouts (a constant in Loki's
compactor), and no other node compacts meanwhile: 10 minutes with the defaults, 150 s with these
(the rule measured in tests/test_loki_live.py, with 5 s timeouts there; 148.7 s measured with these
in an earlier run). A clean stop leaves the ring at once."""


@dataclass(frozen=True, kw_only=True)
class LokiNodeSpec:
    name: str
    """Host name (also the memberlist node name)."""
    address: str
    """The node's own address: what it advertises in the ring and memberlist."""


@dataclass(frozen=True, kw_only=True)
class LokiConfigSpec:
    nodes: Sequence[LokiNodeSpec]
    """Every node, in rollout order."""
    cluster_label: str
    """memberlist cluster label: nodes of another cluster are refused."""
    limits: LokiLimits
    """The limits Loki reloads at run time (``components.loki_limits``): not in this config."""
    schema_from: str
    """First day of the v13/tsdb schema period (YYYY-MM-DD); fixed once data exists."""
    s3_endpoint: str
    """``host:port`` of the object store (HTTPS)."""
    bucket: str
    data_dir: str
    """``common.path_prefix``: on the node's data disk."""
    memory_mib: int
    """Memory of each Loki VM: bounds what a WAL replay may hold before it flushes."""
    internal_tls: bool
    """TLS (with client certificates) on gRPC between nodes and on memberlist."""
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    """Loki's query timeout and its HTTP server's, below the gateway's (``components.timeouts``)."""

    @property
    def replication_factor(self) -> int:
        return 1 if len(self.nodes) == 1 else 3

    def node(self, name: str) -> LokiNodeSpec:
        return next(n for n in self.nodes if n.name == name)


def _client_tls() -> dict[str, Any]:
    """A TLS client with our CA and the node's certificate (peers require client certificates)."""
    return {"tls_cert_path": CERT_FILE, "tls_key_path": KEY_FILE, "tls_ca_path": CA_FILE}


def _grpc_client() -> dict[str, Any]:
    return {"tls_enabled": True, **_client_tls()}


def server(spec: LokiConfigSpec) -> dict[str, Any]:
    """https://grafana.com/docs/loki/latest/configure/#server

    HTTP on loopback only, behind the node's gateway, which presents the node's own certificate:
    a client certificate is always required here (the gateway decides who may do what)."""
    http_tls = {"cert_file": CERT_FILE, "key_file": KEY_FILE, "client_ca_file": CA_FILE,
                "client_auth_type": "RequireAndVerifyClientCert"}
    section: dict[str, Any] = {"http_listen_address": LOKI_LOCAL_ADDRESS, "http_listen_port": LOKI_LOCAL_PORT,
                               "grpc_listen_port": GRPC_PORT, "log_level": "info", "http_tls_config": http_tls,
                               "graceful_shutdown_timeout": GRACEFUL_SHUTDOWN_TIMEOUT,
                               # Longer than a query may take, so that Loki can answer its timeout (504).
                               "http_server_read_timeout": f"{spec.timeouts.loki_http_s}s",
                               "http_server_write_timeout": f"{spec.timeouts.loki_http_s}s"}
    if spec.internal_tls:
        section["grpc_tls_config"] = {"cert_file": CERT_FILE, "key_file": KEY_FILE, "client_ca_file": CA_FILE,
                                      "client_auth_type": "RequireAndVerifyClientCert"}
    return {"server": section}


def common(spec: LokiConfigSpec, node: LokiNodeSpec) -> dict[str, Any]:
    """https://grafana.com/docs/loki/latest/configure/#common (the S3 keys come from the
    environment: ``-config.expand-env=true`` and a root-only env file)."""
    return {"common": {
        "path_prefix": spec.data_dir,
        "replication_factor": spec.replication_factor,
        "instance_addr": node.address,
        "ring": {"kvstore": {"store": "memberlist"}},
        "storage": {"s3": {
            "endpoint": spec.s3_endpoint,
            "bucketnames": spec.bucket,
            "region": S3_REGION,
            "access_key_id": f"${{{S3_ACCESS_KEY_VAR}}}",
            "secret_access_key": f"${{{S3_SECRET_KEY_VAR}}}",
            "s3forcepathstyle": True,
            "insecure": False,
            "http_config": {"ca_file": CA_FILE},
        }},
    }}


JOIN_SEEDS = 3
"""How many nodes (the first ones) a starting node asks to join memberlist: one that answers is
enough, and the gossip brings every other member. Not every node: adding a node, or retiring one
after the first three, then leaves every other node's config as it is, so that scaling restarts no
Loki (the config's SHA-256 decides a restart: ``components/loki.py``)."""


def memberlist(spec: LokiConfigSpec, node: LokiNodeSpec) -> dict[str, Any]:
    """https://grafana.com/docs/loki/latest/configure/#memberlist"""
    section: dict[str, Any] = {
        "node_name": node.name,
        "randomize_node_name": False,
        "bind_port": MEMBERLIST_PORT,
        "join_members": [f"{n.address}:{MEMBERLIST_PORT}" for n in spec.nodes[:JOIN_SEEDS]],
        "cluster_label": spec.cluster_label,
    }
    if spec.internal_tls:
        section.update({"tls_enabled": True, **_client_tls()})
    return {"memberlist": section}


def schema(spec: LokiConfigSpec) -> dict[str, Any]:
    """https://grafana.com/docs/loki/latest/configure/storage/#schema-config"""
    return {"schema_config": {"configs": [{
        "from": spec.schema_from, "store": "tsdb", "object_store": "s3", "schema": "v13",
        "index": {"prefix": "index_", "period": "24h"},
    }]}}


def storage(spec: LokiConfigSpec) -> dict[str, Any]:
    """https://grafana.com/docs/loki/latest/configure/#storage_config"""
    return {"storage_config": {"tsdb_shipper": {
        "active_index_directory": f"{spec.data_dir}/tsdb-index",
        "cache_location": f"{spec.data_dir}/tsdb-cache",
    }}}


def ingester(spec: LokiConfigSpec) -> dict[str, Any]:
    """https://grafana.com/docs/loki/latest/configure/#ingester: the WAL on the data disk,
    flushed on shutdown; a node leaving cleanly leaves the ring."""
    return {"ingester": {
        # Loki's default replay ceiling is 4GB, all of a 4 GiB VM: half of the VM's memory instead.
        "wal": {"enabled": True, "dir": f"{spec.data_dir}/wal", "flush_on_shutdown": True,
                "replay_memory_ceiling": f"{spec.memory_mib // 2}MB", "disk_full_threshold": WAL_DISK_FULL_THRESHOLD},
        "lifecycler": {"unregister_on_shutdown": True, "min_ready_duration": MIN_READY_DURATION},
    }}


RETENTION_MARKER_PREFIX = "retention-markers/"
"""Where the compactor keeps its retention markers: in the bucket, not in the node's working
directory (``compactor.deletion_marker_object_store_prefix``; it must end with ``/``).

Retention works in two steps (Loki 3.7.6, ``pkg/compactor``): the elected compactor *marks* the
chunks past their retention (it writes their IDs to marker files and rewrites the index without
them), and its *sweeper* deletes the marked chunks once the files are ``retention_delete_delay``
old (2h). The sweeper runs only on the elected node. With markers on local disk, every roll or
failover that moves the election between marking and sweeping strands the marked chunks: no
other node knows of them, and as the index no longer lists them no later compactor marks them
again; they stay in the bucket until that node is elected again, possibly never, while retention
claims to keep the bucket bounded (tests/test_loki_live.py: marked by one node, deleted by the
next one with this setting, never without). With the prefix, one sweeper per object store reads
them from the bucket, whichever node is elected. On its start every node copies the markers an
earlier version left in its working directory to the bucket and removes them there
(``compactor.go``, ``retention.CopyMarkers``): an upgrade loses none."""


def compactor(spec: LokiConfigSpec) -> dict[str, Any]:
    """https://grafana.com/docs/loki/latest/operations/storage/retention/

    The same on every node: the compactor ring elects one node to compact and apply retention,
    and another takes over when it dies. No ``horizontal_scaling_mode`` (main/worker, experimental
    in 3.7) and no ``common.compactor_grpc_address``: in ``-target=all`` Loki's query-side
    compactor client calls the node's own gRPC address, where a worker serves no compactor API
    (``unknown service grpc.Compactor``), and a single main node is a single point of failure."""
    return {"compactor": {
        "working_directory": f"{spec.data_dir}/compactor",
        "retention_enabled": True,
        "deletion_marker_object_store_prefix": RETENTION_MARKER_PREFIX,
        "delete_request_store": "s3",
        "compactor_ring": {"heartbeat_period": COMPACTOR_HEARTBEAT_PERIOD,
                           "heartbeat_timeout": COMPACTOR_HEARTBEAT_TIMEOUT},
    }}


DELETION_MODE = "filter-and-delete"
"""Loki's default, rendered so that it stays the same on upgrades.

On a cluster the log deletion API (``/loki/api/v1/delete``) is not cluster-wide: each node's
compactor keeps its own delete-request database (a boltdb file it downloads once and uploads
every 5 minutes, last writer wins), so a request is listed only by the node that took it, is
processed only if that node is the elected compactor, and can be lost when another node uploads
its copy (grafana/loki#6779 and #14985, open; measured with Loki 3.7.6 in
tests/test_loki_live.py). ``disabled`` would refuse deletes consistently, but then every query
logs an error (the query path asks the compactor for cache generation numbers and is refused),
so Loki keeps its default and every gateway refuses the deletion API with the reason
(``components.loki_gateway.DELETE_REFUSAL``); retention removes old logs everywhere."""


def limits(spec: LokiConfigSpec) -> dict[str, Any]:
    """https://grafana.com/docs/loki/latest/configure/#limits_config: what Loki reads only at start.
    Retention and ingestion rates are in the runtime configuration (``components.loki_limits``)."""
    return _merge({"limits_config": {"deletion_mode": DELETION_MODE, "query_timeout": f"{spec.timeouts.query_s}s"}},
                  runtime_config_section())


def analytics() -> dict[str, Any]:
    """https://grafana.com/docs/loki/latest/configure/#analytics: no usage reports to Grafana Labs
    (on by default), as Grafana's own are off."""
    return {"analytics": {"reporting_enabled": False}}


def grpc_clients(spec: LokiConfigSpec) -> dict[str, Any]:
    """Every internal gRPC client on TLS with our CA and the node's certificate."""
    if not spec.internal_tls:
        return {}
    return {
        "ingester_client": {"grpc_client_config": _grpc_client()},
        "frontend_worker": {"grpc_client_config": _grpc_client()},
        "frontend": {"grpc_client_config": _grpc_client(), "tail_tls_config": _client_tls()},
        "query_scheduler": {"grpc_client_config": _grpc_client()},
        "storage_config": {"tsdb_shipper": {"index_gateway_client": {"grpc_client_config": _grpc_client()}}},
        "compactor_grpc_client": _grpc_client(),
        "pattern_ingester": {"client_config": {"grpc_client_config": _grpc_client()}},
        "ruler": {"ruler_client": _grpc_client()},
    }


def _merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def loki_config(spec: LokiConfigSpec, node_name: str) -> dict[str, Any]:
    """The whole config of one node."""
    node = spec.node(node_name)
    config: dict[str, Any] = {"target": "all", "auth_enabled": False}
    for section in (server(spec), common(spec, node), memberlist(spec, node), schema(spec), storage(spec),
                    ingester(spec), compactor(spec), limits(spec), analytics(), grpc_clients(spec)):
        _merge(config, section)
    return config


def render_loki_config(spec: LokiConfigSpec, node_name: str) -> str:
    header = f"# Loki config of {node_name}, written by loki-stack. Checked with `loki -verify-config`.\n"
    return header + yaml.safe_dump(loki_config(spec, node_name), sort_keys=False)


def render_env_file(access_key: str, secret_key: str) -> str:
    """Root-only env file (EnvironmentFile=): Loki's S3 keys, expanded into the config at start."""
    return f'{S3_ACCESS_KEY_VAR}="{access_key}"\n{S3_SECRET_KEY_VAR}="{secret_key}"\n'


def render_logcli_environment(url: str, directory: str = "$HOME/.config/loki-stack") -> str:
    """Shell lines that point logcli at the cluster with the operator's certificate."""
    return "".join(f'export {k}="{v}"\n' for k, v in {
        "LOKI_ADDR": url,
        "LOKI_CA_CERT_PATH": f"{directory}/ca.pem",
        "LOKI_CLIENT_CERT_PATH": f"{directory}/operator.pem",
        "LOKI_CLIENT_KEY_PATH": f"{directory}/operator.key",
    }.items())
