"""Provenance: git state, run ids, software/hardware versions and input file hashes."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from glioma_nb import paths

TRACKED_PACKAGES = ("glioma-nb", "torch", "monai", "numpy", "scipy", "pandas", "nibabel", "nilearn",
                    "scikit-learn", "scikit-survival", "lifelines", "SimpleITK", "pyradiomics-bhklab",
                    "papermill", "nbconvert", "matplotlib", "seaborn")


def git_info(root: Path | None = None) -> dict[str, Any]:
    """Commit, short sha, branch and dirty flag of the project (``unknown`` outside a git checkout)."""
    root = root or paths.project_root()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        short = git("rev-parse", "--short=7", "HEAD")
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
        # reports/ and data/ are git-ignored, so runs never make the tree dirty themselves
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"commit": "unknown", "short": "nogit", "branch": None, "dirty": True}
    return {"commit": commit, "short": short, "branch": branch, "dirty": dirty}


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def make_run_id(git: dict[str, Any] | None = None, when: _dt.datetime | None = None) -> str:
    """``<UTC time>_<git short sha>[-dirty]``, e.g. ``20261122T101500Z_ab12cd3-dirty``."""
    git = git or git_info()
    when = when or utc_now()
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}_{git['short']}{'-dirty' if git['dirty'] else ''}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_inputs(files: Iterable[Path], known: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{display path: sha256}`` of input files (display paths never leak local folders); ``known``: absolute
    path -> sha256 already computed (an IDC download records them), not read again."""
    known = known or {}
    files = sorted(set(map(Path, files)))
    return {key: known.get(str(f.resolve())) or sha256_file(f) for key, f in zip(_unique_keys(files), files)}


def _unique_keys(files: list[Path]) -> list[str]:
    """Display paths, made unique: a file outside the known roots shows as ``<external>/<name>``, so two scans'
    ``003_0000.dcm`` would share a key; such keys take as many parent folders as it takes to tell them apart."""
    keys = [paths.display_path(f) for f in files]
    depth = 1
    while True:
        seen: dict[str, int] = {}
        for k in keys:
            seen[k] = seen.get(k, 0) + 1
        clash = [i for i, k in enumerate(keys) if seen[k] > 1 and k.startswith("<external>/")]
        if not clash or depth > 64:
            return keys
        depth += 1
        for i in clash:
            parts = files[i].resolve().parts[1:]
            keys[i] = "<external>/" + "/".join(parts[-depth:])


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def environment() -> dict[str, Any]:
    """Python, platform, packages, CUDA and GPU facts for the manifest."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                           "machine": platform.machine(), "packages": package_versions()}
    try:
        import torch

        env["torch_cuda_available"] = bool(torch.cuda.is_available())
        env["cuda_version"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a pinned dependency
        env["torch_cuda_available"] = False
    return env


def requirements_lock() -> str:
    """Every installed distribution as ``name==version`` lines, sorted (what ``pip freeze`` lists, read from the
    environment's metadata without running pip): the run's environment, recorded when the run is created."""
    from importlib import metadata

    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "".join(f"{line}\n" for _, line in sorted(seen.items()))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, default=_json_default, sort_keys=False, allow_nan=False))
    tmp.replace(path)


def _finite(obj: Any) -> Any:
    """NaN/inf become null so the JSON is standard (a NaN metric means "not estimable")."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    try:
        import numpy as np

        if isinstance(obj, np.floating):
            return _finite(float(obj))
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.ndarray):
            return _finite(obj.tolist())
    except ImportError:  # pragma: no cover
        pass
    return obj


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, (Path, _dt.datetime)):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
