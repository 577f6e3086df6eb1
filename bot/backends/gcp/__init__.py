"""The gcp backend: Cloud Build, Artifact Registry, Workbench instances, Pub/Sub.

Importing this package loads no google-cloud library (cold start on Cloud Run);
the clients load the first time a call needs them.
"""

from bot.backends.gcp.backend import GcpBackend
from bot.backends.gcp.clients import CallPolicy, GcpUnavailable

__all__ = ["CallPolicy", "GcpBackend", "GcpUnavailable"]
