"""README.md, the first page: short, its Python quick start runs as written, its links and commands exist."""

from __future__ import annotations

import re

from tests.conftest import ROOT, run_script

README = (ROOT / "README.md").read_text()


def test_the_readme_is_a_first_page_of_at_most_250_lines():
    assert len(README.splitlines()) <= 250


def test_the_first_python_block_of_the_readme_runs_as_written(tmp_path):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    res = run_script([str(script)], cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["PGD", "ADV2"]
    for line in lines:
        fooled, l1 = float(line.split()[2]), float(line.split()[4])
        assert 0 <= fooled <= 1 and 0 <= l1 <= 1


def test_the_files_and_configs_the_readme_names_exist():
    for target in re.findall(r"\]\(([^)#]+)\)", README):  # Markdown links and images
        assert (ROOT / target).exists(), target
    for name in re.findall(r"--config ([\w/]+\.yaml)", README):
        assert (ROOT / "configs" / name).is_file(), name
    test_command = re.search(r"pip install -e \"\.\[dev\]\" && (.*)\n", README).group(1)
    assert test_command in (ROOT / ".ci" / "run").read_text().replace("\n", " && "), test_command
