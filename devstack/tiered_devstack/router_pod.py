"""Plays kubelet for one RoutingPolicy's router Deployment: the router the operator rendered, run locally.

Reads the Deployment the operator wrote (`tiered-router-<policy>`), materialises its ConfigMap and Secret
volumes on disk the way kubelet keeps a mounted volume (`<file> -> ..data/<file>`, `..data -> ..<stamp>/`,
an update swaps `..data` with one rename), re-materialises them when the objects change (the router's
hot reload picks that up), and runs the container's `args` with the `tiered` entrypoint as a local process.
A pod-template change restarts the process (a rollout).

What the stack changes, because this is one machine and not a cluster (nothing here is done by the product):
- tier URLs `http://<tier>-serve-svc.<ns>.svc.cluster.local:8000` in the materialised files become the
  tier's route in the local Ray Serve (`<serve_url>/<ns>/<tier>`, see `kuberay.tier_route`);
- mount paths (`/etc/tiered/router`, `/etc/tiered/keys`, `/tmp`) in args and files become local folders;
- `--host` becomes 127.0.0.1, `--port` a free port, `--drain-seconds` 0 (no Service endpoints to drain).

Owns: materialising volumes and running the router process. Must not write to the Kubernetes API.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tiered_devstack.cluster import TIERED, EmulatorProcess
from tiered_devstack.kuberay import tier_route
from tiered_devstack.processes import free_port, stop

TIER_URL = re.compile(r"http://([a-z0-9]([-a-z0-9]*[a-z0-9])?)-serve-svc\.([a-z0-9-]+)\.svc\.cluster\.local:8000")
STACK_ARGS = {"--host": "127.0.0.1", "--drain-seconds": "0"}


def local_tier_urls(text: str, serve_url: str) -> str:
    """In-cluster tier Service URLs → the tiers' routes in the local Ray Serve."""
    return TIER_URL.sub(lambda m: serve_url + tier_route(m.group(3), m.group(1)), text)


def with_local_paths(text: str, mounts: Mapping[str, Path]) -> str:
    """Absolute paths under a mount path → under its local folder (one pass: a replaced path stays put)."""
    if not mounts:
        return text
    paths = "|".join(re.escape(path) for path in sorted(mounts, key=len, reverse=True))
    pattern = re.compile(r"(?<![\w/.-])(" + paths + r")(?=/|$|\s|\"|')")
    return pattern.sub(lambda m: str(mounts[m.group(1)]), text)


def stack_args(args: list[str], mounts: Mapping[str, Path], port: int, metrics_port: int | None = None) -> list[str]:
    """The container's args for this machine: local paths, loopback host, the given ports, no drain."""
    out = [with_local_paths(arg, mounts) for arg in args]
    overrides = {**STACK_ARGS, "--port": str(port)}
    if metrics_port is not None and "--metrics-port" in out:
        overrides["--metrics-port"] = str(metrics_port)
    for flag, value in overrides.items():
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


class VolumeDir:
    """A folder kept the way kubelet's AtomicWriter keeps a ConfigMap or Secret volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.version = 0
        self.files: dict[str, str] | None = None

    def update(self, files: dict[str, str], *, force: bool = False) -> bool:
        """Swap in `files` if they differ from what is there (or `force`); True if they did."""
        if files == self.files and not force:
            return False
        self.version += 1
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        stamp = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{self.version:06d}"
        stamp.mkdir()
        for name, text in files.items():
            (stamp / name).write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(stamp.name)
        link.replace(data)
        for name in files:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(Path("..data") / name)
        if old is not None:
            shutil.rmtree(self.root / old, ignore_errors=True)
        self.files = dict(files)
        return True


class RouterPod:
    """The router of `policy` in `namespace`, kept in step with its Deployment by `sync_once()`."""

    def __init__(self, emulator: EmulatorProcess, namespace: str, deployment: str, workdir: Path,
                 serve_url: str) -> None:
        self.emulator, self.namespace, self.deployment = emulator, namespace, deployment
        self.workdir, self.serve_url = workdir, serve_url
        self.volumes: dict[str, VolumeDir] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.template_hash: str | None = None
        self.port = free_port()  # kept across restarts, so Prometheus's static target stays right
        self.metrics_port = free_port()  # where /metrics is when the Deployment gives it a port of its own
        self.log = workdir / "router.log"
        self.updates = 0  # volume swaps after the first materialisation

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _get(self, path: str) -> dict[str, Any] | None:
        status, body = self.emulator.api("GET", path)
        return body if status == 200 and isinstance(body, dict) else None

    def _volume_files(self, volume: Mapping[str, Any]) -> dict[str, str] | None:
        if "configMap" in volume:
            cm = self._get(f"/api/v1/namespaces/{self.namespace}/configmaps/{volume['configMap']['name']}")
            data = dict((cm or {}).get("data") or {}) if cm else None
        elif "secret" in volume:
            secret = self._get(f"/api/v1/namespaces/{self.namespace}/secrets/{volume['secret']['secretName']}")
            data = {k: base64.b64decode(v).decode() for k, v in ((secret or {}).get("data") or {}).items()} \
                if secret else None
        else:
            raise ValueError(f"volume {volume.get('name')}: only configMap, secret and emptyDir are run here")
        items = volume.get("configMap", volume.get("secret", {})).get("items")
        if data is not None and items:
            data = {item["path"]: data[item["key"]] for item in items if item["key"] in data}
        return data

    def _env(self, container: Mapping[str, Any]) -> dict[str, str]:
        env = {}
        for var in container.get("env") or ():
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                env[var["name"]] = str(var.get("value", ""))
                continue
            secret = self._get(f"/api/v1/namespaces/{self.namespace}/secrets/{ref['name']}") or {}
            value = (secret.get("data") or {}).get(ref["key"])
            if value is not None:
                env[var["name"]] = base64.b64decode(value).decode()
        return env

    def sync_once(self) -> bool:
        """Materialise volumes and (re)start the router as its Deployment says; True once it runs."""
        deployment = self._get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.deployment}")
        if deployment is None:
            self.stop()
            return False
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        mounts = {m["mountPath"]: self.workdir / "volumes" / m["name"] for m in container.get("volumeMounts") or ()}
        for volume in pod.get("volumes") or ():
            root = self.workdir / "volumes" / volume["name"]
            if "emptyDir" in volume:
                root.mkdir(parents=True, exist_ok=True)
                continue
            files = self._volume_files(volume)
            if files is None:
                return self.process is not None  # kubelet waits for the object too
            files = {name: with_local_paths(local_tier_urls(text, self.serve_url), mounts)
                     for name, text in files.items()}
            directory = self.volumes.setdefault(volume["name"], VolumeDir(root))
            if directory.update(files) and self.process is not None:
                self.updates += 1
        template_hash = hashlib.sha256(json.dumps(deployment["spec"]["template"], sort_keys=True).encode()).hexdigest()
        if self.process is None or self.process.poll() is not None or template_hash != self.template_hash:
            self.stop()
            args = stack_args(list(container.get("args") or ()), mounts, self.port, self.metrics_port)
            with self.log.open("ab") as out:
                self.process = subprocess.Popen([*TIERED, *args], stdout=out, stderr=subprocess.STDOUT,
                                                env={**os.environ, **self._env(container)}, cwd=self.workdir)
            self.template_hash = template_hash
        return True

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        stop(self.process, timeout=15)
        self.process = None


class RouterKubelet:
    """Runs `sync_once` of a `RouterPod` every `interval` seconds in a thread."""

    def __init__(self, pod: RouterPod, interval: float = 0.5) -> None:
        self.pod, self.interval = pod, interval
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="router-kubelet", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    if not self._stop.is_set():
                        self.pod.sync_once()
                self.last_error = None
            except Exception as error:
                self.last_error = repr(error)
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            self.pod.stop()


@contextlib.contextmanager
def running_router(pod: RouterPod) -> Iterator[RouterPod]:
    """`pod` kept in step with its Deployment (every half second) until the context ends."""
    kubelet = RouterKubelet(pod)
    kubelet.start()
    try:
        yield pod
    finally:
        kubelet.stop()
