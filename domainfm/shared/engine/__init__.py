"""Training runtime shared by every domain: devices, seeding and (with the domain issues) Lightning tasks."""

from domainfm.shared.engine.runtime import resolve_device

__all__ = ["resolve_device"]
