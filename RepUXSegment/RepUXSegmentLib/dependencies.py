"""Python dependencies of RepUX inside Slicer (no Qt imports).

* **PyTorch** only through the PyTorch extension (``PyTorchUtils``), which picks the
  build that matches the GPU driver; never ``pip install torch``.
* **The rest** (``Resources/requirements.txt``: MONAI, safetensors, tqdm, pillow)
  through ``slicer.packaging.pip_ensure`` (Slicer >= 5.12: ``slicer.packaging`` does
  not exist in 5.8 and 5.10), which asks the user first, with torch and SimpleITK
  excluded from the dependency walk so that pip never replaces Slicer's SimpleITK or
  the PyTorch extension's torch; Slicer 5.8-5.10 fall back to ``slicer.util.pip_install``
  after a confirmation, one package at a time under a progress dialog, installing
  MONAI without its dependencies for the same reason.

Everything is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "SKIPPED_PACKAGES",
    "TORCH_REQUIREMENT",
    "InstallError",
    "ensureDependencies",
    "ensureRequirements",
    "ensureTorch",
    "isSatisfied",
    "missingRequirements",
    "readRequirements",
    "requirementName",
    "torchStatus",
]

logger = logging.getLogger(__name__)

#: the PyTorch versions RepUX supports
TORCH_REQUIREMENT = ">=2.1"

#: packages Slicer or its extensions provide: never installed from PyPI by RepUX
SKIPPED_PACKAGES = ("torch", "SimpleITK")

#: packages installed without their dependencies on old Slicer (they would pull torch from PyPI)
NO_DEPS_PACKAGES = ("monai",)

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class InstallError(RuntimeError):
    """A dependency could not be installed (or the user declined); ``restartRequired`` asks for a restart."""

    def __init__(self, message: str, restartRequired: bool = False) -> None:
        super().__init__(message)
        self.restartRequired = restartRequired


def readRequirements(path: str | os.PathLike[str]) -> list[str]:
    """Requirement lines of a requirements file (comments and blank lines dropped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            out.append(text)
    return out


def requirementName(requirement: str) -> str:
    """The distribution name of a requirement string (``"monai>=1.3"`` -> ``"monai"``).

    Raises:
        ValueError: not a requirement.
    """
    m = _NAME.match(requirement)
    if not m:
        raise ValueError(f"not a requirement: {requirement!r}")
    return m.group(1)


def _installedVersion(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def isSatisfied(requirement: str) -> bool:
    """True when the requirement's package is installed in a matching version.

    Version specifiers are checked with ``packaging`` when it is available (it is
    in Slicer); otherwise only the presence of the package is checked.
    """
    name = requirementName(requirement)
    version = _installedVersion(name)
    if version is None:
        return False
    try:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.version import InvalidVersion
    except ImportError:
        return True
    try:
        req = Requirement(requirement)
    except InvalidRequirement as err:
        raise ValueError(f"invalid requirement {requirement!r}: {err}") from err
    if req.marker is not None and not req.marker.evaluate():
        return True
    try:
        return req.specifier.contains(version, prereleases=True)
    except InvalidVersion:
        return True


def missingRequirements(requirements: Iterable[str]) -> list[str]:
    """The requirements that are not satisfied."""
    return [r for r in requirements if not isSatisfied(r)]


def torchStatus() -> str:
    """``"missing"``, ``"outdated"`` or ``"ok"`` for ``torch`` against :data:`TORCH_REQUIREMENT`."""
    if _installedVersion("torch") is None:
        return "missing"
    return "ok" if isSatisfied(f"torch{TORCH_REQUIREMENT}") else "outdated"


def _slicer() -> Any:
    import slicer

    return slicer


def _slicerPackaging(slicer: Any) -> Any:
    """``slicer.packaging`` (Slicer >= 5.12), imported here: a fresh Slicer session has not imported it yet,
    so ``slicer.packaging`` is no attribute until something does (as Slicer's module template does, guarded)."""
    packaging = getattr(slicer, "packaging", None)
    if packaging is None:
        try:
            packaging = importlib.import_module("slicer.packaging")
        except ImportError:  # Slicer < 5.12 (5.8, 5.10): no slicer.packaging
            return None
    return packaging


def ensureTorch(askConfirmation: bool = True, torchRequirement: str = TORCH_REQUIREMENT) -> None:
    """Install or upgrade PyTorch through the PyTorch extension when needed.

    Raises:
        InstallError: the PyTorch extension is missing, or the user declined / the installation failed.
    """
    if isSatisfied(f"torch{torchRequirement}"):
        return
    try:
        import PyTorchUtils
    except ImportError as err:
        raise InstallError(
            "RepUX needs the 'PyTorch' extension to install PyTorch. Install it from the Extensions Manager, restart Slicer and try again."
        ) from err
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation, torchVersionRequirement=torchRequirement)
    if torch is None:
        raise InstallError("PyTorch is required by RepUX but was not installed.")
    if not isSatisfied(f"torch{torchRequirement}"):
        raise InstallError(
            f"PyTorch {getattr(torch, '__version__', '?')} is installed but RepUX needs torch{torchRequirement}; restart Slicer and try again.",
            restartRequired=True,
        )


def _pipInstallWithProgress(slicer: Any, requirements: list[str], requester: str) -> None:
    """Slicer 5.8-5.10: ``slicer.util.pip_install`` one package at a time, under a progress dialog naming the
    package (pip_install blocks and shows nothing; several minutes with no feedback looked like a hang)."""
    util = slicer.util
    app = getattr(slicer, "app", None)
    dialog = None
    if hasattr(util, "createProgressDialog"):
        dialog = util.createProgressDialog(
            value=0, maximum=len(requirements), labelText=f"Installing {requirements[0]}...", windowTitle=f"{requester} - installing Python packages"
        )
    try:
        for index, req in enumerate(requirements):
            text = f"Installing {req} ({index + 1} of {len(requirements)}); this can take a few minutes..."
            logger.info("%s", text)
            if dialog is not None:
                dialog.labelText = text
                dialog.value = index
            if app is not None and hasattr(app, "processEvents"):
                app.processEvents()  # paint the dialog before pip blocks
            noDeps = requirementName(req).lower() in NO_DEPS_PACKAGES
            util.pip_install([req, "--no-deps"] if noDeps else [req])
        if dialog is not None:
            dialog.value = len(requirements)
    finally:
        if dialog is not None:
            dialog.close()


def ensureRequirements(requirementsPath: str | os.PathLike[str], askConfirmation: bool = True, requester: str = "RepUX") -> list[str]:
    """Install the missing packages of ``requirementsPath``; returns what was missing.

    Raises:
        InstallError: the user declined or pip failed.
    """
    requirements = readRequirements(requirementsPath)
    missing = missingRequirements(requirements)
    if not missing:
        return []
    slicer = _slicer()
    packaging = _slicerPackaging(slicer)
    try:
        if packaging is not None and hasattr(packaging, "pip_ensure") and hasattr(packaging, "load_requirements"):
            kwargs: dict[str, Any] = {"requester": requester}
            params = inspect.signature(packaging.pip_ensure).parameters
            if "prompt_install" in params:
                kwargs["prompt_install"] = askConfirmation
            if "skip_in_testing" in params:
                kwargs["skip_in_testing"] = False  # the module test really needs the packages
            if "skip_packages" in params:
                kwargs["skip_packages"] = list(SKIPPED_PACKAGES)
            packaging.pip_ensure(packaging.load_requirements(str(requirementsPath)), **kwargs)
        else:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                f"{requester} needs these Python packages:\n\n" + "\n".join(missing) + "\n\nInstall them now? This can take a few minutes.",
                f"{requester} - install Python packages",
            ):
                raise InstallError(f"{requester} cannot run without: {', '.join(missing)}.")
            _pipInstallWithProgress(slicer, missing, requester)
    except InstallError:
        raise
    except RuntimeError as err:  # pip_ensure raises RuntimeError when the user declines
        raise InstallError(f"{requester} cannot run without: {', '.join(missing)} ({err}).") from err
    except (OSError, subprocess.CalledProcessError) as err:
        raise InstallError(f"installing {', '.join(missing)} failed: {err}") from err
    still = missingRequirements(requirements)
    if still:
        raise InstallError(f"these packages are still missing after the installation: {', '.join(still)}; restart Slicer and try again.", restartRequired=True)
    return missing


def ensureDependencies(requirementsPath: str | os.PathLike[str], askConfirmation: bool = True, requester: str = "RepUX") -> None:
    """PyTorch (PyTorch extension) first, then the requirements file (pip).

    Raises:
        InstallError: see :func:`ensureTorch` and :func:`ensureRequirements`.
    """
    ensureTorch(askConfirmation=askConfirmation)
    ensureRequirements(requirementsPath, askConfirmation=askConfirmation, requester=requester)
