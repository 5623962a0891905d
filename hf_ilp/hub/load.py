"""`load_report`: the DiagnosisReport of a model, from a local folder or a Hub repo.

Accepted sources:
- a report folder written by `DiagnosisReport.save` (`summary.json`, `samples.parquet`);
- a run's output folder or a downloaded model repo: its `README.md` card with `hf_ilp`
  metadata (and `hf_ilp_report/samples.parquet` when present);
- a Hub model repo id (`user/name`): the card's metadata; with `samples=True` also the
  per-sample rows from the diagnosis dataset the card names (at the commit it names);
- a Hub dataset repo id with `repo_type="dataset"`: the diagnosis dataset itself.

Example:
    >>> report = hf_ilp.load_report("me/tiny-sft", samples=True)
    >>> report.counts["forgetting"], report.unlearned().num_rows
"""

from __future__ import annotations

from pathlib import Path

from hf_ilp.diagnosis.report import REQUIRED_COLUMNS, DiagnosisReport
from hf_ilp.hub.cards import METADATA_KEY, REPORT_DIRNAME, CardMetadataError, from_card_metadata
from hf_ilp.hub.push import DATASET_FILE


def load_report(
    repo_id_or_path,
    revision: str | None = None,
    samples: bool = False,
    repo_type: str = "model",
    token: str | None = None,
    endpoint: str | None = None,
) -> DiagnosisReport:
    """Load a DiagnosisReport; `samples=True` adds the per-sample rows (else `report.samples` is None).

    Cards with missing, malformed or newer-schema `hf_ilp` metadata raise `CardMetadataError`
    naming the field; older schemas load. A source that is neither a local path nor a Hub repo
    that can be read raises `ReportNotFoundError` (a `FileNotFoundError`).
    """
    path = Path(repo_id_or_path)
    if path.exists():
        return _load_local(path, samples)
    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    repo_id = str(repo_id_or_path)
    source = f"{repo_type} repo {repo_id}" + (f"@{revision}" if revision else "")
    card_file = _download_card(api, path, repo_id, repo_type, revision)
    report = from_card_metadata(_card_metadata(card_file, source), source=f"card of {source}")
    report.plots = {}  # plots stay in the repo; the card embeds them
    if not samples:
        return report
    if repo_type == "dataset":
        dataset_id, dataset_revision = repo_id, revision
    else:
        block = report.summary
        dataset_id = block.get("diagnosis_dataset")
        if not dataset_id:
            raise CardMetadataError(f"card of {source}: field '{METADATA_KEY}.diagnosis_dataset' is missing; the per-sample diagnosis cannot be found")
        dataset_revision = block.get("diagnosis_dataset_revision")
    parquet = api.hf_hub_download(dataset_id, DATASET_FILE, repo_type="dataset", revision=dataset_revision)
    report.samples = _read_samples(parquet, f"dataset {dataset_id}")
    return report


class ReportNotFoundError(FileNotFoundError):
    """The source is neither a local path nor a Hub repo that could be read; the message says
    where both were looked for."""


def _download_card(api, path: Path, repo_id: str, repo_type: str, revision: str | None) -> str:
    """The Hub repo's README.md; a repo that does not exist, an id that cannot be one, or a Hub
    that cannot be reached (with no cached copy) raise `ReportNotFoundError`."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return api.hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=revision)
    except GatedRepoError:  # the repo exists; huggingface_hub's message says how to get access
        raise
    except (RepositoryNotFoundError, HFValidationError, LocalEntryNotFoundError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "client has been closed" not in str(exc):
            raise
        # (huggingface_hub 1.3 closes its HTTP client on a connection error, then retries with it:
        # an unreachable Hub ends in that RuntimeError there)
        if isinstance(exc, RepositoryNotFoundError):
            why = "no such repo on the Hub"
        elif isinstance(exc, HFValidationError):
            why = "it is not a valid Hub repo id (user/name)"
        elif constants.HF_HUB_OFFLINE:
            why = "the Hub is not asked in offline mode (HF_HUB_OFFLINE) and no copy is cached"
        else:
            why = "the Hub could not be reached and no copy is cached"
        where = f"{repo_type} repo '{repo_id}'" + (f" at revision '{revision}'" if revision else "") + f" on {api.endpoint}"
        raise ReportNotFoundError(
            f"found neither a local report nor a Hub repo for '{repo_id}': the local path {path.resolve()} does not exist, "
            f"and {why} ({where})"
        ) from None


def _load_local(path: Path, samples: bool) -> DiagnosisReport:
    if (path / "summary.json").is_file():
        return DiagnosisReport.load(path)
    card = path / "README.md"
    if not card.is_file():
        raise FileNotFoundError(
            f"{path} is neither a report folder (summary.json, samples.parquet) nor a model folder with a README.md card"
        )
    report = from_card_metadata(_card_metadata(card, str(card)), source=str(card))
    report.plots = {name: str(path / rel) for name, rel in report.plots.items() if (path / rel).is_file()}
    if samples:
        parquet = path / REPORT_DIRNAME / "samples.parquet"
        if not parquet.is_file():
            raise FileNotFoundError(f"{path}: per-sample rows not found at {REPORT_DIRNAME}/samples.parquet; load the Hub repo instead")
        report.samples = _read_samples(parquet, str(parquet))
    return report


def _card_metadata(card_file, source: str) -> dict:
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(card_file, ignore_metadata_errors=True).data.to_dict()
    except Exception as exc:  # yaml errors come in several types
        raise CardMetadataError(f"{source}: the card's YAML metadata cannot be read ({exc})") from exc


def _read_samples(parquet, source: str):
    from datasets import Dataset

    rows = Dataset.from_parquet(str(parquet))
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.column_names]
    if missing:
        raise ValueError(f"{source}: per-sample diagnosis lacks columns {missing}")
    return rows
