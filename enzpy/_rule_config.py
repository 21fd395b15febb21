"""The configuration a custom rule's functions receive (``cfg``)."""

from __future__ import annotations

import collections

#: ``active``: a tuple of bools, argument i carries a derivative at this call;
#: ``overwritten``: a tuple of bools, argument i's memory may change between
#: the call and its reverse (reverse mode; the rule then keeps what it needs
#: on its tape).
RuleConfig = collections.namedtuple("RuleConfig", ["active", "overwritten"])
