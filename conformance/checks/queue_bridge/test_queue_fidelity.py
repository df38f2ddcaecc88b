"""Queue fidelity: payload, parameter and headers come back unchanged."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from conformance.kit.hyp import json_values, session, settings_for
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest

headers = st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12),
    st.text(max_size=30),
    max_size=4,
)


def canon(value: Any) -> str:
    """Canonical JSON text (1, 1.0 and true differ)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@check("queue_bridge.fidelity.payload", kinds=("queue_bridge",))
def test_payload(cf_aut: AdapterUnderTest) -> None:
    """Property: any JSON payload and parameter, and string headers, survive enqueue/lease."""
    with session(cf_aut) as runner:
        q = runner.run(cf_aut.new())

        @settings_for(cf_aut, memory=50, broker=20)
        @given(payload=json_values, parameter=json_values, hdrs=headers)
        def prop(payload: Any, parameter: Any, hdrs: dict[str, str]) -> None:
            job_id = runner.run(q.enqueue("fid", payload, parameter, headers=hdrs))
            jobs = runner.run(q.lease_next("fid", 1))
            assert [j.id for j in jobs] == [job_id], f"leased {jobs}, expected {job_id}"
            job = jobs[0]
            runner.run(q.ack(job))
            assert canon(job.payload) == canon(payload), "payload changed"
            assert canon(job.parameter) == canon(parameter), "parameter changed"
            assert {k: job.headers.get(k) for k in hdrs} == hdrs, f"headers changed: {job.headers}"

        prop()
