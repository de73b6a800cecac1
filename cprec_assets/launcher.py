"""Where the training assets run their trainers: a child process here (``subprocess``, the
default) or a pod on Kubernetes (``k8s``, Dagster's ``PipesK8sClient``). Either way the
trainer is the same ``accelerate launch -m cprec_core.training.<tool>`` command and reports
through Dagster Pipes, so the assets read ``.get_materialize_result()`` the same way.

The pod spec is built by a pure function (``pod_spec``), so what a run would send to the
cluster can be checked without one; ``dagster-k8s`` (the ``k8s`` extra) is imported only
when a ``k8s`` launcher runs. The launchpad sets the fields (resource ``launcher``); see
docs/SCALING.md section 2 for the run config.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Mapping, Optional, Sequence

import dagster as dg

from cprec_core.cli import PARENT_PID
from cprec_core.config import ConfigError

# the repository (the shipped accelerate configs; resources.py resolves relative folders here)
REPO_ROOT = Path(__file__).resolve().parent.parent

DATA_VOLUME = "data"  # the pod's volume holding the data folder (the PVC)
CONTAINER = "trainer"
GPU_RESOURCE = "nvidia.com/gpu"

# RFC 1123, as Kubernetes validates names: a label (namespaces) and a subdomain (PVCs,
# service accounts)
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
CPU = re.compile(r"[0-9]+(\.[0-9]+)?m?")  # cores, or millicores ("500m")
MEMORY = re.compile(r"[0-9]+(\.[0-9]+)?(k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?")
ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Toleration(dg.Config):
    """A pod toleration (GPU nodes are often tainted, e.g. ``nvidia.com/gpu:NoSchedule``)."""

    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    toleration_seconds: Optional[int] = None


class TrainingLauncher(dg.ConfigurableResource):
    """Runs a trainer's command through Dagster Pipes, here or in a Kubernetes pod.

    ``k8s``: one pod per training step, from ``image``, in ``namespace``, with ``gpus``
    GPUs, and the PersistentVolumeClaim ``data_pvc`` (the profile's data folder) mounted at
    ``data_mount_path``; the trainer's ``--data-dir`` is that mount path. The run reads the
    trainer's outputs (manifests, logs) afterwards, so the run must see the same volume:
    mount it at the same path and set ``CPREC_DATA_DIR`` (or ``cprec.data_dir``) to it."""

    kind: Literal["subprocess", "k8s"] = "subprocess"
    # k8s only:
    image: str = ""  # an image of this repository (pip install -e .)
    repo_path: str = ""  # where the image holds that checkout ("": the run's own path)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    namespace: str = "default"
    gpus: int = 1  # nvidia.com/gpu limit per pod; 0: a CPU pod
    cpu: str = ""  # CPU request (a Kubernetes quantity: "8", "500m"); "" for none
    memory: str = ""  # memory request and limit ("32Gi"); "" for none
    data_pvc: str = ""  # the PersistentVolumeClaim holding the data folder (ReadWriteMany)
    data_mount_path: str = "/data"  # where the pod mounts it: the trainer's --data-dir
    service_account: str = ""  # "" for the namespace's default
    python: str = "python"  # the image's interpreter
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    load_incluster_config: Optional[bool] = None  # None: in-cluster if run inside a pod
    kubeconfig_file: str = ""
    kube_context: str = ""
    # both kinds: extra environment variables of the trainer
    env: dict[str, str] = {}

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.check()  # a wrong field fails the step before anything starts

    def check(self) -> None:
        """Raise a ``ConfigError`` naming the first field of this kind that is wrong."""
        if self.kind == "k8s":
            self.check_k8s()
        else:
            self._check_env()

    def _check_env(self) -> None:
        for name in self.env:
            if not ENV_NAME.fullmatch(name):
                raise ConfigError(f"launcher.env: {name!r} is not an environment variable name")

    def check_k8s(self) -> None:
        """Raise a ``ConfigError`` naming the first k8s field a cluster would refuse."""
        self._check_env()
        if not self.image.strip() or re.search(r"\s", self.image) or CONTROL.search(self.image):
            raise ConfigError(f"launcher.image: a k8s launcher needs an image name without"
                              f" spaces, got {self.image!r}")
        _name(self.namespace, "namespace", DNS_LABEL, 63, "DNS label")
        _name(self.data_pvc, "data_pvc", DNS_SUBDOMAIN, 253, "DNS subdomain")
        if self.service_account:
            _name(self.service_account, "service_account", DNS_SUBDOMAIN, 253, "DNS subdomain")
        for field in ("data_mount_path", "repo_path"):
            path = getattr(self, field)
            if field == "repo_path" and not path:
                continue
            if (CONTROL.search(path) or not PurePosixPath(path).is_absolute() or path == "/"
                    or ".." in PurePosixPath(path).parts):
                raise ConfigError(f"launcher.{field} must be an absolute path in the pod"
                                  f" (not / and without ..), got {path!r}")
        if self.gpus < 0:
            raise ConfigError(f"launcher.gpus must be 0 or more, got {self.gpus}")
        for field, pattern in (("cpu", CPU), ("memory", MEMORY)):
            value = getattr(self, field)
            if value and not pattern.fullmatch(value):
                raise ConfigError(f"launcher.{field} must be a Kubernetes quantity such as"
                                  f" {'8 or 500m' if field == 'cpu' else '32Gi'}, got {value!r}")
        if not self.python.strip() or CONTROL.search(self.python):
            raise ConfigError(f"launcher.python must name the image's interpreter,"
                              f" got {self.python!r}")
        if self.load_incluster_config and (self.kubeconfig_file or self.kube_context):
            raise ConfigError("launcher.load_incluster_config: leave kubeconfig_file and"
                              " kube_context empty when loading the in-cluster config")

    # what the trainer's command line depends on
    def python_executable(self) -> str:
        """The interpreter that runs the trainer: this one, or the image's."""
        return self.python if self.kind == "k8s" else sys.executable

    def repo_file(self, path: Path) -> str:
        """A file of this repository (the shipped accelerate configs) as the trainer sees
        it: here, or at ``repo_path`` in the image."""
        if self.kind != "k8s" or not self.repo_path:
            return str(path)
        return str(PurePosixPath(self.repo_path, *path.resolve().relative_to(REPO_ROOT).parts))

    def data_dir(self, run_data_dir: str) -> str:
        """The trainer's ``--data-dir``: the run's data folder, or the pod's mount of it."""
        return self.data_mount_path if self.kind == "k8s" else run_data_dir

    def cores(self) -> int:
        """The cores the trainer's processes share: this machine's, or the pod's CPU
        request (this machine's where none is set)."""
        if self.kind == "k8s" and self.cpu:
            value = self.cpu
            amount = float(value[:-1]) / 1000 if value.endswith("m") else float(value)
            return max(1, int(amount))
        return os.cpu_count() or 1

    def run(self, context: dg.AssetExecutionContext, command: Sequence[str],
            env: Mapping[str, str] | None = None) -> dg.PipesClientCompletedInvocation:
        """Run ``command`` through the Pipes client of ``kind``; the invocation's
        ``get_materialize_result()`` carries what the trainer reported."""
        self.check()
        env = {**self.env, **(env or {})}
        if self.kind == "subprocess":  # the trainer ends with this process (cprec_core.cli)
            env = {**env, PARENT_PID: str(os.getpid())}
            return dg.PipesSubprocessClient().run(context=context, command=list(command), env=env)
        run_dir = _run_data_dir(context)
        if run_dir and run_dir != self.data_mount_path:
            context.log.info(f"the run reads {run_dir}, the pod {self.data_mount_path}: both"
                             f" must be the PersistentVolumeClaim {self.data_pvc}")
        return self.k8s_client().run(context=context, **k8s_run_arguments(self, command, env))

    def k8s_client(self):
        """Dagster's ``PipesK8sClient`` with this launcher's cluster access."""
        return _dagster_k8s().PipesK8sClient(
            load_incluster_config=self.load_incluster_config,
            kubeconfig_file=self.kubeconfig_file or None,
            kube_context=self.kube_context or None)


def pod_spec(launcher: TrainingLauncher, command: Sequence[str]) -> dict[str, Any]:
    """The pod spec (Kubernetes' camelCase keys) of one trainer: the image and command in
    one container, its GPU limit and CPU/memory requests, and the data PVC mounted where
    the command's ``--data-dir`` points."""
    launcher.check_k8s()
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if launcher.gpus:
        limits[GPU_RESOURCE] = str(launcher.gpus)  # extended resources: limits only
    if launcher.cpu:
        requests["cpu"] = launcher.cpu
    if launcher.memory:  # request = limit: the pod is not evicted for using what it asked
        requests["memory"] = limits["memory"] = launcher.memory
    container: dict[str, Any] = {
        "name": CONTAINER, "image": launcher.image, "command": list(command),
        "imagePullPolicy": launcher.image_pull_policy,
        "resources": {"limits": limits, "requests": requests},
        "volumeMounts": [{"name": DATA_VOLUME, "mountPath": launcher.data_mount_path}]}
    spec: dict[str, Any] = {
        "restartPolicy": "Never", "containers": [container],
        "volumes": [{"name": DATA_VOLUME,
                     "persistentVolumeClaim": {"claimName": launcher.data_pvc}}]}
    if launcher.service_account:
        spec["serviceAccountName"] = launcher.service_account
    if launcher.node_selector:
        spec["nodeSelector"] = dict(launcher.node_selector)
    if launcher.tolerations:
        spec["tolerations"] = [_toleration(t) for t in launcher.tolerations]
    return spec


def k8s_run_arguments(launcher: TrainingLauncher, command: Sequence[str],
                      env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``PipesK8sClient.run`` (besides ``context``)."""
    return {"image": launcher.image, "command": list(command), "namespace": launcher.namespace,
            "env": dict(env or {}), "base_pod_spec": pod_spec(launcher, command)}


def _toleration(t: Toleration) -> dict[str, Any]:
    out: dict[str, Any] = {"operator": t.operator}
    for key, value in (("key", t.key), ("value", t.value), ("effect", t.effect),
                       ("tolerationSeconds", t.toleration_seconds)):
        if value not in ("", None):
            out[key] = value
    return out


def _name(value: str, field: str, pattern: re.Pattern, limit: int, what: str) -> None:
    allowed = "'-'" if pattern is DNS_LABEL else "'-' and '.'"
    if not pattern.fullmatch(value) or len(value) > limit:
        raise ConfigError(f"launcher.{field} must be a Kubernetes {what} (lower-case letters,"
                          f" digits and {allowed}, at most {limit} characters), got {value!r}")


def _run_data_dir(context) -> str:
    """The run's data folder, where the asset has the ``cprec`` resource ("" elsewhere)."""
    cprec = getattr(context.resources, "cprec", None)  # AttributeError where it is not
    return cprec.profile.data_dir if cprec is not None else ""


def _dagster_k8s():
    try:
        import dagster_k8s
    except ImportError as exc:
        raise ConfigError("launcher.kind is k8s but dagster-k8s is not installed: install the"
                          " k8s extra (pip install -e '.[k8s]')") from exc
    return dagster_k8s
