"""The deployment recipes under deploy/ (docs/deploy.md), checked without Docker, systemd or a
cluster: every file parses, the commands they run exist, the stop timeouts outlast the
workers' shutdown, and the tools that can check a recipe offline here do (systemd-analyze,
kubectl kustomize, /bin/sh for the settings file)."""

from __future__ import annotations

import ast
import configparser
import importlib
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from videoq.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCS = ROOT / "docs" / "deploy.md"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
SUPERVISOR = DEPLOY / "supervisor" / "videoq.conf"
ENV_EXAMPLE = SYSTEMD / "videoq.env.example"

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})
UNITS = sorted(SYSTEMD.glob("*.service"))
INI_FILES = [*UNITS, SUPERVISOR]
#: Every file that runs videoq, and the guide that tells operators what to run.
RECIPES = [*sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".md"), DOCS]

#: A worker stops in up to two grace periods (running jobs finish, then the ends still being
#: recorded), and then closes its pools: every stop timeout must cover that.
STOP_MARGIN_S = 15
PROVIDER_KEYS = ("ANTHROPIC_API_KEY", "ELEVENLABS_API_KEY", "REPLICATE_API_TOKEN", "OPENAI_API_KEY")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s_objects() -> Iterator[dict[str, Any]]:
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in _yaml_documents(path):
            if isinstance(doc, dict) and "kind" in doc and doc["kind"] != "Kustomization":
                yield doc


def _k8s(kind: str, name: str) -> dict[str, Any]:
    """The object of ``kind`` and ``name`` in the base (deploy/k8s, not alternatives/)."""
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _yaml_documents(path):
            if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
                return dict(doc)
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


class _CaseConfigParser(configparser.ConfigParser):
    """Keys as written (systemd's are case-sensitive), no %-interpolation (systemd specifiers
    and supervisor's %(process_num)02d are not configparser's), duplicate keys allowed (systemd
    accumulates them)."""

    def __init__(self) -> None:
        super().__init__(strict=False, interpolation=None)

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _ini(path: Path) -> _CaseConfigParser:
    parser = _CaseConfigParser()
    parser.read_string(path.read_text(), source=str(path))
    return parser


def _env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= reads them (quotes stripped)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name}: bad line {line!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def _seconds(value: Any) -> float:
    """A duration as Compose writes it (75s, 1m15s, 1h) or a bare number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {value!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


# --- Everything parses ---------------------------------------------------------------------


def test_recipes_are_there() -> None:
    names = {_rel(p) for p in RECIPES}
    for expected in (
        "deploy/Dockerfile",
        "deploy/Dockerfile.dockerignore",
        "deploy/compose.yaml",
        "deploy/systemd/videoq-api.service",
        "deploy/systemd/videoq-worker@.service",
        "deploy/systemd/videoq-migrate.service",
        "deploy/systemd/videoq.env.example",
        "deploy/supervisor/videoq.conf",
        "deploy/k8s/kustomization.yaml",
        "docs/deploy.md",
    ):
        assert expected in names


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_parses(path: Path) -> None:
    assert _yaml_documents(path), f"{_rel(path)} holds no YAML document"


@pytest.mark.parametrize("path", INI_FILES, ids=_rel)
def test_ini_parses(path: Path) -> None:
    assert _ini(path).sections()


def test_units_have_what_an_operator_relies_on() -> None:
    for path in UNITS:
        service = _ini(path)["Service"]
        assert service.get("EnvironmentFile") == "/etc/videoq/videoq.env", path.name
        assert service.get("User") == "videoq", path.name
        for key, value in {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "PrivateTmp": "yes",
        }.items():
            assert service.get(key) == value, f"{path.name}: {key}"
    api = _ini(SYSTEMD / "videoq-api.service")
    assert "videoq-migrate.service" in api["Unit"]["Requires"].split()
    assert "videoq-migrate.service" in api["Unit"]["After"].split()
    assert _ini(SYSTEMD / "videoq-migrate.service")["Service"]["Type"] == "oneshot"
    worker = _ini(SYSTEMD / "videoq-worker@.service")["Service"]
    assert worker["KillSignal"] == "SIGTERM"
    # SIGTERM to the worker alone: it stops its FFmpeg children itself.
    assert worker["KillMode"] == "mixed"
    assert worker["Restart"] == "on-failure"
    assert "%i" in worker["Environment"], "each instance has its own scratch directory"


def test_supervisor_programs() -> None:
    conf = _ini(SUPERVISOR)
    for name in ("program:videoq-api", "program:videoq-worker"):
        program = conf[name]
        # Supervisor refuses numprocs > 1 unless each process gets its own name.
        assert "%(process_num)" in program["process_name"], name
        assert int(program["numprocs"]) >= 1
        assert program["stopsignal"] == "TERM"
        # The settings file is sourced, then videoq exec'd: signals reach videoq, not a shell.
        assert "exec /opt/videoq/venv/bin/videoq" in program["command"], name
    api = conf["program:videoq-api"]
    assert int(api["numprocs"]) > 1 and "%(process_num)" in api["command"], "a port each"


# --- The settings file works for systemd and for /bin/sh alike -----------------------------


def test_env_example_reads_the_same_for_systemd_and_sh() -> None:
    env = _env_file(ENV_EXAMPLE)
    assert {"VIDEOQ_DATABASE_URL", "VIDEOQ_REDIS_URL", "VIDEOQ_STORAGE_URL"} <= env.keys()
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no /bin/sh to source the file with")
    script = 'set -a; . "$1"; env -0'
    out = subprocess.run(
        [sh, "-c", script, "sh", str(ENV_EXAMPLE)],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.decode()
    sourced = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    for key, value in env.items():
        assert sourced.get(key) == value, f"{key}: sh reads {sourced.get(key)!r}, systemd {value!r}"


def test_provider_keys_come_from_the_operator() -> None:
    """No recipe writes a provider key: the example leaves each out (or blank: the offline
    provider), Compose passes each through to the API and the workers, and none is in a
    ConfigMap (keys are secrets)."""
    env = _env_file(ENV_EXAMPLE)
    for key in PROVIDER_KEYS:
        assert not env.get(key, "").strip(), f"videoq.env.example sets {key}"
    services = _compose()["services"]
    for name in ("api", "worker"):
        environment = services[name].get("environment") or {}
        for key in PROVIDER_KEYS:
            assert key in environment, f"compose {name}: {key} does not pass through"
            passed = (None, f"${{{key}}}", f"${{{key}:-}}")
            assert environment[key] in passed, f"compose {name}: {key} is written out"
    for obj in _k8s_objects():
        if obj["kind"] == "ConfigMap":
            data = obj.get("data", {})
            assert not set(PROVIDER_KEYS) & data.keys(), f"{obj['metadata']['name']}: a key"


# --- The commands the recipes run exist ----------------------------------------------------

#: `videoq <command> [<subcommand>]` where a command starts: at the start of a line or of a
#: shell word list (after ; & | = -- exec, a quote or a backtick, or `run [--rm] <image>`), or
#: as any path ending in bin/videoq; shell form (`videoq worker`) or exec form
#: (`"videoq", "api"`). A word after `-g videoq` or `from videoq` is no command, nor is a word
#: that goes on as a path or a name (`videoq deploy/...`, `videoq.env`).
_WORD = r"([a-z][a-z-]*)(?![\w/.:-])"
_SEP = r"(?:[ \t]+|\"[ \t]*,[ \t]*\")"
_COMMAND = re.compile(
    r"(?:(?:^|[;&|`'\"=]|--|\bexec|\brun(?:[ \t]+--rm)?[ \t]+\S+)[ \t]*(?:\S*/)?|\S*/bin/)"
    rf"videoq{_SEP}{_WORD}(?:{_SEP}{_WORD})?",
    flags=re.M,
)
_ARQ = re.compile(r"(?<![\w.-])arq[ \t]+([A-Za-z_][\w.]*)")
#: Comment text in the recipes is prose, but for comment lines indented as a command block
#: (`#   docker compose up`) and for `backticked` commands in it.
_COMMENT = re.compile(r"^\s*[#;]")
_COMMENT_COMMAND = re.compile(r"^\s*[#;] {2,}\S")


def _command_text(path: Path) -> Iterator[str]:
    """The parts of a recipe that are commands: code lines, command-like comment lines and
    backticked spans of the recipe files; code blocks and inline code of the Markdown guide."""
    text = path.read_text()
    if path.suffix == ".md":
        yield from re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
        yield from re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        return
    for line in text.splitlines():
        if line.startswith("Description="):
            continue  # systemd's prose
        if _COMMENT.match(line) and not _COMMENT_COMMAND.match(line):
            yield from re.findall(r"`([^`]+)`", line)
            continue
        yield line


def _commands() -> list[tuple[str, str, str | None]]:
    found = set()
    for path in RECIPES:
        for text in _command_text(path):
            for command, sub in _COMMAND.findall(text):
                found.add((_rel(path), command, sub or None))
    return sorted(found, key=lambda f: (f[0], f[1], f[2] or ""))


def test_the_recipes_run_videoq() -> None:
    """The pattern finds what the recipes run (so the next test does not pass on nothing)."""
    commands = {command for _, command, _ in _commands()}
    assert {"api", "worker", "migrate"} <= commands


@pytest.mark.parametrize(
    ("path", "command", "sub"), _commands(), ids=lambda v: str(v) if v is not None else "-"
)
def test_videoq_command_exists(path: str, command: str, sub: str | None) -> None:
    assert isinstance(main, click.Group)
    assert command in main.commands, f"{path} runs `videoq {command}`, which does not exist"
    group = main.commands[command]
    if isinstance(group, click.Group) and sub is not None:
        assert sub in group.commands, f"{path} runs `videoq {command} {sub}`: no such command"


def _arq_targets() -> list[tuple[str, str]]:
    found = set()
    for path in RECIPES:
        for text in _command_text(path):
            for target in _ARQ.findall(text):
                found.add((_rel(path), target.rstrip(".")))
    return sorted(found)


@pytest.mark.parametrize(("path", "target"), _arq_targets())
def test_arq_settings_importable(path: str, target: str) -> None:
    module, _, name = target.rpartition(".")
    settings = getattr(importlib.import_module(module), name)
    # arq takes a class or a mapping of Worker arguments (videoq's reads settings lazily).
    assert isinstance(settings, dict | type), f"{path}: arq {target} is not worker settings"


# --- Python one-liners (health checks, probes, build steps) --------------------------------


def _python_snippets() -> list[tuple[str, str]]:
    snippets: list[tuple[str, str]] = []
    dockerfile = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    for match in re.finditer(r"python\"?,?\s*\"?-c\"?,?\s*([\"'])(.*?)\1", dockerfile):
        snippets.append(("deploy/Dockerfile", match.group(2)))
    for path in YAML_FILES:
        for doc in _yaml_documents(path):
            for argv in _argvs(doc):
                for i, arg in enumerate(argv[:-1]):
                    if Path(str(arg)).name.startswith("python") and argv[i + 1] == "-c":
                        snippets.append((_rel(path), str(argv[i + 2])))
    return snippets


def _argvs(node: Any) -> Iterator[list[Any]]:
    """Every list of strings in a YAML tree that may be a command line."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _argvs(value)
    elif isinstance(node, list):
        if node and all(isinstance(item, str) for item in node):
            yield node
        for item in node:
            yield from _argvs(item)


def test_python_snippets_found() -> None:
    where = {path for path, _ in _python_snippets()}
    assert {"deploy/Dockerfile", "deploy/compose.yaml", "deploy/k8s/api.yaml"} <= where


@pytest.mark.parametrize(("path", "code"), _python_snippets(), ids=lambda v: str(v)[:40])
def test_python_snippet_compiles_and_its_imports_exist(path: str, code: str) -> None:
    tree = ast.parse(code, filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("videoq"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{path}: {node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


# --- Docker -------------------------------------------------------------------------------


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, flags=re.M | re.I)
    assert len(stages) >= 2 and "build" in stages, "multi-stage: a build stage, then runtime"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK\s", text, flags=re.M)
    assert "ffmpeg" in text and "fonts-dejavu-core" in text
    cmd = re.findall(r"^CMD\s+(\[.*\])\s*$", text, flags=re.M)
    assert cmd and yaml.safe_load(cmd[-1]) == [
        "videoq", "api", "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip
    # Everything the build stage copies is in the repository and not ignored.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].strip("/") for line in ignore if line.startswith("!")}
    for item in kept:
        assert (ROOT / item).exists(), f"Dockerfile.dockerignore keeps {item}: not there"
    for source in re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+\s*$", text, flags=re.M):
        for item in source.split():
            assert (ROOT / item).exists(), f"COPY {item}: not in the repository"
            assert item.strip("/") in kept, f"COPY {item}: left out of the build context"


# --- Docker Compose ------------------------------------------------------------------------


def test_compose_services() -> None:
    services = _compose()["services"]
    assert {"postgres", "redis", "minio", "bucket", "migrate", "api", "worker"} <= set(services)
    assert services["postgres"]["image"].startswith("pgvector/pgvector:pg16")
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli" in str(services["redis"]["healthcheck"]["test"])
    assert "/health" in str(services["api"]["healthcheck"]["test"])
    depends = services["api"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["videoq", "migrate"]


def test_compose_worker_scales() -> None:
    """`docker compose up --scale worker=N` needs a worker with no fixed name and no host port."""
    worker = _compose()["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"] == ["videoq", "worker"]


# --- Stop timeouts outlast a worker's shutdown ---------------------------------------------


def _check_stop(where: str, stop_s: float, grace: str | None) -> None:
    assert grace is not None, f"{where}: VIDEOQ_SHUTDOWN_GRACE_S is not set"
    grace_s = float(grace)
    assert stop_s > grace_s, f"{where}: stop timeout {stop_s}s <= grace {grace_s}s"
    assert stop_s >= 2 * grace_s + STOP_MARGIN_S, (
        f"{where}: stop timeout {stop_s}s < 2 x VIDEOQ_SHUTDOWN_GRACE_S ({grace_s}s) + "
        f"{STOP_MARGIN_S}s: the worker would be killed while still recording its jobs' ends"
    )


def test_compose_stop_grace_period() -> None:
    worker = _compose()["services"]["worker"]
    grace = worker["environment"].get("VIDEOQ_SHUTDOWN_GRACE_S")
    _check_stop("compose worker", _seconds(worker["stop_grace_period"]), grace)


def test_k8s_termination_grace_period() -> None:
    deployment = _k8s("Deployment", "videoq-worker")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "worker"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= _k8s("ConfigMap", source["configMapRef"]["name"]).get("data", {})
    env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    _check_stop("k8s worker", float(pod["terminationGracePeriodSeconds"]), env.get(
        "VIDEOQ_SHUTDOWN_GRACE_S"
    ))  # fmt: skip
    # SIGTERM goes straight to videoq (PID 1): a preStop hook would only delay it.
    assert "lifecycle" not in container
    assert "ports" not in container


def test_systemd_timeout_stop() -> None:
    service = _ini(SYSTEMD / "videoq-worker@.service")["Service"]
    env = _env_file(ENV_EXAMPLE)
    for assignment in shlex.split(service.get("Environment", "")):
        key, _, value = assignment.partition("=")
        env[key] = value
    _check_stop(
        "videoq-worker@.service", _seconds(service["TimeoutStopSec"]),
        env.get("VIDEOQ_SHUTDOWN_GRACE_S"),
    )  # fmt: skip


def test_supervisor_stopwaitsecs() -> None:
    program = _ini(SUPERVISOR)["program:videoq-worker"]
    env = _env_file(ENV_EXAMPLE)
    for assignment in program.get("environment", "").split(","):
        key, _, value = assignment.partition("=")
        env.setdefault(key.strip(), value.strip().strip('"'))
    _check_stop(
        "supervisor videoq-worker", float(program["stopwaitsecs"]),
        env.get("VIDEOQ_SHUTDOWN_GRACE_S"),
    )  # fmt: skip


# --- Kubernetes ----------------------------------------------------------------------------


def test_kustomization_lists_the_base() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, "every base manifest listed, and nothing that is not there"
    images = {image["name"] for image in kustomization.get("images", [])}
    for obj in _k8s_objects():
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            assert container["image"] in images, f"{container['name']}: image not set by kustomize"


def test_k8s_api_probes_use_health() -> None:
    pod = _k8s("Deployment", "videoq-api")["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "/health" in str(api["livenessProbe"])
    assert _k8s("Service", "videoq-api")["spec"]["ports"][0]["targetPort"] in {"http", 8000}


def test_worker_probes_check_the_workers_own_heartbeat() -> None:
    """`videoq worker --check` answers for the pod's (the container's) own worker; liveness
    gives a restarting Redis, which stops every heartbeat, a minute before restarting it."""
    pod = _k8s("Deployment", "videoq-worker")["spec"]["template"]["spec"]
    (worker,) = [c for c in pod["containers"] if c["name"] == "worker"]
    check = ["videoq", "worker", "--check"]
    for probe in ("startupProbe", "livenessProbe"):
        assert worker[probe]["exec"]["command"] == check
        assert worker[probe]["timeoutSeconds"] >= 5
    live = worker["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    assert "readinessProbe" not in worker  # no Service to leave
    assert _compose()["services"]["worker"]["healthcheck"]["test"] == ["CMD", *check]
    assert "check" in {param.name for param in main.commands["worker"].params}


def test_keda_scales_workers_on_queue_length() -> None:
    scaled = _k8s("ScaledObject", "videoq-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "videoq-worker"
    # Zero workers would never re-enqueue what a restarted Redis lost.
    assert scaled["spec"]["minReplicaCount"] >= 1
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "videoq_queue_length" in trigger["metadata"]["query"]
    max_jobs = _k8s("ConfigMap", "videoq")["data"]["VIDEOQ_MAX_JOBS"]
    assert trigger["metadata"]["threshold"] == max_jobs, "one worker per VIDEOQ_MAX_JOBS entries"


def test_kubectl_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (kubectl kustomize renders offline)")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(out.stdout) if doc}
    assert {"Namespace", "ConfigMap", "Secret", "Job", "Deployment", "Service"} <= kinds


# --- systemd-analyze verify ------------------------------------------------------------------


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's binary exists: point the copies at this venv's videoq.
    videoq = Path(sys.executable).with_name("videoq")
    if not videoq.exists():
        found = shutil.which("videoq")
        if found is None:
            pytest.skip("no videoq executable to stand in for /opt/videoq/venv/bin/videoq")
        videoq = Path(found)
    for unit in UNITS:
        text = unit.read_text().replace("/opt/videoq/venv/bin/videoq", str(videoq))
        (tmp_path / unit.name).write_text(text)
    names = [unit.name.replace("@.service", "@1.service") for unit in UNITS]
    out = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / name) for name in names)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    ours = [
        line for line in (out.stdout + out.stderr).splitlines()
        if str(tmp_path) in line or "videoq" in line
    ]  # fmt: skip
    assert out.returncode == 0 and not ours, "\n".join(ours) or out.stderr
