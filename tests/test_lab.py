"""Interactive use: a real JupyterLab server serves every chapter .py as a notebook (jupytext contents
manager) with a `parameters` cell; the run index links resolve."""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser

import pytest

from causal_lib.config import PROJECT_ROOT

CHAPTERS = sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab():
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={PROJECT_ROOT}", "--ServerApp.open_browser=False",
           "--ServerApp.allow_root=True"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("jupyter lab exited: " + proc.stdout.read().decode()[-2000:])
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("jupyter lab did not answer within 90 s")
        yield base, token
    finally:  # stop the server whatever happened
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_opens_as_notebook_with_parameters_cell(lab, path):
    base, token = lab
    url = f"{base}/api/contents/notebooks/{path.name}?type=notebook&content=1&token={token}"
    with urllib.request.urlopen(url, timeout=30) as r:
        model = json.loads(r.read())
    assert model["type"] == "notebook", model.get("type")
    cells = model["content"]["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert "params_file" in "".join(tagged[0]["source"])
    assert cells[0]["cell_type"] == "markdown"  # every chapter opens with its intro


def test_all_nine_chapters_exist():
    assert [p.stem[:2] for p in CHAPTERS] == [f"{i:02d}" for i in range(1, 10)]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href"]


def test_index_links_resolve(tmp_path):
    from causal_lib.book.reports import record_verdict, write_report
    from causal_lib.core.run_folder import RunPaths
    from causal_lib.book.share import archive_run, write_index

    paths = RunPaths(tmp_path / "run").make()
    (paths.root / "run.json").write_text(json.dumps({"params_hash": "x", "chapters": {
        "01_setup_check": {"status": "ok", "wall_s": 3, "peak_rss_gb": 0.3},
        "05_train[causal]": {"status": "failed", "error": "boom", "wall_s": 1, "peak_rss_gb": 0.2}}}))
    for stem in ("01_setup_check", "05_train__causal"):
        (paths.html / f"{stem}.html").write_text("<html></html>")
    write_report(paths, "WEEK1_SETUP_REPORT.md", "# r\n")
    record_verdict(paths, "01_setup_check", "PASS", "all good")
    index = write_index(paths)
    parser = _Links()
    parser.feed(index.read_text())
    assert len(parser.hrefs) >= 4
    for href in parser.hrefs:
        assert (index.parent / href).resolve().exists(), href
    text = index.read_text()
    assert "PASS" in text and "all good" in text and "FAILED" in text
    tar = archive_run(paths.root)
    import tarfile

    names = tarfile.open(tar).getnames()
    assert "run/reports/WEEK1_SETUP_REPORT.md" in names and not any("checkpoints" in n for n in names)
