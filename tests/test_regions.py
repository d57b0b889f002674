"""A model per region (issue 47, ``segment.regions``): the assembled label map's known answer, its errors, and a
run's 01 step taking WT from flair-wt and TC/ET from brats-4mod, resumed and undone."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from glioma_nb import io, runner
from glioma_nb.segment import SegmentationError
from glioma_nb.segment import regions as seg_regions
from glioma_nb.segment import step as seg_step
from tests.conftest import write_brats_cohort

BRATS, BINARY = io.LABEL_SCHEMES["brats2018"], io.LABEL_SCHEMES["binary"]


def test_regions_are_taken_from_their_models_and_nested():
    four = np.zeros((12, 12, 12), np.uint8)        # brats-4mod-like: oedema, core 1 and an enhancing voxel
    four[2:9, 2:9, 2:9] = 2
    four[4:7, 4:7, 4:7] = 1
    four[5, 5, 5] = 4
    four[0, 0, 0] = 1                              # a core voxel outside the FLAIR model's whole tumour
    flair = np.zeros_like(four)
    flair[3:11, 3:11, 3:11] = 1
    assign = seg_regions.assignment({"WT": "flair"}, "four")
    assert assign == {"WT": "flair", "TC": "four", "ET": "four"}
    lab, scheme = seg_regions.combine({"four": (four, BRATS), "flair": (flair, BINARY)}, assign, BRATS)
    assert scheme.name == "brats2018"
    wt, tc = lab > 0, np.isin(lab, (1, 4))
    assert np.array_equal(tc, np.isin(four, (1, 4))) and np.array_equal(lab == 4, four == 4)
    assert np.array_equal(wt, (flair > 0) | tc)                       # WT = the FLAIR model's united with the core
    assert lab[0, 0, 0] == 1 and lab[10, 10, 10] == 2 and lab[2, 2, 2] == 0
    b23, _ = seg_regions.combine({"four": (four, BRATS), "flair": (flair, BINARY)}, assign,
                                 io.LABEL_SCHEMES["brats2023"])
    assert set(np.unique(b23)) == {0, 1, 2, 3}                           # ET 3 in BraTS 2023 labels
    same, _ = seg_regions.combine({"four": (four, BRATS)}, seg_regions.assignment({}, "four"), BRATS)
    assert np.array_equal(same, four)                                   # one model: its own map
    assert seg_regions.words(assign) == "WT: flair; TC, ET: four"


def test_a_region_no_model_segments_is_an_error_naming_it():
    with pytest.raises(SegmentationError, match="not regions; use WT, TC and ET"):
        seg_regions.assignment({"oedema": "flair-wt"}, "brats-4mod")
    with pytest.raises(SegmentationError, match="model flair-wt segments \\['WT'\\], not TC"):
        seg_regions.check(seg_regions.assignment({"TC": "flair-wt"}, "brats-4mod"),
                          {"brats-4mod": "brats", "flair-wt": "wt"})
    seg_regions.check(seg_regions.assignment({}, "flair-wt"), {"flair-wt": "wt"})   # a WT model alone is fine


def _masks(folder, cid):
    return np.asarray(nib.load(folder / f"{cid}.nii.gz").dataobj)


def test_a_run_takes_wt_from_flair_wt_and_the_core_from_brats_4mod(tmp_path):
    cohort_yaml = write_brats_cohort(tmp_path / "two", n=2)
    over = {"segment": {"model": "brats-4mod", "regions": {"WT": "flair-wt"}, "backend": "torch",   # no conversions
                        "n_overlay_cases": 1}, "signature": {"network": False}}
    run_dir = runner.create_run(str(cohort_yaml), over, steps=["01_segment"], progress=False)
    ctx = runner.open_step("01_segment", run_dir=str(run_dir))
    res = seg_step.step(ctx, progress=False, **ctx.params)
    masks = ctx.output_dir / "masks"
    own, other = masks / "regions" / "brats-4mod", masks / "regions" / "flair-wt"
    assert "WT: flair-wt; TC, ET: brats-4mod" in res.describe() and res.record()["regions"]["WT"] == "flair-wt"
    first = {}
    for row in res.cases.itertuples():
        four, flair = _masks(own, row.case_id), _masks(other, row.case_id)
        assert set(np.unique(flair)) <= {0, 1}
        lab = _masks(masks, row.case_id)
        expect, _ = seg_regions.combine({"brats-4mod": (four, BRATS), "flair-wt": (flair, BINARY)},
                                        seg_regions.assignment({"WT": "flair-wt"}, "brats-4mod"), BRATS)
        assert np.array_equal(lab, expect)
        vox = 2.0 * 2.0 * 2.5 / 1000
        assert row.WT_ml == pytest.approx((lab > 0).sum() * vox) and row.regions == "WT: flair-wt; TC, ET: brats-4mod"
        assert json.loads((masks / f"{row.case_id}.json").read_text())["WT_ml"] == pytest.approx(row.WT_ml)
        first[row.case_id] = lab
    # resumed: every mask cached, assembled again from the kept masks to the same map
    again = seg_step.step(ctx, progress=False, **ctx.params)
    assert set(again.cases["status"]) == {"cached"}
    assert all(np.array_equal(_masks(masks, c), m) for c, m in first.items())
    # resumed without regions: brats-4mod's own masks come back
    params = {**ctx.params, "regions": {}}
    alone = seg_step.step(ctx, progress=False, **params)
    for row in alone.cases.itertuples():
        assert np.array_equal(_masks(masks, row.case_id), _masks(own, row.case_id)) and not isinstance(
            getattr(row, "regions", None), str)


def test_scans_grown_from_a_training_case_count_as_seen_by_the_model():
    """A cohort derived from another's cases (synth --serial-from): a model that trained on a source case is not
    scored on the scans grown from it (flair-wt held out Brats18_2013_20_1 and trained on Brats18_2013_11_1)."""
    from types import SimpleNamespace

    from glioma_nb.segment import registry

    seg = registry.load("flair-wt")
    ids = ["Brats18_2013_11_1_s0", "Brats18_2013_11_1_s1", "Brats18_2013_20_1_s0"]
    cohort = SimpleNamespace(case_ids=ids, name="brats18-dev-serial", root=None)
    derived = {"cohort": "brats18-dev", "cases": {c: c.rsplit("_s", 1)[0] for c in ids}}
    assert seg_step._trained_on([seg], cohort, derived) == ids[:2]
    assert seg_step._trained_on([seg], cohort, {}) == []     # read as its own cohort, nothing matches
