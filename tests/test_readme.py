"""The README's model table is generated from the registry and must be current."""
import os
import re
import subprocess
import sys
from pathlib import Path

from tools.update_readme import render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_model_table_is_current():
    text = README.read_text()
    assert render(text) == text, "README model table is stale: run `make readme-table`"


def test_docs_stand_alone():
    """A user who clones the repository has no ../shared: nothing may send readers there."""
    root = Path(__file__).resolve().parents[1]
    files = [root / "README.md", *root.glob("docs/*.md"), *root.glob("benchmarks/*.md"),
             *(root / "src").rglob("*.py"), *(root / "benchmarks").glob("*.py")]
    offenders = [str(f.relative_to(root)) for f in files
                 if "../shared" in f.read_text() or "DESIGN.md" in f.read_text()]
    assert not offenders
    for doc in ("architecture.md", "conventions.md"):
        assert (root / "docs" / doc).is_file() and f"docs/{doc}" in (root / "README.md").read_text()


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_blocks_run_as_written(tmp_path):
    """Every python block of the README runs as written, in order, in a fresh interpreter and an empty directory
    (files a block writes are the next block's to read, as for a reader who pastes them one after another)."""
    blocks = _python_blocks(README.read_text())
    assert len(blocks) >= 3, "the README's python quick start blocks were not found"
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(blocks))
    env = dict(os.environ, PYTHONPATH=str(README.parent / "src"), CONVSCOPE_CACHE_DIR=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_layout_section_is_current():
    """The Layout section is generated from the source tree's docstrings (`make readme-table`)."""
    from tools.update_readme import LAYOUT_BEGIN, LAYOUT_END, layout

    text = README.read_text()
    assert text.split(LAYOUT_BEGIN, 1)[1].split(LAYOUT_END, 1)[0].strip() == layout()
