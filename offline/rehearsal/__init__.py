"""The rehearsal: the whole stack deployed onto booted Debian 12 systems on this one machine, the
way ``pulumi up`` would deploy it (``make rehearse``, ``python -m offline.rehearsal``).

- ``template.py``: the Debian 12 system every machine boots (debootstrap, cached);
- ``network.py``: the private network (198.18.0.0/24) and the narrow path to the Debian mirrors;
- ``machines.py``: one systemd-nspawn container per VM of the program, with its cloud-init seed;
- ``steps.py``: the program's commands run over SSH as pulumi-command runs them;
- ``traffic.py``: clients of the VIP (a steady pusher without retries, a pusher of 1 MiB batches on
  one kept-alive connection, a paced load on one connection), run on the runner; ``clients.py``: the
  two pushers around a change; ``hitless.py``: what they and the apply steps saw during a change;
- ``converge.py``: a roll on a degraded cluster, applies killed at each phase and run again, and the
  gateway's port after an upgrade;
- the life events of a deployed stack (#24): ``life_events.py`` (a reboot of the VIP holder, a data
  disk late at boot), ``rebuild.py`` (a node lost with its disks and created again),
  ``scaling.py`` (3 -> 4 -> 3 nodes), ``disk_full.py`` (a full data disk), ``outage.py`` (the object
  store away for ten minutes); ``prometheus.py``: the real Prometheus that sees their alerts;
  ``s3_standin.py``: the object store's server, as far as Loki and Prometheus use it;
- ``firewall_holds.py``: the cluster ports never without their rules (rule loads, Debian's
  nftables.service, Loki without the table);
- ``run.py``: all of it together, with the checks and the figures.
"""
