"""Attribution as a table: a key's team wins, features by key or allow-list, label values capped at `other`."""

from __future__ import annotations

import pytest
from tiered_router.attribution import LabelBounds, attribute, label
from tiered_router.auth import Identity

KEY = Identity("search", "web")


@pytest.mark.parametrize(
    ("identity", "team", "feature", "allowed", "expected"),
    [
        (KEY, None, None, (), ("search", "web")),
        (KEY, None, "web", (), ("search", "web")),
        (KEY, None, "chatbot", ("chatbot",), ("search", "chatbot")),
        (KEY, None, "made-up", ("chatbot",), ("search", "other")),
        (KEY, None, "made-up", (), ("search", "other")),
        (Identity("ads"), None, None, (), ("ads", "unknown")),
        (None, None, None, (), ("unknown", "unknown")),
        (None, "ads", "banner", (), ("ads", "banner")),
        (None, "ads", "banner", ("chatbot",), ("ads", "other")),
    ],
)
def test_attribution_table(
    identity: Identity | None,
    team: str | None,
    feature: str | None,
    allowed: tuple[str, ...],
    expected: tuple[str, str],
) -> None:
    assert attribute(identity, team, feature, allowed, LabelBounds(), 100) == expected


def test_distinct_values_are_capped_and_overflow_counted() -> None:
    bounds = LabelBounds()
    seen = {bounds.bound("feature", f"f{i}", 3) for i in range(10)}
    assert seen == {"f0", "f1", "f2", "other"}
    assert bounds.bound("feature", "f1", 3) == "f1"  # a value seen first keeps its label
    assert bounds.bound("feature", "unknown", 3) == "unknown"  # does not use up the cap
    assert bounds.bound("team", "t9", 3) == "t9"  # each label has its own cap
    assert bounds.overflowed == {"feature": 7}


def test_label_trims_and_truncates() -> None:
    assert label("  x ") == "x"
    assert label("y" * 100) == "y" * 64
    assert label("") is None and label("   ") is None and label(5) is None
