//! Packet buffers without an allocation per packet: packets are copied into a large shared
//! buffer and split off it; the buffer is reclaimed once every packet cut from it is gone.

use bytes::{Bytes, BytesMut};

/// Size of each shared buffer.
const ARENA_SIZE: usize = 256 * 1024;

/// A source of packet-sized [`Bytes`] cut from shared buffers.
#[derive(Debug, Default)]
pub(crate) struct PacketArena {
    buf: BytesMut,
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
}
