"""The times and the overview figure that the README and the docs quote, from one measured fresh-check.

The docs used to carry times and a figure copied by hand, and drifted from what happens (issue 46). Now:

    ../shared/tools/fresh-check --with-shared | tee /tmp/fresh.log
    .venv/bin/python tools/measured_docs.py /tmp/fresh.log

reads the fresh-check's own output (its `make test` and `make run-all` lines), the pytest log it names and the
run folder its clone wrote (`manifest.json`: each step's seconds, the commit), and writes

- `docs/assets/measured.json`: those figures, the record every quoted time comes from;
- `docs/assets/overview.png`: the overview figure drawn from that run (tools/overview_figure.py);
- the blocks between `<!-- measured:NAME -->` and `<!-- /measured -->` in README.md, docs/index.md and
  docs/quickstart.md, rendered from measured.json;
- with it, the seconds per case of the latest `make bench-segment` JSONs in bench/results (git-ignored, so copied
  into measured.json), which the "time per 100 cases" block quotes.

`--render` re-renders the blocks from the committed measured.json only. tests/test_docs.py fails when a block
differs from what measured.json renders, so a time in the docs is always the recorded run's.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "docs" / "assets" / "measured.json"
FILES = ("README.md", "docs/index.md", "docs/quickstart.md")
BLOCK = re.compile(r"(<!-- measured:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /measured -->)", re.S)
STEPS = ("00_preprocess", "01_segment", "02_signature", "03_classify", "04_stratify", "05_validate", "06_longitudinal")


# ------------------------------------------------------------------------------------------- reading a check
def parse_fresh_log(text: str) -> dict:
    """The fresh-check's summary lines: seconds of `make test` and `make run-all`, their logs, the run folder."""
    test = re.search(r"make test: exit (\d+) in (\d+) s\s+\(log: (\S+?);", text)
    run = re.search(r"make run-all (?:COHORT=(\S+) )?: exit (\d+) in (\d+) s\s+\(log: (\S+?)\)", text)
    folder = re.search(r"run folder: (\S+)", text)
    if not (test and run and folder):
        raise SystemExit("not a fresh-check output: expected its 'make test: exit ...', 'make run-all ...' and "
                         "'run folder: ...' lines (run ../shared/tools/fresh-check --with-shared | tee FILE)")
    if test.group(1) != "0" or run.group(2) != "0":
        raise SystemExit(f"the fresh-check failed (make test exit {test.group(1)}, make run-all exit {run.group(2)}): "
                         "the docs quote only a passing check")
    test_log = Path(test.group(3))
    return {"make_test_s": int(test.group(2)), "test_log": test_log, "cohort": run.group(1) or "synthetic",
            "make_run_all_s": int(run.group(3)), "run_dir": test_log.parent / "project" / folder.group(1).rstrip("/")}


def parse_pytest_log(text: str, n_slowest: int = 10) -> dict:
    """pytest's last line (passed, skipped, seconds) and its slowest durations."""
    last = re.findall(r"=+ (.*?) in ([\d.]+)s(?: \([\d:]+\))? =+", text)
    if not last:
        raise SystemExit("the test log has no pytest summary line")
    counts_text, seconds = last[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|skipped|failed|errors?|xfailed)", counts_text)}
    slowest = [{"seconds": float(s), "phase": p, "test": t}
               for s, p, t in re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)", text, re.M)][:n_slowest]
    return {"pytest_s": round(float(seconds)), "passed": counts.get("passed", 0), "skipped": counts.get("skipped", 0),
            "slowest": slowest}


def record(fresh: dict) -> dict:
    """The measured.json record of a fresh-check (what :func:`parse_fresh_log` read of its output)."""
    tests = parse_pytest_log(fresh["test_log"].read_text())
    manifest = json.loads((fresh["run_dir"] / "manifest.json").read_text())
    if manifest.get("status") != "completed":
        raise SystemExit(f"{fresh['run_dir']}: the run is {manifest.get('status')}, not completed")
    steps = {s["name"]: round(float(s["seconds"])) for s in manifest["steps"]}
    return {"commit": str(manifest["git"]["commit"])[:7], "date": manifest["created_utc"][:10],
            "run_id": manifest["run_id"], "cohort": manifest["cohort"],
            "make_run_all_s": fresh["make_run_all_s"], "steps_s": steps,
            "make_test_s": fresh["make_test_s"], **tests,
            "machine": "this project's 2-core CPU (Intel Xeon, AVX-512), no GPU",
            "segment": segment_record(bench_files())}


SEGMENT_MODELS = {"brats-4mod": "brats-4mod (4-member ensemble, four modalities) on the brats18-dev cases",
                  "flair-wt": "flair-wt (FLAIR) on the brats18-dev cases",
                  "zoo-brats": "the MONAI model zoo's SegResNet bundle on full 240 x 240 x 155 scans"}


def bench_files(folder: Path | None = None) -> list[Path]:
    """The `make bench-segment` JSONs (bench/results/backends_*.json), oldest first (git-ignored: a clean clone has
    none; docs/assets/measured.json keeps the figures the docs quote)."""
    return sorted((folder or ROOT / "bench" / "results").glob("backends_*.json"))


def segment_record(files: list[Path]) -> dict:
    """Per model, from the latest JSON that has it: seconds per case after the first (notebook 01's pass with the
    signature) with the backend `auto` picks on this CPU and in torch, the commit and the file."""
    out: dict = {}
    for f in files:
        d = json.loads(f.read_text())
        commit = d["git"] if isinstance(d["git"], str) else d["git"].get("commit", "")
        for b in d["benchmarks"]:
            model = b.get("model") or b["name"].replace("backends_", "")
            auto, torch = b.get("predicted_openvino") or {}, b.get("predicted_torch") or {}
            if "seconds_per_case_mean_after_first" not in auto:
                continue
            out[model] = {"auto_s_per_case": auto["seconds_per_case_mean_after_first"],
                          "torch_s_per_case": torch.get("seconds_per_case_mean_after_first"),
                          "backend": ", ".join(auto.get("backend_used") or ["openvino"]),
                          "commit": str(commit)[:7], "file": f.name}
    return out


# ------------------------------------------------------------------------------------------------ rendering
def _minutes(seconds: float) -> str:
    words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
             10: "ten", 11: "eleven", 12: "twelve"}
    m = max(1, round(seconds / 60))
    return f"about {words.get(m, str(m))} minute{'s' if m > 1 else ''}"


def _per_100(seconds_per_case: float) -> str:
    minutes = seconds_per_case * 100 / 60
    return f"{minutes / 60:.1f} hours" if minutes >= 90 else f"{minutes:.1f} minutes"


def render(m: dict) -> dict[str, str]:
    """Block name -> its Markdown, from a measured.json record (the same text wherever a block appears)."""
    steps = m["steps_s"]
    notebooks = sum(steps.values())
    per_step = ", ".join(f"{name[:2]} {steps[name]}" for name in STEPS if name in steps)
    caption = (f"ROC curves of notebook 03's classifier tree and the cross-validated risk groups of notebook 04, "
               f"from the {m['cohort']} run {m['run_id']} of the fresh-check at {m['commit']} "
               "(tools/measured_docs.py)")
    times = (f"`make run-all` takes {_minutes(m['make_run_all_s'])} on a 2-core CPU, `make test` "
             f"{_minutes(m['make_test_s'])} (fresh clone at {m['commit']}, {m['date']}: `make run-all` "
             f"{m['make_run_all_s']} s, of which the notebooks {notebooks} s ({per_step}); `make test` "
             f"{m['make_test_s']} s with the venv, pytest {m['pytest_s']} s, {m['passed']} passed, "
             f"{m['skipped']} skipped).")
    slow = ["| seconds | phase | test |", "|---:|---|---|"] + [
        f"| {t['seconds']:.0f} | {t['phase']} | `{t['test'].split('::', 1)[-1]}` |" for t in m["slowest"]]
    seg = m.get("segment") or {}
    parts = []
    for model, words in SEGMENT_MODELS.items():
        r = seg.get(model)
        if r:
            if r["backend"].startswith("torch"):   # `auto` kept torch: the OpenVINO conversion was not faithful
                how = "; in torch: its OpenVINO conversion is refused as unfaithful"
            else:
                how = (f" in {r['backend']}; {_per_100(r['torch_s_per_case'])} in torch" if r.get("torch_s_per_case")
                       else f" in {r['backend']}")
            parts.append(f"{words}: {_per_100(r['auto_s_per_case'])} ({r['auto_s_per_case']:.1f} s per case{how})")
    if "01_segment" in steps:
        parts.append(f"the {m['cohort']} phantoms with brats-4mod: {_per_100(steps['01_segment'] / 40)} "
                     f"({steps['01_segment']} s for 40 in that `make run-all`, the kernel's start included)")
    commits = sorted({r["commit"] for r in seg.values()})
    per_case = ("**Time per 100 cases** (notebook 01 with the network signature and its stability passes, this 2-core "
                f"CPU, the backend `segment.backend: auto` picks; `make bench-segment` at {', '.join(commits) or '?'}, "
                "seconds per case after the first): " + "; ".join(parts) + ".")
    return {"times": times, "per_case": per_case, "overview_readme": f"![{caption}](docs/assets/overview.png)",
            "overview_docs": f"![{caption}](assets/overview.png)",
            "slowest": "The slowest tests of that check:\n\n" + "\n".join(slow)}


def apply(text: str, blocks: dict[str, str], where: str = "") -> str:
    def one(match: re.Match) -> str:
        name = match.group("name")
        if name not in blocks:
            raise SystemExit(f"{where}: unknown measured block {name!r} (known: {', '.join(blocks)})")
        return match.group(1) + blocks[name] + "\n" + match.group(4)
    return BLOCK.sub(one, text)


def blocks_in(text: str) -> dict[str, str]:
    """Block name -> its current body (without the trailing newline)."""
    return {mt.group("name"): mt.group("body").rstrip("\n") for mt in BLOCK.finditer(text)}


def write_blocks(m: dict) -> None:
    blocks = render(m)
    for rel in FILES:
        path = ROOT / rel
        text = path.read_text()
        new = apply(text, blocks, rel)
        if new != text:
            path.write_text(new)
            print(f"{rel}: measured blocks updated")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fresh_log", nargs="?", help="the saved output of ../shared/tools/fresh-check")
    ap.add_argument("--render", action="store_true", help="only re-render the blocks from docs/assets/measured.json")
    args = ap.parse_args(argv)
    if args.render:
        m = json.loads(MEASURED.read_text())
    elif args.fresh_log:
        fresh = parse_fresh_log(Path(args.fresh_log).read_text())
        m = record(fresh)
        sys.path.insert(0, str(ROOT / "tools"))
        import overview_figure

        overview_figure.main(str(fresh["run_dir"]), str(ROOT / "docs" / "assets" / "overview.png"))
        MEASURED.write_text(json.dumps(m, indent=2) + "\n")
        print(f"{MEASURED.relative_to(ROOT)}: run {m['run_id']} at {m['commit']}")
    else:
        ap.error("give the fresh-check's output file, or --render")
    write_blocks(m)


if __name__ == "__main__":
    main()
