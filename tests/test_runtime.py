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
