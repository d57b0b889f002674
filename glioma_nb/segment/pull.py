"""``glioma-nb models pull NAME[@VERSION]``: a public pretrained model fetched, verified and registered.

The shipped catalogue (``segment/catalogue.yaml``, plus ``$GLIOMA_NB_CATALOGUE`` when set) names each model's
archive URLs, the hash its authors publish for it (sha256, or sha1 where that is all they publish), its licence,
training data and the metrics its authors report. A pull:

1. downloads the archive into ``<models>/.downloads/<name>-<version>.zip.part`` over plain HTTP(S) (the URLs the
   catalogue names, in order; the MONAI model zoo's are the ones ``monai.bundle.download`` itself fetches), and a
   pull cut short resumes from the bytes already there (an HTTP Range request; a server that ignores it restarts the
   file from zero); ``--from FILE`` takes an archive fetched elsewhere instead (an offline machine);
2. checks the archive's hash against the catalogue before anything is extracted: a wrong hash removes the download
   and registers nothing;
3. extracts it (no member may leave the folder) and registers the model folder inside with the existing
   ``models import`` of its kind, which loads it and runs it once (a folder that does not run is not registered);
4. writes the model card from the catalogue: where it came from, the verified hash, licence, training data, what its
   authors measured, and that glioma-nb has not measured it.

Runs never download: only this command does (``segment.model: <name>`` then uses the registered copy, whose every
file's sha256 is checked before each run).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from glioma_nb.segment import kinds, registry
from glioma_nb.segment.errors import SegmentationError

CATALOGUE = Path(__file__).with_name("catalogue.yaml")
HASHES = ("sha256", "sha1")
CHUNK = 1 << 16


class PullError(SegmentationError):
    """A model could not be pulled (network, hash, archive): the message names the URL or file and the fix."""


@dataclass(frozen=True)
class Release:
    """One version of a catalogue model."""

    name: str
    version: str
    entry: Mapping[str, Any]      # the model's catalogue entry
    archive: Mapping[str, Any]    # this version's urls, hash, folder, from

    @property
    def hash(self) -> tuple[str, str]:
        """(algorithm, hex digest) the archive must have."""
        pinned = published_hash(self.archive)
        if pinned:
            return pinned
        raise PullError(f"catalogue entry {self.name}@{self.version} pins no sha256 (or sha1): a model without a "
                        "published hash cannot be verified, so it is not pulled")

    @property
    def registered_name(self) -> str:
        return f"{self.name}-{self.version}"


def published_hash(archive: Mapping[str, Any]) -> tuple[str, str] | None:
    """(algorithm, hex digest) a catalogue version pins for its archive (sha256 first, else sha1), or None."""
    algo = next((a for a in HASHES if archive.get(a)), None)
    return (algo, str(archive[algo]).lower()) if algo else None


def reported_metrics(entry: Mapping[str, Any]) -> tuple[str, str]:
    """(where its authors report them, "name value, ...") of a catalogue entry's ``reported_metrics``."""
    metrics = dict(entry.get("reported_metrics") or {})
    where = " ".join(str(metrics.pop("from", "the authors")).split())
    return where, ", ".join(f"{k} {v}" for k, v in metrics.items()) or "none"


def load_catalogue(extra: str | Path | None = None) -> dict[str, Any]:
    """The shipped catalogue, updated by ``extra`` (default ``$GLIOMA_NB_CATALOGUE``) entry by entry."""
    cat = dict(yaml.safe_load(CATALOGUE.read_text()) or {})
    extra = extra or os.environ.get("GLIOMA_NB_CATALOGUE")
    if extra:
        path = Path(extra).expanduser()
        if not path.exists():
            raise PullError(f"catalogue {path} (GLIOMA_NB_CATALOGUE) does not exist")
        cat.update(yaml.safe_load(path.read_text()) or {})
    return cat


def resolve(spec: str, catalogue: Mapping[str, Any] | None = None) -> Release:
    """``NAME`` (its default version) or ``NAME@VERSION`` -> the catalogue's release."""
    catalogue = load_catalogue() if catalogue is None else catalogue
    name, _, version = spec.partition("@")
    if name not in catalogue:
        raise PullError(f"{name!r} is not in the model catalogue (known: {', '.join(sorted(catalogue))}); "
                        "`glioma-nb models catalogue` lists them, or import a folder with `glioma-nb models import`")
    entry = catalogue[name]
    versions = {str(k): v for k, v in (entry.get("versions") or {}).items()}
    version = version or str(entry.get("default_version") or (sorted(versions)[-1] if versions else ""))
    if version not in versions:
        raise PullError(f"{name}@{version}: the catalogue has versions {', '.join(versions) or 'none'}")
    return Release(name, version, entry, versions[version])


def catalogue_table(catalogue: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
    catalogue = load_catalogue() if catalogue is None else catalogue
    rows = []
    for name, entry in catalogue.items():
        for version, arch in (entry.get("versions") or {}).items():
            rows.append({"model": f"{name}@{version}", "kind": entry.get("kind", ""),
                         "hash": (published_hash(arch) or ("none",))[0],
                         "licence": str(entry.get("licence", "")).split(" (")[0],
                         "registered": "yes" if registry.is_registered(f"{name}-{version}") else ""})
    return rows


def file_hash(path: Path, algo: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algo).hexdigest()


# --------------------------------------------------------------------------------------------------- download
def download(url: str, part: Path, timeout: float = 30.0, progress: Callable[[int, int | None], None] | None = None
             ) -> Path:
    """``url`` into ``part``, resuming from the bytes already in ``part`` (HTTP Range); a server that answers the
    whole file (200) restarts it. Returns ``part`` complete; raises ``OSError`` / ``urllib.error.URLError`` when the
    transfer stops (what was received stays in ``part`` for the next call)."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "glioma-nb", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:          # nothing left to send: the file was already complete
            return part
        raise
    with resp:
        if resp.status == 206:
            mode = "ab"
        else:                                  # 200: the whole file, from the start
            mode, have = "wb", 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, mode) as f:
            got = have
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                f.write(block)
                got += len(block)
                if progress:
                    progress(got, total)
        if total is not None and got < total:
            raise OSError(f"connection closed after {got} of {total} bytes")
    return part


def _fetch(rel: Release, root: Path, timeout: float) -> Path:
    urls = [str(u) for u in rel.archive.get("urls") or []]
    if not urls:
        raise PullError(f"{rel.name}@{rel.version}: the catalogue names no URL; fetch the archive yourself and use "
                        f"`glioma-nb models pull {rel.name}@{rel.version} --from FILE`")
    downloads = root / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    part = downloads / f"{rel.registered_name}.zip.part"
    errors = []
    for url in urls:
        try:
            return download(url, part, timeout=timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError, socket.timeout) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
    kept = part.stat().st_size if part.exists() else 0
    raise PullError(f"{rel.name}@{rel.version}: could not download the archive ({'; '.join(errors)})."
                    + (f" {kept} bytes are kept in {part}: the same command resumes from them." if kept else "")
                    + f" On a machine without this network, fetch {urls[0]} elsewhere and run "
                      f"`glioma-nb models pull {rel.name}@{rel.version} --from FILE`")


def verify(rel: Release, archive: Path) -> str:
    """The archive's hash if it is the catalogue's; else PullError (the caller removes what it downloaded)."""
    algo, want = rel.hash
    got = file_hash(archive, algo)
    if got != want:
        raise PullError(f"{archive.name}: its {algo} is {got}, the catalogue pins {want} for {rel.name}@{rel.version}"
                        " (from " + str(rel.archive.get("from", "the catalogue")).split(" (")[0] + "): a different or "
                        "damaged file; refused, nothing registered")
    return got


# ------------------------------------------------------------------------------------------------------ import
def _extract(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                target = (dest / member).resolve()
                if not str(target).startswith(str(dest.resolve()) + os.sep) and target != dest.resolve():
                    raise PullError(f"{archive.name}: member {member!r} would be written outside the folder; refused")
            z.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise PullError(f"{archive.name} is not a zip archive ({exc})") from None


def _model_folder(rel: Release, extracted: Path) -> Path:
    if rel.archive.get("folder"):
        folder = extracted / str(rel.archive["folder"])
        if not folder.is_dir():
            raise PullError(f"{rel.name}@{rel.version}: the archive has no folder {rel.archive['folder']!r}")
        return folder
    kind = rel.entry.get("kind")
    found = []
    for d in [extracted, *sorted(p for p in extracted.rglob("*") if p.is_dir())]:
        try:
            if kinds.detect(d) == kind:
                found.append(d)
        except SegmentationError:
            continue
    found = [d for d in found if not any(d != o and o in d.parents for o in found)]   # the outermost
    if len(found) != 1:
        raise PullError(f"{rel.name}@{rel.version}: {len(found)} {kind} model folders in the archive "
                        f"({[str(f.relative_to(extracted)) for f in found]}); name one as `folder:` in the catalogue")
    return found[0]


def card(rel: Release, entry: Mapping[str, Any], source: str, digest: str, skeleton: str) -> str:
    algo, _ = rel.hash
    said_where, metrics = reported_metrics(rel.entry)
    what_read = skeleton[skeleton.index("## What glioma-nb read"):]
    return f"""# {entry['name']} ({entry['kind']}): {rel.name} {rel.version}, pulled

Pulled with `glioma-nb models pull {rel.name}@{rel.version}` on {entry['imported']} from `{source}`;
the archive's {algo} `{digest}` is the one its authors publish ({rel.archive.get('from', 'the catalogue')}).

**Not measured here.** glioma-nb has not measured this model on any cohort: the numbers below are its authors'.
Its Dice on your cohort is what notebook 01 reports when the cohort has label maps.

## What it is (from the catalogue, `glioma_nb/segment/catalogue.yaml`)
- **Description:** {' '.join(str(rel.entry.get('description', '')).split())}
- **Training data:** {' '.join(str(rel.entry.get('training_data', 'not stated')).split())}
- **Licence:** {rel.entry.get('licence', 'not stated')}
- **Intended use:** {rel.entry.get('intended_use', 'not stated')}
- **Metrics its authors report** ({said_where}): {metrics}
- **Reproduce this registration:** `glioma-nb models pull {rel.name}@{rel.version}` (or `--from` the same archive)

{what_read}"""


def pull(spec: str, from_file: str | Path | None = None, name: str | None = None, root: Path | None = None,
         catalogue: Mapping[str, Any] | None = None, timeout: float = 30.0) -> Path:
    """Pull ``NAME[@VERSION]`` (see the module docstring); returns the registered ``model.yaml``. The model is
    registered as ``<name>-<version>`` unless ``name`` is given; a name already registered is an error."""
    rel = resolve(spec, catalogue)
    root = Path(root or registry.models_dir())
    target_name = name or rel.registered_name
    if registry.is_registered(target_name, root):
        raise PullError(f"{target_name} is already registered in {root / target_name}; use it with "
                        f"--set segment.model={target_name}, or delete that folder to pull it again")
    if from_file:
        archive, source, downloaded = Path(from_file).expanduser().resolve(), f"file {from_file}", False
        if not archive.exists():
            raise PullError(f"--from {from_file}: no such file")
    else:
        archive, downloaded = _fetch(rel, root, timeout), True
        source = str(rel.archive["urls"][0])
    try:
        digest = verify(rel, archive)
    except PullError:
        if downloaded:
            archive.unlink(missing_ok=True)   # a wrong file is not resumed from
        raise
    work = root / f".{target_name}.extracting"
    shutil.rmtree(work, ignore_errors=True)
    try:
        _extract(archive, work)
        folder = _model_folder(rel, work)
        opts = dict(rel.entry.get("import") or {})
        spec_path = registry.import_model(folder, target_name, kind=rel.entry.get("kind"), dest=root, **opts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    entry = yaml.safe_load(spec_path.read_text())
    entry["pulled"] = {"catalogue": rel.name, "version": rel.version, "source": source,
                       rel.hash[0]: digest, "from": " ".join(str(rel.archive.get("from", "")).split())}
    entry["imported_from"] = source
    spec_path.write_text(yaml.safe_dump(entry, sort_keys=False))
    card_path = spec_path.with_name("card.md")
    card_path.write_text(card(rel, entry, source, digest, card_path.read_text()))
    if downloaded:
        archive.unlink(missing_ok=True)
    return spec_path
