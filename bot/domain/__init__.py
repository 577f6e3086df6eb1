"""Pure rules of nbenv: no I/O, no Slack, no Google. Everything else adapts to this."""
