"""MLA as its authors define it (mla.md §1.2-§1.3; Zhang, Hu & Jin, NeurIPS 2022), on the CLL sequence.

- A **shared multilingual token embedding**: without M-BERT weights (none can be fetched here) it is the CLL-CLIP
  expandable embedding, grown per language with the configured init (TEIR init in the presets) —
  ``method.mla_embedding_init: cll_expandable`` records that choice in the run's config.
- **Per-language acquirers**: a residual bottleneck MLP (width → width/2 → width, ReLU) after every frozen text
  layer, one set per language (``m_acquirer``), chosen by the query's language at test time.
- **Two stages per language**: Native Language Transfer (MSE to the English teacher text embedding; parallel
  text only, images never read), then Language Exposure (image-text InfoNCE at a fixed temperature; the
  original's logit scale 100 = τ 0.01). Both train the shared embedding and the language's acquirers (the
  released code's default switches); the rest of the tower stays frozen.
"""

from __future__ import annotations

from cll_ray.config import TrainConfig
from cll_ray.methods.adapters import MLAAdapter
from cll_ray.methods.base import Stage, TaskSpec

EMBEDDING_INITS = ("cll_expandable",)


class MLA(MLAAdapter):
    """Same acquirer placement as ``mla_adapter`` (after each block's output); differs in the two-stage schedule."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.mla_embedding_init not in EMBEDDING_INITS:
            raise ValueError(f"method.mla_embedding_init must be one of {EMBEDDING_INITS} (no M-BERT weights are "
                             f"available offline), got '{cfg.mla_embedding_init}'")
        if cfg.mla_nlt_epochs < 0 or cfg.mla_le_epochs < 0 or cfg.mla_nlt_epochs + cfg.mla_le_epochs == 0:
            raise ValueError("method.mla_nlt_epochs and method.mla_le_epochs must be >= 0, not both 0")

    def stages(self, task: TaskSpec, train: TrainConfig) -> list[Stage]:
        c = self.cfg
        nlt = Stage("nlt", c.mla_nlt_epochs, cross_lingual_weight=1.0, cross_modal_weight=0.0,
                    temperature=c.mla_le_temperature, learn_temperature=False, use_images=False)
        le = Stage("le", c.mla_le_epochs, cross_lingual_weight=0.0, cross_modal_weight=1.0,
                   temperature=c.mla_le_temperature, learn_temperature=False, use_images=True)
        return [s for s in (nlt, le) if s.epochs > 0]
