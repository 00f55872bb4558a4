"""apt_key: check mode downloads nothing; a key file from the controller (air-gapped labs); ``id`` checks the
key's OpenPGP fingerprint, read from its packets on the controller (compared here with gpg's own answer)."""
from __future__ import annotations

import base64
import os
import subprocess

import pytest

from provision.ops.apt_repo import dearmor, key_fingerprints, key_id_problem
from tests.test_ops_units import drive

DEST = "/usr/share/keyrings/k.gpg"


@pytest.fixture(scope="module")
def gpg_key(tmp_path_factory):
    """An ed25519 key with an encryption subkey, made by gpg: (armored export, [primary fpr, subkey fpr])."""
    home = tmp_path_factory.mktemp("gnupg")
    os.chmod(home, 0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}

    def gpg(*args):
        return subprocess.run(["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "",
                               *args], env=env, check=True, capture_output=True, timeout=60).stdout
    gpg("--quick-gen-key", "gpufleet test <test@invalid>", "ed25519", "sign", "never")
    fpr = [ln.split(b":")[9].decode() for ln in gpg("--with-colons", "--list-keys").splitlines()
           if ln.startswith(b"fpr:")][0]
    gpg("--quick-add-key", fpr, "cv25519", "encr", "never")
    prints = [ln.split(b":")[9].decode() for ln in gpg("--with-colons", "--list-keys").splitlines()
              if ln.startswith(b"fpr:")]
    return gpg("--armor", "--export", fpr).decode(), prints


def test_fingerprints_match_gpgs(gpg_key):
    armored, prints = gpg_key
    assert key_fingerprints(dearmor(armored.encode())) == prints and len(prints) == 2


@pytest.mark.parametrize("cut", [40, 16, 8])
def test_id_matches_fingerprint_long_or_short(gpg_key, cut):
    armored, prints = gpg_key
    key_id = prints[0][-cut:]
    assert key_id_problem(dearmor(armored.encode()), key_id.lower(), "x") is None
    spaced = " ".join(prints[0][i:i + 4] for i in range(0, 40, 4))
    assert key_id_problem(dearmor(armored.encode()), spaced, "x") is None


def test_wrong_id_fails_before_anything_is_written(gpg_key, tmp_path):
    armored, prints = gpg_key
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "key.asc").write_text(armored)
    args = {"file": "key.asc", "keyring": DEST, "id": "EB693B3035CD5710E231E123A4B469963BF863CC"}
    r, ran = drive("apt_key", args, {}, lambda c: (0, "absent\n", ""), search=(str(tmp_path),))
    assert r.failed and r.msg == (f"the key from key.asc is not EB693B3035CD5710E231E123A4B469963BF863CC: its "
                                  f"fingerprints are {prints[0]}, {prints[1]}; nothing written")
    assert len(ran) == 1      # the stat only
    good = {**args, "id": prints[0][-16:]}
    r, ran = drive("apt_key", good, {}, lambda c: (0, "absent\n", ""), search=(str(tmp_path),))
    assert r.changed and not r.failed and ran.stdins == {1: dearmor(armored.encode())}   # the controller's file


def test_id_checked_after_the_hosts_download(gpg_key):
    armored, prints = gpg_key
    fetched = base64.b64encode(armored.encode()).decode()

    def host(cmd):
        return (0, "absent\n", "") if cmd.startswith("if [ -L") else (0, fetched, "") if "curl" in cmd else (0, "", "")
    r, ran = drive("apt_key", {"url": "http://repo/key.asc", "keyring": DEST, "id": "0123456789ABCDEF"}, {}, host)
    assert r.failed and "the key from http://repo/key.asc is not 0123456789ABCDEF" in r.msg and len(ran) == 2
    r, ran = drive("apt_key", {"url": "http://repo/key.asc", "keyring": DEST, "id": prints[0]}, {}, host)
    assert r.changed and len(ran) == 3


def test_check_mode_downloads_nothing_and_says_what_it_would_fetch():
    def host(cmd):
        if "curl" in cmd:
            raise AssertionError("check mode ran the download")
        return (0, "absent\n", "")
    r, ran = drive("apt_key", {"url": "https://developer.download.nvidia.com/k.pub", "keyring": DEST,
                               "id": "3BF863CC"}, {}, host, check=True)
    assert not r.failed and r.changed and len(ran) == 1
    assert r.msg == (f"would fetch https://developer.download.nvidia.com/k.pub and check it is key 3BF863CC -> {DEST} "
                     "(check mode downloads nothing)")


def test_bad_id_and_non_openpgp_data_say_so():
    assert "is not a key id" in key_id_problem(b"\x99\x00\x01\x04", "nope", "x")
    assert "cannot read the key from x" in key_id_problem(b"\x00garbage", "3BF863CC", "x")
