"""Running the program here, without Pulumi: the fake engine that stands in for the Pulumi engine
and the providers (engine.py), the offline plan (plan.py), what a change touches (diff.py), a
probe of the Loki nodes' cluster ports as a local user (cluster_ports.py), and the rehearsal on
booted Debian systems (rehearsal/). The program itself is in ``stack/``."""
