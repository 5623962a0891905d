"""Make the README's pictures from a real run: the cartography map and the HTML report.

    python docs/make_readme_figures.py                       # runs the main job (ILP-World), then draws
    python docs/make_readme_figures.py --report out/diagnosis  # draws from a saved report folder

Writes `docs/images/cartography.png` (the report's own map) and `docs/images/report.png` (the
report's `report.html`, opened in headless Chromium with a sample's detail shown). The main job is
`recipes/diagnose_sft.py` with its defaults, as the README's Quickstart runs it. Needs Chromium
(`/usr/bin/chromium`; Debian: `apt-get install chromium`) and `pip install playwright` (no browser
download: the system Chromium is used).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def run_main_job(out: Path) -> Path:
    """The Quickstart's third command, into `out`; returns its report folder."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    subprocess.run([sys.executable, str(ROOT / "recipes" / "diagnose_sft.py"), "--output_dir", str(out)],
                   check=True, env=env, cwd=ROOT)
    return out / "diagnosis"


def screenshot(page_file: Path, png: Path, chromium: str) -> None:
    """The page at a laptop's width, with the first sample of the table opened."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1150})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_file.as_uri())
        page.locator("#samples tbody tr").first.click()
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(png), full_page=False)
        browser.close()
    if errors:
        raise RuntimeError(f"{page_file} raised in the browser: {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=None, help="a saved report folder (default: run the main job)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from hf_ilp.diagnosis import DiagnosisReport, write_html
    from hf_ilp.diagnosis.display import plot_report

    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report = DiagnosisReport.load(args.report or run_main_job(tmp / "run"))
        plots = plot_report(report, tmp / "plots")
        shutil.copyfile(plots["cartography"], IMAGES / "cartography.png")
        page_file = write_html(report, tmp / "report.html")
        screenshot(page_file, IMAGES / "report.png", args.chromium)
    print(f"wrote {IMAGES / 'cartography.png'} and {IMAGES / 'report.png'}")


if __name__ == "__main__":
    main()
