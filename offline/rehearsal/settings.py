"""The example stack moved into the test range (198.18.0.0/24) through its own settings: what the
live tests and the rehearsal deploy."""

from __future__ import annotations

from typing import Any

LOKI_ADDRESSES = {"loki-01": "198.18.0.11", "loki-02": "198.18.0.12", "loki-03": "198.18.0.13"}
VIP = "198.18.0.100"
GATEWAY = "198.18.0.1"
OBJECT_STORE_ADDRESS = "198.18.0.30"
GRAFANA_ADDRESS = "198.18.0.40"
CLIENT_ADDRESS = "198.18.0.50"
"""A host outside the stack (the operator's machine)."""
RUNNER_ADDRESS = "198.18.0.2"
"""The machine that runs ``pulumi up`` (in the rehearsal)."""
TEST_RANGE: dict[str, Any] = {
    "networkCidr": "198.18.0.0/24", "networkGateway": GATEWAY, "dnsServers": [GATEWAY],
    "lokiAddresses": list(LOKI_ADDRESSES.values()), "vipAddress": VIP, "objectStoreAddress": OBJECT_STORE_ADDRESS,
    "grafanaAddress": GRAFANA_ADDRESS,
}
AVAILABLE_PACKAGES = frozenset({"loki"})
"""The packages the rehearsal's own repository holds (a setup that installs another is not rehearsed)."""
