"""The lock and the extras: each part installs only what it runs, at the versions locked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "numpy", "PIL", "pillow_heif", "ai_edge_litert", "moto")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def test_the_web_front_imports_nothing_of_the_processor() -> None:
    # A fresh interpreter: what the front's import path loads, and nothing a test loaded.
    code = (
        "import sys\n"
        "from imagepipe.app import create_app, gunicorn_command\n"
        "import uploader.routes, results_api.routes, web.routes, imagepipe.cli.main\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "[]"


def test_the_base_and_front_leave_out_tensorflow() -> None:
    extras = project()["optional-dependencies"]
    light = names(project()["dependencies"]) | names(extras["front"])
    assert not light & {"tensorflow", "keras", "numpy", "pillow", "ai-edge-litert", "moto"}
    assert {"tensorflow", "keras", "ai-edge-litert", "pillow"} <= names(extras["processor"])
    # The GPU extra is the processor's with CUDA; the test extra holds every part.
    assert "imagepipe[processor]" in extras["gpu"]
    assert "imagepipe[local,deploy]" in extras["test"]
    assert "imagepipe[front,processor]" in extras["local"]


def test_the_lock_holds_what_pyproject_asks_for() -> None:
    # uv.lock records the requirements it was resolved for: edit one without `make lock`, and
    # the lock no longer matches.
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    locked = {(canonicalize_name(r["name"]), r.get("specifier", ""))
              for r in packages["imagepipe"]["metadata"]["requires-dist"]}
    asked = {(canonicalize_name(r.name), str(r.specifier))
             for r in map(Requirement, project()["dependencies"] + [
                 r for extra in project()["optional-dependencies"].values() for r in extra])}
    assert locked == asked
    # One version of each package, from PyPI: a fresh clone anywhere installs the same.
    assert len(packages) == len(lock["package"])
    assert all(p["source"].get("registry") == "https://pypi.org/simple"
               for p in packages.values() if p["name"] != "imagepipe")


def test_make_setup_installs_the_lock_with_uv() -> None:
    run = subprocess.run(["make", "-n", "-B", "setup"], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60)
    assert "pip install -q uv==" in run.stdout
    assert "uv sync --quiet --frozen --extra test" in run.stdout
    # Reinstalled when the lock changes, not only pyproject.toml.
    assert "$(STAMP): pyproject.toml uv.lock" in (ROOT / "Makefile").read_text()
