"""report.schema.json is shipped, generated from the Report model, and describes report.json."""

from __future__ import annotations

import json

from conformance.report import model


def test_the_shipped_schema_is_the_models() -> None:
    shipped = json.loads(model.SCHEMA_FILE.read_text())
    assert shipped == json.loads(json.dumps(model.json_schema())), (
        "regenerate: python -m conformance.report.model > conformance/report/report.schema.json"
    )
    assert shipped["properties"]["schema"]["default"] == model.SCHEMA_VERSION
    env = shipped["$defs"]["Environment"]["properties"]
    assert {
        "tool_version",
        "git_revision",
        "python",
        "libraries",
        "brokers",
        "provider",
        "provider_reason",
    } <= set(env)


def test_a_report_that_breaks_the_schema_is_refused(tmp_path) -> None:
    bad = tmp_path / "report.json"
    bad.write_text(
        json.dumps(
            {
                "schema": 2,
                "created": "x",
                "provider": "none",
                "suite": "all",
                "quick": False,
                "duration_s": 1.0,
                "results": [
                    {
                        "adapter": "a",
                        "kind": "k",
                        "check": "c",
                        "suite": "contract",
                        "status": "green",
                    }
                ],
            }
        )
    )
    try:
        model.Report.load(bad)
    except ValueError as exc:
        assert "report.json" in str(exc) and "status" in str(exc)
    else:
        raise AssertionError("a status outside the schema was accepted")
