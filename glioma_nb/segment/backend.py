"""Inference backends: the network's forward pass in torch, or in OpenVINO on the CPU.

``segment.backend``: ``torch`` | ``openvino`` | ``auto`` (OpenVINO on the CPU, torch on a GPU). Only the network's
forward pass changes: the sliding window, stitching, mirroring, fold ensembles and post-processing stay ours,
MONAI's and nnU-Net's. :func:`accelerate` wraps a torch module in a :class:`Converted` stand-in that the
existing code calls as it calls the module:

- the module is converted to OpenVINO (``openvino.convert_model``, traced on the first real input) for the input
  shape it is called with, with the tapped signature layers (module names) as extra outputs, so one pass gives
  the logits and the signature; the stand-in hands each tapped output to a forward hook of a stand-in module of
  the same name, so :class:`glioma_nb.segment.window.Hooks` and the taps of every model kind work unchanged;
- an ensemble of fold models (:class:`glioma_nb.segment.models.Ensemble`) is converted member by member (its
  averaging stays in torch);
- each conversion is cached on disk (:func:`glioma_nb.paths.cache_dir` ``/openvino``), keyed by the weights'
  sha256, the input shape, the tapped layers and the OpenVINO version, written to a temporary folder and
  renamed, so concurrent workers never read half a model; and in the process;
- **faithful or not used**: a new conversion is checked against torch on the input that triggered it: every
  output's largest difference relative to the torch output's range must be at most :data:`MAX_RELATIVE`, and
  the argmax (several channels) or the sign of the logit (one channel) may disagree in at most
  :data:`MAX_DISAGREEMENT` of the voxels. A network that fails the check, or does not convert at all, runs in
  torch, and :attr:`Converted.status` says why (the case records and 01's text say so); a refusal is remembered in
  the cache (``<key>.refused.json``), so no later process spends the conversion again.

OpenVINO runs in float32 (``INFERENCE_PRECISION_HINT``: a CPU with bf16 would otherwise run bf16) on as many
threads as torch uses (``torch.get_num_threads()``; pytest workers pin one).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from glioma_nb import paths
from glioma_nb.segment import models
from glioma_nb.segment.errors import SegmentationError

BACKENDS = ("torch", "openvino", "auto")
MAX_RELATIVE = 1e-3        # largest |OpenVINO - torch| / (torch output's max - min), every output
MAX_DISAGREEMENT = 1e-4    # fraction of voxels whose argmax (or logit sign) differs
MAX_SHAPES = 3             # input shapes converted per network (a whole-image inferer sees one per case)
FORMAT = 2                 # the cache's layout; a cache of another format is converted again

_COMPILED: dict[str, tuple[Any, dict[str, Any]]] = {}     # cache key -> (compiled model, its meta), this process
_LOCK = threading.Lock()


def available() -> str:
    """The installed OpenVINO version, or "" when it does not import."""
    try:
        import openvino
    except Exception:   # noqa: BLE001 - any import failure means: not available
        return ""
    return str(openvino.__version__)


def resolve(requested: str, device: str) -> str:
    """The backend a run uses: ``requested`` (torch | openvino | auto) on ``device``."""
    if requested not in BACKENDS:
        raise SegmentationError(f"segment.backend must be one of {list(BACKENDS)}, not {requested!r}")
    if requested == "auto":
        return "openvino" if device == "cpu" and available() else "torch"
    if requested == "openvino":
        if device != "cpu":
            raise SegmentationError(f"segment.backend: openvino runs on the CPU, but project.device is {device}; "
                                    "use segment.backend: auto (torch on a GPU) or project.device: cpu")
        if not available():
            raise SegmentationError("segment.backend: openvino, but openvino does not import; install the pinned "
                                    "requirements (make venv) or use segment.backend: torch")
    return requested


def weights_sha256(net: Any) -> str:
    """sha256 over a module's state dict (names, shapes, dtypes and bytes, in order)."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        a = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(a.shape)}|{a.dtype}|".encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()


class _Tapped:
    """A torch module returning ``(its outputs..., tapped module outputs...)``, for tracing."""

    def __new__(cls, net: Any, names: Sequence[str]) -> Any:
        import torch

        class Tapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net, self.names, self.acts = net, list(names), {}
                mods = dict(net.named_modules())
                self.handles = [mods[n].register_forward_hook(self._hook(n)) for n in self.names]

            def _hook(self, name: str) -> Any:
                def fn(_m: Any, _i: Any, out: Any) -> None:
                    self.acts[name] = out[0] if isinstance(out, (tuple, list)) else out
                return fn

            def forward(self, x: Any) -> Any:
                self.acts = {}
                out = self.net(x)
                self.was_tuple = isinstance(out, (tuple, list))
                items = list(out) if self.was_tuple else [out]
                self.fired = [n for n in self.acts if n in self.names]   # the network's order, as hooks see it
                return tuple(items + [self.acts[n] for n in self.fired])

            def close(self) -> None:
                for h in self.handles:
                    h.remove()

            def fired_order(self) -> list[str]:
                return [n for n in self.acts if n in self.names]

        return Tapped()


def _agreement(ref: Any, got: np.ndarray) -> float:
    """Fraction of voxels whose argmax over channels (one channel: sign) differs."""
    r = np.asarray(ref)
    if r.ndim < 3:
        return 0.0
    if r.shape[1] == 1:
        return float(np.mean((r > 0) != (got > 0)))
    return float(np.mean(r.argmax(1) != got.argmax(1)))


class Converted:
    """A torch module's stand-in that runs it in OpenVINO (see the module docstring); built by :func:`accelerate`."""

    def __new__(cls, net: Any, taps: Sequence[str] = (), label: str = "") -> Any:
        import torch

        class Identity(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                return x

        class ConvertedModule(torch.nn.Module):
            """``net`` in OpenVINO, with forward hooks of ``taps`` (module names) fired by stand-ins."""

            def __init__(self) -> None:
                super().__init__()
                self.__dict__["net"] = net          # not a submodule: its parameters are not this module's
                self.taps, self.label = list(taps), label or type(net).__name__
                self.proxies = {n: Identity() for n in self.taps}
                self.status = ""                    # openvino | torch (<why>)
                self.sha = ""
                self.n_outputs: int | None = None
                self.keys: dict[tuple[int, ...], str] = {}   # input shape -> compiled key ("" = torch)
                self.check: dict[str, float] = {}
                self.fired: list[str] = list(self.taps)      # the tapped layers in the order the network runs them

            def named_modules(self, memo: Any = None, prefix: str = "", remove_duplicate: bool = True) -> Iterator:
                yield prefix, self
                for n, p in self.proxies.items():
                    yield (f"{prefix}.{n}" if prefix else n), p

            def forward(self, x: Any) -> Any:
                shape = tuple(int(s) for s in x.shape)
                key = self.keys.get(shape)
                if key is None or (key and key not in _COMPILED):   # new shape, or a new process (a Dask worker)
                    key = self._prepare(x)
                if not key:
                    return self._torch(x)
                compiled = _COMPILED[key][0]
                res = compiled({0: x.detach().float().contiguous().cpu().numpy()})
                outs = [torch.from_numpy(np.array(res[o])) for o in compiled.outputs]
                k = int(self.n_outputs or 1)
                for n, t in zip(self.fired, outs[k:]):      # in the order the torch network runs them
                    self.proxies[n](t)
                return outs[0] if k == 1 and not self._tuple else tuple(outs[:k])

            _tuple = False

            def _torch(self, x: Any) -> Any:
                """The torch module itself, its tapped layers handed to the stand-ins as OpenVINO's would be."""
                if not self.taps:
                    return self.net(x)
                tapped = _Tapped(self.net, self.taps)
                try:
                    out = tapped.net(x)
                finally:
                    tapped.close()
                for n in tapped.fired_order():
                    self.proxies[n](tapped.acts[n])
                return out

            def _prepare(self, x: Any) -> str:
                shape = tuple(int(s) for s in x.shape)
                if len([k for s, k in self.keys.items() if k and s != shape]) >= MAX_SHAPES:
                    self.keys[shape] = ""
                    self._say(f"torch (more than {MAX_SHAPES} input shapes; a whole-image inferer sees one per case)")
                    return ""
                try:
                    key = _compile(self, x)
                except _NotFaithful as exc:
                    key = ""
                    self._say(f"torch (the OpenVINO conversion differs from torch: {exc})")
                except Exception as exc:   # noqa: BLE001 - any conversion failure falls back to torch, said
                    key = ""
                    first = str(exc).strip().splitlines()
                    why = next((ln for ln in first if "No conversion rule" in ln),
                               first[0] if first else type(exc).__name__)
                    self._say(f"torch (does not convert to OpenVINO: {why.strip()[:200]})")
                else:
                    self._say("openvino")
                self.keys[shape] = key
                return key

            def _say(self, status: str) -> None:
                if status.startswith("torch") or not self.status:
                    self.status = status
                if status.startswith("torch"):
                    import warnings
                    warnings.warn(f"{self.label}: runs in {status}", RuntimeWarning, stacklevel=3)

        return ConvertedModule()


class _NotFaithful(Exception):
    pass


def _cache_key(conv: Any, shape: tuple[int, ...], version: str) -> str:
    text = json.dumps({"sha256": conv.sha, "shape": list(shape), "taps": conv.taps, "openvino": version,
                       "format": FORMAT, "precision": "f32"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cache_root() -> Path:
    return paths.cache_dir() / "openvino"


def _core() -> Any:
    import openvino as ov

    return ov.Core()


def _compile_model(model_or_path: Any) -> Any:
    import torch

    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": max(int(torch.get_num_threads()), 1)}
    return _core().compile_model(model_or_path, "CPU", config)


def _compile(conv: Any, x: Any) -> str:
    """The compiled key of ``conv`` for input ``x``: from this process, the disk cache, or converted now (and
    checked against torch on ``x``)."""
    import torch

    version = available()
    if not version:
        raise RuntimeError("openvino does not import")
    if not conv.sha:
        conv.sha = weights_sha256(conv.net)
    shape = tuple(int(s) for s in x.shape)
    key = _cache_key(conv, shape, version)
    folder = cache_root() / key
    refused = folder.with_name(folder.name + ".refused.json")
    if refused.exists():       # converted before and found to differ: not tried again
        raise _NotFaithful(json.loads(refused.read_text())["why"] + " (remembered from an earlier conversion)")
    with _LOCK:
        if key not in _COMPILED and (folder / "meta.json").exists() and (folder / "model.xml").exists():
            _COMPILED[key] = (_compile_model(str(folder / "model.xml")), json.loads((folder / "meta.json").read_text()))
        if key in _COMPILED:
            meta = _COMPILED[key][1]
            conv.n_outputs, conv._tuple, conv.check, conv.fired = (meta["n_outputs"], meta["tuple"],
                                                                  meta.get("check", {}), meta["fired"])
            return key
    import openvino as ov

    xin = x.detach().float().contiguous().cpu()
    tapped = _Tapped(conv.net, conv.taps)
    try:
        with torch.inference_mode():
            ref = tapped(xin)
        is_tuple, fired = bool(tapped.was_tuple), list(tapped.fired)
        with torch.no_grad():
            model = ov.convert_model(tapped, example_input=xin, input=[shape])
    finally:
        tapped.close()
    n_taps = len(fired)
    n_outputs = len(ref) - n_taps
    try:
        check, compiled = _check(model, ref, xin, fired, n_outputs)
    except _NotFaithful as exc:
        _remember_refusal(refused, str(exc), conv, shape, version)
        raise
    meta = {"n_outputs": n_outputs, "tuple": is_tuple, "shape": list(shape), "taps": conv.taps, "fired": fired,
            "openvino": version, "weights_sha256": conv.sha, "module": conv.label, "check": check}
    _save(model, folder, meta)
    with _LOCK:
        _COMPILED[key] = (compiled, meta)
    conv.n_outputs, conv._tuple, conv.check, conv.fired = n_outputs, is_tuple, check, fired
    return key


def _remember_refusal(path: Path, why: str, conv: Any, shape: tuple[int, ...], version: str) -> None:
    """A conversion that did not match torch, remembered so that no later process spends minutes on it again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"why": why, "weights_sha256": conv.sha, "shape": list(shape), "openvino": version,
                               "module": conv.label}, indent=1))
    tmp.replace(path)


def _check(model: Any, ref: Sequence[Any], xin: Any, fired: list[str], n_outputs: int) -> tuple[dict[str, float], Any]:
    """The compiled model and how far it is from torch's outputs ``ref`` on ``xin``; :class:`_NotFaithful` when
    it is too far (:data:`MAX_RELATIVE`, :data:`MAX_DISAGREEMENT`)."""
    compiled = _compile_model(model)
    res = compiled({0: xin.numpy()})
    got = [np.array(res[o]) for o in compiled.outputs]
    worst = 0.0
    for i, (r, g) in enumerate(zip(ref, got)):
        rn = r.float().numpy()
        span = float(rn.max() - rn.min()) or 1.0
        rel = float(np.abs(rn - g).max()) / span
        worst = max(worst, rel)
        if rel > MAX_RELATIVE:
            name = f"output {i}" if i < n_outputs else f"layer {fired[i - n_outputs]}"
            raise _NotFaithful(f"{name} differs by {rel:.2g} of its range (at most {MAX_RELATIVE:g})")
    dis = _agreement(ref[0].float().numpy(), got[0])
    if dis > MAX_DISAGREEMENT:
        raise _NotFaithful(f"{dis:.2g} of the voxels change class (at most {MAX_DISAGREEMENT:g})")
    return {"max_relative": worst, "disagreement": dis}, compiled


def _save(model: Any, folder: Path, meta: Mapping[str, Any]) -> None:
    """The IR (float32 weights) and its meta.json into ``folder``, whole or not at all."""
    import openvino as ov

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:          # another process saved it first: theirs is the same conversion
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def accelerate(net: Any, taps: Sequence[str] = (), label: str = "") -> Any:
    """``net`` with its forward pass in OpenVINO (see the module docstring): a :class:`Converted` stand-in whose
    modules named ``taps`` fire forward hooks with the layer outputs; an ensemble of fold models member by member
    (the taps, ``members.0.*``, are the first member's)."""
    if models.is_ensemble(net):
        mine = [t.removeprefix("members.0.") for t in taps if t.startswith("members.0.")]
        if len(mine) != len(list(taps)):
            raise SegmentationError(f"{label}: an ensemble's signature layers are its first member's (members.0.*), "
                                    f"not {[t for t in taps if not t.startswith('members.0.')]}")
        members = [Converted(m, mine if i == 0 else (), f"{label} fold {i}") for i, m in enumerate(net.members)]
        return models.Ensemble(members, net.activation)
    return Converted(net, taps, label)


def statuses(net: Any) -> list[str]:
    """What each converted part of ``net`` (a :func:`accelerate` result) ran in: ``openvino`` or ``torch (why)``."""
    parts = list(net.members) if hasattr(net, "members") else [net]
    return [getattr(p, "status", "") for p in parts]


def describe(parts: Sequence[str]) -> str:
    """One line for a record: ``openvino``, ``torch`` or ``torch (why)`` (the first reason)."""
    said = [p for p in parts if p]
    if not said:
        return ""
    fell = [p for p in said if p.startswith("torch")]
    return fell[0] if fell else "openvino"
