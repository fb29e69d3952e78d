"""The shared vocabulary is torch-free: in a clean interpreter, importing `sweeps`, building every
preset's runs of every sweep, planning each run and importing the configs, the ladder, the family
registry and the orchestrator's estimate leaves torch (and DeepSpeed, Ray) out of sys.modules."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, clean_env

CHILD = """
import json, sys
import sweeps
from trainer.plan import plan
import core.ladder, trainer.config, trainer.families.registry, orchestrator.estimate
runs = 0
for preset in sweeps.PRESETS:
    for name in sweeps.SWEEPS:
        for run in sweeps.expand(name, preset=preset):
            plan(run, run.data.vocab_size)
            runs += 1
        sweeps.search_space(name, preset=preset)
print(json.dumps({"runs": runs, "heavy": sorted(m for m in ("torch", "deepspeed", "ray")
                                                  if m in sys.modules)}))
"""


def test_sweeps_and_every_presets_runs_build_without_torch():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=clean_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["runs"] > 100                   # every preset x sweep (328 run ids at the time)
    assert result["heavy"] == [], result
