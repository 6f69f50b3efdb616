"""Who may do what on a server: which models users may load, how large a download may be, who may log in, how big
an upload may be, and the start-up summary of these choices.

The defaults follow `Settings.exposure()`: an app that only this machine can reach keeps the open defaults (any Hub
id, local paths); one that strangers can reach (listening beyond loopback, `--share`, Spaces, BIOGPT_EXPOSED=1)
offers only the catalog models and no local paths unless the operator widens them. `biogpt.manager` enforces the
model and download rules (so every caller of the manager meets them); the app uses the login check and prints
`describe()` at start-up.

Password files (BIOGPT_AUTH=/path) hold one `user:scrypt$n$r$p$salt$hash` line per user (`#` starts a comment);
`python -m biogpt.access hash USER` prompts for a password and prints such a line.
"""

from __future__ import annotations

import base64
import fnmatch
import getpass
import hashlib
import hmac
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, TypeVar

from . import catalog
from .errors import CheckpointError, ConfigError, InputError
from .settings import Settings

T = TypeVar("T")
# scrypt's cost: 2**14 x 8 x 1 takes 16 MiB and tens of milliseconds per check (one per login, not per request).
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_BYTES = 2**14, 8, 1, 32


# ----------------------------------------------------------------------------------------------------------------
# Models and downloads
# ----------------------------------------------------------------------------------------------------------------
def allowed_models(settings: Settings) -> Optional[tuple[str, ...]]:
    """The Hub ids / fnmatch patterns users may load, or None for any.

    Any on a private app; the catalog (`demo` included) and the operator's own BIOGPT_MODEL on an exposed one,
    or on any app that sets BIOGPT_ALLOWED_MODELS, whose entries widen that list (`*` among them: any).
    """
    extra = settings.allowed_models
    if "*" in extra or not (extra or settings.is_exposed):
        return None
    return tuple(dict.fromkeys(tuple(catalog.CATALOG) + ((settings.model,) if settings.model else ()) + extra))


def check_model(source: str, allowed: Optional[tuple[str, ...]]) -> None:
    """Raise `CheckpointError` unless the Hub id `source` matches one of `allowed` (None: anything goes).

    Matching ignores case, as the Hub does for repo ids."""
    if allowed is None or any(fnmatch.fnmatch(source.lower(), pattern.lower()) for pattern in allowed):
        return
    raise CheckpointError(f"{source!r} is not offered on this server; choose one of {', '.join(allowed)} (the "
                          "operator can allow more with BIOGPT_ALLOWED_MODELS).")


def physical_memory() -> Optional[int]:
    """This machine's RAM in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX, or the name is unknown here
        return None


def download_limit(settings: Settings) -> tuple[Optional[int], str]:
    """(bytes of weights one Hub download may have, where that number comes from).

    BIOGPT_MAX_MODEL_BYTES, else the larger of the CPU and GPU memory budgets, else this machine's RAM: weights
    larger than that could not be loaded anyway (file bytes are compared, so a 4-bit load of a larger checkpoint
    needs BIOGPT_MAX_MODEL_BYTES raised)."""
    if settings.max_model_bytes is not None:
        return settings.max_model_bytes, "BIOGPT_MAX_MODEL_BYTES"
    budgets = [b for b in (settings.memory_budget, settings.gpu_memory_budget) if b is not None]
    if budgets:
        return max(budgets), "the memory budget"
    return physical_memory(), "this machine's RAM"


# ----------------------------------------------------------------------------------------------------------------
# Login
# ----------------------------------------------------------------------------------------------------------------
def hash_password(password: str, salt: Optional[bytes] = None) -> str:
    """`scrypt$n$r$p$salt$hash` (base64 salt and hash) for a password file line `user:<this>`."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=SCRYPT_BYTES)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


@dataclass(frozen=True)
class _Hash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str, where: str) -> "_Hash":
        parts = text.split("$")
        try:
            if len(parts) != 6 or parts[0] != "scrypt":
                raise ValueError("not scrypt$n$r$p$salt$hash")
            n, r, p = (int(part) for part in parts[1:4])
            return cls(n, r, p, base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True))
        except ValueError as exc:  # int() and b64decode() both raise ValueError subclasses
            raise ConfigError(f"{where}: the password hash is not scrypt$n$r$p$salt$hash ({exc}); make one with "
                              "`python -m biogpt.access hash USER`.") from None

    def matches(self, password: str) -> bool:
        digest = hashlib.scrypt(password.encode("utf-8"), salt=self.salt, n=self.n, r=self.r, p=self.p,
                                dklen=len(self.digest), maxmem=256 * self.n * self.r + 2**20)
        return hmac.compare_digest(digest, self.digest)


class Credentials:
    """The users of BIOGPT_AUTH; `check(user, password)` is the callable Gradio's login takes.

    Every check costs the same whether the user exists or not, and compares digests in constant time, so neither
    timing nor the answer says which part was wrong."""

    def __init__(self, users: dict[str, _Hash]):
        if not users:
            raise ConfigError("BIOGPT_AUTH names no user.")
        self._users = users
        self._decoy = _Hash.parse(hash_password(secrets.token_hex(16)), "decoy")

    @classmethod
    def from_setting(cls, value: str) -> "Credentials":
        """Parse BIOGPT_AUTH: a file of `user:hash` lines, or `user:password` pairs (hashed here, in memory)."""
        path = Path(value)
        if path.is_file():
            users = {}
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                user, colon, hashed = line.partition(":")
                if not user or not colon:
                    raise ConfigError(f"BIOGPT_AUTH file, line {number}: expected user:scrypt$…")
                users[user] = _Hash.parse(hashed, f"BIOGPT_AUTH file, line {number}")
            return cls(users)
        pairs = (pair.strip().partition(":") for pair in value.split(","))
        return cls({user: _Hash.parse(hash_password(password), "BIOGPT_AUTH") for user, _, password in pairs})

    @property
    def users(self) -> tuple[str, ...]:
        return tuple(self._users)

    def check(self, username: str, password: str) -> bool:
        known = self._users.get(username)
        matched = (known or self._decoy).matches(password if isinstance(password, str) else "")
        return known is not None and matched


def credentials(settings: Settings) -> Optional[Credentials]:
    """The login the app requires (BIOGPT_AUTH), or None for none."""
    return Credentials.from_setting(settings.auth) if settings.auth else None


# ----------------------------------------------------------------------------------------------------------------
# Uploads
# ----------------------------------------------------------------------------------------------------------------
def check_upload(path: str | os.PathLike, settings: Settings) -> Path:
    """`path` if the uploaded file is within BIOGPT_MAX_UPLOAD_BYTES, else an `InputError` giving both sizes.

    Gradio refuses larger uploads itself (the app passes the same cap to `launch(max_file_size=...)`); this check
    is for code that receives a file by another route."""
    path = Path(path)
    size = path.stat().st_size
    cap = settings.max_upload_bytes
    if cap is not None and size > cap:
        raise InputError(f"The file is {size:,} bytes; the limit is {cap:,} bytes.")
    return path


def limit_rows(rows: Iterable[T], settings: Settings) -> Iterator[T]:
    """The rows of an uploaded file, raising `InputError` at row BIOGPT_MAX_UPLOAD_ROWS + 1 (before it is used)."""
    cap = settings.max_upload_rows
    for number, row in enumerate(rows, 1):
        if number > cap:
            raise InputError(f"The file has more than {cap:,} rows; the limit is {cap:,}.")
        yield row


# ----------------------------------------------------------------------------------------------------------------
# The start-up summary
# ----------------------------------------------------------------------------------------------------------------
def _size(count: Optional[int]) -> str:
    return "no limit" if count is None else f"{count / 1e9:.1f} GB"


def describe(settings: Settings, login: Optional[Credentials] = None) -> str:
    """A few lines for the start-up log: which access defaults apply and why."""
    reasons = settings.exposure()
    if reasons:
        head = f"Access: exposed ({'; '.join(reasons)})"
    else:
        head = f"Access: private (listening on {settings.listen_host} only; BIOGPT_EXPOSED=1 if a proxy exposes it)"
    local = "on" if settings.local_paths_allowed else "off"
    if settings.allow_local_paths is None:
        local += " (default; BIOGPT_ALLOW_LOCAL_PATHS changes it)"
    allowed = allowed_models(settings)
    models = "any Hub id" if allowed is None else ", ".join(allowed)
    limit, source = download_limit(settings)
    disk = f"the cache within {_size(settings.disk_budget)}" if settings.disk_budget else "the free disk space"
    who = (f"required ({len(login.users)} user(s) from BIOGPT_AUTH)" if login is not None
           else "none: anyone who reaches the app can use it (BIOGPT_AUTH adds one)")
    return "\n".join([
        head,
        f"  local paths: {local}",
        f"  models: {models}" + ("" if allowed is None else " (BIOGPT_ALLOWED_MODELS widens this)"),
        f"  downloads: weights up to {_size(limit)} ({source}), within {disk}",
        f"  login: {who}",
        f"  per client: {settings.client_running} running + {settings.client_queued} waiting job(s)",
    ])


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m biogpt.access hash USER`: print a password-file line (the password is read without echo, or from
    standard input when it is not a terminal)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "hash" or ":" in args[1]:
        print("usage: python -m biogpt.access hash USER  (prints USER:scrypt$... for a BIOGPT_AUTH file)",
              file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {args[1]}: ")
        if getpass.getpass("Again: ") != password:
            print("The two passwords differ.", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("The password is empty.", file=sys.stderr)
        return 1
    print(f"{args[1]}:{hash_password(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
