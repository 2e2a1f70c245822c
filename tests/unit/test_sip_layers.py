"""The SIP package has no import circle, not even one the type checker follows:
sessions see the user agent core through ``UserAgentCore`` (signaling/sip/session.py),
a Protocol, rather than by importing signaling/sip/ua.py, which imports them."""

from __future__ import annotations

from tests.unit.test_import_layers import circles, import_graph


def test_the_sip_package_has_no_circle_even_for_the_type_checker() -> None:
    graph = import_graph(typing=True)
    sip = {
        module: {t for t in targets if t.startswith("signaling.sip")}
        for module, targets in graph.items()
        if module.startswith("signaling.sip")
    }
    assert circles(sip) == []
