"""Docker compose without docker: a compose file's own services as local processes.

`Compose` reads a compose file (PyYAML resolves its `<<:` merges; `${VAR}`, `${VAR:-default}`,
`${VAR:?message}` and the rest are interpolated from the variables the test gives) and the
Dockerfile its services are built from, and starts each service built from it as a local
process with exactly its entrypoint, command and environment (the image's `ENV` first), after
mapping what only exists inside a container:

- a host:port of a service it does not start (`redis:6379`, `postgres:5432`, `jaeger:4318`) in
  any URL of the environment → the real server the test gives for it;
- a path in the container → a folder on this machine: each named volume is one folder, shared
  by exactly the services that mount it (seeded, as docker does, with the image's folders
  under its mount point); a `./file` bind → that file, or the replacement the test gives; any
  other path → the instance's own root folder (its container's private filesystem, which
  holds the image's folders), so the Dockerfile's `PLANGATE_DATA_DIR=/data` is one data folder
  per instance. The longest mount point wins, as in a container;
- a container port (`ports:`, an `*_PORT` variable, `--port`) → a free port on 127.0.0.1, also
  in the healthcheck's URL; `0.0.0.0` → `127.0.0.1`;
- `plangate` and `python` (the image's programs) → this interpreter.

`:ro` cannot be enforced by permissions here (the tests may run as root, and a volume shared
with a writer has one set of permissions): `read_only_changes` reports every `:ro` bind that
changed instead. `up` honours `depends_on` (`service_completed_successfully`,
`service_healthy` through the service's own healthcheck, run as compose runs it, only more
often), skips services with `profiles`, and starts `scale` instances of a service. Every
process logs to a file; `logs` returns their ends, for a failure message.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import yaml

from tests.servers import free_port

PROGRAMS = {"plangate": [sys.executable, "-m", "plangate"], "python": [sys.executable]}
# What the image installs is this checkout: first on the path, whichever plangate this
# interpreter has installed (another worktree's, once: the pods ran code the test did not).
PROGRAM_ENV = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?+])([^}]*))?\}|(\w+))")
_LOCAL_PORT = re.compile(r"((?:127\.0\.0\.1|localhost|0\.0\.0\.0):)(\d+)\b")
_URL_ADDRESS = re.compile(r"(?<=://)(?:[^@/\s]*@)?([\w.-]+:\d+)")


class ComposeError(Exception):
    """The compose file cannot be run as written (an unset required variable, a missing bind)."""


# --- the files --------------------------------------------------------------------------------


def interpolate(value: Any, variables: Mapping[str, str]) -> Any:
    """Return `value` with `$VAR`, `${VAR}`, `${VAR:-x}`, `${VAR:?x}`, `${VAR:+x}` (and the
    forms without `:`) replaced in every string, as compose does; `$$` is a literal `$`."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if isinstance(value, str):
        return _VARIABLE.sub(lambda match: _substitute(match, variables), value)
    return value


def _substitute(match: re.Match[str], variables: Mapping[str, str]) -> str:
    if match.group(1):
        return "$"
    name = match.group(2) or match.group(5)
    operator, argument = match.group(3) or "", match.group(4) or ""
    value = variables.get(name)
    missing = value is None or (operator.startswith(":") and value == "")
    if operator.endswith("-"):
        return argument if missing else str(value)
    if operator.endswith("?"):
        if missing:
            raise ComposeError(f"required variable {name} is missing a value: {argument}")
        return str(value)
    if operator.endswith("+"):
        return "" if missing else argument
    return value or ""


@dataclass(frozen=True)
class Image:
    """What a Dockerfile's last stage gives every container: env, programs, folders."""

    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    folders: list[str]


def read_dockerfile(path: Path) -> Image:
    """Read ENV, ENTRYPOINT, CMD, WORKDIR and the `mkdir -p` folders of the last stage."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    cmd: list[str] = []
    workdir, folders = "/", list[str]()
    for line in text.splitlines():
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            env, entrypoint, cmd, workdir, folders = {}, [], [], "/", []
        elif keyword == "ENV":
            words = shlex.split(rest)
            pairs = [w.partition("=") for w in words]
            if all(sep for _, sep, _ in pairs):
                env.update({name: value for name, _, value in pairs})
            else:
                env[words[0]] = " ".join(words[1:])
        elif keyword in ("ENTRYPOINT", "CMD"):
            program = json.loads(rest)
            entrypoint, cmd = (program, cmd) if keyword == "ENTRYPOINT" else (entrypoint, program)
        elif keyword == "WORKDIR":
            workdir = rest.strip()
            folders.append(workdir)
        elif keyword == "RUN":
            for made in re.findall(r"mkdir -p((?:\s+/[\w./-]+)+)", rest):
                folders += made.split()
    return Image(env, entrypoint, cmd, workdir, folders)


# --- one instance of a service --------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """A folder or file of this machine at `target` in the container."""

    target: str
    source: Path
    read_only: bool


def _under(path: str, folder: str) -> str | None:
    """Return `path` relative to `folder` if it is that folder or inside it, else None."""
    relative = os.path.relpath(PurePosixPath(path), PurePosixPath(folder))
    return None if relative == ".." or relative.startswith("../") else relative


@dataclass
class Instance:
    """One container of a service, as a process: its root folder, mounts, ports, log."""

    name: str
    service: str
    root: Path
    mounts: list[Mount]
    ports: dict[str, str]
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    healthcheck: list[str] | None = None
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    _log_file: IO[bytes] | None = None

    def host_path(self, path: str) -> Path:
        """Return where a path of the container is on this machine (the longest mount wins)."""
        best: tuple[int, Path] | None = None
        for mount in self.mounts:
            relative = _under(path, mount.target)
            if relative is not None and (best is None or len(mount.target) > best[0]):
                best = (len(mount.target), mount.source / relative)
        return best[1] if best else self.root / path.lstrip("/")

    def port(self, container_port: int | str) -> int:
        """Return the port of this machine that stands for a container port."""
        return int(self.ports[str(container_port)])

    def local(self, token: str) -> str:
        """Map a command or healthcheck word: a container port, `0.0.0.0`, a local URL."""
        if token == "0.0.0.0":
            return "127.0.0.1"
        if token in self.ports:
            return self.ports[token]
        return _LOCAL_PORT.sub(
            lambda m: "127.0.0.1:" + self.ports.get(m.group(2), m.group(2)), token
        )

    def alive(self) -> bool:
        """Return whether its process runs."""
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """Run its healthcheck once, as compose would in the container; True if it passes."""
        if self.healthcheck is None:
            return self.alive()
        try:
            result = subprocess.run(
                self.healthcheck,
                env=self.env,
                cwd=self.root,
                capture_output=True,
                timeout=10,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def start(self) -> Instance:
        """Start its process in its home folder, its output appended to its log."""
        assert self.log is not None
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if self._log_file is not None:  # started again (a restarted container): one log
            self._log_file.close()
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.env["HOME"],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def tail(self, lines: int = 40) -> str:
        """Return the end of its log."""
        if self.log is None or not self.log.exists():
            return f"--- {self.name}: no log"
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        code = self.process.poll() if self.process else None
        return f"--- {self.name} (exit {code}) {self.log}\n" + "\n".join(text)


class PortBook:
    """Free ports of this machine, each handed out once."""

    def __init__(self) -> None:
        self._handed: set[int] = set()

    def take(self) -> int:
        """Return a port nothing listens on, never handed out before."""
        # free_port only says nothing listens now: two instances prepared before either starts
        # could be handed the same one (the gate's probes and serve-3 were, once).
        while (port := free_port()) in self._handed:
            pass
        self._handed.add(port)
        return port


def container_value(
    instance: Instance, name: str, value: str, address: Callable[[str, str], str]
) -> str:
    """Map an environment value of the container to this machine: each URL's host:port through
    `address(url_part, host_port)`, a `*_PORT` to its local port, a container path to a folder."""
    value = _URL_ADDRESS.sub(lambda m: address(m.group(0), m.group(1)), value)
    if name.endswith("_PORT"):
        return instance.local(value)
    if re.fullmatch(r"/[^\s:]*", value):
        return str(instance.host_path(value))
    return value


# --- the project ----------------------------------------------------------------------------


class Compose:
    """A compose file's services built from its Dockerfile, run as local processes."""

    def __init__(
        self,
        file: Path,
        folder: Path,
        *,
        variables: Mapping[str, str],
        addresses: Mapping[str, str],
        binds: Mapping[str, Path] | None = None,
    ) -> None:
        self.file = file
        self.folder = folder
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
        self.spec: dict[str, Any] = interpolate(raw, variables)
        self.services: dict[str, dict[str, Any]] = self.spec["services"]
        self.addresses = dict(addresses)
        self.binds = {k: Path(v) for k, v in (binds or {}).items()}
        self.instances: dict[str, list[Instance]] = {}
        self.one_offs: list[Instance] = []
        self._images: dict[str, Image] = {}
        self._digests: dict[Path, str] = {}
        self._port_book = PortBook()

    # What is started here, and what the test provides.

    def built(self) -> list[str]:
        """Return the services built from a Dockerfile (the ones run as processes)."""
        return [name for name, spec in self.services.items() if "build" in spec]

    def provided(self) -> list[str]:
        """Return the services the test must provide (images of other projects)."""
        return [name for name in self.services if name not in self.built()]

    def image(self, service: str) -> Image:
        """Return the image a service is built from."""
        build = self.services[service]["build"]
        context = self.file.parent / (build if isinstance(build, str) else build["context"])
        dockerfile = "Dockerfile" if isinstance(build, str) else build["dockerfile"]
        path = (context / dockerfile).resolve()
        if str(path) not in self._images:
            self._images[str(path)] = read_dockerfile(path)
        return self._images[str(path)]

    # Preparing an instance.

    def volume(self, name: str, target: str, image: Image) -> Path:
        """Return a named volume's folder, made (and seeded like docker) on first use."""
        if name not in self.spec.get("volumes", {}):
            raise ComposeError(f"volume {name!r} is not declared under `volumes:`")
        path = self.folder / "volumes" / name
        if not path.exists():
            path.mkdir(parents=True)
            for made in image.folders:
                relative = _under(made, target)
                if relative not in (None, "."):
                    (path / str(relative)).mkdir(parents=True, exist_ok=True)
        return path

    def mounts(self, service: str) -> list[Mount]:
        """Return a service's volumes as mounts of this machine's folders and files."""
        mounts = []
        for entry in self.services[service].get("volumes", []):
            source, target, *mode = entry.split(":")
            read_only = "ro" in mode
            if source.startswith((".", "/")):
                path = self.binds.get(source, (self.file.parent / source).resolve())
                if not path.exists():
                    raise ComposeError(f"{service}: the bind source {source} ({path}) is missing")
                if read_only and path.is_file():
                    self._digests.setdefault(path, _digest(path))
            else:
                path = self.volume(source, target, self.image(service))
            mounts.append(Mount(target, path, read_only))
        return mounts

    def _ports(self, spec: dict[str, Any]) -> dict[str, str]:
        container = {str(p).split(":")[-1].split("/")[0] for p in spec.get("ports", [])}
        container |= {str(v) for k, v in _environment(spec).items() if k.endswith("_PORT")}
        command = [str(w) for w in spec.get("command", [])]
        container |= {b for a, b in itertools.pairwise(command) if a == "--port"}
        return {port: str(self._port_book.take()) for port in sorted(container) if port.isdigit()}

    def _address(self, whole: str, address: str) -> str:
        if address.split(":")[0] in self.services and address not in self.addresses:
            raise ComposeError(f"no server was given for {address}")
        return whole.replace(address, self.addresses.get(address, address))

    def prepare(
        self,
        service: str,
        name: str,
        *,
        command: list[str] | None = None,
        entrypoint: list[str] | None = None,
    ) -> Instance:
        """Make an instance's root folder, mounts, ports, argv and environment."""
        spec, image = self.services[service], self.image(service)
        root = self.folder / "instances" / name / "root"
        for made in image.folders:
            (root / made.lstrip("/")).mkdir(parents=True, exist_ok=True)
        instance = Instance(name, service, root, self.mounts(service), self._ports(spec))
        program = entrypoint if entrypoint is not None else spec.get("entrypoint", image.entrypoint)
        if command is None:
            command = spec.get("command", image.cmd)
        words = [instance.local(str(w)) for w in [*program, *command]]
        instance.argv = [*PROGRAMS[words[0]], *words[1:]]
        home = str(instance.host_path(image.workdir))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": home}
        env |= PROGRAM_ENV
        for key, value in {**image.env, **_environment(spec)}.items():
            env[key] = container_value(instance, key, str(value), self._address)
        instance.env = env
        instance.healthcheck = self._healthcheck(instance, spec.get("healthcheck"))
        instance.log = self.folder / "logs" / f"{name}.log"
        return instance

    def _healthcheck(self, instance: Instance, check: dict[str, Any] | None) -> list[str] | None:
        if not check or check.get("disable"):
            return None
        test = check["test"]
        if isinstance(test, str):
            return ["/bin/sh", "-c", test]
        kind, *words = test
        if kind == "NONE":
            return None
        if kind == "CMD-SHELL":
            return ["/bin/sh", "-c", " ".join(words)]
        words = [instance.local(str(w)) for w in words]
        return [*PROGRAMS.get(words[0], [words[0]]), *words[1:]]

    # Running.

    def start(self, instance: Instance) -> Instance:
        """Start an instance's process, its output appended to its log."""
        return instance.start()

    def up(self, scale: Mapping[str, int] | None = None, timeout: float = 90) -> None:
        """Start every built service without `profiles`, in `depends_on` order, each once its
        dependencies meet their condition (the provided servers are taken as ready)."""
        deadline = time.monotonic() + timeout
        for service in self._in_order():
            self._wait_for_dependencies(service, deadline)
            count = (scale or {}).get(service, 1)
            self.instances[service] = [
                self.start(self.prepare(service, f"{service}-{n + 1}" if count > 1 else service))
                for n in range(count)
            ]

    def _in_order(self) -> list[str]:
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in path:
                raise ComposeError(f"depends_on cycle: {' -> '.join((*path, name))}")
            if name in order or name not in self.built():
                return
            for dependency in self._dependencies(name):
                visit(dependency, (*path, name))
            order.append(name)

        for name in self.built():
            if not self.services[name].get("profiles"):
                visit(name, ())
        return order

    def _dependencies(self, service: str) -> dict[str, str]:
        depends = self.services[service].get("depends_on", {})
        if isinstance(depends, list):
            return dict.fromkeys(depends, "service_started")
        return {name: spec.get("condition", "service_started") for name, spec in depends.items()}

    def _wait_for_dependencies(self, service: str, deadline: float) -> None:
        for dependency, condition in self._dependencies(service).items():
            if dependency not in self.built():
                continue
            for instance in self.instances[dependency]:
                if condition == "service_completed_successfully":
                    self.wait_exit(instance, deadline - time.monotonic(), expect=0)
                elif condition == "service_healthy":
                    self.wait_healthy(instance, deadline - time.monotonic())

    def wait_exit(self, instance: Instance, timeout: float, expect: int | None = None) -> int:
        """Wait for an instance to exit; fail (with the logs) on timeout or another code."""
        assert instance.process is not None
        try:
            code = instance.process.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            raise ComposeError(f"{instance.name} did not exit\n{self.logs()}") from None
        if expect is not None and code != expect:
            raise ComposeError(f"{instance.name} exited {code}, not {expect}\n{self.logs()}")
        return code

    def wait_healthy(self, instance: Instance, timeout: float) -> None:
        """Run an instance's healthcheck until it passes; fail if it exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not instance.healthy():
            if not instance.alive():
                raise ComposeError(f"{instance.name} exited while starting\n{self.logs()}")
            if time.monotonic() > deadline:
                raise ComposeError(f"{instance.name} is not healthy\n{self.logs()}")
            time.sleep(0.5)  # each try starts a process: leave the CPU to the starting ones

    def all_healthy(self, timeout: float = 90) -> None:
        """Wait until every running instance passes its healthcheck."""
        deadline = time.monotonic() + timeout
        for instance in self.running():
            self.wait_healthy(instance, deadline - time.monotonic())

    def running(self) -> list[Instance]:
        """Return the instances whose process runs."""
        return [i for each in self.instances.values() for i in each if i.alive()]

    def add(self, service: str, **extra_env: str) -> Instance:
        """Start one more instance of a service (as `--scale` would), its environment changed
        by `extra_env` (a test's deliberate departure from the compose file)."""
        running = self.instances.setdefault(service, [])
        instance = self.prepare(service, f"{service}-{len(running) + 1}")
        instance.env.update(extra_env)
        running.append(self.start(instance))
        return instance

    def run(self, service: str, *command: str, entrypoint: list[str] | None = None) -> Instance:
        """`docker compose run --rm SERVICE COMMAND...`: start a one-off instance (wait for it
        with `wait_exit`; its output is in its log)."""
        name = f"{service}-run-{len(self.one_offs) + 1}"
        instance = self.prepare(service, name, command=list(command), entrypoint=entrypoint)
        self.one_offs.append(instance)
        return self.start(instance)

    def output(self, instance: Instance) -> str:
        """Return everything an instance printed so far."""
        assert instance.log is not None
        return instance.log.read_text(encoding="utf-8", errors="replace")

    def down(self, timeout: float = 20) -> dict[str, int | None]:
        """SIGTERM every instance; SIGKILL what is left after `timeout`; return exit codes."""
        every = list(self.every_instance())
        self._stop(every, timeout)
        return {i.name: i.process.returncode if i.process else None for i in every}

    def _stop(self, instances: list[Instance], timeout: float) -> None:
        for instance in instances:
            if instance.alive():
                assert instance.process is not None
                instance.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for instance in instances:
            if instance.process is None:
                continue
            try:
                instance.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(instance.process.pid, signal.SIGKILL)
                instance.process.wait(timeout=10)
            if instance._log_file is not None:
                instance._log_file.close()

    # What a test checks afterwards.

    def read_only_changes(self) -> list[Path]:
        """Return every file mounted `:ro` somewhere whose content changed since."""
        return [path for path, digest in self._digests.items() if _digest(path) != digest]

    def every_instance(self) -> Iterator[Instance]:
        """Yield every instance started, one-offs included."""
        for each in self.instances.values():
            yield from each
        yield from self.one_offs

    def logs(self, lines: int = 40) -> str:
        """Return the end of every instance's log, for a failure message."""
        return "\n".join(i.tail(lines) for i in self.every_instance())


def _environment(spec: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, written as a mapping or as a list of `NAME=value`."""
    env = spec.get("environment", {})
    if isinstance(env, list):
        return dict(entry.partition("=")[::2] for entry in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
