"""Training: Dice + cross-entropy on random patches, checkpoint and resume, a loss/Dice log.

The training cases are preprocessed once (:func:`transforms.preprocess`) and kept in memory; every
iteration draws ``batch_cases`` cases and ``samples_per_case`` label-balanced patches from each with
augmentation. The random state of iteration ``i`` derives from ``(seed, i)`` alone, so a resumed run
draws exactly the patches an uninterrupted one would. Every ``checkpoint_every`` iterations the
model, optimiser, scheduler and log are written atomically to ``checkpoint.pt``; an existing
checkpoint is resumed. Held-out cases are scored every ``val_every`` iterations for the log only:
the final weights are those of the last iteration (no selection on held-out cases).

GPU: CUDA with bfloat16 autocast where the GPU has it (Ampere and later; float16 with a gradient
scaler otherwise: float16 activations overflowed to NaN within 250 iterations on an H100); CPU
otherwise, with bfloat16 autocast where the CPU has it (AVX512-BF16 / AMX) when ``bf16`` is None (``glioma-nb
segment-train`` asks for that by default; ``--fp32`` keeps float32), or ``bf16=True`` / a spec's ``train.bf16``.
A loss that stays non-finite for ``MAX_NONFINITE`` iterations stops the run with an error (the last good checkpoint is kept).
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit
from tqdm import tqdm

from glioma_nb import config, io, synthetic
from glioma_nb.segment import metrics, models, transforms, window
from glioma_nb.segment.errors import SegmentationError
from glioma_nb.segment.models import ModelSpec


@dataclass
class TrainSource:
    """Cases of one cohort used for training and held out (by patient) for evaluation."""

    cohort: io.Cohort
    train: list[str]
    held_out: list[str] = field(default_factory=list)


@dataclass
class TrainSettings:
    iterations: int = 2000
    batch_cases: int = 1
    samples_per_case: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-5
    seed: int = 0
    val_every: int = 250
    checkpoint_every: int = 100
    overlap: float = 0.25
    crop: str = "posneg"          # posneg | classes (transforms.augment)
    augmentation: str = "basic"   # basic | nnunet (transforms.augment)
    deep_supervision: int = 0     # auxiliary outputs at the N decoder levels below full resolution (DeepSupervision)
    bf16: bool = False            # bfloat16 autocast on CPU (CUDA uses it where the GPU has it, whatever this says)

    @classmethod
    def from_spec(cls, spec: ModelSpec, **overrides: Any) -> "TrainSettings":
        known = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in spec.train.items() if k in known}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


def sources_from_spec(spec: ModelSpec, progress: bool = False) -> list[TrainSource]:
    """The training sources a spec names (``train.sources``: cohort, cases, held_out)."""
    out = []
    for src in spec.train.get("sources", []):
        cfg = config.resolve_config(src["cohort"])
        synthetic.ensure_cohort_data(cfg, progress=progress)
        cohort, report = io.check_cohort(cfg, progress=progress, images=False)
        if not report.ok:
            raise io.CohortError(report)
        held = list(src.get("held_out", []))
        cases = src.get("cases", [])
        if cases in ("all", "all-others"):
            cases = [c for c in cohort.case_ids if c not in held]
        missing = [c for c in [*cases, *held] if c not in cohort.case_ids]
        if missing:
            raise SegmentationError(f"model {spec.name}: cohort {src['cohort']} has no cases {missing}")
        overlap = set(cases) & set(held)
        if overlap:
            raise SegmentationError(f"model {spec.name}: cases both trained on and held out: {sorted(overlap)}")
        out.append(TrainSource(cohort, list(cases), held))
    if not out:
        raise SegmentationError(f"model {spec.name}: the spec names no train.sources")
    return out


def patients(cohort: io.Cohort, case_ids: Sequence[str]) -> dict[str, str]:
    """Case id -> patient: ``patient_id`` of the clinical table, found by its ``case_id`` column (the table
    :mod:`glioma_nb.io.clinical` reads has a plain index) or else by its index; the case id itself where the
    table has none."""
    clin = cohort.clinical
    if "patient_id" not in clin:
        pid = pd.Series(dtype=object)
    elif "case_id" in clin:
        pid = clin.set_index(clin["case_id"].astype(str))["patient_id"]
    else:
        pid = clin["patient_id"].set_axis(clin.index.astype(str))
    pid = pid[~pid.index.duplicated()]
    return {c: (str(pid[c]) if c in pid.index and pd.notna(pid[c]) else c) for c in case_ids}


def split_by_patient(cohort: io.Cohort, held_out_fraction: float = 0.25, seed: int = 0) -> tuple[list[str], list[str]]:
    """Training and held-out case ids, whole patients on one side (:func:`patients`)."""
    ids = np.asarray(cohort.case_ids)
    pat = patients(cohort, cohort.case_ids)
    groups = np.asarray([pat[c] for c in cohort.case_ids])
    if len(set(groups)) < 2:
        raise SegmentationError(f"cohort {cohort.name}: training needs at least 2 patients")
    tr, te = next(GroupShuffleSplit(1, test_size=held_out_fraction, random_state=seed).split(ids, groups=groups))
    return sorted(ids[tr].tolist()), sorted(ids[te].tolist())


def _prepare(sources: Sequence[TrainSource], spec: ModelSpec, which: str, progress: bool,
             crop: str = "posneg") -> list[dict[str, Any]]:

    pre = transforms.preprocess(spec, with_label=True)
    ready = transforms.crop_ready(spec) if crop == "classes" and which == "train" else None
    items = [(s.cohort, c) for s in sources for c in getattr(s, which)]
    out = []
    for cohort, cid in tqdm(items, desc=f"preprocess {which} cases", disable=not progress):
        d = pre(transforms.load_case(cohort, cid, spec, with_label=True))
        d = {"image": d["image"].as_tensor(), "label": d["label"].as_tensor()}
        if ready is not None:
            d = dict(ready(d))
            d = {k: (v.as_tensor() if hasattr(v, "as_tensor") else v) for k, v in d.items()}
        out.append({**d, "case_id": f"{cohort.name}/{cid}"})
    return out


def _val_dice(net: Any, spec: ModelSpec, cases: list[dict[str, Any]], device: str, overlap: float) -> float:
    """Mean whole-tumour Dice on preprocessed held-out cases, in model space (monitoring only)."""
    scores = []
    net.eval()
    for c in cases:
        probs = window.sliding_window(net, c["image"], spec.patch, overlap=overlap, device=device,
                                      activation="sigmoid" if spec.regions else "softmax")
        p = (probs[0] > 0.5 if spec.regions else probs.argmax(0)).numpy()
        scores.append(metrics.region_scores(p > 0, c["label"][0].numpy() > 0, spec.spacing)[0])
    net.train()
    return float(np.mean(scores)) if scores else float("nan")


MAX_NONFINITE = 20  # consecutive non-finite losses before training stops


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process: (0, 1, 0) unless it runs under torchrun with an initialised
    process group (:func:`ddp_session`)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


@contextlib.contextmanager
def ddp_session(device: str) -> Iterator[None]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): the process group of this run (NCCL on CUDA, gloo on CPU) for the
    block; otherwise nothing."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    cuda = models.resolve_device(device) == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def dice_ce_loss(logits: Any, target: Any, smooth: float = 1e-5) -> Any:
    """MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True, batch=True)`` (the training loss; equal to it, see the
    tests) written out so that, under DDP, the soft Dice's batch sums (intersection, reference and predicted
    volume per class) are summed over every process with a differentiable all-reduce: the loss, and after DDP's
    gradient averaging the gradient, are those of the global batch on one process. Cross-entropy is a mean over
    equal-sized patches, which DDP's averaging keeps exact."""
    import torch
    import torch.nn.functional as F

    classes = target[:, 0].long()
    ce = F.cross_entropy(logits, classes)
    prob = torch.softmax(logits, 1)
    onehot = F.one_hot(classes, logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    return _batch_dice_loss(prob, onehot, smooth).mean() + ce


def _batch_dice_loss(prob: Any, target: Any, smooth: float) -> Any:
    """1 - soft Dice per channel over the whole (global, under DDP) batch."""
    import torch

    dims = [0, *range(2, prob.ndim)]
    sums = torch.stack([(prob * target).sum(dims), target.sum(dims), prob.sum(dims)])
    if world()[1] > 1:
        from torch.distributed.nn.functional import all_reduce

        with warnings.catch_warnings():   # deprecated for a private module's; still the differentiable one
            warnings.simplefilter("ignore", FutureWarning)
            sums = all_reduce(sums)
    inter, ref, pred = sums
    return 1.0 - (2.0 * inter + smooth) / (ref + pred + smooth)


def region_targets(classes: Any, regions: Sequence[str]) -> Any:
    """Overlapping region masks (B, R, ...) of an internal class map (B, ...): wt every tumour class, tc necrosis /
    core and enhancing (1, 3), et enhancing (3); a whole-tumour model's map is 0/1."""
    import torch

    c = classes.long()
    masks = {"wt": c > 0, "tc": (c == 1) | (c == 3), "et": c == 3}
    return torch.stack([masks[r] for r in regions], 1).float()


def dice_bce_loss(logits: Any, target: Any, regions: Sequence[str], smooth: float = 1e-5) -> Any:
    """Region training (nnU-Net's BraTS entries, Isensee et al. 2021): sigmoid channels of the overlapping regions
    (``regions``, e.g. wt/tc/et) with batch soft Dice + binary cross-entropy; ``target``: the class map (B, 1, ...).
    The Dice sums are all-reduced under DDP as in :func:`dice_ce_loss`."""
    import torch
    import torch.nn.functional as F

    y = region_targets(target[:, 0], regions).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, y)
    return _batch_dice_loss(torch.sigmoid(logits), y, smooth).mean() + bce


def deep_supervision_weights(n_aux: int) -> list[float]:
    """nnU-Net's loss weights of the full-resolution output and ``n_aux`` lower ones: 1, 1/2, 1/4, ... normalised."""
    w = [0.5 ** i for i in range(n_aux + 1)]
    return [x / sum(w) for x in w]


def supervised_loss(outputs: Any, target: Any, spec: ModelSpec) -> Any:
    """The loss of the network's output, or of its deep-supervision outputs (a list: full resolution first; the
    target is down-sampled by nearest neighbour to each, as nnU-Net does)."""
    import torch.nn.functional as F

    outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    weights = deep_supervision_weights(len(outs) - 1)
    total = 0.0
    for w, out in zip(weights, outs):
        t = target if out.shape[2:] == target.shape[2:] else F.interpolate(target, size=out.shape[2:], mode="nearest")
        out = out.float()
        total = total + w * (dice_bce_loss(out, t, spec.regions) if spec.regions else dice_ce_loss(out, t))
    return total


def decoder_levels(net: Any, n: int) -> list[str]:
    """The module names of a MONAI UNet's decoder outputs at the ``n`` resolutions below full (half, quarter, ...)."""
    names = ["model" + ".1.submodule" * k + ".2" for k in range(1, n + 1)]
    mods = dict(net.named_modules())
    missing = [m for m in names if m not in mods]
    if missing:
        raise SegmentationError(f"deep supervision of {n} levels needs a MONAI UNet with more than {n} down-samplings "
                                f"(no module {missing[0]}); lower train.deep_supervision or set it to 0")
    return names


def deep_supervised(net: Any, spec: ModelSpec, n_aux: int) -> Any:
    """``net`` with ``n_aux`` auxiliary 1x1x1 convolution heads on its decoder outputs below full resolution (nnU-Net's
    deep supervision), for training only: the module returns [full, half, quarter, ...] logits; the shipped weights
    are ``net``'s alone (the heads are dropped, inference is unchanged)."""
    import torch

    names = decoder_levels(net, n_aux)

    class DeepSupervision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.acts: dict[str, Any] = {}
            mods = dict(net.named_modules())
            self.handles = [mods[m].register_forward_hook(self._keep(m)) for m in names]
            with torch.no_grad():
                net(torch.zeros(1, len(spec.modalities), *spec.patch, device=next(net.parameters()).device))
            self.heads = torch.nn.ModuleList(torch.nn.Conv3d(self.acts[m].shape[1], spec.n_outputs, 1) for m in names)

        def _keep(self, name: str) -> Any:
            def fn(_m: Any, _i: Any, out: Any) -> None:
                self.acts[name] = out
            return fn

        def forward(self, x: Any) -> list[Any]:
            out = self.net(x)
            return [out, *(h(self.acts[m]) for h, m in zip(self.heads, names))]

    return DeepSupervision()


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast is slower than float32."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:   # pragma: no cover - older torch
        return False


def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train(spec: ModelSpec, sources: Sequence[TrainSource], out_dir: Path, settings: TrainSettings | None = None,
          device: str = "auto", bf16: bool | None = False, progress: bool = True,
          stop_at: int | None = None) -> dict[str, Any]:
    """Train ``spec`` on ``sources`` into ``out_dir`` (resumes a checkpoint found there).

    Writes ``checkpoint.pt``, ``train_log.csv`` and, at the end, ``weights.pt`` (float16) and
    ``train_summary.json``. Returns the summary. ``stop_at`` ends the call after that iteration with a
    checkpoint, as an interruption would (the next call resumes); the summary then has ``stopped_at``.
    """
    import torch

    s = settings or TrainSettings.from_spec(spec)
    device = models.resolve_device(device)
    rank, n_proc, local = world()
    per_step = s.batch_cases * s.samples_per_case
    if n_proc > 1 and per_step % n_proc:
        raise SegmentationError(f"model {spec.name}: the global batch of {per_step} patches (batch_cases "
                                f"{s.batch_cases} x samples_per_case {s.samples_per_case}) does not split over {n_proc} "
                                "processes; use a --nproc that divides it, or raise batch_cases")
    lead = rank == 0
    progress = progress and lead
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(s.seed)
    train_cases = _prepare(sources, spec, "train", progress, crop=s.crop)
    val_cases = _prepare(sources, spec, "held_out", progress)
    if not train_cases:
        raise SegmentationError(f"model {spec.name}: no training cases")
    if device == "cuda" and n_proc > 1:
        device_obj: Any = torch.device("cuda", local)
    else:
        device_obj = torch.device(device)
    net = spec.build().to(device_obj)
    model = deep_supervised(net, spec, s.deep_supervision).to(device_obj) if s.deep_supervision else net
    trained = model                    # what the optimiser steps: the network and any deep-supervision heads
    if n_proc > 1:   # one process per GPU (or CPU share); rank 0 writes
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(trained, device_ids=[local] if device == "cuda" else None)
    opt = torch.optim.AdamW(trained.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(0.0, 1 - i / s.iterations) ** 0.9)
    cuda_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=device == "cuda" and not cuda_bf16)
    aug = transforms.augment(spec, s.samples_per_case, crop=s.crop, augmentation=s.augmentation)
    if bf16 is None:      # auto: where the CPU runs bfloat16 natively (0.55 s vs 0.95 s per brats-4mod iteration here)
        bf16 = s.bf16 or (device == "cpu" and cpu_bf16_supported())
    bf16 = bf16 or s.bf16
    if bf16 and device == "cpu" and not cpu_bf16_supported():
        warnings.warn(f"model {spec.name}: this CPU has no bfloat16 instructions (AVX512-BF16 / AMX); training in "
                      "float32 instead (train.bf16 is a speed setting, not a recipe one)", stacklevel=2)
        bf16 = False
    log: list[dict[str, Any]] = []
    start, elapsed = 0, 0.0
    ckpt = out_dir / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device_obj, weights_only=False)
        if state.get("spec") != spec.to_dict() or state.get("settings") != s.__dict__:
            raise SegmentationError(f"{ckpt} was written for another model spec or other training settings "
                                    f"({state.get('settings')}); resume with the same ones or use a new output folder")
        net.load_state_dict(state["model"])
        if trained is not net:
            trained.heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start, log, elapsed = state["iteration"], state["log"], state["seconds"]
        if progress:
            print(f"resuming {spec.name} from iteration {start}", flush=True)
    net.train()
    t0 = time.perf_counter() - elapsed
    autocast_dtype = torch.bfloat16 if (cuda_bf16 or (bf16 and device == "cpu")) else torch.float16
    use_autocast = device == "cuda" or bf16
    nonfinite = 0
    bar = tqdm(range(start, s.iterations), initial=start, total=s.iterations, desc=f"train {spec.name}",
               disable=not progress)
    running = []
    for it in bar:
        rng = np.random.default_rng([s.seed, it])
        aug.set_random_state(seed=int(rng.integers(2**31)))
        batch = []
        for ci in rng.integers(0, len(train_cases), size=s.batch_cases):
            c = train_cases[ci]
            batch.extend(aug({k: v for k, v in c.items() if k != "case_id"}))
        batch = batch[rank::n_proc]    # every process draws the global batch (same seeds) and takes its share
        x = torch.stack([torch.as_tensor(b["image"]) for b in batch]).to(device_obj)
        y = torch.stack([torch.as_tensor(b["label"]) for b in batch]).to(device_obj)
        with torch.autocast(device_type=device, dtype=autocast_dtype, enabled=use_autocast):
            loss = supervised_loss(model(x), y, spec)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        if n_proc > 1:                 # the global batch's loss: the mean of the processes' (Dice is already global)
            loss = loss.detach().clone()
            torch.distributed.all_reduce(loss)
            loss = loss / n_proc
        loss_value = loss.item()       # one device sync per iteration
        nonfinite = 0 if np.isfinite(loss_value) else nonfinite + 1
        if nonfinite >= MAX_NONFINITE:
            raise SegmentationError(f"model {spec.name}: the loss has been non-finite for {nonfinite} iterations "
                                    f"(iteration {it + 1}, {autocast_dtype if use_autocast else 'float32'}); "
                                    f"{ckpt} holds the last checkpoint. Lower train.lr or train without autocast")
        running.append(loss_value)
        done = it + 1
        if done % 10 == 0 or done == s.iterations or done % s.val_every == 0:
            entry: dict[str, Any] = {"iteration": done, "loss": float(np.mean(running)), "lr": sched.get_last_lr()[0],
                                     "seconds": round(time.perf_counter() - t0, 1), "val_dice_wt": float("nan")}
            running = []
            if lead and val_cases and (done % s.val_every == 0 or done == s.iterations):
                entry["val_dice_wt"] = _val_dice(net, spec, val_cases, str(device_obj), s.overlap)
            log.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.3f}", val=f"{entry['val_dice_wt']:.3f}")
        stopping = stop_at is not None and stop_at <= done < s.iterations
        if lead and (done % s.checkpoint_every == 0 or done == s.iterations or stopping):
            _save_atomic({"model": net.state_dict(), **({"heads": trained.heads.state_dict()} if trained is not net else {}),
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "scaler": scaler.state_dict(), "iteration": done, "log": log,
                          "seconds": time.perf_counter() - t0, "spec": spec.to_dict(),
                          "settings": dict(s.__dict__)}, ckpt)
            _write_log(log, out_dir / "train_log.csv")
        if stopping:
            _barrier()
            return {"model": spec.name, "stopped_at": done}
    summary = {"model": spec.name, "iterations": s.iterations, "settings": s.__dict__, "device": device,
               "processes": n_proc, "global_batch_patches": per_step, "host": platform.node(),
               "device_name": torch.cuda.get_device_name(device_obj) if device == "cuda" else platform.processor() or "cpu",
               "bf16": bf16 or cuda_bf16, "seconds": round(time.perf_counter() - t0, 1),
               "n_parameters": int(sum(p.numel() for p in net.parameters())),
               "train_cases": [c["case_id"] for c in train_cases], "held_out_cases": [c["case_id"] for c in val_cases],
               "final_loss": log[-1]["loss"] if log else None}
    if lead:
        summary["weights_sha256"] = models.save_weights(net, out_dir / "weights.pt")
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    _barrier()
    return summary


def _barrier() -> None:
    """Every process waits for rank 0's files (a no-op in one process)."""
    if world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def _write_log(log: list[dict[str, Any]], path: Path) -> None:
    if not log:
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(log[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(log)
    tmp.replace(path)


