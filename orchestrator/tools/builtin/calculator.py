"""`calculator`: arithmetic over a parsed syntax tree, never over `eval`.

Only the node types listed in `_Evaluator` are walked; every other node is refused with a
message naming what was used, so the model can rephrase. Sizes are checked before the
expensive operations run, because `9**9**9` would otherwise hold a worker for minutes.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

from ..registry import ToolContext, ToolError, tool

MAX_EXPRESSION_LENGTH = 500
# About 1.8e308, the float range: a bigger integer could not be mixed with floats anyway.
MAX_INT_BITS = 1024
MAX_ROUND_DIGITS = 100

Number = int | float

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}

# name -> (function, fewest arguments, most arguments or None for any number)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "abs": (abs, 1, 1),
    "round": (round, 1, 2),
    "min": (min, 2, None),
    "max": (max, 2, None),
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 2),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
}

_BINARY: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}

# Friendlier names for refused nodes than the bare AST class name.
_REFUSED_NAMES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambda expressions",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.JoinedStr: "strings",
    ast.Compare: "comparisons",
    ast.BoolOp: "boolean operators",
    ast.IfExp: "conditional expressions",
    ast.NamedExpr: "assignments",
    ast.Starred: "starred arguments",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}

_ALLOWED_SUMMARY = (
    "numbers, + - * / // % **, unary + and -, parentheses, the constants pi and e, and the functions "
    + ", ".join(FUNCTIONS)
)


class _Evaluator:
    def evaluate(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Expression):
            return self.evaluate(node.body)
        if isinstance(node, ast.Constant):
            return self._constant(node.value)
        if isinstance(node, ast.Name):
            return self._name(node.id)
        if isinstance(node, ast.UnaryOp):
            return self._unary(node)
        if isinstance(node, ast.BinOp):
            return self._binary(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        what = _REFUSED_NAMES.get(type(node), type(node).__name__)
        raise ToolError(f"not allowed: {what}; use only {_ALLOWED_SUMMARY}")

    def _constant(self, value: object) -> Number:
        # bool is an int subclass; `True + 1` is not arithmetic a user meant.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "strings" if isinstance(value, (str, bytes)) else f"{type(value).__name__} values"
            raise ToolError(f"not allowed: {kind}; use only {_ALLOWED_SUMMARY}")
        return _checked(value)

    def _name(self, name: str) -> Number:
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in FUNCTIONS:
            raise ToolError(f"{name} is a function; call it, e.g. {name}(2)")
        raise ToolError(
            f"unknown name {name!r}; the only names allowed are pi, e and the functions {', '.join(FUNCTIONS)}"
        )

    def _unary(self, node: ast.UnaryOp) -> Number:
        operand = self.evaluate(node.operand)
        if isinstance(node.op, ast.UAdd):
            return operand
        if isinstance(node.op, ast.USub):
            return -operand
        raise ToolError(f"the operator {_unary_symbol(node.op)} is not allowed; use only unary + and -")

    def _binary(self, node: ast.BinOp) -> Number:
        symbol = _BINARY.get(type(node.op))
        if symbol is None:
            raise ToolError(f"the operator {type(node.op).__name__} is not allowed; use only + - * / // % **")
        left = self.evaluate(node.left)
        right = self.evaluate(node.right)
        try:
            if symbol == "+":
                result: Any = left + right
            elif symbol == "-":
                result = left - right
            elif symbol == "*":
                result = left * right
            elif symbol == "/":
                result = left / right
            elif symbol == "//":
                result = left // right
            elif symbol == "%":
                result = left % right
            else:
                _refuse_huge_power(left, right)
                result = left**right
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
        return _checked(result)

    def _call(self, node: ast.Call) -> Number:
        if not isinstance(node.func, ast.Name):
            what = "attribute access" if isinstance(node.func, ast.Attribute) else "calling an expression"
            raise ToolError(f"{what} is not allowed; only these functions may be called: {', '.join(FUNCTIONS)}")
        name = node.func.id
        if name not in FUNCTIONS:
            raise ToolError(
                f"calling {name!r} is not allowed; only these functions may be called: {', '.join(FUNCTIONS)}"
            )
        if node.keywords:
            raise ToolError(f"keyword arguments are not allowed in {name}()")
        function, fewest, most = FUNCTIONS[name]
        count = len(node.args)
        if count < fewest or (most is not None and count > most):
            wanted = str(fewest) if fewest == most else f"{fewest} or more" if most is None else f"{fewest} to {most}"
            raise ToolError(f"{name}() takes {wanted} argument(s), not {count}")
        args = [self.evaluate(arg) for arg in node.args]
        if name == "round" and len(args) == 2:
            digits = args[1]
            if not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
                raise ToolError(
                    f"round()'s second argument must be a whole number from -{MAX_ROUND_DIGITS} to {MAX_ROUND_DIGITS}"
                )
        try:
            result = function(*args)
        except ZeroDivisionError:
            raise ToolError(f"division by zero in {name}()") from None
        except OverflowError:
            raise ToolError(f"the result of {name}() is too large") from None
        except (ValueError, TypeError) as exc:
            raise ToolError(f"{name}() cannot take these arguments: {exc}") from None
        return _checked(result)


def _unary_symbol(op: ast.unaryop) -> str:
    return {ast.Not: "not", ast.Invert: "~"}.get(type(op), type(op).__name__)


def _refuse_huge_power(base: Number, exponent: Number) -> None:
    """Estimate the result's size from logarithms, before computing it."""
    if abs(base) <= 1 or exponent <= 0:
        return  # the result cannot grow past the base or 1
    try:
        estimated_bits = exponent * math.log2(abs(base))
    except OverflowError:
        estimated_bits = math.inf
    if estimated_bits > MAX_INT_BITS:
        raise ToolError(f"the power {base}**{exponent} is too large (results are limited to about 1e308)")


def _checked(value: Any) -> Number:
    if isinstance(value, complex):
        raise ToolError("the result is a complex number, which is not supported")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError(f"unexpected result type {type(value).__name__}")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("a number is too large (the limit is about 1e308)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result overflows or is not a number (the limit is about 1e308)")
    return value


def evaluate(expression: str) -> Number:
    """Evaluate `expression` or raise ToolError saying why not."""
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ToolError(f"the expression is {len(expression)} characters long; the limit is {MAX_EXPRESSION_LENGTH}")
    if not expression.strip():
        raise ToolError("the expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not a valid expression: {exc.msg}") from None
    except (MemoryError, RecursionError, ValueError):
        raise ToolError("the expression is nested too deeply") from None
    try:
        return _Evaluator().evaluate(tree)
    except RecursionError:
        raise ToolError("the expression is nested too deeply") from None


@tool(
    name="calculator",
    category="math",
    description=(
        "Evaluate an arithmetic expression exactly as Python would and return the number. "
        f"Allowed: {_ALLOWED_SUMMARY}. Integers are exact; results beyond about 1e308 are refused."
    ),
    risk="low",
    idempotent=True,
    timeout=5.0,
    parameters={
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_EXPRESSION_LENGTH,
                "description": "The expression, e.g. \"sqrt(2) * (3 + 4) / 5\".",
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    },
)
async def calculator(ctx: ToolContext, *, expression: str) -> dict[str, Any]:
    return {"expression": expression, "result": evaluate(expression)}
