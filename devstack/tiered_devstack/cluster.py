"""Local control plane processes: `tiered cluster` (the Kubernetes API emulator) and the operator.

Used by the tests (the `emulator` and `operator` fixtures in tests/conftest.py), the benchmarks and
`make demo`. `running_emulator(workdir)` yields an `EmulatorProcess`:

    emulator.url                      http://127.0.0.1:PORT
    emulator.kubeconfig               Path of its kubeconfig (context `tiered-emulator`)
    emulator.env                      os.environ + KUBECONFIG, for starting kopf or other clients
    emulator.kubectl(*args, input=None, check=True, timeout=60) -> CompletedProcess[str]
    emulator.api(method, path, body=None, content_type=None, headers=None) -> (status, json)
    emulator.requests() -> Counter[(verb, resource, subresource)]   # subresource "" for the main object
    emulator.writes() -> int          # create/update/patch/delete/deletecollection since the last reset
    emulator.reset_requests()

`running_kopf(emulator, args, log)` runs `kopf run --standalone -A *args` against it and stops it afterwards;
`running_operator(emulator, workdir)` runs `tiered operator` as the chart does and waits for its liveness
probe; `eventually(check)` polls until `check()` is truthy instead of sleeping for a fixed time.
Every process started here is stopped when its context ends; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiered_devstack.processes import free_port, poll, stop

REPO_ROOT = Path(__file__).resolve().parents[2]
# The pinned kubectl (`make setup`); TIERED_KUBECTL names another one where there is no checkout.
KUBECTL = Path(os.environ.get("TIERED_KUBECTL") or REPO_ROOT / ".bin" / "kubectl")
TIERED = [sys.executable, "-m", "tiered_operator.cli"]  # the `tiered` command, without relying on PATH
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
MERGE = "application/merge-patch+json"


@dataclass
class EmulatorProcess:
    url: str
    kubeconfig: Path
    process: subprocess.Popen[bytes]
    cache_dir: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against the emulator; check=True raises with kubectl's stderr."""
        command = [str(KUBECTL), f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.cache_dir}", *args]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout,
                                env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def api(self, method: str, path: str, body: Any = None, content_type: str | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, Any]:
        """One raw HTTP request; returns (status, parsed JSON body) — errors too, never raises on 4xx."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, dict(headers or {}), method=method)
        if data is not None:
            request.add_header("Content-Type", content_type or "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode()

    def requests(self) -> collections.Counter[tuple[str, str, str]]:
        _, data = self.api("GET", "/_emulator/requests")
        return collections.Counter({(c["verb"], c["resource"], c["subresource"]): c["count"]
                                    for c in data["counts"]})

    def writes(self, *, leases: bool = False) -> int:
        """Writes since the last reset. The operator's leader renews its Lease every few seconds: those are
        left out unless `leases`, so "a settled operator writes nothing" stays a statement about reconciles."""
        return sum(n for (verb, resource, _), n in self.requests().items()
                   if verb in WRITE_VERBS and (leases or resource != "leases"))

    def reset_requests(self) -> None:
        self.api("POST", "/_emulator/requests/reset")


def check_kubectl() -> None:
    if not os.access(KUBECTL, os.X_OK):
        raise RuntimeError(f"{KUBECTL} is missing: run `make setup` (the test bed needs the pinned kubectl) "
                           "or set TIERED_KUBECTL")


@contextlib.contextmanager
def running_emulator(workdir: Path, extra_args: Sequence[str] = (),
                     timeout: float = 30) -> Iterator[EmulatorProcess]:
    """Start `tiered cluster` on an ephemeral loopback port; wait until it answers; stop it afterwards."""
    check_kubectl()
    kubeconfig, log = workdir / "kubeconfig", workdir / "emulator.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*TIERED, "cluster", "--port", "0", "--kubeconfig", str(kubeconfig),
                                    *extra_args], stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + timeout
        url = None
        while url is None:  # the kubeconfig appears (atomically) once the server listens
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tiered cluster did not start:\n{log.read_text()}")
            if kubeconfig.exists():
                url = next(line.split("server:")[1].strip() for line in kubeconfig.read_text().splitlines()
                           if "server:" in line)
            else:
                time.sleep(0.05)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        emulator = EmulatorProcess(url, kubeconfig, process, workdir / "kube-cache", log, env)
        while emulator.api("GET", "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"tiered cluster is not ready:\n{log.read_text()}")
            time.sleep(0.05)
        yield emulator
    finally:
        stop(process)


@contextlib.contextmanager
def running_kopf(emulator: EmulatorProcess, args: Sequence[str], log: Path,
                 env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`kopf run --standalone -A ARGS` (e.g. [path] or ["-m", module]) against the emulator."""
    command = [sys.executable, "-m", "kopf", "run", "--standalone", "-A", *args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                   env={**emulator.env, **(env or {})})
    try:
        yield process
    except BaseException:
        print(f"--- kopf log ({log}) ---\n{log.read_text(errors='replace')}")
        raise
    finally:
        stop(process, timeout=15)


@dataclass
class OperatorProcess:
    """The real operator (`tiered operator`) against an emulator."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running_operator(emulator: EmulatorProcess, workdir: Path, resync_seconds: float = 1.0,
                     extra_env: dict[str, str] | None = None,
                     timeout: float = 30) -> Iterator[OperatorProcess]:
    """`tiered operator --liveness ...` (as the chart runs it) until the test ends; waits for its liveness."""
    log = workdir / "operator.log"
    port = free_port()
    env = {**emulator.env, "TIERED_RESYNC_SECONDS": str(resync_seconds), **(extra_env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen([*TIERED, "operator", f"--liveness=http://127.0.0.1:{port}/healthz"],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    try:
        operator = OperatorProcess(process, log)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"operator did not start:\n{operator.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        yield operator
    except BaseException:
        print(f"--- operator log ({log}) ---\n{log.read_text(errors='replace')}")
        raise
    finally:
        stop(process, timeout=15)


def eventually(check: Any, timeout: float = 20, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll `check()` until it returns something truthy (returned); a failing assert counts as not yet."""
    return poll(lambda: check() or None, timeout=timeout, interval=interval, what=what, retry_on=(AssertionError,))
