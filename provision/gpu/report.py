"""`provision facts --gpu`: per host the GPUs, the driver in use (version, flavour, loaded, from apt or not), what
the host needs and a verdict; as text, or as JSON (one object per host: facts, plan, verdict)."""
from __future__ import annotations

from typing import Iterator, Mapping

from provision.gpu.plan import HostGpuPlan, gpu_view, plan_host
from provision.gpu.table import load_table


def driver_line(plan: HostGpuPlan) -> str:
    """'580.159.04 (open), loaded, origin preinstalled (not from apt), kept, nvidia-smi lists 1 GPU(s)'."""
    if not plan.installed_driver:
        drv = "none"
    else:
        drv = plan.installed_driver + (f" ({plan.installed_flavour})" if plan.installed_flavour else "")
        if plan.driver_origin == "apt":
            drv += f", package {plan.driver_package_installed}"
        drv += ", loaded" if plan.driver_loaded else ", not loaded"
        if plan.driver_origin != "apt":
            drv += f", origin {plan.driver_origin} (not from apt)"
        if plan.driver_kept:
            drv += ", kept"
        elif plan.driver_replace:
            drv += f", replaced ({plan.driver_uninstaller} --silent, then the package)"
    if plan.smi_gpu_count is not None:
        drv += f", nvidia-smi lists {plan.smi_gpu_count} GPU(s)"
    return drv


def host_lines(host: str, plan: HostGpuPlan) -> list[str]:
    lines = [f"{host}:"]
    if plan.gpus:
        by_model: dict[str, int] = {}
        for g in plan.gpus:
            key = f"{g['model']} ({g.get('arch') or '?'}, CC {g.get('cc') or '?'})"
            by_model[key] = by_model.get(key, 0) + 1
        lines.append("  GPUs:       " + "; ".join(f"{n}x {m}" for m, n in by_model.items()))
    else:
        lines.append("  GPUs:       none on the PCI bus")
    if plan.nvswitches:
        lines.append(f"  NVSwitch:   {len(plan.nvswitches)} on the PCI bus")
    lines.append(f"  driver:     {driver_line(plan)}")
    sb = {True: "on", False: "off", None: "unknown"}[plan.secure_boot]
    lines.append(f"  secure boot: {sb}")
    if plan.gpus and plan.driver_kept:
        lines.append(f"  needs:      nothing: the driver is kept (branch {plan.branch} or newer wanted)")
    elif plan.gpus:
        fm = f"; fabric manager {plan.fabricmanager_package}" if plan.fabricmanager else "; no fabric manager"
        repo = f"; CUDA repository {plan.cuda_repo_distro}" if plan.source == "cuda-repo" else ""
        lines.append(f"  needs:      branch {plan.branch} {plan.flavour} ({', '.join(plan.packages)}){fm}{repo}")
    if plan.gpus:
        lines.append(f"  image:      {plan.image} (CUDA {plan.image_cuda or '?'}, driver >= "
                     f"{plan.image_min_driver or '?'})")
    for w in plan.warnings:
        lines.append(f"  warning:    {w}")
    for r in plan.refusals[1:]:
        lines.append(f"  refused:    {r}")
    lines.append(f"  verdict:    {plan.verdict}")
    return lines


def host_plans(facts_by_host: Mapping[str, Mapping], vars_by_host: Mapping[str, Mapping] | None = None
               ) -> Iterator[tuple[str, dict, HostGpuPlan]]:
    """(host, GPU facts, plan) per host, sorted by name, from the fact sections gathered for each."""
    table = load_table()
    for host in sorted(facts_by_host):
        view = gpu_view(facts_by_host[host] or {}, table)
        yield host, view, plan_host(view, (vars_by_host or {}).get(host) or {}, host=host, table=table)


def gpu_report(facts_by_host: Mapping[str, Mapping], vars_by_host: Mapping[str, Mapping] | None = None) -> str:
    out: list[str] = []
    for host, _view, plan in host_plans(facts_by_host, vars_by_host):
        out.extend(host_lines(host, plan))
    return "\n".join(out) + ("\n" if out else "")


def gpu_report_json(facts_by_host: Mapping[str, Mapping], vars_by_host: Mapping[str, Mapping] | None = None
                    ) -> dict[str, dict]:
    """{host: {"facts": GPU facts, "plan": the plan's variables, "verdict": one line}}."""
    return {host: {"facts": view, "plan": plan.as_vars(), "verdict": plan.verdict}
            for host, view, plan in host_plans(facts_by_host, vars_by_host)}
