//! Route lookup: where a packet with a given destination goes.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::control::IpRange;

/// Where a destination lies, from the hub's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<T> {
    /// One of the hub's own tunnel addresses: deliver on the hub's TUN side.
    Hub,
    /// A connected spoke's address.
    Spoke(T),
    /// Inside a pool but held by nobody.
    Unassigned,
    /// A pool's network or broadcast address: never forwarded, never answered.
    PoolBroadcast,
    /// Outside the pools but inside an advertised route: the hub's TUN side.
    Tun,
    /// Nowhere the hub forwards to.
    Unrouted,
}

/// The hub's routing table: its own addresses, its pools, the spokes' addresses and the
/// advertised routes.
#[derive(Debug)]
pub struct RouteTable<T> {
    hub_addresses: Vec<IpAddr>,
    pools: Vec<IpNet>,
    spokes: FxHashMap<IpAddr, T>,
    advertised: Vec<IpRange>,
}

impl<T: Copy> RouteTable<T> {
    /// A table for the given hub addresses, pools and advertised routes, with no spokes.
    pub fn new(hub_addresses: Vec<IpAddr>, pools: Vec<IpNet>, advertised: Vec<IpRange>) -> Self {
        Self {
            hub_addresses,
            pools,
            spokes: FxHashMap::default(),
            advertised,
        }
    }

    /// Routes `addr` to a spoke.
    pub fn insert(&mut self, addr: IpAddr, spoke: T) {
        self.spokes.insert(addr, spoke);
    }

    /// Forgets a spoke's address.
    pub fn remove(&mut self, addr: IpAddr) {
        self.spokes.remove(&addr);
    }

    /// Replaces the advertised routes.
    pub fn set_advertised(&mut self, advertised: Vec<IpRange>) {
        self.advertised = advertised;
    }

    /// The advertised routes.
    pub fn advertised(&self) -> &[IpRange] {
        &self.advertised
    }

    /// The hub's own address of the given family, used as the source of ICMP errors.
    pub fn hub_address(&self, ipv4: bool) -> Option<IpAddr> {
        self.hub_addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == ipv4)
    }

    /// The hub's own addresses.
    pub fn hub_addresses(&self) -> &[IpAddr] {
        &self.hub_addresses
    }

    /// Where a packet to `dst` carrying IP protocol `protocol` goes.
    pub fn lookup(&self, dst: IpAddr, protocol: u8) -> Route<T> {
        if let Some(spoke) = self.spokes.get(&dst) {
            return Route::Spoke(*spoke);
        }
        if self.hub_addresses.contains(&dst) {
            return Route::Hub;
        }
        if let Some(pool) = self.pools.iter().find(|p| p.contains(&dst)) {
            let edge = dst == pool.network() || (dst.is_ipv4() && dst == pool.broadcast());
            return if edge {
                Route::PoolBroadcast
            } else {
                Route::Unassigned
            };
        }
        if self.advertised.iter().any(|r| r.matches(dst, protocol)) {
            return Route::Tun;
        }
        Route::Unrouted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_destination() {
        let pool: IpNet = "10.0.0.0/24".parse().unwrap();
        let mut table = RouteTable::new(
            vec!["10.0.0.1".parse().unwrap()],
            vec![pool],
            vec![
                IpRange::from_net(pool),
                IpRange::from_net("192.168.0.0/16".parse().unwrap()),
            ],
        );
        table.insert("10.0.0.2".parse().unwrap(), 7usize);
        let r = |table: &RouteTable<usize>, s: &str| table.lookup(s.parse().unwrap(), 6);
        assert_eq!(r(&table, "10.0.0.2"), Route::Spoke(7));
        assert_eq!(r(&table, "10.0.0.1"), Route::Hub);
        assert_eq!(r(&table, "10.0.0.3"), Route::Unassigned);
        assert_eq!(r(&table, "10.0.0.255"), Route::PoolBroadcast);
        assert_eq!(r(&table, "192.168.4.4"), Route::Tun);
        assert_eq!(r(&table, "8.8.8.8"), Route::Unrouted);
        table.remove("10.0.0.2".parse().unwrap());
        assert_eq!(r(&table, "10.0.0.2"), Route::Unassigned);
    }
}
