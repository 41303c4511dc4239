"""Run by ``test_training_multinode.py`` in its own process: the training job on a
Ray cluster of several nodes, one of which is lost mid-run.

The nodes are raylets started by ``ray.cluster_utils.Cluster`` on this machine (Ray's
own multi-node test harness): each has its own object store and worker processes,
and a removed node dies as a lost machine does. The head has no CPU, so nothing
runs on it; three worker nodes of 2 CPUs each; every training worker asks for
1.5 CPUs, so no two share a node, and the third node is the spare that Ray Train
restarts onto. Data and checkpoints are on S3 (``AWS_*`` from the environment),
nothing on a shared local path.

Prints one line ``RESULT {json}`` at the end.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import boto3
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depthlib.models import load_released  # noqa: E402
from depthlib.synthetic_job import MakeSyntheticConfig, make_synthetic  # noqa: E402
from depthlib.training.config import PRESETS, TrainConfig  # noqa: E402
from depthlib.training.job import RUN_NAME, run_training  # noqa: E402

WORKER_NODES = 3
AWS = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _training_nodes() -> set[str]:
    return {a.node_id for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])}


def _rows(s3, bucket: str) -> list[dict]:
    body = s3.get_object(Bucket=bucket, Key="run/metrics.jsonl")["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


def main(bucket: str) -> None:
    s3 = boto3.client("s3")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # GCS on a free port
    try:
        nodes = [cluster.add_node(num_cpus=2) for _ in range(WORKER_NODES)]
        ray.init(address=cluster.address, runtime_env={"env_vars": {k: os.environ[k] for k in AWS}})
        ray.data.DataContext.get_current().enable_progress_bars = False
        data = f"s3://{bucket}/synthetic"
        make_synthetic(MakeSyntheticConfig(output=data, count=96, size="126x126", seed=5, scenes_per_task=32),
                       progress=False)
        cfg = TrainConfig(**{**PRESETS["tiny_cpu"], "stage": "teacher", "data": [f"{data}/shards"],
                             "output": f"s3://{bucket}/run", "encoder": "tiny", "workers": 2, "steps": 15,
                             "batch_size": 4, "crop": 126, "checkpoint_every": 5, "log_every": 5,
                             "val_every": 1000, "keep_checkpoints": 1, "cpus_per_worker": 1.5, "data_cpus": 0.5,
                             "max_failures": 2})
        seen: dict = {}

        def lose_a_node() -> None:
            # once Ray Train has registered the step-5 checkpoint (what a restart resumes from)
            key = f"run/{RUN_NAME}/checkpoint_manager_snapshot.json"
            while True:
                try:
                    if "step-00000005" in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode():
                        break
                except s3.exceptions.NoSuchKey:
                    pass
                time.sleep(0.2)
            busy = _training_nodes()
            seen["nodes_before"] = len(busy)
            victim = next(n for n in nodes if n.node_id in busy)
            seen["lost_node"] = victim.node_id
            seen["lost_at"] = time.time()
            cluster.remove_node(victim, allow_graceful=False)

        threading.Thread(target=lose_a_node, daemon=True).start()
        summary = run_training(cfg, log=lambda m: print(m, flush=True), start_retries=3)
        rows = _rows(s3, bucket)
        checkpoint_files = sorted(o["Key"].split(f"run/{RUN_NAME}/", 1)[1] for page in
                                  s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"run/{RUN_NAME}/step-")
                                  for o in page.get("Contents", []))
        # the same command with more steps trains on from the final checkpoint
        longer = run_training(TrainConfig(**{**cfg.to_dict(), "steps": 20}), log=lambda m: print(m, flush=True),
                              start_retries=3)
        final_state = s3.get_object(Bucket=bucket, Key=f"run/{RUN_NAME}/step-00000020/train_state.json")
        print("RESULT " + json.dumps({
            "finished_step": summary.get("finished_step"), "rows": rows,
            "alive_nodes": sum(1 for n in ray.nodes() if n["Alive"]), "checkpoint_files": checkpoint_files,
            "longer_finished_step": longer.get("finished_step"), "longer_rows": _rows(s3, bucket),
            "longer_state": json.loads(final_state["Body"].read()),
            "model_loads": load_released(longer["model"], "tiny") is not None, **seen}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()  # also forgets the address, so later ray.init() calls start their own


if __name__ == "__main__":
    main(sys.argv[1])
