"""Every metric the Grafana dashboard queries must be one the binaries
export (as listed in worker/src/stats.rs, api/src and common/db sources), so
the dashboard cannot silently drift from the code."""
import json
import pathlib
import re
import sys

dashboard = json.loads(pathlib.Path("deploy/grafana/likes-dashboard.json").read_text())
queried = set()
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        for name in re.findall(r"\b(likes_[a-z_]+)", target["expr"]):
            queried.add(re.sub(r"_(bucket|sum|count)$", "", name))
source = "".join(p.read_text() for p in pathlib.Path(".").glob("*/src/**/*.rs"))
exported = set(re.findall(r'(?:counter|gauge|histogram)!\(\s*"(likes_[a-z_]+)"', source))
missing = sorted(queried - exported)
if missing:
    sys.exit(f"dashboard queries metrics no binary exports: {missing}")
print(f"dashboard: {len(queried)} metrics, all exported")
