"""One error root: what a user gets wrong is one line naming the file,
field or option, without a traceback (--debug gives it); and the
leftovers of killed runs are found by name and removed only when their
process is gone."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.util import HarnessError, describe_error, private_dir, reap_temp, temp_beside, temp_dir

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "unit" / "topologies" / "bad"


def harness(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


@pytest.mark.parametrize("args, says", [
    (["up", "--check", str(BAD / "scope-id-via.yaml")], "routes[0].via: expected an address"),
    (["up", "--check", "/nonexistent.yaml"], "/nonexistent.yaml: cannot read (No such file or directory)"),
    (["up", str(BAD / "alias-bomb.yaml")], "an alias bomb?"),          # refused before any bootstrap
    (["mutants", "--patch", "/nonexistent.patch", "-k", "x"], "--patch /nonexistent.patch: no such file"),
    (["build-kernel", "--debian-source", "six"], "expected a series like 6.1 or 6.12"),
    (["ab", "--base", "default", "--patched", "default", "--workload", "nope"], "--workload 'nope'"),
])
def test_a_users_mistake_is_one_line_without_a_traceback(args, says):
    r = harness(*args)
    assert r.returncode == 1, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_debug_adds_the_traceback_wherever_it_is_given():
    r = harness("up", "--check", "/nonexistent.yaml", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_a_valid_file_checks_without_root_or_a_boot():
    r = harness("up", "--check", str(ROOT / "topologies" / "nested-vhost.yaml"))
    assert r.returncode == 0 and "valid: lab nested-vhost, guests host1, host1>n1" in r.stdout


@pytest.mark.parametrize("error, says", [
    (HarnessError("as it is"), "as it is"),
    (subprocess.CalledProcessError(2, ["make", "bzImage"]), "command failed (rc=2): make bzImage"),
    (subprocess.TimeoutExpired(["qemu"], 5), "command timed out after 5s: qemu"),
    (FileNotFoundError(2, "No such file or directory", "/x"), "/x: No such file or directory"),
    (KeyError("k"), "internal error: KeyError: 'k' (run with --debug for the traceback)"),
])
def test_describe_error_names_what_raised(error, says):
    assert describe_error(error) == says


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_temporaries_of_dead_processes_are_reaped_and_a_live_ones_kept(tmp_path):
    mine = temp_beside(tmp_path / "cache.json")
    mine.write_text("writing")
    live_dir = temp_dir("run", tmp_path)
    dead = dead_pid()
    dead_file = tmp_path / f".cache.json.{dead}-1.tmp"
    dead_file.write_text("half")
    dead_dir = tmp_path / f"harness-run-{dead}-abcd"
    dead_dir.mkdir()
    unrelated = tmp_path / "harness-notes.txt"
    unrelated.write_text("not ours")
    reaped = reap_temp([tmp_path])
    assert sorted(reaped) == sorted([str(dead_file), str(dead_dir)])
    assert mine.exists() and live_dir.exists() and unrelated.exists()


def test_a_run_directory_is_checked_not_trusted(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert private_dir(loose).stat().st_mode & 0o777 == 0o700
    link = tmp_path / "link"
    link.symlink_to(loose)
    with pytest.raises(HarnessError, match="expected a directory, found a link"):
        private_dir(link)
