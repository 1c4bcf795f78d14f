"""The tests' one way of waiting: the first truthy value, or a failure that says why."""

from __future__ import annotations

import pytest

from tests.support.waiting import wait_for, wait_for_async


def test_a_wait_returns_the_first_truthy_value_and_asks_for_no_explanation() -> None:
    answers = iter([None, 0, "ready"])
    asked: list[str] = []
    got = wait_for(lambda: next(answers), 5, 0, explain=lambda: asked.append("x") or "")
    assert (got, asked) == ("ready", [])


def test_a_timeout_names_the_last_value_and_adds_the_explanation() -> None:
    with pytest.raises(AssertionError) as failed:
        wait_for(lambda: [], 0.05, 0.01, explain=lambda: "the log ends: boom")
    assert str(failed.value) == "condition not met in 0.05 s (last: [])\nthe log ends: boom"


async def test_the_async_wait_explains_a_timeout_too() -> None:
    with pytest.raises(AssertionError) as failed:
        await wait_for_async(lambda: False, 0.05, 0.01, explain=lambda: "still down")
    assert str(failed.value).endswith("(last: False)\nstill down")
