"""What a recurrent (or repeated) definition needs beyond a plain one: its loops expanded, and
the inputs a generator fills (a ``Delay`` layer's initial state).

The console saves a recurrent network unexpanded: layers inside a loop carry ``repeat_id``,
the network a ``repeat_info`` (the loop's length), and ``RecurrentInput`` / ``Delay`` /
``RecurrentOutput`` (or ``RepeatStart`` / ``RepeatEnd``) are no nnabla functions but loop
controls. :func:`expand_loops` unrolls such networks with nnabla's own expansion
(``ProtoNetwork.expand_loop_control``, which ``nnabla_cli train`` runs before it builds a
graph): ``RecurrentInput`` becomes a Split along its axis, ``RecurrentOutput`` a Stack,
``Delay`` an Identity of the previous step's value (its second input at step 0), and every
layer inside the loop one copy per step, sharing the loop's parameters (or, for repeats with
``{id}`` in a parameter's name, ``name[i]``). Every other part of the adapter then sees a plain
network.

A ``Delay``'s initial state (``Delay_Initial``) is no dataset column: the optimizer, the
monitors and the executor name it as a ``generator_variable``, which ``nnabla_cli train``
fills before every step. A ``Constant`` or ``Range`` generator gives the same values at every
step, so the replay can give them too (:func:`generated_inputs`, :func:`fill_generated`); a
``Normal`` or ``Uniform`` one draws new random values at every step, which the replay cannot
reproduce, and is refused.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from ..errors import NetworkDefinitionError

#: The console's loop layers: no nnabla functions, the expansion replaces them.
_LOOP_CONTROLS = ("RecurrentInput", "RecurrentOutput", "Delay", "RepeatStart", "RepeatEnd")
#: Generator types that give the same values at every step: type -> nnabla's initializer of
#: it (as ``nnabla.utils.load`` makes it from the multiplier m).
_FIXED_GENERATORS = {
    "Constant": lambda m: ("ConstantInitializer", {"value": m}),
    "Range": lambda m: ("RangeInitializer", {"start": 0, "step": m}),
}


def expand_loops(proto, source: str) -> Dict[str, str]:
    """Unroll every network of ``proto`` that has a ``repeat_info``, in place.

    Returns:
        network name -> a note for each unrolled network, e.g. ``{"Main": "Main: loops
        unrolled by nnabla (RecurrentInput x 12)"}``; empty for a definition without loops.

    Raises:
        NetworkDefinitionError: a layer of a loop the network does not define
            (:func:`_check_loops`), or a loop nnabla cannot expand (a Delay without its two
            inputs, ...).

    """
    from nnabla.core.graph_def import ProtoGraph
    from nnabla.utils import nnabla_pb2

    notes = {}
    for net in proto.network:
        _check_loops(net, source)
        if not net.repeat_info:
            continue
        alone = nnabla_pb2.NNablaProtoBuf()
        alone.network.add().CopyFrom(net)
        try:  # a graph of its own, no parameters: nothing touches nnabla's global scope
            graph = ProtoGraph.from_proto(alone, param_scope={}, rng=np.random.RandomState(0))
            graph.expand_loop_control()
            flat = graph.networks[net.name].as_proto(variable_batch_size=False)
        except Exception as e:  # noqa: BLE001 - nnabla raises anything on a malformed loop
            detail = str(e).splitlines()[0] if str(e) else "no detail"
            raise NetworkDefinitionError(
                f"{source}: nnabla cannot expand the loops of network '{net.name}' "
                f"({type(e).__name__}: {detail}); save the result again from the console, or "
                "check its RecurrentInput / Delay / RecurrentOutput (RepeatStart / RepeatEnd) "
                "layers with nnabla_cli train"
            ) from None
        loops = ", ".join(f"{r.id} x {r.times}" for r in net.repeat_info)
        batch_size = net.batch_size
        net.CopyFrom(flat)
        net.batch_size = batch_size
        before = _repeat_copies(alone.network[0])
        for v in net.variable:  # nnabla's copies say "function" for an initializer
            del v.repeat_id[:]
            if v.name in before and before[v.name].HasField("initializer"):
                v.initializer.CopyFrom(before[v.name].initializer)
            else:  # a buffer: the replay initialises nothing
                v.ClearField("initializer")
        notes[net.name] = f"{net.name}: loops unrolled by nnabla ({loops})"
    return notes


def _repeat_copies(net) -> Dict[str, object]:
    """The unexpanded ``net``'s variables by name, and each variable with ``{id}`` in its name
    also under the names nnabla gives its copies: ``Affine_1{RepeatStart}/affine/W`` with
    ``RepeatStart`` x 2 as ``Affine_1[0]/affine/W`` and ``Affine_1[1]/affine/W`` (the copies
    keep the definition's initializer, as nnabla_cli train initialises them).
    """
    times = {r.id: int(r.times) for r in net.repeat_info}
    out: Dict[str, object] = {}
    for v in net.variable:
        names = [v.name]
        for rid, n in times.items():
            token = "{" + rid + "}"
            if token in v.name:
                names = [m.replace(token, f"[{i}]") for m in names for i in range(n)]
        for name in names:
            out[name] = v
    return out


def _check_loops(net, source: str) -> None:
    """Every loop a layer of ``net`` belongs to (its ``repeat_id``, and the loop a
    ``RecurrentInput`` / ``Delay`` / ``RepeatStart`` ... controls) is one of the network's
    ``repeat_info``.

    Raises:
        NetworkDefinitionError: naming the first layer whose loop is not defined (nnabla
            would stop on a KeyError, or, without any ``repeat_info``, on a layer type it does
            not know).

    """
    defined = {r.id for r in net.repeat_info}
    for f in net.function:
        loops = list(f.repeat_id)
        for param in ("repeat_param", "recurrent_param"):
            if f.HasField(param):
                loops.append(getattr(f, param).repeat_id)
        if f.type in _LOOP_CONTROLS and not loops:
            loops.append("")
        for loop in loops:
            if loop not in defined:
                raise NetworkDefinitionError(
                    f"{source}: layer '{f.name}' ({f.type}) of network '{net.name}' belongs "
                    f"to a loop '{loop}' that the network does not define (its repeat_info "
                    f"has {sorted(defined) or 'none'}); save the result again from the "
                    "console, whose net.nntxt defines every loop it uses"
                )


def generated_inputs(owner, kind: str, net, source: str) -> Dict[str, Tuple[str, float]]:
    """The inputs of ``net`` that ``owner`` (an ``optimizer`` or ``executor`` message, as
    ``kind`` says) fills from a generator: variable -> (generator type, multiplier), e.g.
    ``{"Delay_Initial": ("Constant", 0.0)}``.

    Raises:
        NetworkDefinitionError: a random generator (a new value at every step), an unknown
            type, or a variable the network does not have.

    """
    names = {v.name for v in net.variable}
    out: Dict[str, Tuple[str, float]] = {}
    for g in owner.generator_variable:
        if g.variable_name not in names:
            raise NetworkDefinitionError(
                f"{source}: {kind} '{owner.name}' fills '{g.variable_name}' from a generator, "
                f"but network '{net.name}' has no such variable"
            )
        if g.type not in _FIXED_GENERATORS:
            raise NetworkDefinitionError(
                f"{source}: {kind} '{owner.name}' fills '{g.variable_name}' from a "
                f"'{g.type}' generator, new random values at every step, which the replay "
                "cannot reproduce; give it a Constant generator (a Delay layer's initial "
                "state of 0; a VAE's noise of 0 feeds the mean to the decoder) in the "
                "definition and give it with --config and these parameters"
            )
        out[g.variable_name] = (g.type, float(g.multiplier))
    return out


def generated_value(kind: str, multiplier: float, shape) -> np.ndarray:
    """The values a fixed generator gives a variable of ``shape`` (float32, ``shape``), as
    ``nnabla_cli train`` computes them: ``Constant`` fills ``multiplier``, ``Range`` counts
    0, m, 2m, ... along the last axis.
    """
    import nnabla.initializer as init

    name, kwargs = _FIXED_GENERATORS[kind](multiplier)
    return np.asarray(getattr(init, name)(**kwargs)(tuple(shape)), dtype=np.float32)


def fill_generated(variables, renamed: Dict[str, str], generated) -> None:
    """Give each generated input of a built network its fixed values, once: they stay
    (``persistent``: no ``clear_buffer`` frees them) and take no gradient.

    Args:
        variables: the built ``ProtoNetwork``'s variables (name -> ProtoVariable).
        renamed: the names ``IdentityRemover`` changed.
        generated: variable -> (generator type, multiplier), :func:`generated_inputs`.

    """
    for name, (kind, multiplier) in generated.items():
        v = variables[renamed.get(name, name)].variable_instance
        if v is None:  # the network does not use it
            continue
        v.d = generated_value(kind, multiplier, v.shape)
        v.need_grad = False
        v.persistent = True
