"""RepUXSegmentLib.dependencies: torch only through the PyTorch extension, the rest through pip_ensure.

Slicer's ``slicer.packaging`` / ``slicer.util.pip_install`` and the PyTorch extension's ``PyTorchUtils``
are replaced by recorders here (nothing is installed); the requirement checks are real.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from RepUXSegmentLib import dependencies as deps

REQUIREMENTS = Path(__file__).resolve().parents[2] / "RepUXSegment" / "Resources" / "requirements.txt"


def test_requirements_file_lists_the_extras_but_never_torch_or_simpleitk():
    reqs = deps.readRequirements(REQUIREMENTS)
    names = {deps.requirementName(r).lower() for r in reqs}
    assert {"monai", "safetensors", "tqdm", "pillow"} <= names
    assert not names & {"torch", "torchvision", "simpleitk", "numpy"}
    # and every requirement is satisfied by the test environment, which mirrors a set-up Slicer
    assert deps.missingRequirements(reqs) == []


def test_requirement_checks():
    assert deps.isSatisfied("numpy>=1.0")
    assert not deps.isSatisfied("numpy>=999")
    assert not deps.isSatisfied("surely-not-installed-package-xyz")
    assert deps.isSatisfied('numpy>=999; python_version < "3.0"')  # marker does not apply
    assert deps.missingRequirements(["numpy>=1", "numpy>=999"]) == ["numpy>=999"]
    assert deps.torchStatus() == "ok"
    with pytest.raises(ValueError, match="not a requirement"):
        deps.requirementName("  >=1.0")


class Recorder:
    def __init__(self, result=None, error=None):
        self.calls = []
        self.result = result
        self.error = error

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def missingMonai(monkeypatch):
    """Pretend monai is missing until something 'installs' it."""
    installed = {"monai": False}
    real = deps.isSatisfied

    def isSatisfied(requirement):
        if deps.requirementName(requirement) == "monai":
            return installed["monai"]
        return real(requirement)

    monkeypatch.setattr(deps, "isSatisfied", isSatisfied)
    return installed


def test_pip_ensure_is_used_with_torch_and_simpleitk_skipped(monkeypatch, missingMonai):
    def pip_ensure(
        requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True, requester=None, skip_in_testing=True, show_progress=True
    ):
        pass

    recorder = Recorder()

    def recordingEnsure(requirements, **kwargs):
        recorder(requirements, **kwargs)
        missingMonai["monai"] = True

    recordingEnsure.__signature__ = inspect.signature(pip_ensure)  # what ensureRequirements inspects
    packaging = SimpleNamespace(pip_ensure=recordingEnsure, load_requirements=lambda path: ["loaded:" + Path(path).name])
    monkeypatch.setattr(deps, "_slicer", lambda: SimpleNamespace(packaging=packaging))

    missing = deps.ensureRequirements(REQUIREMENTS, askConfirmation=False, requester="RepUX")

    assert [deps.requirementName(m) for m in missing] == ["monai"]
    ((args, kwargs),) = recorder.calls
    assert args == (["loaded:requirements.txt"],)
    assert kwargs == {"requester": "RepUX", "prompt_install": False, "skip_in_testing": False, "skip_packages": ["torch", "SimpleITK"]}


def test_declining_the_install_is_an_install_error(monkeypatch, missingMonai):
    packaging = SimpleNamespace(pip_ensure=Recorder(error=RuntimeError("User declined package installation")), load_requirements=lambda path: [])
    monkeypatch.setattr(deps, "_slicer", lambda: SimpleNamespace(packaging=packaging))
    with pytest.raises(deps.InstallError, match="cannot run without: monai"):
        deps.ensureRequirements(REQUIREMENTS)


def test_old_slicer_falls_back_to_pip_install_without_pulling_torch(monkeypatch, missingMonai):
    pipInstall = Recorder()
    confirm = Recorder(result=True)

    def install(args):
        pipInstall(args)
        missingMonai["monai"] = True

    util = SimpleNamespace(pip_install=install, confirmOkCancelDisplay=confirm)
    monkeypatch.setattr(deps, "_slicer", lambda: SimpleNamespace(util=util))

    deps.ensureRequirements(REQUIREMENTS, askConfirmation=True)

    assert len(confirm.calls) == 1 and "monai" in confirm.calls[0][0][0]
    assert pipInstall.calls == [((["monai>=1.3", "--no-deps"],), {})]

    missingMonai["monai"] = False
    confirm.result = False
    with pytest.raises(deps.InstallError, match="cannot run without"):
        deps.ensureRequirements(REQUIREMENTS, askConfirmation=True)
    assert len(pipInstall.calls) == 1


def test_torch_comes_from_the_pytorch_extension(monkeypatch):
    monkeypatch.setattr(deps, "isSatisfied", lambda requirement: not requirement.startswith("torch"))
    installTorch = Recorder(result=None)
    fakeExtension = SimpleNamespace(PyTorchUtilsLogic=lambda: SimpleNamespace(installTorch=installTorch))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", fakeExtension)

    with pytest.raises(deps.InstallError, match="PyTorch is required"):
        deps.ensureTorch(askConfirmation=True)
    assert installTorch.calls == [((), {"askConfirmation": True, "torchVersionRequirement": ">=2.1"})]

    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # extension not installed
    with pytest.raises(deps.InstallError, match="'PyTorch' extension"):
        deps.ensureTorch()


def test_nothing_happens_when_everything_is_installed(monkeypatch):
    monkeypatch.setattr(deps, "_slicer", lambda: pytest.fail("Slicer must not be asked to install anything"))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    deps.ensureDependencies(REQUIREMENTS)


def test_a_fresh_slicer_session_imports_slicer_packaging_before_pip_ensure(tmp_path, monkeypatch, missingMonai):
    """In a fresh Slicer, ``slicer.packaging`` exists as a module but is no attribute of ``slicer`` until imported."""
    import types

    slicer = pytest.importorskip("slicer")
    assert "slicer.packaging" not in sys.modules and not hasattr(slicer, "packaging")
    folder = tmp_path / "slicer-packaging"
    folder.mkdir()
    (folder / "packaging.py").write_text(
        "import sys\n"
        "calls = []\n"
        "def load_requirements(path):\n    return ['loaded']\n"
        "def pip_ensure(requirements, skip_packages=None, prompt_install=True, requester=None, skip_in_testing=True):\n"
        "    calls.append((requirements, skip_packages, requester))\n"
        "    sys.modules['repux_test_install_hook'].installed()\n"
    )
    monkeypatch.setattr(slicer, "__path__", [*slicer.__path__, str(folder)])  # like Slicer's lib/Python/slicer folder
    monkeypatch.setitem(sys.modules, "repux_test_install_hook", types.SimpleNamespace(installed=lambda: missingMonai.__setitem__("monai", True)))
    monkeypatch.setattr(deps, "_slicer", lambda: slicer)
    try:
        missing = deps.ensureRequirements(REQUIREMENTS, askConfirmation=False, requester="RepUX")
        assert [deps.requirementName(m) for m in missing] == ["monai"]
        assert sys.modules["slicer.packaging"].calls == [(["loaded"], ["torch", "SimpleITK"], "RepUX")]
    finally:
        sys.modules.pop("slicer.packaging", None)
        if hasattr(slicer, "packaging"):
            delattr(slicer, "packaging")


def test_slicer_5_8_to_5_10_fallback_shows_which_package_it_installs(monkeypatch):
    """Slicer 5.8 and 5.10 have no slicer.packaging (it came with 5.12): the fallback confirms, then installs one package at
    a time under a progress dialog naming it (issue 23, 9)."""
    monkeypatch.setattr(
        deps, "isSatisfied", lambda requirement: deps.requirementName(requirement) not in ("monai", "tqdm") or installed.get(requirement, False)
    )
    installed, events = {}, []

    class Dialog:
        def __init__(self, **kwargs):
            events.append(("open", kwargs["maximum"]))

        def __setattr__(self, name, value):
            events.append((name, value))

        def close(self):
            events.append(("close",))

    def pipInstall(args):
        events.append(("pip", args[0]))
        installed[args[0]] = True

    util = SimpleNamespace(pip_install=pipInstall, confirmOkCancelDisplay=lambda *args: True, createProgressDialog=lambda **kwargs: Dialog(**kwargs))
    app = SimpleNamespace(processEvents=lambda: events.append(("paint",)))
    monkeypatch.setattr(deps, "_slicer", lambda: SimpleNamespace(util=util, app=app))  # no packaging attribute, none importable

    deps.ensureRequirements(REQUIREMENTS, askConfirmation=True)

    assert events[0] == ("open", 2) and events[-1] == ("close",)
    labels = [e[1] for e in events if e[0] == "labelText"]
    assert labels == [
        "Installing monai>=1.3 (1 of 2); this can take a few minutes...",
        "Installing tqdm>=4.60 (2 of 2); this can take a few minutes...",
    ]
    assert [e[1] for e in events if e[0] == "pip"] == ["monai>=1.3", "tqdm>=4.60"]
    assert events.index(("paint",)) < events.index(("pip", "monai>=1.3"))  # the dialog is painted before pip blocks
    source = Path(deps.__file__).read_text() + REQUIREMENTS.read_text()
    assert "5.12" in source and ">= 5.10" not in source and "< 5.10" not in source
