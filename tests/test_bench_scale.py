"""The scale benchmark's arithmetic: steady rates from two run lengths, and its argument checks."""

import sys

import pytest

from benchmarks.bench_scale import Run, main, path_row


def test_the_steady_rate_is_the_difference_of_the_two_runs_without_their_shared_start_up():
    long = Run(candidates=3000, samples=1500, seconds=5.0, generate_s=4.0, postprocess_s=12.0)
    short = Run(candidates=1000, samples=500, seconds=2.0, generate_s=1.2, postprocess_s=4.0)
    row = path_row(long, short, g_processes=1, postprocess_processes=4)
    assert row.candidates == pytest.approx(2000 / 3) and row.samples == pytest.approx(1000 / 3)
    assert row.start_up == pytest.approx(0.5)             # 5 s less 3000 candidates at the steady rate
    assert row.g_busy == pytest.approx(0.8) and row.workers_busy == pytest.approx(0.6)
    assert row.postprocess_ceiling == pytest.approx(1000)    # 3000 candidates in 12 busy s, by 4 processes


def test_runs_too_close_in_time_give_the_long_runs_own_rate_and_no_start_up():
    long = Run(candidates=3000, samples=1500, seconds=5.0, generate_s=4.0, postprocess_s=4.0)
    short = Run(candidates=1000, samples=500, seconds=4.9, generate_s=1.0, postprocess_s=1.0)
    row = path_row(long, short, g_processes=2, postprocess_processes=2)
    assert row.candidates == pytest.approx(600) and row.samples == pytest.approx(300) and row.start_up is None
    assert row.g_busy == pytest.approx(0.4)
    no_postprocessing = Run(candidates=3000, samples=1500, seconds=5.0, generate_s=4.0, postprocess_s=0.0)
    assert path_row(no_postprocessing, short, 1, 2).postprocess_ceiling is None


@pytest.mark.parametrize("arguments", [["--n", "1000", "--short-n", "400"],      # short run leaves a process idle
                                       ["--n", "600", "--short-n", "500"]])      # long run not twice the short
def test_run_lengths_that_cannot_give_a_steady_rate_are_refused(arguments, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_scale.py", "--workers", "2", "--shard-size", "250", *arguments])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2 and "--short-n" in capsys.readouterr().err
