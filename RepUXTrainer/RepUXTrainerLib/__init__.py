"""Qt-free logic of the RepUXTrainer module.

* :mod:`.trainingset` - the training-set folder: manifest, cases, label set (plain Python);
* :mod:`.mapping` - segment names and terminology codes to the label set, unknown segments flagged;
* :mod:`.curation` - volume + segmentation to case files through Slicer storage nodes, and back;
* :mod:`.finetune` - ``repux finetune`` in a background process: start, stop (checkpoint), resume;
* :mod:`.monitor` - progress lines to a table node, plot series and chart;
* :mod:`.suggest` - rank volumes by the model's uncertainty, uncertainty overlay;
* :mod:`.logic` - :class:`~.logic.TrainerLogic`, the whole workflow for the module and the console;
* :mod:`.testing` - synthetic cases for the self-test.

Shared pieces come from ``RepUXSegmentLib`` (process runner, MRML helpers, model listing).
Importing this package imports neither Qt nor torch; :mod:`.curation`, :mod:`.monitor`'s
plot and :mod:`.suggest`'s overlay need the ``slicer`` MRML classes (Slicer or slicer-core).
"""

from __future__ import annotations

from .finetune import FinetuneError, FinetuneJob, FinetuneOptions, FinetuneOutcome, suggestModelId
from .mapping import LabelMapping, SegmentInfo, SegmentMapping
from .trainingset import CaseRow, TrainingSet, TrainingSetError, isTrainingSet

__all__ = [
    "CaseRow",
    "FinetuneError",
    "FinetuneJob",
    "FinetuneOptions",
    "FinetuneOutcome",
    "LabelMapping",
    "SegmentInfo",
    "SegmentMapping",
    "TrainingSet",
    "TrainingSetError",
    "isTrainingSet",
    "suggestModelId",
]
