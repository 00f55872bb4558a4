"""GPU-stack operations: gpu_plan, gpu_json_merge, gpu_image, gpu_devcontainer, gpu_validate, gpu_agent_install.

The decisions live in provision/gpu/ (pure functions over gpus.yaml), the host's GPU state in the fact sections of
provision/facts/gpu.py; these classes read them (``facts``, or a read-only probe where the state must be looked at
again) and return plans of command objects that the executor's runner carries out. None runs a command itself.
"""
from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Mapping

from provision import facts as factmod
from provision.errors import InputError
from provision.facts.gpu import nvidia_smi_result, smi_problem
from provision.gpu import devcontainer as dc
from provision.gpu.images import SOURCES, check_image_fits, save_on_controller, tarball_from_file
from provision.gpu.jsonmerge import JsonMergeError, plan_merge
from provision.gpu.plan import driver_check, gpu_view, plan_host
from provision.ops.core import Op, OpError, parse_mode
from provision.ops.plan import Cmd, FilePut, Plan
from provision.ops.spec import ArgSpec, module

q = shlex.quote
PLAN_VARS = ("nvidia_driver_branch", "nvidia_driver_flavour", "nvidia_driver_source", "nvidia_driver_server",
             "nvidia_fabricmanager", "nvidia_module_signing", "gpu_image", "gpu_image_info",
             "gpufleet_simulated_gpus", "inventory_hostname")
VERIFY_SECTIONS = ("pci", "nvidia_smi", "nvidia_module")   # looked at again after an install and a reboot
SIMULATED = "skipped (simulated GPU)"


def _render_vars(ctx, names) -> dict:
    from provision import templating
    out = {}
    for n in names:
        if n in ctx.vars:
            try:
                out[n] = templating.render(ctx.vars[n], ctx.vars)
            except Exception as err:  # noqa: BLE001 - one line naming the variable
                raise InputError(f"cannot render: {err}", key=n) from None
    return out


def _skip(msg: str) -> Plan:
    return Plan(result=lambda results: {"skipped": True, "msg": msg})


# ------------------------------------------------------------------------------------------------ gpu_plan
@module("gpu_plan", args={
    "fail_on_refusal": ArgSpec("bool", default=True),
    "verify_driver": ArgSpec("bool", default=False),
    "expected_version": ArgSpec("str"),
})
class GpuPlan(Op):
    """Plan the host's GPU stack from its GPU fact sections (PCI before any driver, nvidia-smi and the loaded
    module after) and the group vars, and set the facts ``gpu_plan`` (HostGpuPlan.as_vars()) and ``gpu_facts``. A
    refusal fails the host before anything changes. The running GPU containers are read by the probe, with the
    task's become (Docker's socket is root's). verify_driver: read nvidia-smi, the module and the PCI bus again and
    fail unless nvidia-smi lists every GPU the PCI bus shows (at expected_version, if given)."""
    facts = factmod.GPU_SECTIONS

    @staticmethod
    def looked_at(args) -> tuple:
        return ("gpu_containers",) + (VERIFY_SECTIONS if args.get("verify_driver") else ())

    def probe(self, args, ctx):
        return factmod.script(self.looked_at(args))

    def plan(self, args, facts, probe, ctx) -> Plan:
        facts = {**facts, **factmod.parse(probe.stdout, self.looked_at(args))}
        view = gpu_view(facts)
        plan = plan_host(view, _render_vars(ctx, PLAN_VARS), host=ctx.host)
        out = {"gpu_plan": plan.as_vars(), "gpu_facts": view}
        ok, msg = True, plan.verdict
        if args.get("verify_driver") and plan.has_gpus:
            ok, msg = driver_check(plan, view, str(args.get("expected_version") or "").strip())
        elif args.get("fail_on_refusal", True) and plan.refusals:
            ok, msg = False, "; ".join(plan.refusals)
        if not ok:       # keep a failure's output readable: the verdict, not the whole fact set
            return Plan(failed=True, msg=msg, extra={"verdict": plan.verdict})
        return Plan(noop=msg, msg=msg, extra={"ansible_facts": out, **out})


# ------------------------------------------------------------------------------------------ gpu_json_merge
@module("gpu_json_merge", args={
    "path": ArgSpec("path", required=True, aliases=("dest",)),
    "content": ArgSpec("raw", required=True),
    "backup": ArgSpec("bool", default=True),
    "mode": ArgSpec("str", default="0644"),
})
class GpuJsonMerge(Op):
    """Merge a JSON object (dict, or JSON text such as `nvidia-ctk runtime configure --dry-run` output) into a
    JSON file, keeping every key already there; writes only on change; the diff shows the change."""

    def probe(self, args, ctx):
        p = q(args["path"])
        return f"if [ -e {p} ]; then cat {p}; else echo '@@absent@@'; fi"

    def plan(self, args, facts, probe, ctx) -> Plan:
        path = args["path"]
        content = args["content"]
        if isinstance(content, str):
            try:
                content = json.loads(content)
            except ValueError as err:
                return Plan(failed=True, msg=f"content is not JSON: {err}")
        if not isinstance(content, Mapping):
            return Plan(failed=True, msg="content must be a JSON object")
        text = "" if probe.stdout.strip() == "@@absent@@" else probe.stdout
        try:
            before, after = plan_merge(text, content, path)
            mode = parse_mode(args.get("mode") or "0644")
        except (JsonMergeError, OpError) as err:
            return Plan(failed=True, msg=str(err))
        if after is None:
            return Plan(noop=f"{path}: already holds every key")
        cmds: list = []
        if backup_needed := (args.get("backup") and text):
            cmds.append(Cmd(f"cp -p {q(path)} {q(path + '.gpufleet-bak')}", counts=False))
        cmds.append(FilePut(path, after.encode(), mode=mode, make_parent=True,
                            desc=f"merge into {path} ({len(after)} bytes)"))
        diff = [{"before": before, "after": after, "before_header": path, "after_header": path}]
        old = json.loads(before) if before.strip() else {}
        new_keys = sorted(set(json.loads(after)) - set(old))
        msg = f"{path}: merged" + (f"; new top-level keys {', '.join(new_keys)}" if new_keys else "") + \
            (f"; kept {len(old)} existing key(s)" if old else "") + ("; backup .gpufleet-bak" if backup_needed else "")
        return Plan(commands=cmds, diff=diff, msg=msg, changed=True)


# ----------------------------------------------------------------------------------------------- gpu_image
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
        return Plan([Cmd(f"docker image inspect --format '{{{{.Id}}}}' {q(tag)}", readonly=True, ok_rc=None,
                         counts=False)], then=present_or_fetch)


def _fetch_image(tag: str, source: str, *, tarball, sha256, mirror) -> Plan:
    """Mirror (source mirror, or auto with a mirror) or registry (pull, or auto without one), falling back to
    the stream from the controller where source is auto."""
    if source == "stream":
        return _stream_image(tag, tarball, sha256, [])
    ref = f"{mirror.rstrip('/')}/{tag}" if mirror and source in ("mirror", "auto") else None
    if source == "mirror" and not ref:
        return Plan(failed=True, msg="source mirror needs a mirror")
    pull = f"docker pull {q(ref)} && docker tag {q(ref)} {q(tag)}" if ref else f"docker pull {q(tag)}"

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
            Cmd(f"docker image inspect --format '{{{{.Id}}}}' {q(tag)}", readonly=True, ok_rc=None)]

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


# ---------------------------------------------------------------------------------------- gpu_devcontainer
@module("gpu_devcontainer", args={
    "name": ArgSpec("str", default="gpufleet-dev"),
    "image": ArgSpec("str", required=True),
    "user": ArgSpec("str", default="dev"),
    "uid": ArgSpec("int", default=1000),
    "gpus": ArgSpec("raw", default="all"),
    "gpu_count": ArgSpec("int"),
    "jupyter_port": ArgSpec("int", default=8888),
    "ssh_port": ArgSpec("int", default=2222),
    "bind": ArgSpec("str", default="0.0.0.0"),
    "authorized_keys": ArgSpec("raw", required=True),
    "shm_size": ArgSpec("str", default="8g"),
    "runtime": ArgSpec("str", default="nvidia"),
    "data_root": ArgSpec("path", default=dc.DATA_ROOT),
    "state": ArgSpec("str", default="started", choices=("started", "absent")),
})
class GpuDevcontainer(Op):
    """A long-lived dev container (see provision/gpu/devcontainer.py). Respects the maintenance marker: while
    /etc/gpufleet/maintenance exists no dev container is started or recreated (the task says why)."""

    @staticmethod
    def spec(args) -> dc.DevSpec:
        return dc.DevSpec(name=args["name"], image=args["image"], user=args["user"], uid=int(args["uid"]),
                          gpus=dc.normalize_gpus(args.get("gpus"), args.get("gpu_count")),
                          jupyter_port=int(args["jupyter_port"]), ssh_port=int(args["ssh_port"]), bind=args["bind"],
                          shm_size=args["shm_size"], runtime=args.get("runtime") or "", data_root=args["data_root"])

    def probe(self, args, ctx):
        try:
            return dc.probe_command(self.spec(args))
        except dc.SpecError:
            return None       # plan() says why

    def plan(self, args, facts, probe, ctx) -> Plan:
        try:
            spec = self.spec(args)
            keys = dc.keys_text(args.get("authorized_keys"))
        except dc.SpecError as err:
            return Plan(failed=True, msg=str(err))
        if not keys:
            return Plan(failed=True, msg="authorized_keys: at least one public key is needed")
        st = dc.parse_probe(probe.stdout)
        n = q(spec.name)
        if args.get("state") == "absent":
            if not st["container_status"]:
                return Plan(noop=f"{spec.name}: absent")
            return Plan(commands=[Cmd(f"docker rm -f {n}")], msg=f"{spec.name}: removed")
        if not st["image_id"]:
            return Plan(failed=True, msg=f"image {spec.image} is not on the host (run gpu_image first): "
                                         f"{st['image_error']}")
        h = dc.spec_hash(spec, st["image_id"])
        cmds: list = []
        diff: list[dict] = []
        dirs = " ".join(q(spec.volume_dir(v)) for v in dc.VOLUMES)
        cmds.append(Cmd(f"mkdir -p {q(spec.dir)} {dirs} && chmod 0755 {q(spec.dir)} && "
                        f"chown {spec.uid}:{spec.uid} {dirs}", counts=False))
        if st["keys_sha"] != hashlib.sha256(keys.encode()).hexdigest():
            # written in place, not put (a put renames): the container's single-file bind mount keeps its inode
            cmds.append(Cmd(f"touch {q(spec.keys_path)} && chmod 0644 {q(spec.keys_path)} && "
                            f"cat > {q(spec.keys_path)}", stdin=keys.encode(),
                            desc=f"write {spec.keys_path} ({keys.count(chr(10))} key(s))"))
            diff.append({"before": "(absent)\n" if not st["keys_sha"] else "(other keys)\n",
                         "after": keys, "before_header": spec.keys_path, "after_header": spec.keys_path})
        token = None
        if not st["token_present"]:
            token = dc.new_token()
            cmds.append(FilePut(spec.token_path, token.encode(), mode=0o400, owner=str(spec.uid),
                                group=str(spec.uid), desc=f"write {spec.token_path} (Jupyter token, masked)"))
            diff.append({"before": "(absent)\n", "after": "******** (generated on the controller)\n",
                         "before_header": spec.token_path, "after_header": spec.token_path})
        elif st["token_mode"] != "400" or st["token_uid"] != spec.uid:
            cmds.append(Cmd(f"chown {spec.uid}:{spec.uid} {q(spec.token_path)} && chmod 0400 "
                            f"{q(spec.token_path)}", desc=f"fix owner/mode of {spec.token_path}"))
        need_run = st["container_spec"] != h or token is not None
        need_start = not need_run and st["container_status"] != "running"
        if (need_run or need_start) and st["maintenance"]:
            why = f" ({st['maintenance_reason']})" if st["maintenance_reason"] else ""
            return _skip(f"{dc.MAINTENANCE_MARKER} is present{why}: not starting dev container {spec.name} during "
                         f"maintenance")
        if need_run:
            if st["container_status"]:
                cmds.append(Cmd(f"docker rm -f {n} >/dev/null", desc=f"remove {spec.name} (spec changed)"))
            cmds.append(Cmd(" ".join(q(a) for a in dc.docker_run_args(spec, h)), timeout=300))
            diff.append({"before": f"{spec.name}: {st['container_status'] or 'absent'}\n",
                         "after": f"{spec.name}: running {spec.image} gpus={spec.gpus} jupyter={spec.bind}:"
                                  f"{spec.jupyter_port} ssh={spec.bind}:{spec.ssh_port}\n",
                         "before_header": "container", "after_header": "container"})
        elif need_start:
            cmds.append(Cmd(f"docker start {n}"))
        msg = f"{spec.name}: " + ("started" if (need_run or need_start) else "running, unchanged")
        extra = {"devcontainer": {"name": spec.name, "gpus": spec.gpus, "jupyter_port": spec.jupyter_port,
                                  "ssh_port": spec.ssh_port, "token_file": spec.token_path}}
        if not any(c.counts for c in cmds):
            return Plan(noop=msg, msg=msg, extra=extra)
        announce = None
        if token and not ctx.check:       # saved first: a failure after the host write must not lose it
            where = dc.save_controller_token(ctx.host, spec.name, token)
            announce = _announce_token(ctx.host, spec, token, where, msg)
        return Plan(commands=cmds, diff=diff, msg=msg, extra=extra, result=announce)


def _announce_token(host: str, spec: dc.DevSpec, token: str, where: Path, msg: str):
    """The plan's result once the host write succeeded: the token on the controlling terminal, once."""
    def result(results) -> dict:
        seen = dc.show_once(host, spec.name, token, spec.jupyter_port)
        return {"msg": f"{msg}; Jupyter token saved to {where} (0600)" + ("" if seen else "; no terminal to show it on")}
    return result


# -------------------------------------------------------------------------------------------- gpu_validate
STEPS = ("nvidia_smi", "container", "torch", "nccl")
TORCH_CHECK = ("import torch,json;a=torch.cuda.is_available();r={'torch':torch.__version__,'cuda':a,"
               "'cuda_version':torch.version.cuda};"
               "exec(\"if a:\\n x=torch.randn(1024,1024,device='cuda');y=(x@x).sum().item();"
               "r['matmul']=y==y;r['devices']=torch.cuda.device_count()\");print(json.dumps(r))")
ALLREDUCE = ("import os,torch,torch.distributed as d;d.init_process_group('nccl');r=d.get_rank();"
             "torch.cuda.set_device(int(os.environ['LOCAL_RANK']));t=torch.ones(1<<20,device='cuda');"
             "d.all_reduce(t);assert int(t[0].item())==d.get_world_size(),t[0];"
             "print('ALLREDUCE_OK',r) if r==0 else None;d.destroy_process_group()")


@module("gpu_validate", args={
    "step": ArgSpec("str", required=True, choices=STEPS),
    "image": ArgSpec("str"),
    "gpu_count": ArgSpec("int", default=0),
    "simulated": ArgSpec("bool", default=False),
    "runtime": ArgSpec("str", default="nvidia"),
    "timeout": ArgSpec("int", default=600),
})
class GpuValidate(Op):
    """One validation step. Steps that need a real GPU report 'skipped (simulated GPU)' on simulated hosts, with
    what could still be checked there (the stand-in nvidia-smi, the image's torch import), never ok."""

    def plan(self, args, facts, probe, ctx) -> Plan:
        step, n, sim = args["step"], int(args.get("gpu_count") or 0), bool(args.get("simulated"))
        if n == 0:
            return _skip("skipped (no GPU on this host)")
        if step == "nccl" and n < 2:
            return _skip("skipped (single GPU: no all-reduce to test)")
        if step == "nccl" and sim:
            return _skip(f"{SIMULATED}: NCCL all-reduce over {n} GPUs not run")
        img = q(args.get("image") or "")
        rt = f"--runtime {q(args['runtime'])} -e NVIDIA_VISIBLE_DEVICES=all" if args.get("runtime") else "--gpus all"
        if step == "nvidia_smi":
            cmd, result = factmod.FACTS["nvidia_smi"].command, _validate_smi(n, sim)
        elif step == "container" and sim:
            cmd, result = f"docker run --rm {rt} --entrypoint /bin/true {img}", _validate_runtime
        elif step == "container":
            cmd, result = f"docker run --rm {rt} --entrypoint nvidia-smi {img} -L", _validate_container(n)
        elif step == "torch":
            cmd, result = f"docker run --rm {rt} --entrypoint python {img} -c {q(TORCH_CHECK)}", _validate_torch(n, sim)
        else:
            script = f"printf %s {q(ALLREDUCE)} > /tmp/ar.py && torchrun --standalone --nproc_per_node={n} /tmp/ar.py"
            cmd, result = f"docker run --rm {rt} --ipc=host --entrypoint sh {img} -c {q(script)}", _validate_nccl(n)
        return Plan([Cmd(cmd, timeout=int(args.get("timeout") or 600), ok_rc=None, counts=False)], result=result,
                    skip_in_check="skipped in check mode (validation runs workloads)")


def _failed(msg: str, rc: int | None = None) -> dict:
    return {"failed": True, "msg": msg, **({"rc": rc} if rc is not None else {})}


def _validate_smi(n: int, sim: bool):
    def result(results) -> dict:
        smi = nvidia_smi_result(results[0].stdout)
        rows = smi["gpus"]
        if smi["rc"] != 0 or len(rows) != n:
            why = f": {smi_problem(smi)}" if smi["rc"] != 0 or not rows else ""
            return _failed(f"nvidia-smi lists {len(rows)} GPU(s), expected {n}{why}", smi["rc"])
        return {"msg": f"nvidia-smi lists {n} GPU(s): {rows[0]['name']}, driver {rows[0]['driver_version']}"
                       + (" (stand-in nvidia-smi)" if sim else "")}
    return result


def _validate_runtime(results) -> dict:
    r = results[0]
    if r.rc != 0:
        return _failed(f"the nvidia runtime failed to start the image: {r.stderr.strip()[-200:]}", r.rc)
    return {"skipped": True, "msg": f"{SIMULATED}: no GPU device nodes to see; the nvidia runtime starts the image"}


def _validate_container(n: int):
    def result(results) -> dict:
        r = results[0]
        seen = r.stdout.count("GPU ")
        if r.rc != 0 or seen != n:
            return _failed(f"a GPU container sees {seen} of {n} GPUs: {(r.stderr or r.stdout).strip()[-200:]}")
        return {"msg": f"a GPU container sees all {n} GPUs"}
    return result


def _validate_torch(n: int, sim: bool):
    def result(results) -> dict:
        r = results[0]
        try:
            info = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return _failed(f"torch check did not run: {r.stderr.strip()[-300:]}")
        if not info.get("cuda"):
            if sim:
                return {"skipped": True, "msg": f"{SIMULATED}: torch {info['torch']} imports, cuda.is_available() "
                                                "False"}
            return _failed(f"torch {info['torch']}: cuda.is_available() is False")
        ok = info.get("matmul") and info.get("devices") == n
        return {"failed": not ok, "msg": f"torch {info['torch']} (CUDA {info['cuda_version']}): {info.get('devices')} "
                                         f"device(s), 1024x1024 matmul {'ok' if info.get('matmul') else 'FAILED'}"}
    return result


def _validate_nccl(n: int):
    def result(results) -> dict:
        r = results[0]
        if r.rc != 0 or "ALLREDUCE_OK" not in r.stdout:
            return _failed(f"NCCL all-reduce over {n} GPUs failed: {(r.stderr or r.stdout).strip()[-300:]}")
        return {"msg": f"NCCL all-reduce over {n} GPUs (torchrun) ok"}
    return result


# ------------------------------------------------------------------------------------------ gpu_agent_install
@module("gpu_agent_install", args={"cache": ArgSpec("path")})
class GpuAgentInstall(Op):
    """This project's agent into /opt/gpufleet/agent (a venv) from a wheelhouse the controller builds with pip for
    the host's Python; nothing is fetched by the host. Unchanged when the host already has this bundle."""

    def probe(self, args, ctx):
        from provision.gpu import agentpkg
        return ("python3 -c 'import platform; print(platform.python_version(), platform.machine())'; "
                f"cat {agentpkg.VENV}/.gpufleet-bundle 2>/dev/null || true")

    def plan(self, args, facts, probe, ctx) -> Plan:
        from provision.gpu import agentpkg
        lines = probe.stdout.split("\n")
        if probe.rc != 0 or len(lines[0].split()) != 2:
            return Plan(failed=True, msg=f"python3 does not answer on the host: {probe.stderr.strip()}")
        pyver, machine = lines[0].split()
        have = lines[1].strip() if len(lines) > 1 else ""
        cache = Path(args.get("cache") or Path.home() / ".cache" / "gpufleet")
        try:
            wheels, bundle = agentpkg.build_wheelhouse(pyver, machine, cache)
        except RuntimeError as err:
            return Plan(failed=True, msg=f"cannot build the agent's wheelhouse: {err}")
        if have == bundle:
            return Plan(noop=f"agent bundle {bundle} already installed in {agentpkg.VENV}")
        data = None if ctx.check else agentpkg.tar_bytes(wheels)
        w = f"{agentpkg.WHEELS}/{bundle}"
        size = f"{len(data) / 1e6:.1f} MB" if data is not None else "not built in check mode"
        return Plan(commands=[
            Cmd(f"mkdir -p {w} && tar -xzf - -C {w}", stdin=data, desc=f"copy wheelhouse {bundle} ({size}) to {w}"),
            Cmd(agentpkg.install_command(bundle), timeout=900, desc=f"install the agent into {agentpkg.VENV} "
                                                                    f"(pip --no-index from {w})"),
        ], msg=(f"would install agent bundle {bundle} (have {have or 'none'})" if ctx.check else
                f"agent bundle {bundle} installed in {agentpkg.VENV} (was {have or 'absent'})"),
            diff=[{"before": f"{have or '(absent)'}\n", "after": f"{bundle}\n",
                   "before_header": f"{agentpkg.VENV}/.gpufleet-bundle",
                   "after_header": f"{agentpkg.VENV}/.gpufleet-bundle"}])
