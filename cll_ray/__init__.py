"""cll-ray: continual language learning for CLIP (CLL-CLIP + TEIR, MLA) on open_clip and Ray."""

__version__ = "0.1.0"
