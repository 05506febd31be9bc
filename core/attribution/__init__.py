"""Attribution graphs (the circuit-tracer method) on any supported model: see ``attribute``."""

from core.attribution.attribute import AttributionResult, AttributionSettings, attribute, frozen_patches, frozen_points
from core.attribution.targets import Target, resolve_token

__all__ = ["AttributionResult", "AttributionSettings", "Target", "attribute", "frozen_patches", "frozen_points",
           "resolve_token"]
