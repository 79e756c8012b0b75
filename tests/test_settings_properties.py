"""Property: no invalid setting passes, crashes the plan or writes anything.

Every key of the example stack is mutated, one at a time, into a value that is invalid by
construction (wrong YAML types, null, empty, out of range, another key's value, duplicates), the
stack file is written as a user would write it, and the offline plan runs in-process. For every
example: exit code 2, no exception escapes, every reported problem names a declared key, the
mutated key is named, and no plan file is written.

"Invalid by construction" is decided by the simple rules below (a character no host name may
hold, a duplicate address...), not by the code under test.
"""

from __future__ import annotations

import datetime
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offline.plan import main as plan_main
from stack.schema import PROJECT_DIR
from tests.labs.example import SCHEMA

EXAMPLE: dict[str, Any] = yaml.safe_load((PROJECT_DIR / "Pulumi.homelab.yaml").read_text())["config"]
KEYS = sorted(SCHEMA.keys)
EXAMPLES = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJpr/dRGxU8CQFAAYlnNpNTENGvp7bPiqQowbP0PnG7"


def q(key: str) -> str:
    return SCHEMA.qualified(key)


def example(key: str) -> Any:
    """The example stack's value of ``key`` (its file, else the declared default)."""
    return EXAMPLE.get(q(key), SCHEMA.keys[key].default)


def of_type(name: str) -> list[str]:
    return [k for k in KEYS if SCHEMA.keys[k].type == name]


STRINGS, INTEGERS, BOOLEANS, ARRAYS = of_type("string"), of_type("integer"), of_type("boolean"), of_type("array")
OPTIONAL = {"objectStoreProxmoxNode", "grafanaProxmoxNode"}
"""String keys whose empty value means "the default Proxmox node"."""
MAY_BE_EMPTY = {"dnsServers", "lokiProxmoxNodes", "lokiRetiring", "agentExtraHosts", "certRevokedSerials"}
HOST_NAMES = {"vipHostname", "objectStoreName", "grafanaName"}
UPPER = {"vlanId": 4094, "vipRouterId": 255, "vipAdvertInterval": 255, "vipCheckInterval": 60, "vipCheckFall": 10,
         "vipCheckRise": 10, "lokiCores": 64, "objectStoreCores": 64, "grafanaCores": 64,
         "certValidityHours": 5 * 8760, "lokiQueryTimeoutSeconds": 3600}
USED_NAMES = {*example("lokiNodes"), example("objectStoreName"), example("grafanaName"), example("vipHostname")}
USED_ADDRESSES = [example("networkGateway"), *example("lokiAddresses"), example("objectStoreAddress"),
                  example("grafanaAddress"), example("vipAddress")]


def _no_match(pattern: str) -> Any:
    return lambda v: not re.fullmatch(pattern, v)


LABEL_CHARS = _no_match(r"[A-Za-z0-9-]{1,63}")
CERTAINLY_INVALID: dict[str, Any] = {
    "proxmoxEndpoint": lambda v: not v.startswith("https://"),
    "proxmoxApiToken": lambda v: True,
    "proxmoxSshUser": _no_match(r"[a-z_][a-z0-9_-]{0,31}"),
    "proxmoxNode": LABEL_CHARS,
    "proxmoxImageDatastore": _no_match(r"[A-Za-z][A-Za-z0-9_.-]*"),
    "proxmoxSnippetDatastore": _no_match(r"[A-Za-z][A-Za-z0-9_.-]*"),
    "proxmoxVmDatastore": _no_match(r"[A-Za-z][A-Za-z0-9_.-]*"),
    "cloudImageUrl": lambda v: not (v.startswith("https://") and v.endswith((".qcow2", ".img"))),
    "cloudImageChecksum": _no_match(r"[0-9a-f]{128}"),
    "cloudImageChecksumAlgorithm": lambda v: v not in ("sha256", "sha512"),
    "domain": lambda v: bool(re.search(r"[^A-Za-z0-9.-]", v)),
    "networkCidr": _no_match(r"[0-9.]+/[0-9]+"),
    "networkGateway": lambda v: True,  # not an address, or one the stack already uses
    "bridge": lambda v: bool(re.search(r"[^A-Za-z0-9_.-]", v)) or len(v) > 15,
    "sshAdminUser": _no_match(r"[a-z_][a-z0-9_-]{0,31}"),
    "lokiVersion": _no_match(r"[0-9]+\.[0-9]+\.[0-9]+"),
    "lokiRetention": _no_match(r"([0-9]+(ms|[ywdhms]))+"),
    "lokiSchemaFrom": _no_match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    "vipAddress": lambda v: True,
    "vipHostname": lambda v: LABEL_CHARS(v) or v in USED_NAMES,
    "objectStoreName": lambda v: LABEL_CHARS(v) or v in USED_NAMES,
    "objectStoreAddress": lambda v: True,
    "objectStoreProxmoxNode": lambda v: v != "" and LABEL_CHARS(v),
    "objectStoreBucket": lambda v: bool(re.search(r"[^a-z0-9.-]", v)) or re.fullmatch(r"[0-9.]+", v) is not None,
    "objectStoreRootUser": _no_match(r"[A-Za-z0-9_.-]{3,64}"),
    "objectStorePackageUrl": lambda v: not (v.startswith("https://") and v.endswith((".tar.gz", ".tgz"))),
    "objectStorePackageSha256": _no_match(r"[0-9a-f]{64}"),
    "grafanaName": lambda v: LABEL_CHARS(v) or v in USED_NAMES,
    "grafanaAddress": lambda v: True,
    "grafanaProxmoxNode": lambda v: v != "" and LABEL_CHARS(v),
    "grafanaVersion": _no_match(r"[0-9]+\.[0-9]+\.[0-9]+"),
    "alloyVersion": _no_match(r"[0-9]+\.[0-9]+\.[0-9]+"),
}
"""String key -> a value certainly invalid for it (from the key's rule, written independently)."""
ARRAY_CERTAINLY_INVALID: dict[str, Any] = {
    "dnsServers": lambda v: bool(v) and any(not re.fullmatch(r"[0-9.]+", x) for x in v),
    "sshAdminKeys": lambda v: not v or any(not x.startswith(("ssh-", "ecdsa-")) for x in v),
    "lokiNodes": lambda v: len(v) in (0, 2) or any(LABEL_CHARS(x) for x in v),
    "lokiAddresses": lambda v: len(v) != len(example("lokiNodes")) or any(not re.fullmatch(r"[0-9.]+", x) for x in v),
    "lokiProxmoxNodes": lambda v: bool(v) and (len(v) != len(example("lokiNodes")) or any(LABEL_CHARS(x) for x in v)),
    "lokiRetiring": lambda v: bool(v) and (len(set(v)) != len(v) or any(x not in example("lokiNodes") for x in v)
                                           or len(example("lokiNodes")) - len(v) < 3),
    "agentExtraHosts": lambda v: bool(v) and any(len(x.split()) < 3 or not re.fullmatch(r"[0-9.]+", x.split()[1])
                                                 for x in v),
    "certRevokedSerials": lambda v: bool(v) and any(not re.fullmatch(r"[0-9A-Fa-f:]+", x.removeprefix("0x"))
                                                    for x in v),
}


def run_plan(mutations: dict[str, Any]) -> tuple[int, str, bool]:
    """The plan of the example stack file with ``mutations`` (key -> YAML value): exit code,
    stderr, and whether anything was written."""
    doc = {"config": {**EXAMPLE, **{q(k): v for k, v in mutations.items()}}}
    with tempfile.TemporaryDirectory() as tmp:
        stack_file = Path(tmp) / "Pulumi.mutant.yaml"
        stack_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        err = io.StringIO()
        rc = plan_main(["--stack-file", str(stack_file), "--out", str(Path(tmp) / "plan")], out=io.StringIO(), err=err)
        return rc, err.getvalue(), (Path(tmp) / "plan").exists()


def assert_refused(key: str, value: Any) -> None:
    rc, err, wrote = run_plan({key: value})
    assert rc == 2, f"{key}={value!r} was not refused (exit {rc}):\n{err}"
    assert not wrote, f"{key}={value!r}: the plan wrote files for an invalid stack"
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert problems, f"{key}={value!r}: exit 2 without a problem list:\n{err}"
    for line in problems:
        named = re.match(r"  - loki-stack:([A-Za-z0-9]+)(\[\d+\])?: ", line)
        assert named and named.group(1) in SCHEMA.keys, f"{key}={value!r}: a problem names no declared key: {line}"
    assert any(re.search(rf"\b{key}\b", line) for line in problems), (
        f"{key}={value!r}: no problem names {key}:\n" + "\n".join(problems))


# --- strategies -------------------------------------------------------------------------------

TEXT = st.text(max_size=30)
MAPPINGS = st.dictionaries(TEXT.filter(lambda k: k != "secure"), TEXT, max_size=3)
DATES = st.one_of(st.dates(), st.datetimes())


def _not_an_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return True
    return False


def _not_a_json_list(text: str) -> bool:
    try:
        return not isinstance(json.loads(text), list)
    except ValueError:
        return True


def wrong_type(key: str) -> st.SearchStrategy[Any]:
    kind = SCHEMA.keys[key].type
    if kind == "string":  # numbers and booleans are text to Pulumi (it passes them on as strings)
        return st.one_of(st.lists(TEXT, max_size=3), MAPPINGS, DATES)
    if kind == "integer":
        return st.one_of(TEXT.filter(_not_an_int), st.booleans(), st.floats(), st.lists(st.integers(), max_size=3),
                         MAPPINGS, DATES)
    if kind == "boolean":
        return st.one_of(TEXT.filter(lambda s: s not in ("true", "false")), st.integers(), st.floats(),
                         st.lists(st.booleans(), max_size=3), MAPPINGS, DATES)
    return st.one_of(TEXT.filter(_not_a_json_list), st.integers(), st.booleans(), MAPPINGS, DATES,
                     st.lists(st.one_of(st.integers(), st.booleans(), st.none(), DATES, MAPPINGS), min_size=1,
                              max_size=3))


def out_of_range(key: str) -> st.SearchStrategy[Any]:
    below = st.integers(max_value=-1)
    return st.one_of(below, st.integers(min_value=UPPER[key] + 1)) if key in UPPER else below


def donors(key: str) -> list[Any]:
    """Other keys' example values that are certainly invalid for ``key``."""
    kind = SCHEMA.keys[key].type
    values = [example(k) for k in KEYS if k != key and example(k) is not None]
    if kind == "string":
        return [v for v in values if isinstance(v, str) and CERTAINLY_INVALID[key](v)]
    if kind == "array":
        return [v for v in values if isinstance(v, list) and ARRAY_CERTAINLY_INVALID[key](v)]
    if kind == "integer":
        return [v for v in values if isinstance(v, str) and _not_an_int(v)]
    return [v for v in values if isinstance(v, str) and v not in ("true", "false")]


def duplicates() -> st.SearchStrategy[tuple[str, Any]]:
    nodes, addresses = example("lokiNodes"), example("lokiAddresses")
    return st.one_of(
        st.sampled_from(nodes).map(lambda n: ("lokiNodes", [nodes[0], nodes[1], n if n != nodes[2] else nodes[0]])),
        st.sampled_from(addresses[:2]).map(lambda a: ("lokiAddresses", [addresses[0], addresses[1], a])),
        st.sampled_from(USED_ADDRESSES).map(lambda a: ("agentExtraHosts", [f"backup-01 {a} {HOST_KEY}"])),
        st.sampled_from(sorted(USED_NAMES)).map(lambda n: ("agentExtraHosts", [f"{n} 192.168.50.99 {HOST_KEY}"])),
        st.sampled_from(sorted(USED_NAMES)).map(lambda n: ("lokiNodes", [nodes[0], nodes[1], n]) if n not in nodes
                                                else ("lokiNodes", [n, n, nodes[2]])),
    )


KEY_TYPES = ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ssh-dss", "sk-ssh-ed25519@openssh.com", "ssh-foo", ""]
BASE64 = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", max_size=80)


def garbled_keys() -> st.SearchStrategy[tuple[str, Any]]:
    """Public keys that parse badly (any key type, key data that is not a key, other field orders)."""
    key = st.builds(lambda kind, body, comment: " ".join(p for p in (kind, body, comment) if p),
                    st.sampled_from(KEY_TYPES), BASE64, st.sampled_from(["", "me@laptop"]))
    fields = ["backup-01", "192.168.50.60", HOST_KEY]
    orders = st.permutations(fields).filter(lambda order: order != fields).map(" ".join)
    return st.one_of(
        key.map(lambda k: ("sshAdminKeys", [k])),
        key.map(lambda k: ("agentExtraHosts", [f"backup-01 192.168.50.60 {k}"])),
        orders.map(lambda entry: ("agentExtraHosts", [entry])),
    )


# --- the properties -----------------------------------------------------------------------------


@EXAMPLES
@given(st.data())
def test_a_value_of_the_wrong_yaml_type_is_refused(data):
    key = data.draw(st.sampled_from(KEYS))
    assert_refused(key, data.draw(wrong_type(key)))


@pytest.mark.parametrize("key", KEYS)
def test_an_empty_yaml_value_is_refused(key):
    assert_refused(key, None)


@pytest.mark.parametrize("key", [k for k in STRINGS if k not in OPTIONAL] +
                         [k for k in ARRAYS if k not in MAY_BE_EMPTY])
def test_an_empty_string_or_list_is_refused_where_the_key_needs_one(key):
    assert_refused(key, "" if SCHEMA.keys[key].type == "string" else [])


@EXAMPLES
@given(st.data())
def test_an_integer_out_of_range_is_refused(data):
    key = data.draw(st.sampled_from(INTEGERS))
    assert_refused(key, data.draw(out_of_range(key)))


@EXAMPLES
@given(st.data())
def test_another_keys_value_is_refused_where_it_cannot_fit(data):
    key = data.draw(st.sampled_from([k for k in KEYS if donors(k)]))
    assert_refused(key, data.draw(st.sampled_from(donors(key))))


@EXAMPLES
@given(duplicates())
def test_a_duplicate_name_or_address_is_refused(mutation):
    key, value = mutation
    assert_refused(key, value)


@EXAMPLES
@given(garbled_keys())
def test_a_key_that_does_not_parse_is_refused(mutation):
    key, value = mutation
    assert_refused(key, value)


def test_every_key_is_mutated_by_some_family():
    covered = set(KEYS)  # wrong types and null reach every key; the table must know every string key
    assert set(STRINGS) == set(CERTAINLY_INVALID), f"keys without a rule: {set(STRINGS) ^ set(CERTAINLY_INVALID)}"
    assert set(ARRAYS) == set(ARRAY_CERTAINLY_INVALID)
    assert covered == set(SCHEMA.keys)


def test_a_valid_stack_still_plans():
    """The mutations above start from a stack that passes."""
    rc, err, wrote = run_plan({"lokiSchemaFrom": datetime.date(2025, 1, 1).isoformat()})
    assert rc == 0 and wrote, err
