"""The README's model table is generated from the registry and must be current."""
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
