#!/bin/sh
# The three roles of docs/ansible-compat.md on a testbed (TEST EQUIPMENT: Debian 12 containers, the stand-in NVIDIA
# repository; nothing leaves the machine): syntax-check, check mode, and geerlingguy.docker applied for real twice.
#   bench/compat_testbed/run.sh ROLES_DIR     ROLES_DIR holds the checkouts ansible-role-docker,
#                                              ansible-role-nvidia-docker and ansible-role-nvidia-driver (kept out of
#                                              the repository); PROVISION="python -m provision.cli" to pick the CLI.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
roles=$(cd "$1" && pwd)
P=${PROVISION:-provision}
work=$(mktemp -d /tmp/compat-testbed.XXXXXX)
mkdir "$work/roles"
for r in ansible-role-docker ansible-role-nvidia-docker ansible-role-nvidia-driver; do ln -s "$roles/$r" "$work/roles/$r"; done
cp "$here"/*.yml "$here"/*.json "$work/"
inv="$work/inv.yaml"
$P testbed up --name compat --host d1=1xH100-SXM,docker --host d2=none --host u1=none --inventory "$inv" >/dev/null
trap '$P testbed down --name compat >/dev/null' EXIT

# What the testbed lacks, set up by hand (each said in docs/ansible-compat.md):
# u1 looks like Ubuntu 22.04 (NVIDIA's container role supports only Ubuntu and RedHat) and holds the role's local fact
# as its first run leaves it (check mode copies nothing, and the role reads the fact right after copying it)
docker exec gpufleet-compat-u1 sh -c 'printf "NAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=jammy\n" > /etc/os-release.compat && rm -f /etc/os-release && cp /etc/os-release.compat /etc/os-release && mkdir -p /etc/ansible/facts.d'
docker cp "$roles/ansible-role-nvidia-docker/files/etc/ansible/facts.d/nv_os_release.fact" gpufleet-compat-u1:/etc/ansible/facts.d/
docker exec gpufleet-compat-u1 chmod 755 /etc/ansible/facts.d/nv_os_release.fact
# the driver packages ship nvidia-persistenced.service; the stand-in packages do not: a placeholder unit
for h in d1 d2 u1; do
  docker exec "gpufleet-compat-$h" sh -c 'printf "[Service]\nType=oneshot\nExecStart=/bin/true\nRemainAfterExit=yes\n[Install]\nWantedBy=multi-user.target\n" > /etc/systemd/system/nvidia-persistenced.service && systemctl daemon-reload'
done
# geerlingguy.docker installs python3-debian, which the offline testbed cannot download: an empty stand-in package
mkdir -p "$work/pydeb/DEBIAN"
printf 'Package: python3-debian\nVersion: 0.1.49\nArchitecture: all\nMaintainer: compat <nobody@localhost>\nDescription: empty stand-in\n' > "$work/pydeb/DEBIAN/control"
dpkg-deb --build --root-owner-group "$work/pydeb" "$work/python3-debian.deb" >/dev/null
docker cp "$work/python3-debian.deb" gpufleet-compat-d1:/tmp/ && docker exec gpufleet-compat-d1 dpkg -i /tmp/python3-debian.deb >/dev/null

recap() { grep -A4 "PLAY RECAP" | grep -E "^(d1|d2|u1) " || true; }
run() { echo "== $*"; $P apply "$inv" "$@" --no-retry-file 2>&1 | tee "$work/last.log" | recap; }
for pb in docker driver nvdocker; do $P apply "$inv" "$work/$pb.yml" --syntax-check >/dev/null && echo "syntax-check $pb: ok"; done
run "$work/testbed-repo.yml"                                      # the stand-in repositories as apt sources
run "$work/driver.yml" --check -e @"$work/driver-vars.json"
run "$work/nvdocker.yml" --check -e @"$work/nvdocker-vars.json"
run "$work/docker.yml" --check -e @"$work/docker-vars.json"
run "$work/docker.yml" -e @"$work/docker-vars.json"
run "$work/docker.yml" -e @"$work/docker-vars.json"
grep -q "d1 .*changed=0 .*failed=0" "$work/last.log" || { echo "FAILED: the re-run changed something"; exit 1; }
run "$work/docker.yml" -e @"$work/docker-more-vars.json"
run "$work/docker.yml" -e @"$work/docker-more-vars.json"
grep -q "d1 .*changed=0 .*failed=0" "$work/last.log" || { echo "FAILED: the re-run changed something"; exit 1; }
echo "all as recorded in docs/ansible-compat.md"
