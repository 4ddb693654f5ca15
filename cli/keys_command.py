"""`fdamerge keys create`: a new API key for a tenant, printed once as the last line."""

from __future__ import annotations

import argparse
import sys

from service.auth import SCOPES


def add_parser(commands) -> None:
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key (printed once, as the last line)")
    create.add_argument("--tenant", required=True, help="tenant name (created if new)")
    create.add_argument("--scope", action="append", choices=SCOPES, help="repeatable; default jobs:read, jobs:write")
    create.add_argument(
        "--allow-bucket", action="append", default=[], metavar="S3_URI",
        help="repeatable: s3://bucket[/prefix] (or a bare bucket) this tenant's inputs may come from",
    )  # fmt: skip
    create.set_defaults(run=run_create)


def run_create(args: argparse.Namespace) -> int:
    from service.auth import create_api_key, ensure_tenant
    from service.db import session_scope
    from service.errors import ServiceError
    from service.migrate import upgrade
    from service.settings import get_settings
    from service.submission import allowlist_entry

    url = get_settings().database_url
    try:
        allowed = [allowlist_entry(b) for b in args.allow_bucket]
    except ServiceError as exc:
        print(f"fdamerge: {exc}", file=sys.stderr)
        return 2
    upgrade(url)
    with session_scope(url) as session:
        tenant = ensure_tenant(session, args.tenant, allowed)
        key = create_api_key(session, tenant, args.scope)
        print(
            f"tenant {tenant.name} ({tenant.id}); inputs allowed from: {', '.join(tenant.allowed_prefixes) or 'none'}"
        )
    print(key)
    return 0
