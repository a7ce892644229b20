"""Muslin's firewall as pure data: FirewallState -> Ruleset -> nft script text."""

from muslin.firewall.compiler import SKELETON, Ruleset, compile, sysctls_for
from muslin.firewall.render import render_delete, render_delta, render_full
from muslin.firewall.state import FirewallState, NetRule, PortRule

__all__ = ["FirewallState", "NetRule", "PortRule", "Ruleset", "SKELETON", "compile", "render_delete",
           "render_delta", "render_full", "sysctls_for"]
