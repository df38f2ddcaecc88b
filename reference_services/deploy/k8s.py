"""Kubernetes manifests for the microservices pattern, generated from the deploy configuration.

One Deployment per example service (``python -m reference_services.deploy microservice
--service NAME`` in the project's image), configuration from a ConfigMap, broker URLs
(which carry credentials) from a Secret, liveness ``/healthz`` and readiness ``/readyz``
on the health port, ``terminationGracePeriodSeconds`` above the shutdown timeout so a
SIGTERM drains before the kubelet's SIGKILL, and resource requests.

Everything named here comes from the code the deployed process runs: the variables are
the ones :class:`~reference_services.deploy.config.DeploymentConfig` reads, the URL
variables those of the chosen adapters' descriptors, the services those of
:data:`~reference_services.services.ALL_SERVICES`. ``docker/k8s/`` holds the output;
``tests/deploy/test_k8s_manifests.py`` regenerates it and compares.

    python -m reference_services.deploy.k8s docker/k8s     # rewrite the manifests
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reference_services.adapters import registry
from reference_services.deploy.config import DeploymentConfig
from reference_services.runtime.health import HEALTH_PATHS
from reference_services.services import ALL_SERVICES

APP = "purista"
CONFIG_MAP = "purista-config"
SECRET = "purista-secrets"
IMAGE = "purista-harness/service:latest"
GRACE_MARGIN_S = 10


@dataclass(frozen=True)
class K8sPlan:
    """What the manifests deploy: the production row of the seed's configuration table."""

    event_bridge: str = "amqp"
    queue_bridge: str = "redis"
    store: str = "redis"
    prefix: str = "purista"
    health_port: int = 8080
    shutdown_timeout_s: float = 20.0
    services: tuple[str, ...] = tuple(ALL_SERVICES)
    service_config: dict[str, str] = field(
        default_factory=lambda: {"SERVICE_CONFIG_THRESHOLD": "30"}
    )
    cpu_request: str = "50m"
    memory_request: str = "96Mi"
    memory_limit: str = "256Mi"

    def config_env(self) -> dict[str, str]:
        """Non-secret variables (the ConfigMap); every one is read by DeploymentConfig."""
        return {
            "EVENT_BRIDGE": self.event_bridge,
            "QUEUE_BRIDGE": self.queue_bridge,
            "STORE": self.store,
            "PURISTA_PREFIX": self.prefix,
            "HEALTH_HOST": "0.0.0.0",
            "HEALTH_PORT": str(self.health_port),
            "SHUTDOWN_TIMEOUT_S": f"{self.shutdown_timeout_s:g}",
            **self.service_config,
        }

    def url_vars(self) -> list[str]:
        """The URL variables the chosen adapters read (their descriptors' ``url_var``)."""
        kinds = (
            ("event_bridge", self.event_bridge),
            ("queue_bridge", self.queue_bridge),
            ("state_store", self.store),
            ("config_store", self.store),
            ("secret_store", self.store),
        )
        out: list[str] = []
        for kind, name in kinds:
            var = registry.resolve(kind, name).url_var
            if var and var not in out:
                out.append(var)
        return out

    def check(self) -> DeploymentConfig:
        """The configuration the deployed process would read from these variables."""
        env = {**self.config_env(), **{v: f"placeholder://{v.lower()}" for v in self.url_vars()}}
        cfg = DeploymentConfig.from_env(env)
        unknown = [s for s in self.services if s not in ALL_SERVICES]
        if unknown:
            raise ValueError(f"unknown service(s) {unknown}; known: {sorted(ALL_SERVICES)}")
        return cfg


def _labels(service: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/part-of": APP}
    if service is not None:
        labels["app.kubernetes.io/name"] = service
    return labels


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "health"},
        "periodSeconds": period_s,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def deployment(plan: K8sPlan, service: str) -> dict[str, Any]:
    """The Deployment of one example service."""
    cfg = plan.check()
    healthz, readyz = HEALTH_PATHS
    container = {
        "name": service,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": ["microservice", "--service", service],
        "envFrom": [
            {"configMapRef": {"name": CONFIG_MAP}},
            {"secretRef": {"name": SECRET}},
        ],
        "ports": [{"name": "health", "containerPort": cfg.health_port, "protocol": "TCP"}],
        "livenessProbe": _probe(healthz, 10, 3),
        "readinessProbe": _probe(readyz, 5, 2),
        "resources": {
            "requests": {"cpu": plan.cpu_request, "memory": plan.memory_request},
            "limits": {"memory": plan.memory_limit},
        },
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{APP}-{service}", "labels": _labels(service)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _labels(service)},
            "template": {
                "metadata": {"labels": _labels(service)},
                "spec": {
                    "terminationGracePeriodSeconds": int(cfg.shutdown_timeout_s) + GRACE_MARGIN_S,
                    "securityContext": {"runAsUser": 65534, "runAsGroup": 65534},
                    "containers": [container],
                },
            },
        },
    }


def config_map(plan: K8sPlan) -> dict[str, Any]:
    """The ConfigMap every Deployment reads (``envFrom``)."""
    plan.check()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP, "labels": _labels()},
        "data": plan.config_env(),
    }


def secret(plan: K8sPlan) -> dict[str, Any]:
    """The Secret with the broker URLs; the values are placeholders to replace at install."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "labels": _labels()},
        "type": "Opaque",
        "stringData": {
            v: f"REPLACE-ME: the {v.removesuffix('_URL').lower()} URL" for v in plan.url_vars()
        },
    }


def manifests(plan: K8sPlan | None = None) -> dict[str, list[dict[str, Any]]]:
    """File name -> the objects it holds."""
    plan = plan or K8sPlan()
    files = {"config.yaml": [config_map(plan), secret(plan)]}
    for service in plan.services:
        files[f"{service}.yaml"] = [deployment(plan, service)]
    return files


HEADER = "# Generated by `python -m reference_services.deploy.k8s docker/k8s`; do not edit.\n"


def render(objects: list[dict[str, Any]]) -> str:
    """YAML text of ``objects`` (one document each) under the generated-file header."""
    import yaml  # a dev dependency: only generating needs it

    docs = [yaml.safe_dump(o, sort_keys=False, default_flow_style=False) for o in objects]
    return HEADER + "---\n".join(docs)


def write(directory: Path, plan: K8sPlan | None = None) -> list[Path]:
    """Write every manifest file into ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, objects in manifests(plan).items():
        path = directory / name
        path.write_text(render(objects), encoding="utf-8")
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m reference_services.deploy.k8s DIR``: (re)write the manifests."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m reference_services.deploy.k8s DIR", file=sys.stderr)
        return 2
    for path in write(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
