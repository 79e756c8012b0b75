"""stack/config.py: the example stack loads, defaults come from Pulumi.yaml, and every rule
rejects a bad value with one message naming the key, the rule, the value and an example."""

from __future__ import annotations

import base64
from ipaddress import IPv4Address
from typing import Any

import pulumi
import pytest

from offline.plan import read_stack_config
from stack.config import load_settings
from stack.rules import SettingsError, duration_seconds


def test_example_stack_loads_with_three_replicated_loki_nodes(use_config):
    use_config()
    s = load_settings()
    assert [n.name for n in s.loki.nodes] == ["loki-01", "loki-02", "loki-03"]
    assert s.loki.replication_factor == 3
    assert [str(n.address) for n in s.loki.nodes] == ["192.168.50.21", "192.168.50.22", "192.168.50.23"]
    assert s.loki.nodes[0].fqdn == "loki-01.home.arpa"
    assert s.vip.fqdn == "loki.home.arpa" and s.vip.address == IPv4Address("192.168.50.20")
    assert [vm.name for vm in s.vms] == ["loki-01", "loki-02", "loki-03", "s3", "grafana"]
    assert s.network.dns_servers == (IPv4Address("192.168.50.1"),)
    assert s.network.vlan_id is None, "vlanId 0 must mean untagged"


def test_defaults_come_from_pulumi_yaml(use_config):
    use_config(remove=("lokiCores", "dnsServers", "objectStoreDataDiskGiB", "lokiRetention"))
    s = load_settings()
    assert s.loki.nodes[0].cores == 2, "lokiCores default (Pulumi.yaml) not applied"
    assert s.network.dns_servers == (s.network.gateway,), "empty dnsServers must fall back to the gateway"
    assert s.object_store.vm.data_disk_gib == 100
    assert (s.object_store.bucket, s.object_store.root_user) == ("loki", "lokistack-admin")
    assert s.loki.retention == "744h"
    assert (s.loki.schema_from, s.loki.internal_tls, s.loki.require_client_certs) == ("2025-01-01", True, True)
    assert s.grafana.data_disk_gib == 0 and s.grafana.proxmox_node == "pve"


def test_certificate_lifetimes_default_to_a_year_renewed_a_month_early(use_config):
    use_config()
    pki = load_settings().pki
    assert (pki.validity_hours, pki.early_renewal_hours, pki.ca_validity_hours) == (8760, 720, 87600)
    assert pki.ca_early_renewal_hours == pki.validity_hours, "a leaf must never outlive the CA that signed it"


def test_single_node_mode_is_allowed(use_config):
    use_config({"lokiNodes": ["loki-01"], "lokiAddresses": ["192.168.50.21"]})
    s = load_settings()
    assert len(s.loki.nodes) == 1 and s.loki.replication_factor == 1


def test_per_vm_proxmox_nodes(use_config):
    use_config({"lokiProxmoxNodes": ["pve1", "pve2", "pve3"], "grafanaProxmoxNode": "pve2"})
    s = load_settings()
    assert [n.proxmox_node for n in s.loki.nodes] == ["pve1", "pve2", "pve3"]
    assert s.grafana.proxmox_node == "pve2" and s.object_store.vm.proxmox_node == "pve"


def test_a_retiring_node_keeps_its_vm_but_runs_no_loki(use_config):
    use_config({"lokiNodes": ["loki-01", "loki-02", "loki-03", "loki-04"],
                "lokiAddresses": ["192.168.50.21", "192.168.50.22", "192.168.50.23", "192.168.50.24"],
                "lokiRetiring": ["loki-02"]})
    s = load_settings()
    assert [n.name for n in s.loki.nodes] == ["loki-01", "loki-03", "loki-04"], "loki-02 still runs Loki"
    assert [vm.name for vm in s.vms][:4] == ["loki-01", "loki-02", "loki-03", "loki-04"], (
        "the retiring loki-02's VM must stay, in the order of lokiNodes")
    assert s.loki.retiring == {"loki-02"} and s.loki.replication_factor == 3


def test_forever_retention_is_allowed(use_config):
    use_config({"lokiRetention": "0s"})
    assert load_settings().loki.retention == "0s"


EXTRA_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJpr/dRGxU8CQFAAYlnNpNTENGvp7bPiqQowbP0PnG7"
"""A real SSH host public key for the agentExtraHosts cases."""

# Each case: overrides, keys to remove, the key the message must name, and the rule it must state.
BAD: list[tuple[str, dict[str, Any], tuple[str, ...], str, str]] = [
    ("duplicate name", {"grafanaName": "loki-02"}, (), "grafanaName", "must be unique: lokiNodes[1]"),
    ("duplicate name ignoring case", {"objectStoreName": "LOKI-01"}, (), "objectStoreName", "must be unique"),
    ("VIP name equals a host", {"vipHostname": "grafana"}, (), "vipHostname", "must be unique: grafanaName"),
    ("duplicate address", {"grafanaAddress": "192.168.50.22"}, (), "grafanaAddress",
     "must be unique: lokiAddresses[1]"),
    ("VIP equals a node address", {"vipAddress": "192.168.50.21"}, (), "vipAddress",
     "must be unique: lokiAddresses[0]"),
    ("node address equals gateway", {"objectStoreAddress": "192.168.50.1"}, (), "objectStoreAddress",
     "must be unique: networkGateway"),
    ("address outside CIDR", {"lokiAddresses": ["192.168.50.21", "192.168.50.22", "198.51.100.9"]}, (),
     "lokiAddresses[2]", "must be inside networkCidr 192.168.50.0/24"),
    ("broadcast address", {"grafanaAddress": "192.168.50.255"}, (), "grafanaAddress", "not the network or broadcast"),
    ("gateway outside CIDR", {"networkGateway": "192.168.60.1"}, (), "networkGateway", "must be inside networkCidr"),
    ("VIP outside CIDR", {"vipAddress": "192.168.51.20"}, (), "vipAddress", "must be inside networkCidr"),
    ("not an address", {"objectStoreAddress": "192.168.50.300"}, (), "objectStoreAddress", "must be an IPv4 address"),
    ("CIDR with host bits", {"networkCidr": "192.168.50.1/24"}, (), "networkCidr", "host bits zero"),
    ("CIDR too small", {"networkCidr": "192.168.50.16/30", "networkGateway": "192.168.50.17"}, (), "networkCidr",
     "prefix at most /29"),
    ("bad DNS server", {"dnsServers": ["192.168.50.1", "dns.example"]}, (), "dnsServers[1]", "IPv4 address"),
    ("two Loki nodes", {"lokiNodes": ["loki-01", "loki-02"], "lokiAddresses": ["192.168.50.21", "192.168.50.22"]},
     (), "lokiNodes", "1 node (single-node mode) or at least 3"),
    ("no Loki nodes", {"lokiNodes": [], "lokiAddresses": []}, (), "lokiNodes", "or at least 3"),
    ("address count differs", {"lokiAddresses": ["192.168.50.21", "192.168.50.22"]}, (), "lokiAddresses",
     "one address per entry of lokiNodes (3)"),
    ("Proxmox node count differs", {"lokiProxmoxNodes": ["pve1", "pve2"]}, (), "lokiProxmoxNodes",
     "one Proxmox node per entry"),
    ("retiring a node not listed", {"lokiRetiring": ["loki-09"]}, (), "lokiRetiring[0]",
     "must name a node of lokiNodes"),
    ("retiring a node twice", {"lokiNodes": ["loki-01", "loki-02", "loki-03", "loki-04", "loki-05"],
                               "lokiAddresses": [f"192.168.50.{21 + i}" for i in range(5)],
                               "lokiRetiring": ["loki-05", "loki-05"]}, (), "lokiRetiring[1]", "each node once"),
    ("retiring below three nodes", {"lokiRetiring": ["loki-03"]}, (), "lokiRetiring",
     "must leave at least 3 of the 3 nodes"),
    ("a serial that is no number", {"certRevokedSerials": ["5A3C", "not-a-serial"]}, (), "certRevokedSerials[1]",
     "must be a certificate's serial number in hex"),
    ("a zero serial", {"certRevokedSerials": ["00:00"]}, (), "certRevokedSerials[0]", "serial number in hex"),
    ("query timeout too short", {"lokiQueryTimeoutSeconds": 5}, (), "lokiQueryTimeoutSeconds",
     "whole seconds between 10 and 3600"),
    ("query timeout too long", {"lokiQueryTimeoutSeconds": 7200}, (), "lokiQueryTimeoutSeconds",
     "whole seconds between 10 and 3600"),
    ("router id 0", {"vipRouterId": 0}, (), "vipRouterId", "between 1 and 255"),
    ("router id 256", {"vipRouterId": 256}, (), "vipRouterId", "between 1 and 255"),
    ("hostname with underscore", {"lokiNodes": ["loki_01", "loki-02", "loki-03"]}, (), "lokiNodes[0]", "RFC 1123"),
    ("hostname ending in dash", {"grafanaName": "grafana-"}, (), "grafanaName", "RFC 1123"),
    ("hostname over 63 characters", {"objectStoreName": "s" * 64}, (), "objectStoreName", "1-63 characters"),
    ("bad VIP hostname", {"vipHostname": "loki.vip"}, (), "vipHostname", "RFC 1123"),
    ("bad Proxmox node name", {"proxmoxNode": "pve_1"}, (), "proxmoxNode", "RFC 1123"),
    ("bad domain", {"domain": "home..arpa"}, (), "domain", "RFC 1123 labels"),
    ("Loki version latest", {"lokiVersion": "latest"}, (), "lokiVersion", "pinned release, not a moving tag"),
    ("Loki version without patch", {"lokiVersion": "3.7"}, (), "lokiVersion", "as X.Y.Z"),
    ("Loki 2.x", {"lokiVersion": "2.9.10"}, (), "lokiVersion", "3.7.0 or later"),
    ("Loki version with v", {"lokiVersion": "v3.7.6"}, (), "lokiVersion", "pinned release"),
    ("bad retention", {"lokiRetention": "31days"}, (), "lokiRetention", "Loki duration"),
    ("retention below a day", {"lokiRetention": "12h"}, (), "lokiRetention", "at least 24h"),
    ("missing endpoint", {}, ("proxmoxEndpoint",), "proxmoxEndpoint", "is required"),
    ("plain-http endpoint", {"proxmoxEndpoint": "http://pve:8006/"}, (), "proxmoxEndpoint", "https:// URL"),
    ("missing network", {}, ("networkCidr",), "networkCidr", "is required"),
    ("missing API token", {}, ("proxmoxApiToken",), "proxmoxApiToken", "pulumi config set --secret proxmoxApiToken"),
    ("VLAN out of range", {"vlanId": 5000}, (), "vlanId", "between 1 and 4094"),
    ("bridge name too long", {"bridge": "vmbr0-very-long-name"}, (), "bridge", "1-15"),
    ("bad datastore", {"proxmoxVmDatastore": "local lvm"}, (), "proxmoxVmDatastore", "Proxmox storage id"),
    ("no admin keys", {"sshAdminKeys": []}, (), "sshAdminKeys", "at least one OpenSSH public key"),
    ("garbage admin key", {"sshAdminKeys": ["ssh-ed25519 not-base64!"]}, (), "sshAdminKeys[0]", "OpenSSH public key"),
    ("admin user root", {"sshAdminUser": "root"}, (), "sshAdminUser", "not reserved"),
    ("wrong type", {"lokiCores": "two"}, (), "lokiCores", "must be of type integer"),
    ("wrong array item type", {"lokiNodes": ["loki-01", 2, "loki-03"]}, (), "lokiNodes", "array of string"),
    ("unknown key", {"lokiRetension": "744h"}, (), "lokiRetension", "is not a setting of this project"),
    ("too little memory", {"lokiMemoryMiB": 512}, (), "lokiMemoryMiB", "at least 1024"),
    ("Loki without data disk", {"lokiDataDiskGiB": 0}, (), "lokiDataDiskGiB", "keeps its data there"),
    ("zero cores", {"grafanaCores": 0}, (), "grafanaCores", "between 1 and 64"),
    ("image URL latest", {"cloudImageUrl": "https://cloud.debian.org/images/cloud/bookworm/latest/"
                                           "debian-12-genericcloud-amd64.qcow2"}, (), "cloudImageUrl", "dated build"),
    ("image over http", {"cloudImageUrl": "http://example.org/x.qcow2"}, (), "cloudImageUrl", "https:// URL"),
    ("short checksum", {"cloudImageChecksum": "abc123"}, (), "cloudImageChecksum", "128-digit lower-case hex sha512"),
    ("certificate lifetime below a day", {"certValidityHours": 12}, (), "certValidityHours", "between 24 and 43800"),
    ("renewal window as long as the lifetime", {"certEarlyRenewalHours": 8760}, (), "certEarlyRenewalHours",
     "must be less than certValidityHours (8760)"),
    ("no renewal window", {"certEarlyRenewalHours": 0}, (), "certEarlyRenewalHours", "at least 1"),
    ("CA shorter than two leaf lifetimes", {"caValidityHours": 10000}, (), "caValidityHours",
     "at least twice certValidityHours (17520)"),
    ("bucket with capitals", {"objectStoreBucket": "Loki"}, (), "objectStoreBucket", "S3 bucket name"),
    ("bucket like an IP", {"objectStoreBucket": "192.168.50.1"}, (), "objectStoreBucket", "not an IP address"),
    ("short root user", {"objectStoreRootUser": "ab"}, (), "objectStoreRootUser", "3-64 letters"),
    ("root user is Prometheus'", {"objectStoreRootUser": "prometheus"}, (), "objectStoreRootUser",
     "must not be a user the stack makes"),
    ("package over http", {"objectStorePackageUrl": "http://example.org/silo.tar.gz"}, (), "objectStorePackageUrl",
     "must be an https:// URL (a pinned release archive)"),
    ("endpoint port out of range", {"proxmoxEndpoint": "https://pve:99999/"}, (), "proxmoxEndpoint",
     "Port out of range"),
    ("endpoint port 0", {"proxmoxEndpoint": "https://pve:0/"}, (), "proxmoxEndpoint", "port between 1 and 65535"),
    ("endpoint with credentials", {"proxmoxEndpoint": "https://root:pw@pve:8006/"}, (), "proxmoxEndpoint",
     "credentials"),
    ("endpoint broken IPv6", {"proxmoxEndpoint": "https://[fe80::1/"}, (), "proxmoxEndpoint", "well-formed"),
    ("endpoint without a host", {"proxmoxEndpoint": "https:///api2/json"}, (), "proxmoxEndpoint", "name a host"),
    ("image URL with a query", {"cloudImageUrl": "https://cloud.debian.org/a/debian-12-20250210.qcow2?x=1"}, (),
     "cloudImageUrl", "query"),
    ("package URL with a space", {"objectStorePackageUrl": "https://example.org/a b.tar.gz"}, (),
     "objectStorePackageUrl", "without spaces"),
    ("admin key in PEM form", {"sshAdminKeys": [
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----"]}, (), "sshAdminKeys[0]",
     "one-line OpenSSH form"),
    ("admin key in RFC 4716 form", {"sshAdminKeys": [
        "---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----"]}, (), "sshAdminKeys[0]",
     "ssh-keygen -i"),
    ("admin key of an unknown type", {"sshAdminKeys": ["ssh-foo AAAAB3NzaC1yc2E= me"]}, (), "sshAdminKeys[0]",
     "not an OpenSSH public key type"),
    ("admin key without its type", {"sshAdminKeys": [EXTRA_KEY.split()[1]]}, (), "sshAdminKeys[0]", "one-line form"),
    ("bad package checksum", {"objectStorePackageSha256": "d63d"}, (), "objectStorePackageSha256", "64-digit"),
    ("schema date not a date", {"lokiSchemaFrom": "2025-13-01"}, (), "lokiSchemaFrom", "YYYY-MM-DD"),
    ("schema date in the future", {"lokiSchemaFrom": "2999-01-01"}, (), "lokiSchemaFrom", "not in the future"),
    ("schema date without dashes", {"lokiSchemaFrom": "20250101"}, (), "lokiSchemaFrom", "YYYY-MM-DD"),
    ("advert interval 0", {"vipAdvertInterval": 0}, (), "vipAdvertInterval", "whole seconds between 1 and 255"),
    ("check interval too long", {"vipCheckInterval": 120}, (), "vipCheckInterval", "between 1 and 60"),
    ("no failed checks needed", {"vipCheckFall": 0}, (), "vipCheckFall", "between 1 and 10"),
    ("too many Loki nodes", {"lokiNodes": [f"loki-{i:02}" for i in range(51)],
                             "lokiAddresses": [f"192.168.50.{100 + i}" for i in range(51)]}, (), "lokiNodes",
     "at most 50 nodes"),
    ("Grafana latest", {"grafanaVersion": "latest"}, (), "grafanaVersion", "pinned release X.Y.Z"),
    ("Alloy without patch", {"alloyVersion": "1.21"}, (), "alloyVersion", "pinned release X.Y.Z"),
    ("extra host without key", {"agentExtraHosts": ["backup-01 192.168.50.60"]}, (), "agentExtraHosts[0]",
     '"NAME ADDRESS HOSTKEY"'),
    ("extra host with a bad key", {"agentExtraHosts": ["backup-01 192.168.50.60 ssh-ed25519 nope"]}, (),
     "agentExtraHosts[0]", "SSH host public key"),
    ("extra host in another field order", {"agentExtraHosts": [
        f"backup-01 {EXTRA_KEY} 192.168.50.60"]}, (),
     "agentExtraHosts[0]", "in this order"),
    ("extra host address first", {"agentExtraHosts": [
        f"192.168.50.60 backup-01 {EXTRA_KEY}"]}, (),
     "agentExtraHosts[0]", "in this order"),
    ("extra host on the VIP's address", {"agentExtraHosts": [
        f"backup-01 192.168.50.20 {EXTRA_KEY}"]}, (),
     "agentExtraHosts[0]", "must be unique: vipAddress already uses this address"),
    ("extra host on a Loki node's address", {"agentExtraHosts": [
        f"backup-01 192.168.50.22 {EXTRA_KEY}"]}, (),
     "agentExtraHosts[0]", "must be unique: lokiAddresses[1] already uses this address"),
    ("extra host named like a VM", {"agentExtraHosts": [
        f"grafana 192.168.50.60 {EXTRA_KEY}"]}, (),
     "agentExtraHosts[0]", "must be unique: grafanaName"),
    ("weak checksum algorithm", {"cloudImageChecksumAlgorithm": "md5"}, (), "cloudImageChecksumAlgorithm",
     "must be one of ['sha256', 'sha512']"),
]


@pytest.mark.parametrize(("overrides", "remove", "key", "rule"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_setting_is_rejected_with_key_rule_value_and_example(use_config, overrides, remove, key, rule):
    use_config(overrides, remove)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    lines = [str(p) for p in raised.value.problems if p.key == f"loki-stack:{key}"]
    assert lines, f"no problem reported for loki-stack:{key}; got: {raised.value}"
    line = next((x for x in lines if rule in x), None)
    assert line is not None, f"loki-stack:{key}: expected rule {rule!r} in {lines}"
    assert "; got " in line and ". Example: " in line, f"message lacks value or example: {line}"
    if key in overrides:
        shown = overrides[key]
        fragment = shown if isinstance(shown, str) else None
        if fragment is not None and "[" not in key and len(fragment) < 40:
            assert repr(fragment) in line, f"the bad value {fragment!r} is not shown in: {line}"


def test_a_bad_api_token_is_reported_without_its_value(use_config):
    bad = "root@pam!pulumi:oops-this-is-a-secret"
    use_config({"proxmoxApiToken": bad})
    with pytest.raises(SettingsError) as raised:
        load_settings()
    text = str(raised.value)
    assert "loki-stack:proxmoxApiToken: must be a Proxmox API token USER@REALM!TOKENID=UUID" in text
    assert bad not in text and "oops" not in text, f"the secret token leaked into the error: {text}"


def test_a_private_key_in_admin_keys_is_refused_without_echoing_it(use_config):
    private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"
    use_config({"sshAdminKeys": [private]})
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "sshAdminKeys[0]: must be a public key; this is a PRIVATE key" in str(raised.value)
    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in str(raised.value)


def test_the_unknown_key_error_suggests_the_close_one(use_config):
    use_config({"lokiRetension": "744h"})
    with pytest.raises(SettingsError, match=r"Example: loki-stack:lokiRetention: \.\.\."):
        load_settings()


def test_an_unknown_key_is_reported_with_the_other_problems(use_config):
    use_config({"lokiRetension": "30d", "vipRouterId": 0})
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert {p.key for p in raised.value.problems} == {"loki-stack:lokiRetension", "loki-stack:vipRouterId"}


def test_a_misspelt_required_key_shows_both_problems(use_config):
    use_config({"networkCIDR": "192.168.50.0/24"}, remove=("networkCidr",))
    with pytest.raises(SettingsError) as raised:
        load_settings()
    text = str(raised.value)
    assert "loki-stack:networkCidr: is required" in text
    assert "loki-stack:networkCIDR: is not a setting" in text and "Example: loki-stack:networkCidr: ..." in text


def test_a_duplicate_address_error_suggests_a_free_one(use_config):
    use_config({"grafanaAddress": "192.168.50.2", "objectStoreAddress": "192.168.50.2"})
    expected = r"grafanaAddress: must be unique: objectStoreAddress .*Example: 192\.168\.50\.3$"
    with pytest.raises(SettingsError, match=expected):
        load_settings()


def test_every_problem_is_reported_at_once(use_config):
    use_config({"vipRouterId": 300, "lokiVersion": "latest", "grafanaAddress": "203.0.113.1"})
    with pytest.raises(SettingsError) as raised:
        load_settings()
    keys = {p.key for p in raised.value.problems}
    assert {"loki-stack:vipRouterId", "loki-stack:lokiVersion", "loki-stack:grafanaAddress"} <= keys, keys
    assert "3 problem(s)" in str(raised.value)


@pytest.mark.parametrize(("text", "seconds"), [
    ("744h", 744 * 3600), ("31d", 31 * 86400), ("1w2d", 9 * 86400), ("1h30m", 5400), ("0s", 0), ("1y", 365 * 86400),
    ("", None), ("31days", None), ("h", None), ("30m1h", None), ("-1h", None),
])
def test_duration_parsing(text, seconds):
    assert duration_seconds(text) == seconds, f"duration {text!r}"


def test_a_misspelt_secret_key_is_reported_without_its_value(use_config, fake_engine):
    cfg = read_stack_config("homelab", overrides={"proxmoxApiTokn": "root@pam!x=do-not-print-me"})
    pulumi.runtime.set_all_config(cfg.config, secret_keys=[*cfg.secret_keys, "loki-stack:proxmoxApiTokn"])
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "loki-stack:proxmoxApiTokn: is not a setting" in str(raised.value)
    assert "do-not-print-me" not in str(raised.value), "a secret value leaked into the error"


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def test_a_security_key_ssh_key_is_accepted(use_config):
    """FIDO keys (sk-ssh-ed25519@openssh.com) are OpenSSH public keys too, unknown to cryptography."""
    kind = b"sk-ssh-ed25519@openssh.com"
    blob = _ssh_string(kind) + _ssh_string(bytes(range(32))) + _ssh_string(b"ssh:")
    key = f"{kind.decode()} {base64.b64encode(blob).decode()} alice@yubikey"
    use_config({"sshAdminKeys": [key]})
    assert load_settings().ssh.admin_keys == (key,)
    forged = f"{kind.decode()} {base64.b64encode(_ssh_string(b'ssh-ed25519') + blob[30:]).decode()}"
    use_config({"sshAdminKeys": [forged]})
    with pytest.raises(SettingsError, match=r"sshAdminKeys\[0\]: must be an OpenSSH public key: its key data"):
        load_settings()
