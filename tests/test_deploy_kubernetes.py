"""The Kubernetes manifests in deploy/k8s/: valid against the Kubernetes schemas
(kubernetes-validate, strict), wired together (selectors, ports, secrets,
probes), and carrying environments the services' own settings loaders accept."""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tessera_auth.settings import Settings
from tessera_stack.services import INTROSPECTION_CLIENT_ID
from tessera_verify.env import ConfigError, parse_networks

from .test_deploy_compose import load_service_settings, unknown_settings, with_secret_files

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
NAMESPACE = "tessera"
SECRETS_MOUNT = "/run/secrets/tessera/"
# The client the manifests name, as compose and the local stack do.
INTROSPECTION_CLIENT = INTROSPECTION_CLIENT_ID

Manifest = dict[str, Any]


def _manifests() -> list[tuple[str, Manifest]]:
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                found.append((path.name, document))
    return found


MANIFESTS = _manifests()


def _one(kind: str, name: str) -> Manifest:
    (found,) = [m for _, m in MANIFESTS if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def _deployments() -> list[Manifest]:
    return [m for _, m in MANIFESTS if m["kind"] == "Deployment"]


def _containers(deployment: Manifest, *, init: bool = True) -> Iterator[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    yield from spec["containers"]
    if init:
        yield from spec.get("initContainers", [])


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize(
    "manifest",
    [m for _, m in MANIFESTS],
    ids=[f"{name}:{m['kind']}/{m['metadata']['name']}" for name, m in MANIFESTS],
)
def test_manifest_is_valid_against_the_kubernetes_schema(manifest: Manifest) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    broken = copy.deepcopy(_one("Deployment", "tessera-resource"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_applies_every_manifest_in_one_namespace() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    files = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    for _, manifest in MANIFESTS:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == NAMESPACE
    images = {c["image"].rsplit(":", 1)[0] for d in _deployments() for c in _containers(d)}
    assert images == {entry["name"] for entry in kustomization["images"]}


def test_there_are_auth_and_resource_deployments_services_hpa_pdb_secret_and_configmap() -> None:
    kinds = {(m["kind"], m["metadata"]["name"]) for _, m in MANIFESTS}
    assert {
        ("Deployment", "tessera-auth"),
        ("Deployment", "tessera-resource"),
        ("Service", "tessera-auth"),
        ("Service", "tessera-resource"),
        ("HorizontalPodAutoscaler", "tessera-resource"),
        ("PodDisruptionBudget", "tessera-resource"),
        ("Secret", "tessera-secrets"),
        ("ConfigMap", "tessera-config"),
        ("Ingress", "tessera"),
    } <= kinds


@pytest.mark.parametrize("name", ["tessera-auth", "tessera-resource"])
def test_pods_have_readiness_liveness_and_startup_probes_and_run_unprivileged(name: str) -> None:
    deployment = _one("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    drain = int(_one("ConfigMap", "tessera-config")["data"]["TESSERA_DRAIN_SECONDS"])
    shutdown = int(_one("ConfigMap", "tessera-config")["data"]["TESSERA_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > drain + shutdown
    for container in _containers(deployment):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "memory" in container["resources"]["limits"]
        assert "cpu" in container["resources"]["requests"]  # the HPA needs it
    for container in _containers(deployment, init=False):
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] in ports
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) in ports.values()


def test_services_hpa_and_pdbs_select_the_pods_they_mean() -> None:
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in _deployments()
    }
    for deployment in _deployments():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert _matches(selector, pods[deployment["metadata"]["name"]])
        others = [n for n in pods if n != deployment["metadata"]["name"]]
        assert not any(_matches(selector, pods[other]) for other in others)
    for name in ("tessera-auth", "tessera-resource"):
        service = _one("Service", name)
        assert _matches(service["spec"]["selector"], pods[name])
        (container,) = _one("Deployment", name)["spec"]["template"]["spec"]["containers"]
        port_names = {port["name"] for port in container["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
        budget = _one("PodDisruptionBudget", name)
        assert _matches(budget["spec"]["selector"]["matchLabels"], pods[name])
    hpa = _one("HorizontalPodAutoscaler", "tessera-resource")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "tessera-resource")
    assert hpa["spec"]["minReplicas"] >= 3
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    # The HPA owns the count: an applied replicas field would reset it.
    assert "replicas" not in _one("Deployment", "tessera-resource")["spec"]
    assert _one("PodDisruptionBudget", "tessera-resource")["spec"]["maxUnavailable"] == 1


def test_the_ingress_routes_auth_and_api_to_existing_services() -> None:
    ingress = _one("Ingress", "tessera")
    assert ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    routes = {path["path"]: path["backend"]["service"] for path in rule["http"]["paths"]}
    assert routes["/auth/"]["name"] == routes["/.well-known/"]["name"] == "tessera-auth"
    assert routes["/api/"]["name"] == "tessera-resource"
    for backend in routes.values():
        service = _one("Service", backend["name"])
        assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}
    assert "/metrics" not in routes


# -- configuration ------------------------------------------------------------------


def _environment(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environ.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            environ[variable["name"]] = str(variable["value"])
        else:
            assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            environ[variable["name"]] = pod_name
    return environ


def _program(container: dict[str, Any]) -> str:
    command = container["command"]
    assert command[:2] == ["python", "-m"]
    return str(command[2])


def _mounted_secret_keys(deployment: Manifest) -> set[str]:
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "tessera-secrets"
    for container in _containers(deployment):
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["mountPath"].rstrip("/") + "/" == SECRETS_MOUNT
        assert mount["readOnly"] is True
    return {item["key"] for item in volume["secret"]["items"]}


def test_only_the_auth_pods_mount_the_key_encryption_key() -> None:
    keys = set(_one("Secret", "tessera-secrets")["stringData"])
    auth = _mounted_secret_keys(_one("Deployment", "tessera-auth"))
    resource = _mounted_secret_keys(_one("Deployment", "tessera-resource"))
    assert auth <= keys
    assert resource <= keys
    assert "key_encryption_key" in auth
    assert "key_encryption_key" not in resource
    # The replicas' Redis user cannot write credentials; the auth service's can.
    assert "redis_auth_url" in auth and "redis_auth_url" not in resource
    assert "redis_replica_url" in resource
    # Nor the PostgreSQL role that owns the users (and their password hashes).
    assert "database_url" in auth and "database_url" not in resource
    assert "database_replica_url" in resource
    # Who may introspect is the auth service's business alone.
    assert "introspection_clients" in auth and "introspection_clients" not in resource


def _real_secrets(tmp_path: Path, placeholders: bool) -> dict[str, Path]:
    values = dict(_one("Secret", "tessera-secrets")["stringData"])
    if not placeholders:
        values["session_hash_key"] = secrets.token_hex(32)
        values["key_encryption_key"] = secrets.token_hex(32)
        values["database_url"] = "postgresql://tessera:pw@db.internal:5432/tessera"
        values["introspection_clients"] = f"{INTROSPECTION_CLIENT}:{secrets.token_hex(24)}"
    files = {}
    for key, value in values.items():
        files[key] = tmp_path / key
        files[key].write_text(value)
    return files


@pytest.mark.parametrize("name", ["tessera-auth", "tessera-resource"])
def test_every_container_environment_is_valid_production_settings(
    name: str, tmp_path: Path
) -> None:
    deployment = _one("Deployment", name)
    files = _real_secrets(tmp_path, placeholders=False)
    programs = set()
    for container in _containers(deployment):
        environ = _environment(container, pod_name=f"{name}-5d8f7c9b6-x2k9z")
        assert environ["TESSERA_ENV"] == "production"
        assert not unknown_settings(set(environ))
        environ = with_secret_files(environ, SECRETS_MOUNT, files)
        program = _program(container)
        programs.add(program)
        load_service_settings(program, environ)  # raises ConfigError listing every problem
    assert programs == {name.replace("-", "_")}


def test_the_placeholder_secret_is_refused_so_nothing_starts_with_it(tmp_path: Path) -> None:
    deployment = _one("Deployment", "tessera-auth")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    environ = with_secret_files(
        _environment(container, "pod"), SECRETS_MOUNT, _real_secrets(tmp_path, placeholders=True)
    )
    with pytest.raises(ConfigError) as error:
        load_service_settings(_program(container), environ)
    assert "TESSERA_SESSION_HASH_KEY must be at least 32 bytes" in error.value.problems
    assert "TESSERA_KEY_ENCRYPTION_KEY must be at least 32 bytes" in error.value.problems
    assert any(p.startswith("TESSERA_INTROSPECTION_CLIENTS is not") for p in error.value.problems)


def test_the_auth_service_admits_the_introspection_client_of_the_secret(tmp_path: Path) -> None:
    deployment = _one("Deployment", "tessera-auth")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    files = _real_secrets(tmp_path, placeholders=False)
    environ = with_secret_files(_environment(container, "pod"), SECRETS_MOUNT, files)
    assert environ["TESSERA_INTROSPECTION_CLIENTS_FILE"] == str(files["introspection_clients"])
    settings = load_service_settings("tessera_auth", environ)
    assert isinstance(settings, Settings)
    client_id, secret = files["introspection_clients"].read_text().split(":")
    assert settings.introspection_clients == ((client_id, secret.encode()),)
    assert client_id == INTROSPECTION_CLIENT
    placeholder = _one("Secret", "tessera-secrets")["stringData"]["introspection_clients"]
    assert placeholder.startswith(f"{INTROSPECTION_CLIENT}:")


def test_x_forwarded_for_is_believed_only_from_the_pods_own_loopback_by_default() -> None:
    # A pod CIDR (10.0.0.0/8) lets any pod in the cluster claim any client address:
    # per-address throttling and the audit trail would believe it. The default trusts
    # nothing outside the pod; the operator narrows it to the ingress (README).
    data = _one("ConfigMap", "tessera-config")["data"]
    networks = parse_networks(data["TESSERA_TRUSTED_PROXIES"])
    assert networks
    for network in networks:
        assert network.is_loopback and network.num_addresses == 1, network
    readme = (K8S_DIR / "README.md").read_text()
    assert "## Client addresses: TESSERA_TRUSTED_PROXIES" in readme
