"""Small, complete policy bundles for the policy admin tests (they pass ``portcullis policy check``).

`tiny_bundle` allows the ``quotes`` route to clients (or denies it with
``maintenance`` when ``quotes_open`` is false) and denies everything else; it
has its own tests and passes the gateway invariants, so it can be validated,
proposed and activated. ``rev`` changes only the data document (a new version).
"""

from __future__ import annotations

from pathlib import Path

import orjson

GATEWAY_REGO = """package gateway

import rego.v1

default decision := {"allow": false, "deny": [{"code": "default_deny", "message": "No rule allowed this request."}]}

decision := {"allow": true} if {
\tquotes
\tdata.settings.quotes_open == true
}

decision := {"allow": false, "deny": [{"code": "maintenance", "message": "Quotes are closed."}]} if {
\tquotes
\tdata.settings.quotes_open == false
}

quotes if {
\tinput.request.route == "quotes"
\t"client" in input.subject.roles
}
"""

TEST_REGO = """package gateway_test

import rego.v1

quotes_input := {"request": {"route": "quotes"}, "subject": {"roles": ["client"]}}

test_quotes_follow_the_setting if {
\td := data.gateway.decision with input as quotes_input
\td.allow == data.settings.quotes_open
}

test_orders_are_denied if {
\td := data.gateway.decision with input as {"request": {"route": "order_place"}, "subject": {"roles": ["client"]}}
\td.allow == false
\td.deny[0].code == "default_deny"
}
"""


def tiny_bundle(*, rev: int = 1, quotes_open: bool = True) -> dict[str, str]:
    return {
        "gateway.rego": GATEWAY_REGO,
        "gateway_test.rego": TEST_REGO,
        "data/settings.json": orjson.dumps({"quotes_open": quotes_open, "rev": rev}).decode(),
    }


def write_bundle(folder: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return folder

