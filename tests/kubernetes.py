"""Kubernetes without a cluster: a kustomization's pods of one image as local processes.

`Cluster` reads the resources kustomization.yaml lists and the image's Dockerfile, and starts
each pod of a Deployment or Job (one container) as a local process, as the kubelet would:
argv from `command`/`args` (else the image's ENTRYPOINT/CMD); environment from the image's
ENV, the Services' variables (`enableServiceLinks`, on unless false), `envFrom` and `env`
(`value`, `configMapKeyRef`, `secretKeyRef`; a missing one not `optional` refuses the pod);
volumes as each pod's own folders: `emptyDir` empty (unlike a docker volume, not seeded with
the image's folder), `configMap`/`secret` laid out as the kubelet does (files in
`..<timestamp>`, `..data` a symlink to it, each entry, or each of `items` at its `path`, a
symlink through `..data`, with `defaultMode` or the item's `mode`; `update` swaps them the same
way); `httpGet` probes on the mapped port within `timeoutSeconds`, 200-399 passing, run when the
test asks (more often than `periodSeconds`).

What only exists in a pod is mapped as `tests.compose` maps a container's: a path in the
environment to the mount holding it, else to the pod's root folder; a `containerPort` (in args,
`*_PORT` values, probes; by number or name) to a free port, `0.0.0.0` to 127.0.0.1; a Service's
DNS name in a URL (`redis:6379`) to the server the test gives (names not given are left: a link
such as `PLANGATE_JAEGER_URL` is never dialled); `TMPDIR` to the pod's `/tmp`. As `:ro` there,
`readOnlyRootFilesystem` is not enforced: the root folder holds only the image's folders (every
volume is elsewhere), and `root_writes` lists what a read-only root would have refused.
A Deployment starts `replicas` pods; `stop` sends SIGTERM, then SIGKILL after
`terminationGracePeriodSeconds`; a failing Job pod runs again up to `backoffLimit`. Nothing
orders the pods: the test starts them in the order it means to check.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests import compose
from tests.compose import Instance, Mount


class KubernetesError(Exception):
    """The manifests cannot be run as written (a missing Secret key, a pod that never readies)."""


@dataclass(frozen=True)
class Probe:
    """An `httpGet` probe on a port of this machine."""

    path: str
    port: int
    timeout: float

    def passes(self) -> bool:
        """Probe once, as the kubelet does: an answer in 200-399 within the timeout passes."""
        url = f"http://127.0.0.1:{self.port}{self.path}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as answer:
                return 200 <= int(answer.status) < 400
        except urllib.error.HTTPError as exc:
            with exc:
                return 200 <= exc.code < 400
        except OSError:
            return False


@dataclass
class Pod(Instance):
    """One pod of a Deployment or Job (its one container), as a process."""

    readiness: Probe | None = None
    liveness: Probe | None = None
    grace: float = 30.0
    read_only_root: bool = False

    def ready(self) -> bool:
        """Return whether it runs and its readiness probe (if any) passes."""
        return self.alive() and (self.readiness is None or self.readiness.passes())

    def live(self) -> bool:
        """Return whether it runs and its liveness probe (if any) passes."""
        return self.alive() and (self.liveness is None or self.liveness.passes())

    def root_writes(self) -> list[Path]:
        """Return every file written on its root filesystem (which holds no volume)."""
        return sorted(path for path in self.root.rglob("*") if not path.is_dir())


def resources(kustomization: Path) -> list[dict[str, Any]]:
    """Return the objects of every file `resources:` lists, in order."""
    listed = yaml.safe_load(kustomization.read_text(encoding="utf-8"))["resources"]
    found: list[dict[str, Any]] = []
    for name in listed:
        text = (kustomization.parent / name).read_text(encoding="utf-8")
        found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


def secret_data(secret: dict[str, Any]) -> dict[str, bytes]:
    """Return a Secret's keys: `data` base64-decoded, `stringData` over it."""
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    data.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return data


def service_links(services: list[dict[str, Any]]) -> dict[str, str]:
    """Return the variables the kubelet gives a pod for each Service (docker links' style)."""
    env: dict[str, str] = {}
    for number, service in enumerate(services, start=1):
        name = service["metadata"]["name"].upper().replace("-", "_")
        host, ports = f"10.96.0.{number}", service["spec"].get("ports", [])
        if not ports:
            continue
        env |= {f"{name}_SERVICE_HOST": host, f"{name}_SERVICE_PORT": str(ports[0]["port"])}
        env[f"{name}_PORT"] = f"tcp://{host}:{ports[0]['port']}"
        for port in ports:
            number_, protocol = port["port"], port.get("protocol", "TCP")
            if "name" in port:
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number_)
            prefix = f"{name}_PORT_{number_}_{protocol}"
            env |= {prefix: f"{protocol.lower()}://{host}:{number_}", f"{prefix}_PROTO": protocol}
            env |= {f"{prefix}_PORT": str(number_), f"{prefix}_ADDR": host}
    return env


def write_projection(folder: Path, files: Mapping[str, bytes], items: Any, mode: int) -> None:
    """Write (or update) a configMap or secret volume as the kubelet's atomic writer does: the
    files in a new `..<timestamp>` folder, `..data` swapped to it by a rename, an entry's
    symlink through `..data` made for each new path and removed for each gone one."""
    chosen = {i["key"]: (i["path"], i.get("mode", mode)) for i in items} if items else None
    if chosen is not None and (missing := set(chosen) - set(files)):
        raise KubernetesError(f"the volume's items name keys it lacks: {sorted(missing)}")
    paths = {
        chosen[k] if chosen else (k, mode): v for k, v in files.items() if not chosen or k in chosen
    }
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + str(time.monotonic_ns())
    for (path, file_mode), content in paths.items():
        (folder / stamp / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / stamp / path).write_bytes(content)
        (folder / stamp / path).chmod(file_mode)
    old = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    (folder / "..data_tmp").symlink_to(stamp)
    os.rename(folder / "..data_tmp", folder / "..data")
    tops = {path.split("/")[0] for path, _ in paths}
    for top in tops - {entry.name for entry in folder.iterdir()}:
        (folder / top).symlink_to(f"..data/{top}")
    for entry in folder.iterdir():
        if not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink()
    if old is not None:
        shutil.rmtree(folder / old)


# --- the cluster -----------------------------------------------------------------------------


class Cluster:
    """A kustomization's Deployments and Jobs of one image, their pods run as local processes."""

    def __init__(
        self,
        kustomization: Path,
        folder: Path,
        *,
        dockerfile: Path,
        image: str,
        addresses: Mapping[str, str],
    ) -> None:
        self.folder = folder
        self.objects = resources(kustomization)
        self.image, self.image_name = compose.read_dockerfile(dockerfile), image
        self.addresses = dict(addresses)
        self.pods: dict[str, list[Pod]] = {}
        self._ports = compose.PortBook()
        self._projections: list[tuple[str, str, dict[str, Any], Path]] = []  # kind, name

    def _server(self, whole: str, address: str) -> str:
        return whole.replace(address, self.addresses.get(address, address))

    def named(self, kind: str) -> dict[str, dict[str, Any]]:
        """Return the objects of one kind by name."""
        return {o["metadata"]["name"]: o for o in self.objects if o["kind"] == kind}

    def data_of(self, kind: str, name: str) -> dict[str, bytes] | None:
        """Return a ConfigMap's or Secret's keys (None: there is no such object)."""
        found = self.named(kind).get(name)
        if found is None:
            return None
        return secret_data(found) if kind == "Secret" else _map_data(found)

    def addresses_named(self) -> set[str]:
        """Return every host:port a URL in a ConfigMap or Secret names (the servers it needs)."""
        kinds = [(kind, name) for kind in ("ConfigMap", "Secret") for name in self.named(kind)]
        values = [v.decode() for k, n in kinds for v in (self.data_of(k, n) or {}).values()]
        return {m.group(1) for v in values for m in compose._URL_ADDRESS.finditer(v)}

    def prepare(self, owner: str, template: dict[str, Any]) -> Pod:
        """Make a pod of `owner` from its template: folders, ports, argv, environment, probes."""
        spec, containers = template["spec"], template["spec"]["containers"]
        if len(containers) != 1 or spec.get("initContainers"):
            raise KubernetesError(f"{owner}: only pods of one container are run here")
        container = containers[0]
        if container["image"].split(":")[0] != self.image_name:
            raise KubernetesError(f"{owner}: {container['image']} is not {self.image_name}")
        name = f"{owner}-{len(self.pods.get(owner, [])) + 1}"
        place, root = self.folder / "pods" / name, self.folder / "pods" / name / "root"
        for made in self.image.folders:
            (root / made.lstrip("/")).mkdir(parents=True, exist_ok=True)
        volumes = {
            v["name"]: self._volume(place / "volumes" / v["name"], v)
            for v in spec.get("volumes", [])
        }
        mounts = [
            Mount(
                m["mountPath"], volumes[m["name"]] / m.get("subPath", ""), bool(m.get("readOnly"))
            )
            for m in container.get("volumeMounts", [])
        ]
        declared = container.get("ports", [])
        ports = {str(p["containerPort"]): str(self._ports.take()) for p in declared}
        pod = Pod(name, owner, root, mounts, ports)
        program = container.get("command", self.image.entrypoint)
        args = container.get("args", [] if "command" in container else self.image.cmd)
        words = [pod.local(str(w)) for w in [*program, *args]]
        pod.argv = [*compose.PROGRAMS[words[0]], *words[1:]]
        pod.env = self._environment(pod, spec, container)
        by_name = {p["name"]: p["containerPort"] for p in declared if "name" in p}
        pod.readiness = self._probe(pod, container.get("readinessProbe"), by_name)
        pod.liveness = self._probe(pod, container.get("livenessProbe"), by_name)
        pod.grace = float(spec.get("terminationGracePeriodSeconds", 30))
        pod.read_only_root = bool(
            (container.get("securityContext") or {}).get("readOnlyRootFilesystem")
        )
        pod.log = self.folder / "logs" / f"{name}.log"
        return pod

    def _volume(self, folder: Path, volume: dict[str, Any]) -> Path:
        folder.mkdir(parents=True)
        kind = next((k for k in ("configMap", "secret") if k in volume), None)
        if kind is None:
            if "emptyDir" not in volume:
                raise KubernetesError(f"{volume['name']}: only emptyDir, configMap, secret here")
            return folder
        source, (kind, key) = volume[kind], _KINDS[kind]
        files = self.data_of(kind, source[key])
        if files is None and not source.get("optional"):
            raise KubernetesError(f"volume {volume['name']}: there is no {kind} {source[key]}")
        write_projection(folder, files or {}, source.get("items"), source.get("defaultMode", 0o644))
        self._projections.append((kind, source[key], source, folder))
        return folder

    def _environment(
        self, pod: Pod, spec: dict[str, Any], container: dict[str, Any]
    ) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        env |= {"HOSTNAME": pod.name, **compose.PROGRAM_ENV}
        env["HOME"] = str(pod.host_path(container.get("workingDir", self.image.workdir)))
        env["TMPDIR"] = str(pod.host_path("/tmp"))
        given = dict(self.image.env)
        if spec.get("enableServiceLinks", True):
            given |= service_links(list(self.named("Service").values()))
        for source in container.get("envFrom", []):
            given |= self._env_from(source)
        for variable in container.get("env", []):
            value = self._env_value(variable)
            if value is not None:
                given[variable["name"]] = value
        for name, value in given.items():
            mapped = compose.container_value(pod, name, value, self._server)
            env[name] = pod.local(mapped) if mapped == "0.0.0.0" else mapped
        return env

    def _env_from(self, source: dict[str, Any]) -> dict[str, str]:
        kind, ref = _reference(source, "configMapRef", "secretRef")
        data = self.data_of(kind, ref["name"])
        if data is None and not ref.get("optional"):
            raise KubernetesError(f"envFrom names no {kind} {ref['name']}")
        return {source.get("prefix", "") + k: v.decode() for k, v in (data or {}).items()}

    def _env_value(self, variable: dict[str, Any]) -> str | None:
        if "valueFrom" not in variable:
            return str(variable.get("value", ""))
        source = variable["valueFrom"]
        kind, ref = _reference(source, "configMapKeyRef", "secretKeyRef")
        data = self.data_of(kind, ref["name"]) or {}
        if ref["key"] in data:
            return data[ref["key"]].decode()
        if ref.get("optional"):
            return None
        raise KubernetesError(f"{variable['name']}: {kind} {ref['name']} has no key {ref['key']}")

    def _probe(self, pod: Pod, probe: Any, by_name: dict[str, int]) -> Probe | None:
        if probe is not None and "httpGet" not in probe:
            raise KubernetesError(f"{pod.owner}: only httpGet probes are run here")
        get = (probe or {}).get("httpGet", {"port": None})
        port = pod.port(by_name.get(get["port"], get["port"])) if probe else 0
        return Probe(get.get("path", "/"), port, probe.get("timeoutSeconds", 1)) if probe else None

    def update(self, kind: str, name: str, data: Mapping[str, str]) -> None:
        """Replace a ConfigMap's or Secret's data (`kubectl apply`), and each pod's volume of
        it, as the kubelet's next sync does."""
        found = self.named(kind)[name]
        found.pop("data", None)
        found["stringData" if kind == "Secret" else "data"] = dict(data)
        for projected in self._projections:
            if projected[:2] == (kind, name):
                source, folder, files = projected[2], projected[3], self.data_of(kind, name) or {}
                write_projection(
                    folder, files, source.get("items"), source.get("defaultMode", 0o644)
                )

    def start(self, owner: str) -> Pod:
        """Start one more pod of a Deployment or a Job."""
        found = self.named("Deployment").get(owner) or self.named("Job")[owner]
        pod = self.prepare(owner, found["spec"]["template"])
        self.pods.setdefault(owner, []).append(pod)
        pod.start()
        return pod

    def deploy(self, name: str) -> list[Pod]:
        """Start a Deployment's `replicas` pods."""
        replicas = self.named("Deployment")[name]["spec"].get("replicas", 1)
        return [self.start(name) for _ in range(replicas)]

    def run_job(self, name: str, timeout: float) -> Pod:
        """Run a Job's pod to completion (again while it fails, up to `backoffLimit`)."""
        retries = int(self.named("Job")[name]["spec"].get("backoffLimit", 6))
        pod, deadline = self.start(name), time.monotonic() + timeout
        while pod.process and pod.process.wait(timeout=max(deadline - time.monotonic(), 0.1)):
            if retries == 0:
                raise KubernetesError(f"job {name} failed\n{self.logs()}")
            retries -= 1
            pod.start()  # restartPolicy OnFailure: the same pod, its volumes kept
        return pod

    def wait_until(self, pod: Pod, probe: str, timeout: float = 60) -> None:
        """Probe a pod (`ready` or `live`) until it passes; fail if it exits or time runs out."""
        deadline, pause = time.monotonic() + timeout, threading.Event()
        while not getattr(pod, probe)():
            if not pod.alive():
                raise KubernetesError(f"{pod.name} exited\n{self.logs()}")
            if time.monotonic() > deadline:
                raise KubernetesError(f"{pod.name} is not {probe}\n{self.logs()}")
            pause.wait(0.2)  # the interval between probes, shorter than periodSeconds

    def running(self) -> list[Pod]:
        """Return every pod whose process runs."""
        return [pod for pods in self.pods.values() for pod in pods if pod.alive()]

    def stop(self, *pods: Pod) -> dict[str, int]:
        """SIGTERM the pods at once; SIGKILL each still running after its grace period (its
        code is then -9); return their exit codes."""
        signalled, codes = time.monotonic(), {}
        for pod in pods:
            if pod.alive() and pod.process:
                pod.process.send_signal(signal.SIGTERM)
        for pod in pods:
            assert pod.process is not None
            try:
                left = signalled + pod.grace - time.monotonic()
                codes[pod.name] = pod.process.wait(timeout=max(left, 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.process.pid, signal.SIGKILL)
                codes[pod.name] = pod.process.wait(timeout=10)
            if pod._log_file is not None:
                pod._log_file.close()
        return codes

    def down(self) -> dict[str, int]:
        """Stop every pod started (as deleting the namespace would); return the exit codes."""
        return self.stop(*(pod for pods in self.pods.values() for pod in pods if pod.process))

    def logs(self, lines: int = 40) -> str:
        """Return the end of every pod's log, for a failure message."""
        return "\n".join(pod.tail(lines) for pods in self.pods.values() for pod in pods)


_KINDS = {"configMap": ("ConfigMap", "name"), "secret": ("Secret", "secretName")}


def _reference(source: dict[str, Any], config_map: str, secret: str) -> tuple[str, Any]:
    if config_map not in source and secret not in source:
        raise KubernetesError(f"only {config_map} and {secret} are read here, not {source}")
    return ("ConfigMap", source[config_map]) if config_map in source else ("Secret", source[secret])


def _map_data(config_map: dict[str, Any]) -> dict[str, bytes]:
    data = {k: str(v).encode() for k, v in (config_map.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (config_map.get("binaryData") or {}).items()})
    return data
