"""infra/ and prefect.yaml: they parse, pass their tools' own validators, and name what exists."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT

INFRA = PROJECT / "infra"
YAMLS = sorted([*INFRA.rglob("*.yaml"), PROJECT / "prefect.yaml"])


def _pyproject_pin(package: str) -> str:
    text = (PROJECT / "pyproject.toml").read_text()
    m = re.search(rf'"{re.escape(package)}(?:\[[^\]]*\])?>=([0-9.]+)', text)
    assert m, package
    return m.group(1)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(PROJECT)))
def test_every_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_ray_cluster_yaml_passes_rays_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["available_node_types"]["gpu_worker"]["max_workers"] <= config["max_workers"]
    assert _pyproject_pin("ray") in config["docker"]["image"] and "py311" in config["docker"]["image"]
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "zero"
    with pytest.raises(Exception, match="zero"):
        validate_config(prepare_config(broken))


def _k8s_docs() -> list[dict]:
    return [d for p in INFRA.rglob("*.yaml") for d in yaml.safe_load_all(p.read_text())
            if isinstance(d, dict) and "apiVersion" in d]


def test_builtin_kubernetes_kinds_validate_offline() -> None:
    import kubernetes_validate

    builtin = [d for d in _k8s_docs() if not d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in builtin} >= {"Deployment", "Service"}
    for doc in builtin:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    bad = copy.deepcopy(next(d for d in builtin if d["kind"] == "Deployment"))
    del bad["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30", strict=True)


def _containers(spec: dict) -> list[dict]:
    return spec["template"]["spec"]["containers"]


def test_kuberay_manifests_have_required_fields_and_consistent_versions() -> None:
    from pipelines.cli import app

    ray_docs = {d["kind"]: d for d in _k8s_docs() if d["apiVersion"].startswith("ray.io/")}
    assert set(ray_docs) == {"RayCluster", "RayJob"}
    ray_version = _pyproject_pin("ray")
    for kind, doc in ray_docs.items():
        spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert doc["metadata"]["name"]
        assert spec["rayVersion"].startswith(ray_version)
        assert _containers(spec["headGroupSpec"]) and "rayStartParams" in spec["headGroupSpec"]
        groups = spec["workerGroupSpecs"]
        assert groups and all(g["groupName"] and "rayStartParams" in g for g in groups)
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for g in groups for c in _containers(g)]
        assert all(gpus), f"{kind}: every worker group asks for a GPU"
    commands = {c.name for c in app.registered_commands} | {c.callback.__name__ for c in app.registered_commands}
    entry = ray_docs["RayJob"]["spec"]["entrypoint"].split()
    assert entry[0] == "metagen" and entry[1] in commands
    scripts = (PROJECT / "pyproject.toml").read_text()
    assert 'metagen = "pipelines.cli:main"' in scripts
    dockerfile = (INFRA / "kuberay" / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray_version}" in dockerfile


def test_prefect_yaml_matches_the_flow_and_params_cron() -> None:
    import importlib

    from components.params import load_params

    cfg = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    cron = load_params(PROJECT / "params.yaml").schedule.cron
    for dep in cfg["deployments"]:
        module_path, func = dep["entrypoint"].split(":")
        assert (PROJECT / module_path).is_file()
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        assert getattr(module, func).name == "retrain"
        assert [s["cron"] for s in dep["schedules"]] == [cron]
    pools = yaml.safe_load((INFRA / "prefect" / "work-pools.yaml").read_text())["pools"]
    assert {p["name"] for p in pools} == {d["work_pool"]["name"] for d in cfg["deployments"]}
    assert {p["type"] for p in pools} == {"process", "kubernetes"}


def test_no_credentials_in_infra() -> None:
    pattern = re.compile(r"(?i)(password|secret[_-]?access[_-]?key|access[_-]?key[_-]?id)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}")
    for path in [*INFRA.rglob("*"), PROJECT / "prefect.yaml"]:
        if path.is_file():
            for line in path.read_text().splitlines():
                if "${" in line or "secretKeyRef" in line or line.strip().startswith("#"):
                    continue
                assert not pattern.search(line), f"{path}: {line}"


def test_servers_in_infra_are_guarded_with_credentials_from_outside() -> None:
    """MLflow runs its basic-auth app and Prefect takes an auth string, both from the environment
    or Kubernetes Secrets: no password is written in the repo."""
    compose = (INFRA / "mlflow" / "docker-compose.yaml").read_text()
    k8s = (INFRA / "mlflow" / "k8s" / "mlflow.yaml").read_text()
    for text in (compose, k8s):
        assert "--app-name basic-auth" in text and "default_permission = NO_PERMISSIONS" in text
        # credential checks cached for a minute (MLflow's default: a PBKDF2 check on every request)
        assert "auth_cache_ttl_seconds = 60" in text
    mlflow_env = yaml.safe_load(compose)["services"]["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${")
    deployment = next(d for d in yaml.safe_load_all(k8s) if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]
    prefect = yaml.safe_load((INFRA / "prefect" / "docker-compose.yaml").read_text())["services"]["prefect"]
    assert prefect["environment"]["PREFECT_SERVER_API_AUTH_STRING"].startswith("${")
    assert all(p.startswith("127.0.0.1:") for p in prefect["ports"])
