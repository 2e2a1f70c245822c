"""Logging for the server's processes: one format, and no secrets even at DEBUG."""

from __future__ import annotations

import logging

#: Libraries whose DEBUG lines carry secrets: aiosqlite logs every statement with its
#: parameters (verification codes in sms.send events, signing secrets, token hashes).
#: SQLAlchemy's engine logger would too, but it keeps itself at WARNING unless asked.
PARAMETER_LOGGERS = ("aiosqlite",)


def keep_secrets_out() -> None:
    """Hold the loggers that print statement parameters above DEBUG."""
    for name in PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def configure(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # ICE pair checks are debugging detail
        logging.getLogger("aioice").setLevel(logging.WARNING)
    keep_secrets_out()
