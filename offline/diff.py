"""What a change does: two manifests compared resource by resource and file by file.

A resource whose inputs differ is replaced when a changed input is one its provider cannot change
in place (the table below, from the providers' docs), and updated otherwise; a command whose
``triggers`` changed is replaced, which means it runs again. Host files are compared line by line
(secrets redacted in both manifests).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

ALWAYS_REPLACED = ("tls:", "random:", "proxmoxve:index/fileLegacy:", "minio:index/iamUserPolicyAttachment:")
REPLACED_BY = {
    "command:remote:Command": {"triggers"},
    "command:local:Command": {"triggers"},
    "proxmoxve:index/vmLegacy:VmLegacy": {"nodeName", "vmId", "clone"},
    "proxmoxve:download/file:File": {"url", "fileName", "checksum", "checksumAlgorithm", "nodeName", "datastoreId",
                                     "contentType"},
    "minio:index/s3Bucket:S3Bucket": {"bucket"},
    "minio:index/iamUser:IamUser": {"name"},
    "minio:index/iamPolicy:IamPolicy": {"name"},
    "minio:index/iamServiceAccount:IamServiceAccount": {"targetUser"},
    "grafana:oss/folder:Folder": {"uid"},
}


@dataclass(frozen=True)
class Change:
    action: str
    """create, update, replace or delete."""
    type: str
    name: str
    keys: tuple[str, ...] = ()
    """The inputs that differ (update, replace)."""


@dataclass
class Diff:
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    files: dict[tuple[str, str], str] = field(default_factory=dict)
    """(host, path) -> unified diff of its content."""

    def names(self, action: str | None = None) -> set[str]:
        return {c.name for c in self.changes if action is None or c.action == action}

    def of(self, name: str) -> Change | None:
        return next((c for c in self.changes if c.name == name), None)


def classify(resource_type: str, keys: set[str]) -> str:
    if resource_type.startswith(ALWAYS_REPLACED) or keys & REPLACED_BY.get(resource_type, set()):
        return "replace"
    return "update"


def diff_manifests(before: dict[str, Any], after: dict[str, Any]) -> Diff:
    old = {r["urn"]: r for r in before["resources"]}
    new = {r["urn"]: r for r in after["resources"]}
    result = Diff()
    for urn in sorted(new.keys() - old.keys()):
        result.changes.append(Change("create", new[urn]["type"], new[urn]["name"]))
    for urn in sorted(old.keys() - new.keys()):
        result.changes.append(Change("delete", old[urn]["type"], old[urn]["name"]))
    for urn in sorted(old.keys() & new.keys()):
        a, b = old[urn].get("inputHashes", {}), new[urn].get("inputHashes", {})
        keys = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        if not keys:
            result.unchanged += 1
            continue
        result.changes.append(Change(classify(new[urn]["type"], keys), new[urn]["type"], new[urn]["name"],
                                     tuple(sorted(keys))))
    old_files = {(f["host"], f["path"]): f for f in before["files"]}
    new_files = {(f["host"], f["path"]): f for f in after["files"]}
    for key in sorted(old_files.keys() | new_files.keys()):
        a_text = old_files[key]["content"] if key in old_files else ""
        b_text = new_files[key]["content"] if key in new_files else ""
        if a_text != b_text:
            host, path = key
            result.files[key] = "".join(difflib.unified_diff(
                a_text.splitlines(keepends=True), b_text.splitlines(keepends=True),
                fromfile=f"a/{host}{path}" if key in old_files else "/dev/null",
                tofile=f"b/{host}{path}" if key in new_files else "/dev/null"))
    return result


SYMBOLS = {"create": "+", "update": "~", "replace": "+-", "delete": "-"}


def render(diff: Diff) -> str:
    lines = []
    for change in sorted(diff.changes, key=lambda c: (c.action, c.type, c.name)):
        keys = f"  ({', '.join(change.keys)})" if change.keys else ""
        lines.append(f"{SYMBOLS[change.action]:>2} {change.action:<8} {change.type}  {change.name}{keys}")
    counts = {a: sum(c.action == a for c in diff.changes) for a in SYMBOLS}
    lines.append(f"{counts['create']} to create, {counts['update']} to update, {counts['replace']} to replace, "
                 f"{counts['delete']} to delete, {diff.unchanged} unchanged")
    for (host, path), text in diff.files.items():
        lines.append(f"\nfile {host}:{path}")
        lines.append(text.rstrip("\n"))
    return "\n".join(lines) + "\n"
