"""The store's key layout and the IPAM owner keys: the one home of every key Muslin writes.

Pure: no I/O. docs/architecture.md shows the same table.
"""

from __future__ import annotations

from muslin.model.types import IPAddress, IPNetwork

NETWORKS = "networks/"
ENDPOINTS = "endpoints/"
SANDBOXES = "sandboxes/"
IPAM = "ipam/"
IPAM_OWNERS = "ipam-owner/"
DOCKER_NETWORKS = "docker/networks/"
DOCKER_ENDPOINTS = "docker/endpoints/"
DOCKER_POOLS = "docker/pools/"

# Labels of a cluster network's host side (control/agent.py local_network): the cluster
# network's name and its CIDR (Docker's pool for it, docker/clusterpool.py).
CLUSTER_LABEL = "muslin.cluster"
CLUSTER_CIDR_LABEL = "muslin.cluster.cidr"
CLUSTER_CIDR6_LABEL = "muslin.cluster.cidr6"  # dual-stack: the IPv6 CIDR next to the IPv4 one


def network(name: str) -> str:
    return NETWORKS + name


def endpoints(network: str | None = None) -> str:
    """The prefix of one network's endpoints (or of all)."""
    return f"{ENDPOINTS}{network}/" if network else ENDPOINTS


def endpoint(network: str, endpoint_id: str) -> str:
    return endpoints(network) + store_id(endpoint_id)


def store_id(endpoint_id: str) -> str:
    """An endpoint id usable as one key segment."""
    return endpoint_id.replace("%", "%25").replace("/", "%2F")


def sandbox(name: str) -> str:
    return SANDBOXES + name


def subnet(net: IPNetwork) -> str:
    """A subnet as one key segment: 10.1.0.0_24."""
    return str(net).replace("/", "_")


def ipam_ips(net: IPNetwork) -> str:
    """The prefix of a subnet's allocated addresses."""
    return f"{IPAM}{subnet(net)}/ip/"


def ipam_ip(net: IPNetwork, ip: IPAddress) -> str:
    return f"{ipam_ips(net)}{ip}"


def ipam_last(net: IPNetwork) -> str:
    return f"{IPAM}{subnet(net)}/last"


def ipam_owner(owner: str) -> str:
    return IPAM_OWNERS + owner


# -- cluster networks (docs/multihost.md) ---------------------------------------------

def cluster_config(net: str) -> str:
    return f"cluster/{net}/config"


def cluster_hosts(net: str) -> str:
    """The prefix of a cluster network's host records (under each host's subnet lease)."""
    return f"cluster/{net}/hosts/"


def cluster_subnet(net: str, subnet_text: str) -> str:
    """A leased subnet's uniqueness key (written with the host record)."""
    return f"cluster/{net}/subnets/{subnet_text.replace('/', '_')}"


def cluster_alive(net: str) -> str:
    """The prefix of the agents' liveness keys (under each agent's short lease)."""
    return f"cluster/{net}/alive/"


def cluster_endpoints(net: str, hostname: str = "") -> str:
    """The prefix of a cluster network's endpoint records (of one host, or of all). Each host
    writes its own, under its subnet lease: they go when it leaves or its lease expires."""
    return f"cluster/{net}/endpoints/{hostname + '/' if hostname else ''}"


def cluster_endpoint(net: str, hostname: str, endpoint_id: str) -> str:
    return cluster_endpoints(net, hostname) + store_id(endpoint_id)


# -- network policy: policies and namespaces (this host's store, or the cluster's) -------

POLICY = "policy/"
POLICIES = "policy/networkpolicies/"
NAMESPACES = "policy/namespaces/"


def policies(namespace: str = "") -> str:
    """The prefix of the policies (of one namespace, or of all)."""
    return f"{POLICIES}{namespace + '/' if namespace else ''}"


def policy(namespace: str, name: str) -> str:
    return f"{POLICIES}{namespace}/{name}"


def namespace(name: str) -> str:
    return NAMESPACES + name


# A host of a cluster network keeps in its own store a copy of what the cluster store holds
# for policy (policies, namespaces, the other hosts' endpoints), written by muslind: every
# process of the host compiles the same firewall from its own store.
MIRROR = "mirror/"


def mirror(cluster_key: str) -> str:
    return MIRROR + cluster_key


# -- IPAM owner keys: who holds an address -------------------------------------------

def cni_owner(container_id: str, ifname: str) -> str:
    return f"cni/{container_id}/{ifname}"


def docker_owner(endpoint_id: str) -> str:
    return f"docker/ep/{endpoint_id}"


DOCKER_GATEWAY_OWNERS = "docker/gw/"
DOCKER_ADDRESS_OWNERS = "docker/addr/"


def docker_gateway_owner(net: IPNetwork) -> str:
    return DOCKER_GATEWAY_OWNERS + subnet(net)


def docker_address_owner(token: str) -> str:
    return DOCKER_ADDRESS_OWNERS + token


def cli_owner(sandbox: str, network: str, ifname: str) -> str:
    return f"{cli_owners(sandbox)}{network}/{ifname}"


def cli_owners(sandbox: str) -> str:
    """The owner prefix of everything a CLI sandbox holds."""
    return f"cli/{sandbox}/"


REAP_OWNERS = "reap/"


def reap_owner(host_ifname: str) -> str:
    """Holds a detached endpoint's addresses until its retired link is really gone."""
    return REAP_OWNERS + host_ifname


def default_owner(network: str, endpoint_id: str) -> str:
    return f"ep/{network}/{endpoint_id}"


# -- services (control/services.py) -----------------------------------------------------

SERVICES = "services/"
SERVICE_INDEX = "service-index/"
REMOTE_ENDPOINTS = "remote-endpoints/"


def services(network: str | None = None) -> str:
    """The prefix of one network's services (or of all)."""
    return f"{SERVICES}{network}/" if network else SERVICES


def service(network: str, name: str) -> str:
    return services(network) + name


def service_selector_index(network: str, key: str, value: str) -> str:
    """The prefix of the services of a network whose first selector pair is key=value (an
    endpoint with that label may be theirs): service-index/sel/<net>/<k>=<v>/<service>."""
    return f"{SERVICE_INDEX}sel/{network}/{store_id(key)}={store_id(value)}/"


def service_backend_index(ip: IPAddress, network: str = "") -> str:
    """The prefix of the services a local endpoint address backs (what it shares in the kernel
    lives while any of them does): service-index/ip/<ip>/<net>/<service>."""
    return f"{SERVICE_INDEX}ip/{ip}/{network + '/' if network else ''}"


def remote_endpoints(network: str, hostname: str = "") -> str:
    """This host's copy of the endpoints other hosts of a cluster network publish (muslind
    keeps it current), which services select from as from local ones."""
    return f"{REMOTE_ENDPOINTS}{network}/{hostname + '/' if hostname else ''}"


def remote_endpoint(network: str, hostname: str, endpoint_id: str) -> str:
    return remote_endpoints(network, hostname) + store_id(endpoint_id)


def cluster_services(net: str, hostname: str = "") -> str:
    """The prefix of a cluster network's services (of one host, or all), each written by the
    host that made it under its subnet lease."""
    return f"cluster/{net}/services/{hostname + '/' if hostname else ''}"


def cluster_service(net: str, hostname: str, name: str) -> str:
    return cluster_services(net, hostname) + name


def cluster_vip(net: str, vip: IPAddress) -> str:
    """A virtual IP's claim on a cluster network (unique across its hosts)."""
    return f"cluster/{net}/vips/{vip}"
