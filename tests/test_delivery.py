"""components/delivery.py: the rendered install script, run for real, and the component's wiring."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pulumi
import pulumi_command as command
import pytest

from components.delivery import FileDelivery, FileDeliveryArgs, delivery_digest, render_install_script
from components.hostfile import HostFile
from offline import engine
from tests.labs.needs import require_root, require_tool

CONNECTION: command.remote.ConnectionArgsDict = {"host": "192.168.50.21", "user": "ops", "private_key": "not-a-key"}
AWKWARD = "line 'one' \"two\" $HOME `date` \\ end\n\ttab\n"


def files_in(root: Path) -> list[tuple[HostFile, str]]:
    return [
        (HostFile(host="h", path=f"{root}/tls/ca.pem", content=""), "CA\n"),
        (HostFile(host="h", path=f"{root}/tls/server.key", content="", mode="0600"), "KEY\n"),
        (HostFile(host="h", path=f"{root}/etc/odd name.conf", content="", owner="nobody", group="nogroup",
                  mode="0640"), AWKWARD),
    ]


def run_script(script: str, staging: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The script as the host runs it, with its staging directory in the test's temp tree (the
    host's is /etc/lokistack/staging)."""
    staging = staging or Path(tempfile.mkdtemp()) / "staging"
    return subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SAFE_WRITE_STAGING": str(staging),
                               "FOLLOW_UP_DIR": str(staging.parent / "follow-up")})


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_the_script_installs_files_with_owner_and_mode_and_is_idempotent(tmp_path):
    require_root()
    marker = tmp_path / "then-ran"
    files = files_in(tmp_path)
    script = render_install_script(files, then=f"echo x >> {marker}")
    first = run_script(script)
    assert first.returncode == 0, first.stderr
    assert "3 file(s) changed" in first.stdout
    for hf, content in files:
        path = Path(hf.path)
        assert path.read_text() == content, f"{path}: wrong content"
        st = path.stat()
        assert oct(st.st_mode & 0o777)[2:].zfill(4) == hf.mode, f"{path}: mode {oct(st.st_mode)}"
    odd = Path(files[2][0].path)
    assert odd.owner() == "nobody" and odd.group() == "nogroup"
    second = run_script(script)
    assert second.returncode == 0 and "0 file(s) changed" in second.stdout, second.stdout
    assert marker.read_text() == "x\n", "the follow-up must run after a change and only then"
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["ca.pem", "server.key"], "temporary files left"


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_a_changed_mode_or_content_is_installed_again(tmp_path):
    require_root()
    files = files_in(tmp_path)
    assert run_script(render_install_script(files)).returncode == 0
    Path(files[1][0].path).chmod(0o644)  # someone loosened the key's mode
    files[0] = (files[0][0], "NEW CA\n")
    rerun = run_script(render_install_script(files))
    assert "2 file(s) changed" in rerun.stdout, rerun.stdout
    assert Path(files[0][0].path).read_text() == "NEW CA\n"
    assert oct(Path(files[1][0].path).stat().st_mode & 0o777) == "0o600"


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_an_existing_private_directory_keeps_its_mode(tmp_path):
    require_root()
    private = tmp_path / "certs"
    private.mkdir(mode=0o700)
    files = [(HostFile(host="h", path=f"{private}/private.key", content="", mode="0600"), "KEY\n")]
    assert run_script(render_install_script(files)).returncode == 0
    assert oct(private.stat().st_mode & 0o777) == "0o700", "installing a file loosened its directory"
    assert (private / "private.key").read_text() == "KEY\n"


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_a_failing_install_stops_the_script(tmp_path):
    require_root()
    bad = [(HostFile(host="h", path=f"{tmp_path}/x.pem", content="", owner="no-such-user-here"), "x")]
    proc = run_script(render_install_script(bad, then="echo should-not-run"))
    assert proc.returncode != 0 and "should-not-run" not in proc.stdout


@pytest.mark.real_tools
def test_the_rendered_script_passes_shellcheck(tmp_path):
    tool = require_tool("shellcheck")
    script = tmp_path / "install.sh"
    script.write_text(render_install_script(files_in(Path("/etc/lokistack")), then="update-ca-certificates"))
    proc = subprocess.run([tool, "-s", "bash", "-S", "style", str(script)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout


def test_the_digest_follows_content_owner_mode_and_follow_up():
    files = files_in(Path("/x"))
    base = delivery_digest(files, "reload")
    assert delivery_digest(files, "reload") == base
    assert delivery_digest(files, "restart") != base
    assert delivery_digest([(files[0][0], "other"), *files[1:]], "reload") != base
    hf = files[1][0]
    changed = HostFile(host=hf.host, path=hf.path, content="", mode="0640")
    assert delivery_digest([files[0], (changed, files[1][1]), files[2]], "reload") != base


def test_arguments_are_checked():
    hf = HostFile(host="a", path="/etc/x", content="x")
    with pytest.raises(ValueError, match="no files"):
        FileDeliveryArgs(host="a", connection=CONNECTION, files=[])
    with pytest.raises(ValueError, match="delivered twice"):
        FileDeliveryArgs(host="a", connection=CONNECTION, files=[hf, hf])
    with pytest.raises(ValueError, match="is for host a"):
        FileDeliveryArgs(host="b", connection=CONNECTION, files=[hf])
    with pytest.raises(ValueError, match="path must be absolute"):
        HostFile(host="a", path="etc/x", content="x")
    with pytest.raises(ValueError, match="mode must be 4 octal digits"):
        HostFile(host="a", path="/etc/x", content="x", mode="644")


@pulumi.runtime.test
async def test_the_component_sends_the_script_on_stdin_as_a_secret(fake_engine):
    key = pulumi.Output.secret("-----BEGIN EC PRIVATE KEY-----\nSECRETSECRET\n-----END EC PRIVATE KEY-----\n")
    files = [HostFile(host="h", path="/etc/lokistack/tls/server.key", content=key, mode="0600"),
             HostFile(host="h", path="/etc/lokistack/tls/ca.pem", content="CA")]
    delivery = FileDelivery("h-tls", FileDeliveryArgs(host="h", connection=CONNECTION, files=files, then="reload"))
    digest = await delivery.digest.future()
    await delivery.command.id.future()
    reg = fake_engine.monitor.find("command:remote:Command", "h-tls-install")
    assert reg.plain_inputs["create"] == "sudo bash -s", "the script must arrive on stdin, not the command line"
    assert "SECRETSECRET" not in reg.plain_inputs["create"]
    assert engine.is_secret(reg.inputs["stdin"]), "h-tls-install: stdin carries a key and must be secret"
    assert reg.plain_inputs["triggers"] == [digest], "the trigger must be the digest of what is delivered"
    assert delivery.host_files == files


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_a_retired_file_is_removed_once_and_runs_the_follow_up(tmp_path):
    require_root()
    files = files_in(tmp_path)
    retired = tmp_path / "retired.crt"
    retired.write_text("old CA")
    marker = tmp_path / "follow-up"
    script = render_install_script(files, then=f"echo x >> {marker}", remove=[str(retired)])
    assert run_script(script).returncode == 0
    assert not retired.exists() and marker.read_text() == "x\n"
    rerun = run_script(script)
    assert rerun.returncode == 0 and "0 file(s) changed" in rerun.stdout and marker.read_text() == "x\n"
    assert delivery_digest(files, remove=[str(retired)]) != delivery_digest(files), "a removal must change the digest"


@pytest.mark.needs_root
@pytest.mark.real_tools
def test_a_follow_up_that_failed_or_was_killed_is_finished_by_the_next_run_and_only_then(tmp_path):
    """The files are in place after the first run, but its follow-up failed (or the run was killed
    before it): the next run, with nothing left to install, runs the follow-up until it succeeds,
    and the run after that does not run it again."""
    require_root()
    files = files_in(tmp_path)
    ran, works = tmp_path / "ran", tmp_path / "works"
    script = render_install_script(files, then=f"echo x >> {ran} && test -e {works}")
    staging = tmp_path / "run" / "staging"
    first = run_script(script, staging)
    assert first.returncode != 0 and ran.read_text() == "x\n", f"the follow-up must run and fail: {first.stdout}"
    owed = list((tmp_path / "run" / "follow-up").iterdir())
    assert len(owed) == 1, f"a failed follow-up must stay owed: {owed}"
    second = run_script(script, staging)
    assert second.returncode != 0 and ran.read_text() == "x\nx\n", (
        f"with nothing to install, the owed follow-up must run again: {second.stdout}{second.stderr}")
    works.touch()
    third = run_script(script, staging)
    assert third.returncode == 0 and "finishing the follow-up an earlier run owes" in third.stdout, third.stdout
    assert ran.read_text() == "x\nx\nx\n" and not list((tmp_path / "run" / "follow-up").iterdir())
    fourth = run_script(script, staging)
    assert fourth.returncode == 0 and ran.read_text() == "x\nx\nx\n", "a follow-up done must not run again"
