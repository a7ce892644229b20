"""Rates and bursts of the bandwidth limits (pure): the CLI's `10mbit` words and the
reference CNI `bandwidth` plugin's rules for its four keys.

Rates are bit/s, bursts bits, as the reference plugin has them. A limit that way needs
both its rate and its burst (the CLI fills in a burst when none is given).
"""

from __future__ import annotations

import re

from muslin.model.errors import Invalid
from muslin.model.types import Bandwidth

# tc's bit units (powers of 1000); a bare number is bits.
UNITS = {"": 1, "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
         "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
MAX_BURST = 8 * (2**32 - 1)  # the kernel keeps a tbf's burst in bytes as a u32
MIN_BURST = 8 * 64 * 1024  # the CLI's default burst at least: one 64 KiB GSO packet
_WORD = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_bits(text: str, what: str) -> int:
    """'10mbit', '1.5gbit', '500k', '1000000' -> bits (bit/s for a rate)."""
    m = _WORD.fullmatch(text.strip().lower())
    if not m or m.group(2) not in UNITS:
        raise Invalid(f"{what} {text!r}: use a number of bits with an optional unit "
                      "(bit, kbit, mbit, gbit, tbit), e.g. 10mbit")
    value = int(float(m.group(1)) * UNITS[m.group(2)])
    if value <= 0:
        raise Invalid(f"{what} {text!r}: must be more than 0")
    return value


def default_burst(rate: int) -> int:
    """The CLI's burst for a rate given without one: 10 ms of the rate, at least 64 KiB."""
    return min(max(rate // 100, MIN_BURST), MAX_BURST)


def check_bandwidth(bw: Bandwidth, where: str = "") -> Bandwidth:
    """The reference plugin's rules: non-negative integers; each direction's rate and burst
    both or neither; a burst under 4 GiB (in bytes)."""
    for name, value in (("ingressRate", bw.ingress_rate), ("ingressBurst", bw.ingress_burst),
                        ("egressRate", bw.egress_rate), ("egressBurst", bw.egress_burst)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise Invalid(f"{where}{name} {value!r}: must be a non-negative integer")
    for way, rate, burst in (("ingress", bw.ingress_rate, bw.ingress_burst),
                             ("egress", bw.egress_rate, bw.egress_burst)):
        if rate and not burst:
            raise Invalid(f"{where}{way}Rate is set without {way}Burst: set both or neither")
        if burst and not rate:
            raise Invalid(f"{where}{way}Burst is set without {way}Rate: set both or neither")
        if burst // 8 >= 2**32 - 1:
            raise Invalid(f"{where}{way}Burst {burst}: cannot be 4 GiB (in bytes) or more")
    return bw
