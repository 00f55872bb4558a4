"""Images of real size (pure, no timing): the stream comes from a path on the controller's disk, a host holding
the image id already gets nothing, a full disk is refused in one line before anything is sent, progress lines,
and the controller's registry serving a docker-save tarball's blobs by offset."""
from __future__ import annotations

import hashlib
import io
import json
import ssl
import tarfile
import urllib.request

import pytest

from provision.connectors import ConnectOptions
from provision.executor import ConnectionPool
from provision.executor.runner import HostRunner
from provision.gpu import image_server as srvmod
from provision.gpu.images import free_space_refusal, read_tarball
from provision.hostio import CommandResult
from provision.ops.core import OpContext
from provision.ops.gpu_image import GpuImage
from provision.ops.plan import Cmd, FilePut
from provision.progress import Meter, progress_line

TAG = "lab/big:1"


def docker_save_tar(path, layers: list[bytes]) -> str:
    """A tarball laid out as `docker save` writes it (legacy layout; the second layer a link to the first when
    equal); returns the image id (the config's digest)."""
    diff_ids = ["sha256:" + hashlib.sha256(b).hexdigest() for b in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cid = hashlib.sha256(config).hexdigest()
    with tarfile.open(path, "w") as tf:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        names = []
        for i, data in enumerate(layers):
            name = f"l{i}/layer.tar"
            if data in layers[:i]:
                link = tarfile.TarInfo(name)
                link.type, link.linkname = tarfile.SYMTYPE, f"../l{layers.index(data)}/layer.tar"
                tf.addfile(link)
            else:
                add(name, data)
            names.append(name)
        add(f"{cid}.json", config)
        add("manifest.json", json.dumps([{"Config": f"{cid}.json", "RepoTags": [TAG], "Layers": names}]).encode())
    return "sha256:" + cid


def res(stdout="", rc=0, stderr=""):
    return CommandResult(rc, stdout, stderr, 0.0)


@pytest.fixture
def tarball(tmp_path):
    path = tmp_path / "img.tar"
    image_id = docker_save_tar(path, [b"a" * 3000, b"b" * 5000, b"a" * 3000])
    return path, image_id


def test_the_tarball_index_points_at_each_blob(tarball):
    path, image_id = tarball
    tb = read_tarball(path, "x", None)
    assert tb.image_id == tb.config.digest == image_id
    data = path.read_bytes()
    for blob in (tb.config, *tb.layers):
        assert "sha256:" + hashlib.sha256(data[blob.offset:blob.offset + blob.size]).hexdigest() == blob.digest
    assert tb.image_bytes == 11000 and tb.layers[0] == tb.layers[2]     # the linked layer is the first's bytes


def stream_args(path, via="ssh"):
    return {"image": TAG, "source": "stream", "tarball": str(path), "via": via, "check_gpus": False}


def test_a_host_holding_the_image_id_gets_nothing_or_only_the_tag(tarball):
    path, image_id = tarball
    look = GpuImage().plan(stream_args(path), {}, None, OpContext(host="h"))
    assert look.commands[0].readonly and image_id in look.commands[0].cmd        # asks for the id, not the tag
    assert look.then({}, [res(f"{image_id}\n{image_id}\n")]).noop == f"{TAG} present ({image_id[:19]})"
    retag = look.then({}, [res(f"-\n{image_id}\n")])
    assert [c.cmd for c in retag.commands] == [f"docker tag -- {image_id} {TAG}"] and "already on the host" in retag.msg
    other = look.then({}, [res(f"sha256:{'0' * 64}\n-\n")])          # same tag, another image: sent again
    assert other.commands and not other.noop


def test_the_stream_reads_the_file_from_disk_and_checks_space_first(tarball):
    path, image_id = tarball
    look = GpuImage().plan(stream_args(path), {}, None, OpContext(host="h")).then({}, [res("-\n-\n")])
    assert all(c.readonly for c in look.commands)                     # nothing sent before the space check
    load = look.then({}, [res("172.19.0.1\n"), res("/var/lib/docker\n100\n")])
    cmd = load.commands[0]
    assert isinstance(cmd, Cmd) and cmd.stdin == path and "docker load" in cmd.cmd     # a path, never the bytes
    assert not any(isinstance(c, FilePut) or isinstance(getattr(c, "stdin", None), bytes) for c in load.commands)
    done = load.then({}, [res(""), res(image_id + "\n")])
    assert done.changed and "through the connection" in done.msg and image_id[:19] in done.msg
    broken = load.then({}, [res("", rc=1, stderr="unexpected EOF"), res("", rc=1)])
    assert broken.failed and "nothing of it kept" in broken.msg and "unexpected EOF" in broken.msg


def test_a_full_disk_is_refused_in_one_line_before_sending(tarball):
    path, _ = tarball
    look = GpuImage().plan(stream_args(path), {}, None, OpContext(host="h")).then({}, [res("-\n-\n")])
    refused = look.then({}, [res("172.19.0.1\n"), res("/srv/docker\n8\n")])
    assert refused.failed and not refused.commands
    assert refused.msg == ("refusing to send lab/big:1: Docker's data root /srv/docker on the host has 8.2 kB free, "
                           "the image needs 16.0 kB")
    assert "cannot read the free space" in free_space_refusal(TAG, res("", rc=1, stderr="Cannot connect"), 1)
    assert free_space_refusal(TAG, res("/var/lib/docker\n16\n"), 16000) is None


def test_progress_lines_and_their_rate_limit():
    assert progress_line("img.tar sent", 1_200_000_000, 2_000_000_000, 10.0) == \
        "img.tar sent: 1.2 GB of 2.0 GB (60%), 120.0 MB/s, ETA 7s"
    assert progress_line("x", 512, None, 2.0) == "x: 512 B, 256 B/s"
    now = [0.0]
    lines = []
    meter = Meter("x", 100, lines.append, every=5.0, clock=lambda: now[0])
    for t in (1.0, 2.0, 6.0, 7.0, 12.0):
        now[0] = t
        meter.add(10)
    meter.finish()
    assert lines == ["x: 30 B of 100 B (30%), 5 B/s, ETA 14s", "x: 50 B of 100 B (50%), 4 B/s, ETA 12s",
                     "x: 50 B of 100 B (50%), 4 B/s, ETA 12s (done)"]
    quiet = []
    Meter("y", 10, quiet.append, clock=lambda: 0.0).finish()
    assert quiet == []                                            # a short transfer prints nothing


class LocalHost:
    name = "me"
    vars = {"ansible_connection": "local"}
    connection = "local"


def test_the_runner_streams_a_controller_file_as_stdin(tmp_path):
    data = bytes(range(256)) * 20000
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    pool = ConnectionPool(1, ConnectOptions())
    runner = HostRunner(LocalHost(), pool)
    try:
        r = runner.do(OpContext(host="me", runner=runner), Cmd("sha256sum", stdin=src))
        assert r.rc == 0 and r.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    finally:
        runner.release()
        pool.close_all()


def test_the_registry_serves_manifest_and_blobs_from_the_tarball(tarball):
    path, image_id = tarball
    tb = read_tarball(path, "x", None)
    server = srvmod.ImageServer("127.0.0.1")
    try:
        seen = []
        token, ref = server.offer(tb, Meter("pull", tb.image_bytes, seen.append, every=0.0))
        assert ref == f"127.0.0.1:{server.port}/gpufleet-{token}/image:load"
        tls = ssl.create_default_context(cadata=server.ca_pem.decode())
        base = f"https://127.0.0.1:{server.port}/v2/gpufleet-{token}/image"

        def get(url):
            with urllib.request.urlopen(url, context=tls) as r:
                return r.read(), r.headers
        body, headers = get(base + "/manifests/load")
        manifest = json.loads(body)
        assert headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
        assert manifest["config"]["digest"] == image_id
        assert [x["digest"] for x in manifest["layers"]] == [b.digest for b in tb.layers]
        for d in [manifest["config"]["digest"]] + [x["digest"] for x in manifest["layers"]]:
            blob, _ = get(f"{base}/blobs/{d}")
            assert "sha256:" + hashlib.sha256(blob).hexdigest() == d
        assert seen and seen[-1].startswith("pull: ")
        server.withdraw(token)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            get(base + "/manifests/load")                       # a withdrawn offer is not served
    finally:
        server.close()


def test_the_registry_is_chosen_where_the_host_reaches_the_controller(tarball, monkeypatch):
    path, image_id = tarball

    class FakeServer:
        endpoint, ca_pem = "172.19.0.1:5000", b"PEM"
        withdrawn = []

        def offer(self, tb, meter):
            return "t0k", f"{self.endpoint}/gpufleet-t0k/image:load"

        def withdraw(self, token):
            self.withdrawn.append(token)
    monkeypatch.setattr("provision.ops.gpu_image.image_server", lambda address: FakeServer())
    look = GpuImage().plan(stream_args(path, via="auto"), {}, None, OpContext(host="h")).then({}, [res("-\n-\n")])
    pull = look.then({}, [res("172.19.0.1\n"), res("/var/lib/docker\n100\n")])
    cert, cmd, _ = pull.commands
    assert cert.path == "/etc/docker/certs.d/172.19.0.1:5000/ca.crt" and cert.content == b"PEM"
    assert "docker pull -q -- 172.19.0.1:5000/gpufleet-t0k/image:load" in cmd.cmd
    assert "rm -rf -- /etc/docker/certs.d/172.19.0.1:5000" in cmd.cmd     # trust removed whatever the pull did
    failed = pull.then({}, [res(), res("", rc=1, stderr="x509: certificate signed by unknown authority"), res()])
    assert FakeServer.withdrawn == ["t0k"] and failed.commands[0].stdin == path     # falls back to the stream
    done = failed.then({}, [res(), res(image_id + "\n")])
    assert "pull from 172.19.0.1:5000 failed: x509" in done.msg and "through the connection" in done.msg


def test_progress_notes_show_at_v_and_commands_at_vv():
    from provision.output.text import TextReporter
    out = io.StringIO()
    TextReporter(out, io.StringIO(), verbosity=1, color=False).verbose("h1", "v", "img.tar sent: 1.0 GB of 2.0 GB")
    TextReporter(out, io.StringIO(), verbosity=1, color=False).verbose("h1", "cmd", "docker load")
    assert out.getvalue() == "<h1> NOTE img.tar sent: 1.0 GB of 2.0 GB\n"


def test_without_a_controller_copy_the_tag_decides_and_a_fetch_says_why(tmp_path):
    missing = {"image": TAG, "source": "stream", "tarball": str(tmp_path / "gone.tar"), "check_gpus": False}
    look = GpuImage().plan(missing, {}, None, OpContext(host="h"))
    assert look.then({}, [res("sha256:1\n")]).noop == f"{TAG} present (sha256:1)"
    fetch = look.then({}, [res("", rc=1)])
    assert fetch.failed and fetch.msg.startswith(f"cannot stream {TAG}: ") and "gone.tar" in fetch.msg


def test_cached_tarballs_unused_for_days_are_pruned(tmp_path):
    import os
    import time as _time
    from provision.gpu.images import prune_cache
    for stem, age_days in (("old", 5), ("recent", 1), ("current", 9)):
        for ext in (".tar", ".sha256", ".lock"):
            f = tmp_path / (stem + ext)
            f.write_text("x")
            os.utime(f, (_time.time() - age_days * 86400,) * 2)
    gone = prune_cache(tmp_path, keep=tmp_path / "current.tar", days=3)
    assert gone == [tmp_path / "old.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.lock", "current.sha256", "current.tar",
                                                          "recent.lock", "recent.sha256", "recent.tar"]
