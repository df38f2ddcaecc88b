"""Example business services, identical in every deployment pattern."""

from .billing import billing_v1
from .email import email_v1
from .sensor import sensor_v1
from .user import user_v1

ALL_SERVICES = {"user": user_v1, "email": email_v1, "sensor": sensor_v1, "billing": billing_v1}

__all__ = ["ALL_SERVICES", "billing_v1", "email_v1", "sensor_v1", "user_v1"]
