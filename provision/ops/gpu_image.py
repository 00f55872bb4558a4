"""The gpu_image operation: check the host's driver and GPUs against an image, then make the image present
(already there, pulled, pulled through a lab mirror, or streamed from the controller)."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Mapping

from provision import facts as factmod
from provision.facts.gpu import smi_problem
from provision.gpu.images import SOURCES, check_image_fits, save_on_controller, tarball_from_file
from provision.ops.core import Op
from provision.ops.plan import Cmd, FilePut, Plan
from provision.ops.spec import ArgSpec, module

q = shlex.quote


@module("gpu_image", args={
    "image": ArgSpec("str", required=True, aliases=("name",)),
    "source": ArgSpec("str", default="auto", choices=SOURCES),
    "tarball": ArgSpec("path"),
    "sha256": ArgSpec("str"),
    "mirror": ArgSpec("str"),
    "check_gpus": ArgSpec("bool", default=True),
    "image_info": ArgSpec("dict"),
})
class GpuImage(Op):
    """Check the host's driver and GPUs against the image BEFORE fetching it, then make it present: already there,
    pulled, pulled through a lab mirror, or streamed from the controller (docker save tarball, sha256-checked).
    The look at the driver is the ``nvidia_smi`` fact section read by the probe (a driver may have been installed
    since the facts were gathered); then one read-only look at the image on the host."""

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

        def present_or_fetch(facts, results) -> Plan:
            image_id = results[0].stdout.strip() if results[0].rc == 0 else ""
            if image_id:
                return Plan(noop=f"{tag} present ({image_id[:19]})")
            if ctx.check:
                return Plan(changed=True, msg=f"would fetch {tag} ({source})")
            return _fetch_image(tag, source, **fetch)
        return Plan([Cmd(f"docker image inspect --format '{{{{.Id}}}}' -- {q(tag)}", readonly=True, ok_rc=None,
                         counts=False)], then=present_or_fetch)


def _fetch_image(tag: str, source: str, *, tarball, sha256, mirror) -> Plan:
    """Mirror (source mirror, or auto with a mirror) or registry (pull, or auto without one), falling back to
    the stream from the controller where source is auto."""
    if source == "stream":
        return _stream_image(tag, tarball, sha256, [])
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
        return _stream_image(tag, tarball, sha256, [f"mirror failed ({r.stderr.strip()[-80:]})" if ref
                                                    else "no registry access"])
    return Plan([Cmd(pull, timeout=3600, ok_rc=None, counts=False)], then=pulled)


def _stream_image(tag: str, tarball: str | None, sha256: str | None, notes: list[str]) -> Plan:
    try:
        tb = tarball_from_file(tarball, sha256) if tarball else save_on_controller(
            tag, Path.home() / ".cache" / "gpufleet" / "images")
    except Exception as err:  # noqa: BLE001 - one line for the user
        return Plan(failed=True, msg=f"cannot stream {tag}: {err}")
    remote = f"/var/tmp/gpufleet-image-{tb.sha256[:16]}" + (".tar.gz" if tb.path.name.endswith(".gz") else ".tar")
    data = tb.path.read_bytes()
    cmds = [FilePut(remote, data, mode=0o600, desc=f"upload {remote} ({len(data) / 1e6:.1f} MB)"),
            Cmd(f"echo '{tb.sha256}  {remote}' | sha256sum -c --quiet - && docker load -i {remote}; rc=$?; "
                f"rm -f {remote}; exit $rc", timeout=3600, ok_rc=None),
            Cmd(f"docker image inspect --format '{{{{.Id}}}}' -- {q(tag)}", readonly=True, ok_rc=None)]

    def loaded(facts, results) -> Plan:
        load, inspect = results[1], results[2]
        if load.rc != 0:
            return Plan(failed=True, msg=f"streaming {tag} failed (checksum or docker load): "
                                         f"{(load.stderr or load.stdout).strip()[-200:]}")
        if inspect.rc != 0:
            return Plan(failed=True, msg=f"{tb.path.name} loaded but holds no {tag}")
        if tb.image_id and inspect.stdout.strip() != tb.image_id:
            return Plan(failed=True, msg=f"{tag} on the host is {inspect.stdout.strip()}, the tarball's is "
                                         f"{tb.image_id}")
        why = f" ({'; '.join(notes)})" if notes else ""
        return Plan(changed=True, msg=f"{tag} streamed from the controller{why}: {len(data) / 1e6:.0f} MB, sha256 "
                                      f"{tb.sha256[:12]} verified")
    return Plan(cmds, then=loaded)
