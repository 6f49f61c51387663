"""Sweeps on Hydra's parallel launchers: how many cells run at once and the threads each gets
(the end-to-end joblib sweep is in test_pipeline.py)."""

import pytest
from omegaconf import OmegaConf

from ovmse.phases.pipeline import parallel_jobs, threads_per_job


def joblib(n_jobs):
    return OmegaConf.create({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                             "n_jobs": n_jobs, "backend": None})


def basic():
    return OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})


def test_parallel_jobs_follows_joblibs_n_jobs():
    assert parallel_jobs(basic(), 8) == 1
    assert parallel_jobs(None, 8) == 1
    assert parallel_jobs(joblib(2), 8) == 2
    assert parallel_jobs(joblib(-1), 8) == 8   # every core
    assert parallel_jobs(joblib(-2), 8) == 7   # all but one
    assert parallel_jobs(joblib(-20), 8) == 1
    with pytest.raises(ValueError, match="n_jobs=0"):
        parallel_jobs(joblib(0), 8)


def test_parallel_cells_share_the_cores_unless_the_command_says():
    assert threads_per_job(["algo=qmix"], joblib(2), 2) == ["num_threads=1"]
    assert threads_per_job(["algo=qmix"], joblib(2), 16) == ["num_threads=8"]
    assert threads_per_job(["algo=qmix"], joblib(-1), 16) == ["num_threads=1"]
    assert threads_per_job(["algo=qmix"], joblib(3), 2) == ["num_threads=1"]  # never 0
    assert threads_per_job(["algo=qmix", "num_threads=4"], joblib(2), 2) == []  # the command's wins
    assert threads_per_job(["algo=qmix"], basic(), 2) == []  # one cell at a time: every core
