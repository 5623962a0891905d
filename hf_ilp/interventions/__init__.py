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
- `base`           `Intervention` (`check` then `run`), the contract each cause's module follows.
- `apply`          `intervene(cause, report, train_dataset, output_dir, ...)`: finds the cause's
                   `Intervention`, checks, then one new atomic output folder per intervention.
"""

from hf_ilp._lazy import lazy_exports

_EXPORTS = {
    "Intervention": "hf_ilp.interventions.base",
    "InterventionInputs": "hf_ilp.interventions.base",
    "InterventionResult": "hf_ilp.interventions.apply",
    "before_after": "hf_ilp.interventions.apply",
    "confirmation": "hf_ilp.interventions.apply",
    "format_before_after": "hf_ilp.interventions.apply",
    "intervene": "hf_ilp.interventions.apply",
    "intervene_and_rediagnose": "hf_ilp.interventions.apply",
    "InterventionConfig": "hf_ilp.interventions.config",
    "DynamicResamplingCallback": "hf_ilp.interventions.forgetting",
    "ResamplingSampler": "hf_ilp.interventions.forgetting",
    "global_shuffle": "hf_ilp.interventions.forgetting",
    "ConflictBucketSampler": "hf_ilp.interventions.inconsistency",
    "conflict_buckets": "hf_ilp.interventions.inconsistency",
    "conflict_groups": "hf_ilp.interventions.inconsistency",
    "likelihood_judge": "hf_ilp.interventions.inconsistency",
    "resolve_conflicts": "hf_ilp.interventions.inconsistency",
    "BM25KnowledgeSource": "hf_ilp.interventions.knowledge",
    "EmbeddingKnowledgeSource": "hf_ilp.interventions.knowledge",
    "KnowledgeSource": "hf_ilp.interventions.knowledge",
    "continued_pretraining": "hf_ilp.interventions.knowledge",
    "injection_corpus": "hf_ilp.interventions.knowledge",
    "world_knowledge_source": "hf_ilp.interventions.knowledge",
    "TrainSamplerMixin": "hf_ilp.interventions.sampling",
    "TrainSamplerSFTTrainer": "hf_ilp.interventions.sampling",
    "ValLossRiseStopping": "hf_ilp.interventions.under_training",
    "upsample": "hf_ilp.interventions.under_training",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
