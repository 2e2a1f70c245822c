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
    #: Rating (signaling.carrier.rating): the caller's operator and bundle when the
    #: call was placed, what kind of call it was ("app" or "phone"), whether it
    #: counts against the bundle's minutes, and the seconds billed.
    sa.Column("operator_id", sa.String(32), nullable=True),
    sa.Column("bundle_id", sa.String(32), nullable=True),
    sa.Column("kind", sa.String(8), nullable=False, server_default="app"),
    sa.Column("billable", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("rated_seconds", sa.Integer, nullable=False, server_default="0"),
    # History is read per number, newest first, from either side of the call.
    sa.Index("ix_calls_caller_invited_at", "caller", "invited_at"),
    sa.Index("ix_calls_callee_invited_at", "callee", "invited_at"),
)


# -- The carrier partnership (signaling/carrier) ------------------------------

#: An operator: a tenant of the operator API with its webhook and SMS endpoints.
operators = sa.Table(
    "operators",
    metadata,
    sa.Column("operator_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    #: Where events are POSTed (empty: events are kept for replay only).
    sa.Column("webhook_url", sa.String(512), nullable=False, server_default=""),
    #: Where verification SMS are POSTed (as signed sms.send requests).
    sa.Column("sms_url", sa.String(512), nullable=False, server_default=""),
    #: HMAC-SHA256 secrets for webhook signatures; the previous one stays valid
    #: (both signatures are sent) until the operator retires it.
    sa.Column("signing_secret", sa.String(128), nullable=False),
    sa.Column("previous_signing_secret", sa.String(128), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

#: API keys of operators, stored as SHA-256 only. At most two active per operator.
operator_keys = sa.Table(
    "operator_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("operator_id", sa.String(32), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Index("ix_operator_keys_operator", "operator_id"),
)

#: What an operator sells: see signaling.carrier.rating.Bundle.
bundles = sa.Table(
    "bundles",
    metadata,
    sa.Column("bundle_id", sa.String(32), primary_key=True),
    sa.Column("operator_id", sa.String(32), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("app_calls_included", sa.Boolean, nullable=False),
    sa.Column("phone_minutes", sa.Integer, nullable=False),
    #: Null: monthly from the subscriber's activation; else a period in seconds.
    sa.Column("period_seconds", sa.Integer, nullable=True),
    sa.Column("increment_first", sa.Integer, nullable=False),
    sa.Column("increment_next", sa.Integer, nullable=False),
    #: Minutes of all calls per period beyond which calls stop; null: no cap.
    sa.Column("fair_use_minutes", sa.Integer, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("retired_at", sa.Float, nullable=True),
    #: Toll-fraud guards on calls to phone numbers (schema version 4): the E.164
    #: prefixes they may reach, comma-separated ("" = any destination), and the
    #: calls and talk minutes per rolling hour (null: the deployment's default).
    sa.Column("allowed_destinations", sa.String(1024), nullable=False, server_default=""),
    sa.Column("max_phone_calls_per_hour", sa.Integer, nullable=True),
    sa.Column("max_phone_minutes_per_hour", sa.Integer, nullable=True),
    sa.Index("ix_bundles_operator", "operator_id"),
)

#: A number provisioned by an operator on a bundle (one operator per number).
subscribers = sa.Table(
    "subscribers",
    metadata,
    sa.Column("number", sa.String(20), primary_key=True),
    sa.Column("operator_id", sa.String(32), nullable=False),
    sa.Column("bundle_id", sa.String(32), nullable=False),
    #: "active" or "suspended".
    sa.Column("status", sa.String(16), nullable=False),
    #: Start of the first period (periods run from here).
    sa.Column("activated_at", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_subscribers_operator", "operator_id"),
)

#: Usage thresholds already announced, so each is raised once per period.
usage_thresholds = sa.Table(
    "usage_thresholds",
    metadata,
    sa.Column("number", sa.String(20), primary_key=True),
    sa.Column("period_start", sa.Float, primary_key=True),
    sa.Column("percent", sa.Integer, primary_key=True),
    sa.Column("raised_at", sa.Float, nullable=False),
)

#: Operator API POSTs by Idempotency-Key: a retry gets the stored response.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("operator_id", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    #: SHA-256 of method, path and body: a retry with other content is refused.
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

#: The outbox: every event to an operator, written in the transaction of the
#: change it reports, delivered at least once (signaling.carrier.delivery).
events = sa.Table(
    "events",
    metadata,
    #: Global order of insertion; the replay cursor.
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(40), nullable=False, unique=True),
    sa.Column("operator_id", sa.String(32), nullable=False),
    sa.Column("type", sa.String(40), nullable=False),
    #: Events with the same key are delivered in `sequence` order (a call id,
    #: or a number for events that belong to no call).
    sa.Column("ordering_key", sa.String(64), nullable=False),
    sa.Column("sequence", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    #: The exact JSON body that is signed and sent (the same bytes on every retry).
    sa.Column("body", sa.Text, nullable=False),
    #: "pending", "delivered" or "dead" (gave up after the retry window).
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    #: A delivery worker's lease (several workers or nodes never send one event at once).
    sa.Column("locked_until", sa.Float, nullable=True),
    sa.Column("delivered_at", sa.Float, nullable=True),
    sa.Column("last_error", sa.String(512), nullable=False, server_default=""),
    sa.UniqueConstraint("ordering_key", "sequence", "operator_id", name="uq_events_key_sequence"),
    sa.Index("ix_events_operator_seq", "operator_id", "seq"),
    sa.Index("ix_events_due", "status", "next_attempt_at"),
)

# -- Several nodes (signaling/cluster) -----------------------------------------

#: Every signaling node that ran: its heartbeat tells the others it is alive.
nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("node_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    #: Set on SIGTERM: the node takes no new calls and sends its devices elsewhere.
    sa.Column("draining", sa.Boolean, nullable=False, server_default=sa.false()),
    #: Set when the node stopped cleanly, or when another node found it dead.
    sa.Column("stopped_at", sa.Float, nullable=True),
)

#: Calls in progress, one row per call, written by the node that holds the call and
#: removed with the call's record in one transaction. A row whose node died is
#: ended (failed/node_lost) by a surviving node, or by the node's next start.
live_calls = sa.Table(
    "live_calls",
    metadata,
    sa.Column("call_id", sa.String(64), primary_key=True),
    sa.Column("node_id", sa.String(64), nullable=False),
    sa.Column("caller", sa.String(20), nullable=False),
    sa.Column("callee", sa.String(20), nullable=False),
    sa.Column("caller_device", sa.String(64), nullable=False),
    sa.Column("callee_device", sa.String(64), nullable=True),
    sa.Column("invited_at", sa.Float, nullable=False),
    sa.Column("ringing_at", sa.Float, nullable=True),
    sa.Column("answered_at", sa.Float, nullable=True),
    #: Devices taking part or ringing (JSON list), told when the call is ended for them.
    sa.Column("devices", sa.JSON, nullable=False),
    #: What the CDR needs for rating: operator, bundle, kind (JSON object).
    sa.Column("rating", sa.JSON, nullable=False),
    sa.Index("ix_live_calls_node", "node_id"),
)

# -- Schema versions (signaling/store/migrations.py) ---------------------------

#: One row per schema version the database went through; the highest is its
#: version. No migration ever changes this table.
schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

__all__ = [
    "bundles",
    "calls",
    "code_sends",
    "devices",
    "events",
    "idempotency_keys",
    "live_calls",
    "metadata",
    "nodes",
    "operator_keys",
    "operators",
    "schema_migrations",
    "subscribers",
    "usage_thresholds",
    "verifications",
]
