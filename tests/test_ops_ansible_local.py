"""The Ansible modules roles use, end to end through the CLI and the executor on `local` connection hosts (real
shell, real files under tmp_path): include_vars in a role (variables, not facts), stat, find, blockinfile, replace,
get_url from a file:// url, unarchive, fetch; a second run changes nothing."""
from __future__ import annotations

import io
import json
import tarfile
import textwrap

from provision.cli import main


def write(path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def apply(capsys, inv, pb, *extra) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["apply", inv, pb, "--json", "--no-retry-file", *extra])
    return rc, json.loads(capsys.readouterr().out)


def statuses(rep) -> list[str]:
    return [t["hosts"]["a"]["status"] for t in rep["plays"][0]["tasks"] if "a" in t["hosts"]]


def test_role_modules_end_to_end_and_idempotent(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "arch").mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("tool/run")
        info.size = 3
        t.addfile(info, io.BytesIO(b"hi\n"))
    (tmp_path / "tool.tgz").write_bytes(buf.getvalue())
    (out / "unit").write_text("[Service]\nExecStart=/usr/bin/old\n")
    write(tmp_path / "roles" / "r" / "vars" / "Site.yml", "site_port: 8443\n")
    write(tmp_path / "roles" / "r" / "tasks" / "main.yml", f"""
        - include_vars: Site.yml
        - assert:
            that: ["site_port == 8443", "ansible_facts.site_port is not defined"]
        - blockinfile:
            path: {out}/hosts
            create: true
            block: "10.0.0.1 gpu1"
        - replace:
            path: {out}/unit
            regexp: "^ExecStart=.*$"
            replace: "ExecStart=/usr/bin/new --port {{{{ site_port }}}}"
        - get_url: {{url: "file://{tmp_path}/tool.tgz", dest: {out}/tool.tgz, mode: "0600"}}
        - unarchive: {{src: {out}/tool.tgz, dest: {out}/arch, remote_src: true}}
        - stat: {{path: {out}/arch/tool/run}}
          register: st
        - find: {{paths: {out}/arch, patterns: "run", recurse: true}}
          register: found
        - assert:
            that:
              - st.stat.exists and st.stat.isreg and st.stat.size == 3
              - found.matched == 1 and found.files[0].path == st.stat.path
        - fetch: {{src: {out}/hosts, dest: {tmp_path}/fetched}}
        """)
    inv = write(tmp_path / "inv.yaml", "all:\n  hosts:\n    a: {ansible_connection: local}\n")
    pb = write(tmp_path / "site.yml", "- hosts: all\n  gather_facts: false\n  roles: [r]\n")
    rc, rep = apply(capsys, inv, pb)
    assert rc == 0, rep
    assert statuses(rep) == ["ok", "ok", "changed", "changed", "changed", "changed", "ok", "ok", "ok", "changed"]
    assert (out / "unit").read_text() == "[Service]\nExecStart=/usr/bin/new --port 8443\n"
    assert (out / "arch" / "tool" / "run").read_bytes() == b"hi\n"
    assert (tmp_path / "fetched" / "a" / str(out / "hosts").lstrip("/")).read_text() == \
        "# BEGIN ANSIBLE MANAGED BLOCK\n10.0.0.1 gpu1\n# END ANSIBLE MANAGED BLOCK\n"
    rc, rep = apply(capsys, inv, pb)
    assert rc == 0 and "changed" not in statuses(rep), statuses(rep)
    # check mode after a change on the host: predicted, nothing written
    (out / "arch" / "tool" / "run").write_text("ho\n")
    rc, rep = apply(capsys, inv, pb, "--check")
    assert rc == 0 and statuses(rep)[5] == "changed" and (out / "arch" / "tool" / "run").read_text() == "ho\n"


def test_validate_keeps_the_old_file_when_the_new_content_fails(tmp_path, capsys):
    """copy/template/lineinfile/blockinfile/replace's validate: the new content is checked in its temp file, and the
    file is replaced only when the command passes (sudoers with visudo -cf %s, say)."""
    conf = tmp_path / "app.conf"
    conf.write_text("mode=good\n")
    inv = write(tmp_path / "inv.yaml", "all:\n  hosts:\n    a: {ansible_connection: local}\n")
    pb = write(tmp_path / "pb.yml", f"""
        - hosts: all
          gather_facts: false
          tasks:
            - lineinfile: {{path: {conf}, regexp: "^mode=", line: "mode=bad", validate: "grep -q good %s"}}
              ignore_errors: true
            - copy: {{content: "mode=good2\\n", dest: {conf}, validate: "grep -q good %s"}}
            - blockinfile: {{path: {conf}, block: "x", validate: "no-such-command %s"}}
              ignore_errors: true
        """)
    rc, rep = apply(capsys, inv, pb)
    assert rc == 0 and statuses(rep) == ["failed", "changed", "failed"], rep
    assert conf.read_text() == "mode=good2\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".provision.")]     # no temp file left
