"""Queue fidelity: payload, parameter and headers come back unchanged."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from conformance.kit.hyp import json_values_for, session, settings_for
from conformance.kit.marks import check
from conformance.kit.numbers import expect_numbers
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
        @given(payload=json_values_for(cf_aut), parameter=json_values_for(cf_aut), hdrs=headers)
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


@check("queue_bridge.fidelity.numbers", kinds=("queue_bridge",))
async def test_numbers(aut: AdapterUnderTest) -> None:
    """Integers beyond 2**53 and doubles at full precision survive enqueue/lease (payload
    and parameter), or are refused at enqueue as the adapter declares (``numbers``)."""
    q = await aut.new()
    mode = getattr(aut.spec.capabilities, "numbers", "exact")

    async def round_trip(value: Any) -> Any:
        job_id = await q.enqueue("numbers", value, value)
        jobs = await q.lease_next("numbers", 1)
        assert [j.id for j in jobs] == [job_id], f"leased {jobs}, expected {job_id}"
        await q.ack(jobs[0])
        if canon(jobs[0].parameter) != canon(value):
            raise AssertionError(f"parameter numbers changed: {jobs[0].parameter!r:.300}")
        return jobs[0].payload

    await expect_numbers(mode, round_trip)
