"""Pipelines: YAML steps compiled to ReactiveX operators over ``Record``s.

``steps`` is the registry (one typed model per op), ``expressions`` the safe expression
language, ``operators``/``windows``/``alerts`` the operator factories, ``context`` what a step
is given at build time.
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
