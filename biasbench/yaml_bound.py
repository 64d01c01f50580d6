"""A bound on how large a YAML document grows once its aliases are expanded.

YAML anchors let a 500-byte file stand for a hundred million values (`&a1 [*a0, *a0, ...]`
eight levels deep). PyYAML builds such a document cheaply, as shared references, but every
later walk over the data (merging `extends:`, `--set`, flattening, validation, writing the
resolved recipe) expands it, and the process grows until the kernel kills it. So the composed
node graph is measured before anything is constructed: each node counts once per place it
appears, memoised per node, so measuring costs the size of the file, not of its expansion.
"""

from __future__ import annotations

import yaml

MAX_VALUES = 100_000  # scalars, lists and mappings after expansion; shipped studies hold < 1,000
MAX_TEXT = 10_000_000  # characters of scalar text after expansion (a 10 MB document)


class YamlTooLarge(yaml.YAMLError):
    """A document whose aliases expand it past the bound, or that contains itself."""

    def __init__(self, problem: str, mark: yaml.Mark | None):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark

    def __reduce__(self):  # rebuilt with its own arguments after crossing a process boundary
        return (type(self), (self.problem, self.problem_mark))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _where(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def check_expanded_size(root: yaml.Node, max_values: int = MAX_VALUES, max_text: int = MAX_TEXT) -> None:
    """Raise `YamlTooLarge` if `root`, with every alias expanded, holds more than `max_values`
    values or `max_text` characters, or if a node contains itself (an endless expansion).
    Iterative, so a deeply nested file cannot overflow Python's stack here."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, characters) once expanded
    ancestors: set[int] = set()  # the nodes whose children are being measured
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_measured = stack.pop()
        key = id(node)
        if children_measured:
            ancestors.discard(key)
            values, text = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            for child in _children(node):
                child_values, child_text = sizes[id(child)]
                values, text = values + child_values, text + child_text
            if values > max_values or text > max_text:
                what = f"{max_values:,} values" if values > max_values else f"{max_text:,} characters"
                raise YamlTooLarge(f"its aliases (*name) expand the value {_where(node)} past {what}; "
                                   f"write the values out instead of repeating aliases", node.start_mark)
            sizes[key] = (values, text)
            continue
        if key in sizes:
            continue
        if key in ancestors:
            raise YamlTooLarge(f"the value {_where(node)} holds an alias (*name) to itself, so it never ends; "
                               f"write the value out", node.start_mark)
        ancestors.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
