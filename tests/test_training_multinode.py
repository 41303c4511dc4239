"""The training job across nodes, one of which is lost mid-run.

``multinode_train.py`` runs in its own process (this session's shared Ray
cluster is single-node): a head and three 2-CPU worker nodes started by
``ray.cluster_utils.Cluster``, training workers of 1.5 CPUs (so each has its own
node), data and checkpoints on the S3 server fixture. Once the step-5
checkpoint is registered, the node of one training worker is removed without
warning; Ray Train (``FailureConfig``) restarts the group on the spare node from
the latest checkpoint and the run ends at its step with each step's row once.
The same command with more steps then trains on from the final checkpoint (the
S3 path of checkpoints and of a longer re-run; every test in
``test_training_job.py`` uses local directories).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_ray import TEST_RAY_ENV
from fixtures_s3 import REGION

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.timeout(900)
def test_a_lost_node_is_replaced_and_training_resumes_from_object_storage(s3_server):
    bucket = s3_server.new_bucket("multinode")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))} | TEST_RAY_ENV
    env.update(AWS_ENDPOINT_URL=s3_server.endpoint_url, AWS_REGION=REGION, AWS_EC2_METADATA_DISABLED="true",
               AWS_ACCESS_KEY_ID=s3_server.access_key_id, AWS_SECRET_ACCESS_KEY=s3_server.secret_access_key,
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(HERE / "multinode_train.py"), bucket], env=env,
                          capture_output=True, text=True, timeout=840)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    result = json.loads(re.search(r"^RESULT (.*)$", proc.stdout, re.M).group(1))

    assert result["nodes_before"] == 2, result  # two workers, two nodes
    assert "lost_node" in result
    assert result["finished_step"] == 15
    rows = result["rows"]
    assert [r["step"] for r in rows] == [5, 10, 15], rows  # every step's row once, across the restart
    assert rows[0]["time"] < result["lost_at"] < rows[-1]["time"]
    # the first group streamed from step 0, the restarted one from a checkpoint
    starts = [int(s) for s in re.findall(r"\[train\] data stream for step (\d+):", out)]
    assert starts[0] == 0 and len(starts) >= 2 and all(s >= 5 for s in starts[1:]), starts
    assert result["alive_nodes"] == 3  # the head and the two worker nodes left
    # checkpoints in object storage: the last one only (--keep-checkpoints 1), with every part of the state
    assert {f.split("/", 1)[0] for f in result["checkpoint_files"]} == {"step-00000015"}
    assert {"model.pt", "optimizer.pt", "scheduler.pt", "rng.pt", "train_state.json", "metrics.jsonl"} <= {
        f.split("/", 1)[1] for f in result["checkpoint_files"]}
    # a longer re-run of the finished run trains on from its final checkpoint, keeping the history
    assert result["longer_finished_step"] == 20
    longer = result["longer_rows"]
    assert [r["step"] for r in longer] == [5, 10, 15, 20]
    assert longer[:3] == rows
    state = result["longer_state"]
    assert state["step"] == 20 and state["data_position"]["next_group"] > 0
    assert result["model_loads"]  # model.pth in the bucket, strictly in the released format
