import subprocess
import sys

import pytest

from landslide_cli.runtime import tune_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tune_allocator_applies_once_and_respects_opt_out():
    code = (
        "import os, sys; from landslide_cli.runtime import tune_allocator as t; "
        "print(t(), t())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
    env = {"LANDSLIDE_NO_MALLOPT": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.split() == ["False", "False"]


def test_tune_allocator_is_idempotent_in_process():
    first = tune_allocator()
    assert tune_allocator() == first


def _spins(env: dict[str, str]) -> str:
    code = ("import os; from landslide_cli.runtime import tune_openmp as t; "
            "print(t(), os.environ.get('GOMP_SPINCOUNT'))")
    base = {"PATH": ""}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**base, **env}).stdout.strip()


def test_tune_openmp_sets_spins_once_and_respects_user_choices():
    assert _spins({}) == "True 10000"
    assert _spins({"GOMP_SPINCOUNT": "5"}) == "False 5"
    assert _spins({"OMP_WAIT_POLICY": "PASSIVE"}) == "False None"
    assert _spins({"LANDSLIDE_NO_MALLOPT": "1"}) == "False None"


def test_tune_openmp_is_a_no_op_once_torch_is_loaded():
    code = ("import os, torch; from landslide_cli.runtime import tune_openmp as t; "
            "print(t(), os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": ""})
    assert out.stdout.strip() == "False None"


def test_cli_sets_the_openmp_spins_before_torch_loads():
    code = ("import os, sys; from landslide_cli.cli.app import main; "
            "main(['models']); print('SPINS', os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": "", "COLUMNS": "200"})
    assert out.stdout.strip().splitlines()[-1] == "SPINS 10000"
