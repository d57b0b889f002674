"""Synthetic glioma cohort built offline on nilearn's bundled MNI152 template.

Each case has T1, T1c, T2 and FLAIR volumes, a BraTS-2018 label map (1 necrosis / non-enhancing core,
2 oedema, 4 enhancing) and a clinical row; latent variables are written to ``truth.csv`` and the
generating model to ``cohort.json``. Everything is deterministic given the seed.

Planted effects (literature-plausible, deliberately simplified):

* **Subtype mix**: IDH-mutant 1p/19q-codeleted 30 %, IDH-mutant non-codeleted 35 %, IDH-wild-type 35 %.
* **Grade**: IDH-wt mostly grade 4 (80 %); IDH-mut non-codel 2/3/4 = 50/35/15 %; codel 2/3 = 60/40 %.
* **Histology** (WHO CNS5 style): grade 4 -> glioblastoma (IDH-wt) or astrocytoma grade 4 (IDH-mut);
  codel -> oligodendroglioma; otherwise astrocytoma.
* **Markers**: TERTp mutant in 95 % of codel, 75 % of IDH-wt, 5 % of IDH-mut non-codel;
  MGMT methylated in 85 % of IDH-mut, 45 % of IDH-wt (MGMT has no imaging effect: expected near chance).
* **Age**: IDH-wt ~ N(60, 10), IDH-mut ~ N(40, 10) years.
* **Location**: IDH-mut tumours are frontal in 75 % of cases (Y > 0 mm in MNI), IDH-wt anywhere in
  white matter (Lai et al. 2011; Metellus et al. 2010).
* **Enhancement and necrosis** depend on grade: grade 4 -> ring enhancement around central necrosis;
  grade 3 -> patchy enhancement of 15-35 % of the core; grade 2 -> non-enhancing core.
* **Margins**: IDH-wt margins are irregular (boundary perturbation 0.25) with wide oedema (8-15 mm);
  IDH-mut margins are sharp (0.08) with thin oedema (3-7 mm).
* **T2-FLAIR mismatch** in IDH-mut non-codel: homogeneous T2-bright core with a FLAIR-dark centre and
  bright rim (Patel et al. 2017); **codel**: heterogeneous core with calcification-like dark foci.
* **Latent risk group** (``truth.csv: risk_group``, 50 %): necrosis fraction, core heterogeneity and
  oedema width rise in the risk group; it also raises the hazard (log HR 0.9). This is the prognostic
  imaging signal the stratification step should find.
* **Sites**: three sites S1/S2/S3 with different intensity gain, noise and bias-field strength.
* **Survival**: Weibull proportional hazards, shape 1.2, scale 4000 days, with log hazard ratios in
  :data:`HAZARD_LOG_HR`; independent censoring = min(administrative 1-10 years, exponential loss to
  follow-up with mean 4000 days).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from glioma_nb.io.cohort import cohort_root

SUBTYPE_P = {"IDHmut-codel": 0.30, "IDHmut-noncodel": 0.35, "IDHwt": 0.35}
GRADE_P = {"IDHmut-codel": {2: 0.6, 3: 0.4}, "IDHmut-noncodel": {2: 0.5, 3: 0.35, 4: 0.15},
           "IDHwt": {2: 0.05, 3: 0.15, 4: 0.8}}
TERT_P = {"IDHmut-codel": 0.95, "IDHmut-noncodel": 0.05, "IDHwt": 0.75}
MGMT_P = {"IDHmut-codel": 0.85, "IDHmut-noncodel": 0.85, "IDHwt": 0.45}

#: log hazard ratios of the simulated survival model (Weibull PH, shape 1.2, scale 4000 days)
HAZARD_LOG_HR: dict[str, float] = {
    "idh_wildtype": 1.0,
    "grade3": 0.4,
    "grade4": 0.9,
    "codel": -0.5,
    "age_per_10y": 0.3,          # per 10 years above 50
    "mgmt_in_idhwt": -0.4,       # methylated MGMT in IDH-wt (temozolomide benefit)
    "kps_per_10": -0.2,          # per 10 KPS points above 80
    "gtr": -0.3,                 # gross total resection
    "risk_group": 0.9,           # latent imaging-linked risk group
}
WEIBULL_SHAPE = 1.2
WEIBULL_SCALE_DAYS = 4000.0

SITES = {"S1": dict(gain=1.00, noise=0.025, bias=0.10), "S2": dict(gain=1.25, noise=0.040, bias=0.18),
         "S3": dict(gain=0.85, noise=0.030, bias=0.06)}

# Relative tissue intensities per modality: background brain tissues and tumour compartments.
TISSUE = {
    #        wm    gm    csf   oedema ncr/net necrosis enhancing
    "t1":  (0.85, 0.60, 0.20, 0.50, 0.45, 0.25, 0.55),
    "t1c": (0.85, 0.62, 0.22, 0.52, 0.47, 0.27, 1.35),
    "t2":  (0.35, 0.50, 1.00, 0.82, 0.80, 0.95, 0.70),
    "flair": (0.45, 0.58, 0.10, 0.88, 0.80, 0.35, 0.75),
}
MODALITIES = ("t1", "t1c", "t2", "flair")


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic cohort (what makes it unique; recorded in ``cohort.json``)."""

    n_cases: int = 40
    seed: int = 0
    resolution_mm: int = 2


def sample_clinical(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Draw the clinical and latent variables of ``n`` patients, including survival.

    Returned columns: case_id, patient_id, site, subtype, idh_mutant, codel_1p19q, who_grade, histology,
    tertp_mutant, mgmt_methylated, age, sex, kps, resection, risk_group, linear_predictor,
    event_time_days, censor_time_days, os_days, os_event.
    """
    subtypes = list(SUBTYPE_P)
    sub = rng.choice(subtypes, size=n, p=list(SUBTYPE_P.values()))
    rows = []
    for i, s in enumerate(sub):
        grades, gp = zip(*GRADE_P[s].items())
        grade = int(rng.choice(grades, p=gp))
        idh = int(s != "IDHwt")
        codel = int(s == "IDHmut-codel")
        if grade == 4:
            histology = "glioblastoma" if not idh else "astrocytoma"
        else:
            histology = "oligodendroglioma" if codel else "astrocytoma"
        age = float(np.clip(rng.normal(60 if not idh else 40, 10), 20, 85))
        kps_p = [0.1, 0.2, 0.3, 0.3, 0.1] if grade == 4 else [0.02, 0.08, 0.2, 0.4, 0.3]
        rows.append(dict(
            subtype=s, idh_mutant=idh, codel_1p19q=codel, who_grade=grade, histology=histology,
            tertp_mutant=int(rng.random() < TERT_P[s]), mgmt_methylated=int(rng.random() < MGMT_P[s]),
            age=round(age, 1), sex="M" if rng.random() < (0.55 if not idh else 0.5) else "F",
            kps=int(rng.choice([60, 70, 80, 90, 100], p=kps_p)),
            resection=str(rng.choice(["GTR", "STR", "biopsy"], p=[0.5, 0.35, 0.15])),
            risk_group=int(rng.random() < 0.5), site=str(rng.choice(list(SITES))),
        ))
    df = pd.DataFrame(rows)
    df.insert(0, "case_id", [f"SYN_{i:03d}" for i in range(n)])
    df.insert(1, "patient_id", [f"SYNP-{i:03d}" for i in range(n)])
    b = HAZARD_LOG_HR
    lp = (b["idh_wildtype"] * (1 - df.idh_mutant) + b["grade3"] * (df.who_grade == 3)
          + b["grade4"] * (df.who_grade == 4) + b["codel"] * df.codel_1p19q
          + b["age_per_10y"] * (df.age - 50) / 10 + b["mgmt_in_idhwt"] * df.mgmt_methylated * (1 - df.idh_mutant)
          + b["kps_per_10"] * (df.kps - 80) / 10 + b["gtr"] * (df.resection == "GTR")
          + b["risk_group"] * df.risk_group)
    df["linear_predictor"] = lp.astype(float)
    # Weibull PH: S(t) = exp(-(t/scale)^k * exp(lp))  ->  T = scale * (-log U / exp(lp))^(1/k)
    u = rng.random(n)
    t_event = WEIBULL_SCALE_DAYS * (-np.log(u) / np.exp(df.linear_predictor.to_numpy())) ** (1 / WEIBULL_SHAPE)
    t_admin = rng.uniform(365, 3650, n)
    t_loss = rng.exponential(4000.0, n)
    t_cens = np.minimum(t_admin, t_loss)
    df["event_time_days"] = np.round(t_event, 1)
    df["censor_time_days"] = np.round(t_cens, 1)
    df["os_days"] = np.maximum(1, np.round(np.minimum(t_event, t_cens))).astype(int)
    df["os_event"] = (t_event <= t_cens).astype(int)
    return df


# ------------------------------------------------------------------------------------------- images
@dataclass
class _Template:
    affine: np.ndarray
    brain: np.ndarray
    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray
    world: np.ndarray  # (3, X, Y, Z) mm coordinates
    depth_mm: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.brain.shape  # type: ignore[return-value]


def load_template(resolution_mm: int = 2) -> _Template:
    """Tissue maps of nilearn's bundled MNI152 template (no download)."""
    from nilearn import datasets

    if resolution_mm not in (1, 2):
        raise ValueError(f"resolution_mm must be 1 or 2, got {resolution_mm}")
    mask_img = datasets.load_mni152_brain_mask(resolution=resolution_mm)
    brain = np.asanyarray(mask_img.dataobj) > 0
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata(), np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution_mm).get_fdata(), np.float32)
    wm, gm = np.clip(wm, 0, 1) * brain, np.clip(gm, 0, 1) * brain
    csf = np.clip(1.0 - wm - gm, 0, 1) * brain
    aff = mask_img.affine.copy()
    ijk = np.indices(brain.shape).reshape(3, -1)
    world = (aff[:3, :3] @ ijk + aff[:3, 3:4]).reshape(3, *brain.shape).astype(np.float32)
    depth = ndimage.distance_transform_edt(brain, sampling=np.abs(np.diag(aff)[:3])).astype(np.float32)
    return _Template(aff, brain, wm, gm, csf, world, depth)


def _field(shape: tuple[int, ...], sigma: float, rng: np.random.Generator,
           cache: dict[Any, Any] | None = None) -> np.ndarray:
    """Smooth standard-normal random field (white noise blurred with ``sigma`` voxels). ``cache``: fields already
    drawn from the same generator state are reused, and the generator is left where the draw would leave it."""
    key = (shape, sigma, repr(rng.bit_generator.state)) if cache is not None else None
    if key is not None and key in cache:
        f, rng.bit_generator.state = cache[key]
        return f
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    f = (f - f.mean()) / (f.std() + 1e-8)
    if key is not None:
        f.flags.writeable = False
        cache[key] = (f, rng.bit_generator.state)
    return f


def _pick_centre(tpl: _Template, row: pd.Series, radius_mm: float, rng: np.random.Generator) -> np.ndarray:
    ok = (tpl.wm > 0.5) & (tpl.depth_mm > 0.55 * radius_mm + 4)
    if row.idh_mutant and rng.random() < 0.75:
        frontal = ok & (tpl.world[1] > 0)
        ok = frontal if frontal.any() else ok
    if row.codel_1p19q:  # oligodendrogliomas often involve cortex: prefer shallower white matter
        shallow = ok & (tpl.depth_mm < np.percentile(tpl.depth_mm[ok], 60))
        ok = shallow if shallow.any() else ok
    idx = np.flatnonzero(ok)
    return np.array(np.unravel_index(rng.choice(idx), tpl.shape))


def make_case(row: pd.Series, tpl: _Template, rng: np.random.Generator, *, core_r: float | None = None,
              margin: float | None = None, centre: np.ndarray | None = None, axes: np.ndarray | None = None,
              labels_only: bool = False, fields: dict[Any, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Images (float32, arbitrary units) and the label map of one synthetic case, plus latent facts.

    ``core_r``, ``margin`` (mm), ``centre`` (voxel) and ``axes`` replace the drawn size, place and shape: the
    scans of one patient of a serial cohort share centre, axes and random fields (the same ``rng`` seed) and
    differ in size (:func:`generate_longitudinal`). ``labels_only``: the label map alone (``{"seg": ...}``, no
    facts), exactly the one the full call draws from the same ``rng`` state (it is drawn first). ``fields``: a
    cache of random fields shared by calls that start from the same ``rng`` state (the scans of one patient)."""
    shape = tpl.shape
    vox = float(abs(tpl.affine[0, 0]))
    g, risk = int(row.who_grade), int(row.risk_group)
    idh = int(row.idh_mutant)
    drawn_r = {2: rng.uniform(9, 16), 3: rng.uniform(10, 17), 4: rng.uniform(12, 20)}[g]
    drawn_margin = rng.uniform(8, 15) if not idh else rng.uniform(3, 7)
    core_r = drawn_r if core_r is None else float(core_r)
    margin = drawn_margin * (1.3 if risk else 1.0) if margin is None else float(margin)
    irregular = (0.25 if not idh else 0.08)
    centre = _pick_centre(tpl, row, core_r + margin, rng) if centre is None else np.asarray(centre)
    axes = rng.uniform(0.8, 1.2, 3) if axes is None else np.asarray(axes, dtype=float)
    d = np.zeros(shape, np.float32)
    for k in range(3):
        d += ((np.arange(shape[k]) - centre[k]).reshape([-1 if j == k else 1 for j in range(3)]) * vox / axes[k]) ** 2
    d = np.sqrt(d)
    sig = 6.0 / vox
    core = d * (1 + irregular * _field(shape, sig, rng, fields)) / core_r
    outer = d * (1 + irregular * _field(shape, sig, rng, fields)) / (core_r + margin)
    label = np.zeros(shape, np.uint8)
    in_brain = tpl.brain
    oedema = (outer < 1) & in_brain
    tumour_core = (core < 1) & in_brain
    label[oedema] = 2
    label[tumour_core] = 1
    necrosis = np.zeros(shape, bool)
    enhancing = np.zeros(shape, bool)
    if g == 4:
        nec_frac = rng.uniform(0.45, 0.6) + (0.12 if risk else 0.0)
        necrosis = tumour_core & (core < nec_frac)
        enhancing = tumour_core & ~necrosis
    elif g == 3:
        patch = _field(shape, 3.0 / vox, rng, fields)
        frac = rng.uniform(0.15, 0.35)
        thr = np.quantile(patch[tumour_core], 1 - frac) if tumour_core.any() else np.inf
        enhancing = tumour_core & (patch > thr)
        if risk:
            necrosis = tumour_core & (core < 0.3) & ~enhancing
    label[necrosis] = 1
    label[enhancing] = 4
    if labels_only:
        return {"seg": label}, {}
    # intensities: tissue mixture, then tumour compartments with partial-volume blending
    site = SITES[row.site]
    hetero = (0.06 if not risk else 0.11) + (0.05 if row.codel_1p19q else 0.0)
    tex = _field(shape, 1.0, rng, fields)
    calc = (_field(shape, 0.7, rng, fields) > 2.6) & tumour_core if row.codel_1p19q else np.zeros(shape, bool)
    comp = {k: ndimage.gaussian_filter(m.astype(np.float32), 0.6) for k, m in
            (("oedema", oedema & ~tumour_core), ("core", tumour_core & ~necrosis & ~enhancing),
             ("necrosis", necrosis), ("enhancing", enhancing))}
    tumour_w = np.clip(sum(comp.values()), 0, 1)
    bias = np.exp(site["bias"] * _field(shape, 20.0 / vox, rng, fields))
    images: dict[str, np.ndarray] = {}
    for mod in MODALITIES:
        wm_v, gm_v, csf_v, ed_v, core_v, nec_v, enh_v = TISSUE[mod]
        normal = tpl.wm * wm_v + tpl.gm * gm_v + tpl.csf * csf_v
        core_val = np.full(shape, core_v, np.float32)
        if row.idh_mutant and not row.codel_1p19q and mod == "flair":
            # T2-FLAIR mismatch: FLAIR-dark centre with a bright rim
            core_val = np.where(core < 0.75, 0.45, 0.85).astype(np.float32)
        if row.idh_mutant and not row.codel_1p19q and mod == "t2":
            core_val[:] = 0.95
        tum = (comp["oedema"] * ed_v + comp["core"] * core_val + comp["necrosis"] * nec_v
               + comp["enhancing"] * enh_v) * (1 + hetero * tex)
        img = normal * (1 - tumour_w) + tum
        if calc.any() and mod in ("t2", "t1", "flair"):
            img = np.where(calc, img * 0.4, img)
        img = img * bias * site["gain"]
        noise = site["noise"] * site["gain"]
        img = np.sqrt((img + rng.normal(0, noise, shape)) ** 2 + rng.normal(0, noise, shape) ** 2)  # Rician
        images[mod] = np.where(in_brain, img, 0).astype(np.float32)
    images["seg"] = label
    facts = dict(centre_mm=[round(float(x), 1) for x in tpl.world[:, centre[0], centre[1], centre[2]]],
                 core_radius_mm=round(float(core_r), 2), oedema_margin_mm=round(float(margin), 2),
                 irregularity=irregular, heterogeneity=round(hetero, 3))
    return images, facts


# ------------------------------------------------------------------------------------------ writing
SUFFIX = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}


def _claim(out: Path, spec: dict[str, Any]) -> Path | None:
    """The temporary folder to build a cohort of ``spec`` in, beside ``out``; None when ``out`` already holds it.
    A folder holding another cohort or anything else is an error."""
    meta_file = out / "cohort.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta.get("spec") == spec:
            return None
        raise FileExistsError(f"{out} holds a synthetic cohort with spec {meta.get('spec')}, not {spec}; "
                              "choose another folder or delete it")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a synthetic cohort; choose an empty folder")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _write_case(folder: Path, case_id: str, images: Mapping[str, np.ndarray], affine: np.ndarray) -> None:
    """``<folder>/<case>/<case>_<suffix>.nii.gz`` for every image (int16, x1000) and the label map (uint8)."""
    cdir = folder / case_id
    cdir.mkdir()
    for key, arr in images.items():
        data, dtype = (arr.astype(np.uint8), np.uint8) if key == "seg" else (np.round(arr * 1000).astype(np.int16),
                                                                             np.int16)
        img = nib.Nifti1Image(data, affine)
        img.set_data_dtype(dtype)
        img.header.set_xyzt_units("mm")
        nib.save(img, cdir / f"{case_id}_{SUFFIX[key]}.nii.gz")


def _publish(tmp: Path, out: Path, meta: Mapping[str, Any]) -> None:
    """Write ``cohort.json`` (``meta`` with the software versions and the template) and move the finished cohort
    into place (``out`` is absent or empty: checked by :func:`_claim`)."""
    import nilearn

    meta = {**meta, "nilearn": nilearn.__version__, "numpy": np.__version__, "template": "MNI152 (nilearn bundled)"}
    (tmp / "cohort.json").write_text(json.dumps(meta, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)


def generate_cohort(out_dir: str | os.PathLike[str], spec: SyntheticSpec = SyntheticSpec(),
                    progress: bool = True) -> Path:
    """Write a synthetic cohort in the BraTS layout to ``out_dir`` (atomically) and return it.

    An existing complete cohort with the same spec is reused; one with another spec is an error.
    Layout: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, ``clinical.csv``, ``truth.csv``,
    ``cohort.json`` (spec, generating model, software versions).
    """
    from tqdm import tqdm

    out = Path(out_dir)
    tmp = _claim(out, asdict(spec))
    if tmp is None:
        return out
    rng = np.random.default_rng(spec.seed)
    clinical = sample_clinical(spec.n_cases, rng)
    tpl = load_template(spec.resolution_mm)
    facts = []
    try:
        for _, row in tqdm(clinical.iterrows(), total=len(clinical), desc="synthetic cohort", disable=not progress):
            case_rng = np.random.default_rng([spec.seed, int(row.case_id.split("_")[1])])
            images, f = make_case(row, tpl, case_rng)
            facts.append({"case_id": row.case_id, **f})
            _write_case(tmp, row.case_id, images, tpl.affine)
        public = ["case_id", "patient_id", "site", "age", "sex", "kps", "histology", "who_grade", "idh_mutant",
                  "codel_1p19q", "tertp_mutant", "mgmt_methylated", "resection", "os_days", "os_event"]
        clinical[public].to_csv(tmp / "clinical.csv", index=False)
        truth = clinical[["case_id", "subtype", "risk_group", "linear_predictor", "event_time_days",
                          "censor_time_days"]].merge(pd.DataFrame(facts), on="case_id")
        truth.to_csv(tmp / "truth.csv", index=False)
        _publish(tmp, out, dict(
            spec=asdict(spec), generator="glioma_nb.synthetic",
            hazard_model=dict(kind="Weibull proportional hazards", shape=WEIBULL_SHAPE, scale_days=WEIBULL_SCALE_DAYS,
                              log_hazard_ratios=HAZARD_LOG_HR),
            subtype_p=SUBTYPE_P, grade_p={k: {str(g): p for g, p in v.items()} for k, v in GRADE_P.items()},
            tertp_p=TERT_P, mgmt_p=MGMT_P, sites=SITES))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------------------------------ preparing
def ensure_cohort_data(cfg: Mapping[str, Any], progress: bool = True) -> None:
    """Generate the synthetic cohort when the config asks for one and it is not there yet."""
    c = cfg["cohort"]
    if c.get("source") != "synthetic":
        return
    root = cohort_root(cfg)
    s = c["synthetic"]
    make = generate_longitudinal if s.get("longitudinal") else generate_cohort
    make(root, SyntheticSpec(int(s["n_cases"]), int(s["seed"]), int(s["resolution_mm"])), progress=progress)


# ------------------------------------------------------------------------------------- serial scans
#: the planted model of the serial cohort (Mandonnet et al. 2003; Pallud et al. 2006 for the 8 mm/year cut)
SERIAL: dict[str, Any] = {
    "idh_wildtype_p": 0.3,                # lower-grade gliomas followed by serial MRI: mostly IDH-mutant
    "codel_p_in_idhmut": 0.4,
    "d0_mm": (25.0, 40.0),                # mean tumour diameter of the first scan, uniform
    "vde_median_mm_per_year": 4.0,        # VDE log-normal (median, SD of log), IDH-wt x vde_idhwt_factor
    "vde_sd_log": 0.55,
    "vde_idhwt_factor": 1.8,
    "vde_range": (0.5, 16.0),
    "max_mtd_mm": 66.0,                   # follow-up stops before the tumour outgrows the template's brain
    "scans": (3, 6),                      # scans per patient, uniform
    "span_years": (1.0, 6.0),             # time from the first to the last scan, uniform (before the cap)
    "core_fraction": 0.6,                 # core radius / whole-tumour radius (the rest is FLAIR abnormality)
    # malignant transformation: exponential proportional hazards, per year
    "transformation_rate_per_year": 0.18,  # baseline hazard at VDE = vde_reference, IDH-mutant
    "vde_reference": 4.0,
    "transformation_log_hr": {"vde_per_mm_per_year": 0.15, "idh_wildtype": 0.7},
    # overall survival: Weibull PH from the first scan (shape, scale in days), log HRs
    "os_shape": 1.3, "os_scale_days": 9000.0,
    "os_log_hr": {"idh_wildtype": 1.0, "age_per_10y": 0.3, "vde_per_mm_per_year": 0.08},
}


def _serial_patients(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Patient-level variables of the serial cohort: clinical, planted growth, transformation and survival."""
    p = SERIAL
    rows = []
    for i in range(n):
        idh = int(rng.random() >= p["idh_wildtype_p"])
        codel = int(idh and rng.random() < p["codel_p_in_idhmut"])
        vde = float(np.clip(p["vde_median_mm_per_year"] * (1 if idh else p["vde_idhwt_factor"])
                            * np.exp(rng.normal(0, p["vde_sd_log"])), *p["vde_range"]))
        d0 = float(rng.uniform(*p["d0_mm"]))
        age = float(np.clip(rng.normal(38 if idh else 55, 11), 18, 85))
        rows.append(dict(patient_id=f"SYNLP-{i:03d}", idh_mutant=idh, codel_1p19q=codel, age=round(age, 1),
                         sex="M" if rng.random() < 0.55 else "F", kps=int(rng.choice([70, 80, 90, 100],
                                                                                   p=[0.1, 0.3, 0.4, 0.2])),
                         resection=str(rng.choice(["GTR", "STR", "biopsy"], p=[0.2, 0.4, 0.4])),
                         site=str(rng.choice(list(SITES))), vde_mm_per_year=round(vde, 3), d0_mm=round(d0, 2),
                         n_scans=int(rng.integers(p["scans"][0], p["scans"][1] + 1)),
                         span_years=float(rng.uniform(*p["span_years"]))))
    df = pd.DataFrame(rows)
    b = p["transformation_log_hr"]
    lp_t = b["vde_per_mm_per_year"] * (df.vde_mm_per_year - p["vde_reference"]) + b["idh_wildtype"] * (1 - df.idh_mutant)
    df["transformation_lp"] = lp_t
    df["transformation_latent_days"] = np.round(
        rng.exponential(1.0, n) / (p["transformation_rate_per_year"] * np.exp(lp_t)) * 365.25, 1)
    o = p["os_log_hr"]
    lp_o = (o["idh_wildtype"] * (1 - df.idh_mutant) + o["age_per_10y"] * (df.age - 50) / 10
            + o["vde_per_mm_per_year"] * (df.vde_mm_per_year - p["vde_reference"]))
    df["os_lp"] = lp_o
    df["os_latent_days"] = np.round(p["os_scale_days"] * (-np.log(rng.random(n)) / np.exp(lp_o)) ** (1 / p["os_shape"]), 1)
    df["censor_days"] = np.round(rng.uniform(6, 12, n) * 365.25, 1)   # administrative, after the scans
    return df


def _serial_timeline(pt: pd.Series, rng: np.random.Generator, max_mtd_mm: float | None = None,
                     min_years: float = 0.75) -> list[float]:
    """Scan days of one patient: evenly spread over the span (jittered), capped by size (the tumour reaches
    ``max_mtd_mm``, default :data:`SERIAL`'s, no sooner than ``min_years``) and by death."""
    p = SERIAL
    cap_years = max(((p["max_mtd_mm"] if max_mtd_mm is None else max_mtd_mm) - pt.d0_mm) / pt.vde_mm_per_year,
                    min_years)
    span = min(pt.span_years, cap_years) * 365.25
    k = int(pt.n_scans)
    days = [0.0] + [span * j / (k - 1) + rng.uniform(-0.15, 0.15) * span / (k - 1) for j in range(1, k - 1)] + [span]
    days = [round(d) for d in days]
    return [d for d in days if d < pt.os_latent_days or d == 0]


def _serial_truth_row(pt: pd.Series, days: list[float], transformed_at: float | None, ids: dict[str, Any],
                      size: dict[str, Any]) -> dict[str, Any]:
    """A patient's row of a serial cohort's ``truth.csv`` (``ids`` first, ``size``: the baseline size columns)."""
    last = days[-1]
    return dict(**ids, vde_mm_per_year=pt.vde_mm_per_year, **size, idh_mutant=pt.idh_mutant, n_scans=len(days),
                last_scan_days=last, transformation_latent_days=pt.transformation_latent_days,
                transformation_observed=int(transformed_at is not None),
                transformation_days=transformed_at if transformed_at is not None else last,
                transformation_lp=round(float(pt.transformation_lp), 4),
                os_latent_days=pt.os_latent_days, os_lp=round(float(pt.os_lp), 4))


def _write_serial_tables(tmp: Path, tps: list[dict], clin: list[dict], truth: list[dict], scans: list[dict]) -> None:
    """A serial cohort's timepoints, clinical, truth and per-scan truth tables into ``tmp``."""
    for name, rows in (("timepoints", tps), ("clinical", clin), ("truth", truth), ("scans_truth", scans)):
        pd.DataFrame(rows).to_csv(tmp / f"{name}.csv", index=False)


def generate_longitudinal(out_dir: str | os.PathLike[str], spec: SyntheticSpec = SyntheticSpec(n_cases=40),
                          progress: bool = True) -> Path:
    """Write a synthetic serial-scan cohort (``n_cases`` patients, 3-6 scans each) to ``out_dir`` atomically.

    Each patient's whole tumour grows linearly in mean diameter (MTD = (2V)^(1/3), Mandonnet et al. 2003) at a
    planted velocity of diametric expansion (VDE) from a baseline diameter; the scans share the tumour's place,
    shape and random fields and differ in size. Malignant transformation comes at a latent time drawn from an
    exponential proportional-hazards model in VDE and IDH status (:data:`SERIAL`); from the first scan after it,
    the core enhances around necrosis (grade 4 pattern) and the scan's ``grade`` is 3. Overall survival is
    Weibull PH from the first scan; scans after death are not taken.

    Layout: ``<scan>/<scan>_{t1,t1ce,t2,flair,seg}.nii.gz``; ``timepoints.csv`` (patient_id, case_id, days, visit,
    grade), ``clinical.csv`` (one row per scan, the patient's values; survival from the first scan),
    ``truth.csv`` (planted per patient: VDE, baseline MTD, latent and observed transformation), ``scans_truth.csv``
    (planted MTD per scan) and ``cohort.json`` (spec and the generating model). Reused when complete with the same
    spec; another spec in the folder is an error.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    spec_d = {**asdict(spec), "longitudinal": True}
    tmp = _claim(out, spec_d)
    if tmp is None:
        return out
    rng = np.random.default_rng([spec.seed, 7])
    patients = _serial_patients(spec.n_cases, rng)
    tpl = load_template(spec.resolution_mm)
    tps, clin, scans, truth = [], [], [], []
    try:
        for i, pt in tqdm(list(patients.iterrows()), desc="synthetic serial cohort", disable=not progress):
            days = _serial_timeline(pt, rng)
            shape_rng = np.random.default_rng([spec.seed, 7, i])
            axes = shape_rng.uniform(0.85, 1.15, 3)
            ell = float((8 * np.pi / 3 * np.prod(axes)) ** (1 / 3))   # MTD = r * ell for an ellipsoid of radius r
            last_r = (pt.d0_mm + pt.vde_mm_per_year * days[-1] / 365.25) / ell
            base = pd.Series(dict(who_grade=2, risk_group=0, idh_mutant=pt.idh_mutant, codel_1p19q=pt.codel_1p19q,
                                  site=pt.site))
            centre = _pick_centre(tpl, base, last_r * 1.1, shape_rng)
            seed_state = shape_rng.integers(2**31)
            transformed_at = next((d for d in days if d >= pt.transformation_latent_days), None)
            fields: dict[Any, Any] = {}   # this patient's scans draw the same random fields
            for k, d in enumerate(days):
                mtd = pt.d0_mm + pt.vde_mm_per_year * d / 365.25
                r = mtd / ell
                after = transformed_at is not None and d >= transformed_at
                row = base.copy()
                row["who_grade"] = 4 if after else 2
                cid = f"SYNL_{i:03d}_{k}"
                vox_ml = float(np.prod(np.abs(np.diag(tpl.affine)[:3]))) / 1000.0
                # the irregular margin and the brain's edge change the volume: one correction, from the label map
                for final in (False, True):
                    images, _ = make_case(row, tpl, np.random.default_rng([seed_state, k if after else 0]),
                                          core_r=SERIAL["core_fraction"] * r, margin=(1 - SERIAL["core_fraction"]) * r,
                                          centre=centre, axes=axes, labels_only=not final, fields=fields)
                    drawn = (2 * (images["seg"] > 0).sum() * vox_ml * 1000) ** (1 / 3)
                    r *= mtd / drawn
                _write_case(tmp, cid, images, tpl.affine)
                tps.append(dict(patient_id=pt.patient_id, case_id=cid, days=d, visit=k + 1, grade=3 if after else 2))
                scans.append(dict(patient_id=pt.patient_id, case_id=cid, days=d, planted_mtd_mm=round(mtd, 3),
                                  transformed=int(after)))
            os_t = min(pt.os_latent_days, pt.censor_days)
            for k, d in enumerate(days):
                clin.append(dict(case_id=f"SYNL_{i:03d}_{k}", patient_id=pt.patient_id, site=pt.site, age=pt.age,
                                 sex=pt.sex, kps=pt.kps, histology="oligodendroglioma" if pt.codel_1p19q else "astrocytoma",
                                 who_grade=2, idh_mutant=pt.idh_mutant, codel_1p19q=pt.codel_1p19q,
                                 resection=pt.resection, os_days=int(max(1, round(os_t))),
                                 os_event=int(pt.os_latent_days <= pt.censor_days)))
            truth.append(_serial_truth_row(pt, days, transformed_at, {"patient_id": pt.patient_id},
                                           {"d0_mm": pt.d0_mm}))
        _write_serial_tables(tmp, tps, clin, truth, scans)
        _publish(tmp, out, dict(spec=spec_d, generator="glioma_nb.synthetic.generate_longitudinal", serial_model=SERIAL,
                                transformation_log_hazard_ratios=SERIAL["transformation_log_hr"],
                                os_log_hazard_ratios=SERIAL["os_log_hr"], sites=SITES))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
