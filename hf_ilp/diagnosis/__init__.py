"""Diagnosis: map each unlearned sample to one of the five ILP causes, with evidence."""

from hf_ilp.diagnosis.report import CAUSES, DiagnosisReport

__all__ = ["CAUSES", "DiagnosisReport"]
