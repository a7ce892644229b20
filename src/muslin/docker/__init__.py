"""Docker (libnetwork CNM) front-end: a remote NetworkDriver + IpamDriver named `muslin`.

`muslind` serves it on /run/docker/plugins/muslin.sock (Docker finds it there by name;
start muslind before dockerd uses the driver). Usage:

    docker network create -d muslin --ipam-driver muslin [--subnet S [--ip-range R]
        [--gateway G] [--aux-address k=ip]] [--ipv6 [--subnet S6]] [--internal] [-o KEY=VALUE] NAME

Without --subnet the IPAM picks a free /24 from 10.200.0.0/16 (IPv6: a /64 of
fd6d:7573:6c69::/48) overlapping no Muslin network, Docker pool or host route.
`-o` keys: mtu (or com.docker.network.driver.mtu), muslin.mode=bridge|macvlan,
muslin.parent=LINK (macvlan), muslin.bridge=NAME, muslin.isolate=true|false,
muslin.masquerade=true|false, muslin.network=NAME (use, or join, the Muslin network NAME,
e.g. one a CNI runtime uses: same bridge, subnet and IPAM; for a cluster network's host
side `--subnet` is the cluster CIDR and addresses come from the host's lease, see
`clusterpool`). Unknown keys are refused.
`-p` publishing (fixed, ephemeral, ranges, a host IP) is programmed as DNAT in Muslin's
nftables table; `docker port` does not show it (Docker ignores a remote driver's report).

Modules: `types` (pure request/response models), `options` (pure -o parsing -> Network),
`ports` (pure port choice), `clusterpool` (pure: Docker's pool on a cluster network), `ipam` (IpamDriver on control.ipam.Ipam), `driver`
(NetworkDriver on control.service.Muslin), `hostnet` (host routes, links, free ports), `server` (HTTP over a Unix socket, stdlib only).
"""
