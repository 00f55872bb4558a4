"""`provision facts --gpu`: per host the GPUs, the installed driver, what the host needs and a verdict."""
from __future__ import annotations

from typing import Mapping

from provision.gpu.plan import HostGpuPlan, gpu_facts_of, plan_host
from provision.gpu.probe import (gpus_from_pci, nvswitches_from_pci, parse_nvidia_smi, parse_secure_boot)
from provision.gpu.table import load_table


def normalize_facts(facts: Mapping) -> dict:
    """Facts as the engine gathers them, or as provision.gpu.probe parses them → the probe's shape.

    Accepts a 'gpu' sub-dict, raw PCI devices (list of {address, vendor, device, class}), raw nvidia-smi CSV text
    and Secure Boot as a bool or mokutil text."""
    gf = dict(gpu_facts_of(facts) or {})
    for key in ("pci_devices", "pci", "secure_boot", "nvidia_smi", "packages", "kernel"):
        if key not in gf and key in facts:
            gf[key] = facts[key]
    pci = gf.get("pci_devices", gf.get("pci")) or []
    if "gpus" not in gf:
        gf["gpus"] = [g.as_dict() for g in gpus_from_pci(pci)]
    if "nvswitches" not in gf:
        gf["nvswitches"] = nvswitches_from_pci(pci)
    smi = gf.get("nvidia_smi")
    if isinstance(smi, str):
        rows = parse_nvidia_smi(smi)
        gf["nvidia_smi"] = {"rc": 0 if rows else None, "gpus": [r.as_dict() for r in rows]}
    sb = gf.get("secure_boot")
    if isinstance(sb, dict):
        sb = sb.get("enabled")
    if isinstance(sb, str):
        sb = parse_secure_boot(sb)
    gf["secure_boot"] = sb
    return gf


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
    drv = plan.installed_driver or "none"
    if plan.installed_driver and plan.installed_flavour:
        drv += f" ({plan.installed_flavour})"
    if plan.smi_gpu_count is not None:
        drv += f", nvidia-smi lists {plan.smi_gpu_count} GPU(s)"
    lines.append(f"  driver:     {drv}")
    sb = {True: "on", False: "off", None: "unknown"}[plan.secure_boot]
    lines.append(f"  secure boot: {sb}")
    if plan.gpus:
        fm = f"; fabric manager {plan.fabricmanager_package}" if plan.fabricmanager else "; no fabric manager"
        lines.append(f"  needs:      branch {plan.branch} {plan.flavour} ({plan.driver_package}){fm}")
        lines.append(f"  image:      {plan.image} (CUDA {plan.image_cuda or '?'}, driver >= "
                     f"{plan.image_min_driver or '?'})")
    for w in plan.warnings:
        lines.append(f"  warning:    {w}")
    for r in plan.refusals[1:]:
        lines.append(f"  refused:    {r}")
    lines.append(f"  verdict:    {plan.verdict}")
    return lines


def gpu_report(facts_by_host: Mapping[str, Mapping], vars_by_host: Mapping[str, Mapping] | None = None) -> str:
    table = load_table()
    out: list[str] = []
    for host in sorted(facts_by_host):
        facts = facts_by_host[host] or {}
        hv = (vars_by_host or {}).get(host) or facts.get("vars") or facts.get("hostvars") or {}
        plan = plan_host(normalize_facts(facts), hv, host=host, table=table)
        out.extend(host_lines(host, plan))
    return "\n".join(out) + ("\n" if out else "")
