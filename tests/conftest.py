"""Settings shared by the project's own tests."""

from hypothesis import HealthCheck, settings

# Hypothesis' timing health checks (slow input generation, per-example deadline) judge the
# machine, not the code: on a loaded CI runner they fail properties that hold. Speed
# belongs in `make bench`; the properties keep their example counts.
settings.register_profile(
    "project", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("project")
