"""edge-gateway: a reactive IoT edge gateway daemon."""

__version__ = "0.1.0"
