"""Pseudo-labelling unlabeled images with a teacher, as a resumable Ray Data job."""

from depthlib.pseudo_label.config import PseudoLabelConfig
from depthlib.pseudo_label.job import run_pseudo_label
from depthlib.pseudo_label.stages import DecodePartition, LabelActor, WritePieces

__all__ = ["DecodePartition", "LabelActor", "PseudoLabelConfig", "WritePieces", "run_pseudo_label"]
