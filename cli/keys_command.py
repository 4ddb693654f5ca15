"""`fdamerge keys …` and `fdamerge tenants …`: the operator's controls, straight on the job database.

keys: create (printed once, as the last line), list, revoke, expire. tenants: list, show, allow
(add or remove allowlist entries), disable (keys refused, jobs cancelled, schedules silent), enable.
Every command refuses to run against a database that does not exist yet or was never migrated: it
would otherwise create a new, empty one and print a key the running server has never heard of.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from service.auth import SCOPES


def add_parser(commands) -> None:
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key (printed once, as the last line)")
    create.add_argument("--tenant", required=True, help="tenant name (created if new)")
    create.add_argument("--scope", action="append", choices=SCOPES, help="repeatable; default jobs:read, jobs:write")
    create.add_argument(
        "--allow-bucket", action="append", default=[], metavar="S3_URI",
        help="repeatable: s3://bucket[/prefix] (or a bare bucket, or an absolute local folder) the tenant's"
        " inputs may come from",
    )  # fmt: skip
    create.add_argument("--expires", type=_moment, help="when the key stops working, e.g. 2027-01-01T00:00:00Z")
    _database_option(create)
    create.set_defaults(run=run_create)
    listing = keys.add_parser("list", help="a tenant's keys (never their secrets)")
    listing.add_argument("--tenant", required=True)
    _database_option(listing)
    listing.set_defaults(run=run_list)
    revoke = keys.add_parser("revoke", help="stop a key now")
    revoke.add_argument("key_id")
    _database_option(revoke)
    revoke.set_defaults(run=run_revoke)
    expire = keys.add_parser("expire", help="set when a key stops working")
    expire.add_argument("key_id")
    expire.add_argument("--at", type=_moment, required=True, help="e.g. 2027-01-01T00:00:00Z")
    _database_option(expire)
    expire.set_defaults(run=run_expire)
    add_tenant_parsers(commands)


def add_tenant_parsers(commands) -> None:
    tenants = commands.add_parser("tenants", help="tenants: allowlists, disable and enable").add_subparsers(
        dest="tenants_command", required=True
    )
    listing = tenants.add_parser("list")
    _database_option(listing)
    listing.set_defaults(run=run_tenants)
    for name, runner, text in (
        ("show", run_show, "a tenant's allowlist, state and keys"),
        ("disable", run_disable, "refuse its keys, cancel its jobs, stop its schedules"),
        ("enable", run_enable, "let a disabled tenant back in (its keys work again)"),
    ):
        command = tenants.add_parser(name, help=text)
        command.add_argument("tenant")
        _database_option(command)
        command.set_defaults(run=runner)
    allow = tenants.add_parser("allow", help="add or remove allowlist entries")
    allow.add_argument("tenant")
    allow.add_argument("--add", action="append", default=[], metavar="ENTRY", help="s3://bucket[/prefix] or /folder")
    allow.add_argument("--remove", action="append", default=[], metavar="ENTRY")
    _database_option(allow)
    allow.set_defaults(run=run_allow)


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL; default: FDA_DATABASE_URL or ./var/fdamerge.db")


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2027-01-01T00:00:00Z)") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z or +02:00)")
    return moment


class Refused(Exception):
    pass


def _guarded(run):
    def wrapper(args: argparse.Namespace) -> int:
        from service.errors import ServiceError

        try:
            url = existing_database(args.database_url)
            return run(args, url)
        except (Refused, ServiceError, ValueError) as exc:
            print(f"fdamerge: {exc}", file=sys.stderr)
            return 2

    return wrapper


def existing_database(given: str | None) -> str:
    """The job database's URL, if it exists and is migrated; never a new, empty one."""
    from pathlib import Path

    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from service.db import make_engine
    from service.settings import get_settings

    url = given or get_settings().database_url
    shown = make_url(url).render_as_string(hide_password=True)
    hint = "set FDA_DATABASE_URL (or --database-url) to the server's database, or run `fdamerge migrate` first"
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if not path or path == ":memory:" or not Path(path).exists():
            raise Refused(f"no job database at {shown} (working directory {Path.cwd()}); {hint}")
    try:
        engine = make_engine(url)
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
        engine.dispose()
    except SQLAlchemyError as exc:
        raise Refused(f"cannot open the job database at {shown} ({type(exc).__name__}); {hint}") from None
    if not {"tenants", "api_keys", "alembic_version"} <= tables:
        raise Refused(f"{shown} is not an fda-merge database (no tenants table); {hint}")
    return url


def _print(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


@_guarded
def run_create(args: argparse.Namespace, url: str) -> int:
    from service.auth import create_api_key, ensure_tenant
    from service.db import session_scope
    from service.submission import allowlist_entry

    allowed = [allowlist_entry(b) for b in args.allow_bucket]
    with session_scope(url) as session:
        tenant = ensure_tenant(session, args.tenant, allowed)
        key = create_api_key(session, tenant, args.scope, args.expires)
        print(
            f"tenant {tenant.name} ({tenant.id}); inputs allowed from: {', '.join(tenant.allowed_prefixes) or 'none'}"
        )
    print(key)
    return 0


def _key_document(key) -> dict[str, Any]:
    return {"id": key.id, "prefix": f"fdm_{key.lookup}", "scopes": key.scopes, "revoked": key.revoked,
            "expires_at": key.expires_at, "created_at": key.created_at}  # fmt: skip


@_guarded
def run_list(args: argparse.Namespace, url: str) -> int:
    from service.auth import list_keys
    from service.db import session_scope
    from service.tenants import get_tenant

    with session_scope(url) as session:
        _print([_key_document(key) for key in list_keys(session, get_tenant(session, args.tenant).id)])
    return 0


@_guarded
def run_revoke(args: argparse.Namespace, url: str) -> int:
    from service.auth import revoke_key
    from service.db import session_scope

    with session_scope(url) as session:
        _print(_key_document(revoke_key(session, None, args.key_id)))
    return 0


@_guarded
def run_expire(args: argparse.Namespace, url: str) -> int:
    from service.auth import expire_key
    from service.db import session_scope

    with session_scope(url) as session:
        _print(_key_document(expire_key(session, None, args.key_id, args.at)))
    return 0


def _tenant_document(tenant) -> dict[str, Any]:
    return {"id": tenant.id, "name": tenant.name, "allowed_inputs": tenant.allowed_prefixes,
            "disabled": tenant.disabled, "created_at": tenant.created_at}  # fmt: skip


@_guarded
def run_tenants(args: argparse.Namespace, url: str) -> int:
    from sqlalchemy import select

    from service.db import session_scope
    from service.models import Tenant

    with session_scope(url) as session:
        _print([_tenant_document(t) for t in session.scalars(select(Tenant).order_by(Tenant.name))])
    return 0


@_guarded
def run_show(args: argparse.Namespace, url: str) -> int:
    from service.auth import list_keys
    from service.db import session_scope
    from service.tenants import get_tenant

    with session_scope(url) as session:
        tenant = get_tenant(session, args.tenant)
        _print({**_tenant_document(tenant), "keys": [_key_document(k) for k in list_keys(session, tenant.id)]})
    return 0


@_guarded
def run_disable(args: argparse.Namespace, url: str) -> int:
    from service.db import session_scope
    from service.tenants import disable_tenant, get_tenant

    with session_scope(url) as session:
        tenant = get_tenant(session, args.tenant)
        cancelled = disable_tenant(session, tenant)
        _print({**_tenant_document(tenant), "cancelled_jobs": cancelled})
    return 0


@_guarded
def run_enable(args: argparse.Namespace, url: str) -> int:
    from service.db import session_scope
    from service.tenants import enable_tenant, get_tenant

    with session_scope(url) as session:
        tenant = get_tenant(session, args.tenant)
        enable_tenant(session, tenant)
        _print(_tenant_document(tenant))
    return 0


@_guarded
def run_allow(args: argparse.Namespace, url: str) -> int:
    from service.db import session_scope
    from service.submission import allowlist_entry
    from service.tenants import change_allowlist, get_tenant

    if not args.add and not args.remove:
        raise Refused("give --add ENTRY and/or --remove ENTRY")
    add = [allowlist_entry(entry) for entry in args.add]
    remove = [entry.rstrip("/") for entry in args.remove]
    with session_scope(url) as session:
        tenant = get_tenant(session, args.tenant)
        unknown = [entry for entry in remove if entry not in tenant.allowed_prefixes]
        if unknown:
            raise Refused(f"{unknown[0]!r} is not on {tenant.name}'s allowlist: {', '.join(tenant.allowed_prefixes)}")
        change_allowlist(session, tenant, add, remove)
        _print(_tenant_document(tenant))
    return 0
