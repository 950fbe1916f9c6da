"""A library's releases from the registry, and one overlay per probed release beside the frozen stack.

An overlay is the release alone (``pip install --no-deps --target``), cached by package and version, put first on
the probe's PYTHONPATH: the stack's interpreter imports that release and keeps every other library it has (the
stack frozen; each probe's run records the version it imported). A release whose declared requirements the
stack does not meet, or that will not install or import, is ``unbuildable`` with pip's or Python's words, cached
as such."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from ..errors import QuantbenchError

UNBUILDABLE = ".unbuildable"
BUILT = ".built"


def available_versions(package: str, index_args: list[str]) -> list[str]:
    """Every version the registry lists for ``package`` (``pip index versions``), newest first as pip prints."""
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", package, *index_args], check=False,
                          capture_output=True, text=True, timeout=300)
    found = re.search(r"^Available versions: (.+)$", proc.stdout, re.MULTILINE)
    if proc.returncode or not found:
        words = last_line(proc.stderr or proc.stdout)
        raise QuantbenchError(None, f"the registry lists no releases of {package}: {words}",
                              "check the package's name and that pip reaches its index (--index-url / --find-links)")
    return [v.strip() for v in found.group(1).split(",") if v.strip()]


def overlay(package: str, version: str, module: str, cache: Path, index_args: list[str]) -> tuple[Path | None, str]:
    """(the folder to put first on PYTHONPATH, "") or (None, why it is unbuildable)."""
    folder = cache / f"{_normal(package)}-{version}"
    if (folder / BUILT).is_file():
        return folder, ""
    if (folder / UNBUILDABLE).is_file():
        return None, (folder / UNBUILDABLE).read_text()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    why = _install(package, version, folder, index_args) or _unmet(folder, package) or _import_fails(module, folder)
    (folder / (UNBUILDABLE if why else BUILT)).write_text(why)
    return (None, why) if why else (folder, "")


def _install(package: str, version: str, folder: Path, index_args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet",
                           "--disable-pip-version-check", "--target", str(folder), f"{package}=={version}",
                           *index_args], check=False, capture_output=True, text=True, timeout=900)
    return f"pip: {last_line(proc.stderr or proc.stdout)}" if proc.returncode else ""


def _unmet(folder: Path, package: str) -> str:
    """The release's declared requirements this stack does not meet (its markers evaluated here)."""
    from packaging.requirements import Requirement

    dists = [d for d in metadata.distributions(path=[str(folder)]) if _normal(d.metadata["Name"]) == _normal(package)]
    if not dists:
        return f"pip installed no {package} distribution"
    missing = []
    for text in dists[0].requires or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            have = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{requirement} (not installed)")
            continue
        if requirement.specifier and not requirement.specifier.contains(have, prereleases=True):
            missing.append(f"{requirement} (the stack has {have})")
    return f"needs {'; '.join(missing)}" if missing else ""


def _import_fails(module: str, folder: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], check=False, capture_output=True, text=True,
                          timeout=600, env=with_overlay(os.environ, folder))
    return f"import {module}: {last_line(proc.stderr)}" if proc.returncode else ""


def with_overlay(env, folder: Path | None) -> dict:
    """``env`` with ``folder`` first on PYTHONPATH (None: ``env`` as it is)."""
    env = dict(env)
    if folder is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)
    return env


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def last_line(text: str) -> str:
    """A program's last non-blank line of output: pip's and pytest's verdicts come last."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
