"""`planning.cel`: the Kubernetes CEL functions it adds, and rules evaluated as the API server does on create.

Rules come from the real Karpenter CRDs where a property needs them; small schemas stand in only
where a behaviour (defaults, map values, messageExpression) has no rule of its own in those CRDs.
"""

import celpy
import pytest

from planning import cel
from planning.checks import karpenter as karpenter_check
from planning.checks.objects import is_karpenter
from planning.offline import manifest

PROVIDED = set(celpy.evaluation.base_functions) | set(cel.KUBERNETES_FUNCTIONS)
# cel-python evaluates these as macros (min is its extension, matching the Kubernetes list library's).
MACROS = {"has", "all", "exists", "exists_one", "map", "filter", "min"}


@pytest.mark.parametrize("expression, expected", [
    ("'al2023@v20260714'.split('@')", ["al2023", "v20260714"]),
    ("'a,b,c'.split(',', 2)", ["a", "b,c"]),
    ("'a,b,c'.split(',', 0)", []),
    ("'a,b,c'.split(',', -1)", ["a", "b", "c"]),
    ("'abc'.split('')", ["a", "b", "c"]),
    ("'abc'.split('', 2)", ["a", "bc"]),
    ("'TacoCat ÄÖ'.lowerAscii()", "tacocat ÄÖ"),
    ("'TacoCat äö'.upperAscii()", "TACOCAT äö"),
    ("'  \\ttrim me\\n '.trim()", "trim me"),
    ("'a-b-c'.replace('-', '+')", "a+b+c"),
    ("'a-b-c'.replace('-', '+', 1)", "a+b-c"),
    ("['a', 'b'].join()", "ab"),
    ("['a', 'b'].join(', ')", "a, b"),
    ("'hello mellow'.indexOf('ello')", 1),
    ("'hello mellow'.indexOf('ello', 2)", 7),
    ("'hello'.indexOf('z')", -1),
    ("'hello mellow'.lastIndexOf('ello')", 7),
    ("'hello mellow'.lastIndexOf('ello', 6)", 1),
    ("[1, 2, 2, 3].indexOf(2)", 1),
    ("[1, 2, 2, 3].lastIndexOf(2)", 2),
    ("[1, 2].indexOf(5)", -1),
    ("'karpenter.sh/nodepool'.find('^([^/]+)')", "karpenter.sh"),
    ("'abc'.find('[0-9]+')", ""),
    ("'a1 b22 c333'.findAll('[a-z]([0-9]+)')", ["a1", "b22", "c333"]),
    ("'a1 b22 c333'.findAll('[0-9]+', 2)", ["1", "22"]),
    ("[1, 2, 2, 5].isSorted()", True),
    ("['b', 'a'].isSorted()", False),
    ("[1, 2, 3].sum()", 6),
    ("[].sum()", 0),
    ("[3, 1, 2].min()", 1),
    ("['b', 'c', 'a'].max()", "c"),
])
def test_each_kubernetes_function_follows_the_reference(expression, expected):
    assert cel.evaluate(expression, {}) == expected


@pytest.mark.parametrize("expression, reason", [
    ("[].min()", "Attempt to reduce an empty sequence"),
    ("[].max()", "max: the list is empty"),
    ("'abc'.indexOf('a', 4)", "indexOf: offset 4 out of range"),
    ("'abc'.find('(')", "invalid regular expression '('"),
    ("[1, 'a'].join()", "join: the list holds a value that is not a string"),
    ("self.nosuch()", "undeclared reference to 'nosuch'"),
])
def test_a_function_error_is_an_evaluation_error(expression, reason):
    with pytest.raises(cel.Unevaluable, match="^" + reason.replace("(", r"\(")):
        cel.evaluate(expression, {})


def _called_functions(expression: str) -> set[str]:
    tree = celpy.Environment().compile(expression)
    names = set()
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg":
            names.add(str(node.children[1]))
        elif node.data == "ident_arg":
            names.add(str(node.children[0]))
    return names


def _all_crd_rules():
    return [(kind, path, rule) for (_, kind), schema in karpenter_check._karpenter_schemas().items()
            for path, rule in cel.schema_rules(schema)]


def test_every_crd_rule_parses_and_calls_only_functions_the_evaluator_has():
    rules = _all_crd_rules()
    assert len(rules) > 80  # NodePool, NodeClaim and EC2NodeClass rules, with those on list items
    missing = {(kind, "/".join(path), rule.rule): _called_functions(rule.rule) - PROVIDED - MACROS
               for kind, path, rule in rules}
    assert {key: names for key, names in missing.items() if names} == {}
    # The CRDs do use the added functions, so the check depends on them.
    assert {"split", "find"} <= set().union(*(_called_functions(rule.rule) for _, _, rule in rules))


def test_transition_rules_do_not_run_on_create():
    transition = [rule for _, _, rule in _all_crd_rules() if cel.is_transition_rule(rule)]
    assert cel.Rule("self == oldSelf", "spec is immutable") in transition
    schema = {"type": "object", "properties": {"spec": {
        "type": "object", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "spec is immutable"}]}}}
    assert cel.rule_problems(schema, {"spec": {"a": 1}}) == []
    # optionalOldSelf makes it run on create, with an optional cel-python cannot express: never passed silently.
    schema["properties"]["spec"]["x-kubernetes-validations"][0]["optionalOldSelf"] = True
    assert cel.rule_problems(schema, {"spec": {"a": 1}}) == [
        "could not evaluate: self == oldSelf (undeclared reference to 'oldSelf') at spec"]


def test_a_rule_that_cannot_be_evaluated_is_reported_never_passed():
    assert cel.rule_failure(cel.Rule("self.missing == 'x'", "m"), {}) == (
        "could not evaluate: self.missing == 'x' (no such member in mapping: 'missing')")
    assert cel.rule_failure(cel.Rule("self.size()", "m"), "abc") == (
        "could not evaluate: self.size() (returned IntType, not a bool)")
    assert cel.rule_failure(cel.Rule("self.(", "m"), {}).startswith("could not evaluate: self.( (parse error: ")


def test_failure_messages_follow_the_api_server():
    failing = "self.size() > 3"
    assert cel.rule_failure(cel.Rule(failing, "too short", "'only ' + string(self.size())"), "ab") == "only 2"
    # A messageExpression that fails falls back to the message, then to the rule.
    assert cel.rule_failure(cel.Rule(failing, "too short", "self.nosuch"), "ab") == "too short"
    assert cel.rule_failure(cel.Rule(failing), "ab") == f"failed rule: {failing}"
    assert cel.rule_failure(cel.Rule(failing, "too short"), "abcd") is None


def test_rules_run_on_list_items_and_map_values_after_defaults_apply():
    positive = [{"rule": "self > 0", "message": "must be positive"}]
    schema = {"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "integer", "x-kubernetes-validations": positive}},
        "limits": {"type": "object", "additionalProperties": {"type": "integer", "x-kubernetes-validations": positive}},
        "mode": {"type": "string", "default": "Off",
                 "x-kubernetes-validations": [{"rule": "self == 'On'", "message": "mode must be On"}]},
    }}
    assert cel.rule_problems(schema, {"items": [1, -1], "limits": {"a": 2, "b": 0}}) == [
        "must be positive at items/1", "must be positive at limits/b", "mode must be On at mode"]
    assert cel.rule_problems(schema, {"mode": "On"}) == []


def test_a_real_ec2nodeclass_rule_reads_its_node_and_its_items():
    node_class = {"apiVersion": "karpenter.k8s.aws/v1", "kind": "EC2NodeClass", "metadata": {"name": "x"},
                  "spec": {"role": "r", "amiSelectorTerms": [{"alias": "windows2022@v1"}],
                           "subnetSelectorTerms": [{"id": "s"}], "securityGroupSelectorTerms": [{"id": "g"}]}}
    assert karpenter_check.karpenter_rule_problems(node_class) == [
        "EC2NodeClass x: windows families may only specify version 'latest' at spec/amiSelectorTerms/0/alias"]


def test_the_rendered_karpenter_objects_pass_every_rule_that_applies_to_them(rendering):
    objects = [manifest(resource) for resource in rendering.kubernetes_objects()]
    karpenter = [obj for obj in objects if is_karpenter(obj)]
    assert {obj["kind"] for obj in karpenter} == {"EC2NodeClass", "NodePool"}
    for obj in karpenter:
        schema = karpenter_check._karpenter_schema(obj)
        applied = list(cel.applied_rules(schema, cel.defaulted(schema, obj)))
        assert len(applied) >= 10, f"{obj['kind']}: only {len(applied)} rules ran"
        assert karpenter_check.karpenter_rule_problems(obj) == []
