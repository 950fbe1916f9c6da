"""The progress line of a benchmark run: cases done, time so far, and what is left estimated per kind of case."""

import pytest

from quantbench.bench.progress import Progress, duration_words

pytestmark = pytest.mark.stack_independent


def test_what_is_left_is_estimated_from_finished_cases_of_the_same_kind():
    # 2 slow engine cases and 4 fast kernel cases; one of each done: 1 x 30 s + 3 x 0.5 s left
    progress = Progress(["engine", "engine", "kernel", "kernel", "kernel", "kernel"])
    assert progress.left_seconds() is None and "left" not in progress.line(0)
    progress.finish("engine", 30.0)
    progress.finish("kernel", 0.5)
    assert progress.left_seconds() == pytest.approx(31.5)
    assert progress.line(95) == "quantbench: 2/6 cases (33%), 1m35s so far, about 32 s left"


def test_a_kind_not_seen_yet_is_estimated_at_the_mean_of_all_finished_cases():
    progress = Progress(["a", "b", "c"])
    progress.finish("a", 10.0)
    progress.finish("b", 20.0)
    assert progress.left_seconds() == pytest.approx(15.0)


def test_a_case_passed_over_counts_as_done_and_teaches_nothing():
    progress = Progress(["a", "a", "a"])
    progress.finish("a", 4.0)
    progress.finish("a", None)  # stated not-reached at the deadline
    assert progress.done == 2 and progress.left_seconds() == pytest.approx(4.0)
    progress.finish("a", None)
    assert progress.line(3725) == "quantbench: 3/3 cases (100%), 1h02m so far"


@pytest.mark.parametrize("seconds, words", [(0, "0 s"), (59.4, "59 s"), (60, "1m00s"), (245, "4m05s"),
                                            (7200, "2h00m")])
def test_durations_read_as_a_person_would_say_them(seconds, words):
    assert duration_words(seconds) == words
