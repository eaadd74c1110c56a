"""A network's head, read from its definition: the last layer with parameters on the way back
from an output (the last Affine before a Softmax), whose parameters tell which output is the
classifier's, and whose input is the network's own representation of a sample (the features
the recommendation's neighbours use).
"""

from __future__ import annotations

from typing import Optional


def last_learned_function(net, output: str):
    """The last function with parameters on the way back from ``output`` (e.g. the last
    Affine before a Softmax), or None: no such function, or a function on the way with no
    data input.

    Walking back, each function is followed through its first input that is not a parameter;
    the first function that takes a parameter (Affine, Convolution, ...) ends the walk.
    """
    kinds = {v.name: v.type for v in net.variable}
    producer = {o: f for f in net.function for o in f.output}
    name = output
    for _ in range(len(net.function)):
        f = producer.get(name)
        if f is None:
            return None
        if any(kinds.get(i) == "Parameter" for i in f.input):
            return f
        data = [i for i in f.input if kinds.get(i) != "Parameter"]
        if not data:
            return None
        name = data[0]
    return None


def last_learned(net, output: str) -> Optional[frozenset]:
    """The parameter names of :func:`last_learned_function` of ``output`` (e.g.
    ``{"Affine_2/affine/W", "Affine_2/affine/b"}``), or None.
    """
    f = last_learned_function(net, output)
    if f is None:
        return None
    kinds = {v.name: v.type for v in net.variable}
    return frozenset(i for i in f.input if kinds.get(i) == "Parameter")


def feature_variable(net, output: str) -> Optional[str]:
    """The data input of :func:`last_learned_function` of ``output`` (e.g.
    ``@MainRuntime/ReLU_out_2`` before the last Affine), or None: no such function, or it
    has no data input.
    """
    f = last_learned_function(net, output)
    if f is None:
        return None
    kinds = {v.name: v.type for v in net.variable}
    data = [i for i in f.input if kinds.get(i) != "Parameter"]
    return data[0] if data else None
