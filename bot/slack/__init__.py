"""The Slack adapter: Bolt app, listeners, Block Kit views, delivery through the outbox."""
