"""Diagnoser: give every unlearned training sample one cause, a confidence and the evidence.

Inputs: the fine-tuned model, the base model it started from, their tokenizer, the training
dataset (prompt-completion or conversational) and the LearnTracker records of the run. The
"learned" verdict is the records' final observation (`final_exact`), or `hf_ilp.check_learned`
on the fine-tuned model when the records lack it.

Each cause has its own signal module, scored in [0, 1] (0.5 = at its threshold, see
`DiagnoserConfig`). The causes overlap (a sample can lack a fact and also be rare), so the verdict follows a written
precedence, most direct evidence first, among the causes whose score reaches `min_score`:

    1. forgetting          observed directly: reproduced at an earlier observation, lost at the end
    2. data_inconsistency  structure of the data: a near-duplicate prompt carries another answer
    3. knowledge_conflict  the base model confidently prefers another answer
    4. missing_knowledge   the base model does not know the answer at all
    5. under_training      never learned while the loss still fell, or a rare template / long target

Forgetting observed within one stage only (learned and lost while the sample's own data was still
being trained) is a symptom: something in that same data pulled the sample away, and a
near-duplicate prompt with another answer is exactly such a pull. So for those samples
data_inconsistency comes first (`OBSERVATION_PRECEDENCE`); forgetting across stages (learned while
an earlier stage was trained, lost in a later one) keeps first place.

The first supported cause wins; `runner_up` is the next supported cause in that order, or, when
only one (or none) is supported, the best-scoring other cause, with its score, so that a reader
sees what else the evidence pointed to. A sample with no supported cause is `unexplained`.

    >>> from hf_ilp import diagnose, load_records
    >>> report = diagnose(model, base_model, tokenizer, train_dataset, load_records(out / "hf_ilp_records"))
    >>> report.save(out / "diagnosis")
"""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np

from hf_ilp.diagnosis._forward import AdaptersDisabled, greedy_continuations, next_token_choice, teacher_forced_stats
from hf_ilp.diagnosis._inputs import check_models, read_samples, tokenize_pairs
from hf_ilp.diagnosis.config import DiagnoserConfig
from hf_ilp.diagnosis.data_inconsistency import PromptIndex, data_inconsistency_signal, neighbourhood_density
from hf_ilp.diagnosis.forgetting import forgetting_signal, has_stages
from hf_ilp.diagnosis.knowledge_conflict import knowledge_conflict_signal
from hf_ilp.diagnosis.missing_knowledge import missing_knowledge_signal
from hf_ilp.diagnosis.probing import PromptTemplates, fewshot_sequences, probe_coverage
from hf_ilp.diagnosis.report import CAUSES, LEARNED, UNEXPLAINED, DiagnosisReport
from hf_ilp.diagnosis.under_training import under_training_signal

#: Verdict order when several causes are supported (most direct evidence first).
PRECEDENCE = ("forgetting", "data_inconsistency", "knowledge_conflict", "missing_knowledge", "under_training")
#: The order for a sample whose forgetting was observed within one stage only (see the module docstring).
OBSERVATION_PRECEDENCE = ("data_inconsistency", "forgetting", "knowledge_conflict", "missing_knowledge", "under_training")
assert sorted(PRECEDENCE) == sorted(CAUSES) == sorted(OBSERVATION_PRECEDENCE)

_RECORD_COLUMNS = ("id", "exact", "nll")


class Diagnoser:
    """Maps each unlearned sample to one ILP cause with its evidence (see the module docstring).

    Example:
        >>> diagnoser = Diagnoser(DiagnoserConfig(batch_size=32))
        >>> report = diagnoser.diagnose(model, base_model, tokenizer, train, records, probes=probes)
        >>> report.counts["knowledge_conflict"]
    """

    def __init__(self, config: DiagnoserConfig | None = None):
        self.config = config or DiagnoserConfig()

    def diagnose(self, model, base_model, tokenizer, dataset, records, probes=None, base_tokenizer=None):
        """Return a `DiagnosisReport` over every row of `dataset` (see the module docstring).

        `base_model`: the model fine-tuning started from; None for a PEFT `model`, whose base is
        then read through `disable_adapter()` (no second copy in memory).
        `records`: LearnTracker records (a Dataset, or the path of a records folder). `probes`:
        optional Dataset with `id`, `probe_prompts`, `probe_completions` (prerequisite knowledge
        per sample, read by the base model only). `base_tokenizer`: pass it when the base model
        has its own saved tokenizer, to check that both tokenizers agree.
        """
        cfg = self.config
        timings = {}
        t0 = time.perf_counter()
        notes = []
        if base_model is None:
            base_model = _base_inside(model)
            notes.append("base model: the fine-tuned PEFT model read with its adapters disabled (no second copy)")
        samples = read_samples(dataset, tokenizer)
        check_models(model, base_model, tokenizer, base_tokenizer)
        rec = _align_records(_load_records(records), samples.ids)
        learned = self._learned(rec, model, tokenizer, dataset, notes)
        unlearned = np.flatnonzero(~learned)
        q = len(unlearned)
        if not q:
            notes.append("the fine-tuned model reproduces every sample: nothing to diagnose")
        if not samples.has_stage:
            notes.append("the dataset has no 'stage' column: forgetting is judged across observation points only")
        elif not has_stages([rec[i] for i in unlearned]):
            notes.append("the records span a single stage: forgetting is judged across observation points only")
        scores = {c: np.zeros(q) for c in CAUSES}
        evidence = {}
        encoder, encoder_s = None, 0.0
        if q:
            # base-model knowledge: one paired pass of base and fine-tuned model over the unlearned rows
            t = time.perf_counter()
            sequences = [samples.sequences[i] for i in unlearned]
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            base = teacher_forced_stats(base_model, sequences, cfg.batch_size, pad, other=model,
                                        desc="base vs fine-tuned", progress=cfg.progress)
            probe_pairs = _probe_pairs(probes)
            probe_stats = None
            if probe_pairs is not None:
                probe_stats = self._probe_stats(probe_pairs, base_model, tokenizer, [samples.ids[i] for i in unlearned], pad)
                covered = int((~np.isnan(probe_stats["gm_p"])).sum())
                notes.append(f"prerequisite probes read for {covered} of {q} unlearned samples")
                evidence.update(probe_gold_prob=probe_stats["gm_p"], probe_alt_prob=probe_stats["alt_prob"])
            belief_bar = self._belief_bar(samples, probe_pairs, base_model, tokenizer, pad, notes)
            # knowledge read without oracle probes: the target after exemplars, the content in other templates
            shots = _FewShot(samples, learned, tokenizer, cfg)
            bar = belief_bar or cfg.confident_alternative_prob
            fewshot = shots.read(unlearned, probe_stats, base_model, pad, notes)
            coverage = shots.template_probe_coverage(unlearned, base_model, tokenizer, pad, bar)
            asked = int((~np.isnan(coverage)).sum())
            if asked:
                notes.append(f"template probes: {asked} of {q} unlearned samples asked in the dataset's other templates")
            timings["models_s"] = time.perf_counter() - t
            elsewhere = np.fmax(fewshot["gm_p"], coverage)
            scores["missing_knowledge"], ev = missing_knowledge_signal(base, cfg, probe_stats, belief_bar, elsewhere)
            evidence.update(ev)
            evidence.update(fewshot_gold_prob=fewshot["gm_p"], fewshot_exact=fewshot["exact"],
                            template_probe_coverage=coverage)
            scores["knowledge_conflict"], ev = knowledge_conflict_signal(base, cfg, probe_stats, belief_bar, elsewhere)
            evidence.update(ev)
            # data structure: near-duplicate prompts with other answers, template density
            t = time.perf_counter()
            index = PromptIndex(samples.prompts, cfg)
            notes += index.notes
            encoder, encoder_s = index.encoder, index.encoder_seconds
            scores["data_inconsistency"], ev = data_inconsistency_signal(
                index, samples.completions, samples.ids, unlearned, cfg)
            evidence.update(ev)
            density = neighbourhood_density(index, cfg)
            timings["neighbours_s"] = time.perf_counter() - t - encoder_s

            # training dynamics: forgetting, under-training
            rows = [rec[i] for i in unlearned]
            scores["forgetting"], ev = forgetting_signal(rows, cfg)
            evidence.update(ev)
            rank = _rank_share(density)[unlearned]
            lengths = np.array([float(row.get("n_completion_tokens") or len(seq[1]))
                                for row, seq in zip(rec, samples.sequences)])
            ratio = lengths[unlearned] / max(np.median(lengths), 1.0)
            scores["under_training"], ev = under_training_signal(rows, rank, ratio, cfg)
            evidence.update(ev)

            # readable evidence: what the models say instead, for the samples a reader is shown
            if cfg.continuation_tokens:
                t = time.perf_counter()
                shown = _shown_first([_unlearned_verdict(scores, evidence, k, cfg.min_score) for k in range(q)],
                                     cfg.continuation_per_cause)
                said = _what_they_say(model, base_model, tokenizer, [sequences[k] for k in shown],
                                      {key: base[key][shown] for key in ("diverges_at", "other_diverges_at")}, cfg, pad)
                evidence.update(_spread(said, shown, q))
                if len(shown) < q:
                    notes.append(f"what the models say instead: read for {len(shown)} of {q} unlearned samples, the "
                                 f"{cfg.continuation_per_cause} most confident of each cause (continuation_per_cause)")
                timings["continuations_s"] = time.perf_counter() - t
        else:
            belief_bar = None
        timings["encoder_s"] = encoder_s
        timings["total_s"] = time.perf_counter() - t0
        report = DiagnosisReport.from_rows(
            self._rows(samples, rec, learned, unlearned, scores, evidence, cfg.min_score),
            settings={**cfg.to_dict(), "precedence": list(PRECEDENCE), "encoder": encoder,
                      "belief_bar": cfg.confident_alternative_prob if belief_bar is None else belief_bar,
                      "belief_bar_calibrated": belief_bar is not None,
                      "observation_precedence": list(OBSERVATION_PRECEDENCE)},
            notes=notes,
        )
        report.summary["ids"] = "dataset" if samples.ids_given else "content_hash"
        report.summary["timings"] = timings
        if cfg.plots:
            from hf_ilp.diagnosis.display import plot_report

            tmp = tempfile.mkdtemp(prefix="hf_ilp_plots-")
            weakref.finalize(report, shutil.rmtree, tmp, True)
            report.plots = plot_report(report, tmp)
        return report

    # helpers ------------------------------------------------------------------------------------
    def _learned(self, rec, model, tokenizer, dataset, notes) -> np.ndarray:
        finals = [row.get("final_exact") for row in rec]
        if all(f is not None for f in finals):
            return np.array([bool(f) for f in finals])
        from hf_ilp.tracking import check_learned

        notes.append("'learned' judged by hf_ilp.check_learned on the fine-tuned model (records lack final_exact)")
        checked = check_learned(model, tokenizer, dataset, batch_size=self.config.batch_size,
                                progress=self.config.progress)
        return np.array([bool(x) for x in checked["exact"]])

    def _probe_stats(self, probe_pairs, base_model, tokenizer, ids, pad):
        """The base model on the probes of the samples `ids`, per sample: mean `gm_p` and `alt_prob`
        over its probes, and the least `exact` / `min_p` (all probes reproduced, the least firm
        step); NaN for a sample without probes."""
        pairs, owner = [], []
        for k, sid in enumerate(ids):
            found = probe_pairs.get(sid, ())
            pairs += found
            owner += [k] * len(found)
        out = {k: np.full(len(ids), np.nan) for k in ("gm_p", "alt_prob", "exact", "min_p")}
        if not pairs:
            return out
        stats = teacher_forced_stats(base_model, tokenize_pairs(tokenizer, *zip(*pairs)), self.config.batch_size, pad,
                                     desc="base on probes", progress=self.config.progress)
        owner = np.asarray(owner)
        counts = np.bincount(owner, minlength=len(ids))
        for key in ("gm_p", "alt_prob"):
            sums = np.bincount(owner, weights=stats[key], minlength=len(ids))
            out[key] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        for key in ("exact", "min_p"):
            np.fmin.at(out[key], owner, stats[key])
        return out

    def _belief_bar(self, samples, probe_pairs, base_model, tokenizer, pad, notes):
        """How firmly the base must hold an alternative answer for it to count as a belief (None:
        not calibrated, the fixed `confident_alternative_prob` and the survival test decide).

        The base reads a seeded sample of the rows where knowledge is asked plainly (a row's
        probes when it has some, else its own target); the rows it reproduces are what it
        demonstrably knows, and the `known_confidence_quantile` of their least firm token
        probability is the bar, never below `confident_alternative_prob`.
        """
        cfg = self.config
        floor = cfg.confident_alternative_prob
        n = len(samples.ids)
        if not cfg.calibration_rows or not n:
            return None
        pick = _calibration_pick(n, cfg.calibration_rows)
        ids = [samples.ids[i] for i in pick]
        stats = {"exact": np.full(len(pick), np.nan), "min_p": np.full(len(pick), np.nan)}
        if probe_pairs is not None:
            stats = self._probe_stats(probe_pairs, base_model, tokenizer, ids, pad)
        plain = np.flatnonzero(np.isnan(stats["exact"]))
        if len(plain):
            own = teacher_forced_stats(base_model, [samples.sequences[pick[k]] for k in plain], cfg.batch_size, pad,
                                       desc="base calibration", progress=cfg.progress)
            for key in ("exact", "min_p"):
                stats[key][plain] = own[key]
        known = stats["min_p"][stats["exact"] == 1.0]
        if len(known) < cfg.min_known_rows:
            notes.append(f"belief bar {floor:g} (confident_alternative_prob): the base reproduces only {len(known)} "
                         f"of {len(pick)} calibration rows, fewer than min_known_rows={cfg.min_known_rows}")
            return None
        bar = max(floor, float(np.quantile(known, cfg.known_confidence_quantile)))
        notes.append(f"belief bar {bar:.3g}: quantile {cfg.known_confidence_quantile:g} of the base's confidence on "
                     f"the {len(known)} of {len(pick)} calibration rows it reproduces (floor {floor:g})")
        return bar

    @staticmethod
    def _rows(samples, rec, learned, unlearned, scores, evidence, min_score):
        position = {int(i): k for k, i in enumerate(unlearned)}
        ev_names = list(evidence)
        text_cols = {name for name in ev_names if isinstance(evidence[name], list)}
        row_of = {sid: i for i, sid in enumerate(samples.ids)}
        rows = []
        for i, sid in enumerate(samples.ids):
            r = rec[i]
            row = {"id": sid, "row": i, "learned": bool(learned[i]), "cause": LEARNED, "confidence": float("nan"),
                   "runner_up": "", "runner_up_confidence": float("nan"), "stage": samples.stages[i],
                   "prompt": samples.shown[i][0], "completion": samples.shown[i][1]}
            k = position.get(i)
            if k is not None:
                row.update(_unlearned_verdict(scores, evidence, k, min_score))
            for c in PRECEDENCE:
                row[f"score_{c}"] = float(scores[c][k]) if k is not None else float("nan")
            for name in ev_names:
                if name in text_cols:
                    row[name] = evidence[name][k] if k is not None else ""
                else:
                    row[name] = float(evidence[name][k]) if k is not None else float("nan")
            if "dup_neighbor" in text_cols:
                other = row_of.get(row["dup_neighbor"])
                row["dup_prompt"], row["dup_completion"] = samples.shown[other] if other is not None else ("", "")
            for src, dst in (("confidence", "cartography_confidence"), ("variability", "cartography_variability"),
                             ("correctness", "cartography_correctness")):
                value = r.get(src)
                row[dst] = float(value) if value is not None else float("nan")
            # the sample's learning curve, one entry per observation of it
            row["curve_step"] = [int(x) for x in r.get("obs_step") or []]
            row["curve_exact"] = [bool(x) for x in r.get("exact") or []]
            row["curve_p_gold"] = [float(x) for x in r.get("p_gold") or []]
            rows.append(row)
        return rows


def diagnose(model, base_model, tokenizer, dataset, records, probes=None, config=None, base_tokenizer=None):
    """Diagnose every unlearned sample of a fine-tuning run; see `Diagnoser.diagnose`."""
    return Diagnoser(config).diagnose(model, base_model, tokenizer, dataset, records, probes=probes,
                                      base_tokenizer=base_tokenizer)


def _unlearned_verdict(scores, evidence, k, min_score) -> dict:
    """The verdict of the k-th unlearned sample, in the precedence its kind of forgetting calls for."""
    s = {c: float(scores[c][k]) for c in CAUSES}
    across_stages = not np.isnan(evidence["forgot_stage"][k])
    return _verdict(s, min_score, PRECEDENCE if across_stages else OBSERVATION_PRECEDENCE)


def _shown_first(verdicts, per_cause) -> np.ndarray:
    """Positions of the samples a reader is shown: the `per_cause` most confident of each verdict
    (all where `per_cause` is 0), in their original order."""
    if not per_cause:
        return np.arange(len(verdicts))
    by_cause = {}
    for k, v in enumerate(verdicts):
        by_cause.setdefault(v["cause"], []).append(k)
    keep = [k for ks in by_cause.values()
            for k in sorted(ks, key=lambda k: -verdicts[k]["confidence"])[:per_cause]]
    return np.array(sorted(keep), dtype=np.int64)


def _spread(said: dict, shown, q: int) -> dict:
    """Columns over all q unlearned samples from those of the `shown` ones ('' / NaN elsewhere)."""
    out = {}
    for name, values in said.items():
        if isinstance(values, list):
            column = [""] * q
            for k, value in zip(shown, values):
                column[k] = value
        else:
            column = np.full(q, np.nan)
            column[shown] = values
        out[name] = column
    return out


def _verdict(scores: dict, min_score: float, order=PRECEDENCE) -> dict:
    """Cause, confidence, runner-up and its score from per-cause scores, by `order`.

    An unexplained sample's confidence is 1 - its best cause score (how clearly nothing fits).
    """
    supported = [c for c in order if scores[c] >= min_score]
    if supported:
        cause = supported[0]
        others = supported[1:] or sorted((c for c in order if c != cause), key=lambda c: -scores[c])
    else:
        cause = UNEXPLAINED
        others = sorted(order, key=lambda c: -scores[c])
    runner = others[0]
    return {"cause": cause, "confidence": scores[cause] if cause != UNEXPLAINED else 1.0 - max(scores.values()),
            "runner_up": runner, "runner_up_confidence": scores[runner]}


def _what_they_say(model, base_model, tokenizer, sequences, base, cfg, pad) -> dict:
    """Text evidence of each unlearned sample, per model (`ft_*` the fine-tuned model, `base_*` the
    base): where the model first leaves the target under teacher forcing (`*_diverges_at`, in
    completion tokens; the completion's length when only its stop is missed), the target's next
    `continuation_tokens` tokens from there (`*_expected`) and what the model says there instead
    (`*_says`, its greedy continuation)."""
    out = {}
    k = cfg.continuation_tokens
    for name, m, at in (("ft", model, base["other_diverges_at"]), ("base", base_model, base["diverges_at"])):
        start = [len(c) if np.isnan(d) else int(d) for d, (_, c) in zip(at, sequences)]
        said = greedy_continuations(m, [list(p) + list(c[:s]) for (p, c), s in zip(sequences, start)], k,
                                    cfg.batch_size, pad, tokenizer.eos_token_id)
        out[f"{name}_diverges_at"] = np.asarray(start, dtype=float)
        out[f"{name}_expected"] = [_decode(tokenizer, c[s:s + k]) if s < len(c) else (tokenizer.eos_token or "")
                                   for (_, c), s in zip(sequences, start)]
        out[f"{name}_says"] = [_decode(tokenizer, tokens) for tokens in said]
    return out


def _decode(tokenizer, ids) -> str:
    """The tokens as text, special tokens included (a reader sees where a model stops)."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


class _FewShot:
    """Few-shot sequences and template probes of the training rows (`hf_ilp.diagnosis.probing`)."""

    def __init__(self, samples, learned, tokenizer, config):
        self.samples, self.config = samples, config
        self.templates = PromptTemplates(samples.prompts, config.fewshot_frame_share, learned)
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def read(self, rows, probe_stats, base_model, pad, notes):
        """The base on the targets of `rows` after exemplars (`teacher_forced_stats` columns, NaN where not
        read): the rows without user probes, once `_helps` has shown that exemplars help this model."""
        cfg = self.config
        out = {k: np.full(len(rows), np.nan) for k in ("gm_p", "alt_prob", "exact", "min_p")}
        todo = np.arange(len(rows)) if probe_stats is None else np.flatnonzero(np.isnan(probe_stats["gm_p"]))
        if not cfg.fewshot_examples or not len(todo) or not self._helps(base_model, pad, notes):
            return out
        stats = teacher_forced_stats(base_model, self.sequences([rows[k] for k in todo]), cfg.batch_size, pad,
                                     desc="base, few-shot", progress=cfg.progress)
        for key in out:
            out[key][todo] = stats[key]
        notes.append(f"{len(todo)} unlearned samples read by the base model after {cfg.fewshot_examples} exemplars "
                     "(other training rows, of their own prompt template first)")
        return out

    def _helps(self, base_model, pad, notes) -> bool:
        """Whether exemplars show the base's knowledge at least as well as the bare prompt does, on
        `fewshot_check_rows` calibration rows: a model that does not learn in context (a small model
        trained on single lines) reads a long context worse than none, and reading it is wasted time."""
        cfg = self.config
        if not cfg.fewshot_check_rows:
            return True
        pick = _calibration_pick(len(self.samples.ids), cfg.fewshot_check_rows)
        zero = teacher_forced_stats(base_model, [self.samples.sequences[i] for i in pick], cfg.batch_size, pad,
                                    desc="base, zero-shot", progress=cfg.progress)["exact"]
        few = teacher_forced_stats(base_model, self.sequences(pick), cfg.batch_size, pad,
                                   desc="base, few-shot", progress=cfg.progress)["exact"]
        helps = bool(np.nansum(few) >= np.nansum(zero))
        notes.append(f"few-shot reading {'used' if helps else 'not used'}: the base reproduces {int(np.nansum(few))} "
                     f"of {len(pick)} calibration rows after {cfg.fewshot_examples} exemplars, {int(np.nansum(zero))} "
                     "without")
        return helps

    def template_probe_coverage(self, rows, base_model, tokenizer, pad, bar):
        """Per row of `rows`: the share of its completion the base gives when its content is asked in
        the dataset's other templates (`PromptTemplates.probe_prompts`); NaN where none applies."""
        prompts = [self.templates.probe_prompts(int(i)) for i in rows]
        flat = [p for ps in prompts for p in ps]
        out = np.full(len(rows), np.nan)
        if not flat:
            return out
        ids = [prompt_ids for prompt_ids, _ in tokenize_pairs(tokenizer, flat, [" x"] * len(flat))]
        tokens, probs = next_token_choice(base_model, ids, self.config.batch_size, pad)
        start = 0
        for k, (i, ps) in enumerate(zip(rows, prompts)):
            answers = list(zip(tokens[start:start + len(ps)], probs[start:start + len(ps)]))
            start += len(ps)
            out[k] = probe_coverage(self.samples.sequences[int(i)][1], answers, bar)
        return out

    def sequences(self, rows):
        cfg = self.config
        chosen = [self.templates.exemplars(int(i), cfg.fewshot_examples) for i in rows]
        return fewshot_sequences(self.samples.sequences, [int(i) for i in rows], chosen, self.bos, self.eos,
                                 cfg.fewshot_max_tokens)


def _base_inside(model):
    """The base model of a PEFT fine-tuning run, as a view of `model` with its adapters disabled."""
    if not (hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")):
        raise ValueError(
            "base_model is None: pass the model fine-tuning started from, or a PEFT model (LoRA, ...) whose "
            "adapters hold the fine-tuning, whose base is then read with the adapters disabled"
        )
    return AdaptersDisabled(model)


def _calibration_pick(n: int, rows: int) -> np.ndarray:
    """The seeded sample of row indices the base model reads to calibrate itself."""
    return np.sort(np.random.default_rng(0).choice(n, size=min(n, rows), replace=False))


def _probe_pairs(probes):
    """{sample id: [(probe prompt, probe completion), ...]} from a probes Dataset, or None."""
    if probes is None:
        return None
    missing = [c for c in ("id", "probe_prompts", "probe_completions") if c not in probes.column_names]
    if missing:
        raise ValueError(f"probes lack columns {missing}; expected 'id', 'probe_prompts', 'probe_completions'")
    out = {}
    for row in probes:
        prompts, completions = row["probe_prompts"], row["probe_completions"]
        if len(prompts) != len(completions):
            raise ValueError(f"probes for sample {row['id']!r}: {len(prompts)} prompts but {len(completions)} completions")
        out[str(row["id"])] = list(zip(prompts, completions))
    return out


def _load_records(records):
    if isinstance(records, (str, Path)):
        from hf_ilp.tracking import load_records

        return load_records(records)
    return records


def _align_records(records, ids):
    """Record rows in dataset order; a clear error when they do not cover the dataset."""
    columns = getattr(records, "column_names", None) or (list(records[0]) if len(records) else [])
    missing_cols = [c for c in _RECORD_COLUMNS if c not in columns]
    if missing_cols:
        raise ValueError(f"records lack columns {missing_cols}; pass the LearnTracker records of this run "
                         "(hf_ilp.load_records(output_dir / 'hf_ilp_records'))")
    rows = records.to_list() if hasattr(records, "to_list") else records  # a Dataset: converted at once, not row by row
    by_id = {str(row["id"]): row for row in rows}
    absent = [i for i in ids if i not in by_id]
    if absent:
        raise ValueError(
            f"records do not match the dataset: {len(absent)} of {len(ids)} dataset ids have no record "
            f"(e.g. {absent[:3]}); records hold {len(by_id)} ids (e.g. {list(by_id)[:3]}). Pass the records "
            "of a run on this same dataset"
        )
    return [by_id[i] for i in ids]


def _rank_share(values) -> np.ndarray:
    """Share of entries strictly below each value (0 = the smallest); NaN stays NaN."""
    v = np.asarray(values, dtype=float)
    order = np.sort(v[~np.isnan(v)])
    rank = np.searchsorted(order, v, side="left") / max(len(order), 1)
    return np.where(np.isnan(v), np.nan, rank)
