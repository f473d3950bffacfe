"""Distillation methods, one file and one class each; METHODS maps registry keys to classes (METHODS.md §11)."""

from core.methods.diff_instruct import DiffInstruct
from core.methods.dmd2 import DMD2
from core.methods.emd import EMD
from core.methods.mmd import MMD
from core.methods.mmd_instant import MMDInstant

METHODS = {cls.key: cls for cls in (MMD, MMDInstant, EMD, DiffInstruct, DMD2)}
