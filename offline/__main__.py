"""``python -m offline plan ...`` (offline/plan.py) and ``python -m offline keys [--write]`` (the settings
reference, docs/settings.md)."""

import sys

from offline import plan
from stack.reference import PAGE, settings_table, write_page
from stack.schema import load_schema


def keys(argv: list[str]) -> int:
    """Print the table of every setting, from Pulumi.yaml and the rules; ``--write``: into docs/settings.md."""
    if argv == ["--write"]:
        print(f"{PAGE.name}: {'written' if write_page(load_schema()) else 'unchanged'}")
    elif argv:
        print("usage: python -m offline keys [--write]", file=sys.stderr)
        return 2
    else:
        print(settings_table(load_schema()), end="")
    return 0


COMMANDS = {"plan": plan.main, "keys": keys}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m offline {{{','.join(COMMANDS)}}} [options]  (--help for each)", file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
