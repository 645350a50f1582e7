"""The failure record a job's history keeps of a handler's exception (``base.build_failure``).

Pure: exceptions raised here, their records read back. What a record holds is what on-call
reads in ``workerfleet dlq show``: the type, the message, and where it was raised.
"""

from __future__ import annotations

from worker_runtime.brokers import base


def _raise_deep(message: str) -> None:
    def inner_most_frame() -> None:
        raise ValueError(message)

    inner_most_frame()


def _failure_of(message: str) -> base.Failure:
    try:
        _raise_deep(message)
    except ValueError as exc:
        return base.build_failure(exc, worker_id="w")
    raise AssertionError("nothing was raised")


def test_a_short_error_keeps_its_whole_traceback_and_message() -> None:
    failure = _failure_of("card declined")
    assert failure.error_type == "ValueError" and failure.message == "card declined"
    assert "inner_most_frame" in failure.traceback
    assert failure.traceback.rstrip().endswith("ValueError: card declined")


def test_an_error_with_a_huge_message_still_says_where_it_was_raised() -> None:
    # Given an error whose message is 200,000 characters (a whole response body, say)
    failure = _failure_of("x" * 200_000)
    # Then its record keeps the frames down to the raise, and the start of the message, cut,
    # within the kept length (the tail of the message alone used to fill it)
    assert len(failure.traceback) <= base.TRACEBACK_KEEP
    assert 'File "' in failure.traceback and "inner_most_frame" in failure.traceback
    assert failure.traceback.rstrip().endswith("... (cut)")
    assert "ValueError: xxx" in failure.traceback
    assert len(failure.message) == 2000
