"""The local backend (see backend.py); its modules load only when `backend: local`."""

from bot.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]
