"""``python -m offline plan ...`` (offline/plan.py) and ``python -m offline keys`` (the settings table)."""

import sys

from offline import plan
from stack.schema import load_schema, markdown_table


def keys(argv: list[str]) -> int:
    """Print the table of every setting (the README's), from Pulumi.yaml."""
    print(markdown_table(load_schema()), end="")
    return 0


COMMANDS = {"plan": plan.main, "keys": keys}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m offline {{{','.join(COMMANDS)}}} [options]  (--help for each)", file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
