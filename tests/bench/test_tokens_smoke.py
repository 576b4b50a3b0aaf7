"""bench/tokens.py on tiny counts: every case is timed, every figure is there, and each
token is what its case says (the invalid one refused, each valid one its user). No
timings are asserted: the figures live in bench/results."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import tokens

pytestmark = pytest.mark.timeout(120)

USERS = 20
ROUNDS = 3
CALLS = 50


@pytest.fixture(scope="module")
def cases() -> list[tokens.Case]:
    return tokens.measure({USERS: CALLS}, ROUNDS)


def test_every_case_of_every_layer_is_timed(cases: list[tokens.Case]) -> None:
    found = {(c.layer, c.users, c.name) for c in cases}
    assert found == {
        (layer, USERS, name)
        for layer in tokens.LAYERS
        for name in ("first", "middle", "last", "invalid")
    }
    for case in cases:
        assert case.calls == CALLS
        assert len(case.samples_ns) == ROUNDS
        assert len(case.paired_pct) == ROUNDS
        assert all(sample > 0 for sample in case.samples_ns)
        assert 0 < case.p10_us <= case.median_us <= case.p90_us


def test_invalid_token_is_refused_and_each_valid_one_is_its_user(
    cases: list[tokens.Case],
) -> None:
    expected = {
        "first": tokens.user_name(0),
        "middle": tokens.user_name(USERS // 2),
        "last": tokens.user_name(USERS - 1),
        "invalid": tokens.REFUSED,
    }
    for case in cases:
        assert case.outcome == expected[case.name], case
        assert case.expected == expected[case.name], case


def test_one_user_has_no_middle_or_last() -> None:
    cases = tokens.measure({1: 10}, 3, ["request"])
    assert [(c.name, c.outcome) for c in cases] == [
        ("first", tokens.user_name(0)),
        ("invalid", tokens.REFUSED),
    ]


def test_results_file_has_the_tables_and_verdicts(tmp_path: Path) -> None:
    code = tokens.main(
        ["--rounds", "3", "--calls", "10", "--users", "1,20", "--results", str(tmp_path)]
    )
    assert code == 0
    (path,) = tmp_path.glob("*-token-check.md")
    text = path.read_text()
    for heading in ("## Verdict", "## Scaling", "## Machine", "## Tools"):
        assert heading in text
    assert text.count("largest difference between cases:") == 2 * len(tokens.LAYERS)
    for layer in tokens.LAYERS.values():
        assert f"## `{layer}`" in text
