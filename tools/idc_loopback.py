"""An IDC cohort's whole path on this machine, without the network: a few of its scans served by a real S3 server
(moto) on 127.0.0.1, fetched by the real `glioma-nb idc download` (s5cmd), header-checked, and run by the real
`make run-all` (00 with the reference SEG -> 01 scored against it -> ... ).

The manifest is built by glioma-nb from the bundled IDC index: the scans, their series and SeriesInstanceUIDs are
the collection's own (e.g. UPenn-GBM's), and so is the clinical table. The pixels are not: the server holds the
built-in synthetic cohort's images written as DICOM under those UIDs (each scan one synthetic case), at the
index's crdc_series_uuid keys, and the reference SEG is written by dcmqi's itkimage2segimage over the T1c series,
as the IDC's UPenn-GBM SEGs were (its SeriesInstanceUID set to the index's afterwards). The index rows of the
served series are given the served files' instance counts and sizes, so the download's checks are the real ones.

    .venv/bin/python tools/idc_loopback.py --cohort upenn-gbm-idc --scans 3 --work /tmp/upenn-loopback [--run]

Without --run it prints the commands and serves until interrupted; with --run it downloads, runs
`make run-all COHORT=<cohort> ARGS="--set cohort.root=<work>/download ..."` and stops the server.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _server(bucket: str):
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, aws_access_key_id="loopback", aws_secret_access_key="loopback",
                          region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}/*", f"arn:aws:s3:::{bucket}"]}]}))
    return server, url, client


def _dcmqi_seg(label: np.ndarray, like, series_dir: Path, out: Path, names: dict[int, str]) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(label.astype(np.uint8))
    img.CopyInformation(like)
    sitk.WriteImage(img, str(out.with_suffix(".nii.gz")))
    code = {1: ("6574001", "Necrosis"), 2: ("79654002", "Edema"), 4: ("4147007", "Mass")}
    meta = {"ContentCreatorName": "glioma-nb^loopback", "ClinicalTrialSeriesID": "1", "ClinicalTrialTimePointID": "1",
            "SeriesDescription": "AIMI Brain MRI AI segmentation", "SeriesNumber": "1000", "InstanceNumber": "1",
            "ContentLabel": "SEGMENTATION", "ContentDescription": "loopback", "ClinicalTrialCoordinatingCenterName": "-",
            "segmentAttributes": [[{
                "labelID": v, "SegmentLabel": name, "SegmentDescription": name, "SegmentAlgorithmType": "AUTOMATIC",
                "SegmentAlgorithmName": "synthetic",
                "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "49755003", "CodingSchemeDesignator": "SCT",
                                                          "CodeMeaning": "Morphologically Altered Structure"},
                "SegmentedPropertyTypeCodeSequence": {"CodeValue": code[v][0], "CodingSchemeDesignator": "SCT",
                                                      "CodeMeaning": code[v][1]}} for v, name in names.items()]]}
    out.with_suffix(".json").write_text(json.dumps(meta))
    subprocess.run([str(BIN / "itkimage2segimage"), "--inputImageList", str(out.with_suffix(".nii.gz")),
                    "--inputDICOMDirectory", str(series_dir), "--inputMetadata", str(out.with_suffix(".json")),
                    "--outputDICOM", str(out)], check=True, capture_output=True)
    out.with_suffix(".nii.gz").unlink()
    out.with_suffix(".json").unlink()
    return out


def build(cohort: str, n_scans: int, work: Path, client, bucket: str) -> tuple[pd.DataFrame, Path]:
    """Write and upload ``n_scans`` scans; returns the patched index rows and the cohort YAML's manifest path."""
    import pydicom
    import SimpleITK as sitk

    from glioma_nb import config, io, synthetic
    from glioma_nb.preprocess import dicom
    from glioma_nb.sources import idc

    cfg = config.resolve_config(cohort, [])
    spec = idc.IdcSpec.from_config(cfg)
    index = idc.load_index(spec.collection)
    man = idc.build_manifest(cfg, index=index).table
    scans = [s for s, g in man.groupby("scan_id", sort=True) if "seg" in set(g["modality"])][:n_scans]
    syn_cfg = config.resolve_config("synthetic", [])
    synthetic.ensure_cohort_data(syn_cfg, progress=False)
    syn = io.load_cohort(syn_cfg, progress=False)
    rows = []
    for scan, case in zip(scans, syn.case_ids):
        got = man[man["scan_id"] == scan].set_index("modality")
        files: dict[str, list[Path]] = {}
        for m in spec.modalities:
            r = got.loc[m]
            img = sitk.ReadImage(str(syn.case(case).images[m]))
            tags = {"0008|0031": "120000", "0018|0010": "GADAVIST"} if m == "t1c" else {"0008|0031": "100000"}
            files[m] = dicom.write_series(img, work / "series" / scan / m, str(r["SeriesDescription"]),
                                          int(float(r["SeriesNumber"] or 0) or 1), patient_id=str(r["patient_id"]),
                                          study_uid=str(r["StudyInstanceUID"]), series_uid=str(r["SeriesInstanceUID"]),
                                          tags=tags)
        on = str(cfg["cohort"]["idc"]["seg"].get("modality", "t1c"))
        label = np.asarray(syn.load_label(case).dataobj).astype(np.uint8).transpose(2, 1, 0)
        like = sitk.ReadImage([str(f) for f in dicom.find_series(work / "series" / scan / on)[0].files])
        (work / "series" / scan / "seg").mkdir(parents=True)
        seg = _dcmqi_seg(label, like, work / "series" / scan / on, work / "series" / scan / "seg" / "seg.dcm",
                         {1: "Necrosis", 2: "Edema", 4: "Enhancing tumor"})
        ds = pydicom.dcmread(seg)
        ds.SeriesInstanceUID = str(got.loc["seg", "SeriesInstanceUID"])   # the index's, as the manifest names it
        ds.save_as(seg)
        files["seg"] = [seg]
        for m, fs in files.items():
            uid = str(got.loc[m, "SeriesInstanceUID"])
            row = index[index["SeriesInstanceUID"] == uid].iloc[0].to_dict()
            crdc = str(row["crdc_series_uuid"]) or str(uuid.uuid4())
            for f in fs:
                client.upload_file(str(f), bucket, f"{crdc}/{Path(f).name}")
            rows.append({**row, "instanceCount": len(fs), "series_size_MB": sum(Path(f).stat().st_size for f in fs) / 1e6})
    served = pd.DataFrame(rows)
    index = index.set_index("SeriesInstanceUID")
    index.update(served.set_index("SeriesInstanceUID")[["instanceCount", "series_size_MB"]])
    patched = index.reset_index()
    m = idc.build_manifest(cfg, index=patched)
    table = m.table[m.table["scan_id"].isin(scans)]
    path = work / "manifest.csv"
    m.table = table
    idc.write_manifest(m, path)
    return table, path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", default="upenn-gbm-idc")
    ap.add_argument("--scans", type=int, default=3)
    ap.add_argument("--work", type=Path, required=True, help="a new folder for the served files and the download")
    ap.add_argument("--run", action="store_true", help="download and make run-all, then stop")
    ap.add_argument("--set", nargs="*", default=[], help="more --set overrides for the run")
    a = ap.parse_args(argv)
    if a.work.exists() and any(a.work.iterdir()):
        ap.error(f"{a.work} is not empty: give a new folder")
    a.work.mkdir(parents=True, exist_ok=True)
    server, url, client = _server("idc-open-data")
    try:
        t0 = time.perf_counter()
        table, manifest = build(a.cohort, a.scans, a.work, client, "idc-open-data")
        print(f"serving {len(table)} series of {table['scan_id'].nunique()} scans at {url} "
              f"({time.perf_counter() - t0:.0f} s to write)", flush=True)
        dest = a.work / "download"
        env = {**os.environ, "GLIOMA_NB_IDC_ENDPOINT": url}
        download = [str(BIN / "glioma-nb"), "idc", "download", "--cohort", a.cohort, "--manifest", str(manifest),
                    "--dest", str(dest)]
        sets = " ".join(f"--set {s}" for s in [f"cohort.root={dest}", *a.set])
        run = ["make", "-C", str(ROOT), "run-all", f"COHORT={a.cohort}", f"ARGS={sets}"]
        if not a.run:
            print(f"GLIOMA_NB_IDC_ENDPOINT={url} {' '.join(download)}\n{' '.join(run[:4])} ARGS=\"{sets}\"\n"
                  "serving until interrupted (Ctrl-C)", flush=True)
            while True:
                time.sleep(3600)
        for cmd in (download, run):
            print("+", " ".join(cmd), flush=True)
            t0 = time.perf_counter()
            code = subprocess.run(cmd, env=env).returncode
            print(f"exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)
            if code:
                return code
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
