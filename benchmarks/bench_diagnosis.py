"""Diagnosis accuracy and cost on ILP-World: planted vs diagnosed cause over the unlearned samples.

For each seed: build ILP-World, fine-tune its base model sequentially (stage by stage, the world's
default SFT budget) with a `LearnTracker`, then `hf_ilp.diagnose` the run. The diagnosis sees the
training rows without `world_cause`; only this script reads it, to score. Printed per seed: the
confusion matrix (rows: planted cause, `normal` for a sample the world planted nothing in;
columns: diagnosed cause), per-cause precision / recall / F1, macro-F1 over the five causes, the
unexplained share; then the cost: diagnosis wall time over one plain training epoch's wall time
on the same data in the same process, with the sentence encoder's time reported apart.

The diagnosis gets what a user has: no prerequisite probes (`--probes world` passes ILP-World's
own list instead, a mode no user can run). Targets: macro-F1 >= 0.85 on every seed, unexplained
<= 15% of unlearned samples, no cause's recall below 0.7, diagnosis time without the encoder <= 2x
one epoch.

    nice -n 10 python benchmarks/bench_diagnosis.py --size small --seeds 0 1 2
    nice -n 10 python benchmarks/bench_diagnosis.py --size small --seeds 0 1 2 --probes world
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hf_ilp.files import write_json_atomic
from hf_ilp import CAUSES, DiagnoserConfig, LearnTracker, LearnTrackerConfig, diagnose, load_records
from hf_ilp.diagnosis.report import UNEXPLAINED
from hf_ilp.training import train_stages
from hf_ilp.world import build_world
from hf_ilp.world.build import SIZES

NORMAL = "normal"


def run_seed(size, seed, workdir, config, reuse=False, probes="none"):
    world = build_world(size=size, seed=seed)
    truth = {r["id"]: (r["world_cause"] or NORMAL) for r in world.train}
    train = world.train.remove_columns("world_cause")
    run = workdir / f"{size}-seed{seed}"
    timing_file = run / "timings.json"

    if reuse and timing_file.is_file():  # re-score a finished run (same model, records and epoch time)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(run / "final_model")
        timings = json.loads(timing_file.read_text())
        train_s, epoch_s = timings["train_s"], timings["epoch_s"]
    else:
        # the run being diagnosed: the world's default budget, with the tracker
        args = world.sft_config(run / "train", report_to="none", disable_tqdm=True)
        tracker = LearnTracker(dataset=train, config=LearnTrackerConfig(records_dir=str(run / "hf_ilp_records")))
        model = world.load_base_model()
        start = time.perf_counter()
        train_stages(model, world.tokenizer, train, args, callbacks=[tracker])
        train_s = time.perf_counter() - start
        model.save_pretrained(run / "final_model")

        # baseline: one plain training epoch over the same data (every stage once), no tracker; run
        # after the tracked run so that one-time start-up costs fall on neither side of the ratio
        args = world.sft_config(run / "epoch", num_train_epochs=1, report_to="none", disable_tqdm=True)
        start = time.perf_counter()
        train_stages(world.load_base_model(), world.tokenizer, train, args)
        epoch_s = time.perf_counter() - start
        write_json_atomic(timing_file, {"train_s": train_s, "epoch_s": epoch_s})
    records = load_records(run / "hf_ilp_records")

    base_model = world.load_base_model()  # loading a model is not part of the diagnosis
    start = time.perf_counter()
    report = diagnose(model, base_model, world.tokenizer, train, records,
                      probes=world.probes if probes == "world" else None, config=config)
    diagnose_s = time.perf_counter() - start
    encoder_s = report.summary["timings"]["encoder_s"]

    pairs = [(truth[r["id"]], r["cause"]) for r in report.samples if not r["learned"]]
    planted_learned = sum(1 for r in report.samples if r["learned"] and truth[r["id"]] != NORMAL)
    return {
        "seed": seed, "pairs": pairs, "n_samples": len(train), "planted_learned": planted_learned,
        "epoch_s": epoch_s, "train_s": train_s, "diagnose_s": diagnose_s, "encoder_s": encoder_s,
        "report": report,
    }


def scores(pairs):
    """Per-cause precision / recall / F1 over `pairs` of (planted, diagnosed)."""
    out = {}
    for cause in CAUSES:
        tp = sum(1 for t, d in pairs if t == cause and d == cause)
        n_pred = sum(1 for _, d in pairs if d == cause)
        n_true = sum(1 for t, _ in pairs if t == cause)
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_true if n_true else float("nan")
        f = 2 * p * r / (p + r) if n_true and (p + r) > 0 else (float("nan") if not n_true else 0.0)
        out[cause] = {"precision": p, "recall": r, "f1": f, "support": n_true}
    out["macro_f1"] = float(np.nanmean([out[c]["f1"] for c in CAUSES]))
    out["unexplained_share"] = sum(1 for _, d in pairs if d == UNEXPLAINED) / len(pairs) if pairs else 0.0
    return out


def print_seed(res):
    pairs = res["pairs"]
    rows = list(CAUSES) + [NORMAL]
    cols = list(CAUSES) + [UNEXPLAINED]
    short = {c: c.split("_")[0][:8] for c in cols}
    print(f"\n=== seed {res['seed']}: {len(pairs)} unlearned of {res['n_samples']} samples "
          f"({res['planted_learned']} planted samples were learned anyway and are not scored) ===")
    print("planted \\ diagnosed  " + " ".join(f"{short[c]:>8}" for c in cols))
    for t in rows:
        counts = [sum(1 for a, d in pairs if a == t and d == c) for c in cols]
        if sum(counts) or t != NORMAL:
            print(f"{t:<20} " + " ".join(f"{n:>8}" for n in counts))
    s = scores(pairs)
    planted = scores([(t, d) for t, d in pairs if t != NORMAL])
    print(f"{'cause':<20} {'precision':>9} {'recall':>7} {'f1':>6} {'n':>4}   {'precision, planted rows only':>28}")
    for c in CAUSES:
        print(f"{c:<20} {s[c]['precision']:>9.2f} {s[c]['recall']:>7.2f} {s[c]['f1']:>6.2f} {s[c]['support']:>4}"
              f"   {planted[c]['precision']:>28.2f}")
    print(f"macro-F1 {s['macro_f1']:.3f} (over every unlearned sample; {planted['macro_f1']:.3f} over the "
          f"planted ones only)   unexplained {s['unexplained_share']:.1%}")
    print(f"time: one plain epoch {res['epoch_s']:.1f}s, tracked training {res['train_s']:.1f}s, "
          f"diagnosis {res['diagnose_s']:.1f}s of which sentence encoder {res['encoder_s']:.1f}s")
    return s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=sorted(SIZES),
                        help="an ILP-World size, or roster-small: the second construction (other relations, names, frames, budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true",
                        help="re-diagnose runs already in --workdir instead of training again (epoch time as measured then)")
    parser.add_argument("--probes", default="none", choices=["none", "world"],
                        help="none: what a user gets (no prerequisite probes); world: ILP-World's own probe list")
    parser.add_argument("--save-reports", default=None, help="also write each seed's report folder here")
    args = parser.parse_args(argv)
    config = DiagnoserConfig(progress=False)
    with tempfile.TemporaryDirectory(prefix="bench_diagnosis-") as tmp:
        workdir = Path(args.workdir or tmp)
        results = []
        for seed in args.seeds:
            res = run_seed(args.size, seed, workdir, config, reuse=args.reuse, probes=args.probes)
            res["scores"] = print_seed(res)
            if args.save_reports:
                res["report"].save(Path(args.save_reports) / f"seed-{seed}")
            results.append(res)
    mode = "without probes" if args.probes == "none" else "with ILP-World's own probes"
    print(f"\n=== summary ({args.size}, {mode}) ===")
    print(f"{'seed':>4} {'macro-F1':>9} {'min recall':>10} {'unexplained':>11} {'diag/epoch':>10} {'encoder s':>9}")
    ratios = []
    for res in results:
        s = res["scores"]
        min_recall = min(s[c]["recall"] for c in CAUSES if s[c]["support"])
        ratio = (res["diagnose_s"] - res["encoder_s"]) / res["epoch_s"]
        ratios.append(ratio)
        print(f"{res['seed']:>4} {s['macro_f1']:>9.3f} {min_recall:>10.2f} {s['unexplained_share']:>11.1%} "
              f"{ratio:>10.2f} {res['encoder_s']:>9.1f}")
    ok_f1 = all(r["scores"]["macro_f1"] >= 0.85 for r in results)
    ok_unexp = all(r["scores"]["unexplained_share"] <= 0.15 for r in results)
    ok_recall = all(r["scores"][c]["recall"] >= 0.7 for r in results for c in CAUSES if r["scores"][c]["support"])
    print(f"targets: macro-F1 >= 0.85 every seed: {ok_f1}; unexplained <= 15%: {ok_unexp}; "
          f"every recall >= 0.7: {ok_recall}; diagnosis (encoder apart) <= 2x epoch: {max(ratios) <= 2.0}")
    print(f"diagnosis time (encoder apart) / one training epoch, median over seeds: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
