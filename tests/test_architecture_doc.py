"""docs/architecture.md stays true: every repository path it names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"

# A path is a backticked name with a folder in it (`csrc/ops/`, `norm_ext/ops.py`) or one of the root's
# build files; `norm_ext/_C` (the built library) matches `norm_ext/_C.*`.
PATH = re.compile(r"`([\w.-]+/[\w./-]*|setup\.py|CMakeLists\.txt|pyproject\.toml)`")


def named_paths(text: str) -> list[str]:
    # `<family>` placeholders are templates, not paths.
    return sorted({p for p in PATH.findall(text) if "<" not in p})


def test_every_named_path_exists():
    paths = named_paths(DOC.read_text())
    assert len(paths) > 30, "the path pattern no longer finds the doc's paths"
    missing = [p for p in paths if not (ROOT / p).exists() and not list((ROOT / p).parent.glob(Path(p).name + ".*"))]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_a_missing_path_is_caught():
    found = named_paths("see `csrc/ops/row_norm.h`, `setup.py` and `norm_ext/gone.py`")
    assert found == ["csrc/ops/row_norm.h", "norm_ext/gone.py", "setup.py"]
    assert not (ROOT / "norm_ext/gone.py").exists()
