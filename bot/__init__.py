"""nbenv: ChatOps for safe upgrades of Vertex AI Workbench notebook images."""

__version__ = "0.1.0"
