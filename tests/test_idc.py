"""Public cohorts from the NCI Imaging Data Commons: the UPenn-GBM manifest from the real bundled index, the
series rules, the download with the real s5cmd against a real S3 server on loopback (moto), the header check,
DICOM SEG in and out, and the whole path manifest -> download -> 00 -> 01 (scored against the SEG) -> 02 -> 05."""
from __future__ import annotations

import json
import logging
import shutil
import socket
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from conftest import FAST_RUN, SHARED, requires_shared
from dcmqi_tools import dcmqi_seg
from test_preprocess import _pose, simulated_native_case

from glioma_nb import cli, config
from glioma_nb.preprocess import dicom
from glioma_nb.preprocess import register as reg
from glioma_nb.sources import dicomseg, download, idc

BUCKET = "idc-open-data"
AVAILABILITY = SHARED / "tables" / "upenn-gbm" / "UPENN-GBM_data_availability.csv"


# ------------------------------------------------------------------------------------------- the real index
@pytest.fixture(scope="module")
def upenn_all():
    """The UPenn config's manifest over every scan (baseline and follow-up, SEG not required)."""
    cfg = config.resolve_config("upenn-gbm-idc", ["cohort.idc.scans=all", "cohort.idc.seg.require=false"])
    return idc.build_manifest(cfg)


@requires_shared("tables/upenn-gbm")
def test_the_upenn_manifest_is_complete_for_every_scan_with_its_four_series_in_the_index(upenn_all):
    """idc-index-data 25.0.5: 627 of the 671 scans of the availability table have their four structural series in
    the index (567 of 611 baseline, 60 of 60 follow-up); 42 have fewer, 2 patients are absent; ids match."""
    assert upenn_all.idc_version == idc.index_version() == 25
    rep, man = upenn_all.report, upenn_all.table
    table = pd.read_csv(AVAILABILITY)
    assert set(rep["scan_id"]) == set(table["ID"])                    # every id of the table, none invented
    assert rep["status"].value_counts().to_dict() == {"complete": 627, "incomplete": 42, "absent": 2}
    assert sorted(rep.loc[rep["status"] == "absent", "patient_id"]) == ["UPENN-GBM-00464", "UPENN-GBM-00566"]
    done = rep[rep["status"] == "complete"]["scan_id"]
    assert done.str.endswith("_11").sum() == 567 and done.str.endswith("_21").sum() == 60
    assert (rep.loc[rep["status"] == "incomplete", "reason"].str.contains(r"no (?:t1|t1c|t2|flair) series")).all()
    structural = man[man["modality"] != "seg"]
    per_scan = structural.groupby("scan_id")["modality"].apply(sorted)
    assert len(per_scan) == 627 and all(m == ["flair", "t1", "t1c", "t2"] for m in per_scan)
    assert structural["SeriesInstanceUID"].is_unique
    # the traps: scans over two dates, the truncated "...:ProcessedCaP" descriptions, follow-up-only patients,
    # and the 12 scans with two series of one description, assigned provisionally for the header check to settle
    assert rep["reason"].str.startswith("spans 2 dates").sum() == 2
    assert structural["SeriesDescription"].str.endswith(":ProcessedCaP").sum() == 3
    late = rep[rep["patient_id"].between("UPENN-GBM-00612", "UPENN-GBM-00630") & (rep["status"] != "absent")]
    assert len(late) > 0 and late["scan_id"].str.endswith("_21").all()
    same = structural.groupby("scan_id").filter(lambda s: s["SeriesDescription"].duplicated().any())
    assert same["scan_id"].nunique() == 12
    dup_rows = same[same.groupby("scan_id")["SeriesDescription"].transform(lambda d: d.duplicated(keep=False))]
    assert dup_rows["rule"].str.startswith("provisional").all()
    # the download: about 40 GB of structural series over all scans; every URL is IDC's bucket of that series
    assert (structural["series_aws_url"] == "s3://" + structural["series_aws_url"].str[5:]).all()
    assert structural.apply(lambda r: r["crdc_series_uuid"] in r["series_aws_url"], axis=1).all()


def test_without_the_id_table_the_scans_are_named_from_the_index(tmp_path, monkeypatch, capsys):
    """A user without ../shared: the shipped upenn-gbm-idc still gives a manifest from the index in the wheel (ids
    <patient>_<date>, each patient's first scan its baseline), says so, and prints the path typed."""
    monkeypatch.setenv("GLIOMA_NB_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["idc", "manifest", "--cohort", "upenn-gbm-idc", "--out", "m.csv"]) == 0
    out = capsys.readouterr().out
    assert "wrote m.csv (" in out and "<external>" not in out and "cohort.idc.ids.optional" in out
    rep = pd.read_csv(tmp_path / "m.report.csv")
    assert rep["scan_id"].str.fullmatch(r"UPENN-GBM-\d{5}_\d{8}").all()
    done = rep[rep["status"] == "complete"]
    assert done["patient_id"].is_unique and len(done) > 500      # one baseline per patient
    if AVAILABILITY.exists():   # against the id table: its baselines plus the 19 patients seen only at follow-up
        monkeypatch.setenv("GLIOMA_NB_SHARED", str(SHARED))
        named = idc.build_manifest(config.resolve_config("upenn-gbm-idc")).report
        assert len(done) == (named["status"] == "complete").sum() + 19
    monkeypatch.setenv("GLIOMA_NB_SHARED", str(tmp_path / "no-shared"))
    with pytest.raises(idc.IdcError, match="ids.optional: true"):   # a required id table that is absent
        idc.build_manifest(config.resolve_config("upenn-gbm-idc", ["cohort.idc.ids.optional=false"]))


@requires_shared("tables/upenn-gbm")
def test_the_shipped_baseline_config_and_its_report(tmp_path, capsys):
    """The shipped upenn-gbm-idc (baseline scans with the AI SEG) from the CLI: manifest and report written,
    never overwritten, read back."""
    out = tmp_path / "upenn.csv"
    assert cli.main(["idc", "manifest", "--cohort", "upenn-gbm-idc", "--out", str(out)]) == 0
    man = idc.read_manifest(out)
    rep = pd.read_csv(tmp_path / "upenn.report.csv")
    counts = rep["status"].value_counts().to_dict()
    assert counts["complete"] + counts["no reference"] + counts["not selected"] == 627
    assert counts["not selected"] == 60 and counts["incomplete"] == 42
    segs = man[man["modality"] == "seg"]
    assert len(segs) == counts["complete"] and segs["SeriesDescription"].eq("AIMI Brain MRI AI segmentation").all()
    t1c = man[man["modality"] == "t1c"].set_index("scan_id")["SeriesInstanceUID"]
    assert (segs.set_index("scan_id")["source_series"] == t1c.loc[segs["scan_id"]]).all()   # the SEG on its T1c
    assert cli.main(["idc", "manifest", "--cohort", "upenn-gbm-idc", "--out", str(out)]) == 2          # never overwritten
    # not downloaded yet: validation says so and how (GLIOMA_NB_DATA is a fresh folder in the tests)
    capsys.readouterr()
    assert cli.main(["validate", "--cohort", "upenn-gbm-idc"]) != 0
    assert "glioma-nb idc download --cohort upenn-gbm-idc" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- the rules
def _scan(descs: list[str], numbers: list[int] | None = None) -> pd.DataFrame:
    numbers = numbers or list(range(1, len(descs) + 1))
    return pd.DataFrame({"desc": descs, "SeriesNumber_int": numbers,
                         "SeriesInstanceUID": [f"1.2.3.{n}" for n in numbers]})


def _spec(**kw) -> idc.IdcSpec:
    cfg = {"cohort": {"name": "t", "modalities": ["t1", "t1c", "t2", "flair"],
                      "idc": {"collection": "x", **kw}}}
    return idc.IdcSpec.from_config(cfg)


def test_series_rules_settle_what_they_can_and_say_why_not():
    spec = _spec()
    picked, why = idc.assign_series(_scan(["AX T1 FSE", "AX T2", "AX FLAIR", "AX T1 POST"]), spec)
    assert not why and picked["t1"][0] == 0 and picked["t1"][1] == "pattern:t1"   # "FSE" also matched t2
    picked, why = idc.assign_series(_scan(["AX T1 PRE", "AX T1 MPRAGE", "T2", "FLAIR"]), spec)
    assert picked["t1"][0] == 0 and picked["t1c"][0] == 1 and picked["t1c"][1].startswith("pair")
    picked, why = idc.assign_series(_scan(["T1 SAG MPRAGE", "T1 SAG MPRAGE", "T2", "FLAIR"], [9, 4, 2, 3]), spec)
    assert picked["t1"][0] == 1 and picked["t1c"][0] == 0 and picked["t1"][1].startswith("provisional")
    picked, why = idc.assign_series(_scan(["T2", "FLAIR", "AX T1 POST"]), spec)
    assert why[0] == "no t1 series" and "3 'AX T1 POST'" in why[-1]
    picked, why = idc.assign_series(_scan(["T2", "T2 FSE", "T2 TSE", "FLAIR", "AX T1 POST"]), spec)
    assert any(w.startswith("no t1 series") for w in why) and any("candidates for t2" in w for w in why)
    # an override names the series the rules cannot
    picked, why = idc.assign_series(_scan(["T2", "FLAIR", "AX T1 POST", "mystery"]), spec, {"t1": "1.2.3.4"})
    assert not why and picked["t1"] == (3, "override")
    with pytest.raises(idc.IdcError, match="unknown keys in cohort.idc"):
        _spec(colection="y")
    with pytest.raises(idc.IdcError, match="cohort.idc.scans"):
        _spec(scans="first")


# ------------------------------------------------------------------------------------------- a synthetic IDC
@pytest.fixture(scope="module")
def s3():
    """A real S3 server (moto) on 127.0.0.1 with IDC's public bucket (anonymous GET and LIST allowed)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{BUCKET}/*", f"arn:aws:s3:::{BUCKET}"]}]}))
    yield url, client
    server.stop()


SPHERE_CENTRE = (125.0, -110.0, 95.0)   # mm, atlas (LPS) space: the reference lesion of every synthetic scan
SPHERE_RADIUS = 14.0


def _lesion_on(grid: sitk.Image) -> np.ndarray:
    """The reference lesion (oedema shell 2, enhancing core 4) on a native grid of the simulated head."""
    tmpl, _ = reg.template()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in tmpl.GetSize()], indexing="ij"), -1).reshape(-1, 3)
    d = np.array(tmpl.GetDirection()).reshape(3, 3)
    pts = np.array(tmpl.GetOrigin()) + (idx * np.array(tmpl.GetSpacing())) @ d.T
    r = np.linalg.norm(pts - np.array(SPHERE_CENTRE), axis=1).reshape(tmpl.GetSize())
    atlas_lab = sitk.GetImageFromArray(np.where(r < SPHERE_RADIUS / 2, 4, np.where(r < SPHERE_RADIUS, 2, 0))
                                       .astype(np.uint8).transpose(2, 1, 0))
    atlas_lab.CopyInformation(tmpl)
    return sitk.GetArrayFromImage(sitk.Resample(atlas_lab, grid, _pose(), sitk.sitkNearestNeighbor, 0))


def make_collection(root: Path, client, patients=("SYN-001", "SYN-002")) -> pd.DataFrame:
    """Two patients' scans as IDC lays them out: every series (one study each, as UPenn-GBM) in the bucket under
    its crdc_series_uuid, a SEG on the T1c; SYN-002's two T1 series share a description and the post-contrast
    one has the lower SeriesNumber (the provisional order is wrong: the header check must swap them).
    Returns the index rows."""
    rows = []
    for k, pid in enumerate(patients):
        nat = simulated_native_case(root / "nifti" / pid)
        descs = {"t1": "AX T1 PRE", "t1c": "AX T1 POST GAD", "t2": "AX T2", "flair": "AX FLAIR"}
        numbers = {"t1": 3, "t1c": 7, "t2": 4, "flair": 5}
        if k == 1:
            descs.update(t1="T1 SAG MPRAGE", t1c="T1 SAG MPRAGE")
            numbers.update(t1=8, t1c=2)
        files = {}
        for m, nii in nat.items():
            study = f"1.2.826.0.1.3680043.9.7.{k + 1}.{numbers[m]}"
            tags = {"0008|0031": f"10{numbers[m]:02d}00"} if m != "t1c" else {"0018|0010": "GADAVIST", "0008|0031": "120000"}
            if k == 1 and m == "t1c":
                tags["0008|0031"] = "090000"       # the header's series time says nothing here: the agent decides
            uid = f"{study}.1"
            files[m] = dicom.write_series(sitk.ReadImage(str(nii)), root / "series" / pid / m, f"{descs[m]}: Processed_CaPTk",
                                          numbers[m], patient_id=pid, study_uid=study, tags=tags, series_uid=uid)
            rows.append(_upload(client, files[m], pid, study, uid, "MR", f"{descs[m]}: Processed_CaPTk", numbers[m],
                                "2001-01-0" + str(k + 1)))
        # the SEG references the T1c in the order GDCM reads it: SYN-001's written by dcmqi (as every UPenn-GBM SEG
        # of the IDC: no SpatialLocationsPreserved), SYN-002's by glioma-nb's write_seg
        t1c_series = dicom.find_series(root / "series" / pid / "t1c")[0]
        grid = sitk.ReadImage(str(nat["t1c"]))
        lab = _lesion_on(grid)
        (root / "series" / pid / "seg").mkdir(parents=True)
        if k == 0:
            seg = dcmqi_seg(lab, grid, root / "series" / pid / "t1c", root / "series" / pid / "seg" / "seg.dcm",
                            {2: "Edema", 4: "Enhancing tumor"})
            for aside in (seg.with_suffix(".nii.gz"), seg.with_suffix(".json")):
                aside.rename(root / "nifti" / pid / aside.name)     # the series folder holds the SEG alone
        else:
            seg = dicomseg.write_seg(lab, t1c_series.files, root / "series" / pid / "seg" / "seg.dcm",
                                     {2: "Edema", 4: "Enhancing tumor"}, description="AI segmentation")
        study = f"1.2.826.0.1.3680043.9.7.{k + 1}.{numbers['t1c']}"     # the SEG sits in its T1c's study
        rows.append(_upload(client, [seg], pid, study, str(pydicom.dcmread(seg).SeriesInstanceUID), "SEG",
                            "AI segmentation", 900, "2001-01-0" + str(k + 1)))
    return pd.DataFrame(rows)


def _upload(client, files, pid, study, series_uid, modality, desc, number, date) -> dict:
    crdc = str(uuid.uuid4())
    for f in files:
        client.upload_file(str(f), BUCKET, f"{crdc}/{Path(f).name}")
    return {"collection_id": "synthetic_gbm", "PatientID": pid, "StudyInstanceUID": study,
            "SeriesInstanceUID": series_uid, "StudyDate": date, "Modality": modality, "SeriesDescription": desc,
            "SeriesNumber": str(number), "instanceCount": len(files),
            "series_size_MB": sum(Path(f).stat().st_size for f in files) / 1e6, "crdc_series_uuid": crdc,
            "series_aws_url": f"s3://{BUCKET}/{crdc}/*", "aws_bucket": BUCKET}


CLINICAL = Path(__file__).parent / "fixtures" / "idc_synthetic_clinical.csv"


def idc_yaml(path: Path, dest: Path) -> Path:
    path.write_text(yaml.safe_dump({"cohort": {
        "description": "a synthetic IDC collection on a local S3", "source": "raw", "root": str(dest),
        "case_glob": "SYN-*", "modalities": ["t1", "t1c", "t2", "flair"],
        "label": {"present": True, "scheme": "brats2018"}, "raw": {"format": "dicom"},
        "clinical": {"file": str(CLINICAL), "id_column": "ID", "time_unit": "days",
                     "columns": {"age": "Age", "sex": "Sex", "idh_mutant": {"source": "IDH1", "values": {"Wildtype": 0, "Mutated": 1}},
                                 "who_grade": {"constant": 4}, "os_time": "OS", "os_event": "Dead"}},
        "idc": {"collection": "synthetic_gbm", "include": "Processed_CaPTk", "strip": r"\s*:\s*Processed_CaPTk$",
                "seg": {"series": "AI segmentation", "modality": "t1c", "require": True}}}}))
    return path


@pytest.fixture(scope="module")
def collection(s3, tmp_path_factory):
    url, client = s3
    root = tmp_path_factory.mktemp("idc")
    index = make_collection(root, client)
    cfg_yaml = idc_yaml(root / "syn-idc.yaml", root / "download")
    man = idc.build_manifest(config.resolve_config(str(cfg_yaml), []), index=index)
    idc.write_manifest(man, root / "manifest.csv")
    return {"url": url, "client": client, "root": root, "index": index, "yaml": cfg_yaml, "manifest": man}


def test_the_synthetic_manifest(collection):
    man = collection["manifest"]
    assert man.summary()["complete"] == 2, man.text()
    assert len(man.table) == 10
    rules = man.table.set_index(["scan_id", "modality"])["rule"]
    assert rules[("SYN-001_20010101", "t1")] == "pattern:t1" and rules[("SYN-001_20010101", "seg")] == "seg on t1c"
    assert rules[("SYN-002_20010102", "t1")].startswith("provisional")
    # the SEG sits on the series the provisional order calls t1: kept, for the header check to settle
    assert rules[("SYN-002_20010102", "seg")].startswith("seg on t1 (provisional pair")


def test_download_verifies_resumes_and_settles_the_t1_pair_from_headers(collection, tmp_path, monkeypatch):
    monkeypatch.setenv(download.ENDPOINT_ENV, collection["url"])
    table = idc.read_manifest(collection["root"] / "manifest.csv")
    dest = tmp_path / "dl"
    # a download killed half-way: one series finished and recorded, another with 3 files, the last one cut short
    first = table.iloc[0].to_dict()
    res = download.download(table, dest, scans=[first["scan_id"]], check_headers=False)
    assert res["fetched_scans"] == 1
    done_files = {p: p.stat().st_mtime_ns for p in download.series_dir(dest, first).iterdir()}
    second = table[(table["scan_id"] == "SYN-002_20010102") & (table["modality"] == "t2")].iloc[0].to_dict()
    part = download.partial_dir(dest, second)
    part.mkdir(parents=True)
    full = sorted((collection["root"] / "series" / "SYN-002" / "t2").iterdir())
    for f in full[:3]:
        shutil.copy(f, part / f.name)
    (part / full[3].name).write_bytes(full[3].read_bytes()[:100])
    kept = {p.name: p.stat().st_mtime_ns for p in part.iterdir() if p.name != full[3].name}
    out = download.download(table, dest)
    assert out["failed"] == {}
    for r in table.to_dict("records"):
        assert download.is_done(dest, r)
        download.verify(download.series_dir(dest, r), r)
    rec = json.loads((download.series_dir(dest, second) / download.RECORD).read_text())
    assert rec["resumed_from_files"] == 4
    assert all((download.series_dir(dest, second) / n).stat().st_mtime_ns == t for n, t in kept.items())  # not refetched
    assert all(p.stat().st_mtime_ns == t for p, t in done_files.items())    # a finished series is left alone
    assert not any((dest / download.PARTIAL).rglob("*.dcm"))
    # the header check: SYN-001 consistent; SYN-002's provisional pair swapped by the contrast agent
    s1 = dicomseg.read_scan_record(dest / "SYN-001_20010101")
    s2 = dicomseg.read_scan_record(dest / "SYN-002_20010102")
    assert s1["status"] == s2["status"] == "ok"
    assert "swapped" in s2["notes"][0] and "ContrastBolusAgent 'GADAVIST'" in s2["notes"][0]
    rows2 = table[table["scan_id"] == "SYN-002_20010102"].set_index("modality")["SeriesInstanceUID"]
    assert s2["series"]["t1c"] == rows2["t1"] and s2["series"]["t1"] == rows2["t1c"]
    # again: nothing to fetch
    again = download.download(table, dest)
    assert all(v["status"] == "ok" for v in again["checks"].values())
    assert again["bytes"] == 0
    # an override names the pair: a new manifest, nothing fetched again, the header check redone on it
    over = tmp_path / "overrides.csv"
    over.write_text("scan_id,modality,SeriesInstanceUID\n"
                    f"SYN-002_20010102,t1c,{rows2['t1']}\nSYN-002_20010102,t1,{rows2['t1c']}\n")
    cfg = config.resolve_config(str(collection["yaml"]), [f"cohort.idc.overrides={over}"])
    new = idc.build_manifest(cfg, index=collection["index"])
    assert set(new.table[new.table["scan_id"] == "SYN-002_20010102"].set_index("modality").loc[["t1", "t1c"], "rule"]) \
        == {"override"}
    idc.write_manifest(new, tmp_path / "m2.csv")
    assert cli.main(["idc", "download", "--cohort", str(collection["yaml"]), "--manifest", str(tmp_path / "m2.csv"),
                     "--dest", str(dest)]) == 0
    s2 = dicomseg.read_scan_record(dest / "SYN-002_20010102")
    assert s2["status"] == "ok" and s2["notes"][0].startswith("t1/t1c consistent by ContrastBolusAgent")
    assert (dest / download.MANIFEST).read_bytes() == (tmp_path / "m2.csv").read_bytes()
    assert len(list(dest.glob("manifest.*.csv"))) == 0      # the first download here had no pinned manifest
    # back to the first manifest: the one it replaces is kept, never overwritten
    assert cli.main(["idc", "download", "--cohort", str(collection["yaml"]), "--manifest",
                     str(collection["root"] / "manifest.csv"), "--dest", str(dest)]) == 0
    kept = list(dest.glob("manifest.*.csv"))
    assert len(kept) == 1 and kept[0].read_bytes() == (tmp_path / "m2.csv").read_bytes()


def test_a_short_a_changed_and_a_missing_series_are_named(collection, tmp_path, monkeypatch):
    monkeypatch.setenv(download.ENDPOINT_ENV, collection["url"])
    table = idc.read_manifest(collection["root"] / "manifest.csv")
    row = table[table["modality"] == "flair"].iloc[0].to_dict()
    short = dict(row, instance_count=row["instance_count"] + 1)
    with pytest.raises(idc.IdcError, match=rf"series {row['SeriesInstanceUID']} \(flair.*{row['instance_count']} of "
                                           rf"{row['instance_count'] + 1} instances"):
        download.fetch_series(short, tmp_path / "a", collection["url"])
    assert not download.series_dir(tmp_path / "a", row).exists()          # nothing half-written moved into place
    changed = dict(row, size_mb=row["size_mb"] + 0.001)
    with pytest.raises(idc.IdcError, match="bytes after the download"):
        download.fetch_series(changed, tmp_path / "b", collection["url"])
    gone = dict(row, crdc_series_uuid="0000", series_aws_url=f"s3://{BUCKET}/{uuid.uuid4()}/*")
    with pytest.raises(idc.IdcError, match=rf"series {row['SeriesInstanceUID']} \(flair\) of scan .* not on the server"):
        download.fetch_series(gone, tmp_path / "c", collection["url"])
    # disk space: refused before anything is written
    with pytest.raises(idc.IdcError, match="not enough disk space.*--reserve-gb"):
        download.download(table, tmp_path / "d", reserve_gb=1e9)
    assert not (tmp_path / "d").exists()


def test_the_cli_dry_run_prints_the_size_and_the_commands_and_writes_nothing(collection, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(download.ENDPOINT_ENV, collection["url"])
    dest = tmp_path / "dl"
    code = cli.main(["idc", "download", "--cohort", str(collection["yaml"]), "--manifest",
                     str(collection["root"] / "manifest.csv"), "--dest", str(dest), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and not dest.exists()
    assert "10 series of 2 scans to fetch" in out and out.count("s5cmd") >= 10 and collection["url"] in out


def test_a_contradicting_header_is_reported_not_guessed(collection, tmp_path):
    """A pattern put the post-contrast series at t1: the headers say otherwise; the scan is stopped with both
    series named, and 00 refuses it naming the fix."""
    table = idc.read_manifest(collection["root"] / "manifest.csv")
    rows = table[table["scan_id"] == "SYN-001_20010101"].to_dict("records")
    scan_dir = tmp_path / "SYN-001_20010101"
    for m in ("t1", "t1c"):
        src = collection["root"] / "series" / "SYN-001" / m
        r = next(r for r in rows if r["modality"] == m)
        shutil.copytree(src, scan_dir / r["SeriesInstanceUID"])
    swapped = [dict(r, modality={"t1": "t1c", "t1c": "t1"}.get(r["modality"], r["modality"])) for r in rows]
    rec = dicomseg.check_scan(scan_dir, swapped)
    assert rec["status"] == "contradiction"
    assert "contradiction in scan SYN-001_20010101" in rec["notes"][0] and "cohort.idc.overrides" in rec["notes"][0]


def test_a_bad_seg_is_a_problem_of_its_scan_naming_the_file(collection, tmp_path):
    """00's check of a downloaded cohort: SYN-002's SEG cut short is that scan's QC problem (the SEG named, the
    fix said); SYN-001, whose SEG dcmqi wrote, passes the same check."""
    from glioma_nb.preprocess import pipeline

    table = idc.read_manifest(collection["root"] / "manifest.csv")
    dest = tmp_path / "dl"
    for scan, rows in table.groupby("scan_id"):
        pid = scan.split("_")[0]
        for r in rows.to_dict("records"):
            shutil.copytree(collection["root"] / "series" / pid / r["modality"], dest / scan / r["SeriesInstanceUID"])
        assert dicomseg.check_scan(dest / scan, rows.to_dict("records"))["status"] == "ok"
    seg = next((dest / "SYN-002_20010102").glob("*/seg.dcm"))
    seg.write_bytes(seg.read_bytes()[:2000])
    cfg = config.resolve_config(str(idc_yaml(tmp_path / "c.yaml", dest)), [])
    raw, report = pipeline.check_raw(cfg)
    assert [c.case_id for c in raw.cases] == ["SYN-001_20010101"]
    assert raw.cases[0].seg is not None and raw.cases[0].seg_overlap == "refuse"
    (problem,) = report.errors
    assert problem.case == "SYN-002_20010102" and problem.file.endswith("seg.dcm")
    assert "reference SEG: SEG" in problem.message and "truncated (2000 bytes)" in problem.message
    assert "cohort.exclude: [SYN-002_20010102]" in problem.fix
    with pytest.raises(idc.IdcError, match=r"cohort.idc.seg.overlap 'inner': use one of \['refuse', 'nested'\]"):
        idc.IdcSpec.from_config(config.resolve_config(str(cfg_path := tmp_path / "c.yaml"), ["cohort.idc.seg.overlap=inner"]))
    with pytest.raises(idc.IdcError, match=r"unknown keys in cohort.idc.seg: \['tolerance'\]"):
        idc.IdcSpec.from_config(config.resolve_config(str(cfg_path), ["cohort.idc.seg.tolerance=1"]))


def test_a_seg_round_trips_on_its_source_grid(tmp_path):
    img = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 1000, (12, 20, 24)).astype(np.int16))
    img.SetSpacing((1.1, 1.2, 3.0))
    img.SetOrigin((10.0, -5.0, 2.0))
    img.SetDirection((1, 0, 0, 0, 0.8, -0.6, 0, 0.6, 0.8))
    dicom.write_series(img, tmp_path / "src", "AX T1 POST", 5, patient_id="P1")
    series = dicom.find_series(tmp_path / "src")[0]
    lab = np.zeros((12, 20, 24), np.uint8)
    lab[3:7, 5:12, 6:15] = 2
    lab[4:6, 7:10, 8:12] = 4
    lab[5, 8, 9] = 1
    out = dicomseg.write_seg(lab, series.files, tmp_path / "seg.dcm", {1: "Necrosis", 2: "Edema", 4: "Enhancing tumor"})
    back = dicomseg.read_seg(out, series.files)
    np.testing.assert_array_equal(back, lab)
    with pytest.raises(idc.IdcError, match="segment 1 'Necrosis.*matches none"):
        dicomseg.read_seg(out, series.files, {"edema": 2})


@pytest.mark.check
def test_from_the_manifest_to_05_against_a_local_s3(collection, tmp_path, monkeypatch):
    """The whole path on the synthetic collection: download (CLI) -> header check -> 00 (the SEG mapped to BraTS
    space with its T1c's transform) -> 01 scored against it -> 02 -> 05."""
    from glioma_nb import io, runner

    monkeypatch.setenv(download.ENDPOINT_ENV, collection["url"])
    dest = tmp_path / "dl"
    y = idc_yaml(tmp_path / "syn-idc.yaml", dest)
    assert cli.main(["idc", "download", "--cohort", str(y), "--manifest", str(collection["root"] / "manifest.csv")]) == 0
    assert (dest / download.MANIFEST).read_bytes() == (collection["root"] / "manifest.csv").read_bytes()
    run_dir = runner.run(str(y), [*FAST_RUN, "segment.n_overlay_cases=1", "segment.export_dicom_seg=true"],
                         progress=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["name"] for s in manifest["steps"]][0] == "00_preprocess"
    assert {s["status"] for s in manifest["steps"]} == {"completed"}
    assert manifest["idc"]["idc_version"] == idc.index_version() and manifest["idc"]["series"] == 10
    cfg = config.load_yaml(run_dir / "params.yaml")
    cohort = io.load_cohort(cfg, progress=False)
    # the reference lesion, from the SEG, lands where it was drawn in atlas space
    for cid in cohort.case_ids:
        lab = np.asarray(cohort.load_label(cid).dataobj)
        assert set(np.unique(lab)) == {0, 2, 4}
        ijk = np.argwhere(lab > 0).mean(0)
        centre = nib.affines.apply_affine(cohort.load_label(cid).affine, ijk)
        assert np.linalg.norm(centre - np.array([-SPHERE_CENTRE[0], -SPHERE_CENTRE[1], SPHERE_CENTRE[2]])) < 2.0
        vol = (lab > 0).sum() / 1000
        assert abs(vol - 4 / 3 * np.pi * SPHERE_RADIUS ** 3 / 1000) < 0.15 * 4 / 3 * np.pi * SPHERE_RADIUS ** 3 / 1000
    scores = pd.read_csv(run_dir / "tables" / "segmentation_scores.csv")
    assert set(scores["case_id"]) == set(cohort.case_ids) and scores["dice_WT"].notna().all()
    # the predicted masks as DICOM SEG referencing each scan's T1c series: read back, the native-space mask
    raw = json.loads((run_dir / "qc" / "raw_series.json").read_text())
    for case in raw["cases"]:
        cid = case["case_id"]
        native = np.asarray(nib.load(run_dir / "masks" / f"{cid}_native.nii.gz").dataobj).astype(np.uint8)
        back = dicomseg.read_seg(run_dir / "masks" / f"{cid}_seg.dcm", case["series"]["t1c"]["files"],
                                 {"core": 1, "oedema": 2, "enhancing": 4})
        np.testing.assert_array_equal(back, native.transpose(2, 1, 0))
        assert pydicom.dcmread(run_dir / "masks" / f"{cid}_seg.dcm").ReferencedSeriesSequence[0].SeriesInstanceUID \
            == case["series"]["t1c"]["uid"]
    # the inputs' sha256 come from the download records: no downloaded file is read again to hash it
    from glioma_nb import provenance
    from glioma_nb.preprocess import pipeline

    rec = json.loads(next((dest / "SYN-001_20010101").glob("*/" + download.RECORD)).read_text())
    assert set(s for _, s in rec["files"].values()) <= set(manifest["inputs"].values())
    raw_cohort, _ = pipeline.check_raw(config.load_yaml(run_dir / "params.yaml"))
    real = provenance.sha256_file

    def guarded(path):
        assert dest not in Path(path).resolve().parents or Path(path).name == download.MANIFEST, f"hashed {path} again"
        return real(path)

    monkeypatch.setattr(provenance, "sha256_file", guarded)
    assert len(raw_cohort.known_sha256()) == len(raw_cohort.input_files()) == 2 * (38 + 38 + 36 + 38 + 1)
    hashed = provenance.hash_inputs(raw_cohort.input_files(), known=raw_cohort.known_sha256())
    # outside the known roots, same-named files of two scans keep one key each (<external>/<folders>/<name>)
    assert len(hashed) == 302 and all(k.startswith("<external>/") for k in hashed)
    assert len(manifest["inputs"]) == 302 + 2      # and the pinned manifest.csv and the clinical table
    # its supplement carries the IDC manifest it was downloaded from, and (asked for) the DICOM SEGs
    from test_publish import check_supplement

    from glioma_nb.publish import publish

    monkeypatch.setattr(provenance, "sha256_file", real)
    publish(run_dir, tmp_path / "idc.zip", include_masks=True, progress=False)
    got = check_supplement(tmp_path / "idc.zip", tmp_path / "idc_unzipped", masks=True)
    prefix = f"runs/{manifest['cohort']}"
    assert f"{prefix}/idc_manifest.csv" in got["files"] and any(f.endswith("_seg.dcm") for f in got["files"])
    assert f"{prefix}/idc_manifest.csv" in got["page"]
