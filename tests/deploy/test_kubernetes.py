"""deploy/kubernetes/: every manifest valid by the Kubernetes schemas (offline, strict),
kustomization.yaml listing them, the server's command line accepted by the real CLI with
the pod's Secret files in place, and what keeps tunnels alive and the pod locked down
agreeing with that command line and across the manifests. No cluster here: nothing is
applied."""

from __future__ import annotations

import copy
import itertools
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from wstun.common.protocol import is_health_path

from .conftest import REPO

KUBERNETES = REPO / "deploy" / "kubernetes"
#: The Kubernetes release whose schemas the manifests are checked against (the oldest
#: one they are meant for; kubernetes-validate ships the schemas).
KUBERNETES_VERSION = "1.30.0"
#: An example to copy, never applied: kubectl apply -k would overwrite the real Secrets.
EXAMPLES = {"secret.example.yaml"}
SERVER = Path(sys.executable).parent / "wstun-server"
TIMEOUT = 60.0

Manifest = dict[str, Any]


def manifest_files() -> list[str]:
    return sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(name: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[Manifest]]:
    """File name -> its YAML documents."""
    return {name: documents(name) for name in manifest_files()}


def applied(manifests: dict[str, list[Manifest]]) -> list[Manifest]:
    return [doc for name, docs in manifests.items() if name not in EXAMPLES for doc in docs]


def one(manifests: dict[str, list[Manifest]], kind: str) -> Manifest:
    (found,) = [doc for doc in applied(manifests) if doc["kind"] == kind]
    return found


@pytest.fixture(scope="module")
def deployment(manifests: dict[str, list[Manifest]]) -> Manifest:
    return one(manifests, "Deployment")


def pod_spec(deployment: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def server_container(deployment: Manifest) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(deployment)["containers"]
    (container,) = [c for c in containers if c["command"][0] == "wstun-server"]
    return container


def server_argv(deployment: Manifest) -> list[str]:
    container = server_container(deployment)
    return [str(arg) for arg in container["command"] + container.get("args", [])]


def options(argv: list[str]) -> dict[str, list[str]]:
    """--name value pairs (every server option in the manifest takes a value)."""
    pairs = argv[1:]
    assert len(pairs) % 2 == 0, pairs
    found: dict[str, list[str]] = {}
    for name, value in zip(pairs[::2], pairs[1::2], strict=True):
        assert name.startswith("--"), name
        found.setdefault(name, []).append(value)
    return found


def option(argv: list[str], name: str) -> str:
    (value,) = options(argv)[name]
    return value


def listen_port(argv: list[str]) -> int:
    return int(option(argv, "--listen").rsplit(":", 1)[1])


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A port by number or by the container's name for it."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    assert isinstance(number, int)
    return number


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector of matchLabels only (the manifests use no expressions)."""
    assert set(selector) == {"matchLabels"}, selector
    match: dict[str, str] = selector["matchLabels"]
    return bool(match) and match.items() <= labels.items()


def pod_labels(deployment: Manifest) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def seconds(value: str) -> float:
    """--check's durations: "20s"."""
    assert value.endswith("s"), value
    return float(value[:-1])


def quantity(value: str | int) -> float:
    """A Kubernetes quantity of the forms the manifests use: 100m, 1, 64Mi."""
    units = {"m": 1e-3, "": 1.0, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|)", str(value))
    assert match, value
    return float(match.group(1)) * units[match.group(2)]


def secret_files(deployment: Manifest) -> dict[str, tuple[str, str, int]]:
    """The files the pod sees from Secrets: path -> (Secret name, key, file mode)."""
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    files: dict[str, tuple[str, str, int]] = {}
    for mount in server_container(deployment)["volumeMounts"]:
        volume = volumes[mount["name"]]
        # A subPath mount never sees a Secret's update.
        assert "subPath" not in mount, mount
        if "secret" in volume:
            mode = volume["secret"].get("defaultMode", 0o644)
            sources = [{"name": volume["secret"]["secretName"], **volume["secret"]}]
        else:
            mode = volume["projected"].get("defaultMode", 0o644)
            sources = [s["secret"] for s in volume["projected"]["sources"] if "secret" in s]
        for source in sources:
            for item in source["items"]:
                path = f"{mount['mountPath']}/{item['path']}"
                files[path] = (source["name"], item["key"], item.get("mode", mode))
    return files


def check(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SERVER), *argv[1:], "--check"], capture_output=True, text=True, timeout=TIMEOUT
    )


def check_lines(stdout: str) -> dict[str, str]:
    """--check's "name: value" lines."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


def in_temporary_files(
    argv: list[str], deployment: Manifest, directory: Path, contents: dict[str, str]
) -> list[str]:
    """The command line with each Secret file of the pod replaced by a local file of the
    same mode, its content by the option that names it (contents: option -> text)."""
    files = secret_files(deployment)
    mounts = {m["mountPath"] for m in server_container(deployment)["volumeMounts"]}
    local = list(argv)
    for i, arg in enumerate(argv):
        if any(arg.startswith(f"{mount}/") for mount in mounts):
            assert arg in files, f"{arg}: no Secret puts a file there"
            path = directory / Path(arg).name
            path.write_text(contents[argv[i - 1]])
            path.chmod(files[arg][2])
            local[i] = str(path)
    return local


@pytest.fixture(scope="module")
def users_file() -> str:
    """A users file of one user, alice, as ``wstun-server new-token`` prints it."""
    made = subprocess.run(
        [str(SERVER), "new-token", "alice"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert made.returncode == 0, made.stderr
    return made.stdout


@pytest.fixture(scope="module")
def server_check(
    deployment: Manifest, users_file: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """What the server makes of the manifest's command line (defaults included)."""
    contents = {"--token-file": secrets.token_urlsafe(32), "--users-file": users_file}
    argv = in_temporary_files(
        server_argv(deployment), deployment, tmp_path_factory.mktemp("secrets"), contents
    )
    result = check(argv)
    assert result.returncode == 0, result.stderr
    # No "readable by others" warning: the Secret's file mode keeps the token private.
    assert result.stderr == ""
    return check_lines(result.stdout)


@pytest.mark.parametrize("name", manifest_files())
def test_validates_against_the_kubernetes_schemas(
    name: str, manifests: dict[str, list[Manifest]]
) -> None:
    """Every document, strictly (an unknown or misspelt field fails), offline."""
    assert manifests[name], f"{name} is empty"
    for doc in manifests[name]:
        version = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        # The schemas of that very release, not an older one's.
        assert version == KUBERNETES_VERSION.rsplit(".", 1)[0], (name, doc["kind"])


def test_strict_validation_catches_a_misspelt_field(deployment: Manifest) -> None:
    """The check above has teeth: a misspelt probe is an error, not ignored."""
    broken = copy.deepcopy(deployment)
    container = server_container(broken)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest(manifests: dict[str, list[Manifest]]) -> None:
    """resources: every manifest but the examples; one namespace, made by namespace.yaml."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == set(manifests) - EXAMPLES
    assert set(manifests) >= EXAMPLES
    namespace = one(manifests, "Namespace")
    assert kustomization["namespace"] == namespace["metadata"]["name"]
    for doc in applied(manifests):
        assert "namespace" not in doc["metadata"], doc["kind"]
    # The server's pod meets the restricted Pod Security Standard (enforced there).
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_server_command_line_is_accepted_by_the_cli(server_check: dict[str, str]) -> None:
    """wstun-server with the manifest's arguments, the Secret files stood in for, --check."""
    assert server_check["token"] == "set"
    assert server_check["users"] == "1: alice"
    assert server_check["path"] == "/tunnel"
    assert server_check["tls"] == "off"  # ingress-nginx terminates TLS


def test_the_example_secret_cannot_start_a_server(
    deployment: Manifest, manifests: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    """secret.example.yaml: the Secrets and keys the pod reads; its placeholder token is
    refused, so a copy applied as it is can't serve; its users file has no users."""
    examples = {
        doc["metadata"]["name"]: doc["stringData"]
        for doc in manifests["secret.example.yaml"]
        if doc["kind"] == "Secret"
    }
    files = secret_files(deployment)
    assert {(name, key) for name, key, _ in files.values()} == {
        (name, key) for name, data in examples.items() for key in data
    }
    text = {path: examples[name][key] for path, (name, key, _) in files.items()}
    argv = server_argv(deployment)
    contents = {name: text[value] for name, value in itertools.pairwise(argv) if value in text}

    (tmp_path / "example").mkdir()
    refused = check(in_temporary_files(argv, deployment, tmp_path / "example", contents))
    assert refused.returncode != 0
    assert "contains whitespace" in refused.stderr

    contents["--token-file"] = secrets.token_urlsafe(32)
    (tmp_path / "token").mkdir()
    accepted = check(in_temporary_files(argv, deployment, tmp_path / "token", contents))
    assert accepted.returncode == 0, accepted.stderr
    assert check_lines(accepted.stdout)["users"] == "0"


def test_the_users_file_is_reloaded_from_its_secret(
    deployment: Manifest, server_check: dict[str, str]
) -> None:
    """The users file comes from a Secret volume, which changes under the process: the
    server looks at it on its own (nobody sends SIGHUP in a pod). The token is private."""
    argv = server_argv(deployment)
    files = secret_files(deployment)
    assert option(argv, "--users-file") in files
    assert option(argv, "--token-file") in files
    assert seconds(server_check["reload interval"]) > 0
    for path, (_, _, mode) in files.items():
        assert mode & 0o007 == 0, f"{path}: mode {mode:04o} is readable by others"
    for mount in server_container(deployment)["volumeMounts"]:
        assert mount["readOnly"] is True


def test_the_drain_fits_in_the_termination_grace_period(
    deployment: Manifest, server_check: dict[str, str]
) -> None:
    """The kubelet's SIGKILL comes after the server's --grace, never during it."""
    grace = seconds(server_check["grace"])
    assert grace == float(option(server_argv(deployment), "--grace"))
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > grace
    # The server answers 503 while it drains: no preStop sleep to wait through.
    assert "lifecycle" not in server_container(deployment)


def test_probes_hit_healthz_on_the_tunnel_port(deployment: Manifest) -> None:
    """Readiness and liveness: HTTP GET /healthz on the port the server listens on."""
    container = server_container(deployment)
    argv = server_argv(deployment)
    port = listen_port(argv)
    assert port in [p["containerPort"] for p in container["ports"]]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get.get("scheme", "HTTP") == "HTTP", probe
        assert get["path"] == "/healthz", probe
        assert is_health_path(get["path"], option(argv, "--path")), probe
        assert container_port(container, get["port"]) == port, probe
    # A restart cuts every tunnel: liveness gives a slow event loop more rope than readiness.
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert liveness["failureThreshold"] * liveness["periodSeconds"] > (
        readiness["failureThreshold"] * readiness["periodSeconds"]
    )


def test_the_ingress_keeps_idle_tunnels_open(
    deployment: Manifest, manifests: dict[str, list[Manifest]], server_check: dict[str, str]
) -> None:
    """ingress-nginx: timeouts above the ping interval, the server's path, the Service."""
    ingress = one(manifests, "Ingress")
    service = one(manifests, "Service")
    annotations = ingress["metadata"]["annotations"]
    ping = seconds(server_check["ping interval"])
    assert ping > 0
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) > ping, timeout
    # A draining (or full) replica's 503 is tried again on another replica.
    next_upstream = annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"].split()
    assert "http_503" in next_upstream
    assert ingress["spec"]["ingressClassName"] == "nginx"

    argv = server_argv(deployment)
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == option(argv, "--path") + "/"
    assert path["pathType"] == "Prefix"
    # The client's startup check (<path>/healthz) goes through the same Ingress path.
    assert is_health_path(path["path"] + "healthz", option(argv, "--path"))
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    (port,) = [
        p
        for p in service["spec"]["ports"]
        if backend["port"] in ({"number": p["port"]}, {"name": p.get("name")})
    ]
    assert container_port(server_container(deployment), port["targetPort"]) == listen_port(argv)
    assert {tls["secretName"] for tls in ingress["spec"]["tls"]}
    assert all(rule["host"] in tls["hosts"] for tls in ingress["spec"]["tls"])


def test_the_pod_is_locked_down(deployment: Manifest) -> None:
    """Non-root (the Dockerfile's uid), read-only, no privileges, RuntimeDefault seccomp,
    bounded resources, no API token, no Service variables in the WSTUN_* namespace."""
    pod = pod_spec(deployment)
    container = server_container(deployment)
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert context["runAsNonRoot"] is True
    assert isinstance(context["runAsUser"], int)
    assert context["runAsUser"] != 0
    dockerfile = (REPO / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert str(context["runAsUser"]) == user.split(":")[0]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in context
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    resources = container["resources"]
    for resource in ("cpu", "memory"):
        request = quantity(resources["requests"][resource])
        assert 0 < request <= quantity(resources["limits"][resource]), resource


def test_same_image_and_conventions_as_compose(deployment: Manifest) -> None:
    """The image compose builds, on its port and path, with its drain."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["server"]
    compose_argv = [str(arg) for arg in compose["command"]]
    argv = server_argv(deployment)
    assert server_container(deployment)["image"] == compose["image"]
    for name in ("--listen", "--path", "--grace", "--metrics-listen"):
        assert option(argv, name) == option(compose_argv, name), name
    assert f"EXPOSE {listen_port(argv)}" in (REPO / "Dockerfile").read_text()


def test_autoscaler_budget_and_service_address_the_pods(
    deployment: Manifest, manifests: dict[str, list[Manifest]], server_check: dict[str, str]
) -> None:
    """The HPA scales this Deployment on CPU, the PDB and the Service select its pods."""
    labels = pod_labels(deployment)
    assert selects(deployment["spec"]["selector"], labels)
    name = deployment["metadata"]["name"]
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2

    hpa = one(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": name,
    }
    assert hpa["spec"]["minReplicas"] <= replicas <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    # CPU utilization is measured against the request.
    assert "cpu" in server_container(deployment)["resources"]["requests"]

    pdb = one(manifests, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"], labels)
    # One replica at a time, and never the last one.
    assert 0 < pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]

    service = one(manifests, "Service")
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    container = server_container(deployment)
    targets = [container_port(container, p["targetPort"]) for p in service["spec"]["ports"]]
    assert targets == [listen_port(server_argv(deployment))]

    spread = pod_spec(deployment)["topologySpreadConstraints"]
    assert all(selects(constraint["labelSelector"], labels) for constraint in spread)
    # A reverse port lives on one replica: with several, no -R here.
    assert server_check["allow listen"] == "(none: no -R)"


def test_network_policy_fences_the_pods(
    deployment: Manifest, manifests: dict[str, list[Manifest]]
) -> None:
    """In: only from the ingress-nginx namespace, on the tunnel port. Out: DNS and the
    ports of what --allow names."""
    policy = one(manifests, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"], pod_labels(deployment))
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    argv = server_argv(deployment)

    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            assert peer["namespaceSelector"] == {
                "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
            }
            assert "ipBlock" not in peer
        assert [(p["port"], p["protocol"]) for p in rule["ports"]] == [(listen_port(argv), "TCP")]

    egress = policy["spec"]["egress"]
    for rule in egress:
        assert rule["to"], "an egress rule to anywhere"
        assert rule["ports"], "an egress rule on any port"
    admitted = {(p["port"], p["protocol"]) for rule in egress for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP")} <= admitted
    for allowed in options(argv)["--allow"]:
        port = int(allowed.rsplit(":", 1)[1])
        assert (port, "TCP") in admitted, allowed
