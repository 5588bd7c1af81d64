"""What may be written about an error (pure)."""

from panel_pipeline.shared.privacy import redact


def test_addresses_links_and_tokens_are_redacted() -> None:
    assert redact("mail ann@example.com now (bob@x.org)") == "mail <email> now (<email>)"
    assert redact("see https://panel.example/r?token=ab12") == "see <url>"
    assert redact("token " + "f" * 40) == "token <token>"
    assert redact("sample 6566a0000000000000000001") == "sample 6566a0000000000000000001"  # an ObjectId


def test_no_text_that_reads_like_part_of_an_address_survives() -> None:
    """Found by the mailer's property test: a template named `0@{` came back in the error whole."""
    assert redact("template: no template '0@{'") == "template: no template '0(at){'"
    assert redact("a @ b") == "a @ b"
