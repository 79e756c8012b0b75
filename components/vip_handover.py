"""VIP handover: a Loki node gives the virtual IP away, without cutting a request, before its Loki
restarts, and takes part in VRRP again only once its Loki is ready.

keepalived moves the VIP by itself when a node fails (``components.vip``), but a failure is a bad
way to do a planned restart: on SIGTERM Loki stops its distributor at once and keeps its listener
open, so requests to the VIP holder hang until the check has failed ``vipCheckFall`` times and the
backups' master-down timer has run out (5-6 s of failed pushes per node, measured). So the apply
step of a node whose Loki must restart calls ``vip_leave`` first and ``vip_rejoin`` after
(``templates/lib-vip-handover.sh``):

- **Pre-flight** (the holder only): another node's gateway must answer ``/ready`` at its own
  address, or nothing is drained and the step fails (Loki then is not restarted).
- **Drain** (the holder only), cutting no request and no kept-alive connection in use: new
  connections to the VIP on this node go to the gateway's twin (``loki_gateway.DRAIN_PORT``: the
  same grants, one request per connection), while the kept-alive ones (Alloy keeps one open and
  sends batches of up to about 1 MiB) end by themselves: the gateway answers ``Connection: close``
  once a connection is ``keepalive_time_s`` old. (nginx, reloaded, closes every idle kept-alive
  connection at once, also one whose next request is on its way: a lost push.) What sent nothing
  for ``KEPT_ALIVE_SENDS_S`` more is cut, idle. Then new connections are dropped, not refused, so a
  client's TCP sends its SYN again about a second later, when the VIP is elsewhere, while the last
  requests finish (bounded). Only a pure SYN is diverted or dropped: every packet of a connection
  opened before passes. (A ``ct state new`` rule stalled them: connection tracking takes packets
  of connections opened before it ran for new ones.) The drain's table holds both rules from the start;
  the VIP in one set or the other says whether new connections are diverted or dropped (in
  neither, they pass). The rules stay as long as the table, since the divert
  rule is what keeps connection tracking on, and with it the translation of the connections it
  diverted (without it a twin's answer still on its way leaves from the twin's port: a push lost,
  its line taken). The table goes only once no diverted connection is open or has an answer
  unacknowledged (FIN-WAIT-1 counts). The VIP leaves the sets by itself after
  ``DRAIN_EXPIRY_S``, and the apply step removes the table on every exit and at its start (a run killed
  mid-drain). Where the twin does not listen (an earlier version's gateway config or Loki on the
  port), new connections are dropped from the start and each kept-alive connection is cut within
  ``ANSWERED_MS`` of an answer. Once no connection to the VIP is left, the node enters keepalived's
  FAULT state through a track file (``MAINTENANCE_FILE``): it sends a priority-0 advert and the
  best backup takes the VIP within about 0.3 s. The step waits, bounded, until a ready node other
  than itself answers ``/ready`` on the VIP, and fails with the reason otherwise (Loki then is not
  restarted).
- **A gateway reload on the holder** (``vip_reload_gateway``) drains the same way, in place: new
  connections to the twin while the kept-alive ones end, then nginx reloads with none left. The
  VIP does not move. On every node, from before nginx reloads until its earlier workers have let go
  of the port, new connections to the VIP there go to the twin (or wait, where the loaded config
  has none): the gateway's steps run on every node at once, and a node may take the VIP from
  another's handover during its own reload, which would close the kept-alive connections it got.
- **One drain at a time**: a node's gateway apply and its Loki apply run side by side, and each
  may drain. They take turns (``LOCK_FILE``, held from before a drain's first rule until its table
  is gone): a reload's diversion that went on beside a handover's drop still sent new connections
  to the twin, also after the VIP had moved: a client whose ARP entry still named the node had
  its connection diverted there while its next packets went to the new holder (a push lost in a
  rehearsal, SSL EOF). The divert rule also matches only while the VIP is on the node
  (``fib daddr type local``).
- A node that does not hold the VIP enters FAULT as well, so that it takes none while it restarts.
- **Rejoin**: once Loki is ready, the node leaves FAULT. With preemption (``vipNoPreempt: false``)
  a node of higher priority than the holder would take the VIP straight back: a second move,
  started by the taker, which cuts what the holder is serving. So it first writes a *yield*
  (``YIELD_FILE``, added to its priority) that puts it at its own yield level, below every
  configured priority and so below the holder (``components.vrrp_priorities``: the levels keep the
  nodes' order and stay a full step apart, so that no two backups take the VIP at once at the next
  handover). Until the node next holds the VIP it is the last choice of a handover or failover (a
  node that does not yield comes first); keepalived clears the yield when it next becomes master
  (``notify_master``), so the first node is the VIP's home again from then on. The step ends when a ready node
  answers on the VIP: only then does the next node's step begin.
- **A Loki that is not running** (a first deploy, a Loki stopped by hand) starts with its node in
  FAULT too, unless the node holds the VIP while another node is ready, and rejoins as above. A
  first deploy starts keepalived before Loki: without this, a node's check passing after its step
  had ended let it take the VIP by preemption, without a drain (the VIP's home, the last to start,
  took it from the first a few seconds after the deploy; a kept-alive push was cut in a rehearsal).
  So the VIP moves only by a handover or a failure, and after a first deploy it is on the node that
  started first, which took it during its step.
- **Order**: the nodes roll from the lowest VRRP priority to the highest, so that the VIP's home
  (the first node) rolls last. An upgrade from a version whose Loki served the VIP's port itself
  then moves the VIP once, from the home to a node that runs this version's gateway, and the nodes
  that restart before it have lower priorities than the holder, which has no gateway to name it
  yet (tried the other way round, the home first: the VIP went to the second node, which still ran
  the earlier version, and the home, unable to name the holder, came back at full priority and took
  the VIP by preemption). When the VIP is elsewhere (after a first deploy, a roll, a failover, or
  with ``vipNoPreempt``), it may move twice; every move is a drain, never a cut.

keepalived's track files: https://keepalived.readthedocs.io/en/latest/configuration_synopsis.html
(``track_file``: weight 0 makes a non-zero value a FAULT; otherwise the value is added to the priority).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from components.vrrp_priorities import yield_levels

MAINTENANCE_FILE = "/run/lokistack-vip-maintenance"
"""1: the node is in FAULT (gives the VIP away, takes none); 0: normal. In /run: a reboot clears it."""
LOCK_FILE = "/run/lokistack-vip.lock"
"""Held (flock) by a node's step from before a drain of the VIP there until its table is gone: the
gateway's apply and Loki's apply run side by side, and their drains take turns."""
YIELD_FILE = "/run/lokistack-vip-yield"
"""Added to the node's VRRP priority (0 or negative); emptied when the node becomes master."""
NODE_HEADER = "X-Lokistack-Node"
"""The gateway names its node in every answer: the handover learns who holds the VIP."""
DRAIN_TABLE = "lokistack_vip_handover"
"""nftables table (inet) that diverts, then drops, new connections to the VIP while the holder
drains before the VIP moves (removed after)."""
RELOAD_TABLE = "lokistack_gateway_reload"
"""nftables table (inet) that diverts (or, without the twin, drops) new connections to the VIP while a
node's gateway reloads."""
HANDOVER_TIMEOUT_S = 60
"""Longest wait for another ready node to take the VIP (keepalived moves it in about a second)."""
DRAIN_TIMEOUT_S = 30
"""Longest wait for the requests in flight on the VIP to finish before it moves (a long query is then cut)."""
KEPT_ALIVE_SENDS_S = 5
"""A kept-alive client that sends at least this often ends its connection by itself in a drain (the
gateway closes it after an answer once it is ``keepalive_time_s`` old); a quieter one is cut, idle."""
ANSWERED_MS = 100
"""Where a server cannot be told to close its kept-alive connections, each is cut this soon after an
answer: its client, which sends again a second or so later, learns of it first."""
DRAIN_EXPIRY_S = DRAIN_TIMEOUT_S + HANDOVER_TIMEOUT_S + 30
"""The drop of new connections ends by itself after this, whatever happened to the step that set it."""


@dataclass(frozen=True, kw_only=True)
class VipHandover:
    """What a Loki node's apply step needs to hand the VIP over."""

    address: str
    interface: str
    port: int
    priorities: Mapping[str, int]
    """Node name -> configured VRRP priority (``components.vrrp_priorities.priorities``)."""
    addresses: Mapping[str, str]
    """Node name -> the node's own address (the pre-flight asks the other nodes' gateways for /ready)."""
    preempt: bool
    check_interval: int
    check_rise: int
    """keepalived's check: a node back from a restart counts fully once it has passed ``rise`` times."""
    keepalived_unit: str
    keepalived_config: str
    drain_port: int
    """The gateway's twin without keep-alive (``components.loki_gateway.DRAIN_PORT``)."""
    keepalive_time_s: int
    """The gateway closes a kept-alive connection after an answer once it is this old."""

    def script_parameters(self, node: str) -> dict[str, str | int]:
        """The parameters of ``lib-vip-handover.sh`` for ``node``'s apply step."""
        return {
            "VIP_ADDRESS": self.address, "VIP_INTERFACE": self.interface, "VIP_PORT": self.port,
            "VIP_SELF": node, "VIP_PRIORITIES": " ".join(f"{n}={p}" for n, p in self.priorities.items()),
            "VIP_YIELD_LEVELS": " ".join(f"{n}={p}" for n, p in yield_levels(self.priorities).items()),
            "VIP_PREEMPT": int(self.preempt), "VIP_MAINTENANCE_FILE": MAINTENANCE_FILE,
            "VIP_YIELD_FILE": YIELD_FILE, "VIP_NODE_HEADER": NODE_HEADER, "VIP_DRAIN_TABLE": DRAIN_TABLE,
            "VIP_RELOAD_TABLE": RELOAD_TABLE, "VIP_LOCK_FILE": LOCK_FILE,
            "VIP_UNIT": self.keepalived_unit, "VIP_CONFIG": self.keepalived_config,
            "VIP_DRAIN_PORT": self.drain_port, "VIP_KEEPALIVE_WAIT_S": self.keepalive_time_s + KEPT_ALIVE_SENDS_S,
            "VIP_ANSWERED_MS": ANSWERED_MS,
            "VIP_PEERS": " ".join(f"{n}={a}" for n, a in self.addresses.items()),
            "VIP_HANDOVER_TIMEOUT_S": HANDOVER_TIMEOUT_S, "VIP_DRAIN_TIMEOUT_S": DRAIN_TIMEOUT_S,
            "VIP_DRAIN_EXPIRY_S": DRAIN_EXPIRY_S,
            "VIP_CHECK_INTERVAL": self.check_interval, "VIP_CHECK_RISE": self.check_rise,
        }


def roll_order(nodes: Sequence[str], priorities: Mapping[str, int]) -> list[str]:
    """The order in which the nodes start and restart: lowest VRRP priority first, the VIP's home
    last (see the module's docstring)."""
    return sorted(nodes, key=lambda n: (priorities[n], n))
