"""`bot ops`: inspect and manage the bot's Redis and Postgres (docs/ops.md)."""
