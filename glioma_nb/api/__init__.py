"""Plain functions a notebook (or a script) can call; the command line (:mod:`glioma_nb.cli`) only parses and
calls them. :mod:`.cohorts` (validate, overlap), :mod:`.idc` (manifest, download), :mod:`.zoo` (train, compare,
rescore, post-processing CV of segmentation models), :mod:`.lab` (JupyterLab), :mod:`.docs` (the documentation
site). Runs and studies are :func:`glioma_nb.runner.run` and :func:`glioma_nb.runner.run_study`; benchmarks are
:mod:`glioma_nb.bench`; supplements :func:`glioma_nb.publish.publish`."""
