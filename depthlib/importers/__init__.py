"""Importers for the paper's teacher datasets: the files as shipped -> shards.

``ray_jobs/import_dataset.py --dataset NAME --input URI --output URI`` runs
:func:`depthlib.importers.job.run_import`. One module per dataset holds what
differs (which files are images and labels, how a label decodes and
converts; the facts and their sources in its docstring); ``sources.py``
reads folder trees and archives (ZIP, tar) in place; ``job.py`` lists,
converts in parallel Ray tasks, writes shards, records errors and resumes.
"""

from __future__ import annotations

from types import ModuleType

from depthlib.importers import blendedmvs, hypersim, irs, tartanair, vkitti2

DATASETS: dict[str, ModuleType] = {m.NAME: m for m in (hypersim, vkitti2, tartanair, blendedmvs, irs)}
"""Dataset name -> its module (``classify``, ``convert``, ``DEPTH_TYPE``, ``SOURCE``)."""
