"""``classify tsne``: a 2-D t-SNE map of test features, coloured by class."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from featcache import options
from featcache.classify.features import DEFAULT_LAYERS, Part, open_cache, read
from featcache.classify.plots import plot_map
from featcache.classify.select import DEFAULT_DATASET, CacheFields, CacheQuery, resolve_cache
from featcache.classify.splits import stratified_subset
from featcache.classify.transforms import Standardize
from featcache.errors import environment_fault
from featcache.files import atomic_write, slug

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TsneConfig(CacheFields):
    """Which cache and layers to map, how many test points, which seed."""

    data_dir: Path
    dataset: str | None = None
    cache: Path | None = None
    layers: tuple[str, ...] = DEFAULT_LAYERS
    points: int = options.option(options.TSNE, "points").default
    seed: int = options.option(options.TSNE, "seed").default

    def __post_init__(self) -> None:
        options.check(options.TSNE, {"points": self.points, "seed": self.seed}, make_names=True)


def make_tsne(config: TsneConfig) -> Path:
    """Embed a stratified sample of test features (centre view, standardised, PCA-50) in 2-D."""
    query = CacheQuery(dataset=config.dataset or DEFAULT_DATASET, layers=config.layers,
                       **config.cache_fields())
    path = resolve_cache(config.data_dir, query, config.cache)
    with open_cache(path, config.layers, splits=("test",)) as cache:
        labels = cache.labels("test")
        rows = (
            stratified_subset(labels, config.points, config.seed, what="POINTS")
            if config.points < len(labels)
            else np.arange(len(labels))
        )
        block = read(cache, [Part("test", rows)], config.layers)
        names = list(cache.class_names)
        dataset = str(cache.meta.get("dataset", path.parent.name))
        backbone = str(cache.meta.get("backbone", "unknown"))
    X = Standardize().fit_transform(np.ascontiguousarray(block.X[:, block.centre]))
    X = PCA(min(50, *X.shape), random_state=config.seed).fit_transform(X)
    perplexity = min(30.0, (len(X) - 1) / 3)
    logger.info("t-SNE of %d points (perplexity %.0f)", len(X), perplexity)
    points = TSNE(2, perplexity=perplexity, init="pca", random_state=config.seed).fit_transform(X)
    out_dir = Path(config.data_dir) / "plots"
    layer = "+".join(config.layers)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = "-".join([stamp, slug(dataset), slug(backbone), slug(layer), "tsne"])
    out = out_dir / f"{name}-{secrets.token_hex(2)}.png"
    title = f"t-SNE of {dataset} test features ({backbone}, {layer}, {len(X)} points)"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda fh: plot_map(points, block.y, names, fh, title))
    except OSError as exc:
        raise environment_fault(exc, out_dir, "nothing was kept") from None
    return out
