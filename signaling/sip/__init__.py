"""A SIP stack for the operator trunk, layered like RFC 3261 describes it.

- ``message``: parser and serializer (sans-I/O)
- ``transaction``: client and server transactions with their timers (sans-I/O)
- ``dialog``: dialogs and the UAS's 2xx retransmission (sans-I/O)
- ``digest``: HTTP digest for SIP, both sides (sans-I/O)
- ``settings``: ``TrunkSettings`` (pure; signaling/app.py builds them from Config)
- ``guard``: accepted sources, flood control and the digest lockout (sans-I/O)
- ``health``: which SBC target is up (sans-I/O)
- ``session``: one call's dialog and duties, both directions (sans-I/O)
- ``ua``: ``UserAgent``, the user agent core (sans-I/O)
- ``connections``: the TCP connection table and its limits (sans-I/O)
- ``transport``: UDP and TCP on asyncio
- ``trunk``: ``SipTrunk``, the asyncio wrapper around the core for the operator's SBC

See docs/sip.md.
"""
