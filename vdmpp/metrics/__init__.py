"""Sample-quality metrics (THEORY §12): Fréchet distance, KID, precision/recall, text perplexity; feature networks."""

from ._cache import (
    default_cache_dir as default_cache_dir,
    feature_network as feature_network,
    feature_network_path as feature_network_path,
    load_feature_network as load_feature_network,
    save_feature_network as save_feature_network,
)
from ._extractor import (
    AbstractFeatureExtractor as AbstractFeatureExtractor,
    FeatureFunction as FeatureFunction,
    FeatureNetwork as FeatureNetwork,
)
from ._kid import kid as kid
from ._prd import precision_recall as precision_recall
from ._quality import sample_quality as sample_quality
from ._stats import (
    all_gather_stats as all_gather_stats,
    FeatureStats as FeatureStats,
    frechet_distance as frechet_distance,
)
from ._text import CharNGram as CharNGram, generative_perplexity as generative_perplexity, TextQuality as TextQuality
from ._training import (
    accuracy as accuracy,
    ClassifierConfig as ClassifierConfig,
    data_fingerprint as data_fingerprint,
    train_feature_network as train_feature_network,
)
