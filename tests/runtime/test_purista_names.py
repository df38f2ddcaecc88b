"""PURISTA snake-casing reproduced exactly (vectors in data/purista_snake_case.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reference_services.runtime.purista_names import (
    NameCollisionError,
    check_collisions,
    snake_case,
)

_DATA = json.loads((Path(__file__).parent / "data" / "purista_snake_case.json").read_text("utf-8"))


@pytest.mark.parametrize("vector", _DATA["vectors"], ids=lambda v: repr(v["input"]))
def test_snake_case_matches_purista(vector: dict[str, str]) -> None:
    assert snake_case(vector["input"]) == vector["output"]


def test_every_vector_names_a_source() -> None:
    assert all(v["source"] in _DATA["sources"] for v in _DATA["vectors"])


def test_collision_is_named() -> None:
    names = [("event", "userSignedUp"), ("event", "user_signed_up")]
    with pytest.raises(NameCollisionError, match=r"userSignedUp.*user_signed_up.*user_signed_up"):
        check_collisions("event names", names)


def test_same_name_twice_is_no_collision() -> None:
    check_collisions("event names", [("event", "a"), ("event", "a"), ("event", "b")])
