"""Names every node module shares: the menu category, the Φ socket type, the sampler and folder names, the
UI output key the front end reads, and the pack's logger."""

from __future__ import annotations

import logging

LOG = logging.getLogger("comfyui_dyweight")

CATEGORY = "sampling/dyweight"
TRAINING_CATEGORY = CATEGORY + "/training"
COEFFICIENTS = "DYWEIGHT_COEFFICIENTS"  # the socket type of a Φ between nodes
SAMPLER_NAME = "dyweight"  # in the stock KSampler / KSamplerSelect dropdowns
FOLDER_NAME = "dyweight"  # models/dyweight/, registered with folder_paths
PHI_OUTPUT = "dyweight_phi"  # the nodes' UI output holding Φ JSON (web/dyweight.js draws it)
