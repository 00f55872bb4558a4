"""bench/ holds scripts and summaries: a run's full record (output tails, profiles, timelines) goes under the ignored
bench/raw/, its summary JSON and markdown under bench/results/. No timing here: the benchmarks themselves are never
part of the test suite."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench import common

ROOT = Path(__file__).resolve().parent.parent


def test_write_results_keeps_the_numbers_and_leaves_the_output_tails_in_raw(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RAW", tmp_path / "raw")
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    run = common.Measured(argv=["provision", "apply"], rc=0, wall_s=1.5, user_s=0.5, sys_s=0.1, maxrss_mib=50.0,
                          tree_rss_peak_mib=50.0, tree_pss_peak_mib=41.0, procs_peak=1,
                          stdout_tail="PLAY RECAP ...", stderr_tail="warning")
    payload = {"machine": {"nproc": 2}, "runs": [{"hosts": 10, "tools": {"gpufleet": {"b_rerun": [run.as_dict()]}}}]}
    raw, summary, md = common.write_results("provisioner", payload, "| table |\n")
    assert raw.parent == tmp_path / "raw" and summary.parent == md.parent == tmp_path / "results"
    assert json.loads(raw.read_text()) == payload
    kept = json.loads(summary.read_text())["runs"][0]["tools"]["gpufleet"]["b_rerun"][0]
    assert kept == {k: v for k, v in run.as_dict().items() if k not in ("argv", "stdout_tail", "stderr_tail")}
    assert kept["wall_s"] == 1.5 and kept["cpu_s"] == 0.6
    assert md.read_text() == "| table |\n" and raw.stem == summary.stem == md.stem


def test_the_raw_folder_is_ignored_and_committed_results_are_summaries():
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "bench/raw/x.json"])
    assert ignored.returncode == 0
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "bench"], capture_output=True, text=True,
                             check=True).stdout.split()
    for rel in tracked:
        path = ROOT / rel
        if not path.exists():          # deleted in the working tree, not yet committed
            continue
        assert path.stat().st_size < 100_000, rel
        assert not rel.endswith((".tgz", ".svg")) and "/profiles/" not in rel, rel
        if rel.endswith(".json"):
            text = path.read_text()
            assert not any(f'"{key}"' in text for key in (*common.RAW_KEYS, "timeline")), rel
