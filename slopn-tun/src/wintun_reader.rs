//! Windows: Wintun gives no descriptor to wait on, so a thread of its own reads the
//! device (blocking) into a fixed pool of buffers and hands them to the event loop through
//! a bounded queue, waking it once per batch rather than once per packet.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use tun_rs::SyncDevice;

/// Packets read ahead of the event loop at most; the reader waits for a free buffer
/// beyond that, and Wintun's own ring holds (and then drops) what comes meanwhile.
pub(crate) const QUEUE: usize = 256;

/// Packets handed to the loop per call, as a Linux batch read.
const BATCH_READ: usize = 64;

/// Room for any IP packet Wintun may deliver (its limit is 64 KiB). Only the pages a packet
/// touches become resident.
const BUFFER: usize = 65_535;

/// What wakes the event loop: called when the queue goes from empty to not empty.
pub type WakeFn = Arc<dyn Fn() + Send + Sync>;

/// The reading thread's output, with its buffers going round.
pub(crate) struct Reader {
    filled: Receiver<(Vec<u8>, usize)>,
    free: SyncSender<Vec<u8>>,
    /// Set by the reader when it queued a packet and woke the loop; cleared by the loop
    /// when it found the queue empty.
    pending: Arc<AtomicBool>,
    device: Arc<SyncDevice>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts reading `device`; `wake` is called whenever packets wait after none did.
    pub(crate) fn spawn(device: Arc<SyncDevice>, wake: WakeFn) -> io::Result<Self> {
        let (free, free_rx) = sync_channel::<Vec<u8>>(QUEUE);
        let (filled_tx, filled) = sync_channel(QUEUE);
        for _ in 0..QUEUE {
            let _ = free.try_send(vec![0; BUFFER]);
        }
        let pending = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("slopn-wintun".into())
            .spawn({
                let (device, pending) = (device.clone(), pending.clone());
                move || {
                    while let Ok(mut buf) = free_rx.recv() {
                        let n = match device.recv(&mut buf) {
                            Ok(n) => n,
                            // Shut down (the Tun is dropped) or the adapter is gone.
                            Err(e) => {
                                tracing::debug!("Wintun reader ends: {e}");
                                return;
                            }
                        };
                        if filled_tx.send((buf, n)).is_err() {
                            return;
                        }
                        if !pending.swap(true, Ordering::AcqRel) {
                            wake();
                        }
                    }
                }
            })?;
        Ok(Self {
            filled,
            free,
            pending,
            device,
            thread: Some(thread),
        })
    }

    /// Calls `each` for up to a batch of queued packets; `WouldBlock` when none waited.
    pub(crate) fn recv(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut count = 0;
        while count < BATCH_READ {
            let (buf, n) = match self.filled.try_recv() {
                Ok(packet) => packet,
                Err(TryRecvError::Empty) if count == 0 => {
                    // Clear first, then look again: a packet queued in between is seen
                    // now, and one queued later wakes the loop again.
                    self.pending.store(false, Ordering::Release);
                    match self.filled.try_recv() {
                        Ok(packet) => packet,
                        Err(_) => return Err(io::ErrorKind::WouldBlock.into()),
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if count == 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the Wintun adapter stopped delivering packets",
                    ));
                }
                Err(TryRecvError::Disconnected) => break,
            };
            each(&buf[..n]);
            let _ = self.free.try_send(buf);
            count += 1;
        }
        Ok(count)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Wakes the thread out of its read; it ends at the error.
        let _ = self.device.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
