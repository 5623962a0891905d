"""Diagnosis: map each unlearned sample to one of the five ILP causes, with evidence.

Names are imported lazily so that reading a report (`hf_ilp.diagnosis.report`) or `hf-ilp --help`
does not load torch.
"""

from importlib import import_module

_EXPORTS = {
    "CAUSES": "hf_ilp.diagnosis.report",
    "DiagnosisReport": "hf_ilp.diagnosis.report",
    "DiagnoserConfig": "hf_ilp.diagnosis.config",
    "Diagnoser": "hf_ilp.diagnosis.diagnoser",
    "PRECEDENCE": "hf_ilp.diagnosis.diagnoser",
    "diagnose": "hf_ilp.diagnosis.diagnoser",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_ilp.diagnosis' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
