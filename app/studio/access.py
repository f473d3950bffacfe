"""Accounts and roles. Researchers use the studio; raters only rate (the /rate page).

Accounts come from configuration: STUDIO_USERS="name:password:role,..." and/or STUDIO_USERS_FILE (one
`name:password:role` per line, '#' comments). A password may be stored hashed as `pbkdf2_sha256$ITER$SALT$HEX`
(`distill-studio users hash` prints one). Single-user mode (`up --no-auth`) has no accounts and serves localhost only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

ROLES = ("researcher", "rater")
LOCAL_USER = "local"  # the one user of single-user mode
_HASH = "pbkdf2_sha256"
_ITERATIONS = 200_000


@dataclass(frozen=True)
class Account:
    name: str
    password: str  # plain, or pbkdf2_sha256$ITER$SALT$HEX
    role: str


def hash_password(password: str, *, iterations: int = _ITERATIONS, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return f"{_HASH}${iterations}${salt}${digest}"


def _matches(stored: str, given: str) -> bool:
    if stored.startswith(_HASH + "$"):
        _, iterations, salt, _digest = stored.split("$")
        return hmac.compare_digest(hash_password(given, iterations=int(iterations), salt=salt), stored)
    return hmac.compare_digest(stored.encode(), given.encode())


def parse_accounts(text: str, source: str) -> list[Account]:
    """Accounts from `name:password:role` items separated by commas or new lines; errors name the source and item."""
    accounts = []
    for n, raw in enumerate(text.replace(",", "\n").splitlines(), 1):
        item = raw.strip()
        if not item or item.startswith("#"):  # whole-line comments only: a password may contain '#'
            continue
        name, sep1, rest = item.partition(":")
        password, sep2, role = rest.rpartition(":")
        if not (sep1 and sep2 and name and password):
            raise ValueError(f"{source}: item {n} must be name:password:role, got {item.split(':')[0]!r}:...")
        if role not in ROLES:
            raise ValueError(f"{source}: user {name!r} has role {role!r}; roles are {', '.join(ROLES)}")
        if password.startswith(_HASH) and (password.count("$") != 3 or not password.split("$")[1].isdigit()
                                           or int(password.split("$")[1]) < 1):
            raise ValueError(f"{source}: user {name!r} has a malformed {_HASH} hash")
        accounts.append(Account(name.strip(), password, role))
    return accounts


class Accounts:
    """The configured accounts; `None` roles in single-user mode mean everyone is the local researcher."""

    def __init__(self, accounts: list[Account] | None):
        self.single_user = accounts is None
        self._by_name: dict[str, Account] = {}
        for account in accounts or []:
            if account.name in self._by_name:
                raise ValueError(f"STUDIO_USERS: user {account.name!r} is defined twice")
            self._by_name[account.name] = account

    @classmethod
    def from_settings(cls, users: str, users_file: Path | None, no_auth: bool) -> Accounts:
        if no_auth:
            return cls(None)
        accounts = parse_accounts(users, "STUDIO_USERS") if users else []
        if users_file is not None:
            if not users_file.is_file():
                raise ValueError(f"STUDIO_USERS_FILE: {str(users_file)!r} is not a file")
            accounts += parse_accounts(users_file.read_text(), "STUDIO_USERS_FILE")
        if not accounts:
            raise ValueError("no accounts configured: set STUDIO_USERS=name:password:role,... (or STUDIO_USERS_FILE), "
                             "or run single-user with `distill-studio up --no-auth` (localhost only)")
        return cls(accounts)

    def check(self, username: str, password: str) -> bool:
        account = self._by_name.get(username)
        return account is not None and _matches(account.password, password)

    def checker(self, *roles: str):
        """Gradio's auth callable for a page that admits only `roles` (the studio: researchers; /rate: raters)."""
        def check(username: str, password: str) -> bool:
            return self.role(username) in roles and self.check(username, password)
        return check

    def role(self, username: str | None) -> str | None:
        if self.single_user:
            return "researcher"
        account = self._by_name.get(username or "")
        return account.role if account else None

    def names(self, role: str) -> list[str]:
        return sorted(a.name for a in self._by_name.values() if a.role == role)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_single_user_host(host: str) -> None:
    if not is_loopback(host):
        raise ValueError(f"host: --no-auth serves only localhost (127.0.0.1, ::1), not {host!r}; configure accounts "
                         "with STUDIO_USERS to serve other hosts")
