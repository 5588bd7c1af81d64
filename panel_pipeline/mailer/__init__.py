"""The Mailer: Foundation for Emails templates through SES, each recipient exactly once."""
