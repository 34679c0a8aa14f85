//! The control side's route correction (the seed's "Gateway 側 WireGuard ルート補正"): once
//! the tunnel is up, each peer's AllowedIPs becomes `ip route replace CIDR dev wg0` in the
//! control namespace, so that the worker subnets (`10.88.N.0/24`) of every compute node are
//! reached through wg0 however many nodes there are. Dangerous CIDRs never become routes:
//! only RFC 1918 subnets and /32 hosts are accepted; `0.0.0.0/0`, link-local
//! `169.254.0.0/16`, multicast `224.0.0.0/4`, loopback, IPv6 and anything overlapping a route
//! the namespace already has (not through wg0) are refused, each refusal with its peer and
//! reason. `GATEWAY_WORKER_ROUTE_VIA_HOST` overrides the next hop of `10.88.0.0/16` only.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use crate::WgError;

/// What to install and what was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// `(cidr, peer, next hop)`: routes to install (`None` = through the device).
    pub accept: Vec<(Ipv4Net, String, Option<Ipv4Addr>)>,
    /// `(cidr as announced, peer, reason)`.
    pub refuse: Vec<(String, String, String)>,
}

const RFC1918: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
const NEVER: [(&str, &str); 4] = [
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("127.0.0.0/8", "loopback"),
    ("0.0.0.0/8", "this network"),
];
/// The worker range whose next hop `GATEWAY_WORKER_ROUTE_VIA_HOST` overrides.
pub const WORKER_RANGE: &str = "10.88.0.0/16";

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("a constant network")
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Why `cidr` must not become a route, or `None` when it may.
fn refusal(cidr: &IpNet, existing: &[Ipv4Net]) -> Option<String> {
    let v4 = match cidr {
        IpNet::V4(n) => n.trunc(),
        IpNet::V6(_) => return Some("IPv6 is not routed over the tunnel".into()),
    };
    if v4.prefix_len() == 0 {
        return Some("a default route would send everything into the tunnel".into());
    }
    for (bad, what) in NEVER {
        if overlaps(&v4, &net(bad)) {
            return Some(format!("{what} ({bad})"));
        }
    }
    let private = RFC1918.iter().any(|r| net(r).contains(&v4));
    if !private && v4.prefix_len() != 32 {
        return Some("only RFC 1918 subnets and /32 hosts are routed".into());
    }
    if let Some(e) = existing.iter().find(|e| overlaps(e, &v4)) {
        return Some(format!("overlaps the namespace's own route {e}"));
    }
    None
}

/// The routes for `peers` (`(peer name, AllowedIPs)`), given the routes the namespace has
/// that do not go through the tunnel, and the optional next hop of the worker range.
pub fn route_plan(
    peers: &[(String, Vec<IpNet>)],
    existing: &[Ipv4Net],
    worker_via: Option<Ipv4Addr>,
) -> RoutePlan {
    let workers = net(WORKER_RANGE);
    let mut plan = RoutePlan::default();
    for (peer, allowed) in peers {
        for cidr in allowed {
            match refusal(cidr, existing) {
                Some(why) => plan.refuse.push((cidr.to_string(), peer.clone(), why)),
                None => {
                    let IpNet::V4(n) = cidr else { continue };
                    let n = n.trunc();
                    if plan.accept.iter().any(|(a, _, _)| *a == n) {
                        continue;
                    }
                    let via = worker_via.filter(|_| workers.contains(&n));
                    plan.accept.push((n, peer.clone(), via));
                }
            }
        }
    }
    plan
}

/// The IPv4 routes of `netns` that do not use `dev` (what AllowedIPs must not overlap).
pub fn other_routes(netns: &str, dev: &str) -> Result<Vec<Ipv4Net>, WgError> {
    let out = crate::ip(netns, &["-4", "route", "show", "table", "main"])?;
    Ok(out
        .lines()
        .filter(|l| !l.split_whitespace().any(|w| w == dev))
        .filter_map(|l| {
            let first = l.split_whitespace().next()?;
            if first == "default" {
                return None;
            }
            first
                .parse::<Ipv4Net>()
                .ok()
                .or_else(|| first.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
        })
        .collect())
}

/// Installs the plan's routes in `netns` (`ip route replace`), logging each refusal.
pub fn apply(netns: &str, dev: &str, plan: &RoutePlan) -> Result<(), WgError> {
    for (cidr, peer, why) in &plan.refuse {
        tracing::warn!(peer = %peer, cidr = %cidr, "no route: {why}");
    }
    for (cidr, _, via) in &plan.accept {
        let c = cidr.to_string();
        match via {
            Some(v) => crate::ip(netns, &["route", "replace", &c, "via", &v.to_string()])?,
            None => crate::ip(netns, &["route", "replace", &c, "dev", dev])?,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn worker_subnets_and_hosts_accepted_dangerous_ones_refused() {
        let peers = vec![
            (
                "node-1".to_string(),
                nets(&["10.99.0.2/32", "10.88.1.0/24"]),
            ),
            (
                "node-2".to_string(),
                nets(&[
                    "10.99.0.3/32",
                    "10.88.2.0/24",
                    "0.0.0.0/0",
                    "169.254.0.0/16",
                    "169.254.169.254/32",
                    "224.0.0.0/4",
                    "fd00::/8",
                    "8.8.8.0/24",
                    "203.0.113.7/32",
                    "127.0.0.1/32",
                    "192.168.1.0/24",
                    "10.88.1.0/24",
                ]),
            ),
        ];
        let existing: Vec<Ipv4Net> = vec!["192.168.1.0/24".parse().unwrap()];
        let plan = route_plan(&peers, &existing, None);
        let accepted: Vec<String> = plan.accept.iter().map(|(n, _, _)| n.to_string()).collect();
        assert_eq!(
            accepted,
            [
                "10.99.0.2/32",
                "10.88.1.0/24",
                "10.99.0.3/32",
                "10.88.2.0/24",
                "203.0.113.7/32"
            ]
        );
        let refused: Vec<&str> = plan.refuse.iter().map(|(c, _, _)| c.as_str()).collect();
        assert_eq!(
            refused,
            [
                "0.0.0.0/0",
                "169.254.0.0/16",
                "169.254.169.254/32",
                "224.0.0.0/4",
                "fd00::/8",
                "8.8.8.0/24",
                "127.0.0.1/32",
                "192.168.1.0/24"
            ]
        );
        assert!(plan.refuse.iter().all(|(_, p, _)| p == "node-2"));
        assert!(
            plan.refuse[7].2.contains("overlaps"),
            "{:?}",
            plan.refuse[7]
        );
    }

    #[test]
    fn the_worker_route_override_touches_the_worker_range_only() {
        let peers = vec![("n".to_string(), nets(&["10.88.3.0/24", "10.99.0.4/32"]))];
        let via: Ipv4Addr = "10.99.0.200".parse().unwrap();
        let plan = route_plan(&peers, &[], Some(via));
        assert_eq!(plan.accept[0].2, Some(via));
        assert_eq!(plan.accept[1].2, None);
    }
}
