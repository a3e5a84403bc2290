"""Pipelines: YAML steps compiled to ReactiveX operators over ``Record``s.

``steps`` is the registry (one typed model per op; ``detector_steps`` the detectors' models),
``expressions`` the safe expression language, ``operators``/``windows``/``alerts``/``silence``/
``actions`` the operator factories, ``scorers`` the per-key anomaly tests and ``detect`` their
alert lifecycle, ``context`` what a step is given at build time.
"""

from gateway.pipeline.context import Operator, StepContext
from gateway.pipeline.expressions import Expression, ExpressionError, compile_expression
from gateway.pipeline.steps import STEP_NAMES, Step, compile_steps

__all__ = [
    "STEP_NAMES",
    "Expression",
    "ExpressionError",
    "Operator",
    "Step",
    "StepContext",
    "compile_expression",
    "compile_steps",
]
