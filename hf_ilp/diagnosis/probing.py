"""Few-shot knowledge probing: does the base model know a sample's answer once it has seen the format?

A base model asked a question in a prompt frame it never saw gives the right answer a low
probability even when it knows the fact; read zero-shot, that is "missing knowledge". SliCK
(Gekhman et al., "Does Fine-Tuning LLMs on New Knowledge Encourage Hallucinations?", 2024)
separates the two by prepending a few question-answer exemplars: exemplars of the same template
teach the format without teaching the fact. Here the exemplars are other training rows:

- a prompt's *template* is its word sequence with the rare words (those in fewer than
  `fewshot_frame_share` of the prompts, at least 3: names, numbers, the content) masked, so rows
  that ask the same kind of question share it;
- each sample gets `fewshot_examples` exemplars, rows of its own template first (rows the
  fine-tuned model reproduces before the rest), then rows of any template; never a row that
  shares one of its rare words (the other member of a duplicated question, a paraphrase, anything
  about the same entity), which could carry the answer;
- the exemplars' token ids (prompt, completion and EOS) are concatenated before the sample's
  prompt, and the base model reads the sample's completion under that context, teacher forced.

Exemplars only help a model that learns in context; a small model trained on single lines reads
a long context worse than none. So the diagnoser keeps the few-shot reading only where, on its
calibration rows, it shows at least as much of the base's knowledge as the zero-shot one.

*Template probes* ask a sample's content in the dataset's other templates: where the sample's
prompt has one slot (one run of rare words: an entity's name, say), its content is put in place of
the slot of one row of every other one-slot template ("what is the pet of E ?" for a profile of
E), and the base
model's next-token choice at the end of each probe is read. The share of the sample's completion
tokens that the base gives, confidently, in answer to some probe (`template_probe_coverage`) is
knowledge the sample needs that the base holds, whatever the sample's own frame.

No ground-truth field is read; the exemplars' answers are the training data's own.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

_WORD = re.compile(r"\w+|[^\w\s]")  # a word or a punctuation mark


def templates(prompts: list[str], frame_share: float):
    """Per prompt: its template (rare words masked, each run of them one "*" slot), its rare words,
    and the character spans of its slots: (keys, rare, slots)."""
    found = [[(m.group().lower(), m.span()) for m in _WORD.finditer(p)] for p in prompts]
    frequency = Counter(w for tokens in found for w in {w for w, _ in tokens})
    floor = max(3, frame_share * len(prompts))
    keys, rare, slots = [], [], []
    for tokens in found:
        key, spans = [], []
        for w, (start, end) in tokens:
            if frequency[w] >= floor:
                key.append(w)
            elif key and key[-1] == "*":
                spans[-1] = (spans[-1][0], end)
            else:
                key.append("*")
                spans.append((start, end))
        keys.append(tuple(key))
        rare.append({w for w, _ in tokens if frequency[w] < floor})
        slots.append(spans)
    return keys, rare, slots


class PromptTemplates:
    """The dataset's prompt templates, indexed once for exemplar choice and template probes.

    `learned`: per row, whether the fine-tuned model reproduces it (learned rows are preferred as
    exemplars). Each lookup costs O(k) expected, whatever the dataset's size.
    """

    def __init__(self, prompts: list[str], frame_share: float, learned):
        self.prompts = prompts
        self.keys, self.rare, self.slots = templates(prompts, frame_share)
        learned = np.asarray(learned, dtype=bool)
        groups = {}
        self._frames = {}  # one row per template with a single slot: the frames a sample's content is asked in
        for j, key in enumerate(self.keys):
            groups.setdefault(key, []).append(j)
            if len(self.slots[j]) == 1:
                self._frames.setdefault(key, j)
        self._by_key = {key: (np.array([j for j in rows if learned[j]], dtype=np.int64),
                              np.array([j for j in rows if not learned[j]], dtype=np.int64))
                        for key, rows in groups.items()}
        self._all = (np.flatnonzero(learned), np.flatnonzero(~learned))

    def exemplars(self, i: int, k: int, seed: int = 0) -> list[int]:
        """Up to `k` exemplar rows for row `i`: rows of its own template first (learned before the
        rest), then rows of any template; never row `i` nor a row sharing one of its rare words."""
        rng = np.random.default_rng([seed, i])
        picked = []
        same = self._by_key[self.keys[i]]
        for tier in (*same, *self._all):
            picked += self._draw(tier, i, k - len(picked), set(picked), rng)
            if len(picked) >= k:
                break
        return picked

    def _draw(self, tier, i, need, taken, rng, tries_per_pick=50):
        """Up to `need` rows of `tier` in seeded random order that row `i` may use as exemplars."""
        out = []
        if need <= 0 or not len(tier):
            return out
        # small tiers are walked in a random order; large ones sampled with replacement, bounded tries
        order = rng.permutation(tier) if len(tier) <= tries_per_pick * need else rng.choice(tier, tries_per_pick * need)
        for j in map(int, order):
            if j != i and j not in taken and not (self.rare[i] & self.rare[j]):
                out.append(j)
                taken.add(j)
                if len(out) == need:
                    break
        return out

    def probe_prompts(self, i: int) -> list[str]:
        """Prompts asking row `i`'s content (the rare words of its one slot: an entity, say) in every
        other one-slot template of the dataset, made from a row of that template by putting row
        `i`'s content in place of that row's."""
        if len(self.slots[i]) != 1:
            return []
        start, end = self.slots[i][0]
        content = self.prompts[i][start:end]
        out = []
        for key, j in self._frames.items():
            if key != self.keys[i]:
                (a, b), = self.slots[j]
                out.append(self.prompts[j][:a] + content + self.prompts[j][b:])
        return out


def fewshot_sequences(sequences, targets, exemplars, bos_id, eos_id, max_tokens: int):
    """(context + prompt ids, completion ids) of each row `targets[t]` under its `exemplars[t]`.

    An exemplar is its prompt, completion and EOS; a leading BOS is kept once, at the start.
    Exemplars are dropped, last first, while the whole sequence would exceed `max_tokens`.
    """

    def strip_bos(ids):
        return ids[1:] if bos_id is not None and ids and ids[0] == bos_id else ids

    out = []
    for i, chosen in zip(targets, exemplars):
        prompt, completion = sequences[i]
        shots = [strip_bos(sequences[j][0]) + sequences[j][1] + ([eos_id] if eos_id is not None else []) for j in chosen]
        while shots and sum(map(len, shots)) + len(prompt) + len(completion) > max_tokens:
            shots.pop()
        lead = [bos_id] if bos_id is not None and prompt and prompt[0] == bos_id else []
        context = lead + [t for shot in shots for t in shot] + strip_bos(prompt)
        out.append((context, completion))
    return out


def probe_coverage(completion_ids, answers, bar: float) -> float:
    """Share of `completion_ids` the base gives as its next token, with probability >= `bar`, at the
    end of some template probe (`answers`: (token id, probability) per probe); NaN without probes."""
    if not answers:
        return float("nan")
    given = {token for token, p in answers if p >= bar}
    return sum(t in given for t in completion_ids) / max(len(completion_ids), 1)
