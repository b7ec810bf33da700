import re
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(tmp_path, monkeypatch):
    """The README's quickstart, at a tenth of the steps, runs as written."""
    monkeypatch.chdir(tmp_path)
    text = README.read_text()
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("steps=2000", "steps=200").replace("seeds=16", "seeds=2")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert (tmp_path / "run.ckpt").exists()
    assert namespace["run"].steps == 200
    assert len(namespace["sweep"].table()) == 3
