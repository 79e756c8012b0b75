"""The Loki cluster on the example stack: each node's config parsed back, the install and apply
scripts, the rolling restart chain, the drop-in (systemd-analyze) and the scrape job (promtool)."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from typing import Any

import pulumi
import pytest
import yaml

from components.grafana_repository import GRAFANA_KEY_FINGERPRINTS
from components.loki import (
    CONFIG_FILE,
    DROPIN_FILE,
    ENV_FILE,
    STARTED_RECORD,
    LokiCluster,
    LokiClusterArgs,
    LokiHost,
    render_dropin,
)
from components.loki_config import (
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    LokiConfigSpec,
    LokiNodeSpec,
    loki_config,
)
from components.loki_limits import LokiLimits
from components.vip_handover import VipHandover
from offline import engine
from offline.rehearsal.repository import LOKI_UNIT
from tests.labs.example import COMMAND, EXAMPLE_NODES, config_of, shellcheck_commands, staged
from tests.labs.systemd_checks import verify_dropin

NODES, CMD = EXAMPLE_NODES, COMMAND
GRPC_CLIENT_PATHS = [
    ("ingester_client", "grpc_client_config"), ("frontend_worker", "grpc_client_config"),
    ("frontend", "grpc_client_config"), ("query_scheduler", "grpc_client_config"),
    ("storage_config", "tsdb_shipper", "index_gateway_client", "grpc_client_config"), ("compactor_grpc_client",),
    ("pattern_ingester", "client_config", "grpc_client_config"), ("ruler", "ruler_client"),
]



def dig(config: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        config = config[key]
    return config


@pytest.mark.parametrize("host", list(NODES))
def test_each_node_advertises_itself_and_joins_every_peer(example, host):
    config = config_of(example, host)
    assert config["target"] == "all"
    common = config["common"]
    assert common["instance_addr"] == NODES[host], f"{host} must advertise its own address, not 127.0.0.1"
    assert common["replication_factor"] == 3
    assert common["ring"]["kvstore"]["store"] == "memberlist"
    assert common["path_prefix"] == "/var/lib/loki" and "/tmp" not in yaml.safe_dump(config), f"{host}: data in /tmp"
    members = config["memberlist"]
    assert members["join_members"] == [f"{a}:7946" for a in NODES.values()], f"{host}: memberlist peers"
    assert members["node_name"] == host and members["cluster_label"] == "loki-stack.home.arpa"
    assert (members["tls_enabled"], members["tls_ca_path"]) == (True, CA_FILE)


def test_every_node_runs_the_same_ring_elected_compactor(example):
    compactors = {h: config_of(example, h)["compactor"] for h in NODES}
    assert all(c == compactors["loki-01"] for c in compactors.values()), f"compactor sections differ: {compactors}"
    for host in NODES:
        config = config_of(example, host)
        assert "horizontal_scaling_mode" not in config["compactor"], (
            f"{host}: main/worker compactors break deletes in -target=all (unknown service grpc.Compactor)")
        assert "compactor_grpc_address" not in config["common"] and "compactor_address" not in config["common"], (
            f"{host}: a fixed compactor address makes one node a single point of failure")
        compactor = config["compactor"]
        assert compactor["retention_enabled"] is True and compactor["delete_request_store"] == "s3"
        prefix = compactor.get("deletion_marker_object_store_prefix", "")
        assert prefix.endswith("/") and len(prefix) > 1, (
            f"{host}: retention markers must be in the bucket under a prefix ending in '/' (Loki's rule), got "
            f"{prefix!r}: on local disk a compactor move strands the chunks they mark")
        assert compactor["compactor_ring"] == {"heartbeat_period": "5s", "heartbeat_timeout": "15s"}, (
            f"{host}: a crashed compactor must be replaced within minutes, not Loki's default 10")
        assert "retention_period" not in config["limits_config"], (
            f"{host}: retention belongs in the runtime config, where a change restarts nothing")


def test_the_nodes_configs_differ_only_in_the_nodes_own_name_and_address(example):
    """Nothing is special about any node (no main compactor, no first node): a node can be lost,
    replaced or reordered without touching what the others do."""
    def without_self(host: str) -> str:
        text = yaml.safe_dump(config_of(example, host))
        return text.replace(f"instance_addr: {NODES[host]}", "instance_addr: SELF").replace(
            f"node_name: {host}", "node_name: SELF")

    for host in NODES:
        assert without_self(host) == without_self("loki-01"), f"{host}'s config differs in more than itself"


def test_deletion_stays_lokis_default_on_every_node(example):
    """Not ``disabled``: every query would log an error asking the compactor for cache generation
    numbers (measured). The live test shows what deletes do on a cluster."""
    assert {config_of(example, h)["limits_config"]["deletion_mode"] for h in NODES} == {"filter-and-delete"}


@pytest.mark.parametrize("host", list(NODES))
def test_schema_storage_and_wal(example, host):
    config = config_of(example, host)
    assert config["schema_config"]["configs"] == [{"from": "2025-01-01", "store": "tsdb", "object_store": "s3",
                                                   "schema": "v13", "index": {"prefix": "index_", "period": "24h"}}]
    s3 = config["common"]["storage"]["s3"]
    assert s3["endpoint"] == "s3.home.arpa:9000" and s3["bucketnames"] == "loki"
    assert s3["s3forcepathstyle"] is True and s3["insecure"] is False and s3["http_config"] == {"ca_file": CA_FILE}
    expected = {"access_key_id": "${LOKI_S3_ACCESS_KEY}", "secret_access_key": "${LOKI_S3_SECRET_KEY}"}
    assert {k: s3[k] for k in expected} == expected, "the S3 keys must come from the environment"
    assert config["ingester"]["wal"] == {"enabled": True, "dir": "/var/lib/loki/wal", "flush_on_shutdown": True,
                                         "replay_memory_ceiling": "2048MB", "disk_full_threshold": 0.9}, (
        f"{host}: a WAL replay may use half of the 4096 MiB VM, not Loki's default 4GB; the ingester refuses "
        f"pushes from a 90% full disk, as the LokiWALDiskFull alert says")
    assert config["ingester"]["lifecycler"] == {"unregister_on_shutdown": True, "min_ready_duration": "5s"}, (
        f"{host}: a node leaving cleanly must leave the ring; readiness waits 5 s (the roll checks every view)")


@pytest.mark.parametrize("host", list(NODES))
def test_tls_everywhere_with_client_certificates(example, host):
    config = config_of(example, host)
    for block in ("http_tls_config", "grpc_tls_config"):
        tls = config["server"][block]
        assert tls == {"cert_file": CERT_FILE, "key_file": KEY_FILE, "client_ca_file": CA_FILE,
                       "client_auth_type": "RequireAndVerifyClientCert"}, f"{host}: server.{block}"
    for path in GRPC_CLIENT_PATHS:
        client = dig(config, path)
        assert client == {"tls_enabled": True, "tls_cert_path": CERT_FILE, "tls_key_path": KEY_FILE,
                          "tls_ca_path": CA_FILE}, f"{host}: {'.'.join(path)} is not on TLS with our CA"
    assert config["frontend"]["tail_tls_config"] == {"tls_cert_path": CERT_FILE, "tls_key_path": KEY_FILE,
                                                     "tls_ca_path": CA_FILE}


LIMITS = LokiLimits(retention="744h", ingestion_rate_mb=16, ingestion_burst_mb=64)
HANDOVER = VipHandover(address="192.168.50.20", interface="eth0", port=3100,
                       priorities={"loki-01": 200, "loki-02": 190, "loki-03": 180}, addresses=NODES, preempt=True,
                       check_interval=2, check_rise=2,
                       keepalived_unit="keepalived.service", keepalived_config="/etc/keepalived/keepalived.conf",
                       drain_port=3102, keepalive_time_s=5)


def spec(**changes: Any) -> LokiConfigSpec:
    base = LokiConfigSpec(
        nodes=[LokiNodeSpec(name=n, address=a) for n, a in NODES.items()], cluster_label="c", limits=LIMITS,
        schema_from="2025-01-01", s3_endpoint="s3:9000", bucket="loki",
        data_dir="/var/lib/loki", memory_mib=4096, internal_tls=True)
    return replace(base, **changes)


def test_with_internal_tls_off_no_client_block_claims_tls():
    config = loki_config(spec(internal_tls=False), "loki-02")
    assert "grpc_tls_config" not in config["server"]
    assert "tls_enabled" not in config["memberlist"]
    assert not any(k in config for k in ("ingester_client", "compactor_grpc_client", "frontend_worker"))


def test_single_node_mode_replicates_once_and_runs_the_same_compactor():
    single = spec(nodes=[LokiNodeSpec(name="loki-01", address="192.168.50.21")])
    config = loki_config(single, "loki-01")
    assert config["common"]["replication_factor"] == 1
    assert config["compactor"] == loki_config(spec(), "loki-02")["compactor"]
    assert config["memberlist"]["join_members"] == ["192.168.50.21:7946"]


@pytest.mark.parametrize("host", list(NODES))
def test_no_secret_in_the_config_and_the_keys_in_a_root_only_env_file(example, host):
    keys = [v for v, label in example.engine.cloud.secret_values.items() if label.startswith("loki-bucket-keys")]
    access_key = example.resolved["output:lokiS3AccessKey"].value
    assert keys and access_key
    hf, resolved = staged(example, host, "config.yml")
    assert not any(k in resolved.value for k in [*keys, access_key]), f"{host}: S3 keys in config.yml"
    hf, env = staged(example, host, "lokistack.env")
    assert (hf.owner, hf.mode) == ("root", "0600") and env.secret, f"{host}: the env file must be root-only, secret"
    assert env.value == f'LOKI_S3_ACCESS_KEY="{access_key}"\nLOKI_S3_SECRET_KEY="{keys[0]}"\n'


def test_the_setup_pins_the_package_and_the_repository_key(example):
    stdin = example.engine.monitor.find(CMD, "loki-loki-01-setup").plain_inputs["stdin"]
    assert f"KEY_FINGERPRINTS={GRAFANA_KEY_FINGERPRINTS[0]}" in stdin and "LOKI_VERSION=3.7.6" in stdin
    assert 'install_pinned loki "$LOKI_VERSION"' in stdin and 'apt-mark hold "$package"' in stdin
    assert "policy-rc.d" in stdin, "the package install must not restart Loki on every node at once"
    assert "DATA_DEVICE=/dev/disk/by-id/virtio-lokistack-data" in stdin and "prepare_data_disk" in stdin
    # Loki starts by itself once its data disk is there, also when it was missing at boot.
    assert "DISK_PATH_UNIT=lokistack-data-disk-loki.path" in stdin and (
        "PathExists=/dev/disk/by-id/virtio-lokistack-data" in stdin), "the setup must install the disk's path unit"
    assert stdin.index('systemctl enable --quiet "$DISK_PATH_UNIT"') > stdin.index("prepare_data_disk \"$DATA_DEVICE\"")


def test_the_apply_verifies_before_it_touches_anything(example):
    stdin = example.engine.monitor.find(CMD, "loki-loki-02-apply").plain_inputs["stdin"]
    verify = stdin.index("-verify-config")
    assert verify < stdin.index('place "${STAGE_DIR}/config.yml"') < stdin.index('\n    vip_leave\n') < stdin.index(
        '\n      systemctl stop "$UNIT"\n') and stdin.index('\n    vip_leave\n') < stdin.index(
        "stop_loki_for_the_gateway\n"), "verify, place, hand the VIP over, and only then stop Loki"
    assert stdin.index('systemctl start "$UNIT"') < stdin.index("\n  vip_rejoin\n"), "back in VRRP after the start"
    assert "READY_URL=https://127.0.0.1:3101/ready" in stdin and "--cert" in stdin
    # A renewed certificate re-runs the step (its trigger), and Loki reads its TLS files only at
    # start: the step must compare them with the credentials the running Loki got (the rehearsal's
    # roll shows the restart; before, the step re-ran and restarted nothing).
    assert "CREDENTIALS_DIR=/run/credentials/loki.service" in stdin and 'cmp -s "${CREDENTIALS_DIR}/' in stdin
    assert "exit 1" in stdin[verify:stdin.index("changed=0")], "a rejected config must end the step"


def test_the_apply_restarts_from_what_runs_and_stops_a_node_only_when_the_ring_can_lose_it(example):
    """Whether Loki restarts is decided from what runs, never from what this run placed (a run
    that placed the files and died must be finished by the next): the unit records the files each
    start reads, and the apply compares exactly those, in that order, with the staged ones that go
    to the same paths. Before a running node stops, the ring check; before that, nothing is placed."""
    stdin = example.engine.monitor.find(CMD, "loki-loki-02-apply").plain_inputs["stdin"]
    dropin = render_dropin(data_dir="/var/lib/loki", cert_file="c", key_file="k", ca_file="a")
    record = re.search(r"^ExecStartPre=-\+/bin/sh -c '.*sha256sum ([^|]+) \| cut -d \" \" -f 1 >(\S+)'$", dropin,
                       re.MULTILINE)
    assert record, f"the drop-in must record what each start reads: {dropin}"
    assert record.group(1).split() == [CONFIG_FILE, ENV_FILE, DROPIN_FILE] and record.group(2) == STARTED_RECORD
    staged_to_target = dict(re.findall(r'^place "\$\{STAGE_DIR\}/(\S+)" "\$(\w+)"', stdin, re.MULTILINE))
    targets = {"CONFIG_FILE": CONFIG_FILE, "ENV_FILE": ENV_FILE, "DROPIN_FILE": DROPIN_FILE}
    compared = re.search(r'should=\$\(sha256sum ((?:"\$\{STAGE_DIR\}/\S+" ?)+)', stdin.replace("\\\n", ""))
    assert compared, "the apply must hash the staged files"
    staged = [p.strip('"').split("/", 1)[1] for p in compared.group(1).split()]
    assert [targets[staged_to_target[f]] for f in staged] == [CONFIG_FILE, ENV_FILE, DROPIN_FILE], (
        f"the apply compares {staged}, the unit records {record.group(1)}: not the same files in the same order")
    assert f"STARTED_RECORD={STARTED_RECORD}" in stdin and 'cat "$STARTED_RECORD"' in stdin
    assert "NeedDaemonReload" in stdin, "a drop-in systemd has not loaded must also restart Loki"
    assert '[ "$changed" -eq 1 ]' not in stdin, "a restart must not depend on what this run placed"
    ring = stdin.index("\n  if ! ring_wait_safe_to_stop; then")
    assert ring < stdin.index('place "${STAGE_DIR}/config.yml"') < stdin.index("\n    vip_leave\n"), (
        "the ring check comes before anything is placed or stopped")
    assert stdin.index("\nold_loki_on_port=no\n") < ring, (
        "the wait for the gateway (an upgrade from before it) comes before the ring check and anything placed")
    ring_nodes = re.search(r"^RING_NODES='([^']*)'$", stdin, re.MULTILINE)
    assert ring_nodes and [n.split("=")[0] for n in ring_nodes.group(1).split()] == list(NODES), (
        f"the ring check must know every node and its address: {ring_nodes}")
    assert stdin.index("trap 'vip_accept_new_connections \"$VIP_DRAIN_TABLE\"' EXIT") < stdin.index(
        '\nvip_recover "$VIP_DRAIN_TABLE"\n') \
        < stdin.index('-config.expand-env=true -verify-config\n'), (
        "a drain never outlives the step, and one an earlier run left goes first")
    start = stdin.index('\n  systemctl start "$UNIT"\n')
    assert stdin.index('\n  elif vip_managed && { ! vip_here || [ -z "$(vip_ready_peers)" ]; }; then\n') < stdin.index(
        '\n    vip_mark 1\n    echo "${host} takes no VIP until its Loki is ready"') < start < stdin.index(
        "\nif vip_marked; then\n  vip_rejoin\n"), (
        "a Loki that was not running starts with its node out of VRRP (unless it holds the VIP and another node "
        "is ready) and rejoins below the holder once ready: its check passing later must not take the VIP by "
        "preemption")


def test_the_restart_chain_is_one_node_after_another_the_vips_home_last(example):
    """From the lowest VRRP priority to the highest: the VIP's home (the first node) restarts last,
    so that an upgrade from a version whose Loki served the VIP's port moves the VIP once, to a node
    that runs the gateway already (components/vip_handover.py)."""
    monitor = example.engine.monitor
    applies = [monitor.find(CMD, f"loki-{h}-apply") for h in reversed(NODES)]
    for earlier, later in itertools.pairwise(applies):
        assert earlier.urn in later.dependencies, f"{later.name} must wait for {earlier.name} (and its /ready)"
    assert not any(a.urn in applies[0].dependencies for a in applies[1:]), f"{applies[0].name} waits for no other"
    for host in NODES:
        runtime = monitor.find(CMD, f"loki-{host}-runtime-apply")
        apply, install = monitor.find(CMD, f"loki-{host}-apply"), monitor.find(CMD, f"loki-{host}-staged-install")
        assert runtime.urn in apply.dependencies, f"{host}: Loki does not start without its runtime config"
        assert not any(a.urn in runtime.dependencies for a in applies), f"{host}: limits wait for no restart"
        setup, tls = monitor.find(CMD, f"loki-{host}-setup"), monitor.find(CMD, f"{host}-tls-install")
        firewall = monitor.find(CMD, f"loki-{host}-firewall-install")
        assert install.urn in apply.dependencies and firewall.urn in install.dependencies
        assert setup.urn in firewall.dependencies, f"{host}: the firewall needs nftables from the setup"
        assert tls.urn in setup.dependencies, f"{host}: Loki needs the TLS files before it starts"


def test_outputs(example):
    urls = example.resolved["output:lokiNodeUrls"].value
    assert urls == {h: f"https://{h}.home.arpa:3100" for h in NODES}
    env = example.resolved["output:logcliEnvironment"].value
    assert 'export LOKI_ADDR="https://loki.home.arpa:3100"' in env
    for var in ("LOKI_CA_CERT_PATH", "LOKI_CLIENT_CERT_PATH", "LOKI_CLIENT_KEY_PATH"):
        assert f"export {var}=" in env


PACKAGED_UNIT = LOKI_UNIT
"""The unit Grafana's loki package installs (the rehearsal's package has the same); drop-ins are verified on it."""


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_the_dropin_passes_systemd_analyze_verify(tmp_path):
    dropin = render_dropin(data_dir="/var/lib/loki", cert_file="/etc/lokistack/tls/server.pem",
                           key_file="/etc/lokistack/tls/server.key", ca_file="/etc/lokistack/tls/ca.pem")
    proc = verify_dropin(tmp_path, "loki.service", PACKAGED_UNIT, dropin, "/usr/bin/loki")
    assert proc.returncode == 0 and proc.stderr.strip() == "", f"drop-in: {proc.stderr}"
    broken = verify_dropin(tmp_path, "loki.service", PACKAGED_UNIT,
                           dropin.replace("LimitNOFILE=65536", "LimitNOFILE=lots"), "/usr/bin/loki")
    assert "Failed to parse resource value" in broken.stderr, "systemd-analyze missed a bad value"
    assert "-config.expand-env=true" in dropin and "-target=all" in dropin
    for directive in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/loki",
                      "PrivateTmp=yes", "ProtectHome=yes", "LoadCredential=server.key:/etc/lokistack/tls/server.key",
                      "TimeoutStopSec=120"):
        assert directive in dropin


@pytest.mark.real_tools
def test_the_host_scripts_pass_shellcheck(example, tmp_path):
    shellcheck_commands(example, ["loki-loki-01-setup", "loki-loki-02-apply"], tmp_path)


def cluster_hashes(digests: dict[str, str]) -> dict[str, str]:
    """Input hashes of every Loki step, for hosts whose TLS digests are ``digests``."""
    conn: Any = {"host": "h", "user": "ops", "private_key": "k"}

    def program() -> LokiCluster:
        return LokiCluster("loki", LokiClusterArgs(
            config=spec(), hosts=[LokiHost(name=h, fqdn=f"{h}.x", connection=conn, tls_digest=digests[h])
                                  for h in NODES],
            version="3.7.6", data_device="/dev/vdb", s3_access_key="AK", s3_secret_key=pulumi.Output.secret("SK"),
            tls_cert_file="/c", tls_key_file="/k", tls_ca_file="/ca", handover=HANDOVER))

    result = engine.run(program, lambda c: {"urls": c.node_urls}, project="loki-stack", stack="t")
    return {r.name: r.inputs_hash for r in result.engine.registrations if r.type == CMD}


def test_a_change_to_one_nodes_files_reruns_only_that_nodes_steps():
    before = cluster_hashes({h: "same" for h in NODES})
    after = cluster_hashes({**{h: "same" for h in NODES}, "loki-02": "renewed"})
    assert sorted(n for n in before if before[n] != after[n]) == ["loki-loki-02-apply"]
