"""Slack: the Web API client (with `Retry-After`), message text, Block Kit, and the bolt app.

The port is `bolt.SlackSink`: the bolt app verifies and acknowledges what Slack sends and hands
typed records to the sink, which the control plane implements (`app/services/slack/bot.py`).
"""
