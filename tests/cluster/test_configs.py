"""The packaged cluster configs parse as YAML and name what `ray up` and KubeRay need."""

from pathlib import Path

import yaml

import mpsearch.cluster

CONFIGS = Path(mpsearch.cluster.__file__).parent / "configs"


def test_ray_up_config():
    config = yaml.safe_load((CONFIGS / "ray-cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in config
    assert config["head_node_type"] in config["available_node_types"]
    gpu = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu and gpu[0]["min_workers"] >= 1
    setup = " ".join(config["setup_commands"])
    assert "mpsearch" in setup and "MPSEARCH_DB" in setup and "torch==2.13.0" in setup


def test_kuberay_rayjob():
    job = yaml.safe_load((CONFIGS / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("mpsearch run ")
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert any(e["name"] == "MPSEARCH_DB" and "secretKeyRef" in e["valueFrom"]
               for e in head["env"])
    workers = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"]
