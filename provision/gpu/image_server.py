"""The controller's registry for the fan-out of a big image: hosts `docker pull` it instead of each receiving it
through its SSH channel, so the controller pays no encryption, packet or Python work per host and the hosts pull
in parallel.

It is the read-only part of the Docker Registry HTTP API v2 that `docker pull` uses (``/v2/``, a schema 2
manifest, blobs by digest), serving one ``docker save`` tarball's config and layers straight out of the file by
offset: nothing is pushed, compressed or copied first, and memory stays constant (1 MiB reads). Layers go as they
are in the tarball (uncompressed, media type ``...rootfs.diff.tar``): their digest is their diff id, which the
host's dockerd checks on the way in, and the image id it ends with is the config's digest.

TLS with a certificate made for this run (self-signed, for the one IP address the server is bound to): each host
trusts it only through ``/etc/docker/certs.d/<address>:<port>/ca.crt``, which dockerd reads per pull (no daemon
restart, no ``insecure-registries``), written before the pull and removed after it. Every pull gets its own
random repository name (``gpufleet-<token>/image``): the server answers for offered tokens only, and counts each
host's bytes for its progress line. One server per controller address, started on first need, for the run.
"""
from __future__ import annotations

import atexit
import datetime
import hashlib
import ipaddress
import json
import os
import re
import secrets
import ssl
import sys
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from provision.gpu.images import Blob, Tarball
from provision.progress import Meter
from provision.ratelog import PEER_FAULTS, FaultLog

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar"
_PATH = re.compile(r"^/v2/gpufleet-([0-9a-f]{16})/image/(manifests|blobs)/([^/]+)$")
_SERVERS: dict[str, "ImageServer"] = {}
_LOCK = threading.Lock()


def manifest_for(tb: Tarball) -> bytes:
    """The schema 2 manifest of the tarball's image (its layers uncompressed, as docker save wrote them)."""
    doc = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
           "config": {"mediaType": CONFIG_TYPE, "size": tb.config.size, "digest": tb.config.digest},
           "layers": [{"mediaType": LAYER_TYPE, "size": b.size, "digest": b.digest} for b in tb.layers]}
    return json.dumps(doc, indent=1).encode()


@dataclass
class Offer:
    tarball: Tarball
    manifest: bytes
    meter: Meter | None

    def blob(self, digest: str) -> Blob | None:
        return next((b for b in (self.tarball.config, *self.tarball.layers) if b.digest == digest), None)


def _certificate(address: str) -> tuple[bytes, bytes]:
    """A self-signed certificate (and its key, PEM) for ``address``, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"gpufleet image server {address}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120
    server: "_Server"

    def log_message(self, format, *args):   # noqa: A002 - the base class's name
        pass

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _send(self, code: int, ctype: str, length: int, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _small(self, code: int, data: bytes, ctype: str, body: bool, extra: dict | None = None) -> None:
        self._send(code, ctype, len(data), extra)
        if body:
            self.wfile.write(data)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/v2", "/v2/"):
            return self._small(200, b"{}", "application/json", body)
        m = _PATH.match(path)
        offer = self.server.offers.get(m.group(1)) if m else None
        if offer is None:
            return self._small(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"not offered"}]}',
                               "application/json", body)
        if m.group(2) == "manifests":
            digest = "sha256:" + hashlib.sha256(offer.manifest).hexdigest()
            return self._small(200, offer.manifest, MANIFEST_TYPE, body, {"Docker-Content-Digest": digest})
        blob = offer.blob(m.group(3))
        if blob is None:
            return self._small(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"no such blob"}]}',
                               "application/json", body)
        self._send(200, "application/octet-stream", blob.size, {"Docker-Content-Digest": blob.digest})
        if body:
            self._copy(offer, blob)

    def _copy(self, offer: Offer, blob: Blob) -> None:
        buf = bytearray(1 << 20)           # one buffer per transfer, reused: no allocation per chunk
        view = memoryview(buf)
        with open(offer.tarball.path, "rb", buffering=0) as fh:
            fh.seek(blob.offset)
            left = blob.size
            while left:
                n = fh.readinto(view[:min(left, len(buf))])
                if not n:
                    raise OSError(f"{offer.tarball.path} ends before its blob {blob.digest}")
                self.wfile.write(view[:n])
                left -= n
                if offer.meter is not None:
                    offer.meter.add(n)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    offers: dict[str, Offer]
    faults = FaultLog("image server")

    def handle_error(self, request, client_address):
        """A client's reset, hang-up or bad TLS: one rate-limited line (provision/ratelog.py), no traceback."""
        err = sys.exc_info()[1]
        if isinstance(err, PEER_FAULTS):
            self.faults.fault(client_address, err)
        else:
            super().handle_error(request, client_address)

    def get_request(self):
        sock, addr = super().get_request()
        # the TLS handshake happens in the request's own thread (first read), never in the accept loop
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class ImageServer:
    """A running server on ``address`` (port chosen by the system); ``offer`` an image to one host."""

    def __init__(self, address: str):
        self.address = address
        cert, key = _certificate(address)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="gpufleet-tls-") as d:
            cpath, kpath = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
            with open(cpath, "wb") as fh:
                fh.write(cert)
            with open(os.open(kpath, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as fh:
                fh.write(key)
            tls.load_cert_chain(cpath, kpath)
        self.ca_pem = cert
        self._httpd = _Server((address, 0), _Handler)
        self._httpd.tls = tls
        self._httpd.offers = {}
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"image-server-{address}",
                                        daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def offer(self, tb: Tarball, meter: Meter | None = None) -> tuple[str, str]:
        """(token, the reference a host pulls) for this tarball; the server answers for it until ``withdraw``."""
        if tb.config is None:
            raise ValueError(f"{tb.path.name} is not an uncompressed docker save tarball")
        token = secrets.token_hex(8)
        self._httpd.offers[token] = Offer(tb, manifest_for(tb), meter)
        return token, f"{self.endpoint}/gpufleet-{token}/image:load"

    def withdraw(self, token: str) -> None:
        self._httpd.offers.pop(token, None)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def image_server(address: str) -> ImageServer:
    """The run's server on ``address`` (started on first call); OSError when the address is not the
    controller's own (NAT between the controller and the host): the caller streams over SSH instead."""
    with _LOCK:
        server = _SERVERS.get(address)
        if server is None:
            server = _SERVERS[address] = ImageServer(address)
        return server


@atexit.register
def _close_all() -> None:
    with _LOCK:
        for server in _SERVERS.values():
            server.close()
        _SERVERS.clear()
