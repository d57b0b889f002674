"""``glioma-nb idc manifest | download`` (:mod:`glioma_nb.api.idc`)."""
from __future__ import annotations

import argparse
from typing import Any

from glioma_nb.api import idc


def add(sub: Any) -> dict[str, Any]:
    """Add this group's commands to ``sub``; returns command -> handler."""
    ic = sub.add_parser("idc", help="public cohorts from the NCI Imaging Data Commons: the manifest (offline, from the "
                        "bundled index) and the download (s5cmd)")
    ic_sub = ic.add_subparsers(dest="idc_command", required=True)
    im = ic_sub.add_parser("manifest", help="the cohort's series from the bundled IDC index (offline), with a report "
                           "of every scan found, complete or not and why, and the download size")
    im.add_argument("--cohort", required=True, help="an IDC cohort (configs/cohorts/<name>.yaml with cohort.idc)")
    im.add_argument("--out", required=True, help="manifest CSV (never overwritten; <stem>.report.csv beside it)")
    im.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. --set cohort.exclude=[C01] (repeatable; keys as in configs/base.yaml)")
    idl = ic_sub.add_parser("download", help="fetch the manifest's series (resumable, verified, header-checked)")
    idl.add_argument("--cohort", required=True, help="an IDC cohort (configs/cohorts/<name>.yaml with cohort.idc, or "
                                                      "its path): its series rules and download folder")
    idl.add_argument("--manifest", help="the manifest CSV to fetch (default: <dest>/manifest.csv, made from the "
                     "bundled index the first time)")
    idl.add_argument("--dest", help="download folder (default: the cohort's cohort.root)")
    idl.add_argument("--scans", nargs="+", help="only these scan ids")
    idl.add_argument("--dry-run", action="store_true", help="print the size and the s5cmd commands; fetch nothing")
    idl.add_argument("--reserve-gb", type=float, default=1.0, help="refuse to start unless this much stays free")
    idl.add_argument("--workers", type=int, default=8, help="s5cmd --numworkers (parallel files of a series)")
    idl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. --set cohort.exclude=[C01] (repeatable; keys as in configs/base.yaml)")
    return {"idc": handle}


def handle(args: argparse.Namespace, argv: list[str]) -> int:
    if args.idc_command == "manifest":
        idc.idc_manifest(args.cohort, args.out, args.overrides)
    else:
        idc.idc_fetch(args.cohort, args.manifest, args.dest, args.scans, args.dry_run, args.reserve_gb, args.workers,
                      args.overrides)
    return 0
