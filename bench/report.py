"""Tables and plots from the results dict of `python -m bench`."""

from __future__ import annotations

from pathlib import Path

VARIANTS = ("reference", "muslin-agent", "muslin-agent-py", "muslin-inproc", "muslind-only")


def _get(res: dict, variant: str, level: int, verb: str) -> dict | None:
    for s in res.get("cni", []):
        if s["variant"] == variant and s["endpoints"] == level and s["verb"] == verb:
            return s
    return None


def cni_rows(res: dict) -> list[list[str]]:
    rows = []
    for level in res.get("levels", []):
        for v in VARIANTS:
            add, dl = _get(res, v, level, "ADD"), _get(res, v, level, "DEL")
            pa, pd = _get(res, v, level, "ADDx8"), _get(res, v, level, "DELx8")
            ref_a, ref_d = _get(res, "reference", level, "ADD"), _get(res, "reference", level, "DEL")
            ref_pa = _get(res, "reference", level, "ADDx8")
            if not add:
                continue
            rows.append([str(level), v, f"{add['p50_ms']:.1f}", f"{add['p95_ms']:.1f}",
                         f"{add['p50_ms'] / ref_a['p50_ms']:.2f}x" if ref_a else "",
                         f"{dl['p50_ms']:.1f}" if dl else "", f"{dl['p95_ms']:.1f}" if dl else "",
                         f"{dl['p50_ms'] / ref_d['p50_ms']:.2f}x" if dl and ref_d else "",
                         f"{pa['cps']:.1f}" if pa else "", f"{pa['cps'] / ref_pa['cps']:.2f}x" if pa and ref_pa else "",
                         f"{pd['cps']:.1f}" if pd else ""])
    return rows


CNI_HEAD = ["endpoints", "variant", "ADD p50 ms", "ADD p95 ms", "ADD vs ref", "DEL p50 ms", "DEL p95 ms",
            "DEL vs ref", "ADD x8 c/s", "x8 vs ref", "DEL x8 c/s"]


def _fmt_table(head: list[str], rows: list[list[str]]) -> str:
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda r: "  ".join(c.rjust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([line(head), line(["-" * x for x in w]), *(line(r) for r in rows)])


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def proc_rows(res: dict) -> list[list[str]]:
    pr = res.get("proc") or {}
    rows = []
    true = (pr.get("/bin/true") or {}).get("wall_ms")
    for k, v in pr.items():
        if isinstance(v, dict) and "wall_ms" in v:
            name = k + (" (static)" if k == "native muslin-cni VERSION" and pr.get("native_static") else "")
            rows.append([name, f"{v['wall_ms']:.2f}", f"{v['cpu_ms']:.2f}",
                         f"{v['wall_ms'] / true:.2f}x" if true else "", str(v["n"])])
    for k in ("skipped", "error"):
        if k in pr:
            rows.append([k, pr[k], "", "", ""])
    return rows


PROC_HEAD = ["call", "wall p50 ms", "CPU p50 ms", "vs /bin/true", "n"]


def other_rows(res: dict) -> list[list[str]]:
    rows = []
    pm = res.get("podman") or {}
    for k in ("muslin-agent", "muslin-inproc", "reference", "netavark"):
        if isinstance(pm.get(k), dict):
            d = pm[k]
            rows.append([f"podman run network cost, {k}", f"{d['cost_s'] * 1e3:.0f} ms",
                         f"run {d['with_network_s'] * 1e3:.0f} ms, --network none {d['network_none_s'] * 1e3:.0f} ms"])
    for k in ("skipped", "error"):
        if k in pm:
            rows.append(["podman", k, pm[k]])
    dk = res.get("docker") or {}
    if dk:
        rows.append(["docker network connect+disconnect", "", " ".join(f"{k}={v}" for k, v in dk.items()
                                                                       if k != "command")[:200]])
    ip = res.get("iperf") or {}
    if "raw_veth_gbps" in ip:
        rows.append(["iperf3 raw veth", f"{ip['raw_veth_gbps']:.1f} Gbit/s", ""])
        rows.append(["iperf3 two sandboxes on a Muslin bridge", f"{ip['muslin_bridge_gbps']:.1f} Gbit/s",
                     f"{ip['ratio'] * 100:.0f}% of raw veth"])
        if "bridge_no_br_netfilter_gbps" in ip:
            v = ip["bridge_no_br_netfilter_gbps"]
            rows.append(["iperf3 same bridge, bridged frames kept out of netfilter (diagnostic)", f"{v:.1f} Gbit/s",
                         f"{v / ip['raw_veth_gbps'] * 100:.0f}% of raw veth"])
    elif ip:
        rows.append(["iperf3", "", str(ip)[:200]])
    lb = res.get("lab") or {}
    if "hand_built_two_hosts_gbps" in lb:
        rows.append(["iperf3 cross-host, the host-gw path built by hand (no firewall)",
                     f"{lb['hand_built_two_hosts_gbps']:.1f} Gbit/s", ""])
    for k in ("vxlan", "host-gw"):
        if f"{k}_gbps" in lb:
            rel = [f"raw veth in the same run {lb['raw_veth_gbps']:.1f} Gbit/s"]
            if k == "host-gw" and lb.get("hand_built_two_hosts_gbps"):
                rel.append(f"{lb[k + '_gbps'] / lb['hand_built_two_hosts_gbps'] * 100:.0f}% of the hand-built path")
            if k == "vxlan" and lb.get("host-gw_gbps"):
                rel.append(f"{lb[k + '_gbps'] / lb['host-gw_gbps'] * 100:.0f}% of host-gw")
            rows.append([f"iperf3 cross-host (muslin lab), {k}", f"{lb[k + '_gbps']:.1f} Gbit/s", "; ".join(rel)])
        elif f"{k}_error" in lb:
            rows.append([f"iperf3 cross-host (muslin lab), {k}", "error", lb[f"{k}_error"]])
    for k in ("skipped", "error"):
        if k in lb:
            rows.append(["iperf3 cross-host (muslin lab)", k, lb[k]])
    wg = res.get("wireguard") or {}
    if "tcp_ratio" in wg:
        rows.append(["single-stream TCP, wireguard (wireguard-go) vs host-gw, same two lab hosts",
                     f"{wg['wireguard_tcp_gbps']:.2f} vs {wg['host-gw_tcp_gbps']:.2f} Gbit/s",
                     f"{wg['tcp_ratio'] * 100:.0f}% of host-gw"])
        rows.append(["RTT p50, wireguard vs host-gw", f"{wg['wireguard_rtt_p50_ms']:.3f} vs "
                     f"{wg['host-gw_rtt_p50_ms']:.3f} ms", f"+{wg['added_rtt_p50_ms']:.3f} ms"])
        rows.append(["a new WireGuard peer programmed after its record appears",
                     f"{wg['new_peer_p50_s'] * 1000:.0f} ms p50", f"max {wg['new_peer_max_s'] * 1000:.0f} ms"])
    elif wg:
        rows.append(["wireguard", "", str(wg)[:200]])
    cv = res.get("converge") or {}
    if cv.get("sandbox_reachable_ms"):
        r = cv["sandbox_reachable_ms"]
        rows.append([f"new sandbox reachable from another lab host ({cv['hosts']} hosts)",
                     f"{r['p50']:.0f} ms p50", f"max {r['max']:.0f} ms, {r['n']} sandboxes, {r['lost']} never"])
    if cv.get("host_join_ms"):
        j = cv["host_join_ms"]
        rows.append([f"new host routed on all {j['peers']} peers", f"{j['after_record_p50']:.0f} ms p50",
                     f"from its record in etcd (max {j['after_record_max']:.0f}); {j['p50']:.0f} ms from its agent's start"])
    for k in ("skipped", "error"):
        if k in cv:
            rows.append(["lab convergence", k, cv[k]])
    ac = res.get("activation") or {}
    for k in ("reference", "in-process", "socket activation"):
        if isinstance(ac.get(k), dict):
            d = ac[k]
            vs = f"; {d['first_vs_ref']:.2f}x / {d['second_vs_ref']:.2f}x the reference" if "first_vs_ref" in d else ""
            rows.append([f"no muslind running: {k}, first / second ADD", f"{d['first_add_ms']:.1f} / "
                         f"{d['second_add_ms']:.1f} ms", f"median of {ac['rounds']} fresh host namespaces{vs}"])
    for k in ("skipped", "error"):
        if k in ac:
            rows.append(["no muslind running", k, ac[k]])
    for level, mb in (res.get("muslind_rss_mb") or {}).items():
        rows.append([f"muslind RSS with {level} endpoints", f"{mb:.1f} MB", ""])
    return rows


PHASE_HEAD = ["endpoints", "phase (inside muslind)", "p50 ms", "mean ms", "n"]


def phase_rows(res: dict) -> list[list[str]]:
    """muslind's own time by phase: the use-case totals, then each plan step."""
    rows = []
    for level, ph in (res.get("muslind_phases") or {}).items():
        for name in sorted(ph, key=lambda n: (not n.endswith("(all)"), n)):
            v = ph[name]
            rows.append([level, name, f"{v['p50_ms']:.2f}", f"{v['mean_ms']:.2f}", str(v["n"])])
    return rows


def table(res: dict) -> str:
    out = [_fmt_table(PROC_HEAD, proc_rows(res))] if res.get("proc") else []
    if res.get("cni"):
        out.append(_fmt_table(CNI_HEAD, cni_rows(res)))
    if res.get("muslind_phases"):
        out.append(_fmt_table(PHASE_HEAD, phase_rows(res)))
    rows = other_rows(res)
    if rows:
        out.append(_fmt_table(["measure", "value", "detail"], rows))
    return "\n\n".join(out)


def markdown(res: dict) -> str:
    m = res.get("machine", {})
    parts = [f"Run `{' '.join(res.get('argv', []))}` from {res.get('started')} to {res.get('finished')}.",
             f"Machine: {m.get('os')}, kernel {m.get('kernel')}, {m.get('cores')} cores ({m.get('cpu')}), "
             f"{m.get('memory')} RAM, Python {m.get('python')}, load average at start {m.get('load')}.", ""]
    if res.get("proc"):
        parts += [_md_table(PROC_HEAD, proc_rows(res)), ""]
    if res.get("cni"):
        parts += [_md_table(CNI_HEAD, cni_rows(res)), ""]
    if res.get("muslind_phases"):
        parts += [_md_table(PHASE_HEAD, phase_rows(res)), ""]
    rows = other_rows(res)
    if rows:
        parts += [_md_table(["measure", "value", "detail"], rows), ""]
    return "\n".join(parts)


def plots(res: dict, out: Path) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    if res.get("cni"):
        levels = res["levels"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, verb in zip(axes[:2], ("ADD", "DEL")):
            for v in VARIANTS:
                pts = [(lv, _get(res, v, lv, verb)) for lv in levels]
                pts = [(lv, s) for lv, s in pts if s]
                if not pts:
                    continue
                xs = [lv for lv, _ in pts]
                ax.plot(xs, [s["p50_ms"] for _, s in pts], marker="o", label=f"{v} p50")
                ax.plot(xs, [s["p95_ms"] for _, s in pts], linestyle="--", alpha=0.6, label=f"{v} p95")
            ax.set_xscale("log")
            ax.set_xlabel("endpoints already on the host")
            ax.set_ylabel("ms per call")
            ax.set_title(f"CNI {verb} latency (one at a time)")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        ax = axes[2]
        width = 0.8 / len(VARIANTS)
        for i, v in enumerate(VARIANTS):
            ys = [(_get(res, v, lv, "ADDx8") or {}).get("cps", 0) for lv in levels]
            ax.bar([j + i * width for j in range(len(levels))], ys, width, label=v)
        ax.set_xticks([j + width for j in range(len(levels))], [str(lv) for lv in levels])
        ax.set_xlabel("endpoints already on the host")
        ax.set_ylabel("containers/s")
        ax.set_title("CNI ADD, 8 in parallel")
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / "cni_latency.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        made.append(p)
    pm = res.get("podman") or {}
    bars = {k: pm[k]["cost_s"] * 1e3 for k in ("muslin-agent", "muslin-inproc", "reference", "netavark") if isinstance(pm.get(k), dict)}
    ip = res.get("iperf") or {}
    if bars or "raw_veth_gbps" in ip:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        if bars:
            axes[0].bar(list(bars), list(bars.values()), color=["C1", "C2", "C3", "C0"][:len(bars)])
            axes[0].set_ylabel("ms per podman run")
            axes[0].set_title("podman run network cost")
        if "raw_veth_gbps" in ip:
            axes[1].bar(["raw veth", "Muslin bridge"], [ip["raw_veth_gbps"], ip["muslin_bridge_gbps"]])
            axes[1].set_ylabel("Gbit/s")
            axes[1].set_title("iperf3, same host")
        fig.tight_layout()
        p = out / "podman_iperf.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        made.append(p)
    return made
