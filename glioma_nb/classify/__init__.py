"""Classification (notebook 03): the seed paper's tree of binary nodes and the WHO CNS5 diagnosis.

``nodes``      the nodes: who is eligible and what the label is
``pipelines``  scikit-learn pipelines and tuning searches, by registry name
``features``   the clinical baseline and joins of feature tables (``a+b``, ``all``)
``cv``         nested cross-validation, permutation test, node statistics, the node x feature-set grid
``cns5``       the CNS5 integrated diagnosis from markers and from the cross-validated cascade
``step``       notebook 03's one call: :func:`step.step` -> :class:`step.ClassifyResult`
"""
