"""Pulumi.yaml, the example stack, the README and the requirements agree with each other."""

from __future__ import annotations

import re

import yaml

from stack.reference import MARKER, PAGE, settings_table
from stack.schema import PROJECT_DIR, load_schema

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


def test_the_settings_reference_documents_every_key_with_its_default_and_rule():
    page = PAGE.read_text()
    assert MARKER in page, f"{PAGE}: the marker line is gone"
    assert page.split(MARKER, 1)[1] == "\n" + settings_table(SCHEMA), (
        f"{PAGE} differs from Pulumi.yaml and stack/rules.py: run `python -m offline keys --write`")
    for name, spec in SCHEMA.keys.items():
        assert f"| `{name}` | {spec.type_name()} |" in page, f"{PAGE}: no row for {name}"


def test_every_link_between_the_documents_leads_to_a_file_and_heading_that_exist():
    documents = [PROJECT_DIR / name for name in ("README.md", "UPGRADING.md", "CHANGELOG.md")]
    documents += sorted((PROJECT_DIR / "docs").rglob("*.md"))
    broken = []
    for doc in documents:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, heading = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.relative_to(PROJECT_DIR)}: {target} (no such file)")
            elif heading and file.suffix == ".md" and heading not in {anchor(h) for h in re.findall(
                    r"^#+ (.+)$", file.read_text(), re.M)}:
                broken.append(f"{doc.relative_to(PROJECT_DIR)}: {target} (no such heading)")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


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
