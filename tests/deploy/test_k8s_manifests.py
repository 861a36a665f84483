"""deploy/k8s/: every manifest validates against the Kubernetes schemas (kubernetes-validate, offline),
and the pieces fit together (probes on the served port and service, labels, volumes, flags)."""

from __future__ import annotations

from pathlib import Path

import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# gRPC probes are GA from 1.27; also check the newest schemas the package ships.
VERSIONS = ("1.27", kubernetes_validate.latest_version())


def resources() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def by_kind(kind: str) -> dict:
    (doc,) = [d for _, d in resources() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version):
    found = resources()
    assert {d["kind"] for _, d in found} >= {"Deployment", "Service", "Secret", "PersistentVolumeClaim"}
    for name, doc in found:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for {version} at {path}: {exc.message}"
            )


def test_deployment_probes_volumes_and_flags_fit_the_server():
    from seedstream.server.app import SERVICE_NAME
    from seedstream.server.cli import build_parser
    from seedstream.server.rpc.auth import parse_keys

    deployment, service, secret = by_kind("Deployment"), by_kind("Service"), by_kind("Secret")
    claim = by_kind("PersistentVolumeClaim")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    # Every flag is one `seedstream serve` knows, and the ports match them.
    args = build_parser().parse_args(container["args"])
    assert (args.port, int(args.metrics_port), args.host) == (ports["grpc"], ports["metrics"], "0.0.0.0")
    assert args.log_format == "json"

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"]
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert container["startupProbe"]["grpc"]["service"] == SERVICE_NAME
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    # Longer than the server's drain, so in-flight requests finish before SIGKILL.
    assert pod["spec"]["terminationGracePeriodSeconds"] > args.grace_period

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert env["SEEDSTREAM_CACHE"] == mounts["model-cache"]
    assert volumes["api-keys"]["secret"]["secretName"] == secret["metadata"]["name"]
    # The server reads its keys from --api-key-file, a file of the mounted Secret, in a format it accepts.
    assert args.api_key_file.startswith(mounts["api-keys"] + "/")
    keys_file = args.api_key_file.rsplit("/", 1)[1]
    assert parse_keys(secret["stringData"][keys_file], keys_file)

    # Headless, selecting exactly the Deployment's pods, on the gRPC port.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert pod["metadata"]["labels"].items() >= service["spec"]["selector"].items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == ports["grpc"]
