"""Open the report in headless Chromium and check that every image loads (naturalWidth > 0).

The page is loaded from disk (file://), as a reader would open it. A copy of index.html, beside it so relative paths
resolve the same, gets a script that records each <img>'s load state into the DOM after the window's load event;
`--dump-dom` prints that DOM. A second copy with a deliberately broken image shows the check can fail.
"""

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report import full_run_output

from workflows.report.page import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's "
                                                         "`chromium`; locally: apt-get install -y chromium)")
CHECK = """<script>window.addEventListener("load", () => {
  const seen = [...document.images].map(i => [i.getAttribute("src"), i.complete, i.naturalWidth]);
  document.body.setAttribute("data-imgcheck", JSON.stringify(seen));
});</script>"""


class BodyAttr(HTMLParser):
    def __init__(self):
        super().__init__()
        self.value = None

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.value = dict(attrs).get("data-imgcheck")


def image_states(page: Path, tmp_path: Path) -> list[list]:
    """[src, complete, naturalWidth] for every <img> of `page`, as headless Chromium loaded it from disk."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--allow-file-access-from-files",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    parser = BodyAttr()
    parser.feed(done.stdout)
    assert parser.value is not None, "the check script did not run: " + done.stdout[:500]
    return json.loads(parser.value)


def with_check(index: Path, name: str, extra: str = "") -> Path:
    page = index.parent / name
    page.write_text(index.read_text().replace("</body>", extra + CHECK + "</body>"))
    return page


def test_every_report_image_loads_in_chromium(sd1_path, tmp_path_factory, tmp_path):
    run = full_run_output(sd1_path, tmp_path_factory)
    index = build_report(run, examples=2, out=str(tmp_path / "report"))
    states = image_states(with_check(index, "_imgcheck.html"), tmp_path)
    assert len(states) >= 10 and any(src.endswith(".gif") for src, _, _ in states)
    broken = [src for src, complete, width in states if not complete or width <= 0]
    assert broken == []
    # The check itself can fail: a missing file is reported with naturalWidth 0.
    bad = image_states(with_check(index, "_imgcheck_bad.html", '<img src="assets/missing.png">'), tmp_path)
    assert [s for s in bad if s[0] == "assets/missing.png"][0][2] == 0
