"""The configuration a custom rule's functions receive (``cfg``)."""

from __future__ import annotations

import collections

#: ``active``: a tuple of bools, argument i carries a derivative at this call;
#: ``overwritten``: a tuple of bools, argument i's memory may change between
#: the call and its reverse (reverse mode; the rule then keeps what it needs
#: on its tape; all False in forward mode, where batch lanes after the first
#: run on copies of what the call writes);
#: ``width``: the derivative's batch width W (1 outside batch mode): the
#: rule's functions run once per lane;
#: ``lane``: the lane of this call, 0 to W - 1 (the augmented function runs
#: once, as lane 0);
#: ``result_active``: whether the float or array the function returns carries
#: a derivative that is used (else the forward function's tangent of it is
#: dropped and the reverse function's ``ybar`` is zero). enzpy always needs
#: the primal: the rule's forward and augmented functions run the call's
#: side effects and return its result.
RuleConfig = collections.namedtuple(
    "RuleConfig", ["active", "overwritten", "width", "lane", "result_active"]
)
