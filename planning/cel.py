"""The CEL validation rules of a CRD schema (`x-kubernetes-validations`), evaluated as the API server
evaluates them when an object is created.

The API server applies the schema's defaults, then evaluates each rule of each schema node against
every value at that node (`self`): the object's fields, each list item (`items`), each map value
(`additionalProperties`). Absent fields are not evaluated. Transition rules (those that read
`oldSelf`) compare an update with the stored object, so on create they do not run, unless they set
`optionalOldSelf` (cel-python has no optional values: such a rule is reported as unevaluable).

Expressions are evaluated by cel-python, plus the functions of the Kubernetes CEL environment that
cel-python lacks (`KUBERNETES_FUNCTIONS`; https://kubernetes.io/docs/reference/using-api/cel/).
A rule that does not parse, calls an unknown function, fails at runtime or does not return a bool
is a problem too ("could not evaluate"): the API server would reject the object as well.
"""

from __future__ import annotations

import copy
import functools
import string
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import celpy
import lark
import re2
from celpy import celtypes

# The variable a transition rule compares with; unset on create.
OLD_SELF = "oldSelf"


# --- Kubernetes CEL extension functions ------------------------------------------------------------
# Each follows the Kubernetes CEL reference (strings and regex extensions, the list library):
# receiver first, as cel-python passes `target.f(args)` as `f(target, *args)`. A CELEvalError
# returned (not raised) is an evaluation error, as in cel-python's own functions.

def _error(message: str, cause: type[Exception] = ValueError) -> celpy.CELEvalError:
    return celpy.CELEvalError(message, cause, None)


def _string(value: str) -> celtypes.StringType:
    return celtypes.StringType(value)


def _strings(values: list[str]) -> celtypes.ListType:
    return celtypes.ListType([_string(value) for value in values])


def split(text: str, separator: str, limit: int = -1) -> Any:
    """`'a,b'.split(',')` -> ['a', 'b']; a limit n > 0 gives at most n parts, 0 none, < 0 all.
    The empty separator splits into characters."""
    if limit == 0:
        return _strings([])
    if separator == "":
        parts = list(text)
        if 0 < limit < len(parts):
            parts = parts[:limit - 1] + ["".join(parts[limit - 1:])]
        return _strings(parts)
    return _strings(text.split(separator, limit - 1 if limit > 0 else -1))


_TO_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_TO_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


def lower_ascii(text: str) -> celtypes.StringType:
    """Lower-cases ASCII letters only; other characters are left as they are."""
    return _string(text.translate(_TO_LOWER))


def upper_ascii(text: str) -> celtypes.StringType:
    return _string(text.translate(_TO_UPPER))


def trim(text: str) -> celtypes.StringType:
    """Without leading and trailing whitespace (Unicode White_Space)."""
    return _string(text.strip())


def replace(text: str, old: str, new: str, limit: int = -1) -> celtypes.StringType:
    """Every `old` replaced by `new`, or the first `limit` of them (limit < 0: all)."""
    return _string(text.replace(old, new, limit))


def join(items: list[str], separator: str = "") -> Any:
    if not all(isinstance(item, str) for item in items):
        return _error("join: the list holds a value that is not a string", TypeError)
    return _string(separator.join(items))


def index_of(target: Any, item: Any, offset: int | None = None) -> Any:
    """Strings: the code point index of the first `item` at or after `offset`, or -1.
    Lists: the index of the first element equal to `item`, or -1."""
    if isinstance(target, str):
        start = 0 if offset is None else int(offset)
        if not 0 <= start <= len(target):
            return _error(f"indexOf: offset {start} out of range", IndexError)
        return celtypes.IntType(target.find(item, start))
    return celtypes.IntType(next((index for index, element in enumerate(target) if element == item), -1))


def last_index_of(target: Any, item: Any, offset: int | None = None) -> Any:
    """Strings: the index of the last `item` starting at or before `offset`, or -1.
    Lists: the index of the last element equal to `item`, or -1."""
    if isinstance(target, str):
        end = len(target) if offset is None else int(offset)
        if not 0 <= end <= len(target):
            return _error(f"lastIndexOf: offset {end} out of range", IndexError)
        return celtypes.IntType(target.rfind(item, 0, end + len(item)))
    found = [index for index, element in enumerate(target) if element == item]
    return celtypes.IntType(found[-1] if found else -1)


def _regex(pattern: str) -> Any:
    try:
        return re2.compile(pattern)
    except re2.error as error:
        detail = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else str(error)
        return _error(f"invalid regular expression {str(pattern)!r}: {detail}")


def find(text: str, pattern: str) -> Any:
    """The first match of the (RE2) regular expression in the string, or '' if none."""
    regex = _regex(pattern)
    if isinstance(regex, celpy.CELEvalError):
        return regex
    match = regex.search(text)
    return _string(match.group(0) if match else "")


def find_all(text: str, pattern: str, limit: int = -1) -> Any:
    """Every non-overlapping match (whole matches, not groups), or the first `limit` (< 0: all)."""
    regex = _regex(pattern)
    if isinstance(regex, celpy.CELEvalError):
        return regex
    matches = [match.group(0) for match in regex.finditer(text)]
    return _strings(matches if limit < 0 else matches[:limit])


def is_sorted(items: list[Any]) -> celtypes.BoolType:
    return celtypes.BoolType(all(left <= right for left, right in zip(items, items[1:])))


def list_max(items: list[Any]) -> Any:
    """The greatest element; an error for an empty list. (`min()` is cel-python's own, as a macro.)"""
    return max(items) if items else _error("max: the list is empty", IndexError)


def list_sum(items: list[Any]) -> Any:
    """The sum of a list of numbers (0 for an empty list)."""
    total = celtypes.IntType(0)
    for item in items:
        total = total + item
    return total


KUBERNETES_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "split": split, "lowerAscii": lower_ascii, "upperAscii": upper_ascii, "trim": trim, "replace": replace,
    "join": join, "indexOf": index_of, "lastIndexOf": last_index_of, "find": find, "findAll": find_all,
    "isSorted": is_sorted, "sum": list_sum, "max": list_max,
}


# --- rules -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """One `x-kubernetes-validations` entry."""
    rule: str
    message: str | None = None
    message_expression: str | None = None
    # A transition rule that also runs on create, with oldSelf an empty optional.
    optional_old_self: bool = False

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Rule:
        return cls(entry["rule"], entry.get("message"), entry.get("messageExpression"),
                   bool(entry.get("optionalOldSelf")))

    def runs_on_create(self) -> bool:
        return self.optional_old_self or not is_transition_rule(self)


class Unevaluable(Exception):
    """The rule could not be evaluated; the message says why, in one line."""


_ENVIRONMENT = celpy.Environment()


def _reason(error: Exception) -> str:
    """cel-python's message, with the Python error under it when there is one (its message alone can
    mislead: a failed int('x') says 'return error for overflow')."""
    text = str(error.args[0]) if error.args else type(error).__name__
    # It appends the whole activation to unknown-name errors: keep the first clause.
    text = text.split(" (in activation")[0]
    cause = error.args[2] if len(error.args) > 2 else None
    if isinstance(cause, tuple) and cause and isinstance(cause[0], str) and cause[0] not in text:
        text = f"{text}: {cause[0]}"
    return " ".join(text.split())


@functools.lru_cache(maxsize=None)
def _program(expression: str) -> tuple[Any, bool]:
    """The compiled program of an expression, and whether it reads `oldSelf`."""
    try:
        tree = _ENVIRONMENT.compile(expression)
    except celpy.CELParseError as error:
        raise Unevaluable(f"parse error: {' '.join(str(error).split())}") from None
    identifiers = tree.scan_values(lambda value: isinstance(value, lark.Token) and value.type == "IDENT")
    reads_old_self = OLD_SELF in identifiers
    return _ENVIRONMENT.program(tree, functions=KUBERNETES_FUNCTIONS), reads_old_self


def is_transition_rule(rule: Rule) -> bool:
    try:
        return _program(rule.rule)[1]
    except Unevaluable:
        return False


def evaluate(expression: str, value: Any) -> Any:
    """The expression's result with `self` bound to `value` (plain JSON data)."""
    program, _ = _program(expression)
    try:
        result = program.evaluate({"self": celpy.json_to_cel(value)})
    except celpy.CELEvalError as error:
        raise Unevaluable(_reason(error)) from None
    if isinstance(result, celpy.CELEvalError):
        raise Unevaluable(_reason(result))
    return result


def _message(rule: Rule, value: Any) -> str:
    """What the API server says when the rule fails: messageExpression if it yields a non-empty
    string, else message, else the rule itself."""
    if rule.message_expression:
        try:
            text = evaluate(rule.message_expression, value)
        except Unevaluable:
            text = None
        if isinstance(text, str) and text:
            return str(text)
    return rule.message or f"failed rule: {rule.rule}"


def rule_failure(rule: Rule, value: Any) -> str | None:
    """None when the rule holds for `value`, else the problem (failure message, or why it could not be evaluated)."""
    try:
        result = evaluate(rule.rule, value)
        if not isinstance(result, celtypes.BoolType):
            raise Unevaluable(f"returned {type(result).__name__}, not a bool")
    except Unevaluable as error:
        return f"could not evaluate: {rule.rule} ({error})"
    return None if result else _message(rule, value)


def defaulted(schema: dict[str, Any], value: Any) -> Any:
    """A copy of `value` with the schema's defaults filled in, as the API server does before validating."""
    if isinstance(value, dict):
        value = dict(value)
        properties = schema.get("properties") or {}
        for key, child in properties.items():
            if key not in value and "default" in child:
                value[key] = copy.deepcopy(child["default"])
            if key in value:
                value[key] = defaulted(child, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - properties.keys():
                value[key] = defaulted(extra, value[key])
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [defaulted(schema["items"], item) for item in value]
    return value


def schema_rules(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Rule]]:
    """Every rule of a schema and the schema path of its node (`[]` for list items, `{}` for map values)."""
    for entry in schema.get("x-kubernetes-validations") or []:
        yield path, Rule.of(entry)
    for key, child in (schema.get("properties") or {}).items():
        yield from schema_rules(child, (*path, key))
    if isinstance(schema.get("items"), dict):
        yield from schema_rules(schema["items"], (*path, "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from schema_rules(schema["additionalProperties"], (*path, "{}"))


def applied_rules(schema: dict[str, Any], value: Any,
                  path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Rule, Any]]:
    """Every rule that runs when `value` (defaults applied) is created: its path in the value, the
    rule, and the value it sees as `self`."""
    for entry in schema.get("x-kubernetes-validations") or []:
        rule = Rule.of(entry)
        if rule.runs_on_create():
            yield path, rule, value
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key in sorted(value):
            child = properties.get(key, extra if key not in properties else None)
            if isinstance(child, dict):
                yield from applied_rules(child, value[key], (*path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from applied_rules(schema["items"], item, (*path, str(index)))


def rule_problems(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Each failing or unevaluable rule for an object being created, as '<problem> at <path>'."""
    found = []
    for path, rule, value in applied_rules(schema, defaulted(schema, obj)):
        failure = rule_failure(rule, value)
        if failure is not None:
            found.append(f"{failure} at {'/'.join(path) or '(root)'}")
    return found
