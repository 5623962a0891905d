"""Interventions: one mitigation per cause of incomplete learning, each a causal test.

A diagnosis is believed when fixing the cause fixes the sample. Each intervention takes a
`DiagnosisReport` and produces a NEW, named, saved dataset, corpus or training run; inputs are
never modified. One module per cause:

- `knowledge`      missing_knowledge, knowledge_conflict: retrieve documents about the flagged
                   samples from a `KnowledgeSource`, continued pre-training on 0.8 general +
                   0.2 retrieved text, then SFT again.
- `inconsistency`  data_inconsistency: resolve where a judge can tell (default: the base model's
                   likelihood; the member it rejects is dropped), bucket the groups it cannot decide
                   (`ConflictBucketSampler`: no two members of a group in one mini-batch).
- `forgetting`     forgetting: global shuffle of the stages + `DynamicResamplingCallback`.
- `under_training` under_training: extra epochs over upsampled copies of the flagged samples,
                   kept while the validation loss stays within delta of the starting model's
                   (two rejected epochs in a row stop them; the last accepted weights are kept).
- `sampling`       `TrainSamplerMixin`: hand any Trainer its training sampler.
- `apply`          `intervene(cause, report, train_dataset, output_dir, ...)`: checks, then one
                   new atomic output folder per intervention (see its docstring for the layout).
"""

from hf_ilp.interventions.apply import (
    InterventionConfig,
    InterventionResult,
    before_after,
    confirmation,
    format_before_after,
    intervene,
    intervene_and_rediagnose,
)
from hf_ilp.interventions.forgetting import DynamicResamplingCallback, ResamplingSampler, global_shuffle
from hf_ilp.interventions.inconsistency import (
    ConflictBucketSampler,
    conflict_buckets,
    conflict_groups,
    likelihood_judge,
    resolve_conflicts,
)
from hf_ilp.interventions.knowledge import (
    BM25KnowledgeSource,
    EmbeddingKnowledgeSource,
    KnowledgeSource,
    continued_pretraining,
    injection_corpus,
    world_knowledge_source,
)
from hf_ilp.interventions.sampling import TrainSamplerMixin, TrainSamplerSFTTrainer
from hf_ilp.interventions.under_training import ValLossRiseStopping, upsample

__all__ = [
    "BM25KnowledgeSource",
    "ConflictBucketSampler",
    "DynamicResamplingCallback",
    "EmbeddingKnowledgeSource",
    "InterventionConfig",
    "InterventionResult",
    "KnowledgeSource",
    "ResamplingSampler",
    "TrainSamplerMixin",
    "TrainSamplerSFTTrainer",
    "ValLossRiseStopping",
    "before_after",
    "confirmation",
    "format_before_after",
    "conflict_buckets",
    "conflict_groups",
    "continued_pretraining",
    "global_shuffle",
    "injection_corpus",
    "intervene",
    "intervene_and_rediagnose",
    "likelihood_judge",
    "resolve_conflicts",
    "upsample",
    "world_knowledge_source",
]
