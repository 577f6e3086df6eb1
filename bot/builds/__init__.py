"""Cloud Build status into Slack threads: parse events, order them, render, relay.

`events`, `report`, `thread` and `messages` are pure (no I/O); `relay` is the use case
that loads a thread, applies an event and commits the state with its Slack messages.
"""
