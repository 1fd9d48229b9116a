"""A launcher-shaped interpreter for tests: what ``PythonSlicer`` is in an installed Slicer.

``PythonSlicer`` is a CTKAppLauncher: it starts ``python-real`` as *its child* (a QProcess),
forwards stdin, stdout and stderr, exits with the child's exit code, and has no SIGTERM
handler - SIGTERM kills the launcher and is not forwarded.  :func:`makeLauncher` writes a
small executable with that shape, to be passed as ``pythonExecutable`` to the RepUX jobs.
Every child pid is appended to ``<launcher>.pids`` so tests can check that nothing is left.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

_SCRIPT = '''#!{python}
# launcher-shaped interpreter (tests): child = the real Python; stdin pumped to it; stdout/stderr
# inherited; SIGTERM keeps its default action (the launcher dies, the child is not told)
import os, subprocess, sys, threading
child = subprocess.Popen([{python!r}, *sys.argv[1:]], stdin=subprocess.PIPE)
with open({pids!r}, "a") as f:
    f.write(f"{{child.pid}}\\n")

def pump():
    try:
        while True:
            data = os.read(0, 4096)
            if not data:
                break
            child.stdin.write(data)
            child.stdin.flush()
    except OSError:
        pass
    try:
        child.stdin.close()
    except OSError:
        pass

threading.Thread(target=pump, daemon=True).start()
sys.exit(child.wait())
'''


def makeLauncher(folder: str | os.PathLike[str], name: str = "PythonLauncher") -> str:
    """Write the launcher executable in ``folder``; return its path."""
    path = Path(folder) / name
    path.write_text(_SCRIPT.format(python=sys.executable, pids=str(path) + ".pids"))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def launchedPids(launcher: str) -> list[int]:
    """The pids of the real interpreters the launcher started."""
    pids = Path(launcher + ".pids")
    return [int(line) for line in pids.read_text().split()] if pids.is_file() else []


def pidAlive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
