"""A small, safe expression language over one reading.

Example: ``value > 30 and device.startswith('pump')``.

Config text is never passed to ``eval``: it is parsed with ``ast.parse(mode="eval")``, every node
is checked against a whitelist, field names are rewritten to attribute reads on the reading,
and the checked tree is compiled once into a plain function with empty builtins.

Allowed:
    - fields ``value device metric source ts seq`` (read only)
    - constants: str, int, float, bool, None; tuples/lists of constants after ``in`` / ``not in``
    - ``and or not``, ``== != < <= > >= in not in is is not``, ``+ - * / // % **``, unary ``- +``
    - ``a if cond else b``
    - calls ``abs min max round`` and ``device/metric/source.startswith/endswith(...)``

Guards: ``**`` needs a constant exponent with ``|exponent| <= 100`` and is computed with
``math.pow`` (overflow raises instead of building a huge integer, no complex results);
``*`` and ``%`` refuse operands that may be strings (no ``device * 10**9`` memory bomb).
Errors at run time (division by zero, overflow, comparing ``None``) propagate to the step,
which counts and drops the reading.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from gateway.model import Reading

FIELDS = ("value", "device", "metric", "source", "ts", "seq")
STRING_FIELDS = frozenset({"device", "metric", "source"})
FUNCTIONS: dict[str, Callable[..., Any]] = {"abs": abs, "min": min, "max": max, "round": round}
STRING_METHODS = frozenset({"startswith", "endswith"})
MAX_EXPONENT = 100
MAX_LENGTH = 1000

_READING = "_r"
_FPOW = "_fpow"

_BOOL_OPS = (ast.And, ast.Or)
_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_UNARY_OPS = (ast.Not, ast.USub, ast.UAdd)
_CMP_OPS = (
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
)
_CONSTANT_TYPES = (str, int, float, bool, type(None))

_FRIENDLY = {
    "Attribute": "attribute access",
    "Subscript": "subscript",
    "Lambda": "lambda",
    "ListComp": "list comprehension",
    "SetComp": "set comprehension",
    "DictComp": "dict comprehension",
    "GeneratorExp": "generator expression",
    "NamedExpr": "assignment expression (:=)",
    "JoinedStr": "f-string",
    "Await": "await",
    "Yield": "yield",
    "YieldFrom": "yield",
    "Starred": "starred argument",
    "Dict": "dict literal",
    "Set": "set literal",
    "List": "list literal (only after in / not in)",
    "Tuple": "tuple literal (only after in / not in)",
    "Slice": "slice",
    "BitAnd": "operator &",
    "BitOr": "operator |",
    "BitXor": "operator ^",
    "LShift": "operator <<",
    "RShift": "operator >>",
    "MatMult": "operator @",
    "Invert": "operator ~",
}


class ExpressionError(ValueError):
    """An expression is not in the language; ``column`` is 1-based (0 when unknown)."""

    def __init__(self, message: str, column: int = 0) -> None:
        super().__init__(f"{message} (column {column})" if column else message)
        self.column = column


def _fpow(base: Any, exponent: Any) -> float:
    """``**`` in floating point: overflow raises instead of allocating a huge integer."""
    return math.pow(base, exponent)


def _column(node: ast.AST) -> int:
    return int(getattr(node, "col_offset", -1)) + 1


def _what(node: ast.AST) -> str:
    name = type(node).__name__
    return _FRIENDLY.get(name, name)


def _reject(node: ast.AST, what: str | None = None) -> ExpressionError:
    return ExpressionError(f"{what or _what(node)} is not allowed", _column(node))


def _may_be_str(node: ast.expr) -> bool:
    """Conservatively: could ``node`` evaluate to a string?"""
    match node:
        case ast.Constant(value=str()):
            return True
        case ast.Name(id=name):
            return name in STRING_FIELDS
        case ast.BinOp(op=ast.Add()):
            return _may_be_str(node.left) or _may_be_str(node.right)
        case ast.BoolOp(values=values):
            return any(_may_be_str(v) for v in values)
        case ast.IfExp(body=body, orelse=orelse):
            return _may_be_str(body) or _may_be_str(orelse)
        case ast.Call(func=ast.Name(id="min" | "max"), args=args):
            return any(_may_be_str(a) for a in args)
    return False


def _constant_number(node: ast.expr) -> float | None:
    """The value of a numeric literal, allowing a sign (``-2``); else None."""
    sign = 1.0
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        if isinstance(node.op, ast.USub):
            sign = -sign
        node = node.operand
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return sign * float(node.value)
    return None


class _Checker:
    """Walks a parsed expression and raises :class:`ExpressionError` on the first bad node."""

    def check(self, node: ast.expr) -> None:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise _reject(node)
        method(node)

    def _constants(self, node: ast.expr) -> None:
        """A tuple/list of constants (right side of ``in``, argument of ``startswith``)."""
        if isinstance(node, ast.Tuple | ast.List):
            for element in node.elts:
                if not isinstance(element, ast.Constant) and _constant_number(element) is None:
                    raise ExpressionError(
                        "only constants are allowed inside a tuple or list", _column(element)
                    )
                self.check(element)
        else:
            self.check(node)

    def _BoolOp(self, node: ast.BoolOp) -> None:
        for value in node.values:
            self.check(value)

    def _BinOp(self, node: ast.BinOp) -> None:
        if not isinstance(node.op, _BIN_OPS):
            raise _reject(node, _what(node.op))
        if isinstance(node.op, ast.Pow):
            exponent = _constant_number(node.right)
            if exponent is None:
                raise ExpressionError("the exponent of ** must be a number literal", _column(node))
            if abs(exponent) > MAX_EXPONENT:
                raise ExpressionError(
                    f"the exponent of ** must be within +-{MAX_EXPONENT}", _column(node.right)
                )
        if isinstance(node.op, ast.Mult | ast.Mod | ast.Pow) and (
            _may_be_str(node.left) or _may_be_str(node.right)
        ):
            symbol = {ast.Mult: "*", ast.Mod: "%", ast.Pow: "**"}[type(node.op)]
            raise ExpressionError(f"operator {symbol} on a string is not allowed", _column(node))
        self.check(node.left)
        self.check(node.right)

    def _UnaryOp(self, node: ast.UnaryOp) -> None:
        if not isinstance(node.op, _UNARY_OPS):
            raise _reject(node, _what(node.op))
        self.check(node.operand)

    def _Compare(self, node: ast.Compare) -> None:
        self.check(node.left)
        for op, right in zip(node.ops, node.comparators, strict=True):
            if not isinstance(op, _CMP_OPS):
                raise _reject(node, _what(op))
            if isinstance(op, ast.In | ast.NotIn):
                self._constants(right)
            else:
                self.check(right)

    def _IfExp(self, node: ast.IfExp) -> None:
        self.check(node.test)
        self.check(node.body)
        self.check(node.orelse)

    def _Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, _CONSTANT_TYPES):
            raise _reject(node, f"constant {node.value!r}")

    def _Name(self, node: ast.Name) -> None:
        if node.id not in FIELDS:
            raise ExpressionError(
                f"unknown name {node.id!r}; the fields are {', '.join(FIELDS)}", _column(node)
            )

    def _Attribute(self, node: ast.Attribute) -> None:
        raise _reject(node, f"attribute access '.{node.attr}'")

    def _Call(self, node: ast.Call) -> None:
        if node.keywords:
            raise ExpressionError("keyword arguments are not allowed", _column(node.keywords[0]))
        func = node.func
        if isinstance(func, ast.Name) and func.id in FUNCTIONS:
            args_are_constants = False
        elif (
            isinstance(func, ast.Attribute)
            and func.attr in STRING_METHODS
            and isinstance(func.value, ast.Name)
            and func.value.id in STRING_FIELDS
        ):
            args_are_constants = True
            if len(node.args) != 1:
                raise ExpressionError(f".{func.attr}() takes exactly one argument", _column(node))
        else:
            name = ast.unparse(func)
            raise ExpressionError(
                f"call of {name!r} is not allowed; calls are limited to "
                f"{', '.join(FUNCTIONS)} and {'/'.join(sorted(STRING_FIELDS))}"
                f".{'/'.join(sorted(STRING_METHODS))}(...)",
                _column(node),
            )
        if not node.args:
            raise ExpressionError(f"{ast.unparse(func)}() needs an argument", _column(node))
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise _reject(arg)
            if args_are_constants:
                self._constants(arg)
            else:
                self.check(arg)


class _Rewriter(ast.NodeTransformer):
    """Fields become ``_r.<field>``, ``a ** b`` becomes ``_fpow(a, b)``, ``in [..]`` a frozenset."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in FIELDS:
            reading = ast.Name(id=_READING, ctx=ast.Load())
            return ast.copy_location(
                ast.Attribute(value=reading, attr=node.id, ctx=ast.Load()), node
            )
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Pow):
            call = ast.Call(
                func=ast.Name(id=_FPOW, ctx=ast.Load()), args=[node.left, node.right], keywords=[]
            )
            return ast.copy_location(call, node)
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        comparators: list[ast.expr] = []
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn) and isinstance(right, ast.Tuple | ast.List):
                if right.elts:  # a set display of constants compiles to a frozenset constant
                    right = ast.copy_location(ast.Set(elts=right.elts), right)
                else:
                    right = ast.copy_location(ast.Tuple(elts=[], ctx=ast.Load()), right)
            comparators.append(right)
        node.comparators = comparators
        return node


def compile_expression(text: str) -> Callable[[Reading], Any]:
    """Check ``text`` against the whitelist and compile it into ``f(reading) -> value``."""
    if not isinstance(text, str):
        raise ExpressionError("an expression must be a string")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"an expression is limited to {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")  # columns below are within the stripped text
    except SyntaxError as exc:
        detail = "" if exc.msg == "invalid syntax" else f" ({exc.msg})"
        raise ExpressionError(f"invalid syntax{detail}", exc.offset or 0) from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpressionError("the expression is too deeply nested or malformed") from None
    try:
        _Checker().check(tree.body)
    except RecursionError:
        raise ExpressionError("the expression is too deeply nested") from None
    body = _Rewriter().visit(tree.body)
    function = ast.Expression(
        body=ast.Lambda(
            args=ast.arguments(
                posonlyargs=[],
                args=[ast.arg(arg=_READING)],
                kwonlyargs=[],
                kw_defaults=[],
                defaults=[],
            ),
            body=body,
        )
    )
    ast.fix_missing_locations(function)
    code = compile(function, "<expression>", "eval")
    namespace: dict[str, Any] = {"__builtins__": {}, _FPOW: _fpow, **FUNCTIONS}
    compiled: Callable[[Reading], Any] = eval(code, namespace)  # checked AST, empty builtins
    return compiled


class Expression:
    """A checked, compiled expression as a config value (written as a YAML string).

    ``fn`` is the compiled function; call it on the hot path rather than the instance.
    """

    __slots__ = ("fn", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.fn = compile_expression(source)

    def __call__(self, reading: Reading) -> Any:
        return self.fn(reading)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    @classmethod
    def validate(cls, value: Any) -> Expression:
        """Pydantic validator: an Expression as is, a string compiled (errors name the column)."""
        if isinstance(value, Expression):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected an expression string, got {type(value).__name__}")
        return cls(value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source_type: Any, _handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda e: e.source, when_used="always"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, _schema: core_schema.CoreSchema, _handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            "description": "An expression over value, device, metric, source, ts, seq",
            "examples": ["metric == 'temperature' and value > -40"],
        }
