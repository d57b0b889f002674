"""Serial scans grown from real ones: ``glioma-nb synth --serial-from COHORT``.

The phantoms of :func:`glioma_nb.synthetic.generate_longitudinal` do not look like the scans the networks learnt
from, so they cannot say which network to trust for growth. Here each patient is a real case of a cohort (its
images and its reference mask) followed over 1-6 scans in which its real lesion grows at a planted velocity of
diametric expansion (VDE); the first scan is the real one (less its enhancement, when the planted transformation
comes later). Per later scan, with ``d`` the signed distance (mm) to the real whole tumour (negative inside) and
``s`` the margin that gives the planted volume:

* **planted mask**: the level set ``d <= s`` inside the brain (where every modality is above 0; for a cohort whose
  voxel size is estimated from the head, ``geometry.spacing: head``, which is not skull-stripped, the head 10 mm in
  from its surface), labelled with the displaced real labels inside it and oedema (or the binary label) in the new
  rim; ties of ``d`` are broken by voxel order, so its volume is the planted mean tumour diameter's,
  MTD = (2V)^(1/3), to a voxel (written per scan as ``drawn_mtd_mm`` beside ``planted_mtd_mm``);
* **mild mass effect**: the tissue around the lesion is pushed outwards by ``mass_effect * s`` at the real
  boundary, decaying as exp(-d / ``mass_effect_decay_mm``) outside and fading inside over at least twice the push
  (a backward warp that never folds, linear interpolation);
* **infiltration**: the new rim takes the lesion's own intensities (the intensity of the nearest voxel of the real
  lesion's outer part, smoothed within that part: the oedema of a BraTS label map, else the whole tumour eroded by
  2 mm) while keeping the tissue's own fine texture, blended over a logistic edge of ``edge_mm``;
* **enhancement at transformation** (cohorts with T1c, T1 and enhancing labels): before the planted
  transformation the enhancing voxels are made non-enhancing (T1c from T1 by the lesion's own linear T1 ->
  T1c relation, label 4 -> 1); from the first scan after it, the real enhancement shows (grade 3 in the
  timepoints table).

Growth, transformation and survival are planted as in the phantom serial cohort (:data:`glioma_nb.synthetic.SERIAL`:
VDE log-normal by IDH status, exponential PH transformation in VDE and IDH, Weibull PH survival), with the real
lesion's MTD as baseline, scans at least three months apart and before death, and at most ``max_growth_mm`` of MTD
growth; the clinical values (IDH, age, ...) are planted, not the patients' own. The folder has the layout and
tables of the phantom serial cohort (``timepoints.csv``, ``clinical.csv``, ``truth.csv``, ``scans_truth.csv``,
``cohort.json``) plus ``overview.png`` and ``<cohort>-serial.yaml`` (with ``cohort.derived_from``: each scan's
source case), so ``make run-all COHORT=<that file>`` runs 01 and 06 on it and 06 compares the VDE and hazard
ratios it finds with the planted ones.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from scipy import ndimage

from glioma_nb import synthetic
from glioma_nb.io.cohort import Cohort
from glioma_nb.io.geometry import head_mask

MIN_INTERVAL_YEARS = 0.25
SUFFIX = synthetic.SUFFIX   # t1 t1ce t2 flair seg: the BraTS 2018 layout the folder is written in


@dataclass(frozen=True)
class GrowthModel:
    """How a real lesion is grown (recorded in ``cohort.json``)."""

    max_margin_mm: float = 20.0         # the largest margin grown beyond the real boundary (caps the follow-up)
    max_growth_mm: float = 20.0         # the largest MTD growth over the follow-up (real BraTS lesions are large)
    mass_effect: float = 0.3            # tissue displaced by this fraction of the margin at the real boundary
    mass_effect_decay_mm: float = 10.0
    edge_mm: float = 0.7                # logistic width of the new boundary
    texture_sigma_mm: float = 1.5       # the lesion's intensity is its smoothed one; the tissue keeps its texture


@dataclass
class _Lesion:
    """One real case, cropped around its lesion (everything the scans of its patient reuse)."""

    images: dict[str, np.ndarray]     # full arrays, float32
    label: np.ndarray                 # full label map (uint8)
    affine: np.ndarray
    spacing: np.ndarray
    box: tuple[slice, ...]            # the crop that holds every change
    sdf: np.ndarray                   # signed distance to the real whole tumour (mm), crop
    order: np.ndarray                 # the same with ties broken (what a margin selects), crop
    normal: np.ndarray                # outward unit normal of the smoothed distance, per axis in voxels/mm, crop
    brain: np.ndarray                 # where the tumour may grow, crop
    grow_levels: np.ndarray           # sorted distances of the brain voxels outside the tumour (crop)
    n_inside: int                     # tumour voxels in the brain
    source_index: np.ndarray          # per crop voxel: index of the nearest voxel of the lesion's outer part
    smooth: dict[str, np.ndarray]     # smoothed images (crop)
    rim_label: int                    # the label a grown rim gets (oedema, or the binary label)

    @property
    def vox_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def mtd_of(self, n_voxels: int) -> float:
        return float(np.cbrt(2.0 * n_voxels * self.vox_mm3))

    @property
    def mtd0(self) -> float:
        return self.mtd_of(int((self.label > 0).sum()))

    @property
    def max_mtd(self) -> float:
        return self.mtd_of(self.n_inside + len(self.grow_levels))


def _prepare(images: Mapping[str, np.ndarray], label: np.ndarray, affine: np.ndarray, skull_stripped: bool,
             model: GrowthModel) -> _Lesion:
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    wt = label > 0
    first = next(iter(images.values()))
    if skull_stripped:
        brain = np.all([im > 0 for im in images.values()], axis=0)   # where every modality sees brain
    else:   # the head less scalp and skull: 10 mm inside its surface
        spacing_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        brain = ndimage.distance_transform_edt(head_mask(first), sampling=spacing_mm) > 10.0
    brain = brain | wt
    reach = model.max_margin_mm + 3 * model.mass_effect_decay_mm
    idx = np.argwhere(wt)
    pad = np.ceil(reach / spacing).astype(int)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, wt.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    w, b = wt[box], brain[box]
    sdf = (ndimage.distance_transform_edt(~w, sampling=spacing)
           - ndimage.distance_transform_edt(w, sampling=spacing)).astype(np.float32)
    grad = np.gradient(ndimage.gaussian_filter(sdf, 2.0 / spacing), *spacing)
    norm = np.sqrt(sum(g ** 2 for g in grad)) + 1e-6
    normal = np.stack([g / norm for g in grad]).astype(np.float32)
    # ties broken by voxel order (a sphere has many voxels at one distance), so a level holds an exact count
    order = sdf + np.arange(sdf.size, dtype=np.float64).reshape(sdf.shape) / sdf.size * 1e-4
    outside = b & ~w & (order <= model.max_margin_mm)
    lab = label[box]
    outer = lab == 2 if (lab == 2).sum() >= 50 else w & (sdf <= -2.0)
    if outer.sum() < 20:
        outer = w
    source_index = ndimage.distance_transform_edt(~outer, sampling=spacing, return_distances=False,
                                                  return_indices=True).astype(np.int32)
    # the lesion's smoothed intensity, averaged over the lesion's outer part only (not the tissue beside it)
    sig = model.texture_sigma_mm / spacing
    weight = ndimage.gaussian_filter(outer.astype(np.float32), sig) + 1e-6
    smooth = {m: ndimage.gaussian_filter(np.where(outer, im[box], 0).astype(np.float32), sig) / weight
              for m, im in images.items()}
    return _Lesion({m: np.asarray(im, np.float32) for m, im in images.items()}, label.astype(np.uint8), affine,
                   spacing, box, sdf, order, normal, b, np.sort(order[outside]), int((w & b).sum()), source_index,
                   smooth, rim_label=2 if (label == 2).any() else int(label[wt].max()))


def _margin_for(les: _Lesion, target_mtd: float) -> float:
    """The margin (mm) whose level set holds the volume of ``target_mtd`` (0 for the real size or less)."""
    n = int(round(target_mtd ** 3 / 2.0 / les.vox_mm3)) - les.n_inside
    if n <= 0:
        return 0.0
    return float(les.grow_levels[min(n, len(les.grow_levels)) - 1])


def grow(les: _Lesion, margin_mm: float, model: GrowthModel) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The lesion's images and label map with the whole tumour grown by ``margin_mm`` (see the module)."""
    images = {m: im.copy() for m, im in les.images.items()}
    label = les.label.copy()
    if margin_mm <= 0:
        return images, label
    sdf, box = les.sdf, les.box
    push = model.mass_effect * margin_mm
    # inside, the displacement fades over at least twice itself, so the warp never folds (slope <= 1/2)
    ramp = np.clip(1.0 + sdf / max(3.0, 2.0 * push), 0.0, 1.0)
    disp = push * np.exp(-np.maximum(sdf, 0.0) / model.mass_effect_decay_mm) * ramp
    grid = np.indices(sdf.shape, dtype=np.float32)
    coords = [grid[i] - disp * les.normal[i] / les.spacing[i] for i in range(3)]
    lab_w = ndimage.map_coordinates(les.label[box], coords, order=0, mode="nearest")
    in_w = ndimage.gaussian_filter((lab_w > 0).astype(np.float32), 0.7)
    edge = 1.0 / (1.0 + np.exp(np.clip((sdf - margin_mm) / model.edge_mm, -50, 50)))
    fill = (edge * (1.0 - in_w) * les.brain).astype(np.float32)
    src = tuple(les.source_index[i] for i in range(3))
    sig = model.texture_sigma_mm / les.spacing
    for m, im in images.items():
        warped = ndimage.map_coordinates(les.images[m][box], coords, order=1, mode="nearest")
        texture = les.smooth[m][src] + (warped - ndimage.gaussian_filter(warped, sig))
        out = warped + fill * (texture - warped)
        im[box] = np.where(warped > 0, np.maximum(out, 0.0), 0.0) if (les.images[m] >= 0).all() else out
    # the planted mask is the level set: real labels pushed beyond it (where the smoothed normal strays from the
    # level set's) are cut, so its volume is the planted one to a voxel
    grown = (les.order <= margin_mm) & les.brain
    label[box] = np.where(grown, np.where(lab_w > 0, lab_w, les.rim_label), 0).astype(np.uint8)
    return images, label


def without_enhancement(images: dict[str, np.ndarray], label: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The scan before malignant transformation: enhancing voxels (label 4) non-enhancing (label 1), their T1c
    replaced by the lesion's own linear T1 -> T1c relation (fitted on the oedema), over a soft edge."""
    et = label == 4
    if not et.any() or "t1c" not in images or "t1" not in images:
        return images, label
    t1, t1c = images["t1"], images["t1c"]
    ref = (label == 2) | (label == 1)
    if ref.sum() < 50:
        ref = (label > 0) & ~et
    a, b = np.polyfit(t1[ref], t1c[ref], 1) if ref.sum() >= 50 else (1.0, 0.0)
    soft = np.clip(ndimage.gaussian_filter(et.astype(np.float32), 1.0) * 2.0, 0.0, 1.0)
    soft = np.maximum(soft, et)
    out = dict(images)
    out["t1c"] = np.where(t1c > 0, (1 - soft) * t1c + soft * (a * t1 + b), t1c).astype(np.float32)
    label = np.where(et, 1, label).astype(np.uint8)
    return out, label


def _timeline(pt: pd.Series, max_mtd: float, rng: np.random.Generator) -> list[float]:
    """Scan days as the phantom cohort's (:func:`glioma_nb.synthetic._serial_timeline`), capped by the room the
    lesion has to grow, and all of them taken before death (a cohort of a dozen real patients cannot lose
    the follow-up of those who die early)."""
    pt = pt.copy()
    pt["span_years"] = min(pt.span_years, 0.9 * pt.os_latent_days / 365.25, (max_mtd - pt.d0_mm) / pt.vde_mm_per_year)
    # scans at least three months apart (a patient who dies within three months has one scan)
    pt["n_scans"] = int(min(pt.n_scans, 1 + np.floor(max(pt.span_years, 0.0) / MIN_INTERVAL_YEARS)))
    if pt.n_scans < 2:
        return [0.0]
    return synthetic._serial_timeline(pt, rng, max_mtd_mm=max_mtd, min_years=0.0)


def _write(folder: Path, scan_id: str, images: Mapping[str, np.ndarray], label: np.ndarray,
           affine: np.ndarray) -> None:
    cdir = folder / scan_id
    cdir.mkdir()
    for m, arr in [*images.items(), ("seg", label)]:
        dtype = np.uint8 if m == "seg" else np.int16
        data = arr.astype(dtype) if m == "seg" else np.clip(np.round(arr), -32768, 32767).astype(np.int16)
        img = nib.Nifti1Image(data, affine)
        img.set_data_dtype(dtype)
        img.header.set_xyzt_units("mm")
        nib.save(img, cdir / f"{scan_id}_{SUFFIX[m]}.nii.gz")


def overview(folder: Path, scans: pd.DataFrame, modality: str, max_patients: int = 6) -> Any:
    """A figure of the grown cohort: per patient (rows, up to ``max_patients``) each scan's ``modality`` on the
    axial slice where the last scan's tumour is largest, with the planted whole-tumour outline."""
    import matplotlib.pyplot as plt

    pids = list(dict.fromkeys(scans["patient_id"]))[:max_patients]
    ncol = int(scans.groupby("patient_id").size().max())
    fig, axes = plt.subplots(len(pids), ncol, figsize=(2.1 * ncol, 2.2 * len(pids)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, pid in enumerate(pids):
        g = scans[scans["patient_id"] == pid].sort_values("days")
        last = g["case_id"].iloc[-1]
        lab_last = np.asarray(nib.load(folder / last / f"{last}_seg.nii.gz").dataobj)
        z = int(np.argmax((lab_last > 0).sum(axis=(0, 1))))
        for j, row in enumerate(g.itertuples()):
            img = np.asarray(nib.load(folder / row.case_id / f"{row.case_id}_{SUFFIX[modality]}.nii.gz").dataobj)
            lab = np.asarray(nib.load(folder / row.case_id / f"{row.case_id}_seg.nii.gz").dataobj)
            ax = axes[i, j]
            sl = np.rot90(img[:, :, z].astype(float))
            ax.imshow(sl, cmap="gray", vmin=0, vmax=np.percentile(sl[sl > 0], 99.5) if (sl > 0).any() else 1)
            ax.contour(np.rot90(lab[:, :, z] > 0), [0.5], colors="#d62728", linewidths=0.7)
            if (lab[:, :, z] == 4).any():
                ax.contour(np.rot90(lab[:, :, z] == 4), [0.5], colors="#ffbf00", linewidths=0.6)
            ax.set_title(f"{row.days / 365.25:.1f} y, MTD {row.drawn_mtd_mm:.0f} mm", fontsize=8)
        axes[i, 0].text(-0.04, 0.5, str(pid), transform=axes[i, 0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=7)
    fig.suptitle(f"Serial scans grown from real ones ({modality}; red: planted whole tumour, amber: enhancing)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def cohort_yaml(name: str, source: Mapping[str, Any], modalities: Sequence[str], scheme: str) -> dict[str, Any]:
    """The cohort file of a grown serial cohort (``root``: set to the folder it is written in)."""
    return {"cohort": {
        "description": f"Serial scans grown from the real {source['name']} cases (planted growth and transformation)",
        "citation": {"source": f"Generated by glioma_nb.serial_real from {source['name']}: "
                               f"{source.get('citation', {}).get('source', '')}",
                     "doi": source.get("citation", {}).get("doi", ""),
                     "licence": source.get("citation", {}).get("licence", ""),
                     "url": source.get("citation", {}).get("url", "")},
        "root": None, "layout": "brats", "modalities": list(modalities),
        "files": {m: SUFFIX[m] for m in modalities} | {"label": "seg"},
        "label": {"present": True, "scheme": scheme},
        "timepoints": {"file": "timepoints.csv"},
        "clinical": {"file": "clinical.csv", "id_column": "case_id", "time_unit": "days",
                     "columns": {c: c for c in ("patient_id", "site", "age", "sex", "kps", "histology", "who_grade",
                                                "idh_mutant", "codel_1p19q", "resection")}
                     | {"os_time": "os_days", "os_event": "os_event"}}},
        "run": {"steps": ["01_segment"]},
        "signature": {"stability": {"perturbations": []}},
        "longitudinal": {"transformation": {"rule": "histology"}}}


def generate_from(cohort: Cohort, source_cfg: Mapping[str, Any], out_dir: str | Path, case_ids: Sequence[str],
                  *, seed: int = 0, model: GrowthModel = GrowthModel(), progress: bool = True) -> Path:
    """Write the serial cohort grown from ``case_ids`` of ``cohort`` to ``out_dir`` (atomically; see the module).

    ``source_cfg`` is the source cohort's ``cohort`` section (name, citation). An existing complete folder with the
    same spec is reused; another spec there is an error."""
    from tqdm import tqdm

    if cohort.scheme is None:
        raise ValueError(f"cohort {cohort.name} has no reference label maps: serial scans are grown from the "
                         "reference mask of each case (set cohort.label.present and the label files)")
    missing = sorted(set(case_ids) - set(cohort.case_ids))
    if missing:
        raise ValueError(f"cohort {cohort.name} has no case(s) {missing}; its cases: {cohort.case_ids}")
    out = Path(out_dir)
    spec = {"source": cohort.name, "cases": list(case_ids), "seed": seed, "growth": asdict(model),
            "serial_from": True}
    tmp = synthetic._claim(out, spec)
    if tmp is None:
        return out
    rng = np.random.default_rng([seed, 11])
    patients = synthetic._serial_patients(len(case_ids), rng)
    skull_stripped = not (source_cfg.get("geometry") or {}).get("spacing") == "head"
    scheme = "binary" if cohort.scheme.name == "binary" else "brats2018"
    tps, clin, scans, truth = [], [], [], []
    try:
        for (i, pt), cid in tqdm(list(zip(patients.iterrows(), case_ids)), desc="serial scans from real cases",
                                 disable=not progress):
            imgs = {m: cohort.load_image(cid, m) for m in cohort.modalities}
            affine = next(iter(imgs.values())).affine
            lab_img = cohort.load_label(cid)
            label = np.asarray(lab_img.dataobj).astype(np.uint8)
            if cohort.scheme.name not in ("binary", "brats2018", "brats2021"):   # BraTS 2023 labels 1/2/3
                label = np.where(label == 3, 4, label).astype(np.uint8)
            if scheme == "binary":
                label = (label > 0).astype(np.uint8)
            les = _prepare({m: np.asarray(im.dataobj, dtype=np.float32) for m, im in imgs.items()}, label, affine,
                           skull_stripped, model)
            pt = pt.copy()
            pt["d0_mm"] = les.mtd0
            days = _timeline(pt, min(les.max_mtd, les.mtd0 + model.max_growth_mm), rng)
            transformed_at = next((d for d in days if d >= pt.transformation_latent_days), None)
            pid = cid
            for k, d in enumerate(days):
                mtd = les.mtd0 + pt.vde_mm_per_year * d / 365.25
                images, lab = grow(les, _margin_for(les, mtd), model)
                after = transformed_at is not None and d >= transformed_at
                if not after:
                    images, lab = without_enhancement(images, lab)
                sid = f"{cid}_s{k}"
                _write(tmp, sid, images, lab, affine)
                drawn = les.mtd_of(int((lab > 0).sum()))
                tps.append(dict(patient_id=pid, case_id=sid, days=d, visit=k + 1, grade=3 if after else 2))
                scans.append(dict(patient_id=pid, case_id=sid, days=d, planted_mtd_mm=round(mtd, 3),
                                  drawn_mtd_mm=round(drawn, 3), transformed=int(after),
                                  enhancing_voxels=int((lab == 4).sum())))
                os_t = min(pt.os_latent_days, pt.censor_days)
                clin.append(dict(case_id=sid, patient_id=pid, site=pt.site, age=pt.age, sex=pt.sex, kps=pt.kps,
                                 histology="oligodendroglioma" if pt.codel_1p19q else "astrocytoma", who_grade=2,
                                 idh_mutant=pt.idh_mutant, codel_1p19q=pt.codel_1p19q, resection=pt.resection,
                                 os_days=int(max(1, round(os_t))), os_event=int(pt.os_latent_days <= pt.censor_days)))
            truth.append(synthetic._serial_truth_row(pt, days, transformed_at, {"patient_id": pid, "source_case": cid},
                                                     {"d0_mm": round(les.mtd0, 3), "max_mtd_mm": round(les.max_mtd, 3)}))
        synthetic._write_serial_tables(tmp, tps, clin, truth, scans)
        fig = overview(tmp, pd.DataFrame(scans), "flair" if "flair" in cohort.modalities else cohort.modalities[0])
        fig.savefig(tmp / "overview.png", dpi=110)
        import matplotlib.pyplot as plt
        plt.close(fig)
        name = f"{cohort.name}-serial"
        body = cohort_yaml(name, source_cfg, cohort.modalities, scheme)
        body["cohort"]["root"] = str(out.resolve())
        body["cohort"]["derived_from"] = {"cohort": cohort.name,
                                          "cases": {r["case_id"]: r["patient_id"] for r in tps}}
        (tmp / f"{name}.yaml").write_text(
            "# Serial scans grown from real ones (glioma-nb synth --serial-from);\n"
            "# run: make run-all COHORT=<this file>\n"
            + yaml.safe_dump(body, sort_keys=False))
        synthetic._publish(tmp, out, dict(
            spec=spec, generator="glioma_nb.serial_real.generate_from", serial_model=synthetic.SERIAL,
            transformation_log_hazard_ratios=synthetic.SERIAL["transformation_log_hr"],
            os_log_hazard_ratios=synthetic.SERIAL["os_log_hr"], source_cohort=cohort.name,
            source_root=str(cohort.root), sites=synthetic.SITES))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
