"""gpu-agent's config files and its web config: YAML read with line numbers (both files), the exporter-toolkit
web-config.yml (TLS, client certificates, bcrypt basic auth) checked at load with exporter-toolkit's semantics,
the TLS context, and the basic-auth check.

Every problem is an :class:`agent.errors.InputError` naming the file, line and key (exit 4): bad bytes, a combination
exporter-toolkit refuses, a malformed bcrypt hash, a certificate or key that does not load. Nothing here prompts:
an encrypted key is refused, never asked a pass phrase for.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.errors import EXIT_OPTIONS, InputError, closest

# ------------------------------------------------------------------------------------------------ YAML with lines
# characters no config file holds: C0 controls but tab, line feed and carriage return; DEL; C1 controls
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")


class _LineLoader(yaml.SafeLoader):
    pass


class LinedDict(dict):
    """A YAML mapping that remembers the line of each key."""

    def __init__(self, data: dict, lines: dict):
        super().__init__(data)
        self.lines = lines

    def line(self, key: Any) -> int | None:
        return self.lines.get(key)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    return LinedDict(mapping, {k.value: k.start_mark.line + 1 for k, _v in node.value})


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_text(path: str) -> str:
    """The file as text, or one line naming what is wrong with its bytes (invalid UTF-8, NUL, control chars)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError("file not found", file=path, exit_code=EXIT_OPTIONS) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", file=path, exit_code=EXIT_OPTIONS) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"not valid UTF-8 (byte {e.start})", file=path, line=line) from None
    bad = _BAD_CHARS.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise InputError(f"control character {ord(bad.group()):#04x} in the file", file=path, line=line)
    return text


def load_mapping(path: str) -> LinedDict | None:
    """A YAML config file: None when empty, else its top-level mapping (anything else is bad input)."""
    text = _read_text(path)
    try:
        doc = yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise InputError(f"invalid YAML: {e.problem}", file=path, line=line) from None
    except yaml.YAMLError as e:
        raise InputError(f"invalid YAML: {str(e).splitlines()[0]}", file=path) from None
    if doc is not None and not isinstance(doc, dict):
        raise InputError("expected a mapping at the top", file=path, line=1)
    return doc


# ------------------------------------------------------------------------------------------------ web config
CLIENT_AUTH_TYPES = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven",
                     "RequireAndVerifyClientCert")
TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version")
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# $2a$/$2b$/$2y$, a two-digit cost 04-31, 22 characters of salt and 31 of hash in bcrypt's base64
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


@dataclass
class WebConfig:
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = ""
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)
    path: str = ""          # the file it came from (for messages)

    @property
    def tls(self) -> bool:
        return bool(self.cert_file)


def _check_tls(wc: WebConfig, given: set[str], path: str, line: int | None) -> None:
    """exporter-toolkit's rules: any TLS setting needs cert_file and key_file (else the agent would serve plain
    HTTP to a config that asked for client certificates), a client CA needs a client auth policy, and the
    versions must leave one to speak."""
    def bad(msg: str, key: str = "") -> InputError:
        return InputError(msg, file=path, line=line, key="tls_server_config" + (f".{key}" if key else ""))
    if given and not (wc.cert_file and wc.key_file):
        missing = "cert_file" if not wc.cert_file else "key_file"
        raise bad(f"{missing} is required when tls_server_config sets {', '.join(sorted(given))}", missing)
    if wc.client_auth_type in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven") and not wc.client_ca_file:
        raise bad(f"client_auth_type {wc.client_auth_type} needs client_ca_file", "client_ca_file")
    if wc.client_ca_file and wc.client_auth_type == "NoClientCert":
        raise bad("client_ca_file is set but client_auth_type is NoClientCert (no client certificate would be "
                  "checked)", "client_auth_type")
    if wc.client_auth_type == "RequireAnyClientCert" and not wc.client_ca_file:
        # Python cannot accept an unverified client certificate; refuse rather than silently skip checking it
        raise bad("RequireAnyClientCert needs client_ca_file with gpu-agent", "client_auth_type")
    if wc.max_version and TLS_VERSIONS[wc.max_version] < TLS_VERSIONS[wc.min_version or "TLS12"]:
        raise bad(f"min_version {wc.min_version} is above max_version {wc.max_version}", "max_version")


def load_web_config(path: str) -> WebConfig:
    """Parse an exporter-toolkit web-config.yml; bad input -> InputError naming file, line and key. The TLS
    context is built once here, so a certificate or key that does not load stops the start."""
    doc = load_mapping(path)
    wc = WebConfig(path=path)
    if doc is None:
        return wc
    top = ("tls_server_config", "basic_auth_users", "http_server_config")
    base = os.path.dirname(os.path.abspath(path))
    tls_line = None
    given: set[str] = set()
    for key, val in doc.items():
        line = doc.line(key)
        if key not in top:
            raise InputError("unknown key", file=path, line=line, key=str(key), choices=top)
        if key == "http_server_config" and val:
            raise InputError("not supported by gpu-agent (HTTP/1.1 only, no extra headers)", file=path, line=line,
                             key=key)
        if key == "tls_server_config" and val is not None:
            if not isinstance(val, dict):
                raise InputError("expected a mapping", file=path, line=line, key=key)
            tls_line = line
            for k, v in val.items():
                kl = val.line(k)
                name = f"tls_server_config.{k}"
                if k not in TLS_KEYS:
                    if k in ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites"):
                        raise InputError("not supported by gpu-agent (Python's ssl defaults are used)", file=path,
                                         line=kl, key=name)
                    raise InputError("unknown key", file=path, line=kl, key=name, hint=closest(str(k), TLS_KEYS))
                if not isinstance(v, str) or not v:
                    raise InputError(f"expected a non-empty string, got {v!r}", file=path, line=kl, key=name)
                if k == "client_auth_type" and v not in CLIENT_AUTH_TYPES:
                    raise InputError(f"unknown value {v!r}", file=path, line=kl, key=name,
                                     hint=closest(v, CLIENT_AUTH_TYPES))
                if k in ("min_version", "max_version") and v not in TLS_VERSIONS:
                    raise InputError(f"unknown value {v!r}", file=path, line=kl, key=name,
                                     hint=closest(v, TLS_VERSIONS))
                if k.endswith("_file"):
                    v = v if os.path.isabs(v) else os.path.join(base, v)
                    if not os.path.isfile(v):
                        raise InputError(f"file not found: {v}", file=path, line=kl, key=name)
                if not (k == "client_auth_type" and v == "NoClientCert"):
                    given.add(k)
                setattr(wc, k, v)
        elif key == "basic_auth_users" and val is not None:
            if not isinstance(val, dict):
                raise InputError("expected a mapping of user: bcrypt hash", file=path, line=line, key=key)
            for user, h in val.items():
                ul = val.line(user)
                if not isinstance(h, str) or not BCRYPT_HASH.fullmatch(h):
                    raise InputError("expected a bcrypt hash ($2y$10$ and 53 characters; make one with "
                                     "htpasswd -nBC 10 USER)", file=path, line=ul, key=f"basic_auth_users.{user}")
                wc.basic_auth_users[str(user)] = h.encode()
    _check_tls(wc, given, path, tls_line)
    if wc.tls:
        ssl_context(wc)
    return wc


class _NoPassphrase(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _NoPassphrase


def ssl_context(wc: WebConfig) -> ssl.SSLContext:
    """The server's TLS context; a certificate, key or CA that does not load is an InputError naming it."""
    def bad(key: str, msg: str) -> InputError:
        return InputError(msg, file=wc.path or None, key=f"tls_server_config.{key}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[wc.min_version or "TLS12"]
    if wc.max_version:
        ctx.maximum_version = TLS_VERSIONS[wc.max_version]
    try:
        ctx.load_cert_chain(wc.cert_file, wc.key_file, password=_no_passphrase)
    except _NoPassphrase:
        raise bad("key_file", f"TLS: {wc.key_file} is encrypted; gpu-agent needs an unencrypted key (it never "
                              "asks for a pass phrase): openssl pkey -in KEY -out KEY.plain") from None
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise bad("key_file", f"TLS: {wc.key_file} is not the key of {wc.cert_file}") from None
        raise bad("cert_file", f"TLS: cannot load the certificate {wc.cert_file} with the key {wc.key_file} "
                               f"({e.reason or e.library or 'not PEM'})") from None
    except OSError as e:
        raise bad("cert_file", f"TLS: cannot read {wc.cert_file} / {wc.key_file}: {e.strerror}") from None
    if wc.client_ca_file:
        try:
            ctx.load_verify_locations(wc.client_ca_file)
        except (ssl.SSLError, OSError) as e:
            raise bad("client_ca_file", f"TLS: cannot load the client CA {wc.client_ca_file} "
                                        f"({getattr(e, 'reason', None) or e})") from None
    mode = wc.client_auth_type
    if mode in ("RequireAndVerifyClientCert", "RequireAnyClientCert"):
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif mode in ("VerifyClientCertIfGiven", "RequestClientCert"):
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class AuthBusy(Exception):
    """Too many password checks already wait for bcrypt: answer 503, check nothing (the answer is the same for
    every user, so it tells nothing)."""


class BasicAuth:
    """exporter-toolkit's basic auth: bcrypt checks cost ~50-250 ms, so a (user, password) pair already verified is
    remembered (as a keyed digest, never the password); an unknown user costs a bcrypt of a dummy hash of the
    highest configured cost (no user enumeration by timing); one bcrypt runs at a time, and at most
    ``max_waiting`` requests wait for it (the rest get :class:`AuthBusy`), so failed logins never hold every worker
    of the server."""

    def __init__(self, users: dict[str, bytes], max_waiting: int = 2):
        self.users = users
        self._ok: set[bytes] = set()
        self._key = os.urandom(32)
        self._lock = threading.Lock()            # the cache
        self._bcrypt = threading.Lock()          # one bcrypt at a time
        self._slots = threading.BoundedSemaphore(max(1, max_waiting))
        self._dummy: bytes | None = None

    def _dummy_hash(self) -> bytes:  # under self._bcrypt
        if self._dummy is None:
            import bcrypt
            cost = max(int(h.split(b"$")[2]) for h in self.users.values())
            self._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds=cost))
        return self._dummy

    def check(self, header: str | None) -> bool:
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, pw = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        h = self.users.get(user)
        tag = hmac.new(self._key, user.encode() + b"\0" + pw.encode() + b"\0" + (h or b""), hashlib.sha256).digest()
        if h is not None:
            with self._lock:
                if tag in self._ok:
                    return True
        if not self._slots.acquire(blocking=False):
            raise AuthBusy
        try:
            import bcrypt
            with self._bcrypt:
                try:
                    ok = bcrypt.checkpw(pw.encode(), h if h is not None else self._dummy_hash())
                except ValueError:
                    ok = False
        finally:
            self._slots.release()
        if ok and h is not None:
            with self._lock:
                self._ok.add(tag)
        return ok and h is not None
