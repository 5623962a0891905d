"""The records' columns and the tracker's resume state, checked against a row-by-row reading of the events."""

import json

import numpy as np
import pytest

from hf_ilp.tracking.learn_check import TokenizedRows
from hf_ilp.tracking.records import EVENTS_FILE, STATE_FILE, build_records, load_records, load_tracker_state, save_records


def _rows(n):
    return TokenizedRows(
        ids=[[1, 2, 3]] * n,
        targets=[[0, 0, 1] if i % 7 else [0, 0, 0] for i in range(n)],
        names=[f"row-{i}" for i in range(n)],
        stages=[i % 3 - 1 for i in range(n)],
        hashes=[f"{i:016x}" for i in range(n)],
    )


def _events(n, n_events, seed):
    """Observation windows over random subsets, `final` checks over every row, a few NaN losses."""
    rng = np.random.default_rng(seed)
    events, step = [], 0
    for e in range(n_events):
        step += int(rng.integers(0, 3))  # two windows may share a step: the slope then sees one step twice
        kind = "final" if e % 4 == 3 else rng.choice(["epoch", "steps"])
        idx = np.arange(n) if kind == "final" else np.sort(rng.choice(n, size=int(rng.integers(0, n)), replace=False))
        idx = idx[idx % 11 != 5]  # some rows are never observed
        nll = rng.exponential(1.0, len(idx))
        nll[rng.random(len(idx)) < 0.03] = np.nan
        events.append({
            "kind": str(kind), "step": step, "epoch": e / 2, "stage": e // 5, "idx": idx, "nll": nll,
            "token_acc": rng.random(len(idx)), "exact": rng.random(len(idx)) < 0.5, "p_gold": rng.random(len(idx)),
            "pass_at_n": rng.random(len(idx)) if kind == "final" else np.full(len(idx), np.nan),
        })
    return events


def _by_row(rows, events, window):
    """Each row's record computed on its own, the way the schema's table defines the columns."""
    out = []
    for i in range(len(rows.names)):
        obs = [(ev, j) for ev in events for j in np.flatnonzero(ev["idx"] == i)]
        p = np.array([ev["p_gold"][j] for ev, j in obs])
        ex = np.array([bool(ev["exact"][j]) for ev, j in obs], dtype=bool)
        steps = np.array([ev["step"] for ev, _ in obs], dtype=float)[-window:]
        nll = np.array([ev["nll"][j] for ev, j in obs])[-window:]
        finals = [(ev, j) for ev, j in obs if ev["kind"] == "final"]
        last = finals[-1] if finals else (obs[-1] if obs else None)
        if len(np.unique(steps)) >= 2 and np.all(np.isfinite(nll)):
            slope = np.polyfit(steps, nll, 1)[0]
        else:
            slope = np.nan
        out.append({
            "obs_step": [ev["step"] for ev, _ in obs], "obs_kind": [ev["kind"] for ev, _ in obs],
            "obs_stage": [ev["stage"] for ev, _ in obs], "exact": ex.tolist(),
            "confidence": p.mean() if len(p) else np.nan, "variability": p.std() if len(p) else np.nan,
            "correctness": ex.mean() if len(ex) else np.nan,
            "first_learned_step": obs[int(np.argmax(ex))][0]["step"] if ex.any() else -1,
            "forgetting_events": int(np.sum(ex[:-1] & ~ex[1:])), "loss_slope": slope,
            "final_exact": bool(last[0]["exact"][last[1]]) if last else False,
            "final_p_gold": last[0]["p_gold"][last[1]] if last else np.nan,
            "final_pass_at_n": finals[-1][0]["pass_at_n"][finals[-1][1]] if finals else np.nan,
            "learned_ever": bool(ex.any()),
        })
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_records_equal_the_row_by_row_definition(seed):
    rows = _rows(60)
    events = _events(60, 11, seed)
    records = build_records(rows, events, slope_window=3).to_list()
    expected = _by_row(rows, events, 3)
    for got, want in zip(records, expected, strict=True):
        for key, value in want.items():
            if isinstance(value, list):
                assert got[key] == value, key
            else:
                np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=key)
    assert [r["n_completion_tokens"] for r in records] == rows.n_targets().tolist()
    assert [r["stage"] for r in records] == rows.stages


def test_no_observation_gives_empty_lists():
    records = build_records(_rows(4), [], slope_window=3).to_list()
    assert all(r["obs_step"] == [] and r["first_learned_step"] == -1 and not r["learned_ever"] for r in records)
    assert all(np.isnan(r["confidence"]) and np.isnan(r["final_p_gold"]) for r in records)


def test_state_round_trips_through_the_binary_files(tmp_path):
    rows, events = _rows(30), _events(30, 6, 2)
    pending = {3: (17, 0.5, 1.0, True, 0.6), 9: (18, float("nan"), 0.0, False, 0.0)}
    state = {"global_step": 12, "row_names": rows.names, "counter": 40, "pending": pending, "events": events}
    save_records(tmp_path / "rec", build_records(rows, events), meta={}, state=state)
    assert (tmp_path / "rec" / EVENTS_FILE).is_file()
    assert json.loads((tmp_path / "rec" / STATE_FILE).read_text())["events"][0]["size"] == len(events[0]["idx"])
    loaded = load_tracker_state(tmp_path / "rec")
    assert loaded["global_step"] == 12 and loaded["counter"] == 40 and loaded["row_names"] == rows.names
    assert loaded["pending"].keys() == pending.keys() and loaded["pending"][3] == pending[3]
    assert loaded["pending"][9][0] == 18 and np.isnan(loaded["pending"][9][1])
    for a, b in zip(loaded["events"], events, strict=True):
        assert {k: a[k] for k in ("kind", "step", "epoch", "stage")} == {k: b[k] for k in ("kind", "step", "epoch", "stage")}
        for key in ("idx", "nll", "token_acc", "exact", "p_gold", "pass_at_n"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # (as JSON text, where NaN equals NaN)
    assert json.dumps(load_records(tmp_path / "rec").to_list()) == json.dumps(build_records(rows, events).to_list())


def test_state_of_the_json_lists_layout_still_loads(tmp_path):
    """Checkpoints written before the binary layout (everything in tracker_state.json) resume."""
    events = _events(10, 3, 3)
    old = {"global_step": 5, "pending": {"2": [4, 0.1, 1.0, True, 0.9]},
           "events": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ev.items()} for ev in events]}
    (tmp_path / STATE_FILE).write_text(json.dumps(old))
    loaded = load_tracker_state(tmp_path)
    assert loaded["pending"] == {2: (4, 0.1, 1.0, True, 0.9)}
    np.testing.assert_array_equal(loaded["events"][1]["idx"], events[1]["idx"])
    assert loaded["events"][1]["exact"].dtype == bool
    assert load_tracker_state(tmp_path / "absent") is None
