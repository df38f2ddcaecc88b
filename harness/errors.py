"""Errors raised by the harness."""

from __future__ import annotations

from pathlib import Path

# A source checkout has the installer next to the packages; a pip install does not.
_INSTALLER = Path(__file__).resolve().parents[1] / "docker" / "install-local-services.sh"
DEBIAN_PACKAGES = "rabbitmq-server nats-server redis-server mosquitto"


def install_hint() -> str:
    """How to get the brokers here: `make services` in a checkout, the packages otherwise."""
    if _INSTALLER.is_file():
        return (
            "install the brokers with `make services` "
            "(or `bash docker/install-local-services.sh`)"
        )
    return (
        f"install the brokers (Debian/Ubuntu: `apt-get install {DEBIAN_PACKAGES}`; "
        "toxiproxy-server from its release binaries)"
    )


class HarnessError(Exception):
    """Base class of every harness error."""


class ServiceUnavailable(HarnessError):
    """No provider can supply a service here; the message says what to install."""

    def __init__(self, service: str, reason: str, hint: str | None = None) -> None:
        self.service = service
        self.reason = reason
        self.hint = hint or (
            f"{install_hint()}, start a Docker engine, "
            "or point the *_URL environment variables at running services"
        )
        super().__init__(f"{service} unavailable: {reason}; {self.hint}")


class LifecycleFaultsUnavailable(HarnessError):
    """The provider cannot restart, pause or kill this service (e.g. external URLs)."""

    def __init__(self, service: str, operation: str, provider: str) -> None:
        self.service = service
        self.operation = operation
        self.provider = provider
        super().__init__(
            f"cannot {operation} {service}: the {provider!r} provider does not control its "
            "lifecycle (lifecycle faults unavailable); use the local or docker provider"
        )


class ServiceStartError(HarnessError):
    """A service was available but failed to start; see its log."""

    def __init__(self, service: str, reason: str, log_path: str | None = None) -> None:
        self.service = service
        self.reason = reason
        self.log_path = log_path
        tail = ""
        if log_path:
            try:
                with open(log_path, errors="replace") as fh:
                    tail = "".join(fh.readlines()[-15:])
            except OSError:
                tail = ""
        msg = f"{service} failed to start: {reason}"
        if log_path:
            msg += f" (log: {log_path})"
        if tail:
            msg += "\n--- last log lines ---\n" + tail
        super().__init__(msg)
