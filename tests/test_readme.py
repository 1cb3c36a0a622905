"""The README's two commands stay true: CI runs the README's test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks(text):
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    blocks = bash_blocks((ROOT / "README.md").read_text())
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert "import torchvision" in test_cmd
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd.strip() in [line.strip() for line in ci_lines]


def test_main_job_command_runs_the_default_matrix():
    blocks = bash_blocks((ROOT / "README.md").read_text())
    main_cmd = next(b for b in blocks if "diffhpo run" in b)
    assert main_cmd.strip().endswith(".venv/bin/diffhpo run")
