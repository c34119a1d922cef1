"""Every snippet of the README's "Using DynaLay from other libraries" marked ``<!-- tested: NAME -->``
runs as written: Python blocks with this interpreter, bash blocks with this venv first on PATH, from a
scratch directory that sees the repository's examples/."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.clients, pytest.mark.slow]  # each runs a client's training end to end
NEEDS = {"sb3": "sb3_contrib", "rl-zoo": "rl_zoo3", "torchrl": "torchrl", "cleanrl": None}
EXPECT = {
    "sb3": r"MaskablePPO: mean Eq\. 2 return -?\d\.\d+, [1-9]\d* main-model updates",
    "rl-zoo": r"Mean reward: ",
    "torchrl": r"torchrl ppo: 4096 frames, \d+ episodes, [1-9]\d* main-model updates while torchrl collected, test accuracy",
    "cleanrl": r"cleanrl ppo: \d+ steps, \d+ episodes, training accuracy",
}


def snippets() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"<!-- tested: ([\w-]+) -->\s*```(\w+)\n(.*?)```", text, flags=re.S)
    return {name: (lang, code) for name, lang, code in found}


def test_the_readme_marks_one_snippet_per_client():
    assert set(snippets()) == set(NEEDS)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_readme_client_snippet_runs(name, tmp_path):
    module = NEEDS[name]
    if module is not None and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[clients]')")
    lang, code = snippets()[name]
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(EXPECT[name], proc.stdout), proc.stdout[-2000:]
