"""Make torchvision importable next to a CPU-only torch (run by ``make venv`` after the pinned install).

Why: the registry's torchvision wheels for Linux x86_64 are CUDA builds whose C++ extension ``_C.so`` links
``libtorch_cuda.so``. Next to the CPU torch wheel that extension cannot load. torchvision then still imports
(``extension._has_ops()`` is False) except for two fake-kernel registrations in ``_meta_registrations.py``
that are not guarded by ``_has_ops()`` (``torchvision::nms`` and ``torchvision::qnms``), so ``import
torchvision`` raises ``RuntimeError: operator torchvision::nms does not exist`` (pytorch/vision#9085). Every
package importing it fails with it: timm, hence dynamic_network_architectures' Primus, hence nnU-Net's
trainer-class search, which imports ``primus_trainers`` on its way to any trainer variant.

What: when ``import torchvision`` fails in this way and torch is a CPU build, rebuild the same release from
the registry's own wheel as ``<version>+pyonly``: the two registrations guarded like the others, the
CUDA-linked binaries (``_C.so``, ``image.so``, ``torchvision.libs``) left out, RECORD rewritten, and
install it in place (``--no-deps``). Its Python API (transforms, models, datasets, ``ops.misc``) works; the
C++ ops (``torchvision.ops.nms``, ``roi_align``, ``deform_conv2d``, ``torchvision.io.decode_jpeg``) raise
torchvision's own "Couldn't load custom C++ ops" when called. glioma-nb calls none of them.
``torchvision==X`` in requirements.txt still matches ``X+pyonly`` (PEP 440 ignores the local label).

Where torchvision imports as installed (a CUDA torch on a GPU machine, or a matching build), this does
nothing. Usage: ``python tools/torchvision_pyonly.py`` with the environment's own Python.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

LOCAL = "pyonly"
GUARD = '''

def _register_fake_if_ops(qualname):
    """torch.library.register_fake when torchvision's C++ ops are loaded, else a no-op (glioma-nb +pyonly
    build: the C++ extension of this wheel is left out because it links a CUDA torch)."""
    def wrapper(fn):
        if torchvision.extension._has_ops():
            return torch.library.register_fake(qualname)(fn)
        return fn
    return wrapper
'''
UNGUARDED = re.compile(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)$', re.M)
DROP = re.compile(r"^(torchvision/_C\.so|torchvision/image\.so|torchvision\.libs/.*)$")


def imports() -> tuple[bool, str]:
    """Whether ``import torchvision`` works in a fresh interpreter (and the last line of its error)."""
    r = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    return r.returncode == 0, (r.stderr.strip().splitlines() or [""])[-1]


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def rebuild(wheel: Path, out_dir: Path) -> Path:
    """The ``+pyonly`` wheel of the registry wheel ``wheel`` (see the module docstring)."""
    version = wheel.name.split("-")[1]
    public = version.split("+")[0]
    new_version = f"{public}+{LOCAL}"
    old_info, new_info = f"torchvision-{version}.dist-info", f"torchvision-{new_version}.dist-info"
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if DROP.match(name) or name == f"{old_info}/RECORD":
                continue
            files[name.replace(old_info, new_info, 1)] = z.read(name)
    meta_reg = "torchvision/_meta_registrations.py"
    text = files[meta_reg].decode()
    found = UNGUARDED.findall(text)
    if sorted(found) != ['"torchvision::nms"', '"torchvision::qnms"']:
        raise SystemExit(f"{wheel.name}: expected the unguarded nms/qnms registrations in {meta_reg}, found {found}; "
                         "this release needs another fix (see tools/torchvision_pyonly.py)")
    text = UNGUARDED.sub(r"@_register_fake_if_ops(\1)", text)
    text = text.replace("import torchvision.extension  # noqa: F401\n",
                        "import torchvision.extension  # noqa: F401\n" + GUARD, 1)
    files[meta_reg] = text.encode()
    files["torchvision/version.py"] = re.sub(rb"__version__ = '[^']*'", f"__version__ = '{new_version}'".encode(),
                                             files["torchvision/version.py"])
    meta = f"{new_info}/METADATA"
    files[meta] = re.sub(rb"^Version: .*$", f"Version: {new_version}".encode(), files[meta], count=1, flags=re.M)
    record = io.StringIO()
    w = csv.writer(record, lineterminator="\n")
    for name, data in files.items():
        w.writerow([name, _hash(data), len(data)])
    w.writerow([f"{new_info}/RECORD", "", ""])
    files[f"{new_info}/RECORD"] = record.getvalue().encode()
    out = out_dir / wheel.name.replace(version, new_version, 1)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out


def main() -> int:
    ok, err = imports()
    if ok:
        print("torchvision imports as installed; nothing to do")
        return 0
    import torch

    version = metadata.version("torchvision")
    if torch.version.cuda is not None or "torchvision::nms does not exist" not in err:
        print(f"import torchvision fails ({err}) with torch {torch.__version__}; this is not the CPU-torch case "
              "tools/torchvision_pyonly.py repairs: install the torchvision build matching your torch", file=sys.stderr)
        return 1
    public = version.split("+")[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "-d", str(tmp / "dl"), f"torchvision=={public}"], check=True)
        wheel = next((tmp / "dl").glob("torchvision-*.whl"))
        (tmp / "out").mkdir()
        built = rebuild(wheel, tmp / "out")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(built)],
                       check=True)
    ok, err = imports()
    if not ok:
        print(f"torchvision {public}+{LOCAL} still does not import: {err}", file=sys.stderr)
        return 1
    print(f"torchvision {version} (CUDA build) replaced by {public}+{LOCAL}: Python API only, C++ ops left out "
          "(they link a CUDA torch; see tools/torchvision_pyonly.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
