"""Human review of machine labels in an annotation server (Label Studio): recovered and predicted
labels go out as pre-annotations, least certain image first; reviewed labels come back into the
label file as known entries, conflicts with known labels reported, never silently overwritten.
See ``docs/review.md``."""

from mlrkit.review.label_studio import (
    export_tasks,
    labelling_config,
    margins,
    merge_reviewed,
    reviewed_labels,
)
from mlrkit.review.round_trip import export_label_studio, import_labels
from mlrkit.review.sources import Proposal, read_proposal

__all__ = [
    "Proposal",
    "export_label_studio",
    "export_tasks",
    "import_labels",
    "labelling_config",
    "margins",
    "merge_reviewed",
    "read_proposal",
    "reviewed_labels",
]
