"""templates/lib-apt.sh grafana_repository, with the real gpg: apt trusts exactly the pinned keys.

Keys are made for the test with gpg; the key file is "downloaded" by a curl stand-in that copies
it; /etc/apt lies on a throwaway tmpfs in a private mount namespace.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.grafana_repository import GRAFANA_KEY_FINGERPRINTS, GRAFANA_KEY_URL
from components.scripts import TEMPLATES
from tests.labs.needs import require_root, require_tool

KEYRING = "/etc/apt/keyrings/grafana.gpg"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Two signing keys (``pinned`` and ``other``) and one that expires tomorrow, as key files.
    gpg starts an agent for its home directory to make them; it is stopped at the end."""
    gpg = require_tool("gpg")
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        fingerprints = {}
        for name, expiry in (("pinned", "never"), ("other", "never"), ("ending", "1d")):
            subprocess.run([gpg, "--batch", "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.org>",
                            "ed25519", "sign", expiry], env=env, check=True, capture_output=True, timeout=60)
            listing = subprocess.run([gpg, "--batch", "--with-colons", "--list-keys", f"{name}@example.org"],
                                     env=env, check=True, capture_output=True, text=True, timeout=60).stdout
            fingerprints[name] = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        files = {}
        for label, names in (("pinned", ["pinned"]), ("both", ["pinned", "other"]), ("other", ["other"]),
                             ("ending", ["ending"])):
            path = home.parent / f"{label}.asc"
            path.write_bytes(subprocess.run([gpg, "--batch", "--armor", "--export", *[fingerprints[n] for n in names]],
                                            env=env, check=True, capture_output=True, timeout=60).stdout)
            files[label] = path
        yield {"fpr": fingerprints, "file": files}
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False, capture_output=True, timeout=60)


def run(body: str, key_file: Path) -> subprocess.CompletedProcess[str]:
    """``body`` after lib-apt.sh, as root in a private mount namespace with /etc/apt on a tmpfs;
    curl copies ``key_file`` wherever the script asks it to download to; apt-get is a stand-in."""
    require_root()
    require_tool("unshare")
    script = "\n".join([
        "set -euo pipefail",
        (TEMPLATES / "lib-apt.sh").read_text(),
        'curl() { local out; while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done; cp "$KEY_FILE" "$out"; }',
        'apt-get() { echo "apt-get $*"; }',
        "ensure_packages() { :; }",
        'APT_LISTS_STAMP="$(mktemp -d)/apt-lists.stamp"  # not the host\'s',
        "mount -t tmpfs tmpfs /etc/apt && mkdir /etc/apt/sources.list.d  # as on every Debian host",
        body,
    ])
    return subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "KEY_FILE": str(key_file)})


def primary_keys(listing: str) -> list[str]:
    lines = listing.splitlines()
    return [lines[i + 1].split(":")[9] for i, line in enumerate(lines) if line.startswith("pub:")]


SHOW = f'gpg --batch --with-colons --show-keys {KEYRING}; echo "stamp: $(cat /etc/apt/keyrings/grafana.pinned)"'


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_a_file_with_the_pinned_key_and_another_trusts_only_the_pinned_one(keys):
    fpr = keys["fpr"]
    proc = run(f'grafana_repository https://apt.example.org https://apt.example.org/gpg-full.key "{fpr["pinned"]}"\n'
               + SHOW, keys["file"]["both"])
    assert proc.returncode == 0, proc.stderr
    assert primary_keys(proc.stdout) == [fpr["pinned"]], f"the keyring trusts {primary_keys(proc.stdout)}"
    assert f"also holds key {fpr['other']}, which is not pinned: not trusted" in proc.stdout


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_a_file_without_the_pinned_key_is_refused(keys):
    fpr = keys["fpr"]
    proc = run(f'grafana_repository https://a https://a/gpg-full.key "{fpr["pinned"]}"', keys["file"]["other"])
    assert proc.returncode != 0 and f"does not hold the pinned key {fpr['pinned']}" in proc.stderr
    assert "apt-get" not in proc.stdout, "the repository was added without a trusted key"


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_the_keyring_is_made_again_when_the_pinned_set_or_the_url_changes(keys):
    fpr = keys["fpr"]
    first = f'grafana_repository https://a https://a/k1 "{fpr["pinned"]}"'
    proc = run("\n".join([
        first, "echo ---", first, "echo ---",  # unchanged: not fetched again
        f'KEY_FILE={keys["file"]["both"]} grafana_repository https://a https://a/k1 "{fpr["pinned"]} {fpr["other"]}"',
        SHOW, "echo ---",
        f'KEY_FILE={keys["file"]["both"]} grafana_repository https://a https://a/k2 "{fpr["pinned"]} {fpr["other"]}"',
        SHOW,
    ]), keys["file"]["pinned"])
    assert proc.returncode == 0, proc.stderr
    runs = proc.stdout.split("---")
    assert "trusting" in runs[0] and "trusting" not in runs[1], "an unchanged pin fetched the keys again"
    assert sorted(primary_keys(runs[2])) == sorted([fpr["pinned"], fpr["other"]])
    assert "trusting" in runs[3] and "stamp: https://a/k2" in runs[3]


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_a_pinned_key_that_is_about_to_end_is_fetched_again(keys):
    fpr = keys["fpr"]["ending"]
    once = f'grafana_repository https://a https://a/k "{fpr}"'
    proc = run(f"{once}\necho ---\n{once}", keys["file"]["ending"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("---")[1].count("trusting") == 1, "a key that ends tomorrow was not refreshed"


def test_the_stack_pins_grafanas_current_key_file_and_signing_key():
    """https://apt.grafana.com/gpg-full.key (Grafana's install docs since the December 2025 key
    rotation); the repository is signed by B53AE77B... (key id 963FA27710458545)."""
    assert GRAFANA_KEY_URL == "https://apt.grafana.com/gpg-full.key"
    assert GRAFANA_KEY_FINGERPRINTS == ("B53AE77BADB630A683046005963FA27710458545",)
