"""``python -m stack ...``, the command the design names, is ``python -m offline ...``: running the
program without Pulumi lives in ``offline/``, apart from the program's wiring here."""

import runpy

runpy.run_module("offline", run_name="__main__", alter_sys=True)
