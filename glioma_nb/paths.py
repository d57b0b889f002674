"""Project locations, overridable by environment variables (nnU-Net style).

``GLIOMA_NB_HOME``    project root (default: the folder above this package)
``GLIOMA_NB_SHARED``  shared real data (default: ``<home>/../shared/data``)
``GLIOMA_NB_DATA``    generated data such as the synthetic cohort (default: ``<home>/data``)
``GLIOMA_NB_REPORTS`` run folders (default: ``run.reports_dir`` of the config, relative to home)
``GLIOMA_NB_CACHE``   derived files worth keeping between runs, such as converted networks (default:
                      ``$XDG_CACHE_HOME/glioma-nb``, else ``~/.cache/glioma-nb``)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_PKG_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """Root of the project (the folder holding ``configs/`` and ``notebooks/``)."""
    env = os.environ.get("GLIOMA_NB_HOME")
    return Path(env).resolve() if env else _PKG_DIR.parent


def configs_dir() -> Path:
    return project_root() / "configs"


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def shared_data_dir() -> Path:
    env = os.environ.get("GLIOMA_NB_SHARED")
    return Path(env).resolve() if env else (project_root().parent / "shared" / "data").resolve()


def data_dir() -> Path:
    env = os.environ.get("GLIOMA_NB_DATA")
    return Path(env).resolve() if env else project_root() / "data"


def cache_dir() -> Path:
    env = os.environ.get("GLIOMA_NB_CACHE")
    if env:
        return Path(env).resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "glioma-nb"


def reports_dir(configured: str | None = None) -> Path:
    env = os.environ.get("GLIOMA_NB_REPORTS")
    if env:
        return Path(env).resolve()
    return resolve_path(configured or "reports")


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")

# Defaults for variables used in cohort files, so they work with no environment set.
_DEFAULTS = {
    "GLIOMA_NB_SHARED": lambda: str(shared_data_dir()),
    "GLIOMA_NB_DATA": lambda: str(data_dir()),
}


def expand(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in ``text``.

    ``GLIOMA_NB_SHARED`` and ``GLIOMA_NB_DATA`` fall back to the project defaults when unset.
    """

    def sub(m: re.Match[str]) -> str:
        name, default = m.group("name"), m.group("default")
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        if name in _DEFAULTS:
            return _DEFAULTS[name]()
        raise KeyError(f"environment variable {name} is not set (used in {text!r}); export it or give a default")

    return _VAR.sub(sub, text)


def resolve_path(text: str | os.PathLike[str], base: Path | None = None) -> Path:
    """Expand variables and make ``text`` absolute (relative to ``base``, default the project root)."""
    p = Path(expand(str(text))).expanduser()
    if not p.is_absolute():
        p = (base or project_root()) / p
    return p.resolve()


def terminal_path(path: str | os.PathLike[str]) -> str:
    """A path as a message on the user's own terminal shows it: relative to the working folder when under it,
    else absolute (reports and shared records use :func:`display_path`, which never shows a local path)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as it may appear in a shared report: relative to a known root, never absolute."""
    p = Path(path).resolve()
    for label, root in (("<shared>", shared_data_dir()), ("<data>", data_dir()), (".", project_root()),
                        ("<reports>", reports_dir())):
        try:
            rel = p.relative_to(root)
        except ValueError:
            continue
        return str(rel) if label == "." else (label if rel == Path(".") else f"{label}/{rel}")
    return f"<external>/{p.name}"
