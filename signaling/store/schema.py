"""The relational schema, as SQLAlchemy Core tables.

One schema serves SQLite (embedded default) and PostgreSQL (several nodes):
only portable types are used. Times are Unix seconds as floats, the same
clock the services run on. Numbers are always E.164 strings.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

#: A registered device of a number. A number is "registered" while it has at
#: least one device that is not revoked. Revoked rows are kept (with
#: revoked_at) so an old token can never be resurrected.
devices = sa.Table(
    "devices",
    metadata,
    sa.Column("device_id", sa.String(32), primary_key=True),
    sa.Column("number", sa.String(20), nullable=False),
    sa.Column("name", sa.String(64), nullable=False, server_default=""),
    #: SHA-256 hex of the bearer token; the token itself is never stored.
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_seen_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Index("ix_devices_number", "number"),
)

#: The one outstanding verification code per number (a new request replaces it).
verifications = sa.Table(
    "verifications",
    metadata,
    sa.Column("number", sa.String(20), primary_key=True),
    #: Salted SHA-256, see signaling.identity.codes.hash_code.
    sa.Column("code_hash", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("attempts_left", sa.Integer, nullable=False),
)

#: One row per code sent, for the per-number hourly send limit. Rows older
#: than the window are pruned whenever the number asks for a new code.
code_sends = sa.Table(
    "code_sends",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("number", sa.String(20), nullable=False),
    sa.Column("sent_at", sa.Float, nullable=False),
    sa.Index("ix_code_sends_number_sent_at", "number", "sent_at"),
)

#: Call detail records (signaling.calls.records.CallRecord), written once.
calls = sa.Table(
    "calls",
    metadata,
    sa.Column("call_id", sa.String(64), primary_key=True),
    sa.Column("caller", sa.String(20), nullable=False),
    sa.Column("callee", sa.String(20), nullable=False),
    sa.Column("caller_device", sa.String(64), nullable=False),
    sa.Column("callee_device", sa.String(64), nullable=True),
    sa.Column("invited_at", sa.Float, nullable=False),
    sa.Column("ringing_at", sa.Float, nullable=True),
    sa.Column("answered_at", sa.Float, nullable=True),
    sa.Column("ended_at", sa.Float, nullable=False),
    sa.Column("end_reason", sa.String(64), nullable=False),
    sa.Column("end_detail", sa.String(512), nullable=False, server_default=""),
    sa.Column("media", sa.JSON, nullable=False),
    # History is read per number, newest first, from either side of the call.
    sa.Index("ix_calls_caller_invited_at", "caller", "invited_at"),
    sa.Index("ix_calls_callee_invited_at", "callee", "invited_at"),
)

__all__ = ["calls", "code_sends", "devices", "metadata", "verifications"]
