"""The dataset columns a network reads as word indices: the first input of an ``Embed`` layer.

nnabla's Embed takes each value x of its first input as a row of its weight W (V rows, one
per word of the dictionary, E values each): it truncates x toward zero and copies row x with
no bounds check. A value outside 0..V-1 (a word of another dictionary, -1) reads memory beyond
W: the loss, its gradient and so the scores come out wrong without an error, or, far outside,
the process dies of a segmentation fault. :func:`index_columns` finds, for each Embed, the
dataset column its indices come from, so that the values can be checked before anything is
computed (:func:`sgd_influence_plugin.validation.check_word_indices`).

The indices are followed back through layers that only move values (:data:`MOVES`: a
Reshape, a Slice, a ``RecurrentInput`` or a ``Delay``, ...), in the network as the console
saved it, loops not yet unrolled, so that messages name its layers. An Embed whose indices
the network computes is not checked here.
"""

from __future__ import annotations

from typing import Dict, Tuple

#: Layers whose outputs hold values of their inputs, moved or repeated, never new ones.
MOVES = frozenset(
    {
        "Identity",
        "Reshape",
        "Slice",
        "Split",
        "Stack",
        "Concatenate",
        "Transpose",
        "Broadcast",
        "BroadcastTo",
        "Tile",
        "Flip",
        "RecurrentInput",
        "RecurrentOutput",
        "Delay",
        "RepeatStart",
        "RepeatEnd",
    }
)


def word_indices(proto, optimizer) -> Dict[str, Tuple[str, int]]:
    """:func:`index_columns` of the network ``optimizer`` trains, fed as ``optimizer`` says
    (empty when the network is not defined).
    """
    inputs = {dv.variable_name: dv.data_name for dv in optimizer.data_variable}
    for net in proto.network:
        if net.name == optimizer.network_name:
            return index_columns(net, inputs)
    return {}


def index_columns(net, inputs: Dict[str, str]) -> Dict[str, Tuple[str, int]]:
    """The dataset columns that feed an Embed's indices in the network ``net``.

    Args:
        net: a ``Network`` message (loops unrolled or not).
        inputs: its data variable -> dataset column, e.g. ``{"Input": "x"}``.

    Returns:
        dataset column -> ``(Embed layer, V)``: the layer with the smallest dictionary that
        reads the column, and V, its number of rows (valid indices 0..V-1); e.g.
        ``{"x": ("Embed", 50)}``. Empty for a network without Embed.

    """
    shapes = {v.name: [int(d) for d in v.shape.dim] for v in net.variable}
    producer = {o: f for f in net.function for o in f.output}
    found: Dict[str, Tuple[str, int]] = {}
    for f in net.function:
        if f.type != "Embed" or len(f.input) < 2 or not shapes.get(f.input[1]):
            continue
        words = shapes[f.input[1]][0]
        for column in _sources(f.input[0], producer, inputs):
            if column not in found or words < found[column][1]:
                found[column] = (f.name, words)
    return found


def _sources(name: str, producer, inputs: Dict[str, str]):
    """The dataset columns whose values reach variable ``name`` through :data:`MOVES` only."""
    columns, todo, seen = set(), [name], set()
    while todo:
        var = todo.pop()
        if var in seen:
            continue
        seen.add(var)
        if var in inputs:
            columns.add(inputs[var])
        elif var in producer and producer[var].type in MOVES:
            todo.extend(producer[var].input)
    return sorted(columns)
