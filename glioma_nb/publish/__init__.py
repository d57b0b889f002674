"""The published supplement of a run or study: an RO-Crate zip with a landing page, the participant flow and the
CLEAR and TRIPOD+AI checklists filled from the run (``glioma-nb publish``)."""
from glioma_nb.publish.crate import PublishError, publish

__all__ = ["PublishError", "publish"]
