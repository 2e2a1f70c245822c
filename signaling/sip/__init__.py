"""A SIP stack for the operator trunk, layered like RFC 3261 describes it.

- ``message``: parser and serializer (sans-I/O)
- ``transaction``: client and server transactions with their timers (sans-I/O)
- ``dialog``: dialogs and the UAS's 2xx retransmission (sans-I/O)
- ``digest``: HTTP digest for SIP, both sides (sans-I/O)
- ``transport``: UDP and TCP on asyncio
- ``trunk``: ``SipTrunk``, the user agent for the operator's SBC

See docs/sip.md.
"""
