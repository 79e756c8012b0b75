"""How a component names the step it runs on one host: ``<component>-<host>-<step>``. The
components name their steps with it, and the rehearsal finds a step by it, with the component's
name from ``stack.program`` (``LOKI_CLUSTER``, ``LOKI_GATEWAY``, ``LOKI_RETIRING``)."""


def host_step(component: str, host: str, step: str) -> str:
    """The name of ``component``'s step ``step`` on ``host``; ``step`` empty: the prefix of them all."""
    return f"{component}-{host}-{step}"
