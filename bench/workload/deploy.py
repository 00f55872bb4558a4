"""The benchmark play for pyinfra 3: the same seven tasks as site.yml, written with pyinfra's operations."""
from pathlib import Path

from pyinfra import host
from pyinfra.operations import apt, files, systemd

HERE = Path(__file__).resolve().parent

apt.update(name="apt cache", cache_time=3600)
apt.packages(name="stand-in package", packages=[host.data.bench_package])
files.directory(name="config directory", path="/etc/gpufleet-bench", mode="755")
files.template(name="config file", src=str(HERE / "files/bench.conf.j2"), dest="/etc/gpufleet-bench/bench.conf",
               mode="644", inventory_hostname=host.name, bench_port=9477)
files.line(name="environment line", path="/etc/default/gpufleet-bench", line="^BENCH_LEVEL=",
           replace="BENCH_LEVEL=3")
unit = files.put(name="unit file", src=str(HERE / "files/gpufleet-bench.service"),
                 dest="/etc/systemd/system/gpufleet-bench.service", mode="644")
systemd.daemon_reload(name="reload systemd", _if=unit.did_change)
systemd.service(name="service", service="gpufleet-bench", running=True, enabled=True)
