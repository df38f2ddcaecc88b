"""Example business services, identical in every deployment pattern."""

from reference_services.services.billing import billing_v1
from reference_services.services.email import email_v1
from reference_services.services.sensor import sensor_v1
from reference_services.services.user import user_v1

ALL_SERVICES = {"user": user_v1, "email": email_v1, "sensor": sensor_v1, "billing": billing_v1}

__all__ = ["ALL_SERVICES", "billing_v1", "email_v1", "sensor_v1", "user_v1"]
