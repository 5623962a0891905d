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

from hf_ilp.hub.cards import CardMetadataError, DiagnosisCardMixin, amend_model_card, from_card_metadata, to_card_metadata
from hf_ilp.hub.load import load_report
from hf_ilp.hub.push import HubPushError, HubSettings, PushResult, prepare_push, publish_run, push_run, take_hub_settings

__all__ = [
    "CardMetadataError",
    "DiagnosisCardMixin",
    "HubPushError",
    "HubSettings",
    "PushResult",
    "amend_model_card",
    "from_card_metadata",
    "load_report",
    "prepare_push",
    "publish_run",
    "push_run",
    "take_hub_settings",
    "to_card_metadata",
]
