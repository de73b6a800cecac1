"""The launcher resource: the trainers run as child processes unless it is set to k8s; a k8s
launcher hands a training asset's command to Dagster's PipesK8sClient with a pod spec that
asks for the GPUs, the image and the data volume. No cluster here: the client's `run` is
replaced by a recorder, and the pod is built with dagster-k8s's own `build_pod_body` (the
body `run` would send), which also checks every key against the Kubernetes models."""

import json
import re
import sys

import dagster as dg
import pytest
import yaml
from dagster_k8s import PipesK8sClient
from dagster_k8s.pipes import build_pod_body

from cprec_assets.assets.train import accelerate_command, sft_assets
from cprec_assets.launcher import TrainingLauncher, pod_spec
from cprec_assets.resources import REPO_ROOT, ProfileResource, build_resources
from cprec_assets.tracking import MlflowTracking
from cprec_core.config import ConfigError

K8S = dict(kind="k8s", image="registry.example.com/cprec:1.0", namespace="cprec", gpus=2,
           cpu="8", memory="64Gi", data_pvc="cprec-data", data_mount_path="/mnt/cprec",
           service_account="cprec-trainer", image_pull_policy="Always",
           env={"HF_HOME": "/mnt/cprec/hf"}, node_selector={"nvidia.com/gpu.present": "true"},
           tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])


class Launched(Exception):
    """Stops the asset where the pod would have run."""


def recorder(calls: list):
    """A stand-in for ``PipesK8sClient.run``: records the client and its arguments."""
    def run(self, *, context, **kwargs):
        calls.append((self, context.partition_key, kwargs))
        raise Launched()
    return run


def materialize_sft(partition: str, **kwargs) -> dg.ExecuteInProcessResult:
    """The headline SFT asset (system ``cprec``) for one domain; stops at the launcher."""
    sft = next(a for a in sft_assets if a.key.path == ["sft_adapter"])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("domain", [partition])
        return dg.materialize([sft], partition_key=partition, instance=instance,
                              raise_on_error=False, **kwargs)


def test_the_sft_asset_sends_its_trainer_to_a_gpu_pod(tmp_path, fixture_config, monkeypatch):
    calls = []
    monkeypatch.setattr(PipesK8sClient, "run", recorder(calls))
    cprec = ProfileResource(config_file=str(fixture_config), data_dir=str(tmp_path / "data"),
                            num_processes=2)
    result = materialize_sft("crime", resources={"cprec": cprec, "mlflow": MlflowTracking(),
                                                 "launcher": TrainingLauncher(
        **K8S, kubeconfig_file="/etc/kube/config", kube_context="gpu-cluster")})
    assert not result.success and len(calls) == 1  # stopped by the recorder, at the pod
    client, partition, kwargs = calls[0]
    assert isinstance(client, PipesK8sClient) and partition == "crime"
    assert (client.kubeconfig_file, client.kube_context) == ("/etc/kube/config", "gpu-cluster")
    assert kwargs["namespace"] == "cprec" and kwargs["image"] == K8S["image"]
    env = dict(kwargs["env"])  # the launcher's, and the MLflow run's tags and switch
    tags = json.loads(env.pop("CPREC_TRACKING_TAGS"))
    assert tags["dagster.asset_key"] == "sft_adapter" and tags["dagster.partition_key"] == "crime"
    assert env == {"HF_HOME": "/mnt/cprec/hf", "CPREC_TRACKING": "off"}  # the tests' switch

    command = kwargs["command"]
    assert command[:3] == ["python", "-m", "accelerate.commands.launch"]  # the image's python
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("--num_cpu_threads_per_process") + 1] == "4"  # 8 cores / 2
    assert command[command.index("-m", 3) + 1] == "cprec_core.training.sft"
    assert command[command.index("--data-dir") + 1] == "/mnt/cprec"  # the pod's mount
    assert command[-4:] == ["--domain", "crime", "--system", "cprec"]

    spec = kwargs["base_pod_spec"]
    (container,) = spec["containers"]
    assert container["image"] == K8S["image"] and container["command"] == command
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2", "memory": "64Gi"}
    assert container["resources"]["requests"] == {"cpu": "8", "memory": "64Gi"}
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/mnt/cprec"}]
    assert spec["volumes"] == [{"name": "data",
                                "persistentVolumeClaim": {"claimName": "cprec-data"}}]

    # the pod PipesK8sClient.run would create from these arguments
    pod = build_pod_body(pod_name="sft-adapter-test", image=kwargs["image"], command=command,
                         env_vars={"DAGSTER_PIPES_CONTEXT": "x", **kwargs["env"]},
                         base_pod_meta=None, base_pod_spec=spec)
    (made,) = pod.spec.containers
    assert made.image == K8S["image"] and made.command == command
    assert made.image_pull_policy == "Always"
    assert made.resources.limits["nvidia.com/gpu"] == "2"
    assert [(m.name, m.mount_path) for m in made.volume_mounts] == [("data", "/mnt/cprec")]
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == "cprec-data"
    assert pod.spec.service_account_name == "cprec-trainer"
    assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert (pod.spec.tolerations[0].key, pod.spec.tolerations[0].operator,
            pod.spec.tolerations[0].effect) == ("nvidia.com/gpu", "Exists", "NoSchedule")
    assert pod.spec.restart_policy == "Never"
    assert {e.name: e.value for e in made.env}["HF_HOME"] == "/mnt/cprec/hf"


def test_the_launcher_is_set_from_the_run_config(tmp_path, fixture_config, monkeypatch):
    """The launchpad's YAML (docs/SCALING.md) reaches the client, over build_resources'
    default subprocess launcher."""
    calls = []
    monkeypatch.setattr(PipesK8sClient, "run", recorder(calls))
    resources = build_resources(config_file=str(fixture_config), data_dir=str(tmp_path / "d"))
    config = {"kind": "k8s", "image": "cprec:latest", "namespace": "ml", "gpus": 1,
              "data_pvc": "cprec-data", "data_mount_path": "/data",
              "load_incluster_config": True}
    materialize_sft("scifi", resources=resources,
                    run_config={"resources": {"launcher": {"config": config}}})
    ((client, partition, kwargs),) = calls
    assert partition == "scifi"
    assert client.load_incluster_config is True and kwargs["namespace"] == "ml"
    assert kwargs["base_pod_spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": "1"}
    assert kwargs["command"][kwargs["command"].index("--data-dir") + 1] == "/data"


def test_subprocess_is_the_default_and_keeps_the_command_as_it_was(fixture_config, tmp_path):
    assert TrainingLauncher().kind == "subprocess"
    assert build_resources()["launcher"].kind == "subprocess"
    cprec = ProfileResource(config_file=str(fixture_config), data_dir=str(tmp_path / "data"))
    default = accelerate_command(cprec, "cprec_core.training.cpt", "--variant", "wsa")
    here = accelerate_command(cprec, "cprec_core.training.cpt", "--variant", "wsa",
                              launcher=TrainingLauncher())
    assert default == here
    assert here[here.index("--data-dir") + 1] == cprec.profile.data_dir


@pytest.mark.parametrize("field, value", [
    ("namespace", "Bad_Namespace"), ("namespace", ""), ("namespace", "a" * 64),
    ("data_pvc", ""), ("data_pvc", "Data PVC"), ("data_mount_path", "data"),
    ("data_mount_path", "/"), ("data_mount_path", "/data/../etc"), ("gpus", -1),
    ("image", ""), ("image", "cprec latest"), ("cpu", "eight"), ("cpu", "2Gi"), ("memory", "32 GB"),
    ("service_account", "Trainer!"), ("env", {"1 BAD": "x"}),
    ("load_incluster_config", True)])
def test_a_bad_field_gives_an_error_naming_it(field, value):
    fields = {**K8S, field: value}
    if field == "load_incluster_config":
        fields["kubeconfig_file"] = "/etc/kube/config"  # both: which config to load?
    launcher = TrainingLauncher(**fields)
    with pytest.raises(ConfigError, match=f"launcher.{field}"):
        launcher.check()
    with pytest.raises(ConfigError, match=f"launcher.{field}"):
        pod_spec(launcher, ["python", "-c", "pass"])


def test_a_gpu_pod_runs_at_most_one_process_per_gpu(fixture_config, tmp_path):
    cprec = ProfileResource(config_file=str(fixture_config), data_dir=str(tmp_path / "data"),
                            num_processes=4)
    with pytest.raises(ConfigError, match="num_processes.*launcher.gpus"):
        accelerate_command(cprec, "cprec_core.training.sft", launcher=TrainingLauncher(**K8S))


@pytest.mark.parametrize("cpu, cores", [("8", 8), ("2.5", 2), ("500m", 1), ("16000m", 16)])
def test_the_trainer_threads_follow_the_pods_cpu_request(cpu, cores):
    assert TrainingLauncher(**{**K8S, "cpu": cpu}).cores() == cores


def test_a_cpu_pod_has_no_gpu_limit_and_no_optional_fields():
    launcher = TrainingLauncher(kind="k8s", image="cprec:1", data_pvc="data", gpus=0)
    spec = pod_spec(launcher, ["python", "-c", "pass"])
    assert spec["containers"][0]["resources"] == {"limits": {}, "requests": {}}
    assert not {"serviceAccountName", "nodeSelector", "tolerations"} & set(spec)


def test_a_missing_dagster_k8s_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_k8s(name, *args, **kwargs):
        if name == "dagster_k8s":
            raise ImportError("No module named 'dagster_k8s'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_k8s)
    with pytest.raises(ConfigError, match=r"\.\[k8s\]"):
        TrainingLauncher(**K8S).k8s_client()


def test_a_subprocess_launcher_runs_the_command_here_through_pipes():
    """What the training assets read back: the child's reported metadata, with the
    launcher's extra environment."""
    child = ("import os; from dagster_pipes import open_dagster_pipes\n"
             "with open_dagster_pipes() as pipes:\n"
             "    pipes.report_asset_materialization(metadata={'seen': os.environ['CPREC_X']})")

    @dg.asset
    def trained(context: dg.AssetExecutionContext, launcher: TrainingLauncher):
        return launcher.run(context=context, command=[sys.executable, "-c", child]
                            ).get_materialize_result()

    result = dg.materialize([trained], resources={
        "launcher": TrainingLauncher(env={"CPREC_X": "from the launcher"})})
    meta = result.asset_materializations_for_node("trained")[0].metadata
    assert meta["seen"].value == "from the launcher"


def section_2_blocks(language: str) -> list[str]:
    """The fenced ``language`` blocks of docs/SCALING.md section 2's part a."""
    text = (REPO_ROOT / "docs" / "SCALING.md").read_text()
    part = text.split("## 2. Training pods")[1].split("**b. Every step")[0]
    return re.findall(rf"```{language}\n(.*?)```", part, re.S)


def test_the_config_in_scaling_md_is_what_the_launcher_takes(monkeypatch):
    """docs/SCALING.md shows the exact resource config; run it, and build its code form."""
    calls = []
    monkeypatch.setattr(PipesK8sClient, "run", recorder(calls))
    (run_config,) = [yaml.safe_load(block) for block in section_2_blocks("yaml")]
    materialize_sft("crime", resources=build_resources(profile_name="demo"), run_config=run_config)
    ((client, _, kwargs),) = calls
    assert client.load_incluster_config is True
    command = " ".join(kwargs["command"])
    assert command.startswith("python -m accelerate.commands.launch --num_processes 1 ")
    assert ("--num_cpu_threads_per_process 8 -m cprec_core.training.sft --profile full"
            " --data-dir /data --reporter cprec_assets.pipes_reporter:open_pipes_reporter"
            " --domain crime --system cprec") in command
    spec = kwargs["base_pod_spec"]
    assert spec["containers"][0]["resources"] == {
        "limits": {"nvidia.com/gpu": "1", "memory": "32Gi"},
        "requests": {"cpu": "8", "memory": "32Gi"}}
    (code,) = section_2_blocks("python")
    scope: dict = {}
    exec(code, scope)
    in_code = scope["launcher"]
    assert in_code.model_dump() == TrainingLauncher(
        **run_config["resources"]["launcher"]["config"]).model_dump()


def test_the_pod_reads_the_accelerate_config_from_the_image(fixture_config, tmp_path):
    """Several processes under FSDP pass a shipped accelerate config: at ``repo_path`` in the
    image where it is set, at this checkout's path otherwise (and always for subprocesses)."""
    config = yaml.safe_load(fixture_config.read_text())
    config["train"] = {"distributed": "fsdp"}
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(config))
    cprec = ProfileResource(config_file=str(path), data_dir=str(tmp_path / "data"),
                            num_processes=2)

    def config_file(launcher):
        command = accelerate_command(cprec, "cprec_core.training.sft", launcher=launcher)
        return command[command.index("--config_file") + 1]

    shipped = REPO_ROOT / "cprec_core" / "training" / "accelerate" / "fsdp.yaml"
    assert config_file(TrainingLauncher(**K8S, repo_path="/app")) == \
        "/app/cprec_core/training/accelerate/fsdp.yaml"
    assert config_file(TrainingLauncher(**K8S)) == str(shipped)
    assert config_file(TrainingLauncher(repo_path="/app")) == str(shipped)
    with pytest.raises(ConfigError, match="launcher.repo_path"):
        TrainingLauncher(**K8S, repo_path="app").check()
