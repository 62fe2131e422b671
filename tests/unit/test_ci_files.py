"""The CI files (.github/workflows, tools/ci): valid against their
services' schemas (check-jsonschema's vendored copies, no network), and
every command they run exists in this repository with the options they
give it.  None of them was run here: they run on their services."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main as harness_main

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
GITLAB = ROOT / "tools" / "ci" / "gitlab-ci.yml"
K8S = ROOT / "tools" / "ci" / "k8s-shards.yaml"
CHECK_JSONSCHEMA = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("path, schema", [*((p, "vendor.github-workflows") for p in WORKFLOWS),
                                          (GITLAB, "vendor.gitlab-ci")], ids=lambda x: getattr(x, "name", x))
def test_a_ci_file_is_valid_against_its_services_schema(path, schema):
    assert CHECK_JSONSCHEMA, "check-jsonschema is missing from the venv: pip install -e '.[test]'"
    proc = subprocess.run([CHECK_JSONSCHEMA, "--builtin-schema", schema, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def commands_of(path: Path) -> list[str]:
    """The shell text a CI file runs: run: steps, script: lines, a pod's args."""
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("run", "script", "args") and value is not None:
                    found.extend(value if isinstance(value, list) else [value])
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for doc in yaml.safe_load_all(path.read_text()):
        walk(doc)
    return [c for c in found if isinstance(c, str)]


CI_FILES = [*WORKFLOWS, GITLAB, K8S]


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.name)
def test_every_command_a_ci_file_runs_exists_here(path):
    text = "\n".join(commands_of(path))
    assert "tools/setup" in text or "harness merge" in text
    for tool in re.findall(r"(?<![\w/.])tools/[\w-]+", text):
        assert (ROOT / tool).is_file() and (ROOT / tool).stat().st_mode & 0o111, f"{path.name}: {tool} is missing"
    for quoted, bare in re.findall(r'CHECK_STEPS=(?:"([^"]*)"|(\S+))', text):
        steps = (quoted or bare).split()
        assert set(steps) <= {"lint", "suite", "ksft", "seed002"}, f"{path.name}: CHECK_STEPS={steps}"


# what each service puts in the place of its shard variables
SUBSTITUTIONS = {"${{ matrix.shard }}": "2", "${{ env.SHARDS }}": "3", "$CI_NODE_INDEX": "2", "$CI_NODE_TOTAL": "3",
                 "$((JOB_COMPLETION_INDEX + 1))": "2", "$JOB_COMPLETION_INDEX": "1"}


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.name)
def test_pytest_takes_the_options_a_ci_file_gives_tools_check(path, tmp_path):
    """tools/check gives its options to pytest: pytest collects with exactly
    those (results paths moved under tmp), and shard 2 of 3 is a third."""
    text = "\n".join(commands_of(path))
    for name, value in SUBSTITUTIONS.items():
        text = text.replace(name, value)
    calls = re.findall(r"tools/check ([^&;|\n]*)", text)
    assert calls, f"{path.name}: runs no tools/check"
    for call in calls:
        args = [a.replace("/results/", f"{tmp_path}/").replace("results/", f"{tmp_path}/")
                for a in shlex.split(call)]
        proc = subprocess.run([sys.executable, "-m", "pytest", "tests/", "--collect-only", "-q", *args],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, f"{path.name}: pytest {' '.join(args)}: {proc.stdout[-500:]}{proc.stderr}"
        if "--shard" in args:
            assert "Running group 2/3" in proc.stdout


def test_harness_merge_takes_what_the_ci_files_give_it(tmp_path, capsys):
    for path in CI_FILES:
        for call in re.findall(r"harness merge ([^&;|\n]*)", "\n".join(commands_of(path))):
            args = shlex.split(call)
            assert args[0] == "--out" and len(args) >= 3, f"{path.name}: harness merge {call}"
    with pytest.raises(SystemExit) as exit_:
        harness_main(["merge", "--help"])
    assert exit_.value.code == 0


def test_the_kubernetes_manifest_is_an_indexed_job_per_shard_then_a_merge():
    suite, merge = list(yaml.safe_load_all(K8S.read_text()))
    for job in (suite, merge):
        assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert set(pod) <= {"restartPolicy", "containers", "volumes"}
    spec = suite["spec"]
    assert spec["completionMode"] == "Indexed"
    shards = spec["completions"]
    assert spec["parallelism"] == shards
    (container,) = spec["template"]["spec"]["containers"]
    assert container["securityContext"] == {"privileged": True}
    args = " ".join(container["args"])
    assert f"--shard $((JOB_COMPLETION_INDEX + 1))/{shards}" in args
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for device in ("/dev/kvm", "/dev/net/tun", "/dev/vhost-net"):
        assert volumes[mounts[device]]["hostPath"] == {"path": device, "type": "CharDevice"}
    merge_args = " ".join(merge["spec"]["template"]["spec"]["containers"][0]["args"])
    assert [f"/results/shard-{k}" for k in range(shards)] == re.findall(r"/results/shard-\d+", merge_args)
    # every pod writes where the merge reads
    assert all(f"/results/shard-$JOB_COMPLETION_INDEX/{what}" in args for what in ("junit.xml", "logs"))
