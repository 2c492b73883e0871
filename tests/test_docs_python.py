"""The Python how-to's test samples run as written: its blocks that define tests, as one module.

The samples once could not run: the playbook they used was a comment, and the second called a
`refund` tool the page never showed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import outer_environment

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "how-to" / "python.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def sample_tests() -> list[str]:
    """Return the page's Python blocks that define tests, in order."""
    found = PYTHON_BLOCK.findall(PAGE.read_text(encoding="utf-8"))
    return [block for block in found if re.search(r"^def test_", block, re.MULTILINE)]


def test_the_python_how_to_s_pipeline_tests_pass_as_written(tmp_path: Path) -> None:
    """Given the page's test samples written, verbatim and in order, into one test module,
    When pytest runs it in a fresh folder with none of this environment's plangate settings,
    Then every test in it passes.
    """
    samples = sample_tests()
    assert len(samples) == 3, "the page's test samples are no longer the three this test knows"
    module = tmp_path / "test_python_how_to.py"
    module.write_text("\n\n".join(samples), encoding="utf-8")
    env = outer_environment() | {"PYTHONPATH": str(ROOT), "XDG_DATA_HOME": str(tmp_path / "xdg")}

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout, done.stdout
