"""GPU-stack operations: gpu_plan, gpu_json_merge, gpu_image, gpu_devcontainer, gpu_validate.

The decisions live in provision/gpu/ (pure functions over gpus.yaml); these classes only probe the host, call them,
and turn the answer into commands (check mode and --diff for free through provision.ops.core).
"""
from __future__ import annotations

import json
import shlex
from typing import Any, Mapping

from provision.errors import InputError
from provision.gpu import devcontainer as dc
from provision.gpu.images import SOURCES, ensure_image
from provision.gpu.jsonmerge import JsonMergeError, plan_merge
from provision.gpu.plan import plan_host
from provision.gpu.probe import GPU_FACTS_COMMAND, parse_gpu_facts
from provision.ops.core import Cmd, Op, Plan, execute_plan
from provision.ops.spec import ArgSpec, module
from provision.results import HostResult

q = shlex.quote
PLAN_VARS = ("nvidia_driver_branch", "nvidia_driver_flavour", "nvidia_driver_source", "nvidia_driver_server",
             "nvidia_fabricmanager", "nvidia_module_signing", "gpu_image", "gpu_image_info",
             "gpufleet_simulated_gpus", "inventory_hostname")
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


class _Conn:
    """ctx as the small connector surface provision.gpu.images uses (run/put with become, logged in ctx.ran)."""

    def __init__(self, ctx):
        self.ctx, self.host = ctx, ctx.host

    def run(self, cmd, *, stdin=None, timeout=None, become=None):
        return self.ctx.run(cmd, stdin=stdin, timeout=timeout, become=become)

    def put(self, path, data, *, mode=None, become=None):
        m = f" && chmod {mode:o} {q(path)}" if mode is not None else ""
        res = self.ctx.run(f"umask 077; cat > {q(path)}{m}", stdin=data, become=become,
                           desc=f"upload {path} ({len(data) / 1e6:.1f} MB)")
        if res.rc != 0:
            raise RuntimeError(f"upload to {path} failed: {res.stderr.strip()[-200:]}")


# ------------------------------------------------------------------------------------------------ gpu_plan
@module("gpu_plan", args={
    "fail_on_refusal": ArgSpec("bool", default=True),
    "verify_driver": ArgSpec("bool", default=False),
    "expected_version": ArgSpec("str"),
})
class GpuPlan(Op):
    """Probe the host's GPUs (PCI before any driver, nvidia-smi after), plan it from the group vars, and set the
    facts ``gpu_plan`` (HostGpuPlan.as_vars()) and ``gpu_facts``. A refusal fails the host before anything changes.
    verify_driver: fail unless nvidia-smi lists every GPU the PCI bus shows (at expected_version, if given)."""

    def run(self, args, ctx) -> HostResult:
        res = ctx.run(GPU_FACTS_COMMAND, desc="probe GPUs (PCI, nvidia-smi, Secure Boot, packages)")
        facts = parse_gpu_facts(res.stdout)
        plan = plan_host(facts, _render_vars(ctx, PLAN_VARS), host=ctx.host)
        out = {"gpu_plan": plan.as_vars(), "gpu_facts": facts}
        r = HostResult(ctx.host, msg=plan.verdict, extra={"ansible_facts": out, **out})
        if args.get("verify_driver") and plan.has_gpus:
            smi = facts["nvidia_smi"]
            want = str(args.get("expected_version") or "").strip()
            pci = {g["address"] for g in plan.gpus}
            listed = {g["bus_id"]: g["driver_version"] for g in smi.get("gpus", [])}
            if smi.get("rc") != 0:
                r.failed, r.msg = True, f"nvidia-smi does not answer after the install: {smi.get('error') or smi}"
            elif not pci <= set(listed):
                missing = sorted(pci - set(listed))
                r.failed, r.msg = True, (f"nvidia-smi lists {len(pci & set(listed))} of {len(pci)} GPUs on the PCI "
                                         f"bus; missing {', '.join(missing)}")
            elif want and any(v != want for v in listed.values()):
                r.failed, r.msg = True, (f"nvidia-smi reports driver {sorted(set(listed.values()))}, expected "
                                         f"{want} (a reboot is still pending?)")
            else:
                r.msg = f"nvidia-smi lists all {len(pci)} GPUs at driver {next(iter(listed.values()))}"
        elif args.get("fail_on_refusal", True) and plan.refusals:
            r.failed = True
            r.msg = "; ".join(plan.refusals)
        if r.failed:       # keep a failure's output readable: the verdict, not the whole fact set
            r.extra = {"verdict": plan.verdict}
        return r


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
        except JsonMergeError as err:
            return Plan(failed=True, msg=str(err))
        if after is None:
            return Plan(noop=f"{path}: already holds every key")
        tmp = q(path + ".gpufleet-tmp")
        cmds = [Cmd(f"mkdir -p $(dirname {q(path)})", counts=False)]
        if backup_needed := (args.get("backup") and text):
            cmds.append(Cmd(f"cp -p {q(path)} {q(path + '.gpufleet-bak')}", counts=False))
        cmds.append(Cmd(f"cat > {tmp} && chmod {q(str(args.get('mode') or '0644'))} {tmp} && mv -f {tmp} {q(path)}",
                        stdin=after.encode(), desc=f"merge into {path} ({len(after)} bytes)"))
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
    pulled, pulled through a lab mirror, or streamed from the controller (docker save tarball, sha256-checked)."""

    def run(self, args, ctx) -> HostResult:
        info = args.get("image_info")
        if isinstance(info, str):
            import yaml
            try:
                info = yaml.safe_load(info) if info.strip() else None
            except yaml.YAMLError:
                return HostResult(ctx.host, failed=True, msg=f"image_info is not a mapping: {info[:80]!r}")
        if info is not None and not isinstance(info, Mapping):
            return HostResult(ctx.host, failed=True, msg="image_info must be a mapping {cuda: '12.8', sm: [...]}")
        if info and "cuda" not in info:
            return HostResult(ctx.host, failed=True, msg="image_info needs at least cuda: 'X.Y'")
        args = {**args, "image_info": info or None}
        for k in ("tarball", "sha256", "mirror"):        # '' (an unset group var) means "not given"
            if not str(args.get(k) or "").strip():
                args[k] = None
        try:
            return ensure_image(_Conn(ctx), args["image"], source=args.get("source") or "auto",
                                tarball=args.get("tarball"), sha256=args.get("sha256"), mirror=args.get("mirror"),
                                check_gpus=args.get("check_gpus", True), image_info=args.get("image_info"),
                                check=ctx.check, become=ctx.become)
        except RuntimeError as err:
            return HostResult(ctx.host, failed=True, msg=str(err))


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

    def run(self, args, ctx) -> HostResult:
        try:
            spec = dc.DevSpec(name=args["name"], image=args["image"], user=args["user"], uid=int(args["uid"]),
                              gpus=dc.normalize_gpus(args.get("gpus"), args.get("gpu_count")),
                              jupyter_port=int(args["jupyter_port"]), ssh_port=int(args["ssh_port"]),
                              bind=args["bind"], shm_size=args["shm_size"], runtime=args.get("runtime") or "",
                              data_root=args["data_root"])
            keys = dc.keys_text(args.get("authorized_keys"))
        except dc.SpecError as err:
            return HostResult(ctx.host, failed=True, msg=str(err))
        if not keys:
            return HostResult(ctx.host, failed=True, msg="authorized_keys: at least one public key is needed")
        st = dc.parse_probe(ctx.run(dc.probe_command(spec), desc=f"probe dev container {spec.name}").stdout)
        n = q(spec.name)
        if args.get("state") == "absent":
            if not st["container_status"]:
                return HostResult(ctx.host, msg=f"{spec.name}: absent")
            return execute_plan(Plan(commands=[Cmd(f"docker rm -f {n}")], msg=f"{spec.name}: removed"), ctx)
        if not st["image_id"]:
            return HostResult(ctx.host, failed=True, msg=f"image {spec.image} is not on the host (run gpu_image "
                                                         f"first): {st['image_error']}")
        h = dc.spec_hash(spec, st["image_id"])
        cmds: list[Cmd] = []
        diff: list[dict] = []
        dirs = " ".join(q(spec.volume_dir(v)) for v in dc.VOLUMES)
        cmds.append(Cmd(f"mkdir -p {q(spec.dir)} {dirs} && chmod 0755 {q(spec.dir)} && "
                        f"chown {spec.uid}:{spec.uid} {dirs}", counts=False))
        keys_sha = __import__("hashlib").sha256(keys.encode()).hexdigest()
        if st["keys_sha"] != keys_sha:
            # written in place (not renamed): the container's bind mount keeps seeing the same inode
            cmds.append(Cmd(f"touch {q(spec.keys_path)} && chmod 0644 {q(spec.keys_path)} && "
                            f"cat > {q(spec.keys_path)}", stdin=keys.encode(),
                            desc=f"write {spec.keys_path} ({keys.count(chr(10))} key(s))"))
            diff.append({"before": "(absent)\n" if not st["keys_sha"] else "(other keys)\n",
                         "after": keys, "before_header": spec.keys_path, "after_header": spec.keys_path})
        token = None
        if not st["token_present"]:
            token = dc.new_token()
            cmds.append(Cmd(f"umask 077; cat > {q(spec.token_path)} && chown {spec.uid}:{spec.uid} "
                            f"{q(spec.token_path)} && chmod 0400 {q(spec.token_path)}", stdin=token.encode(),
                            desc=f"write {spec.token_path} (Jupyter token, masked)"))
            diff.append({"before": "(absent)\n", "after": "******** (generated on the controller)\n",
                         "before_header": spec.token_path, "after_header": spec.token_path})
        elif st["token_mode"] != "400" or st["token_uid"] != spec.uid:
            cmds.append(Cmd(f"chown {spec.uid}:{spec.uid} {q(spec.token_path)} && chmod 0400 "
                            f"{q(spec.token_path)}", desc=f"fix owner/mode of {spec.token_path}"))
        need_run = st["container_spec"] != h or token is not None
        need_start = not need_run and st["container_status"] != "running"
        if (need_run or need_start) and st["maintenance"]:
            why = f" ({st['maintenance_reason']})" if st["maintenance_reason"] else ""
            return HostResult(ctx.host, skipped=True,
                              msg=f"{dc.MAINTENANCE_MARKER} is present{why}: not starting dev container "
                                  f"{spec.name} during maintenance")
        run_args = dc.docker_run_args(spec, h)
        if need_run:
            if st["container_status"]:
                cmds.append(Cmd(f"docker rm -f {n} >/dev/null", desc=f"remove {spec.name} (spec changed)"))
            cmds.append(Cmd(" ".join(q(a) for a in run_args), timeout=300))
            diff.append({"before": f"{spec.name}: {st['container_status'] or 'absent'}\n",
                         "after": f"{spec.name}: running {spec.image} gpus={spec.gpus} jupyter={spec.bind}:"
                                  f"{spec.jupyter_port} ssh={spec.bind}:{spec.ssh_port}\n",
                         "before_header": "container", "after_header": "container"})
        elif need_start:
            cmds.append(Cmd(f"docker start {n}"))
        plan = Plan(commands=cmds, diff=diff,
                    msg=f"{spec.name}: " + ("started" if (need_run or need_start) else "running, unchanged"))
        if not any(c.counts for c in cmds):
            plan.noop = plan.msg
        where = None
        if token and not ctx.check:       # saved first: a failure after the host write must not lose it
            where = dc.save_controller_token(ctx.host, spec.name, token)
        r = execute_plan(plan, ctx)
        r.extra["devcontainer"] = {"name": spec.name, "gpus": spec.gpus, "jupyter_port": spec.jupyter_port,
                                   "ssh_port": spec.ssh_port, "token_file": spec.token_path}
        if where is not None and not r.failed:
            shown = dc.show_once(ctx.host, spec.name, token, spec.jupyter_port)
            r.msg += (f"; Jupyter token saved to {where} (0600)" + ("" if shown else "; no terminal to show it on"))
        return r


# -------------------------------------------------------------------------------------------- gpu_validate
STEPS = ("nvidia_smi", "container", "torch", "nccl")


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

    def run(self, args, ctx) -> HostResult:
        step, n, sim = args["step"], int(args.get("gpu_count") or 0), bool(args.get("simulated"))
        img = q(args.get("image") or "")
        rt = f"--runtime {q(args['runtime'])} -e NVIDIA_VISIBLE_DEVICES=all" if args.get("runtime") else "--gpus all"
        if n == 0:
            return HostResult(ctx.host, skipped=True, msg="skipped (no GPU on this host)")
        if ctx.check:
            return HostResult(ctx.host, skipped=True, msg="skipped in check mode (validation runs workloads)")
        tmo = int(args.get("timeout") or 600)
        if step == "nvidia_smi":
            res = ctx.run("nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader", timeout=tmo)
            rows = [l for l in res.stdout.splitlines() if l.strip()]
            if res.rc != 0 or len(rows) != n:
                return HostResult(ctx.host, failed=True, rc=res.rc,
                                  msg=f"nvidia-smi lists {len(rows)} GPU(s), expected {n}: {res.stderr.strip()[-200:]}")
            return HostResult(ctx.host, msg=f"nvidia-smi lists {n} GPU(s): {rows[0].split(',')[1].strip()}, driver "
                                            f"{rows[0].split(',')[2].strip()}" + (" (stand-in nvidia-smi)" if sim else ""))
        if step == "container":
            if sim:
                res = ctx.run(f"docker run --rm {rt} --entrypoint /bin/true {img}", timeout=tmo)
                if res.rc != 0:
                    return HostResult(ctx.host, failed=True, rc=res.rc, msg="the nvidia runtime failed to start "
                                                                            f"the image: {res.stderr.strip()[-200:]}")
                return HostResult(ctx.host, skipped=True,
                                  msg=f"{SIMULATED}: no GPU device nodes to see; the nvidia runtime starts the image")
            res = ctx.run(f"docker run --rm {rt} --entrypoint nvidia-smi {img} -L", timeout=tmo)
            seen = res.stdout.count("GPU ")
            if res.rc != 0 or seen != n:
                return HostResult(ctx.host, failed=True, msg=f"a GPU container sees {seen} of {n} GPUs: "
                                                             f"{(res.stderr or res.stdout).strip()[-200:]}")
            return HostResult(ctx.host, msg=f"a GPU container sees all {n} GPUs")
        if step == "torch":
            code = ("import torch,json;a=torch.cuda.is_available();r={'torch':torch.__version__,'cuda':a,"
                    "'cuda_version':torch.version.cuda};"
                    "exec(\"if a:\\n x=torch.randn(1024,1024,device='cuda');y=(x@x).sum().item();"
                    "r['matmul']=y==y;r['devices']=torch.cuda.device_count()\");print(json.dumps(r))")
            res = ctx.run(f"docker run --rm {rt} --entrypoint python {img} -c {q(code)}", timeout=tmo)
            try:
                info = json.loads(res.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                return HostResult(ctx.host, failed=True, msg=f"torch check did not run: {res.stderr.strip()[-300:]}")
            if not info.get("cuda"):
                if sim:
                    return HostResult(ctx.host, skipped=True,
                                      msg=f"{SIMULATED}: torch {info['torch']} imports, cuda.is_available() False")
                return HostResult(ctx.host, failed=True, msg=f"torch {info['torch']}: cuda.is_available() is False")
            ok = info.get("matmul") and info.get("devices") == n
            return HostResult(ctx.host, failed=not ok, msg=f"torch {info['torch']} (CUDA {info['cuda_version']}): "
                                                           f"{info.get('devices')} device(s), 1024x1024 matmul "
                                                           f"{'ok' if info.get('matmul') else 'FAILED'}")
        # nccl
        if n < 2:
            return HostResult(ctx.host, skipped=True, msg="skipped (single GPU: no all-reduce to test)")
        if sim:
            return HostResult(ctx.host, skipped=True, msg=f"{SIMULATED}: NCCL all-reduce over {n} GPUs not run")
        script = ("import os,torch,torch.distributed as d;d.init_process_group('nccl');r=d.get_rank();"
                  "torch.cuda.set_device(int(os.environ['LOCAL_RANK']));t=torch.ones(1<<20,device='cuda');"
                  "d.all_reduce(t);assert int(t[0].item())==d.get_world_size(),t[0];"
                  "print('ALLREDUCE_OK',r) if r==0 else None;d.destroy_process_group()")
        res = ctx.run(f"docker run --rm {rt} --ipc=host --entrypoint sh {img} -c "
                      f"{q('printf %s ' + q(script) + ' > /tmp/ar.py && torchrun --standalone --nproc_per_node=' + str(n) + ' /tmp/ar.py')}",
                      timeout=tmo)
        if res.rc != 0 or "ALLREDUCE_OK" not in res.stdout:
            return HostResult(ctx.host, failed=True, msg=f"NCCL all-reduce over {n} GPUs failed: "
                                                         f"{(res.stderr or res.stdout).strip()[-300:]}")
        return HostResult(ctx.host, msg=f"NCCL all-reduce over {n} GPUs (torchrun) ok")


# ------------------------------------------------------------------------------------------ gpu_agent_install
@module("gpu_agent_install", args={"cache": ArgSpec("path")})
class GpuAgentInstall(Op):
    """This project's agent into /opt/gpufleet/agent (a venv) from a wheelhouse the controller builds with pip for
    the host's Python; nothing is fetched by the host. Unchanged when the host already has this bundle."""

    def run(self, args, ctx) -> HostResult:
        from pathlib import Path

        from provision.gpu import agentpkg
        res = ctx.run("python3 -c 'import platform; print(platform.python_version(), platform.machine())'; "
                      f"cat {agentpkg.VENV}/.gpufleet-bundle 2>/dev/null || true", desc="probe python and agent")
        lines = res.stdout.split("\n")
        if res.rc != 0 or len(lines[0].split()) != 2:
            return HostResult(ctx.host, failed=True, msg=f"python3 does not answer on the host: {res.stderr.strip()}")
        pyver, machine = lines[0].split()
        have = lines[1].strip() if len(lines) > 1 else ""
        cache = Path(args.get("cache") or Path.home() / ".cache" / "gpufleet")
        try:
            wheels, bundle = agentpkg.build_wheelhouse(pyver, machine, cache)
        except RuntimeError as err:
            return HostResult(ctx.host, failed=True, msg=f"cannot build the agent's wheelhouse: {err}")
        if have == bundle:
            return HostResult(ctx.host, msg=f"agent bundle {bundle} already installed in {agentpkg.VENV}")
        if ctx.check:
            return HostResult(ctx.host, changed=True, msg=f"would install agent bundle {bundle} (have "
                                                          f"{have or 'none'})")
        data = agentpkg.tar_bytes(wheels)
        w = f"{agentpkg.WHEELS}/{bundle}"
        plan = Plan(commands=[
            Cmd(f"mkdir -p {w} && tar -xzf - -C {w}", stdin=data,
                desc=f"copy wheelhouse {bundle} ({len(data) / 1e6:.1f} MB) to {w}"),
            Cmd(agentpkg.install_command(bundle), timeout=900, desc=f"install the agent into {agentpkg.VENV} "
                                                                    f"(pip --no-index from {w})"),
        ], msg=f"agent bundle {bundle} installed in {agentpkg.VENV} (was {have or 'absent'})",
            diff=[{"before": f"{have or '(absent)'}\n", "after": f"{bundle}\n",
                   "before_header": f"{agentpkg.VENV}/.gpufleet-bundle",
                   "after_header": f"{agentpkg.VENV}/.gpufleet-bundle"}])
        return execute_plan(plan, ctx)
