"""``python -m stack plan ...``: see stack/plan.py."""

import sys

from stack import plan

COMMANDS = {"plan": plan.main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m stack {{{','.join(COMMANDS)}}} [options]  (--help for each)", file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
