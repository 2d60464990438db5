"""What the store may make a reader execute: the trust key and the checks on pickles and compiled pipelines.

Loading a pickle runs code, so anyone who can write into a shared store could
make readers run theirs. mlpipe therefore never lets a stored document decide
that bytes are unpickled:

- a consumer's annotation decides how an input loads (:meth:`ArtifactStore.get_value`),
  so a ``pd.DataFrame`` or pydantic input never reaches a pickle;
- a cloudpickle object loads only when its SHA-256 is vouched for: by a
  message authentication code (HMAC-SHA256) under this user's trust key, written
  in the sidecar by the process that pickled it, or by the compiled pipeline
  (step code), itself verified against the SHA-256 digest the orchestrator passed.

The trust key is ``MLPIPE_TRUST_KEY`` when set (give every machine and remote
task that shares a store the same secret), else a random key kept in
``$XDG_CONFIG_HOME/mlpipe/trust.key`` (``~/.config/mlpipe/trust.key``),
created with mode 0600 on first use. It never goes into the store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

__all__ = ["object_mac", "trust_key", "verify_mac"]

_cached: tuple[str, bytes] | None = None


def _key_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "mlpipe", "trust.key")


def trust_key() -> bytes:
    """This process's trust key (see the module docstring)."""
    global _cached
    env = os.environ.get("MLPIPE_TRUST_KEY")
    source = f"env:{env}" if env else _key_file()
    if _cached is not None and _cached[0] == source:
        return _cached[1]
    key = env.encode() if env else _read_or_create(source)
    _cached = (source, key)
    return key


def _read_or_create(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    key = secrets.token_hex(32).encode()
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    try:
        os.link(tmp, path)  # first writer wins; a concurrent creator reads the winner's key
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path, "rb") as f:
        return f.read().strip()


def object_mac(digest: str, sha256: str) -> str:
    """HMAC-SHA256 over an object's address and the SHA-256 of its bytes, under the trust key."""
    return hmac.new(trust_key(), f"mlpipe-object\n{digest}\n{sha256}".encode(), hashlib.sha256).hexdigest()


def verify_mac(mac: object, digest: str, sha256: str) -> bool:
    return isinstance(mac, str) and hmac.compare_digest(mac, object_mac(digest, sha256))
