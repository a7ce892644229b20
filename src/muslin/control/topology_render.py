"""Drawings of a topology (control/topology.py): Graphviz DOT, SVG, and the page muslind
serves at /topology: one self-contained HTML file (inline CSS, SVG and a script that
fetches /topology.svg again every few seconds; nothing from any other address).

Pure: text in, text out. Layout of the SVG: one column per host (its underlay address,
subnets, liveness), its networks stacked in it (bridge, subnets, VNI), each network's
sandboxes inside (addresses, published ports, labels); the tunnels between hosts are arcs
above the columns. Every element carries its id (`host:h1`, `net:h1/web`, `sb:h1/a`,
`tun:net0/h1-h2`) and a class, for scripts and tests.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

COL_W, COL_GAP, MARGIN, TOP = 300, 70, 30, 130
SB_H, NET_HEAD, HOST_HEAD, PAD = 58, 62, 62, 10


def _x(s: Any) -> str:
    return escape(str(s), quote=True)


def _ports(i: dict[str, Any]) -> str:
    return ", ".join(f"{p.get('hostIP') or '*'}:{p['hostPort']}->{p['containerPort']}/{p.get('protocol', 'tcp')}"
                     for p in i.get("ports", []))


def _net_line(n: dict[str, Any]) -> str:
    parts = [n.get("driver", "")]
    if n.get("bridge"):
        parts.append(f"bridge {n['bridge']}")
    if n.get("vni") is not None:
        parts.append(f"VNI {n['vni']}")
    return " · ".join(p for p in parts if p)


def _layout(t: dict[str, Any]) -> dict[str, Any]:
    """Boxes: host -> (x, y, w, h); network -> ...; sandbox -> ... (sandboxes under their
    first interface's network)."""
    boxes: dict[str, tuple[int, int, int, int]] = {}
    nets_of: dict[str, list[dict[str, Any]]] = {}
    for n in t.get("networks", []):
        nets_of.setdefault(n["host"], []).append(n)
    sbs_of: dict[str, list[dict[str, Any]]] = {}
    for s in t.get("sandboxes", []):
        first = s["interfaces"][0]["network"] if s.get("interfaces") else f"net:{s['host']}/-"
        sbs_of.setdefault(first, []).append(s)
    height = TOP + HOST_HEAD
    for i, h in enumerate(t.get("hosts", [])):
        x = MARGIN + i * (COL_W + COL_GAP)
        y = TOP + HOST_HEAD
        for n in nets_of.get(h["name"], []):
            nh = NET_HEAD + len(sbs_of.get(n["id"], [])) * (SB_H + PAD) + PAD
            boxes[n["id"]] = (x + PAD, y, COL_W - 2 * PAD, nh)
            sy = y + NET_HEAD
            for s in sbs_of.get(n["id"], []):
                boxes[s["id"]] = (x + 2 * PAD, sy, COL_W - 4 * PAD, SB_H)
                sy += SB_H + PAD
            y += nh + PAD
        boxes[h["id"]] = (x, TOP, COL_W, y - TOP + PAD)
        height = max(height, y + PAD)
    width = MARGIN * 2 + max(1, len(t.get("hosts", []))) * (COL_W + COL_GAP) - COL_GAP
    return {"boxes": boxes, "width": width, "height": height + MARGIN}


def to_svg(t: dict[str, Any]) -> str:
    lay = _layout(t)
    b = lay["boxes"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="topology" width="{lay["width"]}" '
           f'height="{lay["height"]}" viewBox="0 0 {lay["width"]} {lay["height"]}" font-family="sans-serif" '
           f'font-size="12">',
           '<style>.host>rect{fill:#f4f6fb;stroke:#5b6b8c}.host.down>rect{stroke:#c0392b;stroke-dasharray:6 3}'
           '.net>rect{fill:#fff;stroke:#2e86c1}.sandbox>rect{fill:#eafaf1;stroke:#239b56}'
           '.tunnel path{fill:none;stroke:#8e44ad;stroke-width:2}.t{font-weight:bold}.s{fill:#555}</style>']
    for tun in t.get("tunnels", []):
        if tun["a"] not in b or tun["b"] not in b:
            continue
        ax, ay, aw, _ = b[tun["a"]]
        bx, _, bw, _ = b[tun["b"]]
        x1, x2 = ax + aw / 2, bx + bw / 2
        lift = 30 + (x2 - x1) / 12
        label = tun["kind"] + (f" VNI {tun['vni']}" if tun.get("vni") is not None else "") + \
            (f" udp/{tun['port']}" if tun.get("port") else "")
        out.append(f'<g class="tunnel" id="{_x(tun["id"])}" data-a="{_x(tun["a"])}" data-b="{_x(tun["b"])}">'
                   f'<path d="M{x1:.0f},{ay} Q{(x1 + x2) / 2:.0f},{ay - lift * 2:.0f} {x2:.0f},{ay}"/>'
                   f'<text x="{(x1 + x2) / 2:.0f}" y="{ay - lift - 4:.0f}" text-anchor="middle" class="s">'
                   f'{_x(tun["network"])}: {_x(label)}</text></g>')
    for h in t.get("hosts", []):
        if h["id"] not in b:
            continue
        x, y, w, hh = b[h["id"]]
        subnets = ", ".join(f"{n} {s}" for n, s in sorted(h.get("subnets", {}).items()))
        state = "" if h.get("alive", True) else " down"
        out.append(f'<g class="host{state}" id="{_x(h["id"])}" data-name="{_x(h["name"])}">'
                   f'<rect x="{x}" y="{y}" width="{w}" height="{hh}" rx="8"/>'
                   f'<text x="{x + 12}" y="{y + 22}" class="t" font-size="15">{_x(h["name"])}'
                   f'{" (this host)" if h.get("self") else ""}{"" if h.get("alive", True) else " · agent down"}'
                   f'</text><text x="{x + 12}" y="{y + 40}" class="s">{_x(h.get("underlay") or "")}</text>'
                   f'<text x="{x + 12}" y="{y + 55}" class="s">{_x(subnets)}</text></g>')
    for n in t.get("networks", []):
        if n["id"] not in b:
            continue
        x, y, w, nh = b[n["id"]]
        out.append(f'<g class="net" id="{_x(n["id"])}" data-name="{_x(n["name"])}">'
                   f'<rect x="{x}" y="{y}" width="{w}" height="{nh}" rx="6"/>'
                   f'<text x="{x + 10}" y="{y + 18}" class="t">{_x(n["name"])}</text>'
                   f'<text x="{x + 10}" y="{y + 34}" class="s">{_x(_net_line(n))}</text>'
                   f'<text x="{x + 10}" y="{y + 50}" class="s">{_x(", ".join(n.get("subnets", [])))}</text></g>')
    for s in t.get("sandboxes", []):
        if s["id"] not in b:
            continue
        x, y, w, sh = b[s["id"]]
        addrs = "; ".join(f"{i['ifname']} {' '.join(i['addresses'])}" for i in s.get("interfaces", []))
        ports = "; ".join(p for p in (_ports(i) for i in s.get("interfaces", [])) if p)
        labels = ", ".join(f"{k}={v}" for k, v in sorted(s.get("labels", {}).items()))
        extra = " · ".join(p for p in (f"ports {ports}" if ports else "", labels) if p)
        out.append(f'<g class="sandbox" id="{_x(s["id"])}" data-name="{_x(s["name"])}">'
                   f'<rect x="{x}" y="{y}" width="{w}" height="{sh}" rx="5"/>'
                   f'<text x="{x + 8}" y="{y + 17}" class="t">{_x(s["name"])}</text>'
                   f'<text x="{x + 8}" y="{y + 33}" class="s">{_x(addrs)}</text>'
                   f'<text x="{x + 8}" y="{y + 49}" class="s">{_x(extra)}</text></g>')
    out.append("</svg>")
    return "\n".join(out)


def to_dot(t: dict[str, Any]) -> str:
    def q(s: Any) -> str:
        return json.dumps(str(s))

    lines = ["digraph muslin {", "  compound=true; rankdir=LR; node [shape=box, fontname=sans];"]
    nets_of: dict[str, list[dict[str, Any]]] = {}
    for n in t.get("networks", []):
        nets_of.setdefault(n["host"], []).append(n)
    for i, h in enumerate(t.get("hosts", [])):
        lines.append(f"  subgraph cluster_{i} {{")
        lines.append(f"    label={q(h['name'] + (' ' + h['underlay'] if h.get('underlay') else ''))};")
        lines.append(f"    {q(h['id'])} [label={q(h['name'])}, shape=house];")
        for n in nets_of.get(h["name"], []):
            label = f"{n['name']}\\n{_net_line(n)}\\n{', '.join(n.get('subnets', []))}"
            lines.append(f"    {q(n['id'])} [label=\"{label}\", shape=ellipse];")
            lines.append(f"    {q(h['id'])} -> {q(n['id'])} [arrowhead=none];")
        lines.append("  }")
    for s in t.get("sandboxes", []):
        addrs = " ".join(a for i in s.get("interfaces", []) for a in i["addresses"])
        lines.append(f"  {q(s['id'])} [label={q(s['name'] + ' ' + addrs)}];")
        for i in s.get("interfaces", []):
            label = i["ifname"] + (" " + _ports(i) if i.get("ports") else "")
            lines.append(f"  {q(i['network'])} -> {q(s['id'])} [label={q(label)}, arrowhead=none];")
    for tun in t.get("tunnels", []):
        label = tun["kind"] + (f" VNI {tun['vni']}" if tun.get("vni") is not None else "")
        lines.append(f"  {q(tun['a'])} -> {q(tun['b'])} [label={q(tun['network'] + ': ' + label)}, dir=both, "
                     "style=dashed];")
    lines.append("}")
    return "\n".join(lines) + "\n"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Muslin topology: {host}</title>
<style>
body{{font-family:sans-serif;margin:0;background:#fff;color:#222}}
header{{padding:10px 16px;background:#1f2d3d;color:#fff;font-size:15px}}
header span{{color:#aab7c4;margin-left:12px;font-size:13px}}
#graph{{padding:8px;overflow:auto}}
</style></head>
<body><header>Muslin topology, seen from {host}<span id="updated">{count}</span></header>
<div id="graph">{svg}</div>
<script>
(function () {{
  var every = {refresh_ms};
  function tick() {{
    fetch("topology.svg", {{cache: "no-store"}}).then(function (r) {{
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }}).then(function (svg) {{
      document.getElementById("graph").innerHTML = svg;
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    }}).catch(function (e) {{
      document.getElementById("updated").textContent = "refresh failed: " + e.message;
    }});
  }}
  setInterval(tick, every);
}})();
</script></body></html>
"""


def to_html(t: dict[str, Any], refresh: float = 3.0) -> str:
    counts = (f"{len(t.get('hosts', []))} hosts, {len(t.get('networks', []))} networks, "
              f"{len(t.get('sandboxes', []))} sandboxes, {len(t.get('tunnels', []))} tunnels")
    return PAGE.format(host=_x(t.get("host", "")), count=_x(counts), svg=to_svg(t),
                       refresh_ms=int(refresh * 1000))
