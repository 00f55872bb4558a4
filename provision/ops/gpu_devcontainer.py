"""The gpu_devcontainer operation: a long-lived dev container (Jupyter with a token, SSH by key, a non-root
user); the decisions live in provision/gpu/devcontainer.py."""
from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

from provision.gpu import devcontainer as dc
from provision.ops.gpu_stack import _skip
from provision.ops.plan import Cmd, FilePut, Plan
from provision.ops.core import Op
from provision.ops.spec import ArgSpec, module

q = shlex.quote


@module("gpu_devcontainer", args={
    "name": ArgSpec("str", default="gpufleet-dev"),
    "image": ArgSpec("str", required=True),
    "user": ArgSpec("str", default="dev"),
    "uid": ArgSpec("int", default=1000),
    "gpus": ArgSpec("raw", default="all"),
    "gpu_count": ArgSpec("int"),
    "jupyter_port": ArgSpec("int", default=8888),
    "ssh_port": ArgSpec("int", default=2222),
    "bind": ArgSpec("str", default="127.0.0.1"),    # loopback: users come through an SSH tunnel (docs/security.md)
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
                          jupyter_port=int(args["jupyter_port"]), ssh_port=int(args["ssh_port"]),
                          bind=dc.bind_address(args.get("bind")),
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
            return Plan(commands=[Cmd(f"docker rm -f -- {n}")], msg=f"{spec.name}: removed")
        if not st["image_id"]:
            return Plan(failed=True, msg=f"image {spec.image} is not on the host (run gpu_image first): "
                                         f"{st['image_error']}")
        h = dc.spec_hash(spec, st["image_id"])
        cmds: list = []
        diff: list[dict] = []
        dirs = " ".join(q(spec.volume_dir(v)) for v in dc.VOLUMES)
        ssh_dir, tls_dir = q(f"{spec.state_dir}/ssh"), q(f"{spec.state_dir}/tls")
        cmds.append(Cmd(f"mkdir -p -- {q(spec.dir)} {dirs} {ssh_dir} {tls_dir} && chmod 0755 -- {q(spec.dir)} "
                        f"{q(spec.state_dir)} && chmod 0700 -- {ssh_dir} {tls_dir} && "
                        f"chown -- {spec.uid}:{spec.uid} {dirs} {tls_dir}", counts=False))
        if spec.jupyter_tls and not st["tls_present"]:
            cmds.append(Cmd(dc.tls_command(spec), desc=f"make Jupyter's TLS certificate in {spec.state_dir}/tls "
                                                       "(self-signed, once per host)"))
            diff.append({"before": "(absent)\n", "after": "self-signed EC P-256, 10 years\n",
                         "before_header": spec.tls_path("crt"), "after_header": spec.tls_path("crt")})
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
            cmds.append(Cmd(f"chown -- {spec.uid}:{spec.uid} {q(spec.token_path)} && chmod 0400 -- "
                            f"{q(spec.token_path)}", desc=f"fix owner/mode of {spec.token_path}"))
        need_run = st["container_spec"] != h or token is not None
        need_start = not need_run and st["container_status"] != "running"
        if (need_run or need_start) and st["maintenance"]:
            why = f" ({st['maintenance_reason']})" if st["maintenance_reason"] else ""
            return _skip(f"{dc.MAINTENANCE_MARKER} is present{why}: not starting dev container {spec.name} during "
                         f"maintenance")
        if need_run:
            if st["container_status"]:
                cmds.append(Cmd(f"docker rm -f -- {n} >/dev/null", desc=f"remove {spec.name} (spec changed)"))
            cmds.append(Cmd(" ".join(q(a) for a in dc.docker_run_args(spec, h)), timeout=300))
            diff.append({"before": f"{spec.name}: {st['container_status'] or 'absent'}\n",
                         "after": f"{spec.name}: running {spec.image} gpus={spec.gpus} jupyter={spec.bind}:"
                                  f"{spec.jupyter_port} ssh={spec.bind}:{spec.ssh_port}\n",
                         "before_header": "container", "after_header": "container"})
        elif need_start:
            cmds.append(Cmd(f"docker start -- {n}"))
        msg = f"{spec.name}: " + ("started" if (need_run or need_start) else "running, unchanged")
        extra = {"devcontainer": {"name": spec.name, "gpus": spec.gpus, "jupyter_port": spec.jupyter_port,
                                  "ssh_port": spec.ssh_port, "token_file": spec.token_path, "bind": spec.bind,
                                  "jupyter_tls": spec.jupyter_tls}}
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
        # (worded so that no word follows 'token': the masking takes the word after it for a secret)
        return {"msg": f"{msg}; saved to {where} (0600): the Jupyter token" +
                ("" if seen else "; no terminal to show it on")}
    return result
