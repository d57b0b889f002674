"""IBSI-1 check: PyRadiomics on the IBSI digital phantom against the consensus reference values.

The phantom (5 x 4 x 4 voxels of 2 mm, grey levels 1-6; Zwanenburg et al., Radiology 2020) is
extracted with the IBSI phantom settings: no resampling, no normalisation, no discretisation beyond
the phantom's own integer levels (bin width 1), 3D texture with distance 1, NGLDM alpha 0. Every
PyRadiomics feature with an IBSI counterpart (:data:`IBSI_TAGS`, 3D; texture matrices averaged over
directions, IBSI "3D_avg", for GLCM and GLRLM) is compared with the reference value: it matches when
it lies within the IBSI tolerance, or, where the reference gives tolerance 0, when it rounds to the
reference's 3 significant digits. Known deviations of PyRadiomics are listed in
:data:`EXPECTED_DEVIATIONS` with their reason; the test fails both when another feature deviates and
when a listed one starts to match (so the table stays true).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

# PyRadiomics class_feature -> IBSI-1 tag of the digital phantom reference table
IBSI_TAGS: dict[str, str] = {
    # morphology (mesh based)
    "shape_MeshVolume": "morph_volume", "shape_VoxelVolume": "morph_vol_approx",
    "shape_SurfaceArea": "morph_area_mesh", "shape_SurfaceVolumeRatio": "morph_av",
    "shape_Sphericity": "morph_sphericity", "shape_Maximum3DDiameter": "morph_diam",
    "shape_MajorAxisLength": "morph_pca_maj_axis", "shape_MinorAxisLength": "morph_pca_min_axis",
    "shape_LeastAxisLength": "morph_pca_least_axis", "shape_Elongation": "morph_pca_elongation",
    "shape_Flatness": "morph_pca_flatness",
    # intensity statistics (stat_) and intensity histogram (ih_, on the discretised image)
    "firstorder_Mean": "stat_mean", "firstorder_Variance": "stat_var", "firstorder_Skewness": "stat_skew",
    "firstorder_Kurtosis": "stat_kurt", "firstorder_Median": "stat_median", "firstorder_Minimum": "stat_min",
    "firstorder_10Percentile": "stat_p10", "firstorder_90Percentile": "stat_p90", "firstorder_Maximum": "stat_max",
    "firstorder_InterquartileRange": "stat_iqr", "firstorder_Range": "stat_range",
    "firstorder_MeanAbsoluteDeviation": "stat_mad", "firstorder_RobustMeanAbsoluteDeviation": "stat_rmad",
    "firstorder_Energy": "stat_energy", "firstorder_RootMeanSquared": "stat_rms",
    "firstorder_Entropy": "ih_entropy", "firstorder_Uniformity": "ih_uniformity",
    # grey level co-occurrence matrix, 3D, averaged over the 13 directions
    "glcm_MaximumProbability": "cm_joint_max_3D_avg", "glcm_JointAverage": "cm_joint_avg_3D_avg",
    "glcm_SumSquares": "cm_joint_var_3D_avg", "glcm_JointEntropy": "cm_joint_entr_3D_avg",
    "glcm_DifferenceAverage": "cm_diff_avg_3D_avg", "glcm_DifferenceVariance": "cm_diff_var_3D_avg",
    "glcm_DifferenceEntropy": "cm_diff_entr_3D_avg", "glcm_SumAverage": "cm_sum_avg_3D_avg",
    "glcm_SumEntropy": "cm_sum_entr_3D_avg", "glcm_JointEnergy": "cm_energy_3D_avg",
    "glcm_Contrast": "cm_contrast_3D_avg", "glcm_Id": "cm_inv_diff_3D_avg", "glcm_Idn": "cm_inv_diff_norm_3D_avg",
    "glcm_Idm": "cm_inv_diff_mom_3D_avg", "glcm_Idmn": "cm_inv_diff_mom_norm_3D_avg",
    "glcm_InverseVariance": "cm_inv_var_3D_avg", "glcm_Correlation": "cm_corr_3D_avg",
    "glcm_Autocorrelation": "cm_auto_corr_3D_avg", "glcm_ClusterTendency": "cm_clust_tend_3D_avg",
    "glcm_ClusterShade": "cm_clust_shade_3D_avg", "glcm_ClusterProminence": "cm_clust_prom_3D_avg",
    "glcm_Imc1": "cm_info_corr1_3D_avg", "glcm_Imc2": "cm_info_corr2_3D_avg",
    # grey level run length matrix, 3D, averaged over the 13 directions
    "glrlm_ShortRunEmphasis": "rlm_sre_3D_avg", "glrlm_LongRunEmphasis": "rlm_lre_3D_avg",
    "glrlm_LowGrayLevelRunEmphasis": "rlm_lgre_3D_avg", "glrlm_HighGrayLevelRunEmphasis": "rlm_hgre_3D_avg",
    "glrlm_ShortRunLowGrayLevelEmphasis": "rlm_srlge_3D_avg", "glrlm_ShortRunHighGrayLevelEmphasis": "rlm_srhge_3D_avg",
    "glrlm_LongRunLowGrayLevelEmphasis": "rlm_lrlge_3D_avg", "glrlm_LongRunHighGrayLevelEmphasis": "rlm_lrhge_3D_avg",
    "glrlm_GrayLevelNonUniformity": "rlm_glnu_3D_avg", "glrlm_GrayLevelNonUniformityNormalized": "rlm_glnu_norm_3D_avg",
    "glrlm_RunLengthNonUniformity": "rlm_rlnu_3D_avg",
    "glrlm_RunLengthNonUniformityNormalized": "rlm_rlnu_norm_3D_avg", "glrlm_RunPercentage": "rlm_r_perc_3D_avg",
    "glrlm_GrayLevelVariance": "rlm_gl_var_3D_avg", "glrlm_RunVariance": "rlm_rl_var_3D_avg",
    "glrlm_RunEntropy": "rlm_rl_entr_3D_avg",
    # grey level size zone matrix, 3D
    "glszm_SmallAreaEmphasis": "szm_sze_3D", "glszm_LargeAreaEmphasis": "szm_lze_3D",
    "glszm_LowGrayLevelZoneEmphasis": "szm_lgze_3D", "glszm_HighGrayLevelZoneEmphasis": "szm_hgze_3D",
    "glszm_SmallAreaLowGrayLevelEmphasis": "szm_szlge_3D", "glszm_SmallAreaHighGrayLevelEmphasis": "szm_szhge_3D",
    "glszm_LargeAreaLowGrayLevelEmphasis": "szm_lzlge_3D", "glszm_LargeAreaHighGrayLevelEmphasis": "szm_lzhge_3D",
    "glszm_GrayLevelNonUniformity": "szm_glnu_3D", "glszm_GrayLevelNonUniformityNormalized": "szm_glnu_norm_3D",
    "glszm_SizeZoneNonUniformity": "szm_zsnu_3D", "glszm_SizeZoneNonUniformityNormalized": "szm_zsnu_norm_3D",
    "glszm_ZonePercentage": "szm_z_perc_3D", "glszm_GrayLevelVariance": "szm_gl_var_3D",
    "glszm_ZoneVariance": "szm_zs_var_3D", "glszm_ZoneEntropy": "szm_zs_entr_3D",
    # neighbourhood grey tone difference matrix, 3D
    "ngtdm_Coarseness": "ngt_coarseness_3D", "ngtdm_Contrast": "ngt_contrast_3D", "ngtdm_Busyness": "ngt_busyness_3D",
    "ngtdm_Complexity": "ngt_complexity_3D", "ngtdm_Strength": "ngt_strength_3D",
    # grey level dependence matrix = IBSI neighbouring grey level dependence matrix (alpha 0, distance 1), 3D
    "gldm_SmallDependenceEmphasis": "ngl_lde_3D", "gldm_LargeDependenceEmphasis": "ngl_hde_3D",
    "gldm_LowGrayLevelEmphasis": "ngl_lgce_3D", "gldm_HighGrayLevelEmphasis": "ngl_hgce_3D",
    "gldm_SmallDependenceLowGrayLevelEmphasis": "ngl_ldlge_3D",
    "gldm_SmallDependenceHighGrayLevelEmphasis": "ngl_ldhge_3D",
    "gldm_LargeDependenceLowGrayLevelEmphasis": "ngl_hdlge_3D",
    "gldm_LargeDependenceHighGrayLevelEmphasis": "ngl_hdhge_3D",
    "gldm_GrayLevelNonUniformity": "ngl_glnu_3D", "gldm_DependenceNonUniformity": "ngl_dcnu_3D",
    "gldm_DependenceNonUniformityNormalized": "ngl_dcnu_norm_3D", "gldm_GrayLevelVariance": "ngl_gl_var_3D",
    "gldm_DependenceVariance": "ngl_dc_var_3D", "gldm_DependenceEntropy": "ngl_dc_entr_3D",
}

# PyRadiomics features that deviate from the IBSI reference on the phantom, with the reason.
EXPECTED_DEVIATIONS: dict[str, str] = {
    "firstorder_Kurtosis": "PyRadiomics reports the kurtosis, IBSI the excess kurtosis (kurtosis - 3): "
                           "2.645 = -0.355 + 3 (documented in PyRadiomics' feature definitions)",
    "shape_MinorAxisLength": "PCA axis lengths 4 sqrt(lambda) from the covariance of the voxel centres: the "
                             "reference is 0.7 % larger (9.31 vs 9.245; tolerance 0.06), the ratio sqrt(N/(N-1)) "
                             "of the two covariance normalisations for N = 74 voxels; elongation and flatness, "
                             "ratios of the same lengths, match",
    "shape_LeastAxisLength": "as MinorAxisLength: 8.478 vs 8.54 (tolerance 0.05), the same 0.7 % covariance "
                             "normalisation difference",
}

# The IBSI phantom settings for PyRadiomics.
PHANTOM_SETTINGS = {
    "imageType": {"Original": {}},
    "featureClass": {c: None for c in ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")},
    "setting": {"binWidth": 1, "label": 1, "normalize": False, "resampledPixelSpacing": None,
                "minimumROIDimensions": 1, "minimumROISize": 1, "voxelArrayShift": 0, "gldm_a": 0,
                "correctMask": False, "distances": [1], "force2D": False},
}


def read_reference(path: Path) -> pd.DataFrame:
    """The reference table ('value;tolerance;tag'); tags without a consensus value are dropped."""
    ref = pd.read_csv(path, sep=";", header=0, names=["value", "tolerance", "tag"])
    return ref.dropna(subset=["value"]).set_index("tag")


def matches(value: float, reference: float, tolerance: float) -> bool:
    """Within the IBSI tolerance; with tolerance 0, equal to the reference's 3 significant digits."""
    if tolerance > 0:
        return abs(value - reference) <= tolerance + 1e-12
    if reference == 0:
        return abs(value) < 5e-4
    half_unit = 0.5 * 10 ** (math.floor(math.log10(abs(reference))) - 2)
    return abs(value - reference) <= half_unit * (1 + 1e-9)


def extract_phantom(folder: Path) -> dict[str, float]:
    """PyRadiomics features of the IBSI-1 digital phantom (``phantom.nii.gz``, ``mask.nii.gz``)."""
    import SimpleITK as sitk
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    ex = featureextractor.RadiomicsFeatureExtractor(PHANTOM_SETTINGS)
    out = ex.execute(sitk.ReadImage(str(Path(folder) / "phantom.nii.gz")),
                     sitk.ReadImage(str(Path(folder) / "mask.nii.gz")), label=1)
    return {k.removeprefix("original_"): float(v) for k, v in out.items() if not k.startswith("diagnostics_")}


def compare(folder: Path) -> pd.DataFrame:
    """One row per PyRadiomics feature: its IBSI tag, value, reference, tolerance, status
    (match | expected deviation | deviation | no IBSI reference) and the reason of an expected deviation."""
    values = extract_phantom(folder)
    ref = read_reference(Path(folder) / "reference_values_digital_phantom.csv")
    rows = []
    for feat, val in values.items():
        tag = IBSI_TAGS.get(feat)
        if tag is None or tag not in ref.index:
            rows.append({"feature": feat, "ibsi_tag": tag or "", "value": val, "reference": float("nan"),
                         "tolerance": float("nan"), "status": "no IBSI reference", "reason": ""})
            continue
        r = ref.loc[tag]
        ok = matches(val, float(r["value"]), float(r["tolerance"]))
        status = "match" if ok else ("expected deviation" if feat in EXPECTED_DEVIATIONS else "deviation")
        rows.append({"feature": feat, "ibsi_tag": tag, "value": val, "reference": float(r["value"]),
                     "tolerance": float(r["tolerance"]), "status": status,
                     "reason": EXPECTED_DEVIATIONS.get(feat, "") if not ok else ""})
    return pd.DataFrame(rows)
