"""SSH through paramiko, safe by default.

* Host keys are verified against known_hosts (the host's ``ansible_ssh_known_hosts_file``, else ~/.ssh/known_hosts
  and /etc/ssh/ssh_known_hosts). ``host_key_checking``: ``yes`` (default, unknown keys refused), ``accept-new``
  (unknown keys appended to the file, with a warning), ``off`` (unknown keys accepted unsaved, loud warning).
  A key that differs from a known one is ALWAYS refused (:class:`HostKeyMismatch`).
* ~/.ssh/config: HostName, Port, User, IdentityFile, UserKnownHostsFile, ProxyJump (a direct-tcpip channel
  through the jump host's own verified connection). Inventory values win over the config file.
* One connection (transport) per host for the whole run; every command is a new channel on it.
* Per-command wall-clock deadline kept here (paramiko's timeouts are per read); stdout and stderr are read
  together so a chatty command cannot block; no pty.
* become: sudo's own prompt gets the password, and the command's stdin goes once sudo has started it
  (provision/connectors/_become.py); the environment travels in stdin too, never on the command line.
"""
from __future__ import annotations

import getpass
import logging
import os
import selectors
import shlex
import socket
import sys
import threading
import time
from typing import Callable, Mapping

import paramiko

from provision.connectors import HOST_KEY_CHECKING
from provision.connectors._become import BECOME_TIMEOUT, Sudo, with_env
from provision.connectors._proc import stdin_chunks
from provision.connectors.base import (CommandResult, CommandTimeout, ConnectorError, HostKeyMismatch,
                                       Unreachable)

_KNOWN_HOSTS_LOCK = threading.Lock()

# paramiko logs a traceback for every refused or cut connection (a rebooting host); the connector turns those
# into Unreachable/CommandTimeout with one line, which is what the user sees.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


_PARSED: dict[tuple, paramiko.HostKeys] = {}


def _parsed_known_hosts(path: str) -> paramiko.HostKeys:
    """known_hosts parsed once per run and file version (path, mtime, size): accept-new's appends re-parse."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    with _KNOWN_HOSTS_LOCK:
        hk = _PARSED.get(key)
        if hk is None:
            for old in [k for k in _PARSED if k[0] == key[0]]:
                del _PARSED[old]
            hk = _PARSED[key] = paramiko.HostKeys(path)
        return hk


def _copy_entries(known: paramiko.HostKeys, entry: str, into: paramiko.HostKeys) -> None:
    """Copy the keys ``known`` holds for ``entry`` (hashed entries included) into a client's own HostKeys."""
    for keytype, key in (known.lookup(entry) or {}).items():
        into.add(entry, keytype, key)


def _warn_stderr(msg: str) -> None:
    print(f"[WARNING]: {msg}", file=sys.stderr)


class _CheckingPolicy(paramiko.MissingHostKeyPolicy):
    """Called only for hosts with NO known key (paramiko raises BadHostKeyException for changed keys)."""

    def __init__(self, mode: str, known_hosts_file: str, warn: Callable[[str], None]):
        self.mode, self.file, self.warn = mode, known_hosts_file, warn

    def missing_host_key(self, client, hostname, key):
        fp = key.fingerprint if hasattr(key, "fingerprint") else key.get_base64()[:16]
        if self.mode == "accept-new":
            line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
            with _KNOWN_HOSTS_LOCK:
                os.makedirs(os.path.dirname(os.path.abspath(self.file)), exist_ok=True)
                with open(self.file, "a", encoding="utf-8") as fh:
                    fh.write(line)
            client.get_host_keys().add(hostname, key.get_name(), key)
            self.warn(f"{hostname}: unknown host key {key.get_name()} {fp} added to {self.file} (accept-new)")
            return
        if self.mode == "off":
            self.warn(f"HOST KEY CHECKING IS OFF: accepting unverified key {key.get_name()} {fp} for {hostname}; "
                      "anyone on the path can impersonate this host")
            return
        raise Unreachable(f"host key for {hostname} is not in {self.file} (verify it and add it, or use "
                          "--host-key-checking accept-new)")


def _ssh_config(path: str | None) -> paramiko.SSHConfig | None:
    path = os.path.expanduser(path or "~/.ssh/config")
    if not os.path.exists(path):
        return None
    try:
        return paramiko.SSHConfig.from_path(path)
    except Exception as err:  # noqa: BLE001 - a broken config must not crash the run
        _warn_stderr(f"cannot read {path}: {err}")
        return None


def _tcp_socket(address: str, port: int, timeout: float) -> socket.socket:
    """The connection's TCP socket, with Nagle's algorithm off. paramiko's own socket leaves it on, and then
    every small SSH packet waits for the peer's delayed ACK: opening a channel took ~40 ms instead of ~0.2 ms,
    so every command paid 40 ms (bench/README.md has the numbers)."""
    sock = socket.create_connection((address, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not TCP (a unix socket through a wrapper, say): nothing to turn off
        pass
    return sock


class SSHConnector:
    kind = "ssh"

    def __init__(self, name: str, *, address: str, port: int | None = None, user: str | None = None,
                 key_files: list[str] | None = None, password: str | None = None,
                 known_hosts_file: str | None = None, host_key_checking: str = "yes",
                 connect_timeout: float = 10.0, command_timeout: float | None = None, keepalive: int = 15,
                 become_password: str | None = None, ssh_config: str | None = None,
                 warn: Callable[[str], None] | None = None, _depth: int = 0, proxy_jump: str | None = None):
        self.host = name
        self._warn = warn or _warn_stderr
        self._password = become_password
        self._default_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._jump: SSHConnector | None = None
        self._lock = threading.Lock()

        cfg = _ssh_config(ssh_config)
        c = cfg.lookup(address) if cfg else {}
        self.address = c.get("hostname", address) if address else address
        self.port = int(port if port is not None else c.get("port", 22))
        self.user = user or c.get("user") or getpass.getuser()
        keys = list(key_files or []) + [os.path.expanduser(k) for k in c.get("identityfile", [])]
        keys = [os.path.expanduser(k) for k in keys if os.path.exists(os.path.expanduser(k))]
        if known_hosts_file is None and c.get("userknownhostsfile"):
            known_hosts_file = c["userknownhostsfile"].split()[0]
        self.known_hosts_file = os.path.expanduser(known_hosts_file or "~/.ssh/known_hosts")
        if host_key_checking not in HOST_KEY_CHECKING:
            raise ValueError(f"host_key_checking must be yes, accept-new or off, not {host_key_checking!r}")

        client = paramiko.SSHClient()
        # Only this host's entries go into the client: the parsed file is shared by every connection of the run
        # (parsing it per connection was quadratic in hosts; bench/README.md has the numbers).
        entry = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        if os.path.exists("/etc/ssh/ssh_known_hosts") and known_hosts_file is None:
            try:
                _copy_entries(_parsed_known_hosts("/etc/ssh/ssh_known_hosts"), entry, client.get_host_keys())
            except Exception:  # noqa: BLE001
                pass
        if os.path.exists(self.known_hosts_file):
            try:
                _copy_entries(_parsed_known_hosts(self.known_hosts_file), entry, client.get_host_keys())
            except Exception as err:  # noqa: BLE001
                raise Unreachable(f"{name}: cannot read known_hosts {self.known_hosts_file}: {err}") from err
        client.set_missing_host_key_policy(_CheckingPolicy(host_key_checking, self.known_hosts_file, self._warn))

        sock = None
        jump = proxy_jump or c.get("proxyjump")
        if jump and jump.lower() != "none" and _depth < 5:
            sock = self._open_jump(jump.split(",")[0].strip(), host_key_checking, keepalive, ssh_config, _depth,
                                   keys)
        try:
            if sock is None:
                sock = _tcp_socket(self.address, self.port, connect_timeout)
            client.connect(self.address, port=self.port, username=self.user, key_filename=keys or None,
                           password=password, allow_agent=True, look_for_keys=not keys, timeout=connect_timeout,
                           banner_timeout=connect_timeout, auth_timeout=connect_timeout, sock=sock)
        except paramiko.BadHostKeyException as err:
            client.close()
            self._close_jump()
            raise HostKeyMismatch(
                f"{name}: HOST KEY CHANGED for {err.hostname} (got {err.key.get_name()} "
                f"{err.key.fingerprint}, known_hosts {self.known_hosts_file} has {err.expected_key.fingerprint}); "
                "refusing to connect: this may be an impersonation. Remove the old key if the change is expected"
            ) from None
        except Unreachable as err:
            client.close()
            self._close_jump()
            raise Unreachable(f"{name}: {err}") from None
        except paramiko.AuthenticationException as err:
            client.close()
            self._close_jump()
            raise Unreachable(f"{name}: authentication failed for {self.user}@{self.address}:{self.port}: {err}") \
                from None
        except (OSError, paramiko.SSHException, EOFError) as err:
            client.close()
            if isinstance(sock, socket.socket):
                sock.close()
            self._close_jump()
            raise Unreachable(f"{name}: cannot connect to {self.address}:{self.port}: "
                              f"{err or type(err).__name__}") from None
        self._client = client
        transport = client.get_transport()
        if keepalive:
            transport.set_keepalive(keepalive)

    # -- ProxyJump ------------------------------------------------------------------------------------
    def _open_jump(self, spec: str, hkc: str, keepalive: int, ssh_config: str | None, depth: int, keys: list):
        """The jump host is verified against the same known_hosts file, with the same keys (plus its own
        ~/.ssh/config entry)."""
        user, _, hostport = spec.rpartition("@")
        jhost, _, jport = hostport.partition(":")
        self._jump = SSHConnector(f"{self.host}~jump:{jhost}", address=jhost, port=int(jport) if jport else None,
                                  user=user or None, key_files=keys, known_hosts_file=self.known_hosts_file,
                                  host_key_checking=hkc,
                                  connect_timeout=self._connect_timeout, keepalive=keepalive,
                                  ssh_config=ssh_config, warn=self._warn, _depth=depth + 1)
        try:
            return self._jump._client.get_transport().open_channel(
                "direct-tcpip", (self.address, self.port), ("127.0.0.1", 0), timeout=self._connect_timeout)
        except (paramiko.SSHException, OSError) as err:
            self._close_jump()
            raise Unreachable(f"{self.host}: jump host {jhost} cannot reach {self.address}:{self.port}: {err}") \
                from None

    def _close_jump(self):
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    # -- execution ------------------------------------------------------------------------------------
    def _exec(self, command: str, stdin, timeout: float | None, sudo: Sudo | None = None):
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            raise Unreachable(f"{self.host}: connection lost")
        start = time.monotonic()
        deadline = start + timeout if timeout else None
        try:
            chan = transport.open_session(timeout=self._connect_timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise Unreachable(f"{self.host}: connection lost: {err}") from None
        out, err = [], []
        if sudo is not None and not self._converse(chan, sudo, out, err, deadline, timeout):
            stdin = None                 # sudo ended without starting the command: nothing of ours goes
        if stdin:
            threading.Thread(target=self._feed, args=(chan, stdin), daemon=True).start()
        else:
            chan.shutdown_write()
        # selectors (epoll), not select(): a run with hundreds of hosts has file descriptors above 1024
        waiter = selectors.DefaultSelector()
        waiter.register(chan, selectors.EVENT_READ)
        try:
            while True:
                while chan.recv_ready():
                    out.append(chan.recv(65536))
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(65536))
                if chan.closed or (chan.eof_received and chan.exit_status_ready()):
                    if not chan.recv_ready() and not chan.recv_stderr_ready():
                        break
                    continue
                wait = 0.5
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        chan.close()
                        raise CommandTimeout(f"{self.host}: command ran past its {timeout:g}s deadline and was "
                                             "stopped")
                    wait = min(wait, left)
                if chan.eof_received:
                    # all output is in, and paramiko keeps the channel's pipe readable from EOF on: waiting on
                    # it would spin until the exit status arrives, so wait for the exit status itself
                    chan.status_event.wait(wait)
                else:
                    waiter.select(wait)
                if not transport.is_active():
                    raise Unreachable(f"{self.host}: connection lost while a command ran")
            rc = chan.recv_exit_status()
        finally:
            waiter.close()
            chan.close()
        if rc == -1 and not transport.is_active():
            raise Unreachable(f"{self.host}: connection lost while a command ran")
        if sudo is not None:
            sudo.ended(rc)
        return rc, b"".join(out), b"".join(err), time.monotonic() - start

    def _converse(self, chan, sudo: Sudo, out: list, err: list, deadline: float | None, timeout) -> bool:
        """Before anything is sent: sudo's prompt gets the password, its marker says the command runs. True when
        it does; False when sudo ended first (its complaint is in ``err``)."""
        until = time.monotonic() + BECOME_TIMEOUT
        waiter = selectors.DefaultSelector()
        waiter.register(chan, selectors.EVENT_READ)
        try:
            while not sudo.started:
                o = chan.recv(65536) if chan.recv_ready() else b""
                e = chan.recv_stderr(65536) if chan.recv_stderr_ready() else b""
                if o or e:
                    send, o, e = sudo.step(o, e)
                    out.append(o)
                    err.append(e)
                    if send:
                        chan.sendall(send)
                    continue
                if chan.closed or chan.eof_received:
                    o, e = sudo.leftover()
                    out.append(o)
                    err.append(e)
                    return False
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise CommandTimeout(f"{self.host}: command ran past its {timeout:g}s deadline and was stopped")
                if now >= until:
                    raise sudo.timed_out()
                waiter.select(min(0.5, until - now, (deadline - now) if deadline else 0.5))
            return True
        except (paramiko.SSHException, OSError, EOFError) as exc:
            chan.close()
            raise Unreachable(f"{self.host}: connection lost while sudo started the command: {exc}") from None
        except BaseException:
            chan.close()
            raise
        finally:
            waiter.close()

    def _feed(self, chan, stdin) -> None:
        """Send the stdin in chunks (a file is read as it goes), then EOF. A source that fails part-way closes
        the channel instead: the command must never take a truncated stream for a whole one."""
        try:
            for chunk in stdin_chunks(stdin):
                chan.sendall(chunk)
            chan.shutdown_write()
        except (OSError, paramiko.SSHException, EOFError):
            pass                     # the channel went away: the command's result says why
        except Exception as err:  # noqa: BLE001 - the source failed: abort the command
            self._warn(f"{self.host}: stdin failed part-way: {err}")
            chan.close()

    def _wrap(self, command: str, stdin, become: bool, env, become_user: str):
        command, stdin = with_env(command, stdin, env)
        if not become or become_user == self.user:
            return command, stdin, None
        sudo = Sudo(self.host, become_user, self._password)
        return sudo.wrap(command), stdin, sudo

    # -- contract -------------------------------------------------------------------------------------
    def run(self, command: str, *, stdin=None, timeout: float | None = None,
            become: bool = False, env: Mapping[str, str] | None = None, become_user: str = "root") -> CommandResult:
        cmd, data, sudo = self._wrap(command, stdin, become, env, become_user)
        rc, out, err, dur = self._exec(cmd, data, timeout or self._default_timeout, sudo)
        return CommandResult(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), dur)

    def get(self, path: str, *, become: bool = False, become_user: str = "root") -> bytes:
        cmd, _, sudo = self._wrap(f"cat -- {shlex.quote(path)}", None, become, None, become_user)
        rc, out, err, _ = self._exec(cmd, None, self._default_timeout, sudo)
        if rc != 0:
            raise ConnectorError(f"{self.host}: cannot read {path}: {err.decode(errors='replace').strip()}")
        return out

    def close(self) -> None:
        try:
            if getattr(self, "_client", None) is not None:
                self._client.close()
                self._client = None
        finally:
            self._close_jump()
