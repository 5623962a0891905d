"""Hub integration: model and dataset cards carrying the diagnosis, push with retries, load_report.

Public surface:
- `load_report(repo_id_or_path, revision=None, samples=False)` -> DiagnosisReport
- `prepare_push(output_dir, report, hub_model_id, ...)`, `push_run(output_dir, ...)`, `HubPushError`
- in recipes: `take_hub_settings(training_args)` before training, `publish_run(trainer, report, hub)`
  at the end
- `amend_model_card(output_dir, report, ...)`, `DiagnosisCardMixin` (amends the card in
  `create_model_card`), `to_card_metadata(report)` / `from_card_metadata(metadata, source)`
- CLI: `hf-ilp report REPO_OR_PATH [--json]`, `hf-ilp push DIR`
"""

from hf_ilp._lazy import lazy_exports

_EXPORTS = {
    "CardMetadataError": "hf_ilp.hub.cards",
    "DiagnosisCardMixin": "hf_ilp.hub.cards",
    "amend_model_card": "hf_ilp.hub.cards",
    "from_card_metadata": "hf_ilp.hub.cards",
    "to_card_metadata": "hf_ilp.hub.cards",
    "load_report": "hf_ilp.hub.load",
    "HubPushError": "hf_ilp.hub.push",
    "HubSettings": "hf_ilp.hub.push",
    "PushResult": "hf_ilp.hub.push",
    "prepare_push": "hf_ilp.hub.push",
    "publish_run": "hf_ilp.hub.push",
    "push_run": "hf_ilp.hub.push",
    "take_hub_settings": "hf_ilp.hub.push",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
