"""docs/your_data.md runs as written: its ```bash blocks, in order, in one
`bash -euo pipefail` from the repository root, with `$DEMO` a fresh folder."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "your_data.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)


def bash_blocks() -> list[str]:
  return BLOCK.findall(PAGE.read_text(encoding="utf-8"))


def test_the_page_has_each_step():
  script = "\n".join(bash_blocks())
  for command in ("m3oe_jax.data.prepared", "--verify", "m3oe_jax.train", "m3oe_jax.evaluate",
                  "m3oe_jax.predict", "m3oe_jax.export"):
    assert command in script


def test_the_commands_run(tmp_path):
  demo = tmp_path / "demo"
  env = {**os.environ, "DEMO": str(demo),
         "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
  env.pop("PYTHONPATH", None)  # the checkout is found as the cwd, as for a reader
  script = tmp_path / "your_data.sh"
  script.write_text("\n".join(bash_blocks()))
  done = subprocess.run(["bash", "-euo", "pipefail", str(script)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
  for path in ("tfds", "run/checkpoints/best", "test_metrics.json", "scores.csv",
               "export/predict.jaxexport", "export/schema.json"):
    assert (demo / path).exists(), path
  scores = (demo / "scores.csv").read_text().splitlines()
  assert scores[0] == '"time","user_id","item_id","domain","p_click","p_comment","p_long_view"'
  assert len(scores) == 101
