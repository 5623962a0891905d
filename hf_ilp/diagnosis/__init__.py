"""Diagnosis: map each unlearned sample to one of the five ILP causes, with evidence.

Names are imported lazily so that reading a report (`hf_ilp.diagnosis.report`) or `hf-ilp --help`
does not load torch.
"""

from hf_ilp._lazy import lazy_exports

_EXPORTS = {
    "CAUSES": "hf_ilp.diagnosis.report",
    "DiagnosisReport": "hf_ilp.diagnosis.report",
    "DiagnoserConfig": "hf_ilp.diagnosis.config",
    "Diagnoser": "hf_ilp.diagnosis.diagnoser",
    "PRECEDENCE": "hf_ilp.diagnosis.diagnoser",
    "diagnose": "hf_ilp.diagnosis.diagnoser",
    "across_processes": "hf_ilp.diagnosis._forward",
    "write_html": "hf_ilp.diagnosis.html",
    "log_records": "hf_ilp.diagnosis.loggers",
    "log_report": "hf_ilp.diagnosis.loggers",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
