"""Records and resume state at scale: 100,000 rows x 50 observations.

Synthetic observations (random row subsets per training window, a check of every row every
tenth observation) stand for a long tracked run. Timed, median of `--repeats`:
- `build_records` (the per-row columns and statistics from the observations),
- `save_records` with the resume state (Arrow records + `tracker_events.safetensors`),
- `load_records` and `load_tracker_state` (what `LearnTracker` reads on `resume_from_checkpoint`),
- baseline: the same state as JSON lists in `tracker_state.json` (hf_ilp's layout before the
  binary one, still readable), written with `json.dumps` and read with `load_tracker_state`.
Target: records and state load in seconds. The last line is the state load ratio JSON / binary.

    python benchmarks/bench_records.py                 # 100,000 x 50
    python benchmarks/bench_records.py --rows 10000
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hf_ilp.tracking.learn_check import TokenizedRows
from hf_ilp.tracking.records import STATE_FILE, build_records, load_records, load_tracker_state, save_records


def synthetic(n_rows, n_obs, seed=0):
    rng = np.random.default_rng(seed)
    rows = TokenizedRows(ids=[[0, 1]] * n_rows, targets=[[0, 1]] * n_rows, names=[f"sample-{i}" for i in range(n_rows)],
                 stages=[-1] * n_rows, hashes=[f"{i:016x}" for i in range(n_rows)])
    events = []
    for e in range(n_obs):
        final = e % 10 == 9
        idx = np.arange(n_rows) if final else np.flatnonzero(rng.random(n_rows) < 0.95)
        m = len(idx)
        events.append({"kind": "final" if final else "epoch", "step": 10 * e, "epoch": float(e), "stage": -1, "idx": idx,
                       "nll": rng.exponential(1.0, m), "token_acc": rng.random(m), "exact": rng.random(m) < 0.5,
                       "p_gold": rng.random(m), "pass_at_n": rng.random(m) if final else np.full(m, np.nan)})
    state = {"global_step": 10 * n_obs, "row_names": rows.names, "row_hashes": rows.hashes, "counter": 0,
             "step_offset": 0, "run": 0, "pending": {}, "events": events}
    return rows, events, state


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--observations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows, events, state = synthetic(args.rows, args.observations)
    n_obs = sum(len(ev["idx"]) for ev in events)
    print(f"{args.rows:,} rows, {args.observations} observations ({n_obs:,} row observations); median of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "records"
        t_build, records = timed(lambda: build_records(rows, events), args.repeats)
        t_save, _ = timed(lambda: save_records(out, records, meta={}, state=state), args.repeats)
        t_load, loaded = timed(lambda: load_records(out), args.repeats)
        t_columns, _ = timed(lambda: loaded.select_columns(["obs_step", "p_gold", "exact"]).to_dict(), args.repeats)
        t_state, _ = timed(lambda: load_tracker_state(out), args.repeats)
        print(f"binary: build_records {t_build:.2f} s, save_records with state {t_save:.2f} s, load_records {t_load:.2f} s "
              f"(+ three list columns to Python {t_columns:.2f} s), load_tracker_state {t_state:.2f} s")

        legacy = Path(tmp) / "legacy"
        legacy.mkdir()
        as_lists = {**state, "events": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ev.items()} for ev in events]}
        t_json_save, _ = timed(lambda: (legacy / STATE_FILE).write_text(json.dumps(as_lists)), args.repeats)
        t_json_state, _ = timed(lambda: load_tracker_state(legacy), args.repeats)
        print(f"JSON lists: write state {t_json_save:.2f} s, load_tracker_state {t_json_state:.2f} s "
              f"({(legacy / STATE_FILE).stat().st_size / 2**20:.0f} MiB vs "
              f"{sum(f.stat().st_size for f in out.iterdir()) / 2**20:.0f} MiB for the whole binary folder)")
    print(f"resume-state load ratio JSON lists / binary: {t_json_state / t_state:.1f}x (target: binary loads in seconds)")


if __name__ == "__main__":
    main()
