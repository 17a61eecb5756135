//! Address allocation from a configured network.
//!
//! Identities are sticky: a spoke that reconnects gets its previous address back while that
//! address is free. To make that likely, new spokes take never-used addresses first and then
//! the address released longest ago.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::{FxHashMap, FxHashSet};
use thiserror::Error;

use crate::control::{addr_to_u128, u128_to_addr};

/// Why an address pool could not be built or could not allocate.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PoolError {
    /// Every usable address is taken.
    #[error("pool exhausted: all {capacity} addresses of {net} are in use")]
    Exhausted {
        /// The pool's network.
        net: IpNet,
        /// How many addresses it can hand out.
        capacity: u128,
    },
    /// The network is too small to hold the hub and at least one spoke.
    #[error("network {0} is too small: it needs room for the hub and at least one spoke")]
    TooSmall(IpNet),
    /// A reserved address lies outside the network or is not a usable host address.
    #[error("address {addr} is not a usable host address of {net}")]
    OutsideNetwork {
        /// The offending address.
        addr: IpAddr,
        /// The pool's network.
        net: IpNet,
    },
}

/// A pool of host addresses inside one network (IPv4 or IPv6).
#[derive(Debug)]
pub struct AddressPool {
    net: IpNet,
    /// First and last usable host addresses, as integers.
    first: u128,
    last: u128,
    reserved: Vec<u128>,
    /// Lowest address never handed out yet.
    next_fresh: u128,
    in_use: FxHashSet<u128>,
    /// Released addresses by release order, oldest first, and the reverse index.
    released: BTreeMap<u64, u128>,
    release_seq: FxHashMap<u128, u64>,
    next_seq: u64,
    /// The last address each identity held.
    sticky: FxHashMap<String, u128>,
}

impl AddressPool {
    /// A pool over `net`, never handing out `reserved` (the hub's own address) nor the
    /// network and, for IPv4, broadcast addresses.
    pub fn new(net: IpNet, reserved: &[IpAddr]) -> Result<Self, PoolError> {
        let net = net.trunc();
        let network = addr_to_u128(net.network());
        let broadcast = addr_to_u128(net.broadcast());
        let (first, last) = match net {
            IpNet::V4(_) => (network + 1, broadcast.saturating_sub(1)),
            IpNet::V6(_) => (network + 1, broadcast),
        };
        let mut reserved_ints = Vec::new();
        for &addr in reserved {
            let value = addr_to_u128(addr);
            if addr.is_ipv4() != net.addr().is_ipv4() || !(first..=last).contains(&value) {
                return Err(PoolError::OutsideNetwork { addr, net });
            }
            reserved_ints.push(value);
        }
        if last < first || last - first < reserved_ints.len() as u128 {
            return Err(PoolError::TooSmall(net));
        }
        Ok(Self {
            net,
            first,
            last,
            reserved: reserved_ints,
            next_fresh: first,
            in_use: FxHashSet::default(),
            released: BTreeMap::new(),
            release_seq: FxHashMap::default(),
            next_seq: 0,
            sticky: FxHashMap::default(),
        })
    }

    /// The network this pool allocates from.
    pub fn net(&self) -> IpNet {
        self.net
    }

    /// How many addresses the pool can hand out in total.
    pub fn capacity(&self) -> u128 {
        self.last - self.first + 1 - self.reserved.len() as u128
    }

    /// How many addresses are handed out now.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Whether `addr` is a host address this pool could hand out.
    pub fn is_assignable(&self, addr: IpAddr) -> bool {
        let value = addr_to_u128(addr);
        addr.is_ipv4() == self.net.addr().is_ipv4()
            && (self.first..=self.last).contains(&value)
            && !self.reserved.contains(&value)
    }

    /// Whether `addr` is handed out now.
    pub fn is_allocated(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.net.addr().is_ipv4() && self.in_use.contains(&addr_to_u128(addr))
    }

    /// Allocates an address for `identity`: `requested` if it is free and assignable, else the
    /// identity's previous address if free, else a never-used one, else the one released
    /// longest ago.
    pub fn allocate(
        &mut self,
        identity: &str,
        requested: Option<IpAddr>,
    ) -> Result<IpAddr, PoolError> {
        let wanted = requested
            .filter(|a| self.is_assignable(*a))
            .map(addr_to_u128)
            .into_iter()
            .chain(self.sticky.get(identity).copied());
        let mut chosen = None;
        for candidate in wanted {
            if !self.in_use.contains(&candidate) {
                chosen = Some(candidate);
                break;
            }
        }
        if chosen.is_none() {
            chosen = self.take_fresh();
        }
        if chosen.is_none() {
            chosen = self.released.first_key_value().map(|(_, addr)| *addr);
        }
        let Some(value) = chosen else {
            return Err(PoolError::Exhausted {
                net: self.net,
                capacity: self.capacity(),
            });
        };
        if let Some(seq) = self.release_seq.remove(&value) {
            self.released.remove(&seq);
        }
        self.in_use.insert(value);
        match self.sticky.get_mut(identity) {
            Some(slot) => *slot = value,
            None => {
                self.sticky.insert(identity.to_owned(), value);
            }
        }
        Ok(u128_to_addr(value, self.net.addr().is_ipv4()))
    }

    fn take_fresh(&mut self) -> Option<u128> {
        while self.next_fresh <= self.last {
            let candidate = self.next_fresh;
            self.next_fresh += 1;
            if !self.reserved.contains(&candidate)
                && !self.in_use.contains(&candidate)
                && !self.release_seq.contains_key(&candidate)
            {
                return Some(candidate);
            }
        }
        None
    }

    /// Returns `addr` to the pool. Releasing an address that is not allocated does nothing.
    pub fn release(&mut self, addr: IpAddr) {
        let value = addr_to_u128(addr);
        if addr.is_ipv4() != self.net.addr().is_ipv4() || !self.in_use.remove(&value) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.released.insert(seq, value);
        self.release_seq.insert(value, seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hands_out_distinct_addresses_until_exhausted() {
        let mut pool = AddressPool::new("10.0.0.0/29".parse().unwrap(), &[ip("10.0.0.1")]).unwrap();
        assert_eq!(pool.capacity(), 5);
        let got: Vec<_> = (0..5)
            .map(|i| pool.allocate(&format!("s{i}"), None).unwrap())
            .collect();
        assert_eq!(got[0], ip("10.0.0.2"));
        assert_eq!(got[4], ip("10.0.0.6"));
        assert!(matches!(
            pool.allocate("late", None),
            Err(PoolError::Exhausted { .. })
        ));
        // A failed allocation changes nothing.
        assert_eq!(pool.in_use(), 5);
    }

    #[test]
    fn identities_get_their_address_back() {
        let mut pool = AddressPool::new("10.0.0.0/24".parse().unwrap(), &[ip("10.0.0.1")]).unwrap();
        let a = pool.allocate("alice", None).unwrap();
        let b = pool.allocate("bob", None).unwrap();
        pool.release(a);
        // Others take fresh addresses, not alice's.
        let c = pool.allocate("carol", None).unwrap();
        assert_ne!(c, a);
        assert_eq!(pool.allocate("alice", None).unwrap(), a);
        assert_ne!(a, b);
    }

    #[test]
    fn requests_are_honoured_when_free_and_inside() {
        let mut pool = AddressPool::new("10.0.0.0/24".parse().unwrap(), &[ip("10.0.0.1")]).unwrap();
        assert_eq!(
            pool.allocate("a", Some(ip("10.0.0.50"))).unwrap(),
            ip("10.0.0.50")
        );
        // Taken, reserved, outside: fall back to the normal choice.
        assert_ne!(
            pool.allocate("b", Some(ip("10.0.0.50"))).unwrap(),
            ip("10.0.0.50")
        );
        assert_ne!(
            pool.allocate("c", Some(ip("10.0.0.1"))).unwrap(),
            ip("10.0.0.1")
        );
        assert_ne!(
            pool.allocate("d", Some(ip("10.0.1.9"))).unwrap(),
            ip("10.0.1.9")
        );
    }

    #[test]
    fn reuses_the_oldest_released_address_when_fresh_ones_run_out() {
        let mut pool = AddressPool::new("10.0.0.0/29".parse().unwrap(), &[ip("10.0.0.1")]).unwrap();
        let all: Vec<_> = (0..5)
            .map(|i| pool.allocate(&format!("s{i}"), None).unwrap())
            .collect();
        pool.release(all[3]);
        pool.release(all[1]);
        assert_eq!(pool.allocate("new", None).unwrap(), all[3]);
        assert_eq!(pool.allocate("new2", None).unwrap(), all[1]);
    }

    #[test]
    fn ipv6_pools_work() {
        let mut pool = AddressPool::new("fd00::/64".parse().unwrap(), &[ip("fd00::1")]).unwrap();
        assert_eq!(pool.allocate("a", None).unwrap(), ip("fd00::2"));
        assert!(pool.capacity() > 1 << 60);
    }

    #[test]
    fn rejects_bad_configuration() {
        assert!(AddressPool::new("10.0.0.0/31".parse().unwrap(), &[]).is_err());
        assert!(
            AddressPool::new(
                "10.0.0.0/30".parse().unwrap(),
                &[ip("10.0.0.1"), ip("10.0.0.2")]
            )
            .is_err()
        );
        assert!(AddressPool::new("10.0.0.0/24".parse().unwrap(), &[ip("10.0.1.1")]).is_err());
    }
}
