"""The ComfyUI side: nodes, the ``dyweight`` sampler in the stock dropdowns, folders and routes.

Importing this package registers everything (idempotently); ComfyUI does so when it first reads the
pack's ``NODE_CLASS_MAPPINGS``.
"""

from .folders import register_folder
from .load_node import DyWeightLoadCoefficients
from .routes import register_routes
from .sampler import register_sampler
from .sampling_nodes import DyWeightSampler, DyWeightSigmas, KSamplerDyWeight
from .train_node import DyWeightTrain

register_folder()
register_sampler()
register_routes()

NODE_CLASS_MAPPINGS = {
    "KSamplerDyWeight": KSamplerDyWeight,
    "DyWeightSampler": DyWeightSampler,
    "DyWeightSigmas": DyWeightSigmas,
    "DyWeightLoadCoefficients": DyWeightLoadCoefficients,
    "DyWeightTrain": DyWeightTrain,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "KSamplerDyWeight": "KSampler (DyWeight)",
    "DyWeightSampler": "DyWeight Sampler",
    "DyWeightSigmas": "DyWeight Sigmas",
    "DyWeightLoadCoefficients": "Load DyWeight Coefficients",
    "DyWeightTrain": "Train DyWeight Coefficients",
}
