"""Secrets at rest: providers' API keys and the headers sent to providers and MCP servers are
kept encrypted (Fernet: AES-128-CBC with an HMAC-SHA256 tag) and read only where they are used.

The keys are SECRETS_ENCRYPTION_KEYS when set (Fernet keys, the first encrypts, every one
decrypts), else keys derived from SECRET_KEY and SECRET_KEY_FALLBACKS. Rotating either is
documented in docs/deploy.md: add the new key in front, run `manage.py rotate_secrets`, then
drop the old one."""

import base64
import functools
import hashlib
import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from runs.loop import RunFailed

DERIVATION = b"relay secrets at rest v1"  # so the derived key is not SECRET_KEY's other uses'


class SecretUnreadable(RunFailed):
    """A stored secret that none of the keys decrypts: the keys changed without a rotation."""


def derived_key(secret_key):
    digest = hashlib.sha256(DERIVATION + secret_key.encode()).digest()
    return base64.urlsafe_b64encode(digest)


@functools.cache
def _fernet(keys):
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"SECRETS_ENCRYPTION_KEYS holds a key that is not a Fernet key: {exc}"
        ) from None


def fernet():
    keys = settings.SECRETS_ENCRYPTION_KEYS or [
        derived_key(key) for key in [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    ]
    return _fernet(tuple(k.encode() if isinstance(k, str) else k for k in keys))


def seal(text):
    """The ciphertext of `text`; "" stays "" (no secret to keep)."""
    return fernet().encrypt(text.encode()).decode() if text else ""


def unseal(token):
    if not token:
        return ""
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "a stored secret cannot be decrypted with the configured keys (were SECRET_KEY or"
            " SECRETS_ENCRYPTION_KEYS changed without `manage.py rotate_secrets`?): enter it again"
        ) from None


def rotate(token):
    """`token` encrypted again with the first key (it may have been with any of them)."""
    if not token:
        return ""
    try:
        return fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "a stored secret cannot be decrypted with any configured key: keep the old key in"
            " the list until every secret is encrypted again"
        ) from None


def sealed(column, *, as_json=False):
    """A property over the model field `column` that holds the sealed value: reading decrypts,
    assigning encrypts. With `as_json` the value is a dict of strings, kept as JSON."""

    def get(instance):
        text = unseal(getattr(instance, column))
        return (json.loads(text) if text else {}) if as_json else text

    def set_(instance, value):
        if as_json:
            value = json.dumps(value, sort_keys=True) if value else ""
        setattr(instance, column, seal(value or ""))

    return property(get, set_)
