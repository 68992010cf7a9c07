"""Who is calling: API keys (`Authorization: Token <key>` or `Bearer <key>`), and the throttle
on failed logins and failed key authentication.

Failures are counted in Redis per username and per client address, in a fixed window: after
AUTH_FAILURE_LIMIT of either within AUTH_FAILURE_WINDOW seconds, logins for that username and
from that address are refused, the right password too, until the window has passed (an
attacker's guesses end there; the price is that a user can be locked out for one window)."""

import logging
import math

import redis
from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from runs import stream

from .models import ApiKey

log = logging.getLogger(__name__)


def _keys(username, address):
    keys = [f"relay:auth-failures:address:{address}"] if address else []
    if username:
        keys.append(f"relay:auth-failures:user:{username.casefold()}")
    return keys


def refused_for(*, username=None, address=None):
    """Seconds until a login for `username` from `address` is allowed again; 0 when it is.
    Redis being down lets logins through (logged): the throttle must not lock everyone out."""
    keys = _keys(username, address)
    try:
        pipe = stream.client().pipeline(transaction=False)
        for key in keys:
            pipe.get(key).ttl(key)
        found = pipe.execute()
    except redis.RedisError:
        log.warning("login throttle: Redis unavailable, not checked", exc_info=True)
        return 0
    waits = [
        max(ttl, 1)
        for count, ttl in zip(found[::2], found[1::2], strict=True)
        if count and int(count) >= settings.AUTH_FAILURE_LIMIT
    ]
    return max(waits, default=0)


def failed(*, username=None, address=None):
    """Count a failed login or key. The window starts at the first failure and is not
    extended by the next ones, so a refusal ends when it says. In one transaction: were the
    key to expire between the SET and the INCR, the INCR would make one that never expires."""
    try:
        pipe = stream.client().pipeline(transaction=True)
        for key in _keys(username, address):
            pipe.set(key, 0, ex=settings.AUTH_FAILURE_WINDOW, nx=True).incr(key)
        pipe.execute()
    except redis.RedisError:
        log.warning("login throttle: Redis unavailable, failure not counted", exc_info=True)


def forget(*, username):
    """A user who logged in has shown the password: their mistypes no longer count. Their
    address's count stays, or an attacker with an account of their own could clear it."""
    try:
        stream.client().delete(*_keys(username, None))
    except redis.RedisError:
        log.warning("login throttle: Redis unavailable, failures not cleared", exc_info=True)


def client_address(request):
    # uvicorn behind the proxy (--proxy-headers) has already put the client's address here
    return request.META.get("REMOTE_ADDR") if request is not None else None


def wait_text(seconds):
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = math.ceil(seconds / 60)
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


class TokenAuthentication(authentication.BaseAuthentication):
    """An API key, as `Authorization: Token <key>` or `Bearer <key>` as most clients send it.
    Wrong keys count as failures of the client's address; past the limit, 429."""

    def authenticate(self, request):
        auth = authentication.get_authorization_header(request).split()
        if not auth or auth[0].lower() not in (b"token", b"bearer"):
            return None
        address = client_address(request)
        wait = refused_for(address=address)
        if wait:
            # DRF adds "Expected available in <wait> seconds." and the Retry-After header
            raise exceptions.Throttled(wait, "Too many failed authentications from this address.")
        if len(auth) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header: give one key.")
        try:
            key = ApiKey.find(auth[1].decode())
        except UnicodeError:
            key = None
        if key is None:
            failed(address=address)
            raise exceptions.AuthenticationFailed("Invalid API key.")
        key.touch()
        return key.owner, key

    def authenticate_header(self, request):
        return "Token"  # so a missing key answers 401, not 403


class ThrottledLogin:
    """For an AuthenticationForm: refuse while the username or address is throttled, count a
    wrong password."""

    def clean(self):
        username = self.cleaned_data.get("username")
        address = client_address(self.request)
        wait = refused_for(username=username, address=address)
        if wait:
            raise forms.ValidationError(
                "Too many failed logins for this account or from this address; try again in"
                f" {wait_text(wait)}.",
                code="throttled",
            )
        try:
            return super().clean()
        except forms.ValidationError:
            if self.user_cache is None and username:  # the password was wrong
                failed(username=username, address=address)
            raise
        finally:
            if self.user_cache is not None:
                forget(username=username)


class LoginForm(ThrottledLogin, AuthenticationForm):
    pass


class AdminLoginForm(ThrottledLogin, AdminAuthenticationForm):
    pass


class TokenScheme(OpenApiAuthenticationExtension):
    target_class = "agents.auth.TokenAuthentication"
    name = "tokenAuth"
    priority = 1  # before drf-spectacular's own scheme for DRF's TokenAuthentication

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <key>` (or `Token <key>`).",
        }
