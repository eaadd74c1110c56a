"""What the tool says about a definition's optimizers beyond the one it replays: learning-rate
multipliers other than 0 and 1, and other optimizers that train the same parameters
(:func:`optimizer_warnings`).

``nnabla_cli train`` (nnabla 1.39, the console's engine) reads an optimizer's
``learning_rate_multiplier`` only as a switch: 0 freezes a parameter, any other value trains
it at the solver's full rate (``nnabla.utils.load``: ``if local_lr > 0.0``), as the tool's
epochs do. A definition with 0.1 or 2 was therefore trained, and is replayed, at one rate;
the user who typed 0.1 is told so. Several optimizers step in turn at every iteration of
their ``start_iter``..``end_iter`` range; the tool replays one of them (:func:`..definition.
describe`), so another that trains parameters of the same network is named in a warning.
"""

from __future__ import annotations

import re
from typing import Dict, List


def multipliers(opt, net) -> Dict[str, float]:
    """Parameter of ``net`` -> its learning-rate multiplier in ``opt`` (unitless; a parameter
    ``opt`` does not name is absent); a name may hold ``{...}`` placeholders for repeat indices.
    """
    var_types = {v.name: v.type for v in net.variable}
    lr_mult: Dict[str, float] = {}
    for pv in opt.parameter_variable:
        escaped = re.escape(pv.variable_name).replace(r"\{", "{").replace(r"\}", "}")
        pattern = re.compile("^" + re.sub(r"{[^}]*}", r"\\[\\d+\\]", escaped) + "$")
        for name, t in var_types.items():
            if t == "Parameter" and (name == pv.variable_name or pattern.match(name)):
                lr_mult[name] = float(pv.learning_rate_multiplier)
    return lr_mult


def _shown(names: List[str], most: int = 3) -> str:
    """``a, b, c`` or ``a, b, c and 4 more``."""
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def optimizer_warnings(proto, opt, net, source: str) -> List[str]:
    """Sentences for the run's warnings (and settings.yaml) about ``opt`` (the optimizer the
    tool replays, training ``net``) and the definition's other optimizers; [] for neither.
    """
    out = []
    scaled = {n: m for n, m in sorted(multipliers(opt, net).items()) if m > 0 and m != 1}
    if scaled:
        listed = _shown([f"{n} x{m:g}" for n, m in scaled.items()])
        out.append(
            f"{source}: optimizer '{opt.name}' sets learning-rate multipliers other than 0 and 1 "
            f"({listed}); nnabla_cli train (the console's engine) trained every parameter with "
            "a multiplier above 0 at the full rate, and the tool's epochs and replay do the "
            "same (there a multiplier only switches a parameter on or off: 0 freezes it)"
        )
    ours = {p.name for p in net.variable if p.type == "Parameter"}
    nets = {n.name: n for n in proto.network}
    for other in proto.optimizer:
        if other.name == opt.name or other.network_name not in nets:
            continue
        trained = multipliers(other, nets[other.network_name])
        shared = sorted(n for n, m in trained.items() if m > 0 and n in ours)
        if shared:
            out.append(
                f"{source}: optimizer '{other.name}' (network '{other.network_name}') also "
                f"trains {_shown(shared)}, which the tool replays as trained by optimizer "
                f"'{opt.name}' alone: the scores leave out its steps; give a definition with "
                "one optimizer for this network"
            )
    return out
