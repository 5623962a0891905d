"""Interventions as causal tests on ILP-World: does fixing a diagnosed cause fix its samples?

For each cause: fine-tune the world's base model (sequential stages, LearnTracker), diagnose,
apply that cause's intervention to the samples the Diagnoser attributed to it, and judge every
training row again with the exact learn-check. Scores use the world's planted `world_cause`
(only here, never in diagnosis or intervention code):

- own: planted samples of the cause left unlearned, before -> after (target: >= 50% removed);
- others: unlearned planted samples of the other causes, before -> after (target: <= +10%);
- normal: share of normal samples learned after the intervention (target: >= 95%).

The `data_inconsistency` row is the intervention's default, the paper's procedure: the base model
judges each conflicting group (its likelihood, with a margin), the member it rejects is dropped and
the groups it cannot decide are bucketed; `data_inconsistency:bucket` buckets every group and drops
nothing (`data_inconsistency:resolve` names the default too). For both it also prints how often the
model answers the disputed facts as the corpus states them (each pair's fact asked with both QA
templates and as a statement): the paper's gains for bucketing are in accuracy, not in reproducing
both members of a pair, which one prompt with two answers cannot do.

`data_inconsistency:both_right` is the paper's other case: pairs whose two answers are both right.
The world's planted pairs have one wrong member, so this variant builds the same world with
`--both-right-pairs` more pairs (`build_world(both_right_pairs=n)`: a fact the corpus states with two
values, asked verbatim with each), fine-tunes it plainly, diagnoses it, and runs the default and
the bucket-only intervention. They are scored on held-out questions about those facts (the other
QA template and the statement; either value counts as right), greedily and as the probability that
one sample at temperature 1 is a valid value, against the plain SFT run on the same data; no model
can reproduce both members of one prompt, so the pairs' own rows are not the score.

under_training's early stopping reads the world's validation rows about facts the corpus states
(`World.stopping_validation`).

    nice -n 10 python benchmarks/bench_interventions.py --size small
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

CAUSE_ORDER = ("missing_knowledge", "knowledge_conflict", "data_inconsistency", "forgetting", "under_training")
RUN_ORDER = ("data_inconsistency", "data_inconsistency:bucket", "data_inconsistency:both_right", "forgetting",
             "under_training", "missing_knowledge", "knowledge_conflict")


def _unlearned_by_cause(model, tokenizer, train, world_cause, kept=None):
    """Unlearned planted samples per cause and the learned share of normal samples, over the rows
    still in the training set (`kept`: ids; default all)."""
    from hf_ilp import check_learned

    verdict = check_learned(model, tokenizer, train, progress=False)
    exact = {i: e for i, e in zip(verdict["id"], verdict["exact"]) if kept is None or i in kept}
    counts = {c: 0 for c in CAUSE_ORDER}
    normal = [exact[i] for i, c in world_cause.items() if c == "" and i in exact]
    for i, c in world_cause.items():
        if c and i in exact and not exact[i]:
            counts[c] += 1
    return counts, sum(normal) / len(normal), exact


def _disputed_facts(world):
    """Each planted inconsistent pair's fact, asked three ways with the answer the corpus states:
    both QA templates (one of them, or both, is the pair's own prompt) and the corpus statement."""
    from datasets import Dataset

    from hf_ilp.world.evaluate import inconsistent_members
    from hf_ilp.world.generate import QA_TEMPLATES

    right = inconsistent_members(world)
    rows = []
    for row, probe in zip(world.train, world.probes):
        if not right.get(row["id"]):
            continue  # not a pair member, or the wrong one: its value is not the corpus's
        statement, said = probe["probe_prompts"][0], probe["probe_completions"][0]
        _, rel, _, ent, _ = statement.split()
        for k, template in enumerate(QA_TEMPLATES):
            rows.append({"id": f"{row['id']}-qa{k}", "prompt": template.format(rel=rel, ent=ent), "completion": row["completion"]})
        rows.append({"id": f"{row['id']}-statement", "prompt": statement, "completion": said})
    return Dataset.from_list(rows)


def _fact_accuracy(model, tokenizer, facts):
    from hf_ilp import check_learned

    return sum(check_learned(model, tokenizer, facts, progress=False)["exact"]) / len(facts)


def _both_right_pairs(world):
    """The pairs of a both-right world whose two members the corpus both states: [(id, id), ...]."""
    from collections import defaultdict

    from hf_ilp.world.evaluate import inconsistent_members

    right = inconsistent_members(world)
    by_prompt = defaultdict(list)
    for row in world.train:
        if row["world_cause"] == "data_inconsistency":
            by_prompt[row["prompt"]].append(row["id"])
    return [tuple(ids) for ids in by_prompt.values() if len(ids) == 2 and all(right[i] for i in ids)]


def _held_out_questions(world, pairs):
    """Each both-right fact asked the ways its pair does not ask it: the other QA template and the corpus
    statement. One row per (question, value): `question` names the question, either value is right."""
    from datasets import Dataset

    from hf_ilp.world.generate import PROBE, QA_TEMPLATES

    index = {i: k for k, i in enumerate(world.train["id"])}
    rows = []
    for q, (a, b) in enumerate(pairs):
        values = [world.train[index[i]]["completion"] for i in (a, b)]
        prompt = world.train[index[a]]["prompt"]
        _, rel, _, ent, _ = world.probes[index[a]]["probe_prompts"][0].split()
        asked = [t.format(rel=rel, ent=ent) for t in QA_TEMPLATES]
        for kind, text, suffix in [("qa", asked[1 - asked.index(prompt)], ""),
                                   ("statement", PROBE.format(rel=rel, ent=ent), " .")]:
            for v, value in enumerate(values):
                rows.append({"id": f"{a}-{kind}-{v}", "question": f"{a}-{kind}", "prompt": text,
                             "completion": value + suffix})
    return Dataset.from_list(rows)


def _either_value_accuracy(model, tokenizer, questions):
    """(right, asked, sampled): held-out questions answered greedily with either valid value, and the
    mean probability that one sample at temperature 1 is a valid value (the sum of the values' exact
    probabilities: distinct completions are disjoint events), which still moves where greedy is at 100%."""
    from hf_ilp import check_learned

    verdict = check_learned(model, tokenizer, questions, progress=False)
    right, mass = {}, {}
    for q, e, p in zip(questions["question"], verdict["exact"], verdict["p_gold"]):
        right[q] = right.get(q, False) or bool(e)
        mass[q] = mass.get(q, 0.0) + float(p)
    return sum(right.values()), len(right), sum(mass.values()) / len(mass)


def _both_right(a, cfg, out):
    """The both-right variant: its own world, plain SFT, diagnosis, then the default and the bucket-only
    intervention, scored on the held-out questions about the both-right facts."""
    from hf_ilp import LearnTracker
    from hf_ilp.diagnosis import diagnose
    from hf_ilp.interventions import intervene
    from hf_ilp.training import train_stages
    from hf_ilp.world import build_world

    t0 = time.perf_counter()
    world = build_world(a.size, seed=a.seed, both_right_pairs=a.both_right_pairs)
    tok = world.tokenizer
    train = world.train.remove_columns("world_cause")
    pairs = _both_right_pairs(world)
    questions = _held_out_questions(world, pairs)
    tracker = LearnTracker(dataset=train)
    base = world.load_base_model()
    sft = train_stages(world.load_base_model(), tok, train, world.sft_config(out / "both_right-baseline"),
                       callbacks=[tracker]).model
    report = diagnose(sft, base, tok, train, tracker.records, probes=world.probes)
    flagged = set(report.by_cause("data_inconsistency")["id"])
    found = {"base model": _either_value_accuracy(base, tok, questions),
             "plain SFT": _either_value_accuracy(sft, tok, questions)}
    handled = {}
    for name, strategy in (("data_inconsistency (default)", "resolve"), ("data_inconsistency:bucket", "bucket")):
        res = intervene("data_inconsistency", report, train, out / f"intervention-both_right-{strategy}",
                        base_model=world.base_model_path, tokenizer=tok, args=world.sft_config(out / "unused"),
                        config=dataclasses.replace(cfg, inconsistency_strategy=strategy))
        found[name] = _either_value_accuracy(res.model, tok, questions)
        dropped = set(res.removed_ids)
        bucketed = {i for g in res.manifest["details"]["bucketed_groups"] for i in g}
        handled[name] = {"resolved": sum(bool(dropped & set(p)) for p in pairs),
                         "bucketed": sum(set(p) <= bucketed for p in pairs)}
        handled[name]["untouched"] = len(pairs) - handled[name]["resolved"] - handled[name]["bucketed"]
    return {"pairs": len(pairs), "flagged_pair_members": sum(i in flagged for p in pairs for i in p),
            "questions": len(set(questions["question"])), "accuracy": found, "handled": handled,
            "seconds": time.perf_counter() - t0}


def _print_both_right(a, br):
    print(f"both-right pairs (ILP-World {a.size} seed {a.seed} plus {br['pairs']} pairs whose two answers the corpus "
          f"states alike; {br['flagged_pair_members']} of their {2 * br['pairs']} rows diagnosed data_inconsistency): "
          f"held-out accuracy on their facts, {br['questions']} questions (the other QA template and the statement; "
          f"either value counts as right), greedy and of one sample at T=1, against plain SFT on the same data "
          f"(no target)")
    for name, (right, asked, sampled) in br["accuracy"].items():
        how = br["handled"].get(name)
        note = (f"; pairs bucketed {how['bucketed']}, resolved (a member dropped) {how['resolved']}, "
                f"neither {how['untouched']}" if how else "")
        print(f"  both-right held-out accuracy, {name:<30} greedy {right:>3}/{asked} ({right / asked:.0%}), "
              f"one sample at T=1 {sampled:.1%}{note}")


def _save(out, a, before, normal_before, report, results, both_right=None):
    (out / "bench_interventions.json").write_text(json.dumps(
        {"size": a.size, "seed": a.seed, "before": before, "normal_before": normal_before,
         "diagnosed": report.counts, "results": results, "both_right": both_right}, indent=2, default=str))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=["tiny", "small"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--causes", default=",".join(RUN_ORDER),
                   help="causes to intervene on, in order; 'data_inconsistency' is the default intervention "
                        "(resolve with the base model as judge, bucket what it cannot decide; ':resolve' names it "
                        "too), 'data_inconsistency:bucket' buckets every group, 'data_inconsistency:both_right' "
                        "scores both on pairs whose two answers are right (a world of its own, see above)")
    p.add_argument("--both-right-pairs", type=int, default=8,
                   help="both-right pairs added to the world of data_inconsistency:both_right (ILP-World small "
                        "seeds 0-5 have 8-12 facts free for them)")
    p.add_argument("--out", default=None, help="where runs are written (default: a temporary folder)")
    p.add_argument("--knowledge-repeats", type=int, default=4,
                   help="times each retrieved document appears in the CPT mix (a tiny model needs many exposures)")
    p.add_argument("--cpt-epochs", type=float, default=3.0)
    p.add_argument("--cpt-batch-size", type=int, default=64)
    a = p.parse_args(argv)

    from hf_ilp import LearnTracker
    from hf_ilp.diagnosis import diagnose
    from hf_ilp.interventions import InterventionConfig, intervene
    from hf_ilp.training import train_stages
    from hf_ilp.world import build_world

    out = Path(a.out or tempfile.mkdtemp(prefix="bench_interventions-"))
    t0 = time.perf_counter()
    world = build_world(a.size, seed=a.seed)
    tok = world.tokenizer
    world_cause = dict(zip(world.train["id"], world.train["world_cause"]))
    train = world.train.remove_columns("world_cause")  # nothing below the scoring sees the truth
    val = world.stopping_validation()  # under_training stops on it (the rows whose facts the corpus states)
    print(f"ILP-World {a.size} seed {a.seed}: {len(train)} train rows, built/loaded in {time.perf_counter() - t0:.0f} s")

    tracker = LearnTracker(dataset=train)
    base = world.load_base_model()
    sft = train_stages(world.load_base_model(), tok, train, world.sft_config(out / "baseline"), callbacks=[tracker]).model
    report = diagnose(sft, base, tok, train, tracker.records, probes=world.probes)
    report.save(out / "baseline" / "report")
    before, normal_before, exact_before = _unlearned_by_cause(sft, tok, train, world_cause)
    disputed = _disputed_facts(world)  # what the paper measures bucketing by: the facts, not the pairs
    disputed_before = _fact_accuracy(sft, tok, disputed)
    print(f"baseline: unlearned planted {before}, normals learned {normal_before:.3f}; diagnosed {report.counts}",
          flush=True)

    cfg = InterventionConfig(knowledge_repeats=a.knowledge_repeats, cpt_epochs=a.cpt_epochs,
                             cpt_batch_size=a.cpt_batch_size)
    # documents to retrieve from: the world's complete corpus (it states the facts the SFT set needs);
    # general text: the world's own pre-training corpus, as a user would mix in their general data
    source = world.knowledge_source()
    general = world.corpus["text"]
    results, both_right = [], None
    for spec in a.causes.split(","):
        cause, _, variant = spec.partition(":")
        if spec == "data_inconsistency:both_right":
            try:
                both_right = _both_right(a, cfg, out)
            except ValueError as err:
                print(f"{spec}: not run: {err}")
                continue
            _print_both_right(a, both_right)
            _save(out, a, before, normal_before, report, results, both_right)
            continue
        if variant and (cause != "data_inconsistency" or variant not in ("resolve", "bucket")):
            print(f"{spec}: not run: unknown variant (data_inconsistency has :bucket, :resolve and :both_right)")
            continue
        t = time.perf_counter()
        run_cfg = dataclasses.replace(cfg, inconsistency_strategy="bucket") if variant == "bucket" else cfg
        try:
            res = intervene(cause, report, train, out / f"intervention-{cause}{'-' + variant if variant else ''}",
                            base_model=world.base_model_path, model=sft, tokenizer=tok,
                            args=world.sft_config(out / "unused"), eval_dataset=val, knowledge_source=source,
                            general_texts=general, config=run_cfg)
        except ValueError as err:
            print(f"{spec}: not run: {err}")
            continue
        # resolve drops rows from the training set: score the rows still trained on. (under_training's
        # extra epochs run on a targeted subset on top of the full run: every row is scored.)
        kept = set(res.load_train_dataset()["id"]) if cause == "data_inconsistency" else set(train["id"])
        after, normal_after, exact_after = _unlearned_by_cause(res.model, tok, train, world_cause, kept)
        # the intervention itself: planted samples of the cause that the report attributed to it
        targeted = [i for i in report.by_cause(cause)["id"] if world_cause[i] == cause]
        tgt_b = sum(not exact_before[i] for i in targeted)
        tgt_a = sum(not exact_after[i] for i in targeted if i in exact_after)
        own_b, own_a = before[cause], after[cause]
        oth_b = sum(v for c, v in before.items() if c != cause)
        oth_a = sum(v for c, v in after.items() if c != cause)
        row = {
            "cause": spec, "dropped": len(set(train["id"]) - kept), "flagged": report.counts[cause], "own_before": own_b, "own_after": own_a,
            "own_removed": (own_b - own_a) / own_b if own_b else float("nan"),
            "others_before": oth_b, "others_after": oth_a,
            "others_change": (oth_a - oth_b) / oth_b if oth_b else float("nan"),
            "normal_learned": normal_after, "targeted_before": tgt_b, "targeted_after": tgt_a, "after": after, "seconds": time.perf_counter() - t,
            "details": {k: v for k, v in res.manifest["details"].items() if k != "resampling_history"},
        }
        if cause == "data_inconsistency":
            row["disputed_facts"] = (disputed_before, _fact_accuracy(res.model, tok, disputed))
        results.append(row)
        print(f"{spec}: {res.manifest['method']} in {row['seconds']:.0f} s; unlearned planted after {after}, "
              f"normals learned {normal_after:.3f}", flush=True)
        _save(out, a, before, normal_before, report, results, both_right)

    print()
    print(f"normals learned before: {normal_before:.0%}; 'targeted' = planted samples of the cause that the "
          f"report attributed to it (what the intervention acted on)")
    header = f"{'cause':<27}{'flagged':>8}{'own before':>11}{'own after':>10}{'removed':>9}{'targeted b->a':>15}" \
             f"{'others b->a':>13}{'change':>8}{'normal':>8}"
    print(header)
    print("-" * len(header))
    met = []
    for r in results:
        ok = (r["own_removed"] >= 0.5, r["others_change"] <= 0.10, r["normal_learned"] >= 0.95)
        met.append(all(ok))
        print(f"{r['cause']:<27}{r['flagged']:>8}{r['own_before']:>11}{r['own_after']:>10}{r['own_removed']:>9.0%}"
              f"{str(r['targeted_before']) + '->' + str(r['targeted_after']):>15}"
              f"{str(r['others_before']) + '->' + str(r['others_after']):>13}{r['others_change']:>+8.0%}"
              f"{r['normal_learned']:>8.0%}  {'ok' if all(ok) else 'MISSED ' + ','.join(n for n, o in zip(('own', 'others', 'normal'), ok) if not o)}")
    for r in results:
        if "disputed_facts" in r:
            b, a_ = r["disputed_facts"]
            print(f"{r['cause']}: the disputed facts answered as the corpus states them (both QA templates and the "
                  f"statement, {len(disputed)} questions): {b:.0%} -> {a_:.0%} (no target)")
    dropped = [f"{r['cause']}: {r['dropped']} rows dropped (scored on the rows kept)" for r in results if r["dropped"]]
    if dropped:
        print("; ".join(dropped))
    if both_right is not None:
        _print_both_right(a, both_right)
    print(f"\nruns and figures in {out}")
    print(f"targets met: {sum(met)}/{len(met)} interventions (>=50% own removed, others <=+10%, normals >=95%)")


if __name__ == "__main__":
    main()
