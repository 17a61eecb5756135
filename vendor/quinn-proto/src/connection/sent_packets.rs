//! The packets of one packet number space that were sent and are not yet acknowledged or lost.
//! (SloPN patch: this replaces a `BTreeMap<u64, SentPacket>`.)
//!
//! Packet numbers only grow, and a packet leaves the map within a few round trips (acknowledged,
//! declared lost, or forgotten as a non-ACK-eliciting tail), so the numbers tracked at any time
//! span a short window. A ring of slots over that window, indexed by packet number, needs no
//! allocation per packet once it has grown to the window (the B-tree allocated and freed a node
//! every few packets), and finds a packet by arithmetic instead of a tree walk.

use std::collections::VecDeque;
use std::ops::{Bound, Index, RangeBounds};

use super::spaces::SentPacket;

/// Slots an empty ring keeps; beyond that, emptying it frees them.
const KEEP_SLOTS: usize = 256;

/// Sent packets by packet number, in ascending order.
#[derive(Debug, Default)]
pub(super) struct SentPackets {
    /// The packet number of `slots[0]`.
    base: u64,
    /// One slot per packet number from `base`; `None` where a packet left (or a number was
    /// skipped). The first and last slots are always occupied.
    slots: VecDeque<Option<SentPacket>>,
}

impl SentPackets {
    /// Adds packet `number`, which must be larger than every number added before.
    pub(super) fn insert(&mut self, number: u64, packet: SentPacket) {
        if self.slots.is_empty() {
            self.base = number;
        }
        let end = self.base + self.slots.len() as u64;
        debug_assert!(number >= end, "packet numbers only grow");
        // Numbers skipped on purpose (optimistic ACK defence) or whose packets already left.
        for _ in end..number {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(packet));
    }

    /// The packet with this number, if it is tracked.
    pub(super) fn get(&self, number: &u64) -> Option<&SentPacket> {
        self.slots.get(self.index(*number)?)?.as_ref()
    }

    /// Stops tracking packet `number` and returns it.
    pub(super) fn remove(&mut self, number: &u64) -> Option<SentPacket> {
        let index = self.index(*number)?;
        let packet = self.slots.get_mut(index)?.take()?;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        while let Some(None) = self.slots.back() {
            self.slots.pop_back();
        }
        // An idle connection gives back what a burst grew the ring to (a hub holds thousands of
        // them); a busy one rarely empties its ring, so this does not churn.
        if self.slots.is_empty() && self.slots.capacity() > KEEP_SLOTS {
            self.slots = VecDeque::new();
        }
        Some(packet)
    }

    /// The tracked packets whose numbers are in `range`, in ascending order.
    pub(super) fn range(
        &self,
        range: impl RangeBounds<u64>,
    ) -> impl Iterator<Item = (u64, &SentPacket)> {
        let first = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n.saturating_add(1),
            Bound::Unbounded => 0,
        };
        // One past the last number asked for, or `None` for "to the end".
        let end = match range.end_bound() {
            Bound::Included(&n) => n.checked_add(1),
            Bound::Excluded(&n) => Some(n),
            Bound::Unbounded => None,
        };
        let tracked = self.slots.len() as u64;
        let from = first.saturating_sub(self.base).min(tracked);
        let to = end.map_or(tracked, |end| end.saturating_sub(self.base).min(tracked));
        let base = self.base;
        self.slots
            .range(from as usize..to.max(from) as usize)
            .zip(from..)
            .filter_map(move |(slot, offset)| Some((base + offset, slot.as_ref()?)))
    }

    /// The tracked packets in ascending order of their numbers.
    pub(super) fn values(&self) -> impl Iterator<Item = &SentPacket> {
        self.slots.iter().flatten()
    }

    /// The tracked packets in ascending order of their numbers, to change.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut SentPacket> {
        self.slots.iter_mut().flatten()
    }

    /// All tracked packets, in ascending order of their numbers, leaving none.
    pub(super) fn into_values(self) -> impl Iterator<Item = SentPacket> {
        self.slots.into_iter().flatten()
    }

    /// How many packets are tracked.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.values().count()
    }

    fn index(&self, number: u64) -> Option<usize> {
        usize::try_from(number.checked_sub(self.base)?).ok()
    }
}

impl Index<&u64> for SentPackets {
    type Output = SentPacket;

    fn index(&self, number: &u64) -> &SentPacket {
        self.get(number).expect("packet number is tracked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Instant;

    fn packet(size: u16) -> SentPacket {
        SentPacket {
            path_generation: 0,
            time_sent: Instant::now(),
            size,
            ack_eliciting: true,
            largest_acked: None,
            retransmits: Default::default(),
            stream_frames: Default::default(),
        }
    }

    fn numbers(map: &SentPackets, range: impl RangeBounds<u64>) -> Vec<u64> {
        map.range(range).map(|(n, _)| n).collect()
    }

    #[test]
    fn behaves_like_an_ordered_map_of_growing_numbers() {
        let mut map = SentPackets::default();
        assert!(map.get(&0).is_none() && map.remove(&0).is_none());
        assert_eq!(numbers(&map, ..), Vec::<u64>::new());
        // 10..=20 without 13 (a skipped number).
        for n in (10..=20).filter(|&n| n != 13) {
            map.insert(n, packet(n as u16));
        }
        assert_eq!(map.len(), 10);
        assert_eq!(map[&12].size, 12);
        assert!(map.get(&13).is_none() && map.get(&9).is_none() && map.get(&21).is_none());
        assert_eq!(numbers(&map, 11..=14), vec![11, 12, 14]);
        assert_eq!(numbers(&map, 0..12), vec![10, 11]);
        assert_eq!(numbers(&map, 19..), vec![19, 20]);
        assert_eq!(numbers(&map, 25..=u64::MAX), Vec::<u64>::new());
        assert_eq!(numbers(&map, 5..3), Vec::<u64>::new());

        // Removing from the front, the middle and the back.
        assert_eq!(map.remove(&10).unwrap().size, 10);
        assert_eq!(map.remove(&15).unwrap().size, 15);
        assert!(map.remove(&15).is_none());
        assert_eq!(map.remove(&20).unwrap().size, 20);
        assert_eq!(numbers(&map, ..), vec![11, 12, 14, 16, 17, 18, 19]);
        assert_eq!(map.len(), 7);
        let sizes: Vec<u16> = map.values().map(|p| p.size).collect();
        assert_eq!(sizes, vec![11, 12, 14, 16, 17, 18, 19]);
        for p in map.values_mut() {
            p.size += 100;
        }
        assert_eq!(map[&19].size, 119);

        // After the back was removed, a later number still goes in after a gap.
        map.insert(22, packet(22));
        assert_eq!(numbers(&map, 18..), vec![18, 19, 22]);

        // Emptied, it starts again wherever the next number is.
        for n in [11, 12, 14, 16, 17, 18, 19, 22] {
            assert!(map.remove(&n).is_some());
        }
        assert_eq!(map.len(), 0);
        map.insert(1000, packet(1));
        assert_eq!(numbers(&map, ..), vec![1000]);
        let all: Vec<u16> = std::mem::take(&mut map)
            .into_values()
            .map(|p| p.size)
            .collect();
        assert_eq!(all, vec![1]);
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn a_window_of_packets_in_flight_does_not_grow_the_ring() {
        let mut map = SentPackets::default();
        for n in 0..100_000u64 {
            map.insert(n, packet(1200));
            if n >= 64 {
                assert!(map.remove(&(n - 64)).is_some());
            }
        }
        assert_eq!(map.len(), 64);
        assert!(map.slots.capacity() < 256, "{}", map.slots.capacity());
    }

    #[test]
    fn an_emptied_ring_gives_back_what_a_burst_grew_it_to() {
        let mut map = SentPackets::default();
        for n in 0..10_000u64 {
            map.insert(n, packet(1200));
        }
        for n in 0..9_999u64 {
            map.remove(&n);
        }
        assert!(
            map.slots.capacity() >= 10_000,
            "still one in flight: no shrinking"
        );
        map.remove(&9_999);
        assert_eq!(map.slots.capacity(), 0);
        // A small ring emptied keeps its slots for the next packets.
        map.insert(10_000, packet(1200));
        map.remove(&10_000);
        map.insert(10_001, packet(1200));
        let capacity = map.slots.capacity();
        map.remove(&10_001);
        assert_eq!(map.slots.capacity(), capacity);
    }
}
