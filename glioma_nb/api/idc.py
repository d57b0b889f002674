"""Public cohorts from the NCI Imaging Data Commons as plain functions (``glioma-nb idc manifest | download``)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from glioma_nb import compute, config, paths, provenance
from glioma_nb.sources import download as idc_download
from glioma_nb.sources import idc


def idc_manifest(cohort: str, out: str, overrides: Sequence[str] = ()) -> idc.Manifest:
    """``glioma-nb idc manifest``: write the cohort's manifest and report; print the report."""
    cfg = config.resolve_config(cohort, overrides)
    man = idc.build_manifest(cfg)
    path, rep = idc.write_manifest(man, Path(out))
    print(man.text())
    print(f"wrote {paths.terminal_path(path)} ({len(man.table)} series) and {paths.terminal_path(rep)}")
    return man


def idc_fetch(cohort: str, manifest: str | None = None, dest: str | None = None, scans: Sequence[str] | None = None,
              dry_run: bool = False, reserve_gb: float = 1.0, workers: int = 8, overrides: Sequence[str] = ()) -> dict:
    """``glioma-nb idc download``: fetch a manifest's series into the cohort's root (or ``dest``). The manifest
    used is kept as ``<dest>/manifest.csv``, the cohort's pinned definition, which every run records."""
    cfg = config.resolve_config(cohort, overrides)
    if not cfg["cohort"].get("idc"):
        raise config.ConfigError(f"cohort {cohort} has no cohort.idc block: it is not an IDC cohort")
    target = Path(dest) if dest else paths.resolve_path(cfg["cohort"]["root"])
    pinned = target / idc_download.MANIFEST
    if manifest:
        given = Path(manifest)
        table = idc.read_manifest(given)
        if pinned.exists() and not dry_run and pinned.read_bytes() != given.read_bytes():
            # a new definition of the cohort (an override, a newer index): the old one is kept beside it, and
            # every run records the sha256 of the manifest it used
            kept = pinned.with_name(f"manifest.{provenance.utc_now().strftime('%Y%m%dT%H%M%SZ')}.csv")
            pinned.rename(kept)
            print(f"{paths.display_path(pinned)} held another manifest: kept as {kept.name}")
    elif pinned.exists():
        given, table = pinned, idc.read_manifest(pinned)
    else:
        man = idc.build_manifest(cfg)
        print(man.text())
        table, given = man.table, None
    if not dry_run:
        target.mkdir(parents=True, exist_ok=True)
        if not pinned.exists():
            if given is not None:
                shutil.copyfile(given, pinned)
            else:
                idc.write_manifest(man, pinned)
    with compute.Executor.from_config(cfg) as ex:
        res = idc_download.download(table, target, scans=scans, url=(cfg["cohort"]["idc"].get("endpoint")),
                                    dry_run=dry_run, reserve_gb=reserve_gb, workers=workers, executor=ex)
    if not dry_run:
        bad = {k: v for k, v in res["checks"].items() if v and v["status"] != "ok"}
        print(f"fetched {res['fetched_scans']} scan(s), {res['bytes'] / 1e9:.2f} GB in {res['seconds']} s into "
              f"{paths.display_path(target)}" + (f"; header check: {len(bad)} scan(s) not ok:" if bad else ""))
        for k, v in bad.items():
            print(f"  {k}: {v['status']}: " + "; ".join(v["notes"]))
    return res
