"""The installed environment is whole: every pinned package imports (a broken binary wheel fails here, not
for a user), torchvision imports beside the CPU torch (tools/torchvision_pyonly.py), and nnU-Net's trainer-class
search reaches trainer variants (it imports primus_trainers -> timm -> torchvision on the way)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

from glioma_nb import paths

# Pinned but not importable, each with the reason; nothing else may fail to import.
DEAD = {"unittest2": "a Python 2 backport (collections.MutableMapping) that batchgenerators 0.25.5 declares "
                     "and no installed package imports",
        "adbc_driver_duckdb": "duckdb 1.5.6's optional ADBC driver module (needs adbc-driver-manager); idc-index "
                              "and glioma-nb use duckdb itself, which imports"}

IMPORT_ALL = r"""
import importlib, importlib.metadata as md, json, re, sys, warnings
warnings.simplefilter("ignore")
top = {}
for mod, dists in md.packages_distributions().items():
    for d in dists:
        top.setdefault(re.sub(r"[-_.]+", "-", d).lower(), set()).add(mod)
checked, failed, missing = [], {}, []
for name in json.loads(sys.argv[1]):
    mods = sorted(m for m in top.get(re.sub(r"[-_.]+", "-", name).lower(), ()) if not m.startswith("__"))
    if not mods:
        missing.append(name)
    for m in mods:
        checked.append(m)
        try:
            importlib.import_module(m)
        except BaseException as e:
            failed[m] = f"{name}: {type(e).__name__}: {e}"
print(json.dumps({"checked": checked, "failed": failed, "missing": missing}))
"""


def pinned() -> list[str]:
    root = paths.project_root()
    names = []
    for f in ("requirements.txt", "requirements-data.txt"):
        names += re.findall(r"^([A-Za-z0-9_.\-]+)==", (root / f).read_text(), flags=re.M)
    return names


def test_every_pinned_package_imports_in_a_fresh_interpreter():
    names = pinned()
    assert len(names) > 150 and "torchvision" in names and "fire" in names
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL, json.dumps(names)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not out["missing"], f"pinned but not installed (or no top-level module): {out['missing']}"
    assert len(out["checked"]) >= len(names)
    failed = {m: why for m, why in out["failed"].items() if m not in DEAD}
    assert not failed, "pinned packages that do not import:\n" + "\n".join(f"  {m}: {w}" for m, w in failed.items())
    assert set(DEAD) <= set(out["failed"]), "a package listed as dead imports now: take it out of DEAD"


def test_torchvision_and_nnunet_trainer_variants_load():
    code = """
import torch, torchvision, timm
from torchvision.ops.misc import FrozenBatchNorm2d
import nnunetv2
from os.path import join
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
found = [recursive_find_python_class(join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), n,
                                     "nnunetv2.training.nnUNetTrainer").__name__
         for n in ("nnUNetTrainer_1epoch", "nnUNetTrainerNoMirroring", "nnUNetTrainer_250epochs", "nnUNetTrainer")]
print(torchvision.__version__, torch.version.cuda, torchvision.extension._has_ops(), *found)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    version, cuda, has_ops, *found = r.stdout.split()
    assert found == ["nnUNetTrainer_1epoch", "nnUNetTrainerNoMirroring", "nnUNetTrainer_250epochs", "nnUNetTrainer"]
    if cuda == "None":    # the CPU torch: the +pyonly rebuild, whose C++ ops are left out on purpose
        assert version.endswith("+pyonly") and has_ops == "False"
