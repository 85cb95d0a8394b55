"""The README's Python API example runs as written (with a temporary workdir)."""

from __future__ import annotations

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs(tmp_path):
  with open(os.path.join(REPO, "README.md")) as f:
    example = re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)
  assert "runs/api" in example
  code = example.replace("runs/api", str(tmp_path / "api"))
  # A few steps on one device: the example's plumbing is the point, not its accuracy.
  assert "config.train.num_epochs = 3" in code
  code = code.replace(
    "config.train.num_epochs = 3",
    "config.train.num_epochs = 1; config.train.max_steps = 3; config.parallel.num_devices = 1",
  )
  namespace: dict = {}
  exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  results = namespace["results"]
  assert len(results["per_block_test_accuracy"]) == 4
  assert set(namespace["terms"]) == {"invariance", "variance", "covariance"}
  assert os.path.exists(tmp_path / "api" / "results.json")
