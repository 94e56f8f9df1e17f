"""The appliance: a self-hosted, local-first backend in one box."""

__all__ = ["__version__"]

__version__ = "0.1.0"
