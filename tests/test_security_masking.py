"""F6 (issue 15): secrets are masked by what they are, not by their shape: variables named as secrets, variables the
user lists in gpufleet_secret_vars, no_log tasks; wherever they appear (-vvv, --diff, --json, error messages) and
whatever they start with ('/', '~', short values)."""
from __future__ import annotations

import json

from provision.ops.core import MASK, mask_text, secret_values
from test_executor_local import run, write

# a random base64 password starts with '/' one time in 64; '~x9' and 'Qz' are short
SECRETS = {"db_password": "/9fK+q2Lw", "api_token": "~x9", "vault_pass": "Qz", "hf_cred_blob": "plain-looking-1"}


def test_secret_values_whatever_they_start_with_and_however_short():
    got = secret_values(SECRETS, marked=["hf_cred_blob"])
    for v in SECRETS.values():
        assert v in got, v
    assert "/home/a/.ssh/id" not in secret_values({"ansible_ssh_private_key_file": "/home/a/.ssh/id"})
    assert secret_values({"enable_token_auth": True, "passthrough": "yes", "user": "alice"}) == []


def test_short_values_are_masked_where_they_stand_alone_only():
    text = mask_text("pw Qz; Qzx; aQz; 'Qz'\n", ["Qz"])
    assert text == f"pw {MASK}; Qzx; aQz; '{MASK}'\n"
    # one pass, longest first: a mask is never masked again, a one-character secret does not eat the mask
    assert mask_text("a * b", ["*", "long-secret"]) == f"a {MASK} b"


def test_a_shell_quoted_secret_is_masked_in_the_command_shown():
    got = secret_values({"my_password": "it's-/secret"})
    assert "pass" not in mask_text("echo 'it'\"'\"'s-/secret' | passwd --stdin", got).replace("passwd", "")


def test_secrets_never_show_in_vvv_diff_json_or_error_messages(tmp_path, capsys):
    inv = write(tmp_path, "inv.yaml", "all:\n  hosts:\n    a: {ansible_connection: local}\n")
    varlines = "".join(f"            {k}: {json.dumps(v)}\n" for k, v in SECRETS.items())
    pb = write(tmp_path, "pb.yaml", f"""
        - hosts: a
          gather_facts: false
          vars:
{varlines}            gpufleet_secret_vars: [hf_cred_blob]
          tasks:
            - command: echo {{{{ db_password }}}} {{{{ api_token }}}} {{{{ vault_pass }}}} {{{{ hf_cred_blob }}}}
            - copy:
                dest: {tmp_path}/app.conf
                content: "pw={{{{ db_password }}}}\\ntoken={{{{ api_token }}}}\\nq {{{{ vault_pass }}}}\\n\\
                  {{{{ hf_cred_blob }}}}\\n"
            - fail: {{msg: "cannot log in with {{{{ db_password }}}} / {{{{ hf_cred_blob }}}}"}}
              ignore_errors: true
            - debug: {{msg: "{{{{ {{}}[db_password] }}}}"}}
              ignore_errors: true
            - file: {{path: "{tmp_path}/{{{{ hf_cred_blob }}}}", state: file}}
              ignore_errors: true
        """)
    for flags in (["-vvv", "--diff"], ["--json", "--diff"]):
        rc, out = run(capsys, "apply", inv, "-p", pb, *flags)
        assert rc == 0, out
        text = out.out + out.err
        assert "cannot log in with" in text and MASK in text
        for name, value in SECRETS.items():
            assert value not in text.replace(MASK, ""), (flags, name)
    assert (tmp_path / "app.conf").read_text().startswith("pw=/9fK+q2Lw\n")


def test_a_literal_environment_value_under_a_secret_name_is_masked(tmp_path, capsys):
    inv = write(tmp_path, "inv.yaml", "all:\n  hosts:\n    a: {ansible_connection: local}\n")
    pb = write(tmp_path, "pb.yaml", """
        - hosts: a
          gather_facts: false
          tasks:
            - shell: 'echo "token is $HF_TOKEN"'
              environment: {HF_TOKEN: hf_LiteralValue42}
        """)
    for flags in (["-vvv"], ["--json"]):
        rc, out = run(capsys, "apply", inv, "-p", pb, *flags)
        assert rc == 0 and "hf_LiteralValue42" not in out.out + out.err and MASK in out.out, out
