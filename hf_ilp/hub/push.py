"""Push a run's output folder to the Hub: the model with its card, and the diagnosis as a dataset.

A run's output folder is complete on disk before anything goes out (`prepare_push`): the model,
`README.md` (the model card with the diagnosis), `hf_ilp_report/` (the report: summary, plots,
per-sample parquet) and `hf_ilp_push.json` (the repo ids to push to). `push_run` then

1. creates the dataset repo and commits `data/train-00000-of-00001.parquet` (the per-sample
   verdicts) and its dataset card;
2. writes the dataset's commit into the model card (so the card names the exact diagnosis);
3. creates the model repo and uploads the folder (checkpoints, per-stage folders, records,
   `training_args.bin` and the per-sample parquet stay local).

Every step is retried with exponential backoff on network faults and server errors (429, 5xx);
each is idempotent, so a retry after a dropped connection finishes the job. If the push still
fails, `HubPushError` says that the local folder is complete and how to push it later:
``hf-ilp push DIR``.

Example:
    >>> prepare_push("out", report, hub_model_id="me/tiny-sft", trainer=trainer)
    >>> push_run("out")                       # or later, from a shell: hf-ilp push out
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hf_ilp.files import write_json_atomic
from hf_ilp.diagnosis.report import DiagnosisReport

from hf_ilp.hub.cards import (
    METADATA_KEY,
    REPORT_DIRNAME,
    amend_model_card,
    assert_no_secrets,
    publishable,
    render_dataset_card,
    set_card_metadata,
)

logger = logging.getLogger(__name__)

PUSH_SETTINGS = "hf_ilp_push.json"
DATASET_FILE = "data/train-00000-of-00001.parquet"
#: The diagnosis as one page (`hf_ilp.diagnosis.write_html`), at the root of the dataset repo.
HTML_FILE = "report.html"
#: Left out of the model repo: checkpoints, per-stage models, per-sample records and verdicts
#: (the dataset repo has those), pickled training arguments (they hold local paths).
IGNORE_PATTERNS = [
    "_*",
    ".*",
    "checkpoint-*",
    "stage-*",
    "runs/*",
    "hf_ilp_records/*",
    f"{REPORT_DIRNAME}/samples.parquet",
    "training_args.bin",
    PUSH_SETTINGS,
]


class HubPushError(RuntimeError):
    """The push failed after its retries; the local output folder is complete."""


@dataclass
class PushResult:
    model_repo_id: str
    dataset_repo_id: str
    model_commit: str
    dataset_commit: str
    attempts: int


def default_dataset_repo_id(hub_model_id: str) -> str:
    """Where the per-sample diagnosis of `hub_model_id` goes unless told otherwise."""
    return f"{hub_model_id}-ilp-diagnosis"


def prepare_push(
    output_dir,
    report,
    hub_model_id: str,
    dataset_repo_id: str | None = None,
    trained_on: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    trainer=None,
    train_dataset=None,
) -> Path:
    """Make `output_dir` complete for the Hub: report folder, model card, push settings.

    With a `trainer`, its own card (TRL's, with model-index, base_model and tags) is written first
    and the diagnosis is added to it. Call it on every process; only the main one writes.
    """
    if trainer is not None and not trainer.is_world_process_zero():
        return Path(output_dir)
    _check_repo_id(hub_model_id, "hub_model_id")
    dataset_repo_id = dataset_repo_id or default_dataset_repo_id(hub_model_id)
    _check_repo_id(dataset_repo_id, "dataset_repo_id")
    output_dir = Path(output_dir)
    report = publishable(report)
    report.save(output_dir / REPORT_DIRNAME)
    if trainer is not None:
        _trainer_card(trainer, output_dir, hub_model_id.split("/")[-1], trained_on, hub_model_id)
    amend_model_card(output_dir, report, model_repo_id=hub_model_id, dataset_repo_id=dataset_repo_id, trained_on=trained_on,
                     train_dataset=train_dataset)
    settings = {"hub_model_id": hub_model_id, "dataset_repo_id": dataset_repo_id, "trained_on": trained_on, "private": private, "revision": revision}
    write_json_atomic(output_dir / PUSH_SETTINGS, settings)
    return output_dir


def push_run(
    output_dir,
    hub_model_id: str | None = None,
    dataset_repo_id: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    max_attempts: int = 5,
    backoff: float = 2.0,
) -> PushResult:
    """Push a folder prepared by `prepare_push` (arguments override its saved settings)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    output_dir = Path(output_dir)
    settings_file = output_dir / PUSH_SETTINGS
    if not settings_file.is_file() and hub_model_id is None:
        raise FileNotFoundError(f"{output_dir} has no {PUSH_SETTINGS}: it was not prepared for the Hub; pass hub_model_id (hf-ilp push DIR --hub_model_id USER/NAME)")
    saved = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    hub_model_id = hub_model_id or saved.get("hub_model_id")
    dataset_repo_id = dataset_repo_id or saved.get("dataset_repo_id") or default_dataset_repo_id(hub_model_id)
    _check_repo_id(hub_model_id, "hub_model_id")
    _check_repo_id(dataset_repo_id, "dataset_repo_id")
    private = saved.get("private") if private is None else private
    revision = revision or saved.get("revision")
    trained_on = saved.get("trained_on")
    report = DiagnosisReport.load(output_dir / REPORT_DIRNAME)
    api = HfApi(endpoint=endpoint, token=token)
    extra = [str(output_dir.resolve())] + ([token] if token else [])
    card = render_dataset_card(report, dataset_repo_id, model_repo_id=hub_model_id, trained_on=trained_on)
    assert_no_secrets(card, what="the dataset card", extra=extra)
    _check_samples(report, extra)
    page = _html_page(report, extra)
    attempts = [0]

    def retry(what, fn):
        return _with_retries(what, fn, max_attempts, backoff, attempts, output_dir)

    retry(f"create dataset repo {dataset_repo_id}", lambda: api.create_repo(dataset_repo_id, repo_type="dataset", private=private, exist_ok=True))
    dataset_commit = retry(
        f"upload the diagnosis to {dataset_repo_id}",
        lambda: api.create_commit(
            dataset_repo_id,
            repo_type="dataset",
            operations=[
                CommitOperationAdd("README.md", card.encode()),
                CommitOperationAdd(DATASET_FILE, str(output_dir / REPORT_DIRNAME / "samples.parquet")),
                CommitOperationAdd(HTML_FILE, page),
            ],
            commit_message="Per-sample incomplete-learning diagnosis (hf_ilp)",
        ),
    ).oid
    if not _card_names(output_dir / "README.md", hub_model_id, dataset_repo_id):  # repo ids overridden: card re-rendered
        amend_model_card(output_dir, report, model_repo_id=hub_model_id, dataset_repo_id=dataset_repo_id, trained_on=trained_on)
    set_card_metadata(output_dir / "README.md", diagnosis_dataset_revision=dataset_commit)
    _check_uploads(output_dir, extra)
    retry(f"create model repo {hub_model_id}", lambda: api.create_repo(hub_model_id, private=private, exist_ok=True))
    model_commit = retry(
        f"upload {output_dir.name} to {hub_model_id}",
        lambda: api.upload_folder(
            repo_id=hub_model_id,
            folder_path=str(output_dir),
            revision=revision,
            ignore_patterns=IGNORE_PATTERNS,
            commit_message="Model, card and incomplete-learning diagnosis (hf_ilp)",
        ),
    ).oid
    return PushResult(hub_model_id, dataset_repo_id, model_commit, dataset_commit, attempts[0])


@dataclass
class HubSettings:
    """The Hub fields of a run's training arguments, held apart from them (see `take_hub_settings`)."""

    push_to_hub: bool = False
    hub_model_id: str | None = None
    token: str | None = None
    private: bool | None = None
    revision: str | None = None


def take_hub_settings(training_args) -> HubSettings:
    """Take the Hub fields out of `training_args` and turn off the Trainer's own pushing.

    Left on, the Trainer creates the repo when it is built and pushes checkpoints while training,
    so a run would need the network from its first step, and `training_args.bin` would hold the
    token. hf_ilp pushes once, at the end, with the diagnosis (`publish_run`). Call it before
    building any trainer; it fails early when `--push_to_hub` lacks `--hub_model_id`.
    """
    settings = HubSettings(
        push_to_hub=bool(training_args.push_to_hub),
        hub_model_id=training_args.hub_model_id,
        token=training_args.hub_token,
        private=training_args.hub_private_repo,
        revision=training_args.hub_revision,
    )
    if settings.push_to_hub:
        _check_repo_id(settings.hub_model_id, "--hub_model_id (needed by --push_to_hub)")
    training_args.push_to_hub = False
    training_args.hub_token = None
    return settings


def publish_run(
    trainer,
    report,
    hub: HubSettings,
    trained_on: str | None = None,
    dataset_repo_id: str | None = None,
    train_dataset=None,
    folder=None,
) -> PushResult | None:
    """End of a recipe: the card with the diagnosis goes into the output folder; pushed if asked.

    With a `hub_model_id` the folder is prepared for the Hub (`prepare_push`) so that
    ``hf-ilp push DIR`` can push it later; with `push_to_hub` it is pushed now. Only the main
    process writes and pushes; the others return None. With the `train_dataset` (rows with `id`),
    the card's example tables show each sample's prompt and completion. `folder` is the folder
    holding the saved model (default: the trainer's `output_dir`); it is what gets pushed.
    """
    if not trainer.is_world_process_zero():
        return None
    output_dir = Path(folder or trainer.args.output_dir)
    if hub.hub_model_id is None:
        report = publishable(report)
        report.save(output_dir / REPORT_DIRNAME)
        _trainer_card(trainer, output_dir, output_dir.name, trained_on)
        amend_model_card(output_dir, report, trained_on=trained_on, train_dataset=train_dataset)
        return None
    prepare_push(output_dir, report, hub.hub_model_id, dataset_repo_id=dataset_repo_id, trained_on=trained_on,
                 private=hub.private, revision=hub.revision, trainer=trainer, train_dataset=train_dataset)
    if not hub.push_to_hub:
        return None
    return push_run(output_dir, token=hub.token)


def _trainer_card(trainer, folder: Path, model_name: str, trained_on: str | None, hub_model_id: str | None = None) -> None:
    """Write the trainer's own card (TRL's: model-index, base_model, tags) as `folder/README.md`."""
    if hub_model_id and getattr(trainer, "hub_model_id", None) is None:
        trainer.hub_model_id = hub_model_id  # TRL's card quotes it in its quick-start snippet
    trainer.create_model_card(model_name=model_name, dataset_name=trained_on)
    written = Path(trainer.args.output_dir) / "README.md"
    if written.is_file() and written.resolve() != (folder / "README.md").resolve():
        os.replace(written, folder / "README.md")


def _with_retries(what, fn, max_attempts, backoff, attempts, output_dir):
    """Run `fn`, retrying transient Hub faults with exponential backoff (backoff * 2**k seconds)."""
    last = None
    for k in range(max_attempts):
        attempts[0] += 1
        try:
            return fn()
        except Exception as exc:  # classified below: only transient faults are retried
            if not _is_transient(exc):
                raise HubPushError(_failure(what, exc, output_dir)) from exc
            last = exc
            if k + 1 < max_attempts:
                wait = backoff * 2**k
                logger.warning("%s failed (%s: %s); retrying in %.1f s (%d/%d)", what, type(exc).__name__, exc, wait, k + 1, max_attempts)
                time.sleep(wait)
    raise HubPushError(_failure(what, last, output_dir, f" after {max_attempts} attempts")) from last


def _is_transient(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status is None or status in (408, 429) or status >= 500
    if isinstance(exc, (*_transport_errors(), ConnectionError, TimeoutError)):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and _is_transient(cause)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The transport error classes of the HTTP clients huggingface_hub may use (httpx2 from 2.0 on, httpx before)."""
    import importlib

    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except ImportError:
            pass
    return tuple(found)


def _failure(what, exc, output_dir, suffix="") -> str:
    return (
        f"Hub push failed: could not {what}{suffix}: {type(exc).__name__}: {exc}\n"
        f"The local output folder {output_dir} is complete (model, card, diagnosis). "
        f"Push it later with:  hf-ilp push {output_dir}"
    )


def _card_names(card_path: Path, hub_model_id: str, dataset_repo_id: str) -> bool:
    """Whether the card at `card_path` was written for these two repos."""
    from huggingface_hub import ModelCard

    if not card_path.is_file():
        return False
    block = ModelCard.load(card_path).data.to_dict().get(METADATA_KEY) or {}
    return block.get("diagnosis_dataset") == dataset_repo_id and f'load_report("{hub_model_id}"' in card_path.read_text()


def _html_page(report, extra) -> bytes:
    """The report's HTML page, checked like every other upload."""
    from hf_ilp.diagnosis.html import write_html

    with tempfile.TemporaryDirectory() as tmp:
        text = write_html(report, Path(tmp) / HTML_FILE).read_text(encoding="utf-8")
    assert_no_secrets(text, what=f"the dataset's {HTML_FILE}", extra=extra)
    return text.encode("utf-8")


def _check_repo_id(repo_id, name) -> None:
    """The Hub's own rules for a repo id (`validate_repo_id`), plus a namespace: a push names its owner."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"{name} must look like 'user/name' (a Hub repo id), got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"{name} must look like 'user/name' (a Hub repo id), got {repo_id!r}: {e}") from None


def _check_uploads(output_dir: Path, extra) -> None:
    """Refuse to publish a text file of the model folder that holds a token or a local path."""
    from huggingface_hub.utils import filter_repo_objects

    files = [p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*") if p.is_file()]
    for rel in filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS):
        if rel.endswith((".md", ".json", ".txt", ".yaml", ".yml", ".jinja")):
            assert_no_secrets((output_dir / rel).read_text(errors="replace"), what=rel, extra=extra)


def _check_samples(report, extra) -> None:
    """Refuse to publish per-sample rows whose text holds a token or a local path."""
    columns = [c for c, f in report.samples.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    text = "\n".join(str(v) for c in columns for v in report.samples[c])
    assert_no_secrets(text, what="the per-sample diagnosis dataset", extra=extra)
