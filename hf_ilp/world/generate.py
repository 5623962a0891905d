"""The text of ILP-World: a knowledge base, its pre-training corpus, the SFT set and the probes.

Everything here is plain Python and deterministic by seed; `build.py` turns it into a tokenizer,
a pre-trained base model and datasets. Each cause of incomplete learning is *planted* by the way
the world is constructed, never by a label alone (the label `world_cause` only records it):

- `missing_knowledge`: the SFT sample asks a fact that the corpus never states.
- `knowledge_conflict`: the corpus states a fact many times (as statements and as QA); the SFT
  sample gives another value.
- `data_inconsistency`: two SFT samples ask the same question (verbatim or paraphrased) about a
  fact the corpus states, with two different answers (both members carry the label).
  Off by default, `both_right_pairs=n` adds n pairs whose two answers are both right: a fact the
  corpus states with two values, equally often, asked verbatim with each value (the paper's case
  for bucketing). The rest of the world is drawn exactly as without them.
- `forgetting`: stage 0 teaches an ambiguous prompt ("tell me about E") to answer E's colour;
  stage 1 teaches the same prompt, for other entities, to answer their city. The stage-0
  samples are learned in stage 0 and overwritten by stage 1; ordinary stage-0 questions survive.
- `under_training`: rare, long completions (one-off profiles: three facts of one entity that the
  corpus states, in a prompt frame of their own), which the default SFT budget does not fit but a
  longer one does: trained longer in their stage, they are still reproduced after the last stage.

Normal samples (`world_cause == ""`) ask facts the corpus states, in the QA formats it uses.

Stages: the samples of missing_knowledge, knowledge_conflict and data_inconsistency sit in the
last stage, so no later stage can overwrite them: a sample of one of these causes that was
learned in an earlier stage and lost in a later one would show left-side forgetting as well,
and its planted label would no longer name the one cause behind it. Stage 0 holds the
forgetting samples, the one-off profiles (under_training) and a share of the normal samples.
A profile asked in the QA frame ("question : give the pet , job and city of E . answer :", world
version 2) was erased by the last stage even once learned (left-side forgetting, not only
under-training), so profiles have their own frame.
"""

import random
from dataclasses import dataclass

RELATIONS = ("color", "city", "pet", "job")
# the SFT question formats, per relation; the corpus uses them as well (QA mixed into pre-training
# is what makes stored facts extractable by questions in a small model)
QA_TEMPLATES = (
    "question : what is the {rel} of {ent} ? answer :",
    "question : which {rel} does {ent} have ? answer :",
)
STATEMENT = "the {rel} of {ent} is {val} ."
PROBE = "the {rel} of {ent} is"
AMBIGUOUS = "question : tell me about {ent} . answer :"
AMBIGUOUS_STAGE0, AMBIGUOUS_STAGE1 = "color", "city"
PROFILE_RELATIONS = ("pet", "job", "city")
# a frame of its own (no "question : ... answer :"): in the QA frame, the one-value answers of the
# later stage overwrote profiles learned in stage 0, and fitting the profiles made QA answers run on
PROFILE = "give {ent} pet , job and city :"


@dataclass(frozen=True)
class WorldStyle:
    """The words of a world: its relations, the formats of its corpus, questions and probes, and its
    names. Two styles plant the same causes in different text, so that a diagnosis tuned to one
    world's formats shows it on the other."""

    relations: tuple
    qa_templates: tuple  # two question formats, with {rel} and {ent}
    statement: str  # the corpus's statement of a fact, with {rel}, {ent} and {val}
    probe: str  # the statement's prefix, completed by " {val} ."
    ambiguous: str  # the re-targeted prompt of the forgetting samples, with {ent}
    ambiguous_stage0: str
    ambiguous_stage1: str
    profile_relations: tuple
    profile: str  # the one-off long format (under_training), with {ent}
    name_parts: int = 1  # words per entity name
    id_prefix: str = "ilpw"


ILP_STYLE = WorldStyle(RELATIONS, QA_TEMPLATES, STATEMENT, PROBE, AMBIGUOUS, AMBIGUOUS_STAGE0, AMBIGUOUS_STAGE1,
                       PROFILE_RELATIONS, PROFILE)
# the second construction: other relations, two-word names, other statements, terse question
# frames, a profile in a frame of its own
ROSTER_STYLE = WorldStyle(
    relations=("instrument", "sport", "language", "country", "drink"),
    qa_templates=("q : {ent} 's {rel} ? a :", "q : name the {rel} of {ent} ! a :"),
    statement="{ent} 's {rel} is {val} .",
    probe="{ent} 's {rel} is",
    ambiguous="q : say something about {ent} ! a :",
    ambiguous_stage0="instrument",
    ambiguous_stage1="country",
    profile_relations=("sport", "drink", "language"),
    profile="{ent} => sport / drink / language =",
    name_parts=2,
    id_prefix="roster",
)


@dataclass(frozen=True)
class WorldSpec:
    """Counts and budgets of one world size; every count is a number of SFT samples or facts."""

    entities: int
    values_per_relation: int
    missing: int  # train samples about facts absent from the corpus
    validation_missing: int
    conflict: int
    inconsistent_pairs: int
    forgetting: int  # stage-0 ambiguous prompts answered with the colour
    retarget: int  # stage-1 ambiguous prompts answered with the city
    profiles: int  # one-off long completions (under_training)
    normal_stage0: int
    normal_stage1: int
    validation_normal: int
    statement_repeats: int  # per known fact, per pre-training epoch
    qa_repeats: int  # per QA-covered known fact, per pre-training epoch
    # model and pre-training
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    pretrain_epochs: int
    pretrain_batch_size: int
    pretrain_learning_rate: float
    # default SFT budget
    sft_epochs: float
    sft_learning_rate: float
    sft_batch_size: int


@dataclass
class WorldText:
    """The generated text of a world (before tokenization and pre-training)."""

    facts: dict  # (entity, relation) -> value: the truth, as the corpus states it when present
    absent: set  # facts the corpus never states
    corpus: list  # pre-training texts, one epoch
    train: list  # dict rows: id, prompt, completion, stage, world_cause
    validation: list
    probes: list  # dict rows: id, probe_prompts, probe_completions
    words: list  # the vocabulary, sorted (the same for a world and its counterfactual)


def _names(rng: random.Random, count: int, taken: set, syllables: int) -> list[str]:
    onsets = "b d f g k l m n p r s t v z br gl kr pl st tr sn dr".split()
    vowels = "a e i o u".split()
    codas = "b d g k l m n p r s t x".split()
    out = []
    while len(out) < count:
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables - 1))
        word += rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


def _qa(rel, ent, val, template=0, style=ILP_STYLE):
    return {"prompt": style.qa_templates[template].format(rel=rel, ent=ent), "completion": f" {val}"}


def generate(spec: WorldSpec, seed: int, complete_knowledge: bool = False, style: WorldStyle = ILP_STYLE,
             both_right_pairs: int = 0) -> WorldText:
    """Generate the world's text for `spec` and `seed`.

    `complete_knowledge=True` is the counterfactual world used by the causal checks: the same SFT
    set, but the corpus states every fact the SFT set relies on, with the SFT set's own value
    (missing facts added, contradicted facts stated as the SFT sample says them).

    `both_right_pairs=n` adds n inconsistent pairs whose answers are both right: n more facts
    (taken after every other role, from a random stream of their own) get a second value; the
    corpus states both values alike (statements, and QA lines where a fact of its position has
    them); the SFT set asks each fact twice in one QA template, once with each value, in the last
    stage (`world_cause` "data_inconsistency"). Their rows come after the others (ids continue);
    the other template and the statement are left for held-out questions. With n = 0 (default)
    the world is exactly the one generated without the option.
    """
    if isinstance(both_right_pairs, bool) or not isinstance(both_right_pairs, int) or both_right_pairs < 0:
        raise ValueError(f"both_right_pairs must be a non-negative integer, got {both_right_pairs!r}")
    rng = random.Random(seed)
    profile_rng = random.Random(f"{seed}-profiles")
    taken = set()
    entities = _names(rng, spec.entities, taken, syllables=1 if spec.entities <= 40 else 2)
    for _ in range(style.name_parts - 1):  # more words per name: each word still names one entity
        entities = [f"{e} {w}" for e, w in zip(entities, _names(rng, spec.entities, taken, syllables=2))]
    values = {rel: _names(rng, spec.values_per_relation, taken, syllables=2) for rel in style.relations}
    facts = {(e, r): rng.choice(values[r]) for e in entities for r in style.relations}

    # assign every fact at most one role; a role takes facts in a seeded random order
    pool = list(facts)
    rng.shuffle(pool)

    def take(count, relation=None, exclude_entities=()):
        chosen = []
        for fact in pool:
            if len(chosen) == count:
                break
            if (relation is None or fact[1] == relation) and fact[0] not in exclude_entities:
                chosen.append(fact)
        if len(chosen) < count:
            raise ValueError(f"world spec needs more entities: could not find {count} free facts for {relation or 'any relation'}")
        for fact in chosen:
            pool.remove(fact)
        return chosen

    forgetting = take(spec.forgetting, style.ambiguous_stage0)
    forgetting_entities = {e for e, _ in forgetting}
    retarget = take(spec.retarget, style.ambiguous_stage1, exclude_entities=forgetting_entities)
    free = list(pool)

    def plant(exclude_entities=()):
        return [take(count, exclude_entities=exclude_entities)
                for count in (spec.missing, spec.validation_missing, spec.conflict, spec.inconsistent_pairs)]

    missing, validation_missing, conflict, pairs = plant()
    # the one-off profiles need entities that no planted fact touches
    planted = {e for e, _ in missing + validation_missing + conflict + pairs}
    profile_entities = sorted(set(entities) - planted)
    if len(profile_entities) < spec.profiles:  # a rare seed: reserve the profiles' entities first
        profile_entities = sorted(profile_rng.sample(sorted(entities), spec.profiles))
        pool[:] = free
        missing, validation_missing, conflict, pairs = plant(exclude_entities=set(profile_entities))
    normal0 = take(spec.normal_stage0)
    normal1 = take(spec.normal_stage1)
    validation_normal = take(spec.validation_normal)
    both_right = []
    if both_right_pairs:  # facts no role took, and no profile states (a profile gives one value of each)
        peek = random.Random()
        peek.setstate(profile_rng.getstate())  # the profiles' own draw below, without consuming it
        stated_by_profiles = {(e, r) for e in peek.sample(profile_entities, spec.profiles) for r in style.profile_relations}
        free_facts = [fact for fact in pool if fact not in stated_by_profiles]
        if len(free_facts) < both_right_pairs:
            raise ValueError(f"this world (seed {seed}) has {len(free_facts)} facts free for both-right pairs; "
                             f"both_right_pairs={both_right_pairs} asks for more")
        both_right = free_facts[:both_right_pairs]
    absent = set(missing) | set(validation_missing)

    def other_value(fact):
        return rng.choice([v for v in values[fact[1]] if v != facts[fact]])

    rows = []  # (row, probe facts as (entity, relation, value))

    def add(row, stage, cause, probe_facts):
        rows.append(({**row, "stage": stage, "world_cause": cause}, probe_facts))

    for fact in normal0:
        add(_qa(fact[1], fact[0], facts[fact], rng.randrange(2), style), 0, "", [(*fact, facts[fact])])
    for fact in normal1:
        add(_qa(fact[1], fact[0], facts[fact], rng.randrange(2), style), 1, "", [(*fact, facts[fact])])
    last = 1  # the last stage (see the module docstring)
    for fact in missing:
        add(_qa(fact[1], fact[0], facts[fact], rng.randrange(2), style), last, "missing_knowledge", [(*fact, facts[fact])])
    sft_values = {}  # facts the SFT set states with a value other than the corpus's
    for fact in conflict:
        value = other_value(fact)
        sft_values[fact] = value
        add(_qa(fact[1], fact[0], value, rng.randrange(2), style), last, "knowledge_conflict", [(*fact, value)])
    for i, fact in enumerate(pairs):
        wrong = other_value(fact)
        first = rng.randrange(2)
        second = first if i % 2 == 0 else 1 - first  # even pairs verbatim, odd pairs paraphrased
        add(_qa(fact[1], fact[0], facts[fact], first, style), last, "data_inconsistency", [(*fact, facts[fact])])
        add(_qa(fact[1], fact[0], wrong, second, style), last, "data_inconsistency", [(*fact, wrong)])
    for fact in forgetting:
        row = {"prompt": style.ambiguous.format(ent=fact[0]), "completion": f" {facts[fact]}"}
        add(row, 0, "forgetting", [(*fact, facts[fact])])
    for fact in retarget:
        row = {"prompt": style.ambiguous.format(ent=fact[0]), "completion": f" {facts[fact]}"}
        add(row, 1, "", [(*fact, facts[fact])])
    # one-off long completions: three facts of one entity, in a format no other sample uses
    for ent in profile_rng.sample(profile_entities, spec.profiles):
        row = {
            "prompt": style.profile.format(ent=ent),
            "completion": "".join(f" {facts[(ent, rel)]}" for rel in style.profile_relations),
        }
        add(row, 0, "under_training", [(ent, rel, facts[(ent, rel)]) for rel in style.profile_relations])

    rng.shuffle(rows)
    # both-right pairs: a stream of their own, so that every draw above is the same with or without them
    both_rng = random.Random(f"{seed}-both-right")
    second_values = {}  # both-right facts -> their second value
    for fact in both_right:
        second_values[fact] = both_rng.choice([v for v in values[fact[1]] if v != facts[fact]])
        template = both_rng.randrange(2)
        pair = [facts[fact], second_values[fact]]
        both_rng.shuffle(pair)
        for value in pair:
            rows.append(({**_qa(fact[1], fact[0], value, template, style), "stage": last,
                          "world_cause": "data_inconsistency"}, [(*fact, value)]))
    train, probes = [], []
    for i, (row, probe_facts) in enumerate(rows):
        row_id = f"{style.id_prefix}-{seed}-{i:04d}"
        train.append({"id": row_id, **row})
        probes.append(
            {
                "id": row_id,
                "probe_prompts": [style.probe.format(rel=r, ent=e) for e, r, _ in probe_facts],
                "probe_completions": [f" {v} ." for _, _, v in probe_facts],
            }
        )

    validation = []
    for fact in validation_normal:
        validation.append({**_qa(fact[1], fact[0], facts[fact], rng.randrange(2), style), "stage": 0, "world_cause": ""})
    for fact in validation_missing:
        row = _qa(fact[1], fact[0], facts[fact], rng.randrange(2), style)
        validation.append({**row, "stage": 0, "world_cause": "missing_knowledge"})
    rng.shuffle(validation)
    validation = [{"id": f"{style.id_prefix}-{seed}-val-{i:04d}", **row} for i, row in enumerate(validation)]

    # the corpus: statements of every known fact, and QA lines for the facts of the conflict and
    # inconsistent-pair roles plus half of the others
    stated = dict(facts)
    if complete_knowledge:
        absent_in_corpus = set(validation_missing)
        stated.update(sft_values)
    else:
        absent_in_corpus = absent
    known = [f for f in facts if f not in absent_in_corpus]
    strong = set(conflict) | set(pairs)
    corpus = []
    for k, fact in enumerate(known):
        ent, rel = fact
        for value in (stated[fact], second_values[fact]) if fact in second_values else (stated[fact],):
            corpus += [style.statement.format(rel=rel, ent=ent, val=value)] * spec.statement_repeats
            if fact in strong or k % 2 == 0:
                for template in range(2):
                    qa = _qa(rel, ent, value, template, style)
                    corpus += [qa["prompt"] + qa["completion"]] * spec.qa_repeats
    rng.shuffle(corpus)

    words = [w for text in corpus for w in text.split()]
    for row in train + validation:
        words += (row["prompt"] + row["completion"]).split()
    for row in probes:
        for prompt, completion in zip(row["probe_prompts"], row["probe_completions"]):
            words += (prompt + completion).split()
    words += [w for e in entities for w in e.split()] + [v for rel in style.relations for v in values[rel]]
    return WorldText(
        facts=facts, absent=absent_in_corpus, corpus=corpus, train=train, validation=validation,
        probes=probes, words=sorted(set(words)),
    )
