"""Helpers of the hardening tests: run code under a file-size limit or with a read-only folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def limited_preexec(limit_bytes: int):
    """preexec_fn: a file-size limit, with SIGXFSZ ignored so that write() fails with EFBIG instead of killing."""

    def pre() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return pre


def run_python(code: str, *, limit_bytes: int | None = None, readonly: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -c code`` (the repository on sys.path); optionally under a file-size limit and/or with ``readonly`` mounted read-only."""
    if sys.platform == "win32":
        pytest.skip("file-size limits and read-only bind mounts are POSIX features")
    cmd = [sys.executable, "-c", code]
    if readonly is not None:
        cmd = readonly_command(cmd, readonly)
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        preexec_fn=limited_preexec(limit_bytes) if limit_bytes else None,
        cwd=str(REPO),
    )


def readonly_command(cmd: list[str], folder: Path) -> list[str]:
    """``cmd`` run with ``folder`` read-only: a read-only bind mount in a private mount namespace (root or user namespaces),
    else (non-root) the folder is made mode 0555; skips when neither is possible."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return cmd
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("running as root without unshare(1): no way to make a read-only folder")
    probe = subprocess.run([unshare, "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("running as root and mount namespaces are not available: no way to make a read-only folder")
    import shlex

    f = shlex.quote(str(folder))
    script = f"mount --bind {f} {f} && mount -o remount,bind,ro {f} && exec " + " ".join(shlex.quote(c) for c in cmd)
    return [unshare, "-rm", "sh", "-c", script]


def one_error_line(stderr: str) -> str:
    """The single ``repux: error:`` line of ``stderr`` (asserts there is exactly one and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("repux: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files left in ``folder`` (recursively)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".part"))


@pytest.fixture(autouse=True)
def restore_repux_logger():
    """main() points the 'repux' logger at the current stderr; give the next test a clean logger."""
    import logging

    log = logging.getLogger("repux")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]
