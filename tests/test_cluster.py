"""Trial and retrain resources come from the cluster's nodes, not the driver (orchestrator/cluster.py)."""
import pytest

from orchestrator.runtime.cluster import NodeShape, check_artifact_root, retrain_resources, trial_resources
from orchestrator.runtime.errors import UsageError
from storage.stores import StorageConfig

CPU_NODE = NodeShape("cpu-a", "10.0.0.1", 1, 0)
GPU_NODE = NodeShape("gpu-a", "10.0.0.2", 8, 1)
HEAD = NodeShape("head", "10.0.0.9", 0, 0)  # KubeRay's head with num-cpus 0


def test_two_one_cpu_nodes_one_trial_at_a_time_asks_what_a_node_has():
    """A hang once seen here: --concurrency 1 on 1-CPU nodes asked for 2 CPUs (the driver's count) and waited."""
    assert trial_resources([CPU_NODE, NodeShape("cpu-b", "10.0.0.3", 1, 0)], concurrency=1) == {"cpu": 1, "gpu": 0}
    assert trial_resources([NodeShape("big", "x", 16, 0)], concurrency=4) == {"cpu": 4, "gpu": 0}


def test_a_cpu_driver_asks_for_the_workers_gpus():
    assert trial_resources([HEAD, GPU_NODE], concurrency=2) == {"cpu": 8, "gpu": 1}
    assert retrain_resources([HEAD, GPU_NODE, NodeShape("gpu-b", "x", 4, 1)], workers=2) == (True, None, 4)


def test_a_request_no_node_meets_is_one_line_naming_what_was_asked_and_offered():
    with pytest.raises(UsageError) as refused:
        trial_resources([HEAD], concurrency=1)
    message = str(refused.value)
    assert "asks {'CPU': 1}" in message and "head (10.0.0.9): 0 CPU" in message and "\n" not in message
    with pytest.raises(UsageError, match=r"retraining with 4 workers asks \{'CPU': 1\}"):
        retrain_resources([CPU_NODE, NodeShape("cpu-b", "x", 1, 0)], workers=4)
    with pytest.raises(UsageError, match="retraining with 3 workers asks"):
        retrain_resources([GPU_NODE, HEAD], workers=3)
    assert retrain_resources([NodeShape("a", "x", 2, 0)], workers=2) == (False, {"CPU": 1}, 1)


def test_a_local_artifact_root_is_refused_on_a_multi_node_cluster():
    check_artifact_root([CPU_NODE], StorageConfig("/tmp/artifacts"))  # one node: its disk is everyone's
    check_artifact_root([CPU_NODE, GPU_NODE], StorageConfig("s3://bucket/acla"))
    with pytest.raises(UsageError, match="has 2 nodes.*--artifact-root s3://"):
        check_artifact_root([CPU_NODE, GPU_NODE], StorageConfig("/tmp/artifacts"))
