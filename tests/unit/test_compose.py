"""Static checks of the production shape: docker-compose.yaml, the Dockerfile it builds and the postgres init.

Docker is not available on the development machine, so the compose file is never started here; these
tests parse it (PyYAML, anchors and merge keys resolved) and check what would otherwise only fail at
``docker compose up``: a missing service, a ``HOMEWORTH_*`` name that tasks/core/settings.py does not read,
code that never reaches the workers, a lake that workers do not share, an executor/broker/database
mix-up, or Airflow pointing at a different MLflow than the server the file starts. They also check that the
file is closed by default (docs/security.md): only Airflow published, on the loopback; every password from
.env with ``:?``; memory limits; a complete .env.example; the embedded demo bound to 127.0.0.1.

Beyond reading the file by hand: it is validated against the compose-spec JSON schema vendored in
deploy/compose-spec/ (with its source), every ``mlflow server`` option is parsed by MLflow's own click command
and every ``airflow ...`` command line by Airflow's own argument parser. deploy/compose.s3.yaml (the lake and
the artifacts on S3) is checked merged into the file, so the object-store branch is exercised too.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

from tasks.core.settings import Settings  # noqa: E402

COMPOSE_FILE = REPO / "docker-compose.yaml"
S3_OVERRIDE = REPO / "deploy" / "compose.s3.yaml"
SCHEMA_FILE = REPO / "deploy" / "compose-spec" / "compose_spec.json"
GPU_WORKER = "airflow-worker-gpu"
# What the `gpu` profile's setup puts in .env (docs/production.md): the training queue only that worker takes.
GPU_ENV = {"TRAINING_QUEUE": "training"}
AIRFLOW_HOME = "/opt/airflow"
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    GPU_WORKER,
)
# The long-running components and the `airflow ...` command each one runs.
COMPONENT_COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker --queues default",
    GPU_WORKER: "celery worker --queues training --concurrency 1",
}
EXPECTED_SERVICES = {"postgres", "redis", "mlflow", *AIRFLOW_SERVICES}
# What the Airflow containers need from the checkout: DAGs, the logic package, plugins, GX suites.
CODE_DIRS = ("dags", "tasks", "plugins", "expectations")
SETTINGS_ENV_NAMES = {f"HOMEWORTH_{name.upper()}" for name in Settings.model_fields}
# Keys of a compose service this project may use (a subset of the compose specification). docker compose
# rejects unknown keys; this catches a typo such as ``depends-on`` before anyone runs it.
SERVICE_KEYS = {
    "build", "command", "container_name", "depends_on", "deploy", "entrypoint", "env_file", "environment",
    "expose", "healthcheck", "hostname", "image", "init", "labels", "logging", "ports", "profiles",
    "restart", "shm_size", "stop_grace_period", "user", "volumes", "working_dir",
}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def interpolate(value: object, env: dict[str, str] | None = None) -> str:
    """Compose interpolation with the variables ``env`` (none by default): defaults apply to the others,
    required ones become markers."""

    def sub(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env and env.get(name):
            return env[name]
        if op and op.endswith("-"):
            return arg
        if op and op.endswith("?"):
            return f"<required:{name}>"
        return ""

    text = str(value).replace("$$", "\0")
    return _VAR.sub(sub, text).replace("\0", "$")


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def argv_of(service: dict, env: dict[str, str] | None = None) -> list[str]:
    """entrypoint + command as one argv (string forms split like a shell would); interpolated when ``env``
    is given."""
    argv: list[str] = []
    for key in ("entrypoint", "command"):
        part = service.get(key)
        if part is None:
            continue
        argv += shlex.split(part) if isinstance(part, str) else [str(p) for p in part]
    return argv if env is None else [interpolate(a, env) for a in argv]


def merge_override(base: dict, override: dict) -> dict:
    """docker compose's merge of an override file, for the keys deploy/compose.s3.yaml uses: each service's
    ``environment`` merged key by key, ``command`` / ``entrypoint`` replaced, other mappings merged deeply."""
    out = {**base, "services": {name: dict(svc) for name, svc in base["services"].items()}}
    for name, svc in (override.get("services") or {}).items():
        assert name in out["services"], f"the override names a service docker-compose.yaml lacks: {name}"
        target = out["services"][name]
        for key, value in svc.items():
            if key == "environment":
                target[key] = {**env_of(target), **env_of(svc)}
            elif isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key] = _deep_merge(target[key], value)
            else:
                assert key in ("command", "entrypoint", "image"), f"{name}: merge of {key!r} is not modelled here"
                target[key] = value
    return out


def _deep_merge(a: dict, b: dict) -> dict:
    return {**a, **{k: _deep_merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
                    for k, v in b.items()}}


def flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def mounts_of(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, is_named_volume) for every volume entry, short or long syntax."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            source, target = str(v.get("source", "")), str(v["target"])
            named = v.get("type") == "volume"
        else:
            parts = interpolate(v).split(":")
            source, target = parts[0], parts[1]
            named = not source.startswith((".", "/", "~"))
        out.append((interpolate(source), interpolate(target).rstrip("/") or "/", named))
    return out


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and backslash continuations joined."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        line, buf = buf + line, ""
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def dockerfile_of(service: dict) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    return (REPO / interpolate(context) / interpolate(dockerfile)).resolve()


def copies_of(dockerfile: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (multi-stage --from copies excluded)."""
    out = []
    for instr, args in dockerfile_instructions(dockerfile):
        if instr not in ("COPY", "ADD"):
            continue
        tokens = shlex.split(args)
        if any(t.startswith("--from") for t in tokens):
            continue
        tokens = [t for t in tokens if not t.startswith("--")]
        out.append((tokens[:-1], tokens[-1]))
    return out


def image_env(dockerfile: Path) -> dict[str, str]:
    env = {}
    for instr, args in dockerfile_instructions(dockerfile):
        if instr == "ENV":
            for token in shlex.split(args):
                if "=" in token:
                    k, v = token.split("=", 1)
                    env[k] = v
    return env


def provided_dirs(service: dict) -> set[str]:
    """Top-level repo folders that appear as /opt/airflow/<name> in the service: bind-mounted or COPYed."""
    found = set()
    for source, target, named in mounts_of(service):
        if not named and target.startswith(AIRFLOW_HOME + "/"):
            src = (REPO / source).resolve()
            if src.parent == REPO and target == f"{AIRFLOW_HOME}/{src.name}":
                found.add(src.name)
    dockerfile = dockerfile_of(service)
    if dockerfile is not None and dockerfile.exists():
        for sources, dest in copies_of(dockerfile):
            if len(sources) != 1:
                continue
            pattern = sources[0].rstrip("/")
            name = dest.rstrip("/").removeprefix(AIRFLOW_HOME + "/")
            if dest.rstrip("/") == f"{AIRFLOW_HOME}/{name}" and "/" not in name and fnmatch.fnmatch(name, pattern):
                found.add(name)
    return found


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose_text() -> str:
    assert COMPOSE_FILE.exists(), f"{COMPOSE_FILE} is missing"
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    data = yaml.safe_load(compose_text)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services: mapping"
    return data


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def s3_override() -> dict:
    data = yaml.safe_load(S3_OVERRIDE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{S3_OVERRIDE}: no services"
    return data


@pytest.fixture(scope="module", params=["volumes", "s3"])
def variant(request, compose, s3_override) -> dict:
    """The compose configuration as run: docker-compose.yaml alone (the lake on named volumes), or merged with
    deploy/compose.s3.yaml (the lake and MLflow's artifacts on S3)."""
    return compose if request.param == "volumes" else merge_override(compose, s3_override)


@pytest.fixture(scope="module")
def mlflow_argv(services) -> list[str]:
    return argv_of(services["mlflow"])


def mlflow_backend(services, argv: list[str]) -> str:
    """The server's backend store: ``--backend-store-uri`` or the MLFLOW_BACKEND_STORE_URI it reads instead."""
    return flag(argv, "--backend-store-uri") or env_of(services["mlflow"]).get("MLFLOW_BACKEND_STORE_URI", "")


# --------------------------------------------------------------------------------------------------
# shape
# --------------------------------------------------------------------------------------------------
def test_every_service_exists(services):
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"services missing from docker-compose.yaml: {sorted(missing)}"


def test_services_use_only_known_keys(services):
    for name, service in services.items():
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"{name}: unknown compose keys {sorted(unknown)}"


def test_airflow_components_run_their_command(services):
    for name, command in COMPONENT_COMMANDS.items():
        argv = argv_of(services[name], GPU_ENV)
        assert argv == command.split(), f"{name} runs {argv}, expected `airflow {command}`"
    init = " ".join(argv_of(services["airflow-init"]))
    assert "airflow db migrate" in init, "airflow-init must migrate the metadata database"


def test_airflow_services_share_one_image_built_from_the_dockerfile(services):
    images = {interpolate(services[n].get("image", "")) for n in AIRFLOW_SERVICES if n != GPU_WORKER}
    assert len(images) == 1, f"Airflow services run different images: {images}"
    # The GPU worker: the same Dockerfile and code, its own tag, only torch's build differs.
    assert interpolate(services[GPU_WORKER]["image"]) == images.pop() + "-cuda"
    for name in AIRFLOW_SERVICES:
        dockerfile = dockerfile_of(services[name])
        assert dockerfile == (REPO / "Dockerfile").resolve(), f"{name} is not built from ./Dockerfile"
        assert dockerfile.exists()


def test_dependencies_wait_for_health_and_init(services):
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if spec.get("condition") == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy, but it has no healthcheck"
        if name in COMPONENT_COMMANDS:
            assert deps.get("airflow-init", {}).get("condition") == "service_completed_successfully", (
                f"{name} must start after airflow-init has migrated the database"
            )
            for infra in ("postgres", "redis"):
                assert deps.get(infra, {}).get("condition") == "service_healthy", f"{name} must wait for {infra}"


def test_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for source, _target, named in mounts_of(service):
            if named:
                assert source in declared, f"{name} mounts volume {source!r} that is not declared under volumes:"


# --------------------------------------------------------------------------------------------------
# the compose specification's own schema (vendored: deploy/compose-spec/SOURCE.md)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose_schema():
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    # The file declares draft 2019-09 (under a non-canonical URI that jsonschema does not resolve by itself).
    assert "2019-09" in schema["$schema"], schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def _schema_errors(validator, data: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}"
            for e in validator.iter_errors(data)]


def test_compose_files_follow_the_compose_spec_schema(compose_schema, compose, s3_override, variant):
    for name, data in (("docker-compose.yaml", compose), ("deploy/compose.s3.yaml", s3_override),
                       ("the configuration as run", variant)):
        errors = _schema_errors(compose_schema, data)
        assert not errors, f"{name} breaks the compose specification:\n" + "\n".join(errors)


def test_the_schema_rejects_what_docker_compose_rejects(compose_schema, compose):
    # The validation has teeth: a misspelt key, a wrong type, an unknown device field, a bad condition.
    def broken(mutate) -> dict:
        data = json.loads(json.dumps(compose))
        mutate(data["services"])
        return data

    cases = {
        "depends-on": lambda s: s["airflow-worker"].update({"depends-on": ["redis"]}),
        "healthcheck retries": lambda s: s["redis"]["healthcheck"].update({"retries": "many"}),
        "device field": lambda s: s[GPU_WORKER]["deploy"]["resources"]["reservations"]["devices"][0].update(
            {"gpus": 1}),
        "condition": lambda s: s["airflow-worker"]["depends_on"]["redis"].update({"condition": "service_up"}),
        "profiles": lambda s: s[GPU_WORKER].update({"profiles": "gpu"}),
    }
    for what, mutate in cases.items():
        assert _schema_errors(compose_schema, broken(mutate)), f"the schema accepted a broken {what}"


def test_schema_is_the_vendored_file_its_source_names():
    import hashlib

    source = (SCHEMA_FILE.parent / "SOURCE.md").read_text()
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    assert digest in source, f"{SCHEMA_FILE.name}'s sha256 {digest} is not the one SOURCE.md records"
    assert "Apache-2.0" in source and (SCHEMA_FILE.parent / "LICENSE").read_text().count("Apache License") >= 1


# --------------------------------------------------------------------------------------------------
# every command line against the program's own definition
# --------------------------------------------------------------------------------------------------
def test_every_mlflow_server_option_and_variable_is_mlflow_s(variant, monkeypatch):
    import click
    import mlflow.environment_variables
    from mlflow.cli import server

    for key in list(os.environ):
        if key.startswith("MLFLOW_"):
            monkeypatch.delenv(key)  # click would read them as option values
    argv = argv_of(variant["services"]["mlflow"], {"S3_BUCKET": "bucket"})
    assert argv[:2] == ["mlflow", "server"], argv
    try:
        ctx = server.make_context("server", argv[2:])
    except click.UsageError as e:
        raise AssertionError(f"`mlflow {' '.join(argv[1:])}` is refused by MLflow's own CLI: {e}") from e
    assert ctx.params["serve_artifacts"] is True and ctx.params["port"] == 5000, ctx.params
    # Environment variables: a `mlflow server` option's (click envvar) or one of mlflow.environment_variables.
    option_vars = {p.envvar for p in server.params if isinstance(p.envvar, str)}
    known = option_vars | {n for n in dir(mlflow.environment_variables) if n.startswith("MLFLOW_")}
    assert "MLFLOW_BACKEND_STORE_URI" in option_vars, "the backend store is passed by this variable"
    image = image_env(REPO / "Dockerfile")
    for where, env in (("mlflow service", env_of(variant["services"]["mlflow"])), ("Dockerfile ENV", image)):
        unknown = {k for k in env if k.startswith("MLFLOW_")} - known
        assert not unknown, f"{where}: MLflow reads no variable {sorted(unknown)}"


# `airflow` in a command position of a shell text: a line's start, after ; & | ( or exec, or after /entrypoint.
_AIRFLOW_IN_SHELL = re.compile(r"(?:^|[;&|(]|\bexec\b)[ \t]*(?:/entrypoint[ \t]+)?airflow[ \t]+([^\n;&|)]+)", re.M)
_PARSE_SCRIPT = """
import argparse, json, sys
from airflow.cli import cli_parser
parser = cli_parser.get_parser()
def strict(p):  # no abbreviations: `--queue` must not pass for `--queues`
    p.allow_abbrev = False
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                strict(sub)
strict(parser)
out = {}
for argv in json.load(sys.stdin):
    try:
        ns, extra = parser.parse_known_args(argv)
        out[" ".join(argv)] = f"unknown arguments {extra}" if extra else ("" if hasattr(ns, "func") else "no command")
    except SystemExit as e:
        out[" ".join(argv)] = f"refused (exit {e.code})"
print(json.dumps(out))
"""


def airflow_command_lines(services: dict) -> list[list[str]]:
    """Every `airflow ...` the file runs: each component's command (the image's entrypoint prefixes
    `airflow`), and the `airflow ...` inside shell scripts and health checks."""
    lines = []
    for name, service in services.items():
        if name in COMPONENT_COMMANDS:
            lines.append(argv_of(service, GPU_ENV))
        shell = [*argv_of(service), *[str(x) for x in (service.get("healthcheck") or {}).get("test", [])]]
        for text in shell:
            for m in _AIRFLOW_IN_SHELL.finditer(interpolate(text)):
                lines.append(shlex.split(m.group(1)))
    return lines


def test_every_airflow_command_line_parses_with_airflow_s_own_parser(services, tmp_path):
    lines = airflow_command_lines(services)
    joined = {" ".join(line) for line in lines}
    assert {"db migrate", "celery worker --queues default", "scheduler"} <= joined, joined
    assert any(line[:2] == ["jobs", "check"] for line in lines), joined
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
           "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
           "AIRFLOW__CORE__LOAD_EXAMPLES": "false"}
    probe = [*lines, ["celery", "worker", "--queue", "x"], ["scheduler", "--no-such-flag"]]
    done = subprocess.run([sys.executable, "-c", _PARSE_SCRIPT], input=json.dumps(probe), env=env, text=True,
                          capture_output=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    verdicts = json.loads(done.stdout.strip().splitlines()[-1])
    # The probes show that the parser refuses an abbreviation and an unknown flag.
    assert verdicts.pop("celery worker --queue x") and verdicts.pop("scheduler --no-such-flag"), verdicts
    refused = {line: why for line, why in verdicts.items() if why}
    assert not refused, f"`airflow ...` lines Airflow 3's parser refuses: {refused}"


# --------------------------------------------------------------------------------------------------
# homeworth settings
# --------------------------------------------------------------------------------------------------
def test_every_homeworth_name_is_a_settings_field(compose, compose_text):
    assert {"HOMEWORTH_HOME", "HOMEWORTH_LAKE_URI", "HOMEWORTH_MLFLOW_TRACKING_URI"} <= SETTINGS_ENV_NAMES
    used: dict[str, str] = {}
    for name, service in compose["services"].items():
        for key in env_of(service):
            if key.startswith("HOMEWORTH_"):
                used[key] = name
    unknown = {k: where for k, where in used.items() if k not in SETTINGS_ENV_NAMES}
    assert not unknown, f"HOMEWORTH_* names that tasks.core.settings.Settings does not read: {unknown}"
    # Also anywhere in the text (interpolations, commands, comments), so no name drifts in unnoticed.
    mentioned = set(re.findall(r"HOMEWORTH_[A-Z0-9_]+", compose_text))
    assert mentioned - SETTINGS_ENV_NAMES == set(), f"unknown HOMEWORTH_* names: {mentioned - SETTINGS_ENV_NAMES}"


# Settings a worker may set for itself: they only matter where `train` runs.
WORKER_OWN_SETTINGS = {GPU_WORKER: {"HOMEWORTH_TRAIN_DEVICES"}}


def test_airflow_services_get_the_same_homeworth_and_airflow_settings(variant):
    services = variant["services"]
    reference = {k: v for k, v in env_of(services["airflow-apiserver"]).items()
                 if k.startswith(("HOMEWORTH_", "AIRFLOW__", "AWS_"))}
    required = {"HOMEWORTH_HOME", "HOMEWORTH_LANDING_URI", "HOMEWORTH_LAKE_URI", "HOMEWORTH_MLFLOW_TRACKING_URI",
                "HOMEWORTH_TRAINING_QUEUE"}
    assert required <= set(reference), f"missing settings: {required - set(reference)}"
    assert reference["HOMEWORTH_HOME"] == f"{AIRFLOW_HOME}/state"
    for name in AIRFLOW_SERVICES:
        own = WORKER_OWN_SETTINGS.get(name, set())
        env = {k: v for k, v in env_of(services[name]).items()
               if k.startswith(("HOMEWORTH_", "AIRFLOW__", "AWS_")) and k not in own}
        assert env == reference, f"{name} differs from airflow-apiserver: {set(env.items()) ^ set(reference.items())}"


@pytest.mark.parametrize("worker", ["airflow-worker", GPU_WORKER])
def test_compose_values_make_valid_settings(services, monkeypatch, worker):
    env = {k: interpolate(v, GPU_ENV) for k, v in env_of(services[worker]).items() if k.startswith("HOMEWORTH_")}
    for key in list(os.environ):
        if key.startswith("HOMEWORTH_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert str(s.home) == env["HOMEWORTH_HOME"]
    assert s.lake_uri == env["HOMEWORTH_LAKE_URI"]
    assert s.landing_uri == env["HOMEWORTH_LANDING_URI"]
    assert s.mlflow_tracking_uri == env["HOMEWORTH_MLFLOW_TRACKING_URI"]
    assert s.training_queue == env["HOMEWORTH_TRAINING_QUEUE"] == "training"
    if "HOMEWORTH_TORCH_THREADS" in env:
        assert s.torch_threads == int(env["HOMEWORTH_TORCH_THREADS"])


def test_lake_landing_and_reports_are_shared_by_every_airflow_container(variant):
    from tasks.core import objectstore

    services = variant["services"]
    declared = set(variant.get("volumes") or {})
    env = env_of(services["airflow-worker"])
    for key in ("HOMEWORTH_LANDING_URI", "HOMEWORTH_LAKE_URI", "HOMEWORTH_REPORTS_URI", "HOMEWORTH_HOME"):
        uri = interpolate(env.get(key, ""), {"S3_BUCKET": "bucket"})
        assert uri, f"{key} is not set for the workers"
        if "://" in uri:
            # An object store: every Airflow container names the same URI (the settings test above) and can
            # reach it with credentials of its own.
            assert objectstore.is_s3(uri), f"{key}={uri}: tasks/core/storage.py resolves only s3:// URIs"
            bucket, prefix = objectstore.bucket_key(uri)
            assert bucket == "bucket" and prefix, f"{key}={uri}: no bucket/prefix"
            for name in AIRFLOW_SERVICES:
                _assert_s3_credentials(name, env_of(services[name]))
            continue
        assert uri.startswith("/"), f"{key}={uri!r} must be absolute inside the containers"
        sources = set()
        for name in AIRFLOW_SERVICES:
            covering = [(src, tgt, named) for src, tgt, named in mounts_of(services[name])
                        if uri == tgt or uri.startswith(tgt + "/")]
            assert covering, f"{key}={uri} is not on a mounted volume in {name}: each container would see its own copy"
            src, _tgt, named = max(covering, key=lambda m: len(m[1]))
            assert named and src in declared, f"{key} in {name} must live on a declared named volume, not {src!r}"
            sources.add(src)
        assert len(sources) == 1, f"{key} is backed by different volumes in different services: {sources}"


def _assert_s3_credentials(name: str, env: dict[str, str]) -> None:
    """An Airflow connection named by HOMEWORTH_AWS_CONN_ID, or access keys required from the shell/.env."""
    if env.get("HOMEWORTH_AWS_CONN_ID"):
        return
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert interpolate(env.get(key, "")) == f"<required:{key}>", f"{name}: {key} must come from .env with :?"


def test_dataset_spec_and_data_reach_the_image(services):
    spec = interpolate(env_of(services["airflow-worker"]).get("HOMEWORTH_DATASET_SPEC", ""))
    if spec:
        rel = Path(spec).relative_to(AIRFLOW_HOME)
        assert (REPO / rel).is_file(), f"HOMEWORTH_DATASET_SPEC={spec} has no file {rel} in the repo"
        assert rel.parts[0] in provided_dirs(services["airflow-worker"]), f"{rel.parts[0]}/ is not in the image"
    # The default spec and its bundled CSV live in tasks/datasets/<name>/, which replay and ingest read.
    assert "tasks" in provided_dirs(services["airflow-worker"]), "tasks/ (with the bundled dataset) is not in the image"


# --------------------------------------------------------------------------------------------------
# code and image
# --------------------------------------------------------------------------------------------------
def test_airflow_services_mount_or_copy_the_code(services):
    for name in AIRFLOW_SERVICES:
        missing = set(CODE_DIRS) - provided_dirs(services[name])
        assert not missing, f"{name} neither mounts nor copies {sorted(missing)} to {AIRFLOW_HOME}/"


def test_code_is_installed_in_the_image_as_make_venv_does(services):
    """The image installs the project (editable, from the copied pyproject.toml): no PYTHONPATH tricks."""
    dockerfile = dockerfile_of(services["airflow-worker"])
    copied = {src for sources, _dest in copies_of(dockerfile) for src in sources}
    assert "pyproject.toml" in copied, "the image must copy pyproject.toml to install the project"
    installs = [args for instr, args in dockerfile_instructions(dockerfile) if instr == "RUN" and "pip install" in args]
    assert any(f"-e {AIRFLOW_HOME}" in a and "--no-deps" in a for a in installs), "the project is not pip-installed"
    for name in AIRFLOW_SERVICES:
        pythonpath = env_of(services[name]).get("PYTHONPATH") or image_env(dockerfile).get("PYTHONPATH", "")
        assert not pythonpath, f"{name}: PYTHONPATH={pythonpath!r}; the installed package is found without it"


def test_dockerfile_matches_requirements():
    dockerfile = REPO / "Dockerfile"
    requirements = (REPO / "requirements.txt").read_text()
    airflow_pin = re.search(r"^apache-airflow==([\w.]+)\s*$", requirements, re.M)
    torch_pin = re.search(r"^torch==([\w.]+)\s*$", requirements, re.M)
    assert airflow_pin and torch_pin, "requirements.txt must pin apache-airflow and torch"
    instructions = dockerfile_instructions(dockerfile)
    froms = [args for instr, args in instructions if instr == "FROM"]
    assert froms == [f"apache/airflow:{airflow_pin.group(1)}-python3.11"], f"base image {froms} != requirements pin"
    installs = [args for instr, args in instructions if instr == "RUN" and "pip install" in args]
    assert any("-r /requirements.txt" in a or "-r requirements.txt" in a for a in installs), "requirements not installed"
    # torch's index is the build argument TORCH_INDEX_URL, the CPU index unless a service says otherwise.
    args = dict(shlex.split(a)[0].split("=", 1) for instr, a in instructions if instr == "ARG" and "=" in a)
    assert args.get("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu", args
    assert any('--extra-index-url "${TORCH_INDEX_URL}"' in a and "-r " in a for a in installs), (
        "torch must come from the index TORCH_INDEX_URL names")
    copied = {src for sources, _dest in copies_of(dockerfile) for src in sources}
    assert "requirements.txt" in copied
    for src in copied:
        if not any(ch in src for ch in "*?["):
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repo"


# --------------------------------------------------------------------------------------------------
# executor, broker, metadata database
# --------------------------------------------------------------------------------------------------
def test_celery_executor_with_redis_broker_and_postgres_metadata(services):
    for name in AIRFLOW_SERVICES:
        env = env_of(services[name])
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", f"{name}: executor"
        broker = urlsplit(interpolate(env["AIRFLOW__CELERY__BROKER_URL"]))
        assert broker.scheme in ("redis", "rediss") and broker.hostname == "redis", f"{name}: broker {broker}"
        for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
            url = urlsplit(interpolate(env[key]))
            assert url.scheme.removeprefix("db+").startswith("postgresql"), f"{name}: {key}={url.geturl()}"
            assert url.hostname == "postgres" and url.path == "/airflow", f"{name}: {key} must be the postgres service"
        assert env.get("AIRFLOW__CORE__LOAD_EXAMPLES", "").lower() == "false"
        assert env.get("GX_ANALYTICS_ENABLED", "").lower() == "false"
        assert env.get("MLFLOW_DISABLE_TELEMETRY", "").lower() == "true"
        assert env.get("AIRFLOW__API_AUTH__JWT_SECRET"), f"{name}: components must share one JWT secret"
    assert services["redis"].get("healthcheck") and services["postgres"].get("healthcheck")
    postgres_env = env_of(services["postgres"])
    assert postgres_env.get("POSTGRES_DB") == "airflow"


def airflow_options() -> set[tuple[str, str]]:
    """(section, option) pairs Airflow core and the Celery provider define, read from the installed files."""
    spec = importlib.util.find_spec("airflow")  # locates the package without importing it
    assert spec and spec.origin, "apache-airflow is not installed"
    base = Path(spec.origin).parent
    core = yaml.safe_load((base / "config_templates" / "config.yml").read_text())
    options = {(section, key) for section, body in core.items() for key in body["options"]}
    celery = runpy.run_path(str(base / "providers" / "celery" / "get_provider_info.py"))["get_provider_info"]()
    options |= {(section, key) for section, body in celery.get("config", {}).items() for key in body["options"]}
    return options


def test_every_airflow_variable_is_a_real_option(services):
    # Airflow ignores an AIRFLOW__SECTION__KEY it does not know, so a misspelt one would do nothing.
    known = airflow_options()
    assert ("core", "executor") in known and ("celery", "worker_concurrency") in known
    for name, service in services.items():
        for key in env_of(service):
            m = re.fullmatch(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", key)
            if m:
                assert (m.group(1).lower(), m.group(2).lower()) in known, f"{name}: {key} is not an Airflow option"


def test_execution_api_url_points_at_the_api_server(services):
    url = urlsplit(env_of(services["airflow-worker"])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert url.hostname == "airflow-apiserver" and url.path == "/execution/", url.geturl()
    container_ports = {str(p).split(":")[-1] for p in services["airflow-apiserver"].get("ports", [])}
    assert str(url.port) in container_ports, f"api-server does not listen on {url.port}: {container_ports}"


def test_parallelism_and_worker_concurrency_are_sized(services):
    env = env_of(services["airflow-worker"])
    parallelism = int(env["AIRFLOW__CORE__PARALLELISM"])
    concurrency = int(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"])
    assert 0 < concurrency <= parallelism <= 32, (parallelism, concurrency)


# --------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------
def test_mlflow_server_uses_postgres_and_serves_artifacts_from_a_volume_or_s3(variant):
    from tasks.core import objectstore

    services = variant["services"]
    mlflow_argv = argv_of(services["mlflow"])
    assert "server" in mlflow_argv and (mlflow_argv[0] == "mlflow" or "mlflow" in mlflow_argv), mlflow_argv
    backend = urlsplit(interpolate(mlflow_backend(services, mlflow_argv)))
    assert backend.scheme.startswith("postgresql") and backend.hostname == "postgres", backend.geturl()
    assert backend.path == "/mlflow", f"MLflow must use its own database `mlflow`, not {backend.path}"
    assert "--serve-artifacts" in mlflow_argv and "--no-serve-artifacts" not in mlflow_argv
    destination = flag(mlflow_argv, "--artifacts-destination")
    assert destination, "--artifacts-destination is required"
    if "://" not in destination:
        volumes = [src for src, tgt, named in mounts_of(services["mlflow"])
                   if named and (destination == tgt or destination.startswith(tgt + "/"))]
        assert volumes and set(volumes) <= set(variant.get("volumes") or {}), (
            f"--artifacts-destination {destination} is not on a named volume of the mlflow service"
        )
    else:
        uri = interpolate(destination, {"S3_BUCKET": "bucket"})
        assert objectstore.is_s3(uri) and objectstore.bucket_key(uri)[0] == "bucket", destination
        _assert_s3_credentials("mlflow", env_of(services["mlflow"]))
    assert flag(mlflow_argv, "--host") == "0.0.0.0", "the server must listen beyond its own container"


def test_airflow_tracks_to_the_mlflow_server(services, mlflow_argv):
    port = flag(mlflow_argv, "--port") or "5000"
    allowed = flag(mlflow_argv, "--allowed-hosts")
    for name in AIRFLOW_SERVICES:
        uri = urlsplit(interpolate(env_of(services[name])["HOMEWORTH_MLFLOW_TRACKING_URI"]))
        assert uri.scheme == "http" and uri.hostname == "mlflow", f"{name}: tracking URI {uri.geturl()}"
        assert str(uri.port or 80) == port, f"{name}: tracking port {uri.port} != mlflow --port {port}"
        if allowed:
            # MLflow rejects requests whose Host header is not allowed (its default admits no service name).
            host = uri.netloc
            patterns = [p.strip() for p in allowed.split(",")]
            assert any(host == p or ("*" in p and fnmatch.fnmatch(host, p)) for p in patterns), (
                f"mlflow --allowed-hosts {allowed!r} rejects Host: {host}"
            )
    for worker in ("airflow-worker", GPU_WORKER):
        worker_deps = services[worker].get("depends_on") or {}
        assert "mlflow" in worker_deps, f"{worker} logs to MLflow: it must wait for the mlflow service"


# --------------------------------------------------------------------------------------------------
# the training queue and the GPU worker (docs/production.md, "A GPU worker")
# --------------------------------------------------------------------------------------------------
def _queues(argv: list[str]) -> list[str]:
    value = flag(argv, "--queues") or flag(argv, "-q")
    return value.split(",") if value else ["default"]  # Airflow's [operators] default_queue


def test_the_training_queue_is_served_with_and_without_the_gpu_profile(services):
    # Without the profile (TRAINING_QUEUE unset) the default worker trains; with it, only the GPU worker does.
    for env in ({}, GPU_ENV):
        queue = interpolate(env_of(services["airflow-scheduler"])["HOMEWORTH_TRAINING_QUEUE"], env)
        default_queues = _queues(argv_of(services["airflow-worker"], env))
        gpu_queues = _queues(argv_of(services[GPU_WORKER], env))
        if env:
            assert queue == "training" and gpu_queues == [queue], (queue, gpu_queues)
            assert queue not in default_queues, f"the CPU worker would take {queue!r} from the GPU worker"
        else:
            assert queue in default_queues, f"nobody consumes {queue!r} without the gpu profile"
        assert "default" in default_queues, "every other task is on the default queue"
    for name, service in services.items():
        assert service.get("profiles", []) == (["gpu"] if name == GPU_WORKER else []), f"{name}: profiles"


def test_gpu_worker_reserves_nvidia_gpus_and_builds_cuda_torch(services):
    gpu = services[GPU_WORKER]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert [(d.get("driver"), d.get("capabilities")) for d in devices] == [("nvidia", ["gpu"])], devices
    assert devices[0].get("count") == "all" or int(devices[0].get("count") or devices[0].get("device_ids")), devices
    index = gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d{3}", index), index
    assert env_of(gpu)["HOMEWORTH_TRAIN_DEVICES"] == "auto"
    assert re.fullmatch(r"\d+[kmg]", interpolate(gpu.get("shm_size", ""))), "NCCL needs more than 64m of /dev/shm"
    cpu_args = services["airflow-worker"]["build"].get("args") or {}
    assert "TORCH_INDEX_URL" not in cpu_args, "every other service keeps the Dockerfile's CPU default"


def test_postgres_init_creates_the_mlflow_database(services, mlflow_argv):
    mounts = mounts_of(services["postgres"])
    init = [(src, tgt) for src, tgt, named in mounts if not named and tgt.startswith("/docker-entrypoint-initdb.d/")]
    assert init, "postgres must mount an init script into /docker-entrypoint-initdb.d/"
    script_path = (REPO / init[0][0]).resolve()
    assert script_path == (REPO / "deploy" / "postgres-init.sh").resolve() and script_path.is_file()
    assert init[0][1].endswith(".sh")
    script = script_path.read_text()
    # The role's password is a psql variable filled from the environment, never a literal in the script.
    role = re.search(r"CREATE\s+(?:ROLE|USER)\s+(\w+)\s+WITH\s+(?:LOGIN\s+)?PASSWORD\s+:'(\w+)'", script, re.I)
    database = re.search(r"CREATE\s+DATABASE\s+(\w+)(?:\s+OWNER\s+(\w+))?", script, re.I)
    assert role and database, "the init script must create the mlflow role and database"
    assert re.search(rf'-v\s+{role.group(2)}="\$MLFLOW_DB_PASSWORD"', script), "the password must come from the env"
    assert "MLFLOW_DB_PASSWORD" in env_of(services["postgres"])
    backend = urlsplit(interpolate(mlflow_backend(services, mlflow_argv)))
    assert database.group(1) == backend.path.lstrip("/")
    assert role.group(1) == backend.username
    assert backend.password == "<required:MLFLOW_DB_PASSWORD>", "MLflow must log in with the role's password"
    assert database.group(2) in (None, role.group(1))


# --------------------------------------------------------------------------------------------------
# closed by default (issue 17, docs/security.md)
# --------------------------------------------------------------------------------------------------
PASSWORD_VARS = {"POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "REDIS_PASSWORD"}
# ${NAME...} references that compose interpolates ($${NAME} is the container's own shell variable).
_INTERPOLATED = re.compile(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)(?=[:}?-])")
_REQUIRED = re.compile(r"<required:[A-Z0-9_]+>")
SECRET_VARS = {"AIRFLOW_FERNET_KEY", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_JWT_SECRET"}


def _published(service: dict) -> list[str]:
    return [interpolate(p if not isinstance(p, dict) else f"{p.get('host_ip', '0.0.0.0')}:{p.get('published')}:"
                        f"{p.get('target')}") for p in service.get("ports") or []]


def test_only_airflow_is_published_and_on_the_loopback_by_default(services):
    for name, service in services.items():
        if name != "airflow-apiserver":
            assert not service.get("ports"), f"{name} is published on the host: {service.get('ports')}"
    (mapping,) = _published(services["airflow-apiserver"])
    host, port, target = mapping.split(":")
    assert (host, port, target) == ("127.0.0.1", "8080", "8080"), mapping
    raw = services["airflow-apiserver"]["ports"][0]
    assert "${AIRFLOW_BIND_ADDRESS:-127.0.0.1}" in raw, "the bind address must be configurable"


def test_every_password_and_secret_comes_from_the_environment_without_default(compose_text, services):
    required = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+):\?", compose_text))
    assert PASSWORD_VARS | SECRET_VARS <= required, f"not required with :? : {(PASSWORD_VARS | SECRET_VARS) - required}"
    defaulted = set(re.findall(r"\$\{([A-Z0-9_]+):?-", compose_text))
    assert not (PASSWORD_VARS | SECRET_VARS) & defaulted, "a password with a default is a published password"
    for name, service in services.items():
        for key, value in env_of(service).items():
            for url in re.findall(r"[a-z+]+://\S+", interpolate(value)):
                password = urlsplit(url).password
                if password is not None:
                    assert _REQUIRED.fullmatch(password), f"{name}: {key} has a literal password"
            if key.endswith(("PASSWORD", "_SECRET", "SECRET_KEY", "FERNET_KEY")) or key == "REDISCLI_AUTH":
                assert _REQUIRED.fullmatch(interpolate(value)), f"{name}: {key}={value!r} is a literal"
    assert not re.search(r"://\w+:(airflow|mlflow|admin|password)@", compose_text), "a literal password in a URL"


def test_redis_requires_its_password(services):
    redis = services["redis"]
    command = " ".join(argv_of(redis))
    assert "--requirepass" in command and "${REDISCLI_AUTH}" in command.replace("$$", "$"), command
    assert interpolate(env_of(redis)["REDISCLI_AUTH"]) == "<required:REDIS_PASSWORD>"
    for name in AIRFLOW_SERVICES:
        broker = urlsplit(interpolate(env_of(services[name])["AIRFLOW__CELERY__BROKER_URL"]))
        assert broker.password == "<required:REDIS_PASSWORD>", f"{name}: broker without password"


def test_every_service_has_a_memory_limit(services):
    for name, service in services.items():
        limit = interpolate(((service.get("deploy") or {}).get("resources") or {}).get("limits", {}).get("memory", ""))
        assert re.fullmatch(r"\d+[kmg]", limit), f"{name}: no memory limit (deploy.resources.limits.memory)"
    worker = interpolate(services["airflow-worker"]["deploy"]["resources"]["limits"]["memory"])
    assert worker.endswith("g") and int(worker[:-1]) >= 4, "workers train models: give them room"


def test_env_example_documents_every_variable_and_holds_no_secret(compose_text):
    example = (REPO / ".env.example").read_text()
    entries = dict(re.findall(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", example, re.M))
    used = set(_INTERPOLATED.findall(compose_text))
    assert used - set(entries) == set(), f"variables of docker-compose.yaml missing from .env.example: {used - set(entries)}"
    for name in PASSWORD_VARS | SECRET_VARS:
        assert re.search(rf"^{name}=$", example, re.M), f"{name} must be listed, uncommented and empty"
    assert all(value == "" or not value.strip() or name not in PASSWORD_VARS | SECRET_VARS
               for name, value in entries.items())


def test_env_file_never_reaches_git_or_the_image():
    for ignore in (".gitignore", ".dockerignore"):
        lines = {line.strip() for line in (REPO / ignore).read_text().splitlines()}
        assert ".env" in lines, f".env is not in {ignore}"


# --------------------------------------------------------------------------------------------------
# the embedded demo listens on the loopback only
# --------------------------------------------------------------------------------------------------
LOOPBACK_VARS = ("AIRFLOW__API__HOST", "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST")


def test_env_sh_binds_the_embedded_servers_to_the_loopback():
    import subprocess

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HOMEWORTH_"))}
    script = f"source {shlex.quote(str(REPO / 'env.sh'))} >/dev/null 2>&1; " + "; ".join(
        f'echo "{name}=${{{name}}}"' for name in (*LOOPBACK_VARS, "AIRFLOW__API__BASE_URL"))
    out = subprocess.run(["bash", "-c", script], env=clean, capture_output=True, text=True, check=True).stdout
    values = dict(line.split("=", 1) for line in out.splitlines())
    assert all(values[name] == "127.0.0.1" for name in LOOPBACK_VARS), values
    assert values["AIRFLOW__API__BASE_URL"].startswith("http://127.0.0.1:")
    # An address exported before sourcing is kept (opening it up is a deliberate choice).
    out = subprocess.run(["bash", "-c", script], env={**clean, "AIRFLOW__API__HOST": "0.0.0.0"},
                         capture_output=True, text=True, check=True).stdout
    assert "AIRFLOW__API__HOST=0.0.0.0" in out.splitlines()


def test_local_airflow_starts_its_servers_on_the_loopback(tmp_path):
    from tools.airflow_local import LocalAirflow

    af = LocalAirflow({"PATH": "/usr/bin"}, tmp_path, "http://127.0.0.1:8080")
    assert all(af.env[name] == "127.0.0.1" for name in LOOPBACK_VARS), af.env
    af = LocalAirflow({"AIRFLOW__API__HOST": "::1"}, tmp_path, "http://[::1]:8080")
    assert af.env["AIRFLOW__API__HOST"] == "::1"
