"""The expression language: what it accepts, what it refuses (and where), how it evaluates."""

from __future__ import annotations

import pytest

from gateway.model import Reading
from gateway.pipeline.expressions import Expression, ExpressionError, compile_expression

PUMP = Reading(source="bus", device="pump-7", metric="temperature", value=42.0, ts=1000.0, seq=3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("value > 30 and device.startswith('pump')", True),
        ("metric == 'temperature' and value > -40", True),
        ("value / 1000", 0.042),
        ("value // 5 + value % 5", 8 + 2.0),
        ("value ** 2", 1764.0),
        ("2 ** -1", 0.5),
        ("-value", -42.0),
        ("+value", 42.0),
        ("not value", False),
        ("metric in ('temperature', 'humidity')", True),
        ("metric not in ['temperature']", False),
        ("seq in (1, 2, 3)", True),
        ("value in ()", False),
        ("'pump' in device", True),
        ("seq is None", False),
        ("seq is not None", True),
        ("abs(-value)", 42.0),
        ("min(value, 10)", 10.0),
        ("max(value, ts)", 1000.0),
        ("round(value / 9, 2)", 4.67),
        ("device.endswith('-7')", True),
        ("source.startswith(('can', 'bus'))", True),
        ("'hot' if value > 40 else 'ok'", "hot"),
        ("device + '/' + metric", "pump-7/temperature"),
        ("30 < value <= 42", True),
        ("value > 100 or seq == 3", True),
        ("True", True),
        ("None", None),
        ("  value  ", 42.0),
    ],
)
def test_accepted_expressions_evaluate_against_the_reading(text: str, expected: object) -> None:
    result = compile_expression(text)(PUMP)
    if isinstance(expected, float):
        assert result == pytest.approx(expected)
    else:
        assert result == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("__import__('os')", "call of '__import__' is not allowed"),
        ("__import__('os').system('true')", "call of \"__import__('os').system\""),
        ("value.__class__", "attribute access '.__class__' is not allowed"),
        ("value.__class__.__bases__[0].__subclasses__()", "is not allowed"),
        ("(1).real", "attribute access '.real'"),
        ("lambda: 1", "lambda is not allowed"),
        ("[x for x in (1, 2)]", "list comprehension is not allowed"),
        ("{x for x in (1, 2)}", "set comprehension is not allowed"),
        ("{x: 1 for x in (1, 2)}", "dict comprehension is not allowed"),
        ("sum(x for x in (1, 2))", "call of 'sum' is not allowed"),
        ("any(x for x in (1, 2))", "call of 'any'"),
        ("(x := 1)", "assignment expression (:=) is not allowed"),
        ("f'{value}'", "f-string is not allowed"),
        ("value[0]", "subscript is not allowed"),
        ("{'a': 1}", "dict literal is not allowed"),
        ("{1, 2}", "set literal is not allowed"),
        ("[1, 2]", "list literal (only after in / not in) is not allowed"),
        ("(1, 2)", "tuple literal (only after in / not in) is not allowed"),
        ("b'x' == metric", "constant b'x' is not allowed"),
        ("1j == value", "constant 1j is not allowed"),
        ("value & 1", "operator & is not allowed"),
        ("value << 1", "operator << is not allowed"),
        ("~value", "operator ~ is not allowed"),
        ("foo > 1", "unknown name 'foo'"),
        ("abs > 1", "unknown name 'abs'"),
        ("__builtins__", "unknown name '__builtins__'"),
        ("open('/etc/passwd')", "call of 'open'"),
        ("eval('1')", "call of 'eval'"),
        ("getattr(value, 'real')", "call of 'getattr'"),
        ("device.upper()", "call of 'device.upper'"),
        ("value.startswith('1')", "call of 'value.startswith'"),
        ("device.startswith('a', 1)", "takes exactly one argument"),
        ("round(value, ndigits=2)", "keyword arguments are not allowed"),
        ("max(*(1, 2))", "starred argument is not allowed"),
        ("abs()", "needs an argument"),
        ("metric in (device, 'x')", "only constants are allowed"),
        ("value ** seq", "exponent of ** must be a number literal"),
        ("value ** 1000", "exponent of ** must be within"),
        ("2 ** 2 ** 2", "exponent of ** must be a number literal"),
        ("device * 100000000", "operator * on a string is not allowed"),
        ("(device if value else 1) * 1000000", "operator * on a string"),
        ("'%s' % value", "operator % on a string"),
        ("value +", "invalid syntax"),
        ("value = 1", "invalid syntax"),
        ("import os", "invalid syntax"),
        ("x" * 2000, "limited to 1000 characters"),
        ("(" * 300 + "1" + ")" * 300, ""),
    ],
)
def test_rejected_expressions_name_the_construct(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("value.__class__", 1),
        ("value > 1 and foo", 15),
        ("value > 1 and (lambda: 1)", 16),
        ("abs(value, open)", 12),
    ],
)
def test_errors_carry_the_column(text: str, column: int) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    assert info.value.column == column
    assert f"(column {column})" in str(info.value)


def test_compiled_function_has_no_builtins() -> None:
    function = compile_expression("value")
    assert function.__globals__["__builtins__"] == {}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("value / 0", ZeroDivisionError),
        ("value ** 100", OverflowError),
        ("(-value) ** 0.5", ValueError),
        ("seq > 1", TypeError),
    ],
)
def test_runtime_errors_propagate_to_the_step(text: str, error: type[Exception]) -> None:
    big = Reading("bus", "pump", "m", 1e10, 0.0, None)
    with pytest.raises(error):
        compile_expression(text)(big)


def test_expression_value_object() -> None:
    expression = Expression("value > 1")
    assert expression(PUMP) is True
    assert expression.fn(PUMP) is True
    assert expression == Expression("value > 1")
    assert hash(expression) == hash(Expression("value > 1"))
    assert repr(expression) == "Expression('value > 1')"
    assert Expression.validate(expression) is expression
    with pytest.raises(ValueError, match="expected an expression string, got int"):
        Expression.validate(3)
