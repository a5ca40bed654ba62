"""A chapter runs cell by cell in a plain Jupyter kernel, as JupyterLab runs it: nbval (--nbval-lax) executes
chapter 01 with its own parameters cell (no papermill injection, the path the smoke book does not take), with
only the params file pointed at a copy whose outputs go to a temporary folder."""
import subprocess
import sys

import jupytext
import yaml

from causal_lib.config import PROJECT_ROOT


def test_chapter_01_runs_cell_by_cell_under_nbval(tmp_path):
    params = yaml.safe_load((PROJECT_ROOT / "params" / "smoke.yaml").read_text())
    params.setdefault("run", {})["output_root"] = str(tmp_path / "outputs")
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(params))
    nb = jupytext.read(PROJECT_ROOT / "notebooks" / "01_setup_check.py")
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert 'params_file = "params/smoke.yaml"' in cell.source  # what a JupyterLab user edits
    cell.source = cell.source.replace('"params/smoke.yaml"', repr(str(tmp_path / "smoke.yaml")))
    jupytext.write(nb, tmp_path / "01_setup_check.ipynb")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the project's settings: this runs one notebook
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                        "--nbval-current-env", "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
                        str(tmp_path / "01_setup_check.ipynb")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    assert (tmp_path / "outputs" / "smoke" / "metrics" / "setup.json").is_file()
    assert not (PROJECT_ROOT / "01_setup_check.ipynb").exists()
