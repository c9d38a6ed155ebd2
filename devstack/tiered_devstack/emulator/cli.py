"""`tiered cluster`: serve the emulator on loopback until SIGINT/SIGTERM and write a kubeconfig for it.

Must not: listen on anything but a loopback address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
from pathlib import Path

import kmock
import yaml

from tiered_devstack.emulator.kinds import default_crds
from tiered_devstack.emulator.server import Emulator, default_admission, default_crd_checker


def write_kubeconfig(path: Path, url: str) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "tiered-emulator", "preferences": {},
        "clusters": [{"name": "tiered-emulator", "cluster": {"server": url}}],
        "users": [{"name": "tiered-emulator", "user": {"token": "emulator"}}],
        "contexts": [{"name": "tiered-emulator",
                      "context": {"cluster": "tiered-emulator", "user": "tiered-emulator",
                                  "namespace": "default"}}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(yaml.safe_dump(config, sort_keys=False))
    partial.replace(path)  # atomic: a reader polling for the file never sees half of it


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--kubeconfig", type=Path,
                        help="kubeconfig to write (default: $TMPDIR/tiered-emulator-PORT.kubeconfig)")
    parser.add_argument("--crds", action="append", type=Path, metavar="PATH",
                        help="CRD file or directory, repeatable (default: the tiered CRDs and KubeRay's RayService)")
    parser.add_argument("--bookmark-interval", type=float, default=1.0, help="seconds between BOOKMARKs")
    parser.add_argument("--no-validation", action="store_true",
                        help="do not default, prune or validate custom resources against their CRD schema")


def cluster(args: argparse.Namespace) -> int:
    from tiered_operator.cli import UsageError

    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        raise UsageError(f"--host must be a loopback address, not {args.host!r}")
    missing = [str(path) for path in args.crds or () if not path.exists()]
    if missing:
        raise UsageError(f"no such CRD file or directory: {', '.join(missing)}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    validator, defaulter = (None, None) if args.no_validation else default_admission()
    crds = [] if args.crds else default_crds()
    emulator = Emulator(crds=crds, crd_paths=args.crds or (), validator=validator, defaulter=defaulter,
                        crd_checker=None if args.no_validation else default_crd_checker(),
                        bookmark_interval=args.bookmark_interval)
    async with emulator, kmock.Server(emulator, host=args.host, port=args.port or None) as server:
        url = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{server.port}"
        default = Path(tempfile.gettempdir()) / f"tiered-emulator-{server.port}.kubeconfig"
        kubeconfig = args.kubeconfig or default
        write_kubeconfig(kubeconfig, url)
        kinds = sorted({f"{k.kind}.{k.group}" for k in emulator._kinds.values() if k.crd is not None})
        print(f"tiered cluster: Kubernetes API emulator at {url} (custom resources: {', '.join(kinds)})\n"
              f"kubeconfig: {kubeconfig}\nexport KUBECONFIG={kubeconfig}", flush=True)
        await stop.wait()
        emulator.close_watches()
    print("tiered cluster: stopped", file=sys.stderr, flush=True)
