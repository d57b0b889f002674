"""The OpenVINO backend (glioma_nb.segment.backend): the same outputs and signature layers as torch, conversions
cached by weights and shape, and torch whenever a network does not convert or does not match."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from glioma_nb.segment import backend, models, window


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIOMA_NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backend, "_COMPILED", {})


def _unet(seed: int = 0, out: int = 3):
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(3, 4, out, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()


def _taps(net):
    from glioma_nb.segment.kinds.base import monai_stages

    return monai_stages(net)


def _run(net, x, stages):
    hooks = window.Hooks(net, stages)
    try:
        with torch.inference_mode():
            out = net(x)
        return out, {s: a.clone() for s, a in hooks.acts.items()}
    finally:
        hooks.close()


def test_resolve_picks_openvino_on_the_cpu_and_refuses_it_elsewhere():
    assert backend.available()
    assert backend.resolve("auto", "cpu") == "openvino"
    assert backend.resolve("auto", "cuda") == "torch"
    assert backend.resolve("torch", "cpu") == "torch"
    with pytest.raises(Exception, match="runs on the CPU"):
        backend.resolve("openvino", "cuda")
    with pytest.raises(Exception, match="segment.backend must be one of"):
        backend.resolve("onnx", "cpu")


def test_a_converted_unet_gives_torchs_logits_and_tapped_layers_and_is_cached(tmp_path, monkeypatch):
    net = _unet()
    stages = _taps(net)
    x = torch.randn(1, 4, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    ref, ref_acts = _run(net, x, stages)
    conv = backend.accelerate(net, list(stages.values()), "toy")
    got, acts = _run(conv, x, stages)
    assert conv.status == "openvino"
    assert set(acts) == set(stages) == set(ref_acts)
    span = float(ref.max() - ref.min())
    assert float((got - ref).abs().max()) <= 1e-4 * span
    assert np.mean(got.argmax(1).numpy() != ref.argmax(1).numpy()) <= 1e-4
    for s in stages:
        assert acts[s].shape == ref_acts[s].shape
        assert float((acts[s] - ref_acts[s]).abs().max()) <= 1e-4 * float(ref_acts[s].abs().max())
    # on disk: the IR and what it was checked against, keyed by the weights' sha256
    [folder] = [p for p in backend.cache_root().iterdir() if not p.name.startswith(".")]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["weights_sha256"] == backend.weights_sha256(net) and meta["shape"] == [1, 4, 32, 32, 32]
    assert meta["check"]["max_relative"] <= backend.MAX_RELATIVE and (folder / "model.bin").exists()

    # a new process (nothing compiled in memory) converts nothing: it reads the cache
    monkeypatch.setattr(backend, "_COMPILED", {})
    import openvino

    with monkeypatch.context() as m:
        m.setattr(openvino, "convert_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("converted")))
        again, _ = _run(backend.accelerate(net, list(stages.values()), "toy"), x, stages)
    assert torch.equal(again, got)
    # other weights are another conversion, never the cached one
    other = _unet(seed=5)
    out_other, _ = _run(backend.accelerate(other, [], "other"), x, {})
    ref_other, _ = _run(other, x, {})
    assert float((out_other - ref_other).abs().max()) <= 1e-4 * float(ref_other.max() - ref_other.min())
    assert len([p for p in backend.cache_root().iterdir() if not p.name.startswith(".")]) == 2


def test_an_ensemble_runs_member_by_member_with_the_first_members_layers():
    members = [_unet(seed=s) for s in (0, 1)]
    ens = models.Ensemble(members, "sigmoid").eval()
    stages = {s: f"members.0.{m}" for s, m in _taps(members[0]).items()}
    x = torch.randn(1, 4, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    ref, ref_acts = _run(ens, x, stages)
    conv = backend.accelerate(ens, list(stages.values()), "ens")
    got, acts = _run(conv, x, stages)
    assert backend.statuses(conv) == ["openvino", "openvino"]
    assert np.mean((got > 0).numpy() != (ref > 0).numpy()) <= 1e-4
    assert set(acts) == set(stages)
    for s in stages:
        assert float((acts[s] - ref_acts[s]).abs().max()) <= 1e-4 * float(ref_acts[s].abs().max())


def test_a_network_that_does_not_convert_runs_in_torch_and_says_why():
    class Logit(torch.nn.Module):          # aten::logit has no OpenVINO conversion rule
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

        def forward(self, x):
            return torch.logit(torch.sigmoid(self.conv(x)).clamp(1e-6, 1 - 1e-6))

    net = Logit().eval()
    x = torch.randn(1, 1, 8, 8, 8)
    conv = backend.accelerate(net, [], "logit net")
    with pytest.warns(RuntimeWarning, match="logit net: runs in torch"):
        with torch.inference_mode():
            got = conv(x)
    with torch.inference_mode():
        assert torch.equal(got, net(x))
    assert conv.status.startswith("torch (does not convert to OpenVINO")
    assert backend.describe(backend.statuses(conv)) == conv.status
    assert not backend.cache_root().exists() or not any(backend.cache_root().iterdir())


def test_a_conversion_that_differs_from_torch_is_not_used(monkeypatch):
    """torch runs instead, and its tapped layers still reach the signature's hooks."""
    monkeypatch.setattr(backend, "MAX_RELATIVE", -1.0)      # no conversion can pass: it must not be used
    net = _unet()
    stages = _taps(net)
    x = torch.randn(1, 4, 32, 32, 32)
    conv = backend.accelerate(net, list(stages.values()), "strict")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, acts = _run(conv, x, stages)
    ref, ref_acts = _run(net, x, stages)
    assert torch.equal(got, ref)
    assert set(acts) == set(stages) and all(torch.equal(acts[s], ref_acts[s]) for s in stages)
    assert conv.status.startswith("torch (the OpenVINO conversion differs from torch")
    # no model is cached, only the refusal: a later process does not spend the conversion again
    assert [p.name.endswith(".refused.json") for p in backend.cache_root().iterdir()] == [True]
    import openvino

    monkeypatch.setattr(backend, "_COMPILED", {})
    with monkeypatch.context() as m:
        m.setattr(openvino, "convert_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("converted")))
        again = backend.accelerate(net, list(stages.values()), "strict")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _run(again, x, stages)
    assert "remembered from an earlier conversion" in again.status
