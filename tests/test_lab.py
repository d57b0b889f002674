"""JupyterLab as a user meets it: the server ``make lab`` starts, notebooks executed through kernels that server
starts (REST + websocket, as the Lab front end does), and a headless Chromium rendering a report and the Lab page.

The module's server and the completed synthetic run are made once; everything here is slow (about two minutes).
"""
from __future__ import annotations

import asyncio
import base64
import io as _io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from glioma_nb import config, paths, records, runs
from glioma_nb.api import lab as lab_api

pytestmark = pytest.mark.slow

CHROMIUM = next((shutil.which(b) for b in ("chromium-headless-shell", "chromium", "chromium-browser") if shutil.which(b)),
                None)


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    proc: subprocess.Popen

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
        return json.loads(text) if text else {}

    def run_notebook(self, nb_path: Path, cells: list[str], timeout: float = 600) -> list[list[dict]]:
        """Start a kernel for ``nb_path`` through the server's sessions API (its working directory is the
        notebook's folder, as when Lab opens it), execute ``cells`` in order over the kernel's websocket and
        return each cell's outputs (nbformat output dicts); stops at the first error, as Run All does."""
        sess = self.api("POST", "/api/sessions", {"path": str(nb_path.resolve().relative_to(self.root)),
                                                   "type": "notebook", "name": nb_path.name,
                                                   "kernel": {"name": "python3"}})
        try:
            return asyncio.run(self._execute(sess["kernel"]["id"], cells, timeout))
        finally:
            self.api("DELETE", f"/api/sessions/{sess['id']}")

    async def _execute(self, kernel_id: str, cells: list[str], timeout: float) -> list[list[dict]]:
        ws = self.url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
        conn = await websocket_connect(HTTPRequest(ws, headers={"Authorization": f"token {self.token}"}))
        session, results = uuid.uuid4().hex, []
        try:
            for code in cells:
                msg_id = uuid.uuid4().hex
                await conn.write_message(json.dumps({
                    "header": {"msg_id": msg_id, "session": session, "username": "test", "msg_type": "execute_request",
                               "version": "5.3", "date": ""},
                    "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                    "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                                "allow_stdin": False, "stop_on_error": True}}))
                outputs, replied, idle, t0 = [], False, False, time.monotonic()
                while not (replied and idle):
                    raw = await asyncio.wait_for(conn.read_message(), timeout - (time.monotonic() - t0))
                    if raw is None:
                        raise RuntimeError("the kernel's websocket closed")
                    if isinstance(raw, bytes):  # a message with binary buffers: nothing these notebooks send
                        continue
                    m = json.loads(raw)
                    if m.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    kind = m["msg_type"]
                    if kind in ("stream", "display_data", "execute_result", "error"):
                        outputs.append(nbformat.v4.output_from_msg(m))
                    elif kind == "execute_reply":
                        replied = True
                    elif kind == "status" and m["content"]["execution_state"] == "idle":
                        idle = True
                results.append(outputs)
                if any(o["output_type"] == "error" for o in outputs):
                    break
        finally:
            conn.close()
        return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(synthetic_training_run, tmp_path_factory):
    """The server ``make lab`` starts (same command line; as root here, so --allow-root is exercised), rooted
    where both the notebooks and the test's run folders are reachable."""
    base = tmp_path_factory.getbasetemp()
    root = Path(os.path.commonpath([paths.project_root(), base]))
    port, token = _free_port(), uuid.uuid4().hex
    env = {**os.environ, "GLIOMA_NB_REPORTS": str(base / "reports"), "GLIOMA_NB_DATA": str(base / "data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path_factory.mktemp("jupyter_runtime"))}
    log = open(tmp_path_factory.mktemp("lablog") / "lab.log", "w")
    argv = lab_api.lab_argv(port=port, token=token, root_dir=root, browser=False)
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Lab(f"http://127.0.0.1:{port}", token, root, proc)
    deadline = time.monotonic() + 120
    while True:
        try:
            server.api("GET", "/api/status")
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                raise RuntimeError(f"JupyterLab did not start: {Path(log.name).read_text()[-3000:]}") from None
            time.sleep(0.5)
    yield server
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _text(outputs: list[dict]) -> str:
    parts = []
    for o in outputs:
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif o["output_type"] == "error":
            parts.append("\n".join(o["traceback"]))
        else:
            data = o.get("data", {})
            parts.append(str(data.get("text/markdown", "")) + str(data.get("text/plain", "")))
    return "\n".join(parts)


def _errors(results: list[list[dict]]) -> str:
    return "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(o["traceback"]))
                     for outs in results for o in outs if o["output_type"] == "error")


def test_lab_command_line_is_what_a_container_user_needs():
    argv = lab_api.lab_argv(port=8890, token="t0k")
    assert Path(argv[0]).name == "jupyter" and Path(argv[0]).parent == Path(sys.executable).parent
    assert f"--ServerApp.root_dir={paths.project_root()}" in argv and "--LabApp.default_url=/lab/tree/notebooks" in argv
    assert "--IdentityProvider.token=t0k" in argv and "--ServerApp.port=8890" in argv
    assert ("--allow-root" in argv) == (os.geteuid() == 0)


def test_a_notebook_opened_on_its_own_builds_on_the_latest_completed_run(lab, synthetic_training_run):
    """04_stratify with no run folder, through a kernel the Lab server started: it states the upstream run it
    uses, fits risk models on that run's image features, writes a new interactive run, and changes nothing
    in the upstream run."""
    yaml_path, _ = synthetic_training_run
    cohort = Path(yaml_path).stem
    upstream = runs.latest_completed_run(cohort, "04_stratify")
    assert upstream is not None
    before = runs.tree_hashes(upstream)
    nb_path = paths.notebooks_dir() / "04_stratify.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in nb.cells[1].metadata.get("tags", [])
    # 12 cases, 6 deaths: the base settings refuse a cross-validated Cox model (min_events 10, 5x3 folds);
    # changing them in the first cell gives that analysis
    over = ["stratify.min_events=4", "stratify.outer_splits=2", "stratify.inner_splits=2"]
    cells[0] = f'run_dir = ""\ncohort = {str(yaml_path)!r}\noverrides = {over!r}\nupstream = ""'
    results = lab.run_notebook(nb_path, cells)
    assert not _errors(results), _errors(results)
    assert len(results) == len(cells)
    first = _text(results[1])  # the setup cell: the first output of the notebook
    assert f"upstream: {paths.display_path(upstream)}" in first and "latest completed run" in first
    everything = "\n".join(_text(r) for r in results)
    assert "no image features" not in everything.lower() and "no features" not in everything.lower()
    shown = re.search(r"this interactive run: (\S+)", first).group(1)
    new = paths.reports_dir() / shown.split("/", 1)[1] if shown.startswith("<reports>/") else paths.resolve_path(shown)
    manifest = runs.load_manifest(new)
    assert config.load_yaml(new / "params.yaml")["stratify"]["outer_splits"] == 2
    assert manifest["mode"] == "interactive" and manifest["upstream"]["run_id"] == upstream.name
    assert manifest["steps"] == [{"name": "04_stratify", "status": "completed", "metrics": manifest["steps"][0]["metrics"]}]
    risk = {p.stem: records.load(p) for p in records.find(new / "models", "risk")}
    assert {"risk__age", "risk__signature-age"} <= set(risk), sorted(risk)
    signature = set(runs.read_feature_tables(upstream)["signature"].columns)
    used = {f.split(":", 1)[1] for f in risk["risk__signature-age"].features if f.startswith("signature:")}
    assert used and used <= signature, "the signature risk model does not use the upstream run's image signature"
    assert (new / "figures" / "04_stratify__risk_groups.png").exists()
    assert runs.tree_hashes(upstream) == before, "the upstream run was written to"


def test_an_executed_report_reopened_in_lab_reads_its_run_and_writes_nothing(lab, synthetic_training_run):
    """An executed report (its run_dir injected as a placeholder) re-run cell by cell in a Lab kernel started in
    its run folder: it reads that run's tables, says it is read-only, and leaves every file as it was."""
    _, run_dir = synthetic_training_run
    before = runs.tree_hashes(run_dir)
    nb_path = run_dir / "05_validate.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    results = lab.run_notebook(nb_path, cells)
    assert not _errors(results), _errors(results)
    text = "\n".join(_text(r) for r in results)
    assert "read-only" in text and "scratch folder" in text
    assert "01_segment" in text and "completed" in text  # the run's own step table
    assert runs.tree_hashes(run_dir) == before


# ---------------------------------------------------------------------------------------------- browser
def _nonblank(png: bytes) -> tuple[tuple[int, int], float]:
    img = np.asarray(Image.open(_io.BytesIO(png)).convert("L"), dtype=float)
    return img.shape, float(img.std())


def _shot(url: str, out: Path, size: str = "1280,2400", wait_ms: int = 0) -> bytes:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}",
           f"--screenshot={out}"]
    if wait_ms:
        cmd.append(f"--virtual-time-budget={wait_ms}")
    subprocess.run(cmd + [url], check=True, capture_output=True, timeout=180)
    return out.read_bytes()


def _keep(path: Path) -> None:
    """`make check-browser` keeps the screenshots (GLIOMA_NB_SCREENSHOTS) for a person to look at."""
    dest = os.environ.get("GLIOMA_NB_SCREENSHOTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(dest) / path.name)


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium: `make check-browser` installs Debian's "
                                             "chromium-headless-shell (root) and runs this test")
def test_chromium_renders_a_report_and_the_lab_page(lab, synthetic_training_run, tmp_path):
    _, run_dir = synthetic_training_run
    html = run_dir / "04_stratify.html"
    t0 = time.perf_counter()
    pngs = [base64.b64decode(m) for m in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=\s]+?)"', html.read_text())]
    assert len(pngs) >= 5, "the report's figures are missing"
    for png in pngs:  # every figure decodes and shows something
        (h, w), std = _nonblank(png)
        assert h > 50 and w > 50 and std > 5, (h, w, std)
    (h, w), std = _nonblank(_shot(html.as_uri(), tmp_path / "report_04_stratify.png"))
    assert (h, w) == (2400, 1280) and std > 20, "the report renders blank"
    _keep(tmp_path / "report_04_stratify.png")
    nb = (paths.notebooks_dir() / "04_stratify.ipynb").resolve().relative_to(lab.root)
    page = f"{lab.url}/lab/tree/{nb.as_posix()}?token={lab.token}"
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                          "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
    assert "jp-LabShell" in dom or "jp-Notebook" in dom, dom[:500]
    assert "Stratify" in dom, "the notebook did not open in the Lab page"
    shot = _shot(page, tmp_path / "lab_04_stratify.png", size="1400,900", wait_ms=30000)
    _, std = _nonblank(shot)
    assert std > 10, "the Lab page renders blank"
    _keep(tmp_path / "lab_04_stratify.png")
    print(f"browser checks: {time.perf_counter() - t0:.1f} s")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium: `make check-browser` installs Debian's "
                                             "chromium-headless-shell (root) and runs this test")
def test_chromium_renders_the_supplement_index_with_every_figure(synthetic_training_run, tmp_path):
    import zipfile

    from glioma_nb.publish import publish

    _, run_dir = synthetic_training_run
    publish(run_dir, tmp_path / "supplement.zip", progress=False)
    root = tmp_path / "unzipped"
    with zipfile.ZipFile(tmp_path / "supplement.zip") as zf:
        zf.extractall(root)
    page = (root / "index.html").as_uri()
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=20000", "--dump-dom", page], capture_output=True, text=True,
                         timeout=180).stdout
    n_images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    assert n_images >= 10 and 'data-broken-images="0"' in dom, re.findall(r"data-[a-z-]+=\"\d+\"", dom)
    (h, w), std = _nonblank(_shot(page, tmp_path / "supplement_index.png"))
    assert std > 20, "the supplement's index renders blank"
    _keep(tmp_path / "supplement_index.png")
