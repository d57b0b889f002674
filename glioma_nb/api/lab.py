"""JupyterLab on the project (``glioma-nb lab``, ``make lab``)."""
from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from glioma_nb import paths


def lab_argv(port: int = 8888, ip: str = "127.0.0.1", token: str = "", root_dir: Path | None = None,
             browser: bool | None = None) -> list[str]:
    """The ``jupyter lab`` command line of ``make lab``: the server's root is the project (notebooks and run
    folders both reachable), it opens on ``notebooks/``, runs as root where a container makes you root
    (``--allow-root``), and uses this environment's Python for its kernels. ``browser=None`` opens one
    only when not root (containers have none)."""
    root = Path(root_dir or paths.project_root()).resolve()
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    argv = [str(Path(sys.executable).with_name("jupyter")), "lab", f"--ServerApp.root_dir={root}",
            "--LabApp.default_url=/lab/tree/notebooks" if (root / "notebooks").is_dir() else "--LabApp.default_url=/lab",
            f"--ServerApp.ip={ip}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}"]
    if is_root:
        argv.append("--allow-root")
    if not (browser if browser is not None else not is_root):
        argv.append("--no-browser")
    return argv


def lab(port: int = 8888, ip: str = "127.0.0.1", browser: bool | None = None) -> None:
    """``glioma-nb lab`` (``make lab``): print the URL with its token, then become the JupyterLab server."""
    token = os.environ.get("GLIOMA_NB_LAB_TOKEN") or secrets.token_hex(24)
    argv = lab_argv(port, ip, token, browser=browser)
    host = "127.0.0.1" if ip in ("0.0.0.0", "::", "") else ip
    print(f"JupyterLab on {paths.display_path(paths.notebooks_dir())} (run folders under reports/):\n"
          f"    http://{host}:{port}/lab/tree/notebooks?token={token}\n"
          "Open a numbered notebook and Run All: it builds on the latest completed run of its cohort "
          "(parameters cell: upstream). Stop with Ctrl-C twice.", flush=True)
    os.execv(argv[0], argv)
