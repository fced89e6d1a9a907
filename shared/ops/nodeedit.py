"""Editing a node list: add, set, remove, import, export. Pure functions.

The cluster remote's ``nodes`` configuration and a gateway target's ``nodes``
are the same list, so both command lines edit it through here. Every result is
parsed back before it is returned, so nothing invalid is ever written.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from typing import Any

from shared.errors import ConfigError
from shared.nodes.url import (
    COMMON_ATTRS,
    NodeSpec,
    NodeState,
    format_node_list,
    parse_node,
    parse_node_list,
    parse_size,
)

# Set by the cluster remote itself; never taken from an operator's node URL.
_RESERVED_PARAMS = ("cipher",)


def _find(specs: list[NodeSpec], name: str) -> int:
    for i, s in enumerate(specs):
        if s.name == name:
            return i
    known = ", ".join(s.name for s in specs) or "none"
    raise ConfigError(f"no node called {name!r} (nodes: {known})")


def _checked(specs: list[NodeSpec]) -> list[NodeSpec]:
    """Round-trip through the text form: what is returned is exactly what parses."""
    for s in specs:
        bad = [p for p in _RESERVED_PARAMS if p in s.params]
        if bad:
            raise ConfigError(
                f"node {s.name}: {', '.join(bad)}= is recorded by the remote itself; "
                "remove it from the URL"
            )
    return parse_node_list(format_node_list(specs))


def add_node(
    specs: list[NodeSpec],
    name: str,
    url: str,
    attrs: dict[str, str] | None = None,
) -> list[NodeSpec]:
    """Append ``NAME=URL`` with the common attributes in ``attrs`` (cost, weight, ...)."""
    if any(s.name == name for s in specs):
        raise ConfigError(f"there is already a node called {name!r}; use 'nodes set' to change it")
    spec = parse_node(f"{name}={url}")
    if attrs:
        spec = _assign(spec, attrs)
    return _checked([*specs, spec])


def set_node(specs: list[NodeSpec], name: str, assignments: list[str]) -> list[NodeSpec]:
    """``KEY=VALUE`` changes: ``url``, a common attribute, or a backend parameter; an
    empty value removes an attribute or parameter (back to its default)."""
    pairs: dict[str, str] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"{text!r} is not KEY=VALUE, e.g. state=drain or weight=2")
        pairs[key] = value
    i = _find(specs, name)
    out = list(specs)
    out[i] = _assign(specs[i], pairs)
    return _checked(out)


def _assign(spec: NodeSpec, pairs: dict[str, str]) -> NodeSpec:
    pairs = dict(pairs)
    if "name" in pairs:
        raise ConfigError(
            "a node's name cannot change (placement hashes it: renaming moves its keys); "
            "add a node under the new name and drain the old one"
        )
    if "url" in pairs:
        url = pairs.pop("url")
        moved = parse_node(f"{spec.name}={url}")
        spec = replace(spec, url=moved.url, params=moved.params)
    common: dict[str, str] = {k: pairs.pop(k) for k in list(pairs) if k in COMMON_ATTRS}
    try:
        if "cost" in common:
            spec = replace(spec, cost=int(common["cost"]) if common["cost"] else None)
        if "weight" in common:
            weight = float(common["weight"]) if common["weight"] else 1.0
            spec = replace(spec, weight=weight)
    except ValueError as e:
        raise ConfigError(f"node {spec.name}: cost must be an integer and weight a number") from e
    if "zone" in common:
        spec = replace(spec, zone=common["zone"] or None)
    if "maxsize" in common:
        spec = replace(spec, maxsize=parse_size(common["maxsize"]) if common["maxsize"] else None)
    if "reserve" in common:
        spec = replace(spec, reserve=parse_size(common["reserve"]) if common["reserve"] else None)
    if "state" in common:
        try:
            spec = replace(spec, state=NodeState(common["state"] or "active"))
        except ValueError:
            raise ConfigError(
                f"node {spec.name}: state must be active, readonly or drain, "
                f"not {common['state']!r}"
            ) from None
    params = dict(spec.params)
    for k, v in pairs.items():
        if v:
            params[k] = v
        else:
            params.pop(k, None)
    return replace(spec, params=params)


def remove_node(specs: list[NodeSpec], name: str) -> list[NodeSpec]:
    i = _find(specs, name)
    out = specs[:i] + specs[i + 1 :]
    if not out:
        raise ConfigError("a cluster needs at least one node; add another before removing this")
    return _checked(out)


def describe(spec: NodeSpec) -> dict[str, Any]:
    """A node as JSON: every attribute, defaults included, secrets never."""
    return {
        "name": spec.name,
        "url": spec.url,
        "scheme": spec.scheme,
        "cost": spec.cost,
        "weight": spec.weight,
        "zone": spec.zone,
        "maxsize": spec.maxsize,
        "reserve": spec.reserve,
        "state": spec.state.value,
        "params": {k: v for k, v in spec.params.items() if k not in _RESERVED_PARAMS},
    }


def export_nodes(specs: list[NodeSpec], fmt: str) -> str:
    """``text`` (one ``NAME=URL`` per line, what ``import`` reads), ``toml`` or ``json``."""
    if fmt == "text":
        return "".join(s.to_entry() + "\n" for s in specs)
    if fmt == "json":
        return json.dumps([describe(s) for s in specs], indent=2) + "\n"
    if fmt == "toml":
        out = []
        for s in specs:
            d = describe(s)
            out.append(f"[nodes.{json.dumps(s.name)}]")
            out.append(f"url = {json.dumps(s.url)}")
            for k in ("cost", "weight", "zone", "maxsize", "reserve"):
                if d[k] is not None and not (k == "weight" and d[k] == 1.0):
                    out.append(f"{k} = {json.dumps(d[k])}")
            if s.state is not NodeState.ACTIVE:
                out.append(f"state = {json.dumps(s.state.value)}")
            if d["params"]:
                inner = ", ".join(
                    f"{json.dumps(k)} = {json.dumps(v)}" for k, v in d["params"].items()
                )
                out.append(f"params = {{{inner}}}")
            out.append("")
        return "\n".join(out)
    raise ConfigError(f"unknown format {fmt!r}: use text, toml or json")


def import_nodes(text: str, fmt: str) -> list[NodeSpec]:
    """The whole node list from ``text`` or ``toml`` (as ``export`` writes them).
    In text, blank lines and lines starting with ``#`` are ignored."""
    if fmt == "text":
        entries = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        return _checked([parse_node(e) for e in entries])
    if fmt == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"not valid TOML: {e}") from None
        nodes = data.get("nodes")
        if not isinstance(nodes, dict) or not nodes:
            raise ConfigError("the TOML file needs [nodes.NAME] tables with url = ...")
        specs = []
        for name, table in nodes.items():
            if not isinstance(table, dict) or not isinstance(table.get("url"), str):
                raise ConfigError(f'[nodes.{name}] needs url = "..."')
            attrs = {k: str(v) for k, v in table.items() if k in COMMON_ATTRS}
            params = table.get("params", {})
            if not isinstance(params, dict):
                raise ConfigError(f"[nodes.{name}] params must be a table")
            unknown = set(table) - {"url", "params", *COMMON_ATTRS}
            if unknown:
                raise ConfigError(f"[nodes.{name}]: unknown key(s) {', '.join(sorted(unknown))}")
            spec = parse_node(f"{name}={table['url']}")
            spec = _assign(spec, {**attrs, **{k: str(v) for k, v in params.items()}})
            specs.append(spec)
        return _checked(specs)
    raise ConfigError(f"unknown format {fmt!r}: use text or toml")
