"""The model workshop: what makes, compares and ships the networks of ``glioma_nb/segment/models`` (``glioma-nb
segment-train | segment-compare | segment-rescore | segment-postprocess-cv``, through :mod:`glioma_nb.api.zoo`).

``cv``              k-fold cross-validation of a spec: fold models, out-of-fold masks and scores, the rule chosen
``postprocess_cv``  the post-processing rule of a single network, cross-validated on its training patients
``evaluate``        a trained network scored on the cases its spec holds out
``cards``           the model cards (single network, cross-validated ensemble) and their metric tables
``ship``            weights, spec settings and card into the package; a shipped card scored again

It sits above :mod:`glioma_nb.segment` (it trains with ``segment.train`` and predicts with ``segment.infer``);
nothing a run executes imports it.
"""
