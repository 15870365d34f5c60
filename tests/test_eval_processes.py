"""Evaluation in worker processes: each scores its share of the batches, and the sums add up; the
workers end with the command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from evaluation.conventions import get_convention
from evaluation.metrics import MetricSuite, default_metrics
from generator.parallel import run_parts
from tests.test_eval_command import project, run  # noqa: F401  (fixture)
from tests.test_synth_gen import REPO
from tests.test_synth_resume import survivors_of_killing_alone


@pytest.mark.parametrize("convention", ["paper", "toolbox"])
def test_every_metric_names_its_whole_state(convention):
    for metric in default_metrics(get_convention(convention), localisation=True):
        accumulated = {name for name in vars(metric) if name.startswith("_") and not name.startswith("_cache")}
        assert set(metric.state) == accumulated, type(metric).__name__


@pytest.mark.parametrize("convention", ["paper", "toolbox"])
def test_suites_of_two_halves_add_up_to_the_suite_of_all(convention):
    rng = np.random.default_rng(4)
    images = []
    for _ in range(10):
        prediction = rng.random((30, 40))
        mask = np.zeros((30, 40), bool)
        mask[rng.integers(0, 12):rng.integers(14, 30), rng.integers(0, 16):rng.integers(18, 40)] = True
        images.append((prediction, mask))
    whole, first, second = (MetricSuite(convention) for _ in range(3))
    for index, (prediction, mask) in enumerate(images):
        whole.update(prediction, mask)
        (first if index < 4 else second).update(prediction, mask)
    first.add_state(second.state_values())
    assert first.count == whole.count == 10
    expected, merged = whole.compute(), first.compute()
    assert set(merged) == set(expected)
    for name, value in expected.items():
        assert merged[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    for metric, curves in whole.curves().items():
        for name, values in curves.items():
            np.testing.assert_allclose(first.curves()[metric][name], values, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="cannot join"):
        MetricSuite(convention, localisation=False).add_state(whole.state_values())


def test_processes_give_one_process_numbers_and_the_same_bytes_each_time(project, tmp_path):  # noqa: F811
    outputs = {}
    for name, processes in (("one", "1"), ("two", "2"), ("two_again", "2")):
        outputs[name] = tmp_path / name
        result = run("--params", str(project["params"]), "--processes", processes, "--refinement",
                     "--output", str(outputs[name]))
        assert result.exit_code == 0, result.output
    one = json.loads((outputs["one"] / "metrics.json").read_text())
    two = json.loads((outputs["two"] / "metrics.json").read_text())
    assert (outputs["two"] / "metrics.json").read_bytes() == (outputs["two_again"] / "metrics.json").read_bytes()
    assert list(two) == list(one)
    for benchmark, conventions in one.items():
        for convention, rows in conventions.items():
            assert list(two[benchmark][convention]) == list(rows)
            for row, values in rows.items():
                for metric, value in values.items():
                    assert two[benchmark][convention][row][metric] == pytest.approx(value, rel=1e-12, abs=1e-15)
    for grid in ("ECSSD.png", "Mine.png"):     # the same examples, with the same maps
        assert (outputs["two"] / "grids" / grid).read_bytes() == (outputs["one"] / "grids" / grid).read_bytes()
    report = json.loads((outputs["two"] / "report.json").read_text())
    assert report["settings"]["processes"] == 2 and report["benchmarks"]["ECSSD"]["evaluated"] == 3


@pytest.mark.parametrize("broken", ["images/0002.jpg", "ground_truth_mask/0003.png"])
def test_a_worker_error_stops_the_command_with_its_message(project, broken):  # noqa: F811
    (project["root"] / "ECSSD" / broken).write_bytes(b"junk\n")
    messages = []
    for processes in ("1", "2"):
        result = run("--params", str(project["params"]), "--processes", processes)
        assert result.exit_code == 1 and "Traceback" not in result.output
        messages.append(result.output.strip().splitlines()[-1])
    assert messages[0] == messages[1]
    assert messages[0].startswith("Error: ECSSD: ") and broken.rsplit("/")[-1] in messages[0]



def slow_share(work, part, parts, tick):
    """A worker's share that takes a minute."""
    for _ in range(1200):
        time.sleep(0.05)
        tick()
    return part


def run_slow_shares() -> None:
    """What the command's process runs in the test below: two workers on slow shares."""
    from tqdm import tqdm
    run_parts(slow_share, None, 2, tqdm(disable=True), "slow")


def test_the_workers_end_when_the_command_alone_is_killed():
    """Killed on its own (the out-of-memory killer picks one process), the command cannot stop its
    workers: they end by themselves instead of running their shares to the end."""
    command = subprocess.Popen([sys.executable, "-c", "from tests.test_eval_processes import run_slow_shares; "
                                "run_slow_shares()"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               start_new_session=True)
    try:
        deadline, workers = time.monotonic() + 60, []
        while len(workers) < 2 and time.monotonic() < deadline and command.poll() is None:
            servers = [child for child in psutil.Process(command.pid).children()
                       if "forkserver" in " ".join(child.cmdline())]
            workers = [worker for server in servers for worker in server.children()]   # forked by the server
            time.sleep(0.1)
        assert len(workers) == 2, "the two workers did not start"
        left = survivors_of_killing_alone(command, timeout=20)
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
            command.wait()
    assert not left, "a worker outlived the command"
