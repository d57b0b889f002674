"""The published supplement (glioma-nb publish), the participant flow and the print figures."""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from glioma_nb import flow, paths, plotting, runs
from glioma_nb.classify import cv
from glioma_nb.classify import step as classify_step
from glioma_nb.publish import PublishError, checklists, crate, publish


# ------------------------------------------------------------------------------------------------ the flow
def test_each_case_is_excluded_once_by_its_first_reason_and_the_flow_balances():
    cases = [f"c{i}" for i in range(10)]
    t = flow.analysis_flow("a", cases, [("no label", ["c0", "c1"]), ("no features", ["c1", "c2"])],
                           analysed=[f"c{i}" for i in range(3, 9)])
    got = t.set_index(["stage", "reason"])["n"]
    assert got[("in", "")] == 10 and got[("excluded", "no label")] == 2 and got[("excluded", "no features")] == 1
    assert got[("excluded", flow.UNEXPLAINED)] == 1          # c9: neither excluded nor analysed, said so
    assert got[("analysed", "")] == 6
    assert flow.balance(t)["balanced"].all()
    with pytest.raises(ValueError, match="did not come in"):
        flow.analysis_flow("a", cases, [], analysed=["x1"])


def test_node_flows_account_for_planted_gaps_exactly():
    """A cohort with planted gaps: missing IDH labels, 1p/19q only for IDH-mutant cases, cases without image
    features, and a node that cannot be trained. Every case is accounted for, with the planted reasons."""
    rng = np.random.default_rng(0)
    n = 60
    ids = [f"p{i:02d}" for i in range(n)]
    idh = rng.integers(0, 2, n).astype(float)
    idh[:6] = np.nan                                   # 6 planted missing IDH labels
    codel = np.where(idh == 1, rng.integers(0, 2, n), np.nan).astype(float)
    clinical = pd.DataFrame({"case_id": ids, "patient_id": ids, "idh_mutant": idh, "codel_1p19q": codel,
                             "who_grade": rng.choice([2, 3], n), "tertp_mutant": np.nan, "mgmt_methylated": np.nan})
    X = pd.DataFrame(rng.normal(size=(n, 4)), index=pd.Index(ids, name="case_id"), columns=list("abcd"))
    X["a"] += np.nan_to_num(idh) * 2
    X = X.drop(index=ids[6:10])                         # 4 planted cases without features (e.g. failed segmentation)
    grid = cv.evaluate({"signature": X}, clinical, nodes=["idh", "codel_1p19q", "tertp"], n_permutations=0,
                       repeats=1, outer_splits=3, inner_splits=2, n_bootstrap=20, refit=False, progress=False)
    t = classify_step.node_flows(clinical, grid, {"signature": X}, ["idh", "codel_1p19q", "tertp"])
    assert flow.balance(t)["balanced"].all() and flow.UNEXPLAINED not in set(t["reason"])
    idh_rows = t[t["analysis"] == "03 idh (signature)"].set_index("reason")["n"]
    assert idh_rows["label missing"] == 6 and idh_rows["no signature features"] == 4 and idh_rows[""].tolist() == [60, 50]
    codel_rows = t[t["analysis"].str.startswith("03 codel_1p19q")]
    not_elig = codel_rows[codel_rows["reason"].str.startswith("not eligible")]["n"].sum()
    assert not_elig == int((idh != 1).sum())           # wild-type and unknown IDH: not eligible for 1p/19q
    tert = t[t["analysis"] == "03 tertp"]
    assert tert.loc[tert["stage"] == "analysed", "n"].item() == 0   # no TERT labels at all: nobody analysed


# ------------------------------------------------------------------------------------------- the figures
def test_km_at_risk_table_counts_the_cases_still_at_risk_at_each_tick():
    import matplotlib.pyplot as plt

    surv = pd.DataFrame({"time": [1, 2, 3, 5, 8, 13, 21, 34, 40, 44], "event": [1, 0, 1, 1, 0, 1, 0, 1, 0, 1],
                         "idh_mutant": [0, 1] * 5})
    fig, ax = plt.subplots()
    plotting.plot_km(surv, "idh_mutant", ax=ax)
    tab = ax.child_axes[0]
    ticks = tab.get_xticks()
    texts = {(round(t.get_position()[0], 6), round(t.get_position()[1], 3)): t.get_text() for t in tab.texts
             if t.get_transform() != tab.transAxes}
    labels = [t.get_text() for t in tab.texts if t.get_transform() == tab.transAxes]
    assert labels == ["no", "yes"]
    for row, grp in ((1.5, 0), (0.5, 1)):
        g = surv[surv["idh_mutant"] == grp]
        for tick in ticks:
            want = f"{int((g['time'] >= tick).sum())} ({int(g.loc[g['time'] <= tick, 'event'].sum())})"
            assert texts[(round(float(tick), 6), row)] == want
    plt.close(fig)


def test_roc_panels_band_only_the_headline_set_in_fixed_colours():
    rows, bands = [], []
    for fs, auc in (("clinical", 0.6), ("signature", 0.8), ("all", 0.7)):
        rows.append(dict(node="idh", feature_set=fs, auc=auc, auc_lo=auc - 0.1, auc_hi=auc + 0.1, n=50))
        f = np.linspace(0, 1, 20)
        bands.append(pd.DataFrame(dict(node="idh", feature_set=fs, fpr=f, tpr=f ** (1 - auc), tpr_lo=f * 0.5, tpr_hi=f)))
    fig = plotting.plot_roc_panels(pd.concat(bands), pd.DataFrame(rows))
    ax = fig.axes[0]
    assert len(ax.collections) == 1                      # one CI band: the headline (signature)
    lines = {ln.get_label().split(":")[0]: ln for ln in ax.get_lines() if ":" in ln.get_label()}
    assert matplotlib.colors.to_hex(ax.collections[0].get_facecolor()[0][:3]) == plotting.set_style("signature")[0]
    assert matplotlib.colors.to_hex(lines["clinical"].get_color()) == plotting.set_style("clinical")[0]
    dashes = {k: ln._unscaled_dash_pattern for k, ln in lines.items()}   # apart in greyscale too
    assert len({str(d) for d in dashes.values()}) == 3


# ------------------------------------------------------------------------------------------ the supplement
def _unzip(z: Path, dest: Path) -> Path:
    with zipfile.ZipFile(z) as zf:
        zf.extractall(dest)
    return dest


def check_supplement(zpath: Path, dest: Path, *, masks: bool = False) -> dict:
    """Everything a reader and a repository need from a supplement; returns the crate's file list."""
    from rocrate.rocrate import ROCrate

    root = _unzip(zpath, dest)
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} - {"ro-crate-metadata.json"}
    listed = {e.id for e in ROCrate(root).data_entities if not e.id.endswith("/")}
    assert listed == on_disk, (listed ^ on_disk)
    page = (root / "index.html").read_text()
    links = set(re.findall(r"""(?:href|src)=['"]([^'"#]+)['"]""", page))
    assert links and all((root / link).is_file() for link in links), [x for x in links if not (root / x).is_file()]
    for a in set(re.findall(r"""href=['"]#([^'"]+)['"]""", page)):
        assert f"id='{a}'" in page
    # no local path or host name anywhere, in text or binary files
    assert crate.leaks(root) == []
    for p in root.rglob("*"):
        if p.suffix in crate.TEXT_SUFFIXES:
            text = p.read_text(errors="replace")
            assert not re.search(r"(?<![\w<.])/(work|home|tmp|root|usr)/", text), p
    images = [p for p in on_disk if p.endswith((".nii.gz", ".nii", ".dcm", ".nrrd", ".mha"))]
    assert bool(images) == masks, images[:3]
    assert not any("/cache/" in p or "/attempts/" in p or p.endswith(".parquet") for p in on_disk)
    for png in root.rglob("*.png"):
        a = np.asarray(Image.open(png).convert("L"))
        assert a.std() > 1, png                               # decodes and is not blank
    fl = pd.read_csv(root / "flow.csv")
    assert flow.balance(fl)["balanced"].all() and flow.UNEXPLAINED not in set(fl["reason"].fillna(""))
    return {"files": on_disk, "page": page, "root": root}


@pytest.mark.slow
def test_publish_a_run_is_a_readable_crate_without_images_or_local_paths(synthetic_training_run, tmp_path):
    _, run_dir = synthetic_training_run
    out = tmp_path / "pub" / "supplement.zip"
    summary = publish(run_dir, out, progress=False)
    got = check_supplement(out, tmp_path / "x")
    prefix = f"runs/{runs.load_manifest(run_dir)['cohort']}"
    for step in ("01_segment", "02_signature", "03_classify", "04_stratify", "05_validate"):
        assert f"{prefix}/{step}.html" in got["files"] and f"{prefix}/{step}.ipynb" in got["files"]
    assert {f"{prefix}/params.yaml", f"{prefix}/requirements.lock", f"{prefix}/manifest.json",
            "checklist_clear.csv", "checklist_tripod_ai.csv", "flow.csv", "model_cards/brats-4mod.md"} <= got["files"]
    assert any(f.endswith(".pdf") for f in got["files"]) and not any(f.endswith(".joblib") for f in got["files"])
    # the index's promise, "every metric with its 95% confidence interval", holds for each row of its headline
    import html as html_mod

    section = got["page"][got["page"].index("<h2 id='headline'>"):]
    table = re.search(r"<table.*?</table>", section, re.S).group(0)
    header = [re.sub(r"<.*?>", "", h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", table, re.S)]
    col = header.index("estimate [95% CI]")
    rows = [[html_mod.unescape(re.sub(r"<.*?>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
            for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
    rows = [r for r in rows if r]
    assert len(rows) >= 5 and all(re.fullmatch(r"-?[\d.]+ \[-?[\d.]+, -?[\d.]+\]", r[col]) for r in rows), rows
    # the checklists: every item once, some answered from the run, the author's marked as such
    clear = pd.read_csv(got["root"] / "checklist_clear.csv")
    tripod = pd.read_csv(got["root"] / "checklist_tripod_ai.csv")
    assert len(clear) == 58 and clear["item"].astype(str).tolist() == [str(i) for i in range(1, 59)]
    assert len(tripod) == len(checklists.TRIPOD_AI)
    for t in (clear, tripod):
        assert set(t["answered_by"]) == {checklists.AUTO, checklists.AUTHOR}
    assert summary["checklists"]["clear"][checklists.AUTO] == int((clear["answered_by"] == checklists.AUTO).sum())
    # a supplement is never overwritten; a failure leaves nothing behind
    with pytest.raises(PublishError, match="never overwritten"):
        publish(run_dir, out, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["supplement.zip"]
    # the masks only when asked, the models only when asked
    with_masks = tmp_path / "masks.zip"
    publish(run_dir, with_masks, include_masks=True, include_models=True, progress=False)
    got = check_supplement(with_masks, tmp_path / "y", masks=True)
    assert any(f.endswith(".joblib") for f in got["files"])


def test_publish_refuses_what_is_not_a_completed_run(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PublishError, match="neither a run folder"):
        publish(tmp_path / "empty", tmp_path / "s.zip", progress=False)
    with pytest.raises(PublishError, match="is a zip"):
        publish(tmp_path / "empty", tmp_path / "s.tar", progress=False)
    assert not (tmp_path / "s.zip").exists()


def test_no_leak_is_found_when_there_is_none_and_one_is_when_there_is(tmp_path):
    (tmp_path / "a.csv").write_text("case,x\nc1,1\n")
    assert crate.leaks(tmp_path) == []
    (tmp_path / "b.json").write_text(json.dumps({"path": str(paths.project_root() / "x")}))
    assert [b.split(" ")[0] for b in crate.leaks(tmp_path)] == ["b.json"]


def test_a_machine_name_is_scrubbed_but_a_short_word_is_left_alone(monkeypatch):
    assert crate.host_is_identifying("gpu-node-17.example.org") and crate.host_is_identifying("labworkstation")
    assert not crate.host_is_identifying("vm") and not crate.host_is_identifying("node")
    monkeypatch.setattr(crate.platform, "node", lambda: "gpu-node-17.example.org")
    text = f"ran on gpu-node-17.example.org in {paths.project_root()}/reports, per node"
    assert crate._scrub(text, {}) == "ran on <host> in ./reports, per node"


@pytest.mark.slow
def test_a_run_made_before_requirements_lock_gets_the_publish_time_environment_said_so(synthetic_training_run, tmp_path):
    import shutil

    _, run_dir = synthetic_training_run
    old = tmp_path / "reports" / run_dir.parent.name / run_dir.name
    shutil.copytree(run_dir, old)
    (old / runs.REQUIREMENTS_LOCK).unlink()
    publish(old, tmp_path / "old.zip", progress=False)
    got = check_supplement(tmp_path / "old.zip", tmp_path / "x")
    lock = (got["root"] / f"runs/{runs.load_manifest(old)['cohort']}" / runs.REQUIREMENTS_LOCK).read_text()
    assert lock.startswith("# publish-time environment") and "\nrocrate==" in lock


def test_two_cohorts_of_one_collection_share_its_cited_dataset(tmp_path):
    """TCGA-LGG's sites DU and FG cite the same DOI: one Dataset entity, two runs pointing at it."""
    from types import SimpleNamespace

    from rocrate.rocrate import ROCrate

    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "t.csv").write_text("x\n1\n")
    (tmp_path / "runs" / "b").mkdir(parents=True)
    (tmp_path / "runs" / "b" / "t.csv").write_text("x\n2\n")
    cit = {"source": "TCGA-LGG", "doi": "10.7937/K9/TCIA.2016.L4LTD3TK", "licence": "CC BY 3.0", "url": ""}
    parts = [SimpleNamespace(prefix=f"runs/{c}", role=r, run_dir=Path(f"/x/{c}"), facts=SimpleNamespace(
        params={"cohort": {"citation": cit, "description": c}}, manifest={"cohort": c, "git": {"commit": "abc"}}))
        for c, r in (("a", "training"), ("b", "validation"))]
    rc = ROCrate(tmp_path, init=True)
    crate._describe(rc, parts, {"name": "s"}, tmp_path)
    datasets = [e for e in rc.get_entities() if e.id.startswith("https://doi.org/")]
    actions = [e for e in rc.get_entities() if e.type == "CreateAction"]
    assert len(datasets) == 1 and len(actions) == 2
    assert all(a["object"][0].id == datasets[0].id for a in actions)


@pytest.mark.slow
def test_a_zip_cut_short_leaves_nothing_behind(synthetic_training_run, tmp_path, monkeypatch):
    from rocrate.rocrate import ROCrate

    _, run_dir = synthetic_training_run

    def dies(self, out_path):
        Path(out_path).write_bytes(b"PK half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ROCrate, "write_zip", dies)
    with pytest.raises(OSError, match="disk full"):
        publish(run_dir, tmp_path / "out" / "s.zip", progress=False)
    assert list((tmp_path / "out").iterdir()) == []
