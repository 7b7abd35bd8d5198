"""Real-data importers to the canonical layout (``cll_ray.layout``): XM3600, COCO-36, and your own language."""

from cll_ray.importers.byo import add_language
from cll_ray.importers.coco36 import import_coco36
from cll_ray.importers.common import BadRecord, BadRecordsError, ImportReport
from cll_ray.importers.xm3600 import import_xm3600, parse_carve

__all__ = ["BadRecord", "BadRecordsError", "ImportReport", "add_language", "import_coco36", "import_xm3600",
           "parse_carve"]
