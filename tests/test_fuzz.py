"""Fuzz the C++-backed ops and the public operator classes with valid and invalid arguments
mixed (tests/fuzz_ops.py), in a subprocess so that a crash in compiled code is counted:
0 crashes, every rejection a Python exception naming the argument, every accepted input
matching the reference."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
#: examples per target and the hypothesis seed (fixed: the same cases in every run)
EXAMPLES, SEED = 120, 20261202


@pytest.mark.parametrize("seed", [SEED, SEED + 1])
def test_fuzz_ops_and_operators(seed):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_ops.py"), str(EXAMPLES),
                        str(seed)], capture_output=True, text=True, timeout=600, env=env,
                       cwd=HERE)
    # a negative return code is a signal (segfault, abort): the crash the fuzz is for
    assert r.returncode == 0, (r.returncode, r.stdout[-4000:], r.stderr[-8000:])
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(counts) == 10
    for target, c in counts.items():
        # both sides of the contract were exercised for every target
        assert c.get("accepted", 0) > 0 and c.get("rejected", 0) > 0, (target, c)
