"""The offline plan: run the real program against the local fake engine, without the Pulumi CLI.

``python -m offline plan [--stack homelab] [--out build/plan] [--show-secrets] [--preview]``

It reads ``Pulumi.<stack>.yaml`` as the CLI would, prints the resource tree, writes every file
each host will receive under ``<out>/<host>/<absolute path>``, and writes ``<out>/manifest.json``
(every resource with a hash of its inputs, every file, the stack outputs). Secret values are
redacted in files and outputs unless ``--show-secrets``; then the output directory is 0700 and
every file that holds a secret, the manifest included, is 0600.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from components.scripts import template_lines
from offline import engine
from offline.diff import diff_manifests, render
from stack.config import load_settings
from stack.program import Deployment, build
from stack.rules import Problem, SettingsError
from stack.schema import PROJECT_DIR, ProjectSchema, load_schema

PLAN_STAND_INS = {"proxmoxApiToken": "root@pam!offline-plan=00000000-0000-0000-0000-000000000000"}
"""Values for required secrets the stack file cannot hold; the plan never talks to Proxmox."""
MANIFEST = "manifest.json"


class StackFileError(ValueError):
    pass


@dataclass(frozen=True)
class StackConfig:
    config: dict[str, str]
    """Qualified key -> value as the Pulumi runtime hands it to the program."""
    secret_keys: list[str]
    stand_ins: list[str]
    """Keys the plan filled in because the stack file has no (decryptable) value."""


def _dates(value: Any) -> list[datetime.date]:
    """The dates (and timestamps) YAML made of unquoted values, at the top or in a list."""
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, datetime.date)]


def yaml_type_problems(schema: ProjectSchema, raw: dict[str, Any]) -> list[Problem]:
    """What YAML made of the stack file's values that no declared type allows: a null (an empty
    value), a date where text was meant (unquoted ``2025-01-01``), a list or mapping for a string,
    an empty list item. The Pulumi CLI refuses these too; here they get the settings report."""
    problems = []
    for key, value in raw.items():
        project, _, short = key.partition(":")
        spec = schema.keys.get(short) if project == schema.project else None
        if spec is None or (isinstance(value, dict) and set(value) == {"secure"}):
            continue
        shown = "<secret, not shown>" if spec.secret else repr(value)
        default = spec.default if spec.default not in (None, "", []) else "..."
        if value is None:
            problems.append(Problem(key, "has no value (an empty YAML value is null): give one, or remove the line "
                                    "to take the default", shown, f"{key}: {json.dumps(default)}"))
        elif dates := _dates(value):
            example = f'{key}: "{dates[0]}"' if spec.type == "string" else f'{key}: ["{dates[0]}"]'
            problems.append(Problem(key, "holds an unquoted date, which YAML reads as a date, not as text: quote it",
                                    f"{dates[0]} (unquoted)", example))
        elif spec.type == "string" and isinstance(value, list | dict):
            kind = "list" if isinstance(value, list) else "mapping"
            problems.append(Problem(key, f"must be text, not a YAML {kind} (quote it if the brackets or colon belong "
                                    "to the value)", shown, f"{key}: {json.dumps(default)}"))
        elif isinstance(value, list) and None in value:
            problems.append(Problem(key, f"has an empty item (#{value.index(None)}): remove it or give a value", shown,
                                    f"{key}: {json.dumps(default)}"))
    return problems


def _as_runtime_value(value: Any) -> str:
    """How the Pulumi CLI passes a config value to a program: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def read_stack_config(stack: str, schema: ProjectSchema | None = None, *, path: Path | None = None,
                      overrides: dict[str, Any] | None = None, remove: tuple[str, ...] = ()) -> StackConfig:
    """The config of ``Pulumi.<stack>.yaml`` as the program receives it.

    ``path`` reads another file instead. ``overrides`` (unqualified key -> YAML value) and
    ``remove`` change it, for tests. Encrypted
    values and missing required secrets get a stand-in, marked secret.
    """
    schema = schema or load_schema()
    path = path or PROJECT_DIR / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise StackFileError(f"stack file {path} not found; stacks here: "
                             f"{sorted(p.name for p in PROJECT_DIR.glob('Pulumi.*.yaml'))}")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise StackFileError(f"stack file {path} is not valid YAML: {error}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config") or {}, dict):
        raise StackFileError(f"stack file {path} must be a mapping with a mapping under 'config:'")
    raw: dict[str, Any] = {}
    for key, value in (doc.get("config") or {}).items():
        if not isinstance(key, str):
            raise StackFileError(f"stack file {path}: config key {key!r} is not text")
        raw[key if ":" in key else schema.qualified(key)] = value
    for key, value in (overrides or {}).items():
        raw[schema.qualified(key)] = value
    for key in remove:
        raw.pop(schema.qualified(key), None)
    problems = yaml_type_problems(schema, raw)
    if problems:
        raise SettingsError(problems)

    config: dict[str, str] = {}
    secret_keys: list[str] = []
    stand_ins: list[str] = []
    for key, given in raw.items():
        short = key.split(":", 1)[1]
        value = given
        if isinstance(given, dict) and set(given) == {"secure"}:
            value = PLAN_STAND_INS.get(short, "offline-plan-stand-in")
            stand_ins.append(key)
        config[key] = _as_runtime_value(value)
        if key.startswith(f"{schema.project}:") and short in schema.keys and schema.keys[short].secret:
            secret_keys.append(key)
    for short, spec in schema.keys.items():
        key = schema.qualified(short)
        if spec.secret and spec.required and key not in config and short not in remove and short in PLAN_STAND_INS:
            config[key] = PLAN_STAND_INS[short]
            secret_keys.append(key)
            stand_ins.append(key)
    return StackConfig(config=config, secret_keys=secret_keys, stand_ins=stand_ins)


def run_program(stack: str, stack_config: StackConfig, *, preview: bool = False,
                schema: ProjectSchema | None = None, renewed: frozenset[str] = frozenset(),
                rebuilt: Mapping[str, int] | None = None, presented: Mapping[str, str] | None = None,
                kept: Mapping[str, tuple[str, str]] | None = None) -> engine.RunResult:
    """Run the real program (settings, then build) and resolve its outputs and host files; the fake
    cloud as ``engine.FakeCloud`` describes (``renewed``, ``rebuilt``, ``presented``, ``kept``)."""
    schema = schema or load_schema()

    def collect(deployment: Deployment) -> dict[str, Any]:
        values: dict[str, Any] = {f"output:{k}": v for k, v in deployment.outputs.items()}
        values.update({f"file:{i}": f.content for i, f in enumerate(deployment.host_files)})
        return values

    return engine.run(lambda: build(load_settings(schema)), collect, project=schema.project, stack=stack,
                      preview=preview, config=stack_config.config, secret_keys=stack_config.secret_keys,
                      renewed=renewed, rebuilt=rebuilt, presented=presented, kept=kept)


# --- Writing --------------------------------------------------------------------------------


def secret_fragments(secrets: dict[str, str]) -> dict[str, str]:
    """Each secret as the lines it is made of (secret value -> label becomes line -> label).

    A key inside YAML or JSON is indented or escaped line by line, so whole values would not be
    found; its lines are. PEM armour lines (``-----BEGIN ...``) are kept: they say what was there.
    So are the lines of the repository's own scripts: a step's script that holds a secret is a
    secret value as a whole, and its other lines (``#!/usr/bin/env bash``, a library's code) must
    not be blacked out in every other script that has them.
    """
    public = template_lines()
    fragments: dict[str, str] = {}
    for value, label in secrets.items():
        for raw_line in value.splitlines():
            line = raw_line.strip()
            if len(line) >= 8 and not line.startswith("-----") and line not in public:
                # A line found in several secrets is a format header (OpenSSH keys share one).
                fragments[line] = label if fragments.get(line, label) == label else "key format header"
    return fragments


def redact(text: str, fragments: dict[str, str]) -> str:
    """``text`` with every secret fragment replaced by a label naming where it came from."""
    for fragment in sorted(fragments, key=len, reverse=True):
        text = text.replace(fragment, f"<redacted: {fragments[fragment]}>")
    return text


def _redact_value(value: Any, fragments: dict[str, str]) -> Any:
    return json.loads(redact(json.dumps(value), fragments))


def print_tree(registrations: list[engine.Registration], out: TextIO) -> None:
    children: dict[str, list[engine.Registration]] = defaultdict(list)
    urns = {r.urn for r in registrations}
    for reg in registrations:
        children[reg.parent if reg.parent in urns else ""].append(reg)

    def walk(parent: str, depth: int) -> None:
        for reg in sorted(children[parent], key=lambda r: (r.type, r.name)):
            print(f"{'    ' * depth}{reg.type}  {reg.name}", file=out)
            walk(reg.urn, depth + 1)

    walk("", 0)
    custom = sum(r.custom for r in registrations)
    print(f"{len(registrations)} resources: {custom} custom, {len(registrations) - custom} components", file=out)


def _clear(out_dir: Path, *, private: bool) -> None:
    """Empty a previous plan directory (refuse anything that does not look like one) and make it
    anew: 0700 when it will hold secrets."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise StackFileError(f"--out {out_dir} is not a directory: not touching it; choose another --out")
    if out_dir.exists():
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
            raise StackFileError(f"{out_dir} exists and holds no {MANIFEST}: not removing it; choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, mode=0o700 if private else 0o777)
    if private:
        out_dir.chmod(0o700)  # mkdir's mode is filtered by the umask; this is not


def _write(path: Path, text: str, *, private: bool) -> None:
    """Write ``text``; a private file is created 0600, never readable by others on the way."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    path.chmod(0o600 if private else 0o644)


def build_manifest(result: engine.RunResult, *, stack: str, show_secrets: bool = False) -> dict[str, Any]:
    """Every resource (with a hash of its inputs, and one per input), every file (with its content,
    secrets redacted unless ``show_secrets``) and the stack outputs."""
    deployment: Deployment = result.returned
    secrets = {} if show_secrets else secret_fragments(result.engine.cloud.secret_values)
    files = []
    for i, hf in enumerate(deployment.host_files):
        resolved = result.resolved[f"file:{i}"]
        text = resolved.value if resolved.known else "<unknown until deployment>\n"
        files.append({
            "host": hf.host, "path": hf.path, "owner": hf.owner, "group": hf.group, "mode": hf.mode,
            "secret": resolved.secret, "known": resolved.known,
            "sha256": hashlib.sha256(text.encode()).hexdigest(), "content": redact(text, secrets),
        })
    outputs = {}
    for key, resolved in result.resolved.items():
        if key.startswith("output:"):
            name = key.split(":", 1)[1]
            outputs[name] = ("[secret]" if resolved.secret and not show_secrets
                             else _redact_value(resolved.value, secrets))
    return {
        "stack": stack,
        "resources": [
            {"urn": r.urn, "type": r.type, "name": r.name, "parent": r.parent, "custom": r.custom,
             "inputsHash": r.inputs_hash, "inputHashes": r.input_hashes, "dependencies": sorted(r.dependencies)}
            for r in sorted(result.engine.registrations, key=lambda r: r.urn)
        ],
        "files": files,
        "outputs": outputs,
    }


def write_plan(result: engine.RunResult, out_dir: Path, *, stack: str, show_secrets: bool) -> dict[str, Any]:
    """Write every host file under ``out_dir/<host>/<path>`` and the manifest. With
    ``show_secrets`` the directory is 0700, and every file that holds a secret (marked secret,
    or holding any line of a generated secret) and the manifest are 0600."""
    manifest = build_manifest(result, stack=stack, show_secrets=show_secrets)
    fragments = secret_fragments(result.engine.cloud.secret_values) if show_secrets else {}
    _clear(out_dir, private=show_secrets)
    for entry in manifest["files"]:
        target = out_dir / entry["host"] / entry["path"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        holds_secret = entry["secret"] or any(fragment in entry["content"] for fragment in fragments)
        _write(target, entry["content"], private=show_secrets and holds_secret)
    _write(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n", private=show_secrets)
    return manifest


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline plan", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="homelab", help="stack name: reads Pulumi.<stack>.yaml (default homelab)")
    parser.add_argument("--stack-file", type=Path, help="read this file instead of Pulumi.<stack>.yaml")
    parser.add_argument("--out", default="build/plan", type=Path, help="output directory (default build/plan)")
    parser.add_argument("--show-secrets", action="store_true", help="write secret values instead of redacting them")
    parser.add_argument("--preview", action="store_true", help="plan as a preview: computed values stay unknown")
    parser.add_argument("--diff", type=Path, metavar="OTHER",
                        help="also show what changes from OTHER (a stack file or an earlier manifest.json)")
    parser.add_argument("--diff-stack", metavar="NAME",
                        help="the stack OTHER (a stack file) belongs to (default: --stack; both sides of a diff "
                             "are normally the same stack, whatever OTHER's file is called)")
    args = parser.parse_args(argv)
    try:
        stack_config = read_stack_config(args.stack, path=args.stack_file)
        for key in stack_config.stand_ins:
            print(f"note: {key} has no value the plan can read; using a stand-in (never sent anywhere)", file=err)
        result = run_program(args.stack, stack_config, preview=args.preview)
        print_tree(result.engine.registrations, out)
        before = load_before(args.diff, stack=args.diff_stack or args.stack) if args.diff else None
        manifest = write_plan(result, args.out, stack=args.stack, show_secrets=args.show_secrets)
    except (SettingsError, StackFileError) as error:
        print(f"error: {error}", file=err)
        return 2
    hosts = sorted({f["host"] for f in manifest["files"]})
    print(f"wrote {len(manifest['files'])} files for {len(hosts)} hosts ({', '.join(hosts)}) "
          f"and {MANIFEST} under {args.out}", file=out)
    if not args.show_secrets:
        print("secrets are redacted; --show-secrets writes them (keep that directory private)", file=out)
    if before is not None:
        print(f"\nchanges from {args.diff} to this plan:", file=out)
        print(render(diff_manifests(before, build_manifest(result, stack=args.stack))), file=out, end="")
    return 0


def load_before(other: Path, *, stack: str) -> dict[str, Any]:
    """The manifest to compare with: read from a manifest file, or planned from the stack file
    ``other`` as stack ``stack`` (the stack's name is part of every URN, so both sides of a diff
    must carry the same one, whatever the old file is called)."""
    if not other.is_file():
        raise StackFileError(f"--diff {other}: no such file")
    if other.suffix == ".json":
        manifest = dict(json.loads(other.read_text()))
        if manifest.get("stack") != stack:
            raise StackFileError(f"--diff {other}: a plan of stack {manifest.get('stack')!r}, not {stack!r}; "
                                 f"pass --stack {manifest.get('stack')} (or --diff-stack) to compare it")
        return manifest
    result = run_program(stack, read_stack_config(stack, path=other))
    return build_manifest(result, stack=stack)
