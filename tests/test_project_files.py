"""Pulumi.yaml, the example stack, the README and the requirements agree with each other."""

from __future__ import annotations

import re

import yaml

from stack.schema import PROJECT_DIR, load_schema, markdown_table

SCHEMA = load_schema()


def test_project_file_declares_the_python_runtime_with_the_venv():
    doc = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())
    assert doc["name"] == "loki-stack"
    assert doc["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}}


def test_every_key_has_a_description_and_only_the_token_is_secret():
    for spec in SCHEMA.keys.values():
        assert spec.description, f"Pulumi.yaml: {spec.name} has no description"
    assert [k for k, s in SCHEMA.keys.items() if s.secret] == ["proxmoxApiToken"]


def test_every_declared_key_is_read_by_the_settings():
    source = (PROJECT_DIR / "stack" / "config.py").read_text()
    for name in SCHEMA.keys:
        prefix_read = 'v[f"{prefix}{key}"]' in source and any(
            f'"{suffix}")' in source for suffix in ("Cores", "MemoryMiB", "DiskGiB", "DataDiskGiB")
            if name.endswith(suffix))
        assert f'"{name}"' in source or prefix_read, f"Pulumi.yaml declares {name} but stack/config.py never reads it"


def test_readme_documents_every_key_with_its_default():
    readme = (PROJECT_DIR / "README.md").read_text()
    table = markdown_table(SCHEMA)
    assert table in readme, "README's settings table differs from Pulumi.yaml: paste `python -m offline keys`"
    for name, spec in SCHEMA.keys.items():
        assert f"| `{name}` | {spec.type_name()} |" in table


def test_example_stack_holds_no_secret_and_uses_only_declared_keys():
    text = (PROJECT_DIR / "Pulumi.homelab.yaml").read_text()
    config = yaml.safe_load(text)["config"]
    assert "PRIVATE KEY" not in text and "secure:" not in text
    assert "loki-stack:proxmoxApiToken" not in config, "the token is set with `pulumi config set --secret`"
    for key in config:
        namespace, name = key.split(":", 1)
        assert namespace == "loki-stack" and name in SCHEMA.keys, f"Pulumi.homelab.yaml: unknown key {key}"
    domain = config["loki-stack:domain"]
    assert domain == "home.arpa" or domain.endswith(".home.arpa")


def test_requirements_are_pinned():
    for name in ("requirements.txt", "requirements-dev.txt"):
        for raw_line in (PROJECT_DIR / name).read_text().splitlines():
            line = raw_line.split("#", 1)[0].strip()
            if line and not line.startswith("-r "):
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.]*", line), f"{name}: not pinned: {line}"
