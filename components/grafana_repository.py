"""Grafana's package repository (Loki, Alloy and Grafana come from it): where, and which keys.

Grafana's install documentation (Debian/Ubuntu) has taken the repository's keys from
``https://apt.grafana.com/gpg-full.key`` since the December 2025 signing-key rotation (the former
``gpg.key`` left hosts with an expired key). That file also carries Grafana's retired keys
(4E40DDF6D76E284A4A6780E48C8C34C524098CB6, 0E22EB88E39E12277A7760AE9E439B102CF3C0C6, rotated in
2023); the repository is signed with B53AE77BADB630A683046005963FA27710458545 (key id
963FA27710458545). The hosts trust exactly the keys pinned here and nothing else from the file
(``grafana_repository`` in templates/lib-apt.sh), and fetch the keyring again when this pin or
the URL changes, or the pinned key is about to end. A new key in a future rotation is added here,
by a human, after checking it.
"""

from __future__ import annotations

GRAFANA_REPO_URL = "https://apt.grafana.com"
GRAFANA_KEY_URL = "https://apt.grafana.com/gpg-full.key"
GRAFANA_KEY_FINGERPRINTS: tuple[str, ...] = ("B53AE77BADB630A683046005963FA27710458545",)
"""Primary keys apt trusts for the repository."""


def repository_parameters() -> dict[str, str]:
    """The setup scripts' parameters for ``grafana_repository``."""
    return {"REPO_URL": GRAFANA_REPO_URL, "KEY_URL": GRAFANA_KEY_URL,
            "KEY_FINGERPRINTS": " ".join(GRAFANA_KEY_FINGERPRINTS)}
