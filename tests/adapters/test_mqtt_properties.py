"""The MQTT bridge's PUBLISH properties pack to paho's bytes, for every value it sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties

from reference_services.adapters.mqtt.properties import PublishProperties

_TEXT = st.text(max_size=12)
_PAIRS = st.lists(st.tuples(_TEXT, _TEXT), max_size=12)


@given(
    content_type=st.none() | _TEXT,
    correlation=st.none() | st.binary(max_size=40),
    expiry=st.none() | st.integers(0, 2**32 - 1),
    response_topic=st.none() | _TEXT,
    user=st.none() | _PAIRS,
    more_user=st.none() | st.tuples(_TEXT, _TEXT),
)
def test_packs_what_paho_packs(content_type: str | None, correlation: bytes | None,
                               expiry: int | None, response_topic: str | None,
                               user: list[tuple[str, str]] | None,
                               more_user: tuple[str, str] | None) -> None:
    ours, theirs = PublishProperties(), Properties(PacketTypes.PUBLISH)
    # set in an order other than paho's packing order, and a user property appended
    given = [("UserProperty", user), ("MessageExpiryInterval", expiry),
             ("CorrelationData", correlation), ("ContentType", content_type),
             ("ResponseTopic", response_topic), ("UserProperty", more_user)]
    for props in (ours, theirs):
        for name, value in given:
            if value is not None:
                setattr(props, name, value)
    assert ours.pack() == theirs.pack()
    assert ours.isEmpty() == theirs.isEmpty()
    assert ours.json() == theirs.json()


def test_other_properties_keep_paho_checks() -> None:
    props = PublishProperties()
    props.PayloadFormatIndicator = 1
    props.TopicAlias = 3
    theirs = Properties(PacketTypes.PUBLISH)
    theirs.PayloadFormatIndicator = 1
    theirs.TopicAlias = 3
    assert props.pack() == theirs.pack()
    with pytest.raises(MQTTException):
        props.TopicAlias = 0  # out of range
    with pytest.raises(MQTTException):
        props.SessionExpiryInterval = 5  # not a PUBLISH property
    with pytest.raises(MQTTException):
        props.NoSuchProperty = 1
