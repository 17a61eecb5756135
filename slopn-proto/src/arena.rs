//! Packet buffers without an allocation per packet: packets are copied into a large shared
//! buffer and split off it; the buffer is reclaimed once every packet cut from it is gone.

use bytes::{Bytes, BytesMut};

use crate::packet::{self, FragmentError, IpHeader};
use crate::stats::DropReason;

/// Size of each shared buffer.
const ARENA_SIZE: usize = 256 * 1024;

/// A source of packet-sized [`Bytes`] cut from shared buffers.
#[derive(Debug, Default)]
pub(crate) struct PacketArena {
    buf: BytesMut,
    scratch: Vec<u8>,
}

impl PacketArena {
    /// A mutable copy of `data`.
    pub(crate) fn copy_mut(&mut self, data: &[u8]) -> BytesMut {
        if self.buf.capacity() < data.len() {
            // Reuses the old buffer when every packet cut from it has been dropped.
            self.buf.reserve(ARENA_SIZE.max(data.len()));
        }
        self.buf.extend_from_slice(data);
        self.buf.split()
    }

    /// An immutable copy of `data`.
    pub(crate) fn copy(&mut self, data: &[u8]) -> Bytes {
        self.copy_mut(data).freeze()
    }

    /// An IPv4 packet whose "don't fragment" flag is clear, split into fragments of at most
    /// `max` bytes, as a router does.
    pub(crate) fn fragments(
        &mut self,
        packet: &[u8],
        header: &IpHeader,
        max: usize,
    ) -> Result<Vec<Bytes>, DropReason> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut fragments = Vec::new();
        let result = packet::fragment_v4(packet, header, max, &mut scratch, |f| {
            fragments.push(self.copy(f));
        });
        self.scratch = scratch;
        match result {
            Ok(()) => Ok(fragments),
            Err(FragmentError::NoRoom(_)) => Err(DropReason::TooLarge { max }),
            Err(FragmentError::BeyondLimit) => Err(DropReason::Malformed),
        }
    }
}
