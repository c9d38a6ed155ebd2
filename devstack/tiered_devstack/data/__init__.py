"""Files the test bed needs at run time, shipped as package data so an installed copy needs no checkout.

- `KUBERAY_CRD`: KubeRay's RayService CRD (v1.7.0, Apache-2.0; `kuberay/NOTICE` and `kuberay/LICENSE`).
- `EXAMPLES`: the repo's `examples/` (`make demo` applies them). In the checkout `data/examples` is a
  symlink to `examples/`, so there is one copy; the wheel build follows the link and ships the files.

The tiered CRDs are not here: they are generated in-process from `tiered_operator.api.crds` (`crds/` is
generated from the same functions).
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent
KUBERAY_CRD = DATA / "kuberay" / "ray.io_rayservices.yaml"
EXAMPLES = (DATA / "examples").resolve()  # the real folder: kubectl does not walk a symlinked one
