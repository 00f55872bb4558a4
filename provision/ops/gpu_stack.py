"""GPU-stack operations: gpu_plan, gpu_json_merge, gpu_validate, gpu_agent_install (gpu_image and
gpu_devcontainer live in ops/gpu_image.py and ops/gpu_devcontainer.py).

The decisions live in provision/gpu/ (pure functions over gpus.yaml), the host's GPU state in the fact sections of
provision/facts/gpu.py; these classes read them (``facts``, or a read-only probe where the state must be looked at
again) and return plans of command objects that the executor's runner carries out. None runs a command itself.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Mapping

from provision import facts as factmod
from provision.errors import InputError
from provision.facts.gpu import nvidia_smi_result, smi_problem
from provision.gpu.jsonmerge import JsonMergeError, plan_merge
from provision.gpu.plan import driver_check, gpu_view, plan_host
from provision.ops.core import Op, OpError, parse_mode
from provision.ops.plan import Cmd, FilePut, Plan
from provision.ops.spec import ArgSpec, module

q = shlex.quote
PLAN_VARS = ("nvidia_driver_branch", "nvidia_driver_flavour", "nvidia_driver_source", "nvidia_driver_server",
             "nvidia_fabricmanager", "nvidia_module_signing", "nvidia_driver_replace", "gpu_image", "gpu_image_info",
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
            cmds.append(Cmd(f"cp -p -- {q(path)} {q(path + '.gpufleet-bak')}", counts=False))
        cmds.append(FilePut(path, after.encode(), mode=mode, make_parent=True,
                            desc=f"merge into {path} ({len(after)} bytes)"))
        diff = [{"before": before, "after": after, "before_header": path, "after_header": path}]
        old = json.loads(before) if before.strip() else {}
        new_keys = sorted(set(json.loads(after)) - set(old))
        msg = f"{path}: merged" + (f"; new top-level keys {', '.join(new_keys)}" if new_keys else "") + \
            (f"; kept {len(old)} existing key(s)" if old else "") + ("; backup .gpufleet-bak" if backup_needed else "")
        return Plan(commands=cmds, diff=diff, msg=msg, changed=True)


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
        img = "-- " + q(args.get("image") or "")    # a value starting with "-" stays the image
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
    the host's Python; nothing is fetched by the host. Unchanged when the host already has this bundle. Check mode
    builds no wheelhouse (no download on the controller either): it compares the bundle id."""

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
        try:     # check mode builds nothing (pip would download the dependencies): the bundle id says enough
            wheels, bundle = (None, agentpkg.bundle_id(pyver, machine)[1]) if ctx.check else \
                agentpkg.build_wheelhouse(pyver, machine, cache)
        except RuntimeError as err:
            return Plan(failed=True, msg=f"cannot build the agent's wheelhouse: {err}")
        if have == bundle:
            return Plan(noop=f"agent bundle {bundle} already installed in {agentpkg.VENV}")
        data = None if wheels is None else agentpkg.tar_bytes(wheels)
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
