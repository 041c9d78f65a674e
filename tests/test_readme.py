"""The README's Python example runs (on a tiny model instead of the default one)."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_python_api_example_runs(tiny_llama_dir, tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert 'load_model("smollm2-135m")' in block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(block.replace('"smollm2-135m"', repr(str(tiny_llama_dir))), namespace)  # noqa: S102
    assert (tmp_path / "out" / "eggs-2of4" / "sparsity.json").exists()
    assert namespace["report"].summary()["kept_fraction"] == 0.5


def test_quick_start_commands_are_the_ones_ci_runs():
    text = README.read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, re.S)[:2]
    assert commands[0].startswith("scripts/setup.sh && .venv/bin/eggs-ptp prune smollm2-135m")
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci
