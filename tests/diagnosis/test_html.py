"""The HTML page of a DiagnosisReport: self-contained, capped, safe to publish, and working in a
real browser (Debian's chromium driven by playwright; skipped where either is missing)."""

import json
import math
import os
import re
import time
from pathlib import Path

import pytest

from hf_ilp.diagnosis.report import CAUSES, REQUIRED_COLUMNS, UNEXPLAINED, DiagnosisReport

CHROMIUM = "/usr/bin/chromium"
HOSTILE = "</script><script>alert(1)</script>"


def _rows(per_cause: int = 3, n_learned: int = 12) -> list[dict]:
    """Learned rows and `per_cause` unlearned rows of each cause, with every optional column."""
    rows = []
    for i in range(n_learned):
        rows.append(_row(f"s{i:03d}", True, "", math.nan, x=0.02 + 0.01 * i, y=0.9 + 0.005 * i))
    for k, cause in enumerate(CAUSES + (UNEXPLAINED,)):
        for j in range(per_cause):
            rows.append(_row(f"u{k}{j}", False, cause, 0.95 - 0.1 * j, x=0.1 + 0.05 * k, y=0.1 + 0.12 * j))
    rows[n_learned]["prompt"] = f"What comes after {HOSTILE} & <b>this</b>?"
    return rows


def _row(sample_id, learned, cause, confidence, x, y) -> dict:
    steps = [10, 20, 30, 40]
    return {
        "id": sample_id,
        "learned": learned,
        "cause": cause,
        "confidence": confidence,
        "runner_up": "" if learned else "under_training",
        "runner_up_confidence": math.nan if learned else 0.2,
        "row": int(sample_id[1:]),
        "prompt": f"Question {sample_id}: what is the value?",
        "completion": f" value-{sample_id}",
        "stage": 1,
        "score_forgetting": 0.1 if learned else 0.7,
        "base_gold_prob": math.nan,
        "loss_drop": 0.25,
        "dup_neighbor": "" if learned else "s000",
        "dup_prompt": "" if learned else "Question s000: what is the value?",
        "dup_completion": "" if learned else " value-s000",
        "ft_expected": "" if learned else f"value-{sample_id}",
        "ft_says": "" if learned else "value-wrong",
        "ft_diverges_at": math.nan if learned else 1.0,
        "curve_step": steps,
        "curve_exact": [False, True, True, not (not learned and cause == "forgetting")],
        "curve_p_gold": [0.1, 0.6, math.nan, 0.4],
        "cartography_confidence": y,
        "cartography_variability": x,
        "cartography_correctness": 0.5,
    }


def _page_json(text: str) -> dict:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert match, "the page has no embedded data"

    def refuse(token):
        raise AssertionError(f"invalid JSON token {token}")

    return json.loads(match.group(1), parse_constant=refuse)


def test_page_is_one_self_contained_file_whose_data_survives_hostile_text(tmp_path):
    from hf_ilp.diagnosis.html import write_html

    report = DiagnosisReport.from_rows(_rows(), settings={"exact_threshold": 1.0, "hub_token": "hf_" + "x" * 30}, notes=["a note"])
    out = write_html(report, tmp_path / "page.html")

    assert out == tmp_path / "page.html" and [p.name for p in tmp_path.iterdir()] == ["page.html"]
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"@import|url\(|fetch\(|XMLHttpRequest|<link(?![^>]*data:)", text, re.I)
    assert text.count("</script>") == 2 and "alert(1)</script>" not in text
    data = _page_json(text)
    prompts = [s["prompt"] for s in data["samples"]]
    assert f"What comes after {HOSTILE} & <b>this</b>?" in prompts  # intact once parsed
    sample = data["samples"][0]
    assert sample["comparisons"] == [{"model": "fine-tuned model", "expected": "value-u00", "says": "value-wrong", "at": 1.0}]
    assert sample["duplicate"]["completion"] == " value-s000"
    assert sample["curve"]["p_gold"] == [0.1, 0.6, None, 0.4]  # NaN reaches the page as null
    evidence = dict(sample["evidence"])
    assert "base_gold_prob" not in evidence and evidence["loss_drop"] == "0.25"  # NaN evidence is left out
    assert sample["scores"] == {"forgetting": 0.7}
    assert "hub_token" not in data["summary"]["settings"] and data["summary"]["notes"] == ["a note"]
    assert data["map"]["n_learned"] == 12 and len(data["map"]["learned"]) == 12


def test_the_page_is_capped_per_cause_and_says_what_it_left_out(tmp_path, monkeypatch):
    import hf_ilp.diagnosis.html as html

    monkeypatch.setattr(html, "MAP_LEARNED_POINTS", 5)
    report = DiagnosisReport.from_rows(_rows(per_cause=5, n_learned=12))
    data = _page_json(html.write_html(report, tmp_path / "page.html", max_per_cause=2).read_text())
    for cause in CAUSES + (UNEXPLAINED,):
        kept = [s for s in data["samples"] if s["cause"] == cause]
        assert [round(s["confidence"], 2) for s in kept] == [0.95, 0.85]  # the most confident
        assert data["left_out"][cause] == 3
    assert data["max_per_cause"] == 2 and len(data["map"]["learned"]) == 5 and data["map"]["n_learned"] == 12
    assert [s["k"] for s in data["samples"]] == list(range(len(data["samples"])))
    # the parquet keeps every row: the cap is the page's alone
    assert len(report.samples) == 12 + 5 * 6


def test_a_report_with_only_the_required_columns_renders(tmp_path):
    from hf_ilp.diagnosis.html import write_html

    rows = [{c: r[c] for c in REQUIRED_COLUMNS} for r in _rows()]
    data = _page_json(write_html(DiagnosisReport.from_rows(rows), tmp_path / "old.html").read_text())
    assert data["map"]["available"] is False and data["id_label"] == "id"
    s = data["samples"][0]
    assert s["prompt"] == "" and s["curve"] is None and s["comparisons"] == [] and s["evidence"] == []
    empty = DiagnosisReport.from_rows([])
    assert _page_json(write_html(empty, tmp_path / "empty.html").read_text())["samples"] == []


def test_rows_are_named_by_number_when_ids_are_content_hashes(tmp_path):
    from hf_ilp.diagnosis.html import page_data

    report = DiagnosisReport.from_rows(_rows())
    report.summary["ids"] = "content_hash"
    data = page_data(report)
    assert data["id_label"] == "row" and data["samples"][0]["label"] == "row 0"


def test_a_page_that_would_carry_a_local_path_is_refused(tmp_path):
    from hf_ilp.diagnosis.html import write_html

    rows = _rows()
    rows[-1]["completion"] = f"see {Path.home()}/notes.txt"
    with pytest.raises(ValueError, match="local path"):
        write_html(DiagnosisReport.from_rows(rows), tmp_path / "page.html")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="samples=True"):
        write_html(DiagnosisReport(samples=None, summary={}), tmp_path / "page.html")


def test_cli_writes_the_page_of_a_report_folder(tmp_path, monkeypatch, capsys):
    from hf_ilp.cli import main

    DiagnosisReport.from_rows(_rows()).save(tmp_path / "diagnosis")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "diagnosis", "--html"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.html")
    assert main(["report", str(tmp_path / "diagnosis"), "--html", str(tmp_path / "out" / "d.html")]) == 0
    assert _page_json((tmp_path / "out" / "d.html").read_text())["summary"]["n_samples"] == len(_rows())


@pytest.mark.parametrize("source, why", [("nobody/no-such-model", "could not be reached"), ("./no/such/folder", "not a valid Hub repo id")])
def test_cli_says_in_one_line_that_it_found_neither_a_folder_nor_a_repo(source, why, tmp_path, monkeypatch, capfd):
    import huggingface_hub.constants as constants

    from hf_ilp.cli import main

    endpoint = "http://127.0.0.1:9"  # the discard port: nothing listens there
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    # downloads build their URL from this template, which a Hub server of other tests may have repointed
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # huggingface_hub's backoff between retries
    assert main(["report", source]) == 2
    captured = capfd.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("hf-ilp report: found neither a local report nor a Hub repo")
    assert str((tmp_path / source).resolve()) in line and endpoint in line and f"'{source}'" in line and why in line


def test_page_works_in_a_browser(tmp_path):
    """Open the page in headless chromium: no errors, filter, sort, row and map clicks."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    from hf_ilp.diagnosis.html import write_html

    page_file = write_html(DiagnosisReport.from_rows(_rows(per_cause=5)), tmp_path / "page.html", max_per_cause=3)
    old_rows = [{c: r[c] for c in REQUIRED_COLUMNS} for r in _rows()]
    old_file = write_html(DiagnosisReport.from_rows(old_rows), tmp_path / "old.html")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    start = time.monotonic()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors, requests = [], []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda req: requests.append(req.url))

            page.goto(old_file.as_uri())
            assert page.locator("#samples tbody tr").count() == 18
            assert page.locator("#map svg").count() == 0 and "no training-dynamics" in page.locator("#map").inner_text()

            page.goto(page_file.as_uri())
            assert page.locator("#samples tbody tr").count() == 18
            assert "left out: 2 missing_knowledge" in page.locator("#left-out").inner_text()
            page.select_option("#cause-filter", "forgetting")
            visible = page.locator("#samples tbody tr:visible")
            assert visible.count() == 3
            assert all(visible.nth(i).get_attribute("data-cause") == "forgetting" for i in range(3))

            header = page.locator("#sort-confidence")
            for direction, order in (("ascending", sorted), ("descending", lambda v: sorted(v, reverse=True))):
                header.click()
                assert header.get_attribute("aria-sort") == direction
                values = [float(t) for t in page.locator("#samples tbody tr:visible td:nth-child(3)").all_inner_texts()]
                assert values == order(values)

            row = visible.first
            row.click()
            data = _page_json(page_file.read_text())
            shown = data["samples"][int(row.get_attribute("data-k"))]
            detail = page.locator("#detail")
            assert shown["prompt"] in detail.inner_text() and "the fine-tuned model says" in detail.inner_text()
            assert detail.locator("svg.curve polyline").count() >= 1

            page.select_option("#cause-filter", "all")
            hostile = next(s for s in data["samples"] if HOSTILE in s["prompt"])
            page.locator(f'#map svg circle.pt[data-k="{hostile["k"]}"]').click()
            assert HOSTILE in detail.inner_text()  # shown as text, never run
            assert page.locator("#samples tbody tr.selected").get_attribute("data-k") == str(hostile["k"])

            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        finally:
            browser.close()
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert time.monotonic() - start < 20
