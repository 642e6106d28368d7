"""Bind the caller to what the route allows: its role list, and the accounts in the token.

The account in the path or query must be one of the token's accounts.

This runs in Python before any policy, and no fail mode skips it: broken
object-level authorisation is the most common API breach, and the check
needs nothing but the verified token and the route's own parameters.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from gateway.context import RequestContext
from gateway.errors import ACCOUNT_FORBIDDEN, ROLE_FORBIDDEN, GatewayError
from gateway.policy.engine import required_roles


def requested_accounts(ctx: RequestContext) -> list[str]:
    """Every account id the request names in its path parameter or query."""
    found: list[str] = []
    route = ctx.route
    if route.account_param:
        found.append(ctx.params.get(route.account_param, ""))
    if route.account_query and ctx.query:
        # All occurrences: "?account=A1&account=B9" must not slip B9 through.
        found.extend(v for k, v in parse_qsl(ctx.query, keep_blank_values=True)
                     if k == route.account_query)
    return found


class RequireRole:
    """The route's role list, checked in Python like the account: no fail mode skips it."""

    name = "require_role"

    def __call__(self, ctx: RequestContext) -> None:
        needed = required_roles(ctx.route.tier, ctx.route.roles)
        if not needed:
            return
        held = ctx.subject.roles if ctx.subject is not None else ()
        if needed.isdisjoint(held):
            raise GatewayError(ROLE_FORBIDDEN, f"requires one of the roles: {', '.join(sorted(needed))}")


class BindAccount:
    name = "bind_account"

    def __call__(self, ctx: RequestContext) -> None:
        wanted = requested_accounts(ctx)
        if not wanted:
            return
        subject = ctx.subject
        owned = subject.accounts if subject is not None else ()
        for account in wanted:
            if account not in owned:
                raise GatewayError(ACCOUNT_FORBIDDEN)
