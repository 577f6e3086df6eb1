"""Backends implement bot.service.ports.Backend: `local` (this machine) and `gcp`.

Each is imported by the composition root only when the config chooses it, so the
google-cloud clients never load on the local backend (nor git helpers on gcp).
"""
