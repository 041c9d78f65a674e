"""The README's examples run: its quick start is what CI runs, and every Python API example runs
(on a tiny model instead of the default one)."""

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def python_api_examples() -> list[str]:
    section = README.read_text().split("## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_every_python_api_example_runs(tiny_llama_dir, tmp_path, monkeypatch):
    examples = python_api_examples()
    assert len(examples) >= 4 and 'load_model("smollm2-135m")' in examples[0]
    monkeypatch.chdir(tmp_path)
    for example in examples:
        namespace: dict = {}
        exec(example.replace('"smollm2-135m"', repr(str(tiny_llama_dir))), namespace)  # noqa: S102
        if "report" in namespace:
            assert namespace["report"].summary()["pruned_layers"] > 0
    for folder in ("eggs-2of4", "sparsegpt-refit-4of8", "wanda-2of4"):
        assert (tmp_path / "out" / folder / "sparsity.json").is_file(), folder


def test_quick_start_commands_are_the_ones_ci_runs():
    text = README.read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, re.S)[:2]
    assert commands[0].startswith("scripts/setup.sh && .venv/bin/eggs-ptp prune smollm2-135m")
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci
