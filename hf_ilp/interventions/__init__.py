"""Interventions: one mitigation per cause of incomplete learning, each a causal test.

A diagnosis is believed when fixing the cause fixes the sample. Each intervention takes a
`DiagnosisReport` and produces a NEW, named, saved dataset, corpus or training run; inputs are
never modified. One module per cause:

- `knowledge`      missing_knowledge, knowledge_conflict: retrieve documents about the flagged
                   samples from a `KnowledgeSource`, continued pre-training on 0.8 general +
                   0.2 retrieved text, then SFT again.
- `inconsistency`  data_inconsistency: resolve (drop what a judge or the majority rejects) or
                   bucket (`ConflictBucketSampler`: no two members of a group in one mini-batch).
- `forgetting`     forgetting: global shuffle of the stages + `DynamicResamplingCallback`.
- `under_training` under_training: extra epochs with early stopping on validation loss,
                   optional upsampling of the flagged samples.
- `sampling`       `TrainSamplerMixin`: hand any Trainer its training sampler.
"""

from hf_ilp.interventions.inconsistency import (
    ConflictBucketSampler,
    conflict_buckets,
    conflict_groups,
    likelihood_judge,
    resolve_conflicts,
)
from hf_ilp.interventions.sampling import TrainSamplerMixin, TrainSamplerSFTTrainer

__all__ = [
    "ConflictBucketSampler",
    "TrainSamplerMixin",
    "TrainSamplerSFTTrainer",
    "conflict_buckets",
    "conflict_groups",
    "likelihood_judge",
    "resolve_conflicts",
]
