"""Every file under cluster/ parsed and held to the project's cluster rules.

- Launcher configs (cluster/aws.yaml, cluster/gcp.yaml): dashboard on 127.0.0.1, token
  authentication and ``RAY_TRAIN_ENABLE_STATE_TRACKING=1`` for every ``ray start``, GPU
  worker types from 0 to a maximum, spot workers, an on-demand head, instance identities,
  the project and its stack at pyproject.toml's pins, only SSH from an admin network
  (cluster/aws-security.cfn.yaml, cluster/gcp-setup.sh).
- KubeRay (cluster/kuberay/): token authentication, ClusterIP only, a NetworkPolicy that
  admits the cluster's pods, workload identity, the project image at its version, and a
  RayJob per stage whose entrypoint names an existing ray_jobs/*.py script with flags
  that script's ``--help`` accepts, chained through the same storage paths.
- No access keys or key-holding Secrets anywhere; constraints.txt agrees with pyproject.
- The Grafana dashboard queries exactly the metric names tests/test_monitoring.py reads
  back from Ray's Prometheus endpoint, and docs/cluster.md names every panel.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
DASHBOARD = CLUSTER / "grafana" / "depthlib_dashboard.json"
DOC = ROOT / "docs" / "cluster.md"
IMAGE_ROOT = "/opt/depthlib"  # where cluster/docker/Dockerfile puts the project
YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
TEXT_FILES = sorted(p for p in CLUSTER.rglob("*") if p.is_file() and p.suffix != ".pyc") + [DOC]
LAUNCHER_FILES = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]


# --------------------------------------------------------------------------- helpers


def docs_of(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kube_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAML_FILES if KUBERAY in p.parents for d in docs_of(p)]


def only(kind: str) -> list[dict]:
    return [d for _, d in kube_docs() if d.get("kind") == kind]


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@functools.cache
def pins() -> dict[str, str]:
    """``==`` pins of pyproject's runtime dependencies, by requirement text before the ``==``
    (``ray[default,data,train]`` keeps its extras)."""
    out = {}
    for dep in pyproject()["dependencies"]:
        if "==" in dep:
            name, version = dep.split("==")
            out[name.strip()] = version.strip()
    assert {"torch", "torchvision", "ray[default,data,train]"} <= set(out), out
    return out


def ray_version() -> str:
    return pins()["ray[default,data,train]"]


def python_tag() -> str:
    """``py311`` from ``requires-python = ">=3.11,<3.12"``."""
    m = re.search(r">=\s*3\.(\d+)", pyproject()["requires-python"])
    return f"py3{m.group(1)}"


def launcher(path: Path) -> dict:
    return docs_of(path)[0]


def commands(cfg: dict, key: str) -> list[str]:
    return [str(c) for c in cfg.get(key) or []]


def ray_start_lines(cfg: dict) -> list[str]:
    return [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
            for c in commands(cfg, key) if "ray start" in c]


def pinned_stack_in(text: str) -> dict[str, str]:
    """``name==version`` requirements quoted or bare in a pip command line."""
    return dict(re.findall(r'"?([A-Za-z0-9_.\-]+(?:\[[a-z,]+\])?)==([0-9][^"\s]*)"?', text))


def worker_types(cfg: dict) -> dict[str, dict]:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


def gpus_of(provider: str, node_type: dict) -> int:
    resources = node_type.get("resources") or {}
    if resources.get("GPU"):
        return int(resources["GPU"])
    if provider == "aws":  # Ray fills GPU counts from the instance type; these families have GPUs
        m = re.match(r"(g\d\w*|p\d\w*)\.(\d*x?large|\d+xlarge|metal)", node_type["node_config"]["InstanceType"])
        return 1 if m else 0
    return 0


def is_spot(provider: str, node_type: dict) -> bool:
    nc = node_type["node_config"]
    if provider == "aws":
        return (nc.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"
    scheduling = nc.get("scheduling") or {}
    return scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True


# --------------------------------------------------------------------------- every file


def test_cluster_directory_has_the_expected_configs():
    names = {p.relative_to(CLUSTER).as_posix() for p in YAML_FILES}
    assert {"aws.yaml", "gcp.yaml", "aws-security.cfn.yaml", "kuberay/raycluster.yaml",
            "kuberay/networkpolicy.yaml"} <= names
    jobs = {p.name for p in (KUBERAY / "jobs").glob("*.yaml")}
    assert len(jobs) >= 5, jobs
    assert DASHBOARD.is_file() and (CLUSTER / "docker" / "Dockerfile").is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_every_yaml_file_parses_to_mappings(path):
    docs = docs_of(path)
    assert docs and all(isinstance(d, dict) for d in docs)
    if KUBERAY in path.parents:
        for d in docs:
            assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), (path, d)


_KEY_PATTERNS = [
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r'"type"\s*:\s*"service_account"'), "a GCP service-account key file"),
    (re.compile(r"(?i)\baws_secret_access_key\s*[:=]\s*\S"), "an AWS secret key assignment"),
]
_KEY_NAMES = re.compile(r"AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|GOOGLE_APPLICATION_CREDENTIALS"
                        r"|HMAC|private_key")


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_keys_in_any_file(path):
    text = path.read_text()
    for pattern, what in _KEY_PATTERNS:
        assert not pattern.search(text), f"{path}: {what}"
    if CLUSTER in path.parents:  # configs do not even name key variables: identities only
        assert not _KEY_NAMES.search(text), f"{path}: {_KEY_NAMES.search(text).group(0)}"
    assert "RAY_AUTH_MODE=disabled" not in text and not re.search(r"mode:\s*disabled", text)


def test_no_secrets_with_keys_and_no_secret_references_in_pods():
    """Storage is reached through identities, so no Secret is declared and no pod reads
    one; the only Secret in play is KubeRay's own token Secret, injected by the operator."""
    for path, doc in kube_docs():
        assert doc["kind"] != "Secret", path
        text = json.dumps(doc)
        assert "secretRef" not in text and "secretKeyRef" not in text and "envFrom" not in text, path
        runtime_env = doc.get("spec", {}).get("runtimeEnvYAML")
        assert runtime_env is None or "env_vars" not in runtime_env, path


# --------------------------------------------------------------------------- launcher configs


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_dashboard_and_ports_stay_private(path):
    cfg = launcher(path)
    text = path.read_text()
    heads = [c for c in commands(cfg, "head_start_ray_commands") if "ray start" in c]
    assert len(heads) == 1 and "--head" in heads[0]
    assert re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost)\b", heads[0]), heads[0]
    assert "0.0.0.0" not in text, "a VM config binds nothing to all interfaces"
    assert "--ray-client-server-port" not in text and "--dashboard-port" not in text  # fixed, firewalled ports
    assert cfg["provider"].get("use_internal_ips") is not True or "bastion" in text


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_token_auth_and_train_state_tracking_on_every_node(path):
    cfg = launcher(path)
    starts = ray_start_lines(cfg)
    assert any("--head" in s for s in starts) and any("--address" in s for s in starts)
    for line in starts:
        before_start = line.split("ray start")[0]
        env = dict(re.findall(r"\b([A-Z_]+)=([^\s;]+)", before_start))
        assert env.get("RAY_AUTH_MODE") == "token", line
        assert env.get("RAY_TRAIN_ENABLE_STATE_TRACKING") == "1", line
    # Every node gets the same token, from the launcher's machine, never from the repo.
    mounts = cfg["file_mounts"]
    assert mounts.get("/home/ray/.ray/auth_token") == "~/.ray/auth_token", mounts
    assert cfg["docker"]["image"].startswith("rayproject/")  # user `ray`, home /home/ray


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_worker_types_autoscale_on_spot(path):
    cfg = launcher(path)
    provider = cfg["provider"]["type"]
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "no tasks on the head"
    assert not is_spot(provider, head), "the head (GCS, drivers) is on-demand"
    workers = worker_types(cfg)
    gpu_types = {k: v for k, v in workers.items() if gpus_of(provider, v) > 0}
    assert len(gpu_types) >= 2, f"1-GPU and multi-GPU worker types expected, got {sorted(gpu_types)}"
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, name
        assert 0 < node_type["max_workers"] <= cfg["max_workers"], name
        assert is_spot(provider, node_type), f"{name} is not spot/preemptible"
    assert sum(t["max_workers"] for t in workers.values()) <= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0
    assert cfg["provider"]["cache_stopped_nodes"] is False  # idle spot nodes are deleted, not stopped


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_installs_the_project_at_pyprojects_pins(path):
    cfg = launcher(path)
    version = pyproject()["version"]
    wheel = f"depthlib-{version}-py3-none-any.whl"
    assert cfg["docker"]["image"] == f"rayproject/ray:{ray_version()}-{python_tag()}-gpu"
    mounts = cfg["file_mounts"]
    assert mounts[f"/home/ray/depthlib/{wheel}"] == f"dist/{wheel}"
    assert mounts["/home/ray/depthlib/constraints.txt"] == "cluster/constraints.txt"
    setup = " ".join(commands(cfg, "setup_commands"))
    assert "pip install" in setup and "-c /home/ray/depthlib/constraints.txt" in setup
    assert f"/home/ray/depthlib/{wheel}" in setup
    assert pinned_stack_in(setup) == pins()


def test_aws_identity_and_security_group_come_from_the_cloudformation_stack():
    cfg = launcher(CLUSTER / "aws.yaml")
    cfn = docs_of(CLUSTER / "aws-security.cfn.yaml")[0]
    res = cfn["Resources"]
    sg = next(r["Properties"] for r in res.values() if r["Type"] == "AWS::EC2::SecurityGroup")
    assert cfg["provider"]["security_group"]["GroupName"] == sg["GroupName"]
    for node_type in cfg["available_node_types"].values():
        assert "SecurityGroupIds" not in node_type["node_config"]  # the named group, rules and all
    # SSH from the admin network is the group's only ingress from outside it.
    assert sg["SecurityGroupIngress"] == [{**sg["SecurityGroupIngress"][0], "IpProtocol": "tcp", "FromPort": 22,
                                           "ToPort": 22, "CidrIp": {"Ref": "AdminCidr"}}]
    extra = [r["Properties"] for r in res.values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    assert extra and all(p["SourceSecurityGroupId"] == p["GroupId"] for p in extra)  # the group itself only
    assert "0.0.0.0/0" in json.dumps(cfn["Rules"])  # ... and the stack refuses AdminCidr=0.0.0.0/0
    profiles = {r["Properties"]["InstanceProfileName"] for r in res.values()
                if r["Type"] == "AWS::IAM::InstanceProfile"}
    used = {t["node_config"]["IamInstanceProfile"]["Name"] for t in cfg["available_node_types"].values()}
    assert used == profiles == {"depthlib-ray-head", "depthlib-ray-worker"}
    head = cfg["available_node_types"][cfg["head_node_type"]]["node_config"]
    assert head["IamInstanceProfile"]["Name"] == "depthlib-ray-head"
    # Roles hold bucket and autoscaler rights; no user, no access key resource.
    assert not [r for r in res.values() if r["Type"] in ("AWS::IAM::User", "AWS::IAM::AccessKey")]


def test_gcp_network_identity_and_firewall():
    cfg = launcher(CLUSTER / "gcp.yaml")
    region = cfg["provider"]["region"]
    script = (CLUSTER / "gcp-setup.sh").read_text()
    subprocess.run(["bash", "-n", str(CLUSTER / "gcp-setup.sh")], check=True)
    created_sas = set(re.findall(r"service-accounts create (\S+)", script))
    for name, node_type in cfg["available_node_types"].items():
        nc = node_type["node_config"]
        assert "depthlib-ray" in nc["tags"]["items"], name
        (nic,) = nc["networkInterfaces"]
        assert nic["subnetwork"] == f"regions/{region}/subnetworks/depthlib-ray", name
        has_external = bool(nic.get("accessConfigs"))
        assert has_external == (name == cfg["head_node_type"]), f"{name}: only the head has an external address"
        (sa,) = nc["serviceAccounts"]
        account = sa["email"].split("@")[0]
        assert account in created_sas and sa["email"].endswith(f"@{cfg['provider']['project_id']}.iam.gserviceaccount.com")
    rules = re.findall(r"firewall-rules create (.*?)(?<!\\)\n", script, flags=re.S)
    assert len(rules) == 2
    for rule in rules:
        rule = rule.replace("\\\n", " ")
        assert "--direction=INGRESS" in rule and "--network=depthlib-ray" in rule
        if "--source-ranges" in rule:
            assert '--source-ranges="$ADMIN_CIDR"' in rule and "--rules=tcp:22 " in rule + " ", rule
        else:
            assert "--source-tags=depthlib-ray" in rule and "--target-tags=depthlib-ray" in rule, rule
    assert "--subnet-mode=custom" in script  # no default network and its open rules
    assert '"$ADMIN_CIDR" == "0.0.0.0/0"' in script  # refused


# --------------------------------------------------------------------------- image and lock


def test_dockerfile_builds_the_project_at_pyprojects_pins():
    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray_version())}-{python_tag()}-gpu$", text, re.M)
    assert pinned_stack_in(text) == pins()
    assert f"-c {IMAGE_ROOT}/cluster/constraints.txt" in text
    for part in ("depthlib", "ray_jobs", "pyproject.toml", "cluster/constraints.txt"):
        assert re.search(rf"^COPY .*\b{re.escape(part)}\b.* {IMAGE_ROOT}/", text, re.M), part
    assert f"pip install --no-cache-dir -c {IMAGE_ROOT}/cluster/constraints.txt {IMAGE_ROOT}" in text
    assert re.search(r"^ENV RAY_TRAIN_ENABLE_STATE_TRACKING=1$", text, re.M)
    assert not re.search(r"^(ARG|ENV) .*(KEY|SECRET|TOKEN|PASSWORD)", text, re.M)


def test_constraints_lock_agrees_with_pyproject():
    lines = [ln for ln in (CLUSTER / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    locked = dict(ln.split("==") for ln in lines)
    assert "depthlib" not in locked
    for dep in pyproject()["dependencies"]:
        req = Requirement(dep)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in locked, f"{name} is not locked"
        assert req.specifier.contains(locked[name], prereleases=True), f"{name}=={locked[name]} vs {req.specifier}"
    assert {k.split("[")[0]: v for k, v in pins().items()} == {k: locked[k] for k in ("torch", "torchvision", "ray")}


# --------------------------------------------------------------------------- KubeRay


def ray_cluster() -> dict:
    (rc,) = only("RayCluster")
    return rc


def pod_specs(rc: dict) -> list[tuple[str, dict, dict]]:
    """(group name, group spec, pod spec) for the head and every worker group."""
    spec = rc["spec"]
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, g, g["template"]["spec"]) for name, g in groups]


def test_raycluster_token_auth_state_tracking_and_pinned_image():
    rc = ray_cluster()
    assert rc["spec"]["rayVersion"] == ray_version()
    assert rc["spec"]["authOptions"]["mode"] == "token"
    assert rc["spec"]["enableInTreeAutoscaling"] is True
    images = set()
    for name, _, pod in pod_specs(rc):
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("RAY_AUTH_MODE") == "token", name
            assert env.get("RAY_TRAIN_ENABLE_STATE_TRACKING") == "1", name
            images.add(c["image"])
    (image,) = images
    repository, tag = image.rsplit(":", 1)
    assert repository.endswith("/depthlib") and tag == pyproject()["version"]


def test_raycluster_services_private_and_dashboard_guarded_by_networkpolicy():
    rc = ray_cluster()
    head = rc["spec"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    for kind in ("Service",):
        for svc in only(kind):
            assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
    for _, doc in kube_docs():
        assert not re.search(r"LoadBalancer|NodePort", json.dumps(doc)), doc["metadata"]["name"]
    if head["rayStartParams"].get("dashboard-host") == "0.0.0.0":
        policies = [p for p in only("NetworkPolicy")
                    if p["spec"]["podSelector"].get("matchLabels") == {"ray.io/cluster": rc["metadata"]["name"]}]
        assert policies, "dashboard-host 0.0.0.0 needs a NetworkPolicy over the cluster's pods"


def test_networkpolicy_admits_only_the_clusters_pods():
    rc_name = ray_cluster()["metadata"]["name"]
    (policy,) = only("NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"ray.io/cluster": rc_name}
    assert "Ingress" in spec["policyTypes"]
    own = {"podSelector": {"matchLabels": {"ray.io/cluster": rc_name}}}
    assert {"from": [own]} in spec["ingress"], "the cluster's own pods, every port"
    for rule in spec["ingress"]:
        assert rule.get("from"), "an empty 'from' admits everyone"
        for peer in rule["from"]:
            assert "ipBlock" not in peer and "podSelector" in peer, peer
            assert peer["podSelector"].get("matchLabels"), "a bare podSelector admits every pod"
        if rule["from"] != [own]:  # others: one named port each
            ports = {p["port"] for p in rule.get("ports", [])}
            assert ports in ({8265}, {8080}), rule


def test_raycluster_gpu_groups_autoscale_on_spot_with_workload_identity():
    rc = ray_cluster()
    (sa,) = only("ServiceAccount")
    annotations = sa["metadata"]["annotations"]
    assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert annotations["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    gpu_groups = 0
    for name, group, pod in pod_specs(rc):
        assert pod["serviceAccountName"] == sa["metadata"]["name"], name
        if name == "head":
            assert group["rayStartParams"]["num-cpus"] == "0"
            assert "affinity" not in pod, "the head runs on on-demand nodes"
            continue
        assert group["minReplicas"] == 0 and group["replicas"] == 0 and group["maxReplicas"] > 0, name
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        keys = {(e["key"], tuple(e["values"])) for t in terms for e in t["matchExpressions"]}
        assert keys == {("eks.amazonaws.com/capacityType", ("SPOT",)), ("cloud.google.com/gke-spot", ("true",))}
        gpus = int(pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        gpu_groups += gpus > 0
    assert gpu_groups >= 2


# --------------------------------------------------------------------------- RayJobs


def rayjobs() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in kube_docs() if d["kind"] == "RayJob"]


@functools.cache
def script_options(script: str) -> tuple[dict[str, tuple[bool, bool, tuple | None]], frozenset]:
    """``--help`` of ``ray_jobs/<script>``: {flag: (takes a value, takes several, choices)}
    and the flags its usage line requires."""
    out = subprocess.run([sys.executable, str(ROOT / "ray_jobs" / script), "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    options: dict[str, tuple[bool, bool, tuple | None]] = {}
    for line in text.splitlines():
        m = re.match(r"^  (-{1,2}[\w-].*?)(?:\s{2,}|$)", line)
        if not m:
            continue
        for alias in m.group(1).split(", "):
            parts = alias.split(" ", 1)
            flag, rest = parts[0], (parts[1] if len(parts) > 1 else "")
            choices = tuple(rest[1:rest.index("}")].split(",")) if rest.startswith("{") else None
            options[flag] = (bool(rest), "..." in rest, choices)
    usage = text.split("\n\n", 1)[0].replace("usage:", " ")
    required, depth = set(), 0
    for token in re.findall(r"\[|\]|[^\s\[\]]+", usage):
        depth += token == "["
        depth -= token == "]"
        if depth == 0 and token.startswith("--"):
            required.add(token)
    return options, frozenset(required)


def parse_entrypoint(entrypoint: str) -> tuple[str, list[str]]:
    argv = shlex.split(entrypoint)
    assert argv[0] == "python", entrypoint
    prefix = f"{IMAGE_ROOT}/ray_jobs/"
    assert argv[1].startswith(prefix) and argv[1].endswith(".py"), argv[1]
    return argv[1][len(prefix):], argv[2:]


def flag_values(args: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    flag = None
    for a in args:
        if a.startswith("--"):
            flag = a
            out.setdefault(flag, [])
        else:
            out[flag].append(a)
    return out


@pytest.mark.parametrize("path", sorted((KUBERAY / "jobs").glob("*.yaml")), ids=lambda p: p.stem)
def test_rayjob_entrypoint_is_a_script_with_flags_its_help_accepts(path):
    (job,) = docs_of(path)
    assert job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": ray_cluster()["metadata"]["name"]}
    assert "rayClusterSpec" not in spec and not spec.get("shutdownAfterJobFinishes", False)
    entrypoint = spec["entrypoint"]
    # KubeRay pastes the entrypoint into the submitter's shell line after `ray job submit --`:
    # shell syntax there would run in the submitter pod instead of on the cluster.
    assert not re.search(r"[;&|<>`$'\"\\(){}]", entrypoint), entrypoint
    script, args = parse_entrypoint(entrypoint)
    assert (ROOT / "ray_jobs" / script).is_file(), f"{path.name}: ray_jobs/{script} does not exist"
    options, required = script_options(script)
    given = flag_values(args)
    assert not (required - set(given)), f"missing required flags {sorted(required - set(given))}"
    for flag, values in given.items():
        assert flag in options, f"{script} --help has no {flag}"
        takes_value, several, choices = options[flag]
        if not takes_value:
            assert values == [], (flag, values)
            continue
        assert values and (several or len(values) == 1), (flag, values)
        if choices:
            assert set(values) <= set(choices), (flag, values, choices)


def test_rayjobs_cover_every_stage_and_chain_through_storage():
    by_script: dict[str, list[dict[str, list[str]]]] = {}
    for _, job in rayjobs():
        script, args = parse_entrypoint(job["spec"]["entrypoint"])
        by_script.setdefault(script, []).append(flag_values(args))
    assert {"make_synthetic.py", "pseudo_label.py", "train.py", "evaluate.py", "pipeline.py"} <= set(by_script)

    def one(script: str, **match) -> dict[str, list[str]]:
        (found,) = [f for f in by_script[script] if all(f.get(k) == [v] for k, v in match.items())]
        return found

    synth = {f["--seed"][0]: f["--output"][0] for f in by_script["make_synthetic.py"]}
    train_data, val_data = synth["0"], synth["1"]
    teacher = one("train.py", **{"--preset": "teacher_vitl"})
    student = one("train.py", **{"--preset": "student_vits"})
    metric = one("train.py", **{"--preset": "metric_hypersim"})
    label = by_script["pseudo_label.py"][0]
    (evaluation,) = by_script["evaluate.py"]
    assert teacher["--data"] == [train_data] and teacher["--val-data"] == [val_data]
    assert label["--checkpoint"] == [teacher["--output"][0] + "/model.pth"]
    assert student["--data"] == [label["--output"][0] + "/labels"]  # labels/, not errors/
    assert metric["--init-from"] == [student["--output"][0] + "/model.pth"]
    assert evaluation["--checkpoint"] == [student["--output"][0] + "/model.pth"]
    assert evaluation["--encoder"] == ["vits"] and metric["--encoder"] == ["vits"]
    outputs = [f["--output"][0] for fs in by_script.values() for f in fs if "--output" in f]
    assert len(outputs) == len(set(outputs)), "two jobs write the same place"
    for fs in by_script.values():
        for f in fs:
            for values in f.values():
                for v in values:  # GKE: native gs:// through Workload Identity (README: S3 interop is a fallback)
                    assert "://" not in v or v.split("=")[-1].startswith("gs://"), v


def test_gcp_data_is_native_gs_through_node_and_pod_identities():
    """The launcher's nodes and the KubeRay pods reach gs:// with their own identity: no S3
    interoperability endpoint, the nodes' accounts hold a token scope and a bucket role."""
    from depthlib import storage

    cfg = launcher(CLUSTER / "gcp.yaml")
    script = (CLUSTER / "gcp-setup.sh").read_text()
    granted = re.findall(r'add-iam-policy-binding "gs://\$BUCKET" --member="serviceAccount:\$sa" \\\n\s*'
                         r"--role=roles/storage\.(\w+)", script)
    assert granted and set(granted) <= {"objectUser", "objectAdmin"}, granted
    loop = re.search(r'for sa in ([^;]+); do', script).group(1)
    assert "$HEAD_SA" in loop and "$WORKER_SA" in loop
    for name, node_type in cfg["available_node_types"].items():
        (sa,) = node_type["node_config"]["serviceAccounts"]
        assert set(sa["scopes"]) & {"https://www.googleapis.com/auth/cloud-platform",
                                    "https://www.googleapis.com/auth/devstorage.read_write"}, name
    for path in [CLUSTER / "gcp.yaml", KUBERAY / "raycluster.yaml", *sorted((KUBERAY / "jobs").glob("*.yaml"))]:
        text = path.read_text()
        assert "storage.googleapis.com" not in text and "AWS_ENDPOINT_URL" not in text, path
    uris = [v.split("=")[-1] for _, job in rayjobs() for v in shlex.split(job["spec"]["entrypoint"]) if "://" in v]
    assert uris and all(storage.is_gcs(u) and storage.split_bucket(u)[0] == "my-depthlib-bucket" for u in uris)


# --------------------------------------------------------------------------- Grafana


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def verified_names() -> tuple[set[str], set[str]]:
    """(counter names, gauge names) as tests/test_monitoring.py scrapes them from Ray."""
    import test_monitoring as tm

    from depthlib.training.records import GAUGES

    counters = {tm.LABELLED, tm.SKIPPED, tm.BYTES_READ, tm.LABEL_BYTES}
    gauges = {f"ray_depthlib_train_{name}" for name in tm.TRAIN_GAUGES}
    assert set(tm.TRAIN_GAUGES) == set(GAUGES)
    return counters, gauges


def test_grafana_dashboard_queries_the_exported_names():
    d = dashboard()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 27
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "SessionName" in variables and "run" in variables
    counters, gauges = verified_names()
    used: set[str] = set()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for panel in d["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(re.findall(r"\bray_depthlib_\w+", expr))
            assert names and names <= counters | gauges, (panel["title"], names - counters - gauges)
            assert 'SessionName=~"$SessionName"' in expr, expr
            for name in names & counters:
                if panel["type"] == "timeseries":  # a counter is drawn as a rate
                    assert re.search(rf"rate\({name}\{{", expr), expr
                else:
                    assert re.search(rf"sum\({name}\{{", expr), expr
            for name in names & gauges:
                assert f"rate({name}" not in expr, expr
            used |= names
    assert used == counters | gauges, f"no panel for {sorted(counters | gauges - used)}"
    skipped = [t["expr"] for p in d["panels"] for t in p.get("targets", []) if "skipped_total" in t["expr"]]
    assert any("by (reason)" in e for e in skipped), "skips are shown by reason"


def test_grafana_panels_do_not_overlap_and_docs_name_every_panel():
    cells = set()
    doc = DOC.read_text()
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))
        if panel["type"] != "row":
            assert panel["title"] in doc, f"docs/cluster.md does not describe panel {panel['title']!r}"
    assert "/tmp/ray/session_latest/metrics/grafana" in doc
