"""Metrics: a feature-extractor registry and the distances between feature sets.

FID is computed by clean-fid with our extractor passed in; KID and precision/recall/density/coverage are pure
functions of feature arrays. Features are kept apart from the mathematics (k-diffusion's evaluation.py).

    feats_real = folder_features("real/", "digits")
    feats_fake = images_to_features("digits", samples)    # float [-1, 1] tensor straight from a sampler
    fid_from_features(feats_real, feats_fake)
"""

from core.metrics.distances import feature_stats, fid_from_features, fid_from_stats, kid_from_features, prdc
from core.metrics.extractors import EXTRACTORS, ExtractorInfo, InceptionWeightsMissing, get_extractor, resize_for
from core.metrics.features import check_folder, folder_features, folder_fid, images_to_features

__all__ = ["EXTRACTORS", "ExtractorInfo", "InceptionWeightsMissing", "check_folder", "feature_stats", "fid_from_features",
           "fid_from_stats", "folder_features", "folder_fid", "get_extractor", "images_to_features", "kid_from_features",
           "prdc", "resize_for"]
