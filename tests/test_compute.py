"""The executors of compute.executor: serial, a 2-worker LocalCluster; same results, failures named, dead workers."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import json

import cloudpickle
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from glioma_nb import compute, config, io, runner, taps
from glioma_nb.config import ConfigError
from glioma_nb.segment import infer, registry
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.signature import handcrafted

from conftest import write_brats_cohort

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the workers cannot import this test module


def _square(x, *, offset=0):
    if x == 3:
        raise ValueError("three is not allowed\nsecond line of the fix")
    return x * x + offset


def _die(x):
    if x == "b":
        os._exit(1)     # the worker process dies, as under the OOM killer
    return x.upper()


def test_executor_spec_is_parsed_or_refused_with_the_forms():
    assert compute.parse("serial") == ("serial", "")
    assert compute.parse("local:4") == ("local", "4")
    assert compute.parse("dask:tcp://10.0.0.5:8786") == ("dask", "tcp://10.0.0.5:8786")
    assert compute.parse("slurm") == ("slurm", "")
    for bad in ("local", "local:0", "local:two", "dask:", "spark", "serial:2"):
        with pytest.raises(ConfigError, match="local:N"):
            compute.parse(bad)
    with pytest.raises(ConfigError, match="compute.executor 'threads'"):
        runner.create_run("synthetic", ["compute.executor=threads"], progress=False)


def test_slurm_workers_are_jobs_with_the_configured_resources():
    cfg = config.resolve_config("synthetic", ["compute.executor=slurm", "compute.slurm.queue=gpu",
                                              "compute.slurm.account=lab1", "compute.slurm.cores=8",
                                              "compute.slurm.memory=32GB", "compute.slurm.walltime='01:30:00'",
                                              "compute.slurm.job_extra_directives=['--gres=gpu:1']"])
    with compute.Executor.from_config(cfg) as ex:
        script = ex.slurm_cluster(scale=False).job_script()     # no sbatch here: the script each job would get
    for line in ("#SBATCH -p gpu", "#SBATCH -A lab1", "#SBATCH --cpus-per-task=8", "#SBATCH -t 01:30:00",
                 "#SBATCH --gres=gpu:1"):
        assert line in script, script
    assert "#SBATCH --mem=30G" in script and "distributed.cli.dask_worker" in script


@pytest.mark.parametrize("spec", ["serial", "local:2"])
def test_map_keeps_the_order_and_names_a_failed_item(spec):
    with compute.Executor(spec) as ex:
        res = ex.map(_square, [4, 1, 3, 2], progress=False, offset=1)
    assert list(res.values.items()) == [(4, 17), (1, 2), (2, 5)]
    assert list(res.errors) == [3] and res.errors[3].startswith("ValueError: three is not allowed")
    with pytest.raises(RuntimeError, match=r"1 of 4 case\(s\) failed \(3\)[\s\S]*second line of the fix"):
        res.raise_errors("squares")


def test_a_dead_worker_loses_only_its_item():
    with compute.Executor("local:2", worker_failures=0) as ex:
        res = ex.map(_die, ["a", "b", "c", "d"], progress=False)
    assert res.values == {"a": "A", "c": "C", "d": "D"}
    assert "worker process died" in res.errors["b"]


def _executing(dask_worker):
    return [str(ts.key) for ts in dask_worker.state.executing]


def _kill_when_running(client, index: int, done: threading.Event, killed: list) -> None:
    """SIGKILL the worker process that is executing map item ``index`` (task key ``<desc>-<run>-<index>-0``)."""
    pids = client.run(os.getpid)
    while not done.is_set():
        for addr, keys in client.run(_executing).items():
            if any(k.endswith(f"-{index}-0") for k in keys):
                os.kill(pids[addr], signal.SIGKILL)
                killed.append(addr)
                return
        time.sleep(0.02)


def test_a_2_worker_local_cluster_gives_the_serial_tables_and_a_killed_case_is_redone(tmp_path):
    """01 (masks, volumes, the shipped brats-4mod's network signature with its perturbations) and 02 (PyRadiomics
    with a noise re-extraction) of a small synthetic cohort (3 cases with a sphere tumour), serially and on a
    LocalCluster of 2 workers: the same tables. One worker is killed while it holds a case: that case alone
    is reported, by name, and a second call (what --resume does with masks/) redoes it and reuses the others."""
    cfg = config.resolve_config(str(write_brats_cohort(tmp_path / "small", n=3)))
    cohort, _ = io.check_cohort(cfg, progress=False, images=False)
    ids = cohort.case_ids
    seg = registry.load("brats-4mod", device="cpu")
    req = taps.Request(mask="predicted", perturbations=("erode", "noise"), seed=0)
    settings = handcrafted.load_settings("mri-3d")
    out = {}
    for spec in ("serial", "local:2"):
        mdir = tmp_path / spec.replace(":", "")
        with compute.Executor(spec, worker_failures=0) as ex:
            if ex.distributed:
                done, killed = threading.Event(), []
                killer = threading.Thread(target=_kill_when_running, args=(ex.client(), 1, done, killed), daemon=True)
                killer.start()
                with pytest.raises(SegmentationError, match=rf"1 of 3 case\(s\) failed \({ids[1]}\)[\s\S]*worker process "
                                                            r"died[\s\S]*resume"):
                    infer.segment_cohort(cohort, seg, None, mdir, case_ids=ids, signature=req, executor=ex,
                                         progress=False)
                done.set()
                assert killed, "the worker was never seen running the case"
                assert sorted(p.name for p in mdir.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in ids if c != ids[1]]
            table = infer.segment_cohort(cohort, seg, None, mdir, case_ids=ids, signature=req, executor=ex,
                                         progress=False)
            masks = handcrafted.MaskSource.predicted(cohort, mdir)
            sets = handcrafted.cohort_feature_sets(cohort, settings, [None, "noise"], seeds=[0, 1], case_ids=ids,
                                                   masks_from=masks, executor=ex, progress=False)
        out[spec] = dict(mdir=mdir, table=table, sets=sets)
    serial, local = out["serial"], out["local:2"]
    assert (serial["table"]["status"] == "predicted").all()
    assert local["table"].set_index("case_id")["status"].to_dict() == {
        c: "predicted" if c == ids[1] else "cached" for c in ids}
    for cid in ids:
        a = np.asarray(nib.load(serial["mdir"] / f"{cid}.nii.gz").dataobj)
        b = np.asarray(nib.load(local["mdir"] / f"{cid}.nii.gz").dataobj)
        assert np.array_equal(a, b), cid
    vols = [c for c in serial["table"] if c.endswith("_ml")]
    pd.testing.assert_frame_equal(serial["table"][["case_id", *vols, "flags"]], local["table"][["case_id", *vols, "flags"]])
    for p in (None, "noise"):                                   # PyRadiomics: bit for bit
        pd.testing.assert_frame_equal(serial["sets"][p], local["sets"][p], check_exact=True)
    _, sig_s = taps.load_signature(serial["mdir"], ids)
    _, sig_l = taps.load_signature(local["mdir"], ids)
    # the network signature: equal to float32 rounding. oneDNN's convolutions block differently with torch's 2
    # threads here and 1 thread per worker; deep layers (bottleneck) then differ in the last bits
    pd.testing.assert_frame_equal(sig_s, sig_l, check_exact=False, rtol=1e-5, atol=1e-3)


TINY_BRATS = {"name": "tiny-ddp", "network": {"name": "unet", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
              "modalities": ["t1", "t1c", "t2", "flair"], "classes": "brats", "spacing": [2.0, 2.0, 2.5],
              "patch": [16, 16, 8]}


def test_ddp_on_2_cpu_processes_gives_the_weights_of_one_process_with_the_same_global_batch(tmp_path):
    """segment-train --nproc 2 (torchrun, gloo) and one process, 4 AdamW steps on a global batch of 2 cases x 2
    patches: the same weights to float tolerance (each process draws the global batch and takes half; the soft
    Dice's batch sums are all-reduced, so the loss is the global batch's)."""
    import torch
    import yaml

    from glioma_nb import cli
    from glioma_nb.segment import models

    cohort_yaml = write_brats_cohort(tmp_path / "ddp", n=3)
    spec_yaml = tmp_path / "tiny-ddp.yaml"
    spec_yaml.write_text(yaml.safe_dump({**TINY_BRATS, "train": {
        "iterations": 4, "batch_cases": 2, "samples_per_case": 2, "lr": 0.002, "seed": 0, "val_every": 100,
        "checkpoint_every": 2, "sources": [{"cohort": str(cohort_yaml), "cases": ["C00", "C01", "C02"], "held_out": []}]}}))
    # --fp32: DDP's reductions are under test, not bf16's rounding (which segment-train takes by default here)
    args = ["segment-train", "--model", str(spec_yaml), "--device", "cpu", "--fp32"]
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "two"), "--nproc", "2"]) == 0     # torchrun, 2 processes
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)
    assert one["iteration"] == two["iteration"] == 4
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch_patches"] == 4
    # every weight agrees; the conv biases are left out of this check: each is followed by instance normalisation,
    # so its gradient is zero in exact arithmetic and AdamW's normalised step turns rounding noise into lr-sized
    # steps, in one process as in two. They cancel in the output, which is compared instead
    diffs = {k: float((one["model"][k].float() - two["model"][k].float()).abs().max()) for k in one["model"]
             if not k.endswith("bias")}
    assert max(diffs.values()) < 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    spec = models.load_spec(spec_yaml)
    nets = []
    for state in (one, two):
        net = spec.build().eval()
        net.load_state_dict(state["model"])
        nets.append(net)
    x = torch.randn(1, 4, 16, 16, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(nets[0](x), nets[1](x), rtol=1e-4, atol=1e-4)
    torch.manual_seed(0)   # and training moved them: the check is not one of two untrained networks
    init = spec.build().state_dict()
    assert max(float((init[k] - one["model"][k]).abs().max()) for k in init if not k.endswith("bias")) > 1e-3
    # the one-process loss log is the DDP one (the global batch's loss, averaged over the processes)
    np.testing.assert_allclose(one["log"][-1]["loss"], two["log"][-1]["loss"], rtol=1e-5)


def test_the_written_out_loss_is_monais_dice_ce():
    import torch
    from monai.losses import DiceCELoss

    from glioma_nb.segment import train

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 12, 10, 6, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (3, 1, 12, 10, 6), generator=g)
    ours = train.dice_ce_loss(logits, target)
    theirs = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, target)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    g1, = torch.autograd.grad(ours, logits)
    g2, = torch.autograd.grad(theirs, logits)
    assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-8)


def _pid_after(seconds: float, i: int) -> tuple[int, int]:
    time.sleep(seconds)
    return i, os.getpid()


def test_a_pool_starts_only_when_the_rest_would_gain_more_than_its_start():
    """compute.parallel_if_worth: fast items all run here (no process started); slow ones after the first go to
    joblib's processes; under a running backend (threads here, a Dask cluster in a run) everything goes to it.
    The values come back in the items' order whichever way they ran."""
    items = [(0.0, i) for i in range(6)]
    fast = compute.parallel_if_worth(_pid_after, items, n_jobs=2, pool_start_s=5)
    assert fast == [(i, os.getpid()) for i in range(6)]
    slow = compute.parallel_if_worth(_pid_after, [(0.3, i) for i in range(4)], n_jobs=2, pool_start_s=0.1)
    assert [i for i, _ in slow] == [0, 1, 2, 3] and slow[0][1] == os.getpid()
    assert all(pid != os.getpid() for _, pid in slow[1:])
    assert compute.parallel_if_worth(_pid_after, [(0.3, 0), (0.3, 1)], n_jobs=1, pool_start_s=0) == [
        (0, os.getpid()), (1, os.getpid())]   # one job: never a pool
    from joblib import parallel_config

    with parallel_config(backend="threading", n_jobs=2):
        assert compute.pool_running() and compute.effective_jobs(-1) == 2
        threads = compute.parallel_if_worth(_pid_after, items, n_jobs=-1, pool_start_s=100)
    assert threads == fast
    assert not compute.pool_running()
