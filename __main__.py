"""loki-stack: read the settings, build the stack, export its outputs."""

import pulumi

from stack.config import load_settings
from stack.program import build

deployment = build(load_settings())
for output_name, value in deployment.outputs.items():
    pulumi.export(output_name, value)
