"""A small subset of Service Bus subscription SQL filters, evaluated against a message's application properties.

Supported (case-insensitive keywords)::

    predicate := predicate OR predicate | predicate AND predicate | NOT predicate | ( predicate )
               | EXISTS ( property ) | property IS [NOT] NULL
               | operand { = | <> | != | < | <= | > | >= } operand | operand [NOT] IN ( operand, ... )
    operand   := property | 'string' ('' escapes a quote) | integer | decimal | TRUE | FALSE | NULL
    property  := name | user.name     (application properties; sys.* is not supported here)

As in Service Bus, a missing property is NULL, a comparison with NULL is unknown, AND / OR / NOT follow
three-valued logic, and a message matches only when the filter is true. Comparing values of different kinds (a
string with a number) is unknown too. Not supported: arithmetic, LIKE, functions, sys.* properties; they raise
`FilterSyntaxError`, as a typo does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["FilterSyntaxError", "Predicate", "compile_filter"]

Properties = Mapping[str, Any]
Predicate = Callable[[Properties], bool]
_Ternary = Callable[[Properties], "bool | None"]
_Operand = Callable[[Properties], Any]

_TOKEN: Final = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>\d+(?:\.\d+)?)|(?P<op><>|!=|<=|>=|[=<>(),])"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?))",
    re.ASCII,
)
_KEYWORDS: Final = {"AND", "OR", "NOT", "IS", "NULL", "IN", "EXISTS", "TRUE", "FALSE", "LIKE"}


class FilterSyntaxError(ValueError):
    """The filter is not in the supported subset; the message says where."""


def compile_filter(text: str) -> Predicate:
    """A function telling whether a message's application properties match the SQL filter `text`."""
    parser = _Parser(text)
    predicate = parser.predicate()
    parser.end()
    return lambda properties: predicate(properties) is True


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise FilterSyntaxError(f"cannot read the filter at character {position + 1}: {text[position:][:20]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "word" and value.upper() in _KEYWORDS:
            kind, value = "keyword", value.upper()
        tokens.append((kind, value))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self, value: str | None = None) -> bool:
        if self.at >= len(self.tokens):
            return False
        return value is None or self.tokens[self.at][1] == value

    def take(self, value: str | None = None) -> tuple[str, str]:
        if not self.peek(value):
            found = self.tokens[self.at][1] if self.at < len(self.tokens) else "the end"
            raise FilterSyntaxError(f"expected {value or 'more'} but found {found!r}")
        token = self.tokens[self.at]
        self.at += 1
        return token

    def end(self) -> None:
        if self.at != len(self.tokens):
            raise FilterSyntaxError(f"unexpected {self.tokens[self.at][1]!r}")

    def predicate(self) -> _Ternary:
        left = self.conjunction()
        while self.peek("OR"):
            self.take()
            left = _or(left, self.conjunction())
        return left

    def conjunction(self) -> _Ternary:
        left = self.negation()
        while self.peek("AND"):
            self.take()
            left = _and(left, self.negation())
        return left

    def negation(self) -> _Ternary:
        if self.peek("NOT"):
            self.take()
            inner = self.negation()
            return lambda properties: None if (value := inner(properties)) is None else not value
        return self.primary()

    def primary(self) -> _Ternary:
        if self.peek("("):
            self.take("(")
            inner = self.predicate()
            self.take(")")
            return inner
        if self.peek("EXISTS"):
            self.take()
            self.take("(")
            name = self.property_name()
            self.take(")")
            return lambda properties: name in properties
        left = self.operand()
        if self.peek("IS"):
            self.take()
            negated = self.peek("NOT") and bool(self.take())
            self.take("NULL")
            return lambda properties: (left(properties) is None) != negated
        negated = self.peek("NOT") and bool(self.take())
        if self.peek("IN"):
            self.take()
            self.take("(")
            options = [self.operand()]
            while self.peek(","):
                self.take()
                options.append(self.operand())
            self.take(")")
            found = _in(left, options)
            return (lambda properties: None if (v := found(properties)) is None else not v) if negated else found
        if negated:
            raise FilterSyntaxError("NOT here must be followed by IN")
        kind, operator = self.take()
        if kind != "op" or operator not in _COMPARISONS:
            raise FilterSyntaxError(f"expected a comparison, IS or IN, found {operator!r}")
        return _compare(left, _COMPARISONS[operator], self.operand())

    def operand(self) -> _Operand:
        kind, value = self.take()
        if kind == "string":
            text = value[1:-1].replace("''", "'")
            return lambda properties: text
        if kind == "number":
            number = float(value) if "." in value else int(value)
            return lambda properties: number
        if kind == "keyword" and value in ("TRUE", "FALSE"):
            flag = value == "TRUE"
            return lambda properties: flag
        if kind == "keyword" and value == "NULL":
            return lambda properties: None
        if kind == "word":
            self.at -= 1
            name = self.property_name()
            return lambda properties: properties.get(name)
        raise FilterSyntaxError(f"expected a property or a constant, found {value!r}")

    def property_name(self) -> str:
        kind, value = self.take()
        if kind != "word":
            raise FilterSyntaxError(f"expected a property name, found {value!r}")
        scope, _, name = value.rpartition(".")
        if scope.lower() == "sys":
            raise FilterSyntaxError(f"system properties ({value}) are not supported by the local filter")
        if scope and scope.lower() != "user":
            raise FilterSyntaxError(f"unknown scope {scope!r}: use user. or no scope")
        return name


_COMPARISONS: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "=": lambda a, b: bool(a == b),
    "<>": lambda a, b: bool(a != b),
    "!=": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else type(value).__name__


def _compare(left: _Operand, operator: Callable[[Any, Any], bool], right: _Operand) -> _Ternary:
    def evaluate(properties: Properties) -> bool | None:
        a, b = left(properties), right(properties)
        if a is None or b is None or _kind(a) != _kind(b):
            return None
        return operator(a, b)

    return evaluate


def _in(left: _Operand, options: list[_Operand]) -> _Ternary:
    def evaluate(properties: Properties) -> bool | None:
        value = left(properties)
        if value is None:
            return None
        return any(_kind(value) == _kind(o := option(properties)) and value == o for option in options)

    return evaluate


def _and(left: _Ternary, right: _Ternary) -> _Ternary:
    def evaluate(properties: Properties) -> bool | None:
        a, b = left(properties), right(properties)
        if a is False or b is False:
            return False
        return None if a is None or b is None else True

    return evaluate


def _or(left: _Ternary, right: _Ternary) -> _Ternary:
    def evaluate(properties: Properties) -> bool | None:
        a, b = left(properties), right(properties)
        if a is True or b is True:
            return True
        return None if a is None or b is None else False

    return evaluate
