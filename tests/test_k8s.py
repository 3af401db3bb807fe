"""The Kubernetes manifests each project gets (deploy/k8s/), checked offline against Kubernetes' own schemas.

kubernetes-validate ships the JSON schemas of every Kubernetes release it supports, so this needs no cluster
and no network. Strict mode refuses unknown fields, which is how a misspelt key (`readinesProbe`) would slip
past `kubectl apply` into a pod that is never probed.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import ANSWER_SETS, package_of

MANIFESTS = ["deployment.yaml", "service.yaml", "hpa.yaml"]
# The oldest release still commonly run and the newest the validator knows.
VERSIONS = ["1.29", kubernetes_validate.utils.latest_version()]

pytestmark = pytest.mark.parametrize("answer_set", list(ANSWER_SETS))


@pytest.fixture
def project(rendered, answer_set) -> Path:
    return rendered(answer_set)


@pytest.fixture
def resources(project) -> dict[str, dict]:
    """Kind -> the one resource of that kind."""
    found = {}
    for name in MANIFESTS:
        for doc in yaml.safe_load_all((project / "deploy" / "k8s" / name).read_text()):
            assert doc["kind"] not in found, f"two {doc['kind']} resources"
            found[doc["kind"]] = doc
    return found


def app_name(project: Path) -> str:
    return package_of(project).replace("_", "-").strip("-")


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(resources, version):
    for kind, doc in resources.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{kind} does not validate against Kubernetes {version}: {path}: {error.message}")
        # SchemaNotFoundError (an apiVersion this Kubernetes does not serve) propagates and fails the test.


def test_the_resources_are_named_after_the_project(resources, project):
    assert set(resources) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    assert {doc["metadata"]["name"] for doc in resources.values()} == {app_name(project)}


def test_the_service_and_autoscaler_point_at_the_deployments_pods(resources):
    deployment, service, hpa = (resources[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler"))
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {port["name"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["apiVersion"] == "autoscaling/v2"


def test_the_pod_is_probed_and_has_resources(resources, project):
    (container,) = resources["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["ports"][0]["containerPort"] == 3000  # BentoML's port in the image
    # CPU requests are what the autoscaler's utilisation target is a share of.
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["image"].startswith(app_name(project) + ":")
    assert f"{package_of(project).upper()}_API_KEY" in {env["name"] for env in container["env"]}


def test_the_pod_drains_before_it_stops(resources):
    """preStop keeps the pod serving while it leaves the Service's endpoints; the grace period then covers
    that sleep plus the longest request (serving.timeout_seconds, 30 s by default) and a margin."""
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert 5 <= pre_stop <= 30
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + 30 + 5


def test_the_api_key_secret_is_required(resources, project):
    """A missing secret must not mean an open API: the pod waits for the secret instead."""
    (container,) = resources["Deployment"]["spec"]["template"]["spec"]["containers"]
    (key,) = [env for env in container["env"] if env["name"] == f"{package_of(project).upper()}_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["name"] == f"{app_name(project)}-api-key"
    assert key["valueFrom"]["secretKeyRef"].get("optional", False) is False


def test_kustomization_lists_every_manifest(project):
    kustomization = yaml.safe_load((project / "deploy" / "k8s" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == MANIFESTS
    assert [image["name"] for image in kustomization["images"]] == [app_name(project)]


def test_the_pod_reads_the_store_from_a_required_secret_and_needs_no_volume(resources, project):
    """Every replica reads the model and alias from the store and writes its request log there: the settings
    and credentials come from one Secret (the flow runs' Jobs read the same), never a volume, and a missing
    Secret keeps the pod from starting instead of logging to a disk no monitor reads."""
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": f"{app_name(project)}-storage"}}]
    assert "volumes" not in pod and "volumeMounts" not in container
