"""Check ids in pytest's short test summary.

pytest writes each line of "short test summary info" as ``FAILED <node> - <reason>``,
the node from ``_pytest.terminal._get_node_id_with_markup`` (pytest 9) or
``_get_pos`` (pytest 8); both take the report last. While a conformance session runs,
that function answers with the report's ``cf_title`` (``check[kind:adapter]``) when the
plugin gave it one, and as before otherwise. With neither function (another pytest),
the summary keeps pytest's node ids: nothing breaks.
"""

from __future__ import annotations

from typing import Any

_NAMES = ("_get_node_id_with_markup", "_get_pos")
_ORIGINAL: dict[str, Any] = {}


def _titled(original: Any) -> Any:
    def position(*args: Any) -> Any:
        title = getattr(args[-1], "cf_title", None)
        return title if isinstance(title, str) and title else original(*args)

    position.conformance_titles = True  # type: ignore[attr-defined]
    return position


def install() -> None:
    """Wrap pytest's function (once; nested sessions share it)."""
    import _pytest.terminal as terminal

    for name in _NAMES:
        original = getattr(terminal, name, None)
        if original is None or getattr(original, "conformance_titles", False):
            continue
        _ORIGINAL[name] = original
        setattr(terminal, name, _titled(original))


def uninstall() -> None:
    """Give pytest its own functions back."""
    import _pytest.terminal as terminal

    for name in list(_ORIGINAL):
        setattr(terminal, name, _ORIGINAL.pop(name))
