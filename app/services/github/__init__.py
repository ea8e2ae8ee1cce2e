"""GitHub as a client: the App (forge, PR opener, webhooks), triggers, CI, accounts and stats."""
