"""Component circuits: EAP, EAP-IG and exact patching over attention heads and MLPs (see DESIGN,
"Method 2"). ``find_circuit(model, pairs, CircuitSettings())`` is the entry point."""

from core.circuits.discover import (
    CURVE_SIZES,
    METHODS,
    CircuitResult,
    CircuitSettings,
    FaithfulnessCurve,
    choose_circuit,
    evaluate_circuits,
    find_circuit,
    score_edges,
)
from core.circuits.engine import METRICS, ComponentRunner
from core.circuits.graph import ComponentGraph
from core.circuits.tasks import (
    TASKS,
    PairSet,
    PromptPair,
    encode_pairs,
    load_pair_source,
    load_pairs,
    make_task,
    prompt_pair,
)

__all__ = [
    "CURVE_SIZES", "METHODS", "METRICS", "TASKS", "CircuitResult", "CircuitSettings", "ComponentGraph",
    "ComponentRunner", "FaithfulnessCurve", "PairSet", "PromptPair", "choose_circuit", "encode_pairs",
    "evaluate_circuits", "find_circuit", "load_pair_source", "load_pairs", "make_task", "prompt_pair", "score_edges",
]
