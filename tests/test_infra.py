"""Static checks of infra/: no cluster, no Docker, only parsing and schemas (a few seconds).

- KubeRay manifests against the CRDs in ../shared/fixtures/kuberay (the openAPIV3Schema of `ray.io/v1`),
  made strict first: the API server prunes unknown fields silently, so a typo such as `minReplica` would
  be applied and ignored; here it fails.
- What KubeRay's operator checks at reconcile time and a schema cannot (validation.go): name lengths,
  rayVersion with token auth, resources given twice, restartPolicy with autoscaler v2, RayJob modes.
- The platform's own rules: one image name (with pyproject's version), token auth, MLflow in-cluster URI,
  /dev/shm sized for the object store, ClusterIP only, no literal secret anywhere, and the embedded RayJob
  clusters identical to raycluster.yaml.
- docker-compose.yaml and the `ray up` cluster YAML (against Ray's own ray-schema.json).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import shlex
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
MLFLOW = INFRA / "mlflow"
CRD_DIR = ROOT.parent / "shared" / "fixtures" / "kuberay"

IMAGE_REPO = "ghcr.io/srtn-platform/srtn"
MLFLOW_URI = "http://mlflow.srtn.svc.cluster.local:5000"
NAMESPACE = "srtn"
RAY_AUTH_SECRET = "ray-auth-token"
IMAGE_ROOT = "/opt/srtn"  # where the Dockerfile puts configs/ and jobs/

# KubeRay's limits (ray-operator/controllers/ray/utils/constant.go).
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}

# Names (env variables, mapping keys) whose value must never be written out.
SECRETISH = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)
# ...except keys that name or point at a secret instead of holding one.
SECRET_POINTER = re.compile(r"(Name|Ref|_name|_ref)$")
PLACEHOLDER = re.compile(r"^<[^<>]+>$")


# --------------------------------------------------------------------------- loading


def _load_all(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.load_all(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


def _manifests(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, doc) for p in sorted(folder.glob("*.yaml")) for doc in _load_all(p)]


KUBERAY_DOCS = _manifests(KUBERAY)
MLFLOW_K8S_DOCS = _manifests(MLFLOW / "k8s")
ALL_K8S_DOCS = KUBERAY_DOCS + MLFLOW_K8S_DOCS
RAY_DOCS = [(p, d) for p, d in KUBERAY_DOCS if d.get("apiVersion") == "ray.io/v1"]


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


@functools.cache
def _pyproject_version() -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert m, "no version in pyproject.toml"
    return m.group(1)


def _image(variant: str) -> str:
    return f"{IMAGE_REPO}:{_pyproject_version()}-{variant}"


# --------------------------------------------------------------------------- CRD schemas


def _strict(schema: Any) -> Any:
    """Close every object schema that lists `properties` (unless it preserves unknown fields).

    Kubernetes prunes fields a structural schema does not know, so a misspelt key is dropped without an
    error; JSON Schema's `additionalProperties: false` turns that into a validation error with its path.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd(kind: str) -> dict[str, Any]:
    files = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
    path = CRD_DIR / files[kind]
    if not path.is_file():
        pytest.fail(f"KubeRay CRD not found at {path} (expected ../shared/fixtures/kuberay)")
    (crd,) = _load_all(path)
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


@functools.cache
def _validator(kind: str) -> Any:
    schema = _strict(_crd(kind))
    # No format checker: int32/int64 and int-or-string are Kubernetes formats JSON Schema does not know.
    return jsonschema.Draft7Validator(schema)


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    errors = sorted(_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


def _list_map_errors(schema: dict[str, Any], data: Any, path: str = "") -> Iterator[str]:
    """Duplicate keys in `x-kubernetes-list-type: map|set` lists (two `env` entries with one name, ...)."""
    if isinstance(data, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in data.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub:
                yield from _list_map_errors(sub, value, f"{path}.{key}" if path else key)
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        kind = schema.get("x-kubernetes-list-type")
        if kind == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen = [tuple(item.get(k) for k in keys) for item in data if isinstance(item, dict)]
            dupes = {k for k in seen if seen.count(k) > 1}
            if dupes:
                yield f"{path}: duplicate {keys} {sorted(dupes)}"
        elif kind == "set" and len({json.dumps(x, sort_keys=True) for x in data}) != len(data):
            yield f"{path}: duplicate items in a set"
        for i, item in enumerate(data):
            yield from _list_map_errors(schema["items"], item, f"{path}[{i}]")


# --------------------------------------------------------------------------- Ray cluster helpers


def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(label, RayClusterSpec) for the RayCluster and the cluster embedded in every RayJob."""
    out = []
    for path, doc in RAY_DOCS:
        if doc["kind"] == "RayCluster":
            out.append((_id((path, doc)), doc["spec"]))
        elif doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
            out.append((_id((path, doc)), doc["spec"]["rayClusterSpec"]))
    return out


def _groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def _quantity(q: str | int | float) -> float:
    """A Kubernetes quantity in bytes (memory) or units (cpu): 8Gi, 512Mi, 500m, "2"."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    assert m, f"bad quantity {q!r}"
    factors = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    factors |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(m.group(1)) * factors[m.group(2)]


CLUSTERS = _cluster_specs()
JOBS = [(p, d) for p, d in RAY_DOCS if d["kind"] == "RayJob"]


def test_fixture_and_manifests_present():
    kinds = sorted(d["kind"] for _, d in RAY_DOCS)
    assert kinds == ["RayCluster", "RayJob", "RayJob", "RayJob"], kinds
    assert {p.name for p, _ in JOBS} == {"rayjob-tile.yaml", "rayjob-train.yaml", "rayjob-tune.yaml"}
    assert _crd("RayCluster")["properties"]["spec"]["properties"]["authOptions"], "CRD without authOptions"


# --------------------------------------------------------------------------- schema validation


@pytest.mark.parametrize("item", RAY_DOCS, ids=_id)
def test_ray_manifest_matches_crd_schema(item):
    _, doc = item
    assert doc["kind"] in {"RayCluster", "RayJob"}, f"no CRD in the fixture for kind {doc['kind']}"
    errors = _schema_errors(doc)
    assert not errors, "\n".join(errors)
    dupes = list(_list_map_errors(_crd(doc["kind"]), doc))
    assert not dupes, "\n".join(dupes)


@pytest.mark.parametrize(
    ("where", "typo"),
    [
        (("spec",), "enableInTreeAutoscalng"),
        (("spec", "workerGroupSpecs", 0), "minReplica"),
        (("spec", "headGroupSpec", "template", "spec", "containers", 0), "volumeMount"),
    ],
)
def test_strict_schema_catches_typos_the_crd_would_prune(where, typo):
    (_, cluster) = next((p, d) for p, d in RAY_DOCS if d["kind"] == "RayCluster")
    doc = copy.deepcopy(cluster)
    node = doc
    for key in where:
        node = node[key]
    node[typo] = 1
    assert jsonschema.Draft7Validator(_crd("RayCluster")).is_valid(doc), "the raw CRD accepts unknown keys"
    assert any(typo in e for e in _schema_errors(doc)), f"{typo} was not reported"


def test_duplicate_env_names_are_reported():
    (_, cluster) = next((p, d) for p, d in RAY_DOCS if d["kind"] == "RayCluster")
    doc = copy.deepcopy(cluster)
    env = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    env.append(dict(env[0]))
    errors = list(_list_map_errors(_crd("RayCluster"), doc)) + _schema_errors(doc)
    assert errors, "a duplicated env entry went unnoticed"


# --------------------------------------------------------------------------- KubeRay's own rules


@pytest.mark.parametrize("item", RAY_DOCS, ids=_id)
def test_kuberay_operator_rules(item):
    _, doc = item
    name = doc["metadata"]["name"]
    limit = MAX_RAYCLUSTER_NAME if doc["kind"] == "RayCluster" else MAX_RAYJOB_NAME
    assert DNS1035.match(name) and len(name) <= limit, f"{name}: not a DNS-1035 label of <= {limit} chars"
    assert doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize(("label", "spec"), CLUSTERS, ids=[c[0] for c in CLUSTERS])
def test_cluster_spec_rules(label, spec):
    # authOptions.mode=token needs rayVersion >= 2.52.0 (validation.go).
    version = tuple(int(x) for x in spec["rayVersion"].split("."))
    assert version >= (2, 52, 0)
    autoscaler_v2 = spec.get("enableInTreeAutoscaling") and spec.get("autoscalerOptions", {}).get("version") == "v2"
    for group_name, group in _groups(spec):
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), f"{group_name}: rayStartParams must be strings"
        assert "labels" not in params, f"{group_name}: use the group's labels field"
        given_twice = any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources"))
        assert not (given_twice and group.get("resources")), f"{group_name}: resources in two places"
        pod = group["template"]["spec"]
        if autoscaler_v2:
            assert pod.get("restartPolicy", "Never") == "Never", f"{group_name}: autoscaler v2 needs Never"
        assert pod["containers"], f"{group_name}: no container"


@pytest.mark.parametrize("item", JOBS, ids=_id)
def test_rayjob_rules(item):
    _, doc = item
    spec = doc["spec"]
    assert ("clusterSelector" in spec) != ("rayClusterSpec" in spec), "exactly one of clusterSelector / rayClusterSpec"
    assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
    assert spec.get("activeDeadlineSeconds", 1) > 0
    assert spec.get("ttlSecondsAfterFinished", 0) >= 0
    assert spec.get("backoffLimit", 0) >= 0
    assert not spec.get("suspend"), "a job checked into git should start when created"
    if "rayClusterSpec" in spec:
        # Our choice (see rayjob-tile.yaml): a cluster per job, released when the job ends.
        assert spec["shutdownAfterJobFinishes"] is True
        assert "ttlSecondsAfterFinished" in spec and "activeDeadlineSeconds" in spec
    else:
        assert spec["clusterSelector"].get("ray.io/cluster")
        assert spec.get("submissionMode") != "SidecarMode", "ClusterSelector is not supported in SidecarMode"


# --------------------------------------------------------------------------- the platform's rules


@pytest.mark.parametrize(("label", "spec"), CLUSTERS, ids=[c[0] for c in CLUSTERS])
def test_token_auth_on(label, spec):
    assert spec["authOptions"] == {"mode": "token", "secretName": RAY_AUTH_SECRET}


@pytest.mark.parametrize(("label", "spec"), CLUSTERS, ids=[c[0] for c in CLUSTERS])
def test_autoscaling_head_and_worker_groups(label, spec):
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "the head must not run tasks"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    workers = spec["workerGroupSpecs"]
    assert workers
    for group in workers:
        assert group["minReplicas"] == 0, f"{group['groupName']}: scale to zero when idle"
        assert group["maxReplicas"] >= 1
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


def _ray_containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for group_name, group in _groups(spec):
        pod = group["template"]["spec"]
        yield group_name, pod, pod["containers"][0]


@pytest.mark.parametrize(("label", "spec"), CLUSTERS, ids=[c[0] for c in CLUSTERS])
def test_images_env_and_resources(label, spec):
    for group_name, pod, c in _ray_containers(spec):
        gpus = c["resources"]["limits"].get("nvidia.com/gpu")
        assert c["image"] == _image("cuda" if gpus else "cpu"), f"{group_name}: {c['image']}"
        # Ray sizes itself from the limits; requests == limits keeps the pod Guaranteed.
        assert c["resources"]["requests"] == c["resources"]["limits"], group_name
        if gpus:
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), group_name
        env = {e["name"]: e for e in c["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"] == MLFLOW_URI
        for name in (
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ):
            assert "secretKeyRef" in env[name]["valueFrom"], f"{group_name}: {name} must come from a Secret"
        # KubeRay injects the token from authOptions; a second, hand-written one could disagree.
        assert "RAY_AUTH_TOKEN" not in env and "RAY_AUTH_MODE" not in env
        ctx = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        assert ctx.get("runAsNonRoot") is True and ctx.get("allowPrivilegeEscalation") is False, group_name


@pytest.mark.parametrize(("label", "spec"), CLUSTERS, ids=[c[0] for c in CLUSTERS])
def test_shared_memory_sized_for_object_store(label, spec):
    for group_name, pod, c in _ray_containers(spec):
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{group_name}: no /dev/shm volume"
        (vol,) = [v for v in pod["volumes"] if v["name"] == mounts["/dev/shm"]]
        assert vol["emptyDir"]["medium"] == "Memory"
        shm = _quantity(vol["emptyDir"]["sizeLimit"])
        memory = _quantity(c["resources"]["limits"]["memory"])
        # Ray's object store takes 30% of the container's memory by default and must fit in /dev/shm,
        # which is memory-backed and counted against the same limit.
        assert 0.3 * memory <= shm <= 0.5 * memory, f"{group_name}: /dev/shm {shm / 2**30:.1f}Gi"


def test_rayjob_clusters_match_the_raycluster():
    """The embedded clusters are copies of raycluster.yaml's groups: one place to read, no drift."""
    reference = next(d["spec"] for _, d in RAY_DOCS if d["kind"] == "RayCluster")
    ref_groups = dict(_groups(reference))
    for path, job in JOBS:
        spec = job["spec"]["rayClusterSpec"]
        for key in ("rayVersion", "authOptions", "enableInTreeAutoscaling", "autoscalerOptions"):
            assert spec[key] == reference[key], f"{path.name}: {key} differs"
        for name, group in _groups(spec):
            assert name in ref_groups, f"{path.name}: group {name} is not in raycluster.yaml"
            ref = ref_groups[name]
            for key in ("template", "rayStartParams", "serviceType", "idleTimeoutSeconds", "minReplicas"):
                assert group.get(key) == ref.get(key), f"{path.name}: {name}.{key} differs from raycluster.yaml"


def _entrypoint(job: dict[str, Any]) -> list[str]:
    return shlex.split(job["spec"]["entrypoint"])


@pytest.mark.parametrize("item", JOBS, ids=_id)
def test_rayjob_entrypoint_names_files_in_the_image(item):
    path, doc = item
    argv = _entrypoint(doc)
    assert argv[0] == "python"
    script = argv[1]
    assert script.startswith(f"{IMAGE_ROOT}/jobs/"), "absolute path: the driver's cwd is not the WORKDIR"
    assert (ROOT / Path(script).relative_to(IMAGE_ROOT)).is_file(), f"{script} is not in jobs/"
    config = argv[argv.index("--config") + 1]
    assert config.startswith(f"{IMAGE_ROOT}/configs/")
    assert (ROOT / Path(config).relative_to(IMAGE_ROOT)).is_file(), f"{config} is not in configs/"
    expected = {"rayjob-tile.yaml": "tile.py", "rayjob-train.yaml": "train.py", "rayjob-tune.yaml": "tune.py"}
    assert Path(script).name == expected[path.name]
    # Data lives in object storage on a cluster: every path override points at s3://.
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    paths = [v.split("=", 1)[1] for v in sets if re.search(r"(input|output|shards|storage_path)=", v)]
    assert paths and all(p.startswith("s3://") for p in paths), sets


@pytest.mark.parametrize("item", JOBS, ids=_id)
def test_rayjob_entrypoint_parses_with_the_cli(item):
    """The arguments after the script are what `srtn <command>` accepts (argparse only, no Ray)."""
    from srtn.cli import build_parser

    _, doc = item
    argv = _entrypoint(doc)
    command = {"tile.py": "tile", "train.py": "train", "tune.py": "tune"}[Path(argv[1]).name]
    script = (ROOT / Path(argv[1]).relative_to(IMAGE_ROOT)).read_text()
    assert f'main(["{command}", *sys.argv[1:]])' in script, f"{argv[1]} does not run `srtn {command}`"
    args = build_parser().parse_args([command, *argv[2:]])
    assert args.set and all(re.fullmatch(r"[a-z_][a-z0-9_.]*=\S+", s) for s in args.set), args.set


def _field_exists(model: Any, dotted: str) -> bool:
    """Whether a dotted `--set` key names a field of a pydantic config model (no validation, no torch)."""
    from pydantic import BaseModel

    current: Any = model
    for part in dotted.split("."):
        if current is None:
            return False
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return False
        annotation = fields[part].annotation
        candidates = [annotation, *typing.get_args(annotation)]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None and any(typing.get_origin(c) is dict or c is dict for c in candidates):
            return True  # a free-form mapping (e.g. model.kwargs): any sub-key goes
    return True


@pytest.mark.parametrize("item", JOBS, ids=_id)
def test_rayjob_overrides_name_real_config_keys(item):
    """Each `--set key=...` names a key of the job's config model (a renamed key would fail at run time)."""
    from srtn.cli import COMMANDS

    _, doc = item
    argv = _entrypoint(doc)
    command = {"tile.py": "tile", "train.py": "train", "tune.py": "tune"}[Path(argv[1]).name]
    model = COMMANDS[command].load(COMMANDS[command].config)
    keys = [argv[i + 1].split("=", 1)[0] for i, a in enumerate(argv) if a == "--set"]
    assert keys, "the entrypoint sets no config key"
    unknown = [k for k in keys if not _field_exists(model, k)]
    assert not unknown, f"{model.__name__} has no key(s) {unknown}"


# --------------------------------------------------------------------------- services, secrets


def test_services_are_cluster_ip_and_there_is_no_ingress():
    kinds = [d["kind"] for _, d in ALL_K8S_DOCS]
    assert "Ingress" not in kinds
    services = [(p, d) for p, d in ALL_K8S_DOCS if d["kind"] == "Service"]
    assert services, "expected the mlflow and postgres Services"
    for path, svc in services:
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", _id((path, svc))
        assert not svc["spec"].get("externalIPs")


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) for every mapping entry, recursively."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _env_lists(doc: Any) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    for path, key, value in _walk(doc):
        if key == "env" and isinstance(value, list):
            yield path, value


REFERENCE = re.compile(r"\$\([A-Z0-9_]+\)|\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}")


def _is_reference(value: str) -> bool:
    """A value filled in at run time: $(VAR) (kubelet), ${VAR...} (compose), or an <angle placeholder>."""
    return bool(REFERENCE.fullmatch(value) or PLACEHOLDER.match(value))


def _uri_password_ok(value: str) -> bool:
    """No `scheme://user:password@` with a written-out password (a $(VAR) / ${VAR} one is fine)."""
    masked = REFERENCE.sub("<ref>", value)
    m = re.search(r"://[^/\s:@]+:([^@\s/]+)@", masked)
    return m is None or m.group(1) == "<ref>"


@pytest.mark.parametrize("item", ALL_K8S_DOCS, ids=_id)
def test_no_literal_secret_in_kubernetes_manifests(item):
    path, doc = item
    if doc["kind"] == "Secret":
        assert path.name == "secrets.example.yaml", f"{path.name}: Secrets belong in secrets.example.yaml"
        values = {**doc.get("data", {}), **doc.get("stringData", {})}
        assert values and all(PLACEHOLDER.match(str(v)) for v in values.values()), (
            f"{_id(item)}: example Secrets hold <placeholders> only (not valid base64, so never applied)"
        )
        return
    for where, env in _env_lists(doc):
        for e in env:
            if SECRETISH.search(e["name"]):
                assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), f"{where}: {e['name']}"
            if "value" in e:
                assert _uri_password_ok(str(e["value"])), f"{where}: {e['name']} has a password in a URI"
    for where, key, value in _walk(doc):
        if isinstance(value, str) and SECRETISH.search(str(key)) and not SECRET_POINTER.search(str(key)):
            assert _is_reference(value), f"{where}: literal value for a secret-looking key"


def _all_infra_text() -> Iterator[tuple[Path, str]]:
    for p in sorted(INFRA.rglob("*")):
        if p.is_file() and p.name != ".env":
            yield p, p.read_text(errors="replace")


def test_no_key_material_anywhere_in_infra():
    patterns = {
        "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
        "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        "bearer token": re.compile(r"Bearer\s+[A-Za-z0-9._-]{20,}"),
    }
    scanned = set()
    for path, text in _all_infra_text():
        scanned.add(path.relative_to(INFRA).as_posix())
        for what, rx in patterns.items():
            assert not rx.search(text), f"{path.relative_to(ROOT)}: looks like a {what}"
    expected = {"docker/Dockerfile", "kuberay/raycluster.yaml", "mlflow/docker-compose.yaml", "ray-up/cluster.yaml"}
    assert expected <= scanned, f"not scanned: {sorted(expected - scanned)}"
    assert not (MLFLOW / ".env").exists() or ".env" in (MLFLOW / ".gitignore").read_text()


def _secret_refs(doc: Any) -> Iterator[tuple[str, str, bool]]:
    for _, key, value in _walk(doc):
        if key == "secretKeyRef":
            yield value["name"], value["key"], bool(value.get("optional"))


def test_every_referenced_secret_key_is_documented():
    """secretKeyRef names and keys exist in the example Secrets, so the README commands create them all."""
    defined = {}
    for _, doc in ALL_K8S_DOCS:
        if doc["kind"] == "Secret":
            defined[doc["metadata"]["name"]] = set(doc.get("data", {})) | set(doc.get("stringData", {}))
    refs = [(path, name, key) for path, doc in ALL_K8S_DOCS for name, key, _ in _secret_refs(doc)]
    assert {p.name for p, _, _ in refs} >= {"raycluster.yaml", "mlflow.yaml"}, "expected secretKeyRefs in both"
    for path, name, key in refs:
        assert name in defined and key in defined[name], f"{path.name}: secret {name}/{key} not in an example"
    # The Ray token Secret is referenced through authOptions, not secretKeyRef.
    assert "auth_token" in defined[RAY_AUTH_SECRET]


# --------------------------------------------------------------------------- MLflow on Kubernetes


def _mlflow_deployment() -> dict[str, Any]:
    return next(d for _, d in MLFLOW_K8S_DOCS if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")


def test_mlflow_server_flags_and_reachability():
    pod = _mlflow_deployment()["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    assert args[:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in args and "--app-name=basic-auth" in args
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://")
    assert env["MLFLOW_AUTH_DATABASE_URI"]["value"].startswith("postgresql://")
    # The host:port the Ray pods use must pass MLflow's Host-header check.
    host = MLFLOW_URI.split("://", 1)[1]
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert host in allowed and host.split(":")[0] in allowed and "localhost:*" in allowed
    (svc,) = [d for _, d in MLFLOW_K8S_DOCS if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow"]
    # <service>.<namespace>.svc.cluster.local: the URI the Ray pods use resolves to this Service
    assert host.split(".")[:3] == [svc["metadata"]["name"], svc["metadata"]["namespace"], "svc"], host
    assert svc["spec"]["selector"].items() <= _mlflow_deployment()["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in svc["spec"]["ports"]] == [int(host.rsplit(":", 1)[1])]
    assert c["image"].startswith("ghcr.io/srtn-platform/mlflow:")


@functools.cache
def _core_validator(what: str) -> Any:
    """Strict validators for core objects, borrowed from the CRD: it embeds the full PodTemplateSpec
    (headGroupSpec.template) and Service (headGroupSpec.headService) schemas of Kubernetes."""
    head = _crd("RayCluster")["properties"]["spec"]["properties"]["headGroupSpec"]["properties"]
    schema = {"pod-template": head["template"], "service-spec": head["headService"]["properties"]["spec"]}[what]
    return jsonschema.Draft7Validator(_strict(schema))


@pytest.mark.parametrize(
    "item", [i for i in MLFLOW_K8S_DOCS if i[1]["kind"] in {"Deployment", "StatefulSet", "Service"}], ids=_id
)
def test_mlflow_k8s_pod_templates_and_services_match_kubernetes_schemas(item):
    _, doc = item
    if doc["kind"] == "Service":
        target, validator = doc["spec"], _core_validator("service-spec")
    else:
        target, validator = doc["spec"]["template"], _core_validator("pod-template")
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(target)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("item", MLFLOW_K8S_DOCS, ids=_id)
def test_mlflow_k8s_docs_are_namespaced_and_non_root(item):
    _, doc = item
    if doc["kind"] == "Namespace":
        assert doc["metadata"]["name"] == NAMESPACE
        return
    assert doc["metadata"]["namespace"] == NAMESPACE
    template = doc.get("spec", {}).get("template")
    if template:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod.get("automountServiceAccountToken") is False
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["resources"]["limits"], c["name"]


# --------------------------------------------------------------------------- docker-compose


def _compose() -> dict[str, Any]:
    (doc,) = _load_all(MLFLOW / "docker-compose.yaml")
    return doc


def test_compose_parses_and_binds_to_localhost_only():
    services = _compose()["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    assert services["mlflow"].get("ports") and services["minio"].get("ports"), "mlflow and minio publish a port"
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"
    cmd = services["mlflow"]["command"]
    assert cmd[:2] == ["mlflow", "server"] and "--serve-artifacts" in cmd and "--app-name=basic-auth" in cmd
    assert any(a.startswith("--artifacts-destination=s3://") for a in cmd)
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert services["mlflow"]["image"] == services["create-bucket"]["image"]


def test_compose_secrets_come_from_the_environment():
    services = _compose()["services"]
    text = "\n".join(
        line for line in (MLFLOW / "docker-compose.yaml").read_text().splitlines() if not line.lstrip().startswith("#")
    )
    for name, svc in services.items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use a mapping for environment"
        for key, value in env.items():
            value = str(value)
            if SECRETISH.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), f"{name}.{key}: use ${{VAR:?...}}"
            assert _uri_password_ok(value), f"{name}.{key}: password written into a URI"
            if "${" in value and re.search(r"://[^@]*@", value):
                password = re.search(r"://[^@]*:(\$\{[^}]*\})@", value)
                assert password and ":?" in password.group(1), f"{name}.{key}: the password must be ${{VAR:?...}}"
    # Every variable compose reads is documented in .env.example, secrets there are left empty.
    example = dict(
        line.split("=", 1)
        for line in (MLFLOW / ".env.example").read_text().splitlines()
        if re.match(r"^[A-Z_]+=", line)
    )
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert used, "compose reads no variable: the secret checks above saw nothing"
    assert used <= set(example), f"not in .env.example: {sorted(used - set(example))}"
    secrets = {key: value for key, value in example.items() if SECRETISH.search(key)}
    assert secrets, ".env.example lists no password or secret"
    for key, value in secrets.items():
        assert value == "", f".env.example: {key} must be left empty"
    assert ".env" in (MLFLOW / ".gitignore").read_text().split()


# --------------------------------------------------------------------------- ray up


def _ray_up() -> dict[str, Any]:
    (doc,) = _load_all(INFRA / "ray-up" / "cluster.yaml")
    return doc


def test_ray_up_config_matches_rays_schema():
    spec = importlib.util.find_spec("ray")
    if spec is None or spec.origin is None:
        pytest.skip("ray is not installed")
    schema_path = Path(spec.origin).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(_ray_up())
    ]
    assert not errors, "\n".join(errors)


def test_ray_up_images_auth_and_head():
    cfg = _ray_up()
    assert cfg["docker"]["head_image"] == cfg["docker"]["worker_image"] == _image("cpu")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    gpu_types = [t for n, t in types.items() if "gpu" in n]
    assert gpu_types and all(t["docker"]["worker_image"] == _image("cuda") for t in gpu_types)
    assert any("RAY_AUTH_MODE=token" in o for o in cfg["docker"]["run_options"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    assert all(t.get("min_workers", 0) == 0 for n, t in types.items() if n != cfg["head_node_type"])


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_variants_and_versions_agree():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S*)", text, re.MULTILINE))
    assert args["VARIANT"] == "cpu"
    assert "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu AS base-cpu" in text
    assert "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu AS base-cuda" in text
    assert "FROM base-${VARIANT}" in text
    # The Ray version on the nodes is the rayVersion the KubeRay manifests declare.
    assert {spec["rayVersion"] for _, spec in CLUSTERS} == {args["RAY_VERSION"]}
    # The same torch as the Makefile installs for development and CI.
    make = (ROOT / "Makefile").read_text()
    m = re.search(r"TORCH_SPEC \?= torch==(\S+)", make)
    assert m, "no TORCH_SPEC ?= torch==VERSION in the Makefile"
    assert args["TORCH_VERSION"] == m.group(1)
    assert f'org.opencontainers.image.version="{_pyproject_version()}"' in text
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users[-1].split(":")[0] not in {"root", "0"}, "the image must end as a non-root user"
    for folder in ("configs/", "jobs/"):
        assert f"{IMAGE_ROOT}/{folder}" in text


def test_every_infra_file_names_the_same_images():
    version = _pyproject_version()
    found = set()
    for path, text in _all_infra_text():
        for m in re.finditer(rf"{re.escape(IMAGE_REPO)}:(\d[\w.]*-[a-z0-9]+)", text):
            found.add((path.relative_to(ROOT).as_posix(), m.group(1)))
    assert found
    bad = sorted(f for f in found if f[1] not in {f"{version}-cpu", f"{version}-cuda"})
    assert not bad, f"image tags other than {version}-cpu / {version}-cuda: {bad}"
    # The MLflow server image: one tag in the Dockerfile, compose and the Deployment.
    mlflow_tags = {
        m for _, text in _all_infra_text() for m in re.findall(r"ghcr\.io/srtn-platform/mlflow:(\d[\w.]*\w)", text)
    }
    arg = re.search(r"^ARG MLFLOW_VERSION=(\S+)", (MLFLOW / "Dockerfile").read_text(), re.MULTILINE)
    assert arg and mlflow_tags == {arg.group(1)}, mlflow_tags
