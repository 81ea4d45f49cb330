"""What an operator deploys (deploy/), checked offline: every Kubernetes manifest against the Kubernetes schemas
(kubernetes-validate, strict), the Dockerfile with hadolint, the systemd units with systemd-analyze where it is
installed, and what each must say: one command, `slsync sync due`; secrets from a Secret, never inline; a
deadline that matches the time budget; one run at a time; a timer that spreads machines apart.

`docker build` and `kubectl apply --dry-run` are not run: there is no container engine or cluster here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slsync.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
KUBERNETES = "1.30.0"  # the oldest Kubernetes the manifests are meant for; kubernetes-validate ships its schemas
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "DATABASE_URL", "KEY")


def manifests() -> list[Path]:
    found = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert found, "no manifests under deploy/"
    return found


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_is_valid_kubernetes(path: Path) -> None:
    for version in (KUBERNETES, None):  # the oldest meant for, and the newest the tool knows
        args = [str(BIN / "kubernetes-validate"), "--strict", *(["-k", version] if version else []), str(path)]
        result = subprocess.run(args, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "passed" in result.stdout


def cronjob() -> dict:
    [doc] = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "cronjob.yaml").read_text()))
    return doc


def test_the_cronjob_runs_sync_due_one_cycle_at_a_time_within_the_time_budget() -> None:
    job = cronjob()
    assert job["kind"] == "CronJob" and job["spec"]["schedule"] == "*/15 * * * *"
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    spec = job["spec"]["jobTemplate"]["spec"]
    [container] = spec["template"]["spec"]["containers"]
    assert container["args"][:2] == ["sync", "due"] and "command" not in container  # the image's entry point
    env = {e["name"]: e for e in container["env"]}
    budget = int(env["SLSYNC_TIME_BUDGET_SECONDS"]["value"])
    Settings(time_budget_seconds=budget, _env_file=None)  # a value slsync accepts
    # the pod's deadline leaves the run its whole budget and a minute to start and finish, within the period
    assert budget < spec["activeDeadlineSeconds"] <= budget + 120 < 15 * 60
    assert spec["backoffLimit"] == 0 and spec["template"]["spec"]["restartPolicy"] == "Never"


def test_the_secrets_reach_the_pods_from_a_secret_and_never_inline() -> None:
    [container] = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    inline = [e["name"] for e in container.get("env", []) if any(w in e["name"] for w in SECRET_WORDS)]
    assert inline == [], "secrets must come from the Secret (envFrom), not from the manifest"
    [source] = container["envFrom"]
    [secret] = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "secret.example.yaml").read_text()))
    assert secret["kind"] == "Secret" and source["secretRef"]["name"] == secret["metadata"]["name"]
    assert {"SLSYNC_DATABASE_URL", "SLSYNC_TOKEN_KEY"} <= set(secret["stringData"])
    assert all("CHANGE-ME" in value for value in secret["stringData"].values())  # an example, no real secret


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest))
            current = ""
    return lines


def test_hadolint_passes_the_dockerfile() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_sync_due_as_an_unprivileged_user_and_copies_only_what_it_installs() -> None:
    steps = dockerfile_instructions()
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    last = {word: rest for word, rest in final}
    assert json.loads(last["ENTRYPOINT"]) + json.loads(last["CMD"]) == ["slsync", "sync", "due"]
    assert last["USER"].strip() not in ("root", "0")
    assert "SLSYNC_TOKEN_STORE=database" in last["ENV"] and "SLSYNC_TOKEN_KEY" not in last["ENV"]
    # the build context is the repository less what .dockerignore leaves out: every file copied is let in
    copied = {src.rstrip("/") for word, rest in steps if word == "COPY" for src in rest.split()[:-1]}
    let_in = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"}
    assert copied and copied <= let_in and all((ROOT / path).exists() for path in copied)


def test_the_systemd_timer_spreads_machines_apart_and_starts_sync_due() -> None:
    timer = (DEPLOY / "systemd" / "slsync-sync.timer").read_text()
    service = (DEPLOY / "systemd" / "slsync-sync.service").read_text()
    assert "OnCalendar=*:0/15" in timer and "RandomizedDelaySec=60" in timer
    assert "ExecStart=/opt/slsync/.venv/bin/slsync sync due" in service and "Type=oneshot" in service
    docs = (ROOT / "docs" / "how-to" / "systemd.md").read_text()
    assert '--8<-- "deploy/systemd/slsync-sync.timer"' in docs  # the page shows these files, not a copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    for unit in ("slsync-sync.service", "slsync-sync.timer"):
        text = (DEPLOY / "systemd" / unit).read_text()
        # the one difference: the slsync installed here stands for /opt/slsync/.venv/bin/slsync
        (tmp_path / unit).write_text(text.replace("/opt/slsync/.venv/bin/slsync", str(BIN / "slsync")))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "slsync-sync.timer", "slsync-sync.service"],
        capture_output=True, text=True, cwd=tmp_path, env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
