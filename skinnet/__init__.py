"""skinnet: multi-modal skin lesion classification with a single-shared network.

Library only: ``import skinnet`` loads neither gradio nor the training package.
"""
__version__ = "0.1.0"

from .checkpoint import ModelCard, load_checkpoint, save_checkpoint  # noqa: E402
from .labels import TASKS, TASK_NAMES, seven_point_score  # noqa: E402
from .model import ModelConfig, SingleSharedNet, count_parameters, create_model  # noqa: E402

__all__ = ["ModelCard", "ModelConfig", "SingleSharedNet", "TASKS", "TASK_NAMES", "__version__",
           "count_parameters", "create_model", "load_checkpoint", "save_checkpoint",
           "seven_point_score"]
