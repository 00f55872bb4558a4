"""The gpu_image operation: check the host's driver and GPUs against an image, then make the image present
(already there, pulled, pulled through a lab mirror, or streamed from the controller)."""
from __future__ import annotations

import shlex
from typing import Mapping

from provision import facts as factmod
from provision.facts.gpu import smi_problem
from provision.gpu.image_server import image_server
from provision.gpu.images import (DOCKER_ROOT_FREE, IMAGE_CACHE, SOURCES, VIAS, Tarball, check_image_fits,
                                  controller_image_id, controller_tarball, free_space_refusal, save_on_controller)
from provision.ops.core import Op
from provision.ops.plan import Cmd, FilePut, Plan
from provision.ops.spec import ArgSpec, module
from provision.progress import Meter, human_bytes, note_lines

q = shlex.quote


@module("gpu_image", args={
    "image": ArgSpec("str", required=True, aliases=("name",)),
    "source": ArgSpec("str", default="auto", choices=SOURCES),
    "tarball": ArgSpec("path"),
    "sha256": ArgSpec("str"),
    "mirror": ArgSpec("str"),
    "via": ArgSpec("str", default="auto", choices=VIAS),
    "check_gpus": ArgSpec("bool", default=True),
    "image_info": ArgSpec("dict"),
})
class GpuImage(Op):
    """Check the host's driver and GPUs against the image BEFORE fetching it, then make it present: already there,
    pulled, pulled through a lab mirror, or streamed from the controller (a docker save tarball, or the given one).
    The look at the driver is the ``nvidia_smi`` fact section read by the probe (a driver may have been installed
    since the facts were gathered); then one read-only look at the image on the host: where the controller would
    send its copy, a host already holding that image id (the tarball's config digest) gets nothing, at most a tag.

    The stream from the controller (``via``): ``registry`` the host pulls from the controller's own registry
    (provision/gpu/image_server.py: hosts pull in parallel, nothing per host goes through the SSH channel),
    ``ssh`` ``docker load`` fed through the connection from the file on the controller's disk, ``auto`` the
    registry where the host reaches the controller's address and the tarball is uncompressed, else ssh. Both
    refuse a host whose Docker data root has too little free space, before sending anything."""

    def probe(self, args, ctx):
        return factmod.script(("nvidia_smi",)) if args.get("check_gpus", True) else None

    def plan(self, args, facts, probe, ctx) -> Plan:
        tag = args["image"]
        info = args.get("image_info")
        if isinstance(info, str):
            import yaml
            try:
                info = yaml.safe_load(info) if info.strip() else None
            except yaml.YAMLError:
                return Plan(failed=True, msg=f"image_info is not a mapping: {info[:80]!r}")
        if info is not None and not isinstance(info, Mapping):
            return Plan(failed=True, msg="image_info must be a mapping {cuda: '12.8', sm: [...]}")
        if info and "cuda" not in info:
            return Plan(failed=True, msg="image_info needs at least cuda: 'X.Y'")
        if probe is not None:
            smi = factmod.parse(probe.stdout, ("nvidia_smi",))["nvidia_smi"]
            if smi["rc"] != 0 or not smi["gpus"]:
                return Plan(failed=True, msg=f"refusing to fetch {tag}: nvidia-smi does not answer on this host "
                                             f"({smi_problem(smi)})")
            why = check_image_fits(tag, smi["gpus"][-1]["driver_version"],
                                   [(g["compute_cap"], g["name"]) for g in smi["gpus"]], info or None)
            if why:
                return Plan(failed=True, msg=why)
        source = args.get("source") or "auto"
        fetch = {k: str(args.get(k) or "").strip() or None for k in ("tarball", "sha256", "mirror")}
        via = args.get("via") or "auto"
        wanted = None                # the image id the controller would send: compared with the host's
        if source == "stream" or fetch["tarball"]:
            try:
                wanted = (controller_tarball(fetch["tarball"], fetch["sha256"]).image_id if fetch["tarball"]
                          else controller_image_id(tag))
            except Exception:  # noqa: BLE001 - no copy to compare with: the tag decides, a fetch says why
                wanted = None

        def present_or_fetch(facts, results) -> Plan:
            tag_id, has_wanted = _inspected(results[0], wanted)
            if tag_id and (wanted is None or tag_id == wanted):
                return Plan(noop=f"{tag} present ({tag_id[:19]})")
            if wanted and has_wanted:
                return Plan([Cmd(f"docker tag -- {q(wanted)} {q(tag)}")],
                            msg=f"{tag} tagged: image {wanted[:19]} was already on the host")
            if ctx.check:
                return Plan(changed=True, msg=f"would fetch {tag} ({source})")
            return _fetch_image(tag, source, via=via, ctx=ctx, **fetch)
        if wanted is None:
            return Plan([_inspect(tag, counts=False)], then=present_or_fetch)
        look = (f"for r in {q(tag)} {q(wanted)}; do i=$(docker image inspect --format '{{{{.Id}}}}' -- \"$r\" "
                '2>/dev/null); echo "${i:--}"; done')
        return Plan([Cmd(look, readonly=True, ok_rc=None, counts=False)], then=present_or_fetch)


def _inspected(look, wanted: str | None) -> tuple[str, bool]:
    """(the tag's image id or '', whether the wanted image id is on the host) from the look at the host: one
    ``docker image inspect`` of the tag, or, with a wanted id, a line for each (``-``: not there)."""
    if wanted is None:
        return (look.stdout.strip() if look.rc == 0 else ""), False
    lines = [ln.strip() for ln in look.stdout.splitlines()] + ["-", "-"]
    return ("" if lines[0] == "-" else lines[0]), lines[1] not in ("-", "")


def _fetch_image(tag: str, source: str, *, tarball, sha256, mirror, via: str = "auto", ctx=None) -> Plan:
    """Mirror (source mirror, or auto with a mirror) or registry (pull, or auto without one), falling back to
    the stream from the controller where source is auto."""
    if source == "stream":
        return _stream_image(tag, tarball, sha256, via, ctx, [])
    ref = f"{mirror.rstrip('/')}/{tag}" if mirror and source in ("mirror", "auto") else None
    if source == "mirror" and not ref:
        return Plan(failed=True, msg="source mirror needs a mirror")
    pull = f"docker pull -- {q(ref)} && docker tag -- {q(ref)} {q(tag)}" if ref else f"docker pull -- {q(tag)}"

    def pulled(facts, results) -> Plan:
        r = results[0]
        if r.rc == 0:
            return Plan(changed=True, msg=f"{tag} pulled from the lab mirror {mirror}" if ref else f"{tag} pulled")
        if source != "auto":
            return Plan(failed=True, msg=f"docker pull {ref or tag}: {r.stderr.strip()[-200:]}")
        return _stream_image(tag, tarball, sha256, via, ctx, [f"mirror failed ({r.stderr.strip()[-80:]})" if ref
                                                              else "no registry access"])
    return Plan([Cmd(pull, timeout=3600, ok_rc=None, counts=False)], then=pulled)


def _stream_image(tag: str, tarball: str | None, sha256: str | None, via: str, ctx, notes: list[str]) -> Plan:
    """From the controller: first a look at the host (the controller's address as the host sees it, the free
    space of Docker's data root), then a pull from the controller's registry or ``docker load`` fed through the
    SSH channel; the image id the host ends with must be the tarball's."""
    try:
        tb = controller_tarball(tarball, sha256) if tarball else save_on_controller(tag, IMAGE_CACHE)
    except Exception as err:  # noqa: BLE001 - one line for the user
        return Plan(failed=True, msg=f"cannot stream {tag}: {err}")
    look = [Cmd('echo "${SSH_CONNECTION%% *}"', become=False, readonly=True, ok_rc=None, counts=False),
            Cmd(DOCKER_ROOT_FREE, readonly=True, ok_rc=None, counts=False)]

    def send(facts, results) -> Plan:
        why = free_space_refusal(tag, results[1], tb.image_bytes + max((b.size for b in tb.layers), default=0))
        if why:
            return Plan(failed=True, msg=why)
        address = results[0].stdout.strip()
        if via == "ssh" or tb.config is None or not address:
            if via == "registry":
                return Plan(failed=True, msg=f"cannot pull {tag} from the controller: " + (
                    "no SSH_CONNECTION on the host" if not address else f"{tb.path.name} is compressed"))
            return _load_over_ssh(tag, tb, notes)
        try:
            server = image_server(address)
        except OSError as err:
            if via == "registry":
                return Plan(failed=True, msg=f"cannot serve {tag} on {address}: {err}")
            return _load_over_ssh(tag, tb, notes + [f"no registry on {address}: {err.strerror or err}"])
        return _pull_from_controller(tag, tb, server, via, ctx, notes)
    return Plan(look, then=send)


def _pull_from_controller(tag: str, tb: Tarball, server, via: str, ctx, notes: list[str]) -> Plan:
    """The host trusts the run's certificate for this one registry address, pulls, and forgets both the
    certificate and the registry's name for the image (only ``tag`` stays)."""
    meter = Meter(f"{tag} pulled from {server.endpoint}", tb.image_bytes, note_lines(getattr(ctx, "log", None)))
    token, ref = server.offer(tb, meter)
    certs = f"/etc/docker/certs.d/{server.endpoint}"
    cmds = [FilePut(f"{certs}/ca.crt", server.ca_pem, mode=0o644, make_parent=True, counts=False,
                    desc=f"trust the controller's registry {server.endpoint} for this pull"),
            Cmd(f"docker pull -q -- {q(ref)} >/dev/null; rc=$?; rm -rf -- {q(certs)}; [ $rc = 0 ] || exit $rc; "
                f"docker tag -- {q(tb.image_id)} {q(tag)} && docker rmi -- {q(ref)} >/dev/null", timeout=3600,
                ok_rc=None, desc=f"docker pull {ref} ({human_bytes(tb.image_bytes)}) as {tag}"),
            _inspect(tag)]

    def pulled(facts, results) -> Plan:
        server.withdraw(token)
        meter.finish()
        pull = results[1]
        if pull is not None and pull.rc != 0 and via == "auto":
            return _load_over_ssh(tag, tb, notes + [f"pull from {server.endpoint} failed: "
                                                    f"{_last_line(pull)[-120:]}"])
        return _loaded(tag, tb, f"pulled from the controller's registry {server.endpoint}", notes, results[1:])
    return Plan(cmds, then=pulled)


def _load_over_ssh(tag: str, tb: Tarball, notes: list[str]) -> Plan:
    """``docker load`` fed the tarball through the connection, read from the controller's disk as it goes."""
    load = Cmd(f"docker load -q >/dev/null && docker tag -- {q(tb.image_id)} {q(tag)}" if tb.image_id
               else "docker load -q", stdin=tb.path, timeout=3600, ok_rc=None,
               desc=f"docker load < {tb.path.name} ({human_bytes(tb.size)}) through the connection")

    def loaded(facts, results) -> Plan:
        return _loaded(tag, tb, "through the connection", notes, results)
    return Plan([load, _inspect(tag)], then=loaded)


def _loaded(tag: str, tb: Tarball, how: str, notes: list[str], results) -> Plan:
    fetch, inspect = results
    if fetch.rc != 0:
        return Plan(failed=True, msg=f"streaming {tag} failed ({how}), nothing of it kept on the host: "
                                     f"{_last_line(fetch)[-200:]}")
    if inspect.rc != 0:
        return Plan(failed=True, msg=f"{tb.path.name} loaded but holds no {tag}")
    if tb.image_id and inspect.stdout.strip() != tb.image_id:
        return Plan(failed=True, msg=f"{tag} on the host is {inspect.stdout.strip()}, the tarball's is "
                                     f"{tb.image_id}")
    return Plan(changed=True, msg=f"{tag} streamed from the controller ({'; '.join(notes + [how])}): "
                                  f"{human_bytes(tb.image_bytes)}, image id {inspect.stdout.strip()[:19]} verified")


def _last_line(r) -> str:
    lines = (r.stderr or r.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {r.rc}"


def _inspect(tag: str, counts: bool = True) -> Cmd:
    return Cmd(f"docker image inspect --format '{{{{.Id}}}}' -- {q(tag)}", readonly=True, ok_rc=None, counts=counts)
