"""The privacy rules (`hf_ilp.privacy`) and what they make of a diagnosis report.

- `publishable(report)`: the report with its summary scrubbed (`scrub`); its samples are shared.
- `scrub`, `assert_no_secrets`, `redacted`, `looks_like_path`, `finite`, `TOKEN_RE`: from `hf_ilp.privacy`,
  the rules every room that publishes follows (the tracker's records go to the loggers too).
"""

from hf_ilp.privacy import REDACTED, TOKEN_RE, assert_no_secrets, finite, looks_like_path, redacted, scrub  # noqa: F401
from hf_ilp.diagnosis.report import DiagnosisReport


def publishable(report: DiagnosisReport) -> DiagnosisReport:
    """The same report with its summary scrubbed of secrets and local paths (samples shared)."""
    return DiagnosisReport(samples=report.samples, summary=scrub(report.summary), plots=dict(report.plots))
