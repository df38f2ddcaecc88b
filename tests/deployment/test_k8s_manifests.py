"""docker/k8s/: generated from the deploy configuration, valid Kubernetes objects, and every
path, port, variable and module they name exists in the code.

No cluster runs here: the objects are checked field by field against the object models of
the ``kubernetes`` Python client (an unknown field fails, as ``kubectl --validate=strict``
would), then built through the client's own deserialiser (required fields, enums).
"""

from __future__ import annotations

import asyncio
import copy
import re
from pathlib import Path
from typing import Any

import pytest

# the [dev] extra pins kubernetes and pyyaml: without them this module is an error, never a
# skip (a skip would pass a run in which no manifest was checked)
import yaml
from kubernetes import client as k8s

from reference_services.deploy import k8s as gen
from reference_services.deploy.config import DeploymentConfig
from reference_services.runtime.health import HealthServer
from reference_services.services import ALL_SERVICES

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "docker" / "k8s"
MODELS = {("v1", "ConfigMap"): "V1ConfigMap", ("v1", "Secret"): "V1Secret",
          ("apps/v1", "Deployment"): "V1Deployment"}  # fmt: skip


def _strict(value: Any, type_name: str, where: str) -> list[str]:
    """Every key of ``value`` is a field of model ``type_name`` (recursively)."""
    if type_name.startswith("List["):
        inner = type_name[5:-1]
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, v in enumerate(value) for p in _strict(v, inner, f"{where}[{i}]")]
    if type_name.startswith("Dict["):
        inner = type_name[5:-1].split(", ", 1)[1]
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [p for k, v in value.items() for p in _strict(v, inner, f"{where}.{k}")]
    model = getattr(k8s, type_name, None)
    if model is None:  # a primitive: str, int, bool, object (int-or-string), datetime
        return []
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping, got {type(value).__name__}"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    problems = []
    for key, sub in value.items():
        if key not in by_json:
            problems.append(f"{where}.{key}: not a field of {type_name}")
            continue
        problems += _strict(sub, model.openapi_types[by_json[key]], f"{where}.{key}")
    return problems


def validate(obj: dict[str, Any]) -> list[str]:
    """Problems of one manifest object (empty when valid)."""
    model = MODELS.get((obj.get("apiVersion"), obj.get("kind")))
    if model is None:
        return [f"unexpected object {obj.get('apiVersion')}/{obj.get('kind')}"]
    name = f"{obj['kind']}/{obj.get('metadata', {}).get('name')}"
    problems = _strict(obj, model, name)
    if not problems:
        try:  # the client's own constructors: required fields and their types
            k8s.ApiClient()._ApiClient__deserialize(copy.deepcopy(obj), model)
        except (ValueError, TypeError) as exc:
            problems.append(f"{name}: {exc}")
    return problems


def _committed() -> dict[str, list[dict[str, Any]]]:
    return {
        p.name: [d for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d]
        for p in sorted(K8S_DIR.glob("*.yaml"))
    }


def _objects(kind: str) -> list[dict[str, Any]]:
    return [o for objs in _committed().values() for o in objs if o["kind"] == kind]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env() -> dict[str, str]:
    (cm,) = _objects("ConfigMap")
    (secret,) = _objects("Secret")
    return {**cm["data"], **secret["stringData"]}


def test_committed_manifests_are_the_generated_ones() -> None:
    """docker/k8s/ is what the generator writes from the deploy configuration now."""
    want = {name: gen.render(objs) for name, objs in gen.manifests().items()}
    have = {p.name: p.read_text(encoding="utf-8") for p in K8S_DIR.glob("*.yaml")}
    assert sorted(have) == sorted(want), "run `python -m reference_services.deploy.k8s docker/k8s`"
    stale = [n for n in want if have[n] != want[n]]
    assert not stale, f"stale manifests {stale}: run python -m reference_services.deploy.k8s"


def test_every_object_is_a_valid_kubernetes_object() -> None:
    objects = [o for objs in _committed().values() for o in objs]
    assert {o["kind"] for o in objects} == {"ConfigMap", "Secret", "Deployment"}
    problems = [p for o in objects for p in validate(o)]
    assert not problems, problems


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (["spec", "template", "spec", "containers", 0, "livenessProbe", "httpGet"], "paht",
         "not a field of V1HTTPGetAction"),
        (["spec", "template", "spec"], "terminationGracePeriod", "not a field of V1PodSpec"),
        (["spec", "template", "spec", "containers", 0], "envfrom", "not a field of V1Container"),
    ],
)  # fmt: skip
def test_the_validator_rejects_an_unknown_field(path: list[Any], value: str, needle: str) -> None:
    """Seen failing: a misspelt field anywhere in a Deployment is reported with its place."""
    broken = copy.deepcopy(_objects("Deployment")[0])
    node: Any = broken
    for step in path:
        node = node[step]
    node[value] = node.get(value, "x")
    problems = validate(broken)
    assert any(needle in p for p in problems), problems


def test_the_validator_rejects_a_missing_required_field() -> None:
    broken = copy.deepcopy(_objects("Deployment")[0])
    del _container(broken)["name"]
    assert any("name" in p for p in validate(broken)), "a container without a name passed"


def test_one_deployment_per_example_service_running_its_module() -> None:
    """Each service's Deployment runs ``reference_services.deploy microservice --service X``
    in the project's image, whose entry point is that module."""
    from harness.images import SERVICE_IMAGE
    from reference_services.deploy.run import main

    deployments = _objects("Deployment")
    named = {_container(d)["args"][-1] for d in deployments}
    assert named == set(ALL_SERVICES), f"deployments for {sorted(named)}"
    dockerfile = (ROOT / "docker" / "service.Dockerfile").read_text(encoding="utf-8")
    entry = re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
    assert entry and "reference_services.deploy" in entry.group(1), "image entry point changed"
    for d in deployments:
        c = _container(d)
        assert c["image"] == SERVICE_IMAGE, f"{c['name']}: image {c['image']} != {SERVICE_IMAGE}"
        with pytest.raises(SystemExit) as ran:  # argparse accepts them: --help after them
            main([*c["args"], "--help"])
        assert ran.value.code == 0, f"{c['name']}: the module refuses {c['args']}"


def test_probes_ports_and_grace_follow_the_configuration() -> None:
    cfg = DeploymentConfig.from_env(_env())
    assert cfg.health_port is not None
    for d in _objects("Deployment"):
        pod = d["spec"]["template"]["spec"]
        c = _container(d)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports.get("health") == cfg.health_port, f"{c['name']}: ports {ports}"
        for probe in ("livenessProbe", "readinessProbe"):
            port = c[probe]["httpGet"]["port"]
            assert ports.get(port, port) == cfg.health_port, f"{c['name']} {probe} port {port}"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        grace = pod["terminationGracePeriodSeconds"]
        assert grace > cfg.shutdown_timeout_s, (
            f"{c['name']}: grace {grace}s not above SHUTDOWN_TIMEOUT_S {cfg.shutdown_timeout_s}"
        )
        requests = c["resources"]["requests"]
        assert {"cpu", "memory"} <= set(requests), f"{c['name']}: requests {requests}"
        refs = [next(iter(e.values()))["name"] for e in c["envFrom"]]
        assert refs == [gen.CONFIG_MAP, gen.SECRET], f"{c['name']}: envFrom {refs}"


def test_the_probe_paths_answer_on_the_health_server() -> None:
    """Both probe paths are served (200 with a healthy component); another path is 404."""

    class Up:
        async def is_ready(self) -> bool:
            return True

        async def is_healthy(self) -> bool:
            return True

    async def status(port: int, path: str) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        writer.close()
        return int(line.split()[1])

    async def run() -> dict[str, int]:
        server = HealthServer([Up()], host="127.0.0.1", port=0)
        await server.start()
        try:
            port = server.port
            paths = {
                c[p]["httpGet"]["path"]
                for d in _objects("Deployment")
                for c in [_container(d)]
                for p in ("livenessProbe", "readinessProbe")
            }
            return {path: await status(port, path) for path in [*sorted(paths), "/nothing"]}
        finally:
            await server.destroy()

    got = asyncio.run(run())
    assert got == {"/healthz": 200, "/readyz": 200, "/nothing": 404}, got


def test_every_variable_is_read_by_the_deployed_process() -> None:
    """Each ConfigMap and Secret key changes what DeploymentConfig reads; the URL variables are
    the chosen adapters' (their descriptors' url_var)."""
    from reference_services.adapters import registry

    env = _env()
    full = DeploymentConfig.from_env(env)
    for var, value in env.items():
        if var in ("EVENT_BRIDGE", "QUEUE_BRIDGE", "STORE"):
            other = "memory"
        elif value.isdigit():
            other = str(int(value) + 1)
        else:
            other = value + "x"
        changed = DeploymentConfig.from_env({**env, var: other})
        assert changed != full, f"{var} is in the manifests but DeploymentConfig ignores it"
    used = {
        registry.resolve(kind, name).url_var
        for kind, name in (
            ("event_bridge", full.event_bridge),
            ("queue_bridge", full.queue_bridge),
            ("state_store", full.store),
        )
    }
    urls = {k for k in env if k.endswith("_URL")}
    assert urls == used, f"URL variables {sorted(urls)} != the adapters' {sorted(used)}"
    (cm,) = _objects("ConfigMap")
    assert not [k for k in cm["data"] if k.endswith("_URL")], "a URL (credentials) in the ConfigMap"
