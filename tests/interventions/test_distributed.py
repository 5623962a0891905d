"""Two CPU processes (gloo): bucketed SFT under DDP, one published output folder."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent('''
    import sys
    from datasets import Dataset
    from hf_ilp.diagnosis.report import DiagnosisReport
    from hf_ilp.interventions import InterventionConfig, intervene
    from hf_ilp.interventions.inconsistency import ConflictBucketSampler
    sys.path.insert(0, sys.argv[2])
    from tests.interventions.conftest import make_model, make_rows, make_tokenizer, sft_args

    out = sys.argv[1]
    rows = make_rows(24) + [{"id": "dup", "prompt": "what is w7 ?", "completion": " w39"}]
    train = Dataset.from_list(rows)
    report = DiagnosisReport.from_rows([
        {"id": r["id"], "learned": r["id"] != "dup", "cause": "data_inconsistency" if r["id"] == "dup" else "",
         "confidence": 1.0, "runner_up": "", "runner_up_confidence": 0.0} for r in rows])
    tok = make_tokenizer()
    seen = []
    orig = ConflictBucketSampler.__iter__
    def spy(self):
        order = list(orig(self))
        seen.append((self.batch_size, order))
        return iter(order)
    ConflictBucketSampler.__iter__ = spy
    res = intervene("data_inconsistency", report, train, out + "/run", base_model=make_model(tok), tokenizer=tok,
                    args=sft_args(out + "/args", per_device_train_batch_size=2),
                    config=InterventionConfig(inconsistency_strategy="bucket"))
    from accelerate import PartialState
    import json
    with open(f"{out}/orders-{PartialState().process_index}.json", "w") as f:
        json.dump(seen, f)
''')


@pytest.mark.slow
def test_two_processes_share_one_bucketed_order_and_publish_once(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           str(script), str(tmp_path), str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    orders = [json.loads((tmp_path / f"orders-{r}.json").read_text()) for r in (0, 1)]
    assert orders[0] == orders[1] and orders[0][0][0] == 4  # same order on both ranks; 2 x 2 rows per step
    manifest = json.loads((tmp_path / "run" / "intervention.json").read_text())
    assert manifest["method"] == "bucket" and not list(tmp_path.glob(".run.tmp-*"))
