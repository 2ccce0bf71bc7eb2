"""Import, once, the code that loading and running a checkpoint will need.

The server's keeper (``app/server/keeper.py``) calls this before it forks its first serving process, so
that process, every one that replaces it, and the model process each of them forks start with torch,
transformers and the checkpoint's model and processor classes already imported: seconds a restart
would otherwise spend in imports. Nothing is loaded here, only imported; no thread is started and
CUDA is not touched, so forking afterwards is safe.
"""

from __future__ import annotations

import logging
import sys

from transformers import AutoConfig
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

import app.engine.local_model
import app.engine.model_process
import app.engine.transformers_engine  # noqa: F401 - imported for the modules it brings in

logger = logging.getLogger(__name__)


def import_model_code(model_path: str) -> int:
    """Import the model, processor and image-processor classes the checkpoint at ``model_path`` names (through
    the same auto mappings ``from_pretrained`` uses); the number of modules now imported. An unreadable
    checkpoint imports nothing more: its load reports why."""
    try:
        config_class = type(AutoConfig.from_pretrained(model_path))
    except (OSError, ValueError) as exc:
        logger.warning("not importing the model's code ahead: %s", exc)
        return len(sys.modules)
    for mapping in (MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, PROCESSOR_MAPPING, IMAGE_PROCESSOR_MAPPING):
        if config_class in mapping:
            mapping[config_class]  # a lazy mapping: looking a class up imports its module
    return len(sys.modules)
