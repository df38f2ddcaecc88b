"""``sensor`` v1 (edge): records readings, emits ``thresholdExceeded`` over the threshold."""

from __future__ import annotations

from pydantic import BaseModel, Field

from reference_services.runtime.context import Context
from reference_services.runtime.service import ServiceBuilder

sensor_v1 = ServiceBuilder("sensor", "1", "Sensor readings at the edge")

DEFAULT_THRESHOLD = 50.0


class Reading(BaseModel):
    """Input of ``recordReading``."""

    sensor_id: str = Field(min_length=1)
    value: float


class Recorded(BaseModel):
    """Output of ``recordReading``."""

    sensor_id: str
    value: float
    threshold: float
    exceeded: bool


async def _threshold(ctx: Context) -> float:
    if ctx.stores.config is not None:
        value = (await ctx.stores.config.get("threshold"))["threshold"]
        if isinstance(value, int | float):
            return float(value)
    return float(ctx.config.get("threshold", DEFAULT_THRESHOLD))


@sensor_v1.command("recordReading", payload=Reading, output=Recorded)
async def record_reading(ctx: Context, payload: Reading, parameter: object) -> Recorded:
    """Keep the last reading per sensor; emit ``thresholdExceeded`` when over the threshold."""
    threshold = await _threshold(ctx)
    exceeded = payload.value > threshold
    if ctx.stores.state is not None:
        await ctx.stores.state.set(f"sensor:last:{payload.sensor_id}", payload.model_dump())
    if exceeded:
        await ctx.emit(
            "thresholdExceeded",
            {"sensor_id": payload.sensor_id, "value": payload.value, "threshold": threshold},
        )
    return Recorded(
        sensor_id=payload.sensor_id, value=payload.value, threshold=threshold, exceeded=exceeded
    )
