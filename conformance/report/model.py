"""report.json as pydantic models: the one description of its shape.

``report.schema.json`` (shipped beside this module) is generated from :class:`Report`
(``python -m conformance.report.model > conformance/report/report.schema.json``);
a test keeps the two equal. ``schema`` is bumped on every incompatible change;
new optional keys keep it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")

Status = Literal["passed", "failed", "unsupported", "skipped"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class NotTested(_Model):
    """An adapter that was selected but not exercised, and why."""

    adapter: str
    kind: str
    reason: str


class VerdictModel(_Model):
    """The exit verdict of the run (see conformance.report.verdict)."""

    exit_code: int
    status: str
    reason: str
    allowed_missing_services: bool = False
    not_tested: list[NotTested] = Field(default_factory=list)


class AdapterEntry(_Model):
    """One selected adapter: where it comes from, what it declares, how it fared."""

    adapter: str
    kind: str
    source: str
    reference: str
    unavailable: str = ""
    capabilities: dict[str, Any] = Field(default_factory=dict)
    summary: dict[str, int] = Field(default_factory=dict)
    not_tested: str | None = None


class Result(_Model):
    """One check against one adapter."""

    adapter: str
    kind: str
    check: str = Field(description="the stable check id, e.g. event_bridge.commands.timeout")
    suite: str
    status: Status
    duration_s: float = 0.0
    message: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict, description="figures (counts, times)")
    observations: dict[str, Any] = Field(default_factory=dict)
    nodeid: str = ""
    skip: str = ""
    kept: list[str] | None = None


class Observation(_Model):
    """Behaviour the spec leaves open, as observed for one adapter and check."""

    adapter: str
    kind: str
    check: str
    observations: dict[str, Any]


class Broker(_Model):
    """A backing service of the run as the provider served it."""

    name: str
    version: str = ""


class Environment(_Model):
    """Where the run happened: enough to reproduce or compare it."""

    tool_version: str
    git_revision: str | None = Field(None, description="of the source checkout, if any")
    python: str
    platform: str
    libraries: dict[str, str] = Field(
        default_factory=dict, description="installed client and test libraries with versions"
    )
    brokers: list[Broker] = Field(default_factory=list)
    provider: str
    provider_reason: str = Field("", description="why this provider was chosen")


class Report(_Model):
    """The whole of report.json."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema", description="report.json version")
    tool: str = "purista-conformance"
    created: str
    provider: str
    suite: str
    quick: bool
    duration_s: float
    summary: dict[str, int] = Field(default_factory=dict)
    verdict: VerdictModel | None = None
    preflight: dict[str, str] = Field(default_factory=dict)
    environment: Environment | None = None
    adapters: list[AdapterEntry] = Field(default_factory=list)
    results: list[Result] = Field(default_factory=list)
    observations: list[Observation] = Field(default_factory=list)
    merged_from: list[str] | None = Field(None, description="reports joined by merge")

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    @property
    def exit_code(self) -> int:
        """The run's exit code (1 when no verdict was recorded)."""
        return self.verdict.exit_code if self.verdict else 1

    def failed(self) -> list[Result]:
        """The results that failed."""
        return [r for r in self.results if r.status == "failed"]

    def result(self, check: str, adapter: str, kind: str | None = None) -> Result | None:
        """The result of ``check`` against ``adapter`` (``kind`` when names repeat)."""
        for r in self.results:
            if r.check == check and r.adapter == adapter and (kind is None or r.kind == kind):
                return r
        return None

    def to_json(self) -> str:
        """As written to report.json."""
        return self.model_dump_json(by_alias=True, indent=2, exclude_none=False) + "\n"

    @classmethod
    def load(cls, path: Path | str) -> Report:
        """Read and validate a report.json (ValueError naming the file when it is not one)."""
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a conformance report.json: {exc}") from exc


def json_schema() -> dict[str, Any]:
    """The JSON Schema of report.json (what report.schema.json holds)."""
    schema = Report.model_json_schema(by_alias=True)
    schema["$id"] = f"purista-conformance/report.schema.v{SCHEMA_VERSION}.json"
    schema["title"] = f"purista-conformance report.json, schema {SCHEMA_VERSION}"
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
