"""Slack: the bot, its events and commands, threads, links and status messages."""
