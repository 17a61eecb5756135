use crate::{Instant, MAX_UDP_PAYLOAD, MtuDiscoveryConfig, packet::SpaceId};
use std::cmp;
use tracing::trace;

/// Implements Datagram Packetization Layer Path Maximum Transmission Unit Discovery
///
/// See [`MtuDiscoveryConfig`] for details
#[derive(Clone)]
pub(crate) struct MtuDiscovery {
    /// Detected MTU for the path
    current_mtu: u16,
    /// The state of the MTU discovery, if enabled
    state: Option<EnabledMtuDiscovery>,
    /// The state of the black hole detector
    black_hole_detector: BlackHoleDetector,
}

impl MtuDiscovery {
    pub(crate) fn new(
        initial_plpmtu: u16,
        min_mtu: u16,
        peer_max_udp_payload_size: Option<u16>,
        config: MtuDiscoveryConfig,
    ) -> Self {
        debug_assert!(
            initial_plpmtu >= min_mtu,
            "initial_max_udp_payload_size must be at least {min_mtu}"
        );

        let mut mtud = Self::with_state(
            initial_plpmtu,
            min_mtu,
            Some(EnabledMtuDiscovery::new(config)),
        );

        // We might be migrating an existing connection to a new path, in which case the transport
        // parameters have already been transmitted, and we already know the value of
        // `peer_max_udp_payload_size`
        if let Some(peer_max_udp_payload_size) = peer_max_udp_payload_size {
            mtud.on_peer_max_udp_payload_size_received(peer_max_udp_payload_size);
        }

        mtud
    }

    /// MTU discovery will be disabled and the current MTU will be fixed to the provided value
    pub(crate) fn disabled(plpmtu: u16, min_mtu: u16) -> Self {
        Self::with_state(plpmtu, min_mtu, None)
    }

    fn with_state(current_mtu: u16, min_mtu: u16, state: Option<EnabledMtuDiscovery>) -> Self {
        Self {
            current_mtu,
            state,
            black_hole_detector: BlackHoleDetector::new(min_mtu),
        }
    }

    pub(super) fn reset(&mut self, current_mtu: u16, min_mtu: u16) {
        self.current_mtu = current_mtu;
        if let Some(state) = self.state.take() {
            self.state = Some(EnabledMtuDiscovery::new(state.config));
            self.on_peer_max_udp_payload_size_received(state.peer_max_udp_payload_size);
        }
        self.black_hole_detector = BlackHoleDetector::new(min_mtu);
    }

    /// Returns the current MTU
    pub(crate) fn current_mtu(&self) -> u16 {
        self.current_mtu
    }

    /// Returns the amount of bytes that should be sent as an MTU probe (a search probe or a
    /// confirmation probe), if any
    pub(crate) fn poll_transmit(&mut self, now: Instant, next_pn: u64) -> Option<u16> {
        self.state
            .as_mut()
            .and_then(|state| state.poll_transmit(now, self.current_mtu, next_pn))
    }

    /// Notifies the [`MtuDiscovery`] that the peer's `max_udp_payload_size` transport parameter has
    /// been received
    pub(crate) fn on_peer_max_udp_payload_size_received(&mut self, peer_max_udp_payload_size: u16) {
        self.current_mtu = self.current_mtu.min(peer_max_udp_payload_size);

        if let Some(state) = self.state.as_mut() {
            // It is possible for black hole detection to trigger before the connection has been
            // fully established, if the initial MTU is greater the minimum MTU. We should never
            // send probes before the connection has been fully established and we have received
            // the peer's transport parameters though.
            debug_assert!(
                !matches!(state.phase, Phase::Searching(_)),
                "Transport parameters received after MTU probing started"
            );
            state.peer_max_udp_payload_size = peer_max_udp_payload_size;
        }
    }

    /// Notifies the [`MtuDiscovery`] that a packet has been ACKed
    ///
    /// Returns true if the packet was an MTU probe that raised the MTU
    pub(crate) fn on_acked(&mut self, space: SpaceId, pn: u64, len: u16) -> bool {
        // MTU probes are only sent in application data space
        if space != SpaceId::Data {
            return false;
        }

        // SloPN patch: a confirmation probe delivered, or a packet as large as the suspected
        // narrowing sent after it: the bursts were random loss. A confirmation probe (or one
        // left over from a confirmation that ended) is no search probe and leaves the MTU as
        // it was.
        if let Some(state) = self.state.as_mut() {
            if state.on_confirmation_delivery(pn, len) {
                trace!(
                    current_mtu = self.current_mtu,
                    "suspected black hole refuted"
                );
            }
            if state.take_other_probe(pn) {
                self.black_hole_detector.on_probe_acked(pn, len);
                return false;
            }
        }

        // Update the state of the MTU search
        if let Some(new_mtu) = self
            .state
            .as_mut()
            .and_then(|state| state.on_probe_acked(pn))
        {
            self.current_mtu = new_mtu;
            trace!(current_mtu = self.current_mtu, "new MTU detected");

            self.black_hole_detector.on_probe_acked(pn, len);
            true
        } else {
            self.black_hole_detector.on_non_probe_acked(pn, len);
            false
        }
    }

    /// Returns the packet number of the in-flight MTU probe, if any
    pub(crate) fn in_flight_mtu_probe(&self) -> Option<u64> {
        self.state
            .as_ref()
            .and_then(|state| state.in_flight_probe())
    }

    /// Notifies the [`MtuDiscovery`] that the in-flight MTU probe, packet `pn`, was lost
    ///
    /// Returns true if that confirmed a black hole (SloPN patch): the current MTU is then
    /// `min_mtu`, as after [`MtuDiscovery::black_hole_detected`].
    pub(crate) fn on_probe_lost(&mut self, pn: u64, now: Instant) -> bool {
        let Some(state) = &mut self.state else {
            return false;
        };
        state.on_probe_lost(pn);
        if !state.black_hole_confirmed(now) {
            return false;
        }
        self.current_mtu = self.black_hole_detector.min_mtu;
        true
    }

    /// Notifies the [`MtuDiscovery`] that a non-probe packet was lost
    ///
    /// When done notifying of lost packets, [`MtuDiscovery::black_hole_detected`] must be called, to
    /// ensure the last loss burst is properly processed and to trigger black hole recovery logic if
    /// necessary.
    pub(crate) fn on_non_probe_lost(&mut self, pn: u64, len: u16) {
        self.black_hole_detector.on_non_probe_lost(pn, len);
        if let Some(state) = &mut self.state {
            state.on_confirmation_loss(pn, len);
        }
    }

    /// Returns true if a black hole was detected
    ///
    /// Calling this function will close the previous loss burst. If a black hole is detected, the
    /// current MTU will be reset to `min_mtu`.
    ///
    /// SloPN patch: once probing has started, loss bursts (more than [`SUSPICION_THRESHOLD`]
    /// agreeing ones) only make a black hole suspected: a narrowing below some size. The packets
    /// sent after them settle it: the first one at least that large that is delivered refutes
    /// it; [`CONFIRMATION_LOSSES`] of them lost first confirm it, and it is declared here or by
    /// [`MtuDiscovery::on_probe_lost`]. While no such packet is sent otherwise, probes of the
    /// current MTU are, one at a time. Random loss rarely loses four large packets before
    /// delivering one; a narrowed path loses them all.
    pub(crate) fn black_hole_detected(&mut self, now: Instant) -> bool {
        let confirmable = self
            .state
            .as_ref()
            .is_some_and(|state| !matches!(state.phase, Phase::Initial));
        let threshold = if confirmable {
            SUSPICION_THRESHOLD
        } else {
            BLACK_HOLE_THRESHOLD
        };
        let suspicion = self.black_hole_detector.suspected_narrowing(threshold);
        let declared = match (&mut self.state, suspicion) {
            (Some(state), suspicion) if confirmable => {
                if let Some(suspicion) = suspicion {
                    trace!(
                        current_mtu = self.current_mtu,
                        size = suspicion.size,
                        "black hole suspected, confirming"
                    );
                    state.suspect(suspicion);
                }
                // The losses just reported may be the evidence that confirms it
                state.black_hole_confirmed(now)
            }
            (Some(state), Some(_)) => {
                state.on_black_hole_detected(now);
                true
            }
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if declared {
            self.current_mtu = self.black_hole_detector.min_mtu;
        }
        declared
    }
}

/// Packets sent after a suspected narrowing, at least as large, that must be lost before one is
/// delivered for the black hole to be declared (SloPN patch). At 10 % random loss that happens
/// about once in ten thousand suspicions.
const CONFIRMATION_LOSSES: usize = 4;

/// Additional state for enabled MTU discovery
#[derive(Debug, Clone)]
struct EnabledMtuDiscovery {
    phase: Phase,
    /// A suspected black hole being confirmed (SloPN patch); a search is suspended meanwhile
    confirmation: Option<Confirmation>,
    /// A confirmation probe still in flight after its confirmation ended (SloPN patch): kept
    /// track of so that its loss is a probe's, not data's. At most one probe (search,
    /// confirmation or this) is in flight at a time.
    stray_probe: Option<u64>,
    /// Suspicions raised so far (SloPN patch)
    suspicions: u64,
    peer_max_udp_payload_size: u16,
    config: MtuDiscoveryConfig,
}

/// A suspected black hole being confirmed or refuted (SloPN patch)
#[derive(Debug, Clone, Copy)]
struct Confirmation {
    /// What is suspected
    suspicion: Suspicion,
    /// Packet number of the confirmation probe in flight, if any
    in_flight_probe: Option<u64>,
    /// Packets sent after the suspicious bursts, at least `suspicion.size` large, lost so far
    losses: usize,
    /// Refuted while a probe was in flight: ends when the probe is acknowledged or lost
    refuted: bool,
}

impl Confirmation {
    /// Whether packet `pn` of `len` bytes tells anything about the suspicion
    fn is_evidence(&self, pn: u64, len: u16) -> bool {
        !self.refuted && pn > self.suspicion.after && len >= self.suspicion.size
    }
}

/// A narrowing of the path that loss bursts suggest (SloPN patch): packets of `size` bytes or
/// more no longer carried since some packet up to `after`
#[derive(Debug, Clone, Copy)]
struct Suspicion {
    /// The smallest size of the bursts that agree on the narrowing
    size: u16,
    /// The last packet of the suspicious bursts
    after: u64,
}

impl EnabledMtuDiscovery {
    fn new(config: MtuDiscoveryConfig) -> Self {
        Self {
            phase: Phase::Initial,
            confirmation: None,
            stray_probe: None,
            suspicions: 0,
            peer_max_udp_payload_size: MAX_UDP_PAYLOAD,
            config,
        }
    }

    /// Confirms or refutes `suspicion` with the packets sent after it. Called once probing
    /// has started (before, during the handshake, no probe can be sent, and a path that
    /// cannot carry the initial MTU must not hold the handshake up: the old rule declares the
    /// black hole at once). A suspicion while another is being confirmed joins it: the
    /// smaller size is suspected; one refuted already is replaced.
    fn suspect(&mut self, suspicion: Suspicion) {
        self.suspicions += 1;
        match &mut self.confirmation {
            Some(current) if !current.refuted => {
                current.suspicion.size = current.suspicion.size.min(suspicion.size);
            }
            current => {
                let in_flight_probe = current.and_then(|c| c.in_flight_probe);
                *current = Some(Confirmation {
                    suspicion,
                    in_flight_probe,
                    losses: 0,
                    refuted: false,
                });
            }
        }
    }

    /// The packet number of the probe in flight (search, confirmation or stray), if any
    fn in_flight_probe(&self) -> Option<u64> {
        let search = match &self.phase {
            Phase::Searching(search) => search.in_flight_probe,
            _ => None,
        };
        search
            .or(self.confirmation.and_then(|c| c.in_flight_probe))
            .or(self.stray_probe)
    }

    /// A packet was delivered; returns whether it refuted the suspected black hole
    fn on_confirmation_delivery(&mut self, pn: u64, len: u16) -> bool {
        let Some(confirmation) = &mut self.confirmation else {
            return false;
        };
        if !confirmation.is_evidence(pn, len) {
            return false;
        }
        // A confirmation probe still in flight is tracked until it is acknowledged or lost
        if confirmation.in_flight_probe.is_none() {
            self.confirmation = None;
        } else {
            confirmation.refuted = true;
        }
        true
    }

    /// Whether `pn` is the confirmation probe or a stray one: no search probe, and no longer
    /// in flight. A confirmation probe delivered proves that the path still carries the
    /// current MTU: the confirmation ends.
    fn take_other_probe(&mut self, pn: u64) -> bool {
        if self.stray_probe == Some(pn) {
            self.stray_probe = None;
            return true;
        }
        let Some(confirmation) = &mut self.confirmation else {
            return false;
        };
        if confirmation.in_flight_probe != Some(pn) {
            return false;
        }
        confirmation.in_flight_probe = None;
        // A probe inherited from a refuted suspicion, sent before this one's bursts, proves
        // nothing about it
        if confirmation.refuted || pn > confirmation.suspicion.after {
            self.confirmation = None;
        }
        true
    }

    /// A packet other than a probe was lost
    fn on_confirmation_loss(&mut self, pn: u64, len: u16) {
        if let Some(confirmation) = &mut self.confirmation {
            if confirmation.is_evidence(pn, len) {
                confirmation.losses += 1;
            }
        }
    }

    /// Whether enough evidence confirms the suspected black hole, which is then declared
    fn black_hole_confirmed(&mut self, now: Instant) -> bool {
        let Some(confirmation) = self
            .confirmation
            .filter(|confirmation| confirmation.losses >= CONFIRMATION_LOSSES)
        else {
            return false;
        };
        self.confirmation = None;
        // A probe in flight (the confirmation's, or the suspended search's) stays tracked
        if let Phase::Searching(search) = &mut self.phase {
            self.stray_probe = search.in_flight_probe.take();
        }
        self.stray_probe = self.stray_probe.or(confirmation.in_flight_probe);
        self.on_black_hole_detected(now);
        true
    }

    /// Returns the amount of bytes that should be sent as an MTU probe, if any
    fn poll_transmit(&mut self, now: Instant, current_mtu: u16, next_pn: u64) -> Option<u16> {
        // One probe in flight at a time; a confirmation suspends the search
        if self.stray_probe.is_some() {
            return None;
        }
        if self.confirmation.is_some() {
            if self.in_flight_probe().is_some() {
                return None;
            }
            let confirmation = self.confirmation.as_mut()?;
            confirmation.in_flight_probe = Some(next_pn);
            return Some(current_mtu);
        }

        if let Phase::Initial = &self.phase {
            // Start the first search
            self.phase = Phase::Searching(SearchState::new(
                current_mtu,
                self.peer_max_udp_payload_size,
                &self.config,
            ));
        } else if let Phase::Complete(next_mtud_activation) = &self.phase {
            if now < *next_mtud_activation {
                return None;
            }

            // Start a new search (we have reached the next activation time)
            self.phase = Phase::Searching(SearchState::new(
                current_mtu,
                self.peer_max_udp_payload_size,
                &self.config,
            ));
        }

        if let Phase::Searching(state) = &mut self.phase {
            // Nothing to do while there is a probe in flight
            if state.in_flight_probe.is_some() {
                return None;
            }

            // Retransmit lost probes, if any
            if 0 < state.lost_probe_count && state.lost_probe_count < MAX_PROBE_RETRANSMITS {
                state.in_flight_probe = Some(next_pn);
                return Some(state.last_probed_mtu);
            }

            let last_probe_succeeded = state.lost_probe_count == 0;

            // The probe is definitely lost (we reached the MAX_PROBE_RETRANSMITS threshold)
            if !last_probe_succeeded {
                state.lost_probe_count = 0;
                state.in_flight_probe = None;
            }

            if let Some(probe_udp_payload_size) = state.next_mtu_to_probe(last_probe_succeeded) {
                state.in_flight_probe = Some(next_pn);
                state.last_probed_mtu = probe_udp_payload_size;
                return Some(probe_udp_payload_size);
            } else {
                let next_mtud_activation = now + self.config.interval;
                self.phase = Phase::Complete(next_mtud_activation);
                return None;
            }
        }

        None
    }

    /// Called when a packet is acknowledged in [`SpaceId::Data`]
    ///
    /// Returns the new `current_mtu` if the packet number corresponds to the in-flight MTU probe
    fn on_probe_acked(&mut self, pn: u64) -> Option<u16> {
        match &mut self.phase {
            Phase::Searching(state) if state.in_flight_probe == Some(pn) => {
                state.in_flight_probe = None;
                state.lost_probe_count = 0;
                Some(state.last_probed_mtu)
            }
            _ => None,
        }
    }

    /// Called when the in-flight MTU probe, packet `pn`, was lost
    fn on_probe_lost(&mut self, pn: u64) {
        if self.stray_probe == Some(pn) {
            self.stray_probe = None;
            return;
        }
        if let Some(confirmation) = &mut self.confirmation {
            if confirmation.in_flight_probe == Some(pn) {
                confirmation.in_flight_probe = None;
                if confirmation.refuted {
                    self.confirmation = None;
                } else if pn > confirmation.suspicion.after {
                    confirmation.losses += 1;
                }
                return;
            }
        }
        // We might no longer be searching, e.g. if a black hole was detected
        if let Phase::Searching(state) = &mut self.phase {
            if state.in_flight_probe == Some(pn) {
                state.in_flight_probe = None;
                state.lost_probe_count += 1;
            }
        }
    }

    /// Called when a black hole is detected
    fn on_black_hole_detected(&mut self, now: Instant) {
        // Stop searching, if applicable, and reset the timer
        let next_mtud_activation = now + self.config.black_hole_cooldown;
        self.phase = Phase::Complete(next_mtud_activation);
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// We haven't started polling yet
    Initial,
    /// We are currently searching for a higher PMTU
    Searching(SearchState),
    /// Searching has completed and will be triggered again at the provided instant
    Complete(Instant),
}

#[derive(Debug, Clone, Copy)]
struct SearchState {
    /// The lower bound for the current binary search
    lower_bound: u16,
    /// The upper bound for the current binary search
    upper_bound: u16,
    /// The minimum change to stop the current binary search
    minimum_change: u16,
    /// The UDP payload size we last sent a probe for
    last_probed_mtu: u16,
    /// Packet number of an in-flight probe (if any)
    in_flight_probe: Option<u64>,
    /// Lost probes at the current probe size
    lost_probe_count: usize,
}

impl SearchState {
    /// Creates a new search state, with the specified lower bound (the upper bound is derived from
    /// the config and the peer's `max_udp_payload_size` transport parameter)
    fn new(
        mut lower_bound: u16,
        peer_max_udp_payload_size: u16,
        config: &MtuDiscoveryConfig,
    ) -> Self {
        lower_bound = lower_bound.min(peer_max_udp_payload_size);
        let upper_bound = config
            .upper_bound
            .clamp(lower_bound, peer_max_udp_payload_size);

        Self {
            in_flight_probe: None,
            lost_probe_count: 0,
            lower_bound,
            upper_bound,
            minimum_change: config.minimum_change,
            // During initialization, we consider the lower bound to have already been
            // successfully probed
            last_probed_mtu: lower_bound,
        }
    }

    /// Determines the next MTU to probe using binary search
    fn next_mtu_to_probe(&mut self, last_probe_succeeded: bool) -> Option<u16> {
        debug_assert_eq!(self.in_flight_probe, None);

        if last_probe_succeeded {
            self.lower_bound = self.last_probed_mtu;
        } else {
            self.upper_bound = self.last_probed_mtu - 1;
        }

        let next_mtu = (self.lower_bound as i32 + self.upper_bound as i32) / 2;

        // Binary search stopping condition
        if ((next_mtu - self.last_probed_mtu as i32).unsigned_abs() as u16) < self.minimum_change {
            // Special case: if the upper bound is far enough, we want to probe it as a last
            // step (otherwise we will never achieve the upper bound)
            if self.upper_bound.saturating_sub(self.last_probed_mtu) >= self.minimum_change {
                return Some(self.upper_bound);
            }

            return None;
        }

        Some(next_mtu as u16)
    }
}

/// Judges whether packet loss might indicate a drop in MTU
///
/// Our MTU black hole detection scheme is a heuristic based on the order in which packets were sent
/// (the packet number order), their sizes, and which are deemed lost.
///
/// First, contiguous groups of lost packets ("loss bursts") are aggregated, because a group of
/// packets all lost together were probably lost for the same reason.
///
/// A loss burst is deemed "suspicious" if it contains no packets that are (a) smaller than the
/// minimum MTU or (b) no larger than a packet sent after the burst and acknowledged, because such
/// a burst could be fully explained by a reduction in MTU. A burst stops being suspicious when
/// such a packet is acknowledged later on.
///
/// When more suspicious loss bursts than [`BLACK_HOLE_THRESHOLD`] agree on one narrower path
/// (SloPN patch: before, any suspicious bursts counted), we judge the evidence for an MTU black
/// hole to be sufficient.
#[derive(Clone)]
struct BlackHoleDetector {
    /// Packet loss bursts currently considered suspicious
    suspicious_loss_bursts: Vec<LossBurst>,
    /// Loss burst currently being aggregated, if any
    current_loss_burst: Option<CurrentLossBurst>,
    /// The most recent acknowledged packets larger than `min_mtu`, by size: for every size, the
    /// largest packet number acknowledged among packets at least that large, as far as these
    /// entries tell. Sorted by size, descending, and so by packet number, ascending (an entry
    /// both smaller and older than another proves nothing more and is dropped). At most
    /// [`MAX_DELIVERIES`] entries.
    deliveries: Vec<Delivery>,
    /// The UDP payload size guaranteed to be supported by the network
    min_mtu: u16,
}

impl BlackHoleDetector {
    fn new(min_mtu: u16) -> Self {
        Self {
            suspicious_loss_bursts: Vec::with_capacity(MAX_SUSPICIOUS_BURSTS + 1),
            current_loss_burst: None,
            deliveries: Vec::with_capacity(MAX_DELIVERIES + 1),
            min_mtu,
        }
    }

    fn on_probe_acked(&mut self, pn: u64, len: u16) {
        // MTU probes are always larger than the previous MTU, so no previous loss bursts are
        // suspicious. At most one MTU probe is in flight at a time, so we don't need to worry about
        // reordering between them.
        self.suspicious_loss_bursts.clear();
        self.record_delivery(pn, len);
    }

    fn on_non_probe_acked(&mut self, pn: u64, len: u16) {
        self.record_delivery(pn, len);
        // The path carried `len` bytes after every loss burst sent before this packet: those made
        // of packets no larger are retroactively deemed non-suspicious.
        self.suspicious_loss_bursts
            .retain(|burst| pn <= burst.latest_non_probe || len < burst.smallest_packet_size);
    }

    /// Remembers that packet `pn` of `len` bytes was delivered
    fn record_delivery(&mut self, pn: u64, len: u16) {
        if len <= self.min_mtu {
            // Bursts of packets this small are never suspicious; this proves nothing.
            return;
        }
        if self
            .deliveries
            .iter()
            .any(|known| known.size >= len && known.pn >= pn)
        {
            // A packet at least as large and at least as recent was already delivered.
            return;
        }
        self.deliveries
            .retain(|known| known.size > len || known.pn > pn);
        let at = self.deliveries.partition_point(|known| known.size > len);
        self.deliveries.insert(at, Delivery { pn, size: len });
        if self.deliveries.len() > MAX_DELIVERIES {
            // Forget the largest (and oldest) delivery. Less evidence only makes losses look more
            // suspicious, which is the safe side.
            self.deliveries.remove(0);
        }
    }

    /// Whether a packet of at least `size` bytes sent after packet `pn` was delivered
    fn delivered_after(&self, pn: u64, size: u16) -> bool {
        self.deliveries
            .iter()
            .any(|known| known.pn > pn && known.size >= size)
    }

    fn on_non_probe_lost(&mut self, pn: u64, len: u16) {
        // A loss burst is a group of consecutive packets that are declared lost, so a distance
        // greater than 1 indicates a new burst
        let end_last_burst = self
            .current_loss_burst
            .as_ref()
            .is_some_and(|current| pn - current.latest_non_probe != 1);

        if end_last_burst {
            self.finish_loss_burst();
        }

        self.current_loss_burst = Some(CurrentLossBurst {
            latest_non_probe: pn,
            smallest_packet_size: self
                .current_loss_burst
                .map_or(len, |prev| cmp::min(prev.smallest_packet_size, len)),
        });
    }

    #[cfg(test)]
    fn black_hole_detected(&mut self) -> bool {
        self.suspected_narrowing(BLACK_HOLE_THRESHOLD).is_some()
    }

    /// Closes the current loss burst; returns the narrowing of the path that the suspicious
    /// bursts suggest, if they are enough evidence (and then forgets them)
    fn suspected_narrowing(&mut self, threshold: usize) -> Option<Suspicion> {
        self.finish_loss_burst();

        if self.suspicious_loss_bursts.len() <= threshold {
            return None;
        }
        let (agreeing, size) = self.bursts_agreeing_on_a_narrower_path();
        if agreeing <= threshold {
            return None;
        }
        let after = self
            .suspicious_loss_bursts
            .iter()
            .map(|burst| burst.latest_non_probe)
            .max()?;
        self.suspicious_loss_bursts.clear();
        Some(Suspicion { size, after })
    }

    /// The most suspicious bursts that one narrowing of the path explains together. A path that
    /// stopped carrying packets of `size` bytes or more loses every such packet sent after some
    /// point and delivers none: the bursts it explains are those of packets all at least `size`
    /// bytes sent after the last delivered packet of at least `size` bytes. Bursts no single
    /// size explains together (a packet at least as large as a later burst's was delivered
    /// between them) are random loss. Tried for each burst's smallest packet size; returns the
    /// count and that size.
    fn bursts_agreeing_on_a_narrower_path(&self) -> (usize, u16) {
        self.suspicious_loss_bursts
            .iter()
            .map(|candidate| {
                let size = candidate.smallest_packet_size;
                let last_delivered = self
                    .deliveries
                    .iter()
                    .filter(|known| known.size >= size)
                    .map(|known| known.pn)
                    .max();
                let agreeing = self
                    .suspicious_loss_bursts
                    .iter()
                    .filter(|burst| {
                        burst.smallest_packet_size >= size
                            && last_delivered.is_none_or(|pn| burst.latest_non_probe > pn)
                    })
                    .count();
                (agreeing, size)
            })
            .max()
            .unwrap_or((0, 0))
    }

    /// Marks the end of the current loss burst, checking whether it was suspicious
    fn finish_loss_burst(&mut self) {
        let Some(burst) = self.current_loss_burst.take() else {
            return;
        };
        // If a loss burst contains a packet smaller than the minimum MTU, or no larger than a
        // packet sent later and delivered (acknowledgments are processed before the losses they
        // reveal), it is not suspicious.
        if burst.smallest_packet_size <= self.min_mtu
            || self.delivered_after(burst.latest_non_probe, burst.smallest_packet_size)
        {
            return;
        }
        // The loss burst is now deemed suspicious.
        let burst = LossBurst {
            smallest_packet_size: burst.smallest_packet_size,
            latest_non_probe: burst.latest_non_probe,
        };

        // To limit memory use, forget the oldest suspicious burst: a narrowing shows in the
        // newest ones.
        if self.suspicious_loss_bursts.len() == MAX_SUSPICIOUS_BURSTS {
            self.suspicious_loss_bursts.remove(0);
        }
        self.suspicious_loss_bursts.push(burst);
    }

    #[cfg(test)]
    fn suspicious_loss_burst_count(&self) -> usize {
        self.suspicious_loss_bursts.len()
    }

    #[cfg(test)]
    fn largest_non_probe_lost(&self) -> Option<u64> {
        self.current_loss_burst.as_ref().map(|x| x.latest_non_probe)
    }
}

#[derive(Copy, Clone)]
struct LossBurst {
    smallest_packet_size: u16,
    /// Packet number of the burst's last packet: a delivery sent after it of a packet at least
    /// `smallest_packet_size` large clears the burst
    latest_non_probe: u64,
}

/// An acknowledged packet
#[derive(Copy, Clone)]
struct Delivery {
    pn: u64,
    size: u16,
}

#[derive(Copy, Clone)]
struct CurrentLossBurst {
    smallest_packet_size: u16,
    latest_non_probe: u64,
}

// Corresponds to the RFC's `MAX_PROBES` constant (see
// https://www.rfc-editor.org/rfc/rfc8899#section-5.1.2)
const MAX_PROBE_RETRANSMITS: usize = 3;
/// Maximum number of suspicious loss bursts that will not trigger black hole detection
const BLACK_HOLE_THRESHOLD: usize = 3;
/// The same for a suspicion that packets sent later confirm or refute (SloPN patch): one burst
/// fewer, since the confirmation filters random loss out, notices a real narrowing sooner
const SUSPICION_THRESHOLD: usize = 2;
/// Acknowledged packets of distinct sizes the black hole detector keeps as evidence
const MAX_DELIVERIES: usize = 16;

/// Suspicious loss bursts remembered at most (the oldest is forgotten first)
const MAX_SUSPICIOUS_BURSTS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Duration;
    use crate::MAX_UDP_PAYLOAD;
    use crate::packet::SpaceId;
    use assert_matches::assert_matches;

    fn default_mtud() -> MtuDiscovery {
        let config = MtuDiscoveryConfig::default();
        MtuDiscovery::new(1_200, 1_200, None, config)
    }

    fn completed(mtud: &MtuDiscovery) -> bool {
        matches!(mtud.state.as_ref().unwrap().phase, Phase::Complete(_))
    }

    /// Drives mtud until it reaches `Phase::Completed`
    fn drive_to_completion(
        mtud: &mut MtuDiscovery,
        now: Instant,
        link_payload_size_limit: u16,
    ) -> Vec<u16> {
        let mut probed_sizes = Vec::new();
        for probe_pn in 1..100 {
            let result = mtud.poll_transmit(now, probe_pn);

            if completed(mtud) {
                break;
            }

            // "Send" next probe
            assert!(result.is_some());
            let probe_size = result.unwrap();
            probed_sizes.push(probe_size);

            if probe_size <= link_payload_size_limit {
                mtud.on_acked(SpaceId::Data, probe_pn, probe_size);
            } else {
                mtud.on_probe_lost(probe_pn, now);
            }
        }
        probed_sizes
    }

    #[test]
    fn black_hole_detector_ignores_burst_containing_non_suspicious_packet() {
        let mut mtud = default_mtud();
        mtud.on_non_probe_lost(2, 1300);
        mtud.on_non_probe_lost(3, 1300);
        assert_eq!(mtud.black_hole_detector.largest_non_probe_lost(), Some(3));
        assert_eq!(mtud.black_hole_detector.suspicious_loss_burst_count(), 0);

        mtud.on_non_probe_lost(4, 800);
        assert!(!mtud.black_hole_detected(Instant::now()));
        assert_eq!(mtud.black_hole_detector.largest_non_probe_lost(), None);
        assert_eq!(mtud.black_hole_detector.suspicious_loss_burst_count(), 0);
    }

    #[test]
    fn black_hole_detector_counts_burst_containing_only_suspicious_packets() {
        let mut mtud = default_mtud();
        mtud.on_non_probe_lost(2, 1300);
        mtud.on_non_probe_lost(3, 1300);
        assert_eq!(mtud.black_hole_detector.largest_non_probe_lost(), Some(3));
        assert_eq!(mtud.black_hole_detector.suspicious_loss_burst_count(), 0);

        assert!(!mtud.black_hole_detected(Instant::now()));
        assert_eq!(mtud.black_hole_detector.largest_non_probe_lost(), None);
        assert_eq!(mtud.black_hole_detector.suspicious_loss_burst_count(), 1);
    }

    #[test]
    fn black_hole_detector_ignores_empty_burst() {
        let mut mtud = default_mtud();
        assert!(!mtud.black_hole_detected(Instant::now()));
        assert_eq!(mtud.black_hole_detector.suspicious_loss_burst_count(), 0);
    }

    #[test]
    fn mtu_discovery_disabled_does_nothing() {
        let mut mtud = MtuDiscovery::disabled(1_200, 1_200);
        let probe_size = mtud.poll_transmit(Instant::now(), 0);
        assert_eq!(probe_size, None);
    }

    #[test]
    fn mtu_discovery_disabled_lost_four_packet_bursts_triggers_black_hole_detection() {
        let mut mtud = MtuDiscovery::disabled(1_400, 1_250);
        let now = Instant::now();

        for i in 0..4 {
            // The packets are never contiguous, so each one has its own burst
            mtud.on_non_probe_lost(i * 2, 1300);
        }

        assert!(mtud.black_hole_detected(now));
        assert_eq!(mtud.current_mtu, 1250);
        assert_matches!(mtud.state, None);
    }

    #[test]
    fn mtu_discovery_lost_two_packet_bursts_does_not_trigger_black_hole_detection() {
        let mut mtud = default_mtud();
        let now = Instant::now();

        for i in 0..2 {
            mtud.on_non_probe_lost(i, 1300);
            assert!(!mtud.black_hole_detected(now));
        }
    }

    #[test]
    fn mtu_discovery_lost_four_packet_bursts_triggers_black_hole_detection_and_resets_timer() {
        let mut mtud = default_mtud();
        let now = Instant::now();

        for i in 0..4 {
            // The packets are never contiguous, so each one has its own burst
            mtud.on_non_probe_lost(i * 2, 1300);
        }

        assert!(mtud.black_hole_detected(now));
        assert_eq!(mtud.current_mtu, 1200);
        if let Phase::Complete(next_mtud_activation) = mtud.state.unwrap().phase {
            assert_eq!(next_mtud_activation, now + Duration::from_secs(60));
        } else {
            panic!("Unexpected MTUD phase!");
        }
    }

    /// A connection whose search found `mtu` bytes, on a 1500-byte link
    fn mtud_at(mtu: u16) -> MtuDiscovery {
        let mut config = MtuDiscoveryConfig::default();
        config.upper_bound(mtu);
        let mut mtud = MtuDiscovery::new(1_200, 1_200, None, config);
        drive_to_completion(&mut mtud, Instant::now(), 1_500);
        assert_eq!(mtud.current_mtu, mtu);
        mtud
    }

    /// A connection at 1452 bytes, then four loss bursts of full-size packets: a black hole
    /// suspected, with the first confirmation probe returned.
    fn suspected_black_hole(now: Instant) -> (MtuDiscovery, u64) {
        let mut mtud = mtud_at(1452);
        for i in 0..4 {
            mtud.on_non_probe_lost(100 + i * 2, 1452);
        }
        assert!(!mtud.black_hole_detected(now), "declared before confirming");
        assert_eq!(mtud.current_mtu, 1452);
        assert_eq!(mtud.poll_transmit(now, 200), Some(1452));
        assert_eq!(mtud.in_flight_mtu_probe(), Some(200));
        // One confirmation probe at a time
        assert_eq!(mtud.poll_transmit(now, 201), None);
        (mtud, 200)
    }

    // SloPN patch: with nothing else sent, the black hole is declared once
    // `CONFIRMATION_LOSSES` probes of the current MTU, sent one after the other, are all lost.
    #[test]
    fn suspected_black_hole_is_declared_when_the_confirmation_probes_are_lost() {
        let now = Instant::now();
        let (mut mtud, first) = suspected_black_hole(now);
        let mut probe = first;
        for i in 1..CONFIRMATION_LOSSES as u64 {
            assert!(!mtud.on_probe_lost(probe, now));
            assert_eq!(mtud.current_mtu, 1452);
            probe = first + 5 * i;
            assert_eq!(mtud.poll_transmit(now, probe), Some(1452));
        }
        assert!(
            mtud.on_probe_lost(probe, now),
            "the last lost probe declares the black hole"
        );
        assert_eq!(mtud.current_mtu, 1200);
        assert_eq!(mtud.in_flight_mtu_probe(), None);
        match mtud.state.as_ref().unwrap().phase {
            Phase::Complete(next) => assert_eq!(next, now + Duration::from_secs(60)),
            phase => panic!("unexpected phase {phase:?}"),
        }
        // Searching again after the cooldown, from the minimum
        assert_eq!(mtud.poll_transmit(now, first + 100), None);
        assert!(
            mtud.poll_transmit(now + Duration::from_secs(60), first + 101)
                .is_some()
        );
    }

    // SloPN patch: one delivered confirmation probe refutes the suspicion; the MTU stays, the
    // suspicious bursts are forgotten, and the discovery goes on as before.
    #[test]
    fn suspected_black_hole_is_refuted_by_a_delivered_probe() {
        let now = Instant::now();
        let (mut mtud, first) = suspected_black_hole(now);
        assert!(!mtud.on_probe_lost(first, now));
        assert_eq!(mtud.poll_transmit(now, first + 5), Some(1452));
        assert!(
            !mtud.on_acked(SpaceId::Data, first + 5, 1452),
            "the MTU does not change"
        );
        assert_eq!(mtud.current_mtu, 1452);
        assert_eq!(mtud.in_flight_mtu_probe(), None);
        assert_eq!(mtud.black_hole_detector.suspicious_loss_burst_count(), 0);
        assert!(completed(&mtud));
        assert_eq!(mtud.poll_transmit(now, first + 6), None);
        // A later real narrowing is still suspected and confirmed
        for i in 0..4 {
            mtud.on_non_probe_lost(300 + i * 2, 1452);
        }
        assert!(!mtud.black_hole_detected(now));
        let last = 400 + CONFIRMATION_LOSSES as u64 - 1;
        for pn in 400..=last {
            assert_eq!(mtud.poll_transmit(now, pn), Some(1452));
            let declared = mtud.on_probe_lost(pn, now);
            assert_eq!(declared, pn == last);
        }
        assert_eq!(mtud.current_mtu, 1200);
    }

    // SloPN patch: under steady traffic the packets sent after the suspicious bursts settle it
    // without probes: one delivered at least as large refutes it (a smaller one does not, nor
    // one sent before the bursts); `CONFIRMATION_LOSSES` lost before that confirm it.
    #[test]
    fn suspected_black_hole_is_settled_by_the_packets_sent_after_it() {
        let now = Instant::now();
        let suspect = |mtud: &mut MtuDiscovery| {
            for i in 0..4 {
                mtud.on_non_probe_lost(100 + i * 2, 1400);
            }
            assert!(!mtud.black_hole_detected(now));
        };
        let mut mtud = mtud_at(1452);
        suspect(&mut mtud);
        assert!(
            !mtud.on_acked(SpaceId::Data, 99, 1452),
            "sent before the bursts"
        );
        assert!(
            !mtud.on_acked(SpaceId::Data, 110, 1300),
            "smaller than the bursts"
        );
        mtud.on_non_probe_lost(111, 1452);
        mtud.on_non_probe_lost(113, 1400);
        assert!(!mtud.black_hole_detected(now));
        assert!(!mtud.on_acked(SpaceId::Data, 114, 1400));
        assert!(
            mtud.state.as_ref().unwrap().confirmation.is_none(),
            "refuted"
        );
        assert_eq!(mtud.current_mtu, 1452);

        let mut mtud = mtud_at(1452);
        suspect(&mut mtud);
        mtud.on_non_probe_lost(110, 1300);
        for i in 0..CONFIRMATION_LOSSES as u64 {
            assert!(!mtud.black_hole_detected(now));
            mtud.on_non_probe_lost(111 + 2 * i, 1452);
        }
        assert!(
            mtud.black_hole_detected(now),
            "enough large packets lost after the bursts"
        );
        assert_eq!(mtud.current_mtu, 1200);
    }

    // SloPN patch: a suspicion during a search suspends it. The search probe in flight stays
    // the probe in flight (its loss is no data's); the confirmation probe waits for it, and
    // the search goes on once the suspicion is refuted.
    #[test]
    fn suspected_black_hole_during_a_search_suspends_it() {
        let now = Instant::now();
        let mut mtud = default_mtud();
        let first = mtud.poll_transmit(now, 1).expect("search probe");
        assert!(mtud.on_acked(SpaceId::Data, 1, first));
        let probe = mtud.poll_transmit(now, 2).expect("search probe");
        for i in 0..4 {
            mtud.on_non_probe_lost(10 + i * 2, first);
        }
        assert!(!mtud.black_hole_detected(now));
        assert_eq!(
            mtud.in_flight_mtu_probe(),
            Some(2),
            "still the search probe"
        );
        assert_eq!(mtud.poll_transmit(now, 20), None, "one probe at a time");
        mtud.on_probe_lost(2, now);
        assert_eq!(
            mtud.poll_transmit(now, 21),
            Some(first),
            "then a probe of the current MTU"
        );
        assert_eq!(mtud.in_flight_mtu_probe(), Some(21));
        assert!(!mtud.on_acked(SpaceId::Data, 21, first));
        assert_eq!(mtud.current_mtu, first);
        assert_eq!(
            mtud.poll_transmit(now, 22),
            Some(probe),
            "the search probe again"
        );
    }

    // SloPN patch: a probe in flight when the black hole is declared stays tracked, so that
    // its loss is a probe's; and a refuted suspicion waiting for its probe gives way to a new
    // one.
    #[test]
    fn probes_in_flight_stay_tracked_across_a_declaration_and_a_new_suspicion() {
        let now = Instant::now();
        let (mut mtud, probe) = suspected_black_hole(now);
        // Large packets sent after the bursts are lost: declared, the probe still in flight
        for i in 0..CONFIRMATION_LOSSES as u64 {
            mtud.on_non_probe_lost(150 + 2 * i, 1452);
        }
        assert!(mtud.black_hole_detected(now));
        assert_eq!(mtud.current_mtu, 1200);
        assert_eq!(mtud.in_flight_mtu_probe(), Some(probe));
        assert!(!mtud.on_probe_lost(probe, now), "declared once");
        assert_eq!(mtud.in_flight_mtu_probe(), None);

        let (mut mtud, probe) = suspected_black_hole(now);
        assert!(!mtud.on_acked(SpaceId::Data, 190, 1452), "refuted");
        // New bursts while the refuted confirmation's probe is in flight
        for i in 0..4 {
            mtud.on_non_probe_lost(300 + i * 2, 1452);
        }
        assert!(!mtud.black_hole_detected(now));
        assert_eq!(mtud.state.as_ref().unwrap().suspicions, 2);
        assert!(!mtud.on_probe_lost(probe, now));
        let confirmation = mtud.state.as_ref().unwrap().confirmation.unwrap();
        assert_eq!(
            confirmation.losses, 0,
            "a probe older than the bursts is no evidence"
        );
        for i in 0..CONFIRMATION_LOSSES as u64 {
            mtud.on_non_probe_lost(320 + 2 * i, 1452);
        }
        assert!(mtud.black_hole_detected(now), "the new suspicion confirmed");
    }

    #[test]
    fn mtu_discovery_after_complete_reactivates_when_interval_elapsed() {
        let mut config = MtuDiscoveryConfig::default();
        config.upper_bound(9_000);
        let mut mtud = MtuDiscovery::new(1_200, 1_200, None, config);
        let now = Instant::now();
        drive_to_completion(&mut mtud, now, 1_500);

        // Polling right after completion does not cause new packets to be sent
        assert_eq!(mtud.poll_transmit(now, 42), None);
        assert!(completed(&mtud));
        assert_eq!(mtud.current_mtu, 1_471);

        // Polling after the interval has passed does (taking the current mtu as lower bound)
        assert_eq!(
            mtud.poll_transmit(now + Duration::from_secs(600), 43),
            Some(5235)
        );

        match mtud.state.unwrap().phase {
            Phase::Searching(state) => {
                assert_eq!(state.lower_bound, 1_471);
                assert_eq!(state.upper_bound, 9_000);
            }
            _ => {
                panic!("Unexpected MTUD phase!")
            }
        }
    }

    #[test]
    fn mtu_discovery_lost_three_probes_lowers_probe_size() {
        let mut mtud = default_mtud();

        let mut probe_sizes = (0..4).map(|i| {
            let probe_size = mtud.poll_transmit(Instant::now(), i);
            assert!(probe_size.is_some(), "no probe returned for packet {i}");

            mtud.on_probe_lost(i, Instant::now());
            probe_size.unwrap()
        });

        // After the first probe is lost, it gets retransmitted twice
        let first_probe_size = probe_sizes.next().unwrap();
        for _ in 0..2 {
            assert_eq!(probe_sizes.next().unwrap(), first_probe_size)
        }

        // After the third probe is lost, we decrement our probe size
        let fourth_probe_size = probe_sizes.next().unwrap();
        assert!(fourth_probe_size < first_probe_size);
        assert_eq!(
            fourth_probe_size,
            first_probe_size - (first_probe_size - 1_200) / 2 - 1
        );
    }

    #[test]
    fn mtu_discovery_with_peer_max_udp_payload_size_clamps_upper_bound() {
        let mut mtud = default_mtud();

        mtud.on_peer_max_udp_payload_size_received(1300);
        let probed_sizes = drive_to_completion(&mut mtud, Instant::now(), 1500);

        assert_eq!(mtud.state.as_ref().unwrap().peer_max_udp_payload_size, 1300);
        assert_eq!(mtud.current_mtu, 1300);
        let expected_probed_sizes = &[1250, 1275, 1300];
        assert_eq!(probed_sizes, expected_probed_sizes);
        assert!(completed(&mtud));
    }

    #[test]
    fn mtu_discovery_with_previous_peer_max_udp_payload_size_clamps_upper_bound() {
        let mut mtud = MtuDiscovery::new(1500, 1_200, Some(1400), MtuDiscoveryConfig::default());

        assert_eq!(mtud.current_mtu, 1400);
        assert_eq!(mtud.state.as_ref().unwrap().peer_max_udp_payload_size, 1400);

        let probed_sizes = drive_to_completion(&mut mtud, Instant::now(), 1500);

        assert_eq!(mtud.current_mtu, 1400);
        assert!(probed_sizes.is_empty());
        assert!(completed(&mtud));
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "Transport parameters received after MTU probing started")]
    fn mtu_discovery_with_peer_max_udp_payload_size_during_search_panics() {
        let mut mtud = default_mtud();
        assert!(mtud.poll_transmit(Instant::now(), 0).is_some());
        assert!(matches!(
            mtud.state.as_ref().unwrap().phase,
            Phase::Searching(_)
        ));
        mtud.on_peer_max_udp_payload_size_received(1300);
    }

    #[test]
    fn mtu_discovery_with_1500_limit() {
        let mut mtud = default_mtud();

        let probed_sizes = drive_to_completion(&mut mtud, Instant::now(), 1500);

        let expected_probed_sizes = &[1326, 1389, 1420, 1452];
        assert_eq!(probed_sizes, expected_probed_sizes);
        assert_eq!(mtud.current_mtu, 1452);
        assert!(completed(&mtud));
    }

    #[test]
    fn mtu_discovery_with_1500_limit_and_10000_upper_bound() {
        let mut config = MtuDiscoveryConfig::default();
        config.upper_bound(10_000);
        let mut mtud = MtuDiscovery::new(1_200, 1_200, None, config);

        let probed_sizes = drive_to_completion(&mut mtud, Instant::now(), 1500);

        let expected_probed_sizes = &[
            5600, 5600, 5600, 3399, 3399, 3399, 2299, 2299, 2299, 1749, 1749, 1749, 1474, 1611,
            1611, 1611, 1542, 1542, 1542, 1507, 1507, 1507,
        ];
        assert_eq!(probed_sizes, expected_probed_sizes);
        assert_eq!(mtud.current_mtu, 1474);
        assert!(completed(&mtud));
    }

    #[test]
    fn mtu_discovery_no_lost_probes_finds_maximum_udp_payload() {
        let mut config = MtuDiscoveryConfig::default();
        config.upper_bound(MAX_UDP_PAYLOAD);
        let mut mtud = MtuDiscovery::new(1200, 1200, None, config);

        drive_to_completion(&mut mtud, Instant::now(), u16::MAX);

        assert_eq!(mtud.current_mtu, 65527);
        assert!(completed(&mtud));
    }

    #[test]
    fn mtu_discovery_lost_half_of_probes_finds_maximum_udp_payload() {
        let mut config = MtuDiscoveryConfig::default();
        config.upper_bound(MAX_UDP_PAYLOAD);
        let mut mtud = MtuDiscovery::new(1200, 1200, None, config);

        let now = Instant::now();
        let mut iterations = 0;
        for i in 1..100 {
            iterations += 1;

            let probe_pn = i * 2 - 1;
            let other_pn = i * 2;

            let result = mtud.poll_transmit(Instant::now(), probe_pn);

            if completed(&mtud) {
                break;
            }

            // "Send" next probe
            assert!(result.is_some());
            assert!(mtud.in_flight_mtu_probe().is_some());

            // Nothing else to send while the probe is in-flight
            assert_matches!(mtud.poll_transmit(now, other_pn), None);

            if i % 2 == 0 {
                // ACK probe and ensure it results in an increase of current_mtu
                let previous_max_size = mtud.current_mtu;
                mtud.on_acked(SpaceId::Data, probe_pn, result.unwrap());
                println!(
                    "ACK packet {}. Previous MTU = {previous_max_size}. New MTU = {}",
                    result.unwrap(),
                    mtud.current_mtu
                );
                // assert!(mtud.current_mtu > previous_max_size);
            } else {
                mtud.on_probe_lost(probe_pn, now);
            }
        }

        assert_eq!(iterations, 25);
        assert_eq!(mtud.current_mtu, 65527);
        assert!(completed(&mtud));
    }

    #[test]
    fn search_state_lower_bound_higher_than_upper_bound_clamps_upper_bound() {
        let mut config = MtuDiscoveryConfig::default();
        config.upper_bound(1400);

        let state = SearchState::new(1500, u16::MAX, &config);
        assert_eq!(state.lower_bound, 1500);
        assert_eq!(state.upper_bound, 1500);
    }

    #[test]
    fn search_state_lower_bound_higher_than_peer_max_udp_payload_size_clamps_lower_bound() {
        let mut config = MtuDiscoveryConfig::default();
        config.upper_bound(9000);

        let state = SearchState::new(1500, 1300, &config);
        assert_eq!(state.lower_bound, 1300);
        assert_eq!(state.upper_bound, 1300);
    }

    #[test]
    fn search_state_upper_bound_higher_than_peer_max_udp_payload_size_clamps_upper_bound() {
        let mut config = MtuDiscoveryConfig::default();
        config.upper_bound(9000);

        let state = SearchState::new(1200, 1450, &config);
        assert_eq!(state.lower_bound, 1200);
        assert_eq!(state.upper_bound, 1450);
    }

    // Loss of packets larger than have been acknowledged should indicate a black hole
    #[test]
    fn simple_black_hole_detection() {
        let mut bhd = BlackHoleDetector::new(1200);
        bhd.on_non_probe_acked((BLACK_HOLE_THRESHOLD + 1) as u64 * 2, 1300);
        for i in 0..BLACK_HOLE_THRESHOLD {
            bhd.on_non_probe_lost(i as u64 * 2, 1400);
        }
        // But not before `BLACK_HOLE_THRESHOLD + 1` bursts
        assert!(!bhd.black_hole_detected());
        bhd.on_non_probe_lost(BLACK_HOLE_THRESHOLD as u64 * 2, 1400);
        assert!(bhd.black_hole_detected());
    }

    // Loss of packets followed in transmission order by confirmation of a larger packet should not
    // indicate a black hole
    #[test]
    fn non_suspicious_bursts() {
        let mut bhd = BlackHoleDetector::new(1200);
        bhd.on_non_probe_acked((BLACK_HOLE_THRESHOLD + 1) as u64 * 2, 1500);
        for i in 0..(BLACK_HOLE_THRESHOLD + 1) {
            bhd.on_non_probe_lost(i as u64 * 2, 1400);
        }
        assert!(!bhd.black_hole_detected());
    }

    // Loss of packets smaller than have been acknowledged previously should still indicate a black
    // hole
    #[test]
    fn dynamic_mtu_reduction() {
        let mut bhd = BlackHoleDetector::new(1200);
        bhd.on_non_probe_acked(0, 1500);
        // (SloPN patch: the losses start after the delivered packet, not at it: a packet both
        // delivered and lost said that the path carried 1400 bytes after the first burst.)
        for i in 0..(BLACK_HOLE_THRESHOLD + 1) {
            bhd.on_non_probe_lost((i as u64 + 1) * 2, 1400);
        }
        assert!(bhd.black_hole_detected());
    }

    // Bursts containing heterogeneous packets are judged based on the smallest
    #[test]
    fn mixed_non_suspicious_bursts() {
        let mut bhd = BlackHoleDetector::new(1200);
        bhd.on_non_probe_acked((BLACK_HOLE_THRESHOLD + 1) as u64 * 3, 1400);
        for i in 0..(BLACK_HOLE_THRESHOLD + 1) {
            bhd.on_non_probe_lost(i as u64 * 3, 1500);
            bhd.on_non_probe_lost(i as u64 * 3 + 1, 1300);
        }
        assert!(!bhd.black_hole_detected());
    }

    // Multi-packet bursts are only counted once
    #[test]
    fn bursts_count_once() {
        let mut bhd = BlackHoleDetector::new(1200);
        bhd.on_non_probe_acked((BLACK_HOLE_THRESHOLD + 1) as u64 * 3, 1400);
        for i in 0..(BLACK_HOLE_THRESHOLD) {
            bhd.on_non_probe_lost(i as u64 * 3, 1500);
            bhd.on_non_probe_lost(i as u64 * 3 + 1, 1500);
        }
        assert!(!bhd.black_hole_detected());
        bhd.on_non_probe_lost(BLACK_HOLE_THRESHOLD as u64 * 3, 1500);
        assert!(bhd.black_hole_detected());
    }

    // Non-suspicious bursts don't interfere with detection of suspicious bursts
    #[test]
    fn interleaved_bursts() {
        let mut bhd = BlackHoleDetector::new(1200);
        bhd.on_non_probe_acked((BLACK_HOLE_THRESHOLD + 1) as u64 * 4, 1400);
        for i in 0..(BLACK_HOLE_THRESHOLD + 1) {
            bhd.on_non_probe_lost(i as u64 * 4, 1500);
            bhd.on_non_probe_lost(i as u64 * 4 + 2, 1300);
        }
        assert!(bhd.black_hole_detected());
    }

    // Bursts that are non-suspicious before a delivered packet become suspicious past it
    #[test]
    fn suspicious_after_acked() {
        let mut bhd = BlackHoleDetector::new(1200);
        bhd.on_non_probe_acked((BLACK_HOLE_THRESHOLD + 1) as u64 * 2, 1400);
        for i in 0..(BLACK_HOLE_THRESHOLD + 1) {
            bhd.on_non_probe_lost(i as u64 * 2, 1300);
        }
        assert!(
            !bhd.black_hole_detected(),
            "1300 byte losses preceding a 1400 byte delivery are not suspicious"
        );
        // (SloPN patch: the losses start after the delivered packet, not at it.)
        for i in 0..(BLACK_HOLE_THRESHOLD + 1) {
            bhd.on_non_probe_lost((BLACK_HOLE_THRESHOLD as u64 + 2 + i as u64) * 2, 1300);
        }
        assert!(
            bhd.black_hole_detected(),
            "1300 byte losses following a 1400 byte delivery are suspicious"
        );
    }

    // Loss bursts that precede the delivery of another packet of the largest size seen so far
    // are not suspicious: that delivery proves the path still carries packets of that size. This
    // is the steady state of a bulk transfer, where every packet is full-size and one ACK
    // typically both confirms new packets and reveals older losses.
    #[test]
    fn equal_size_delivery_clears_preceding_bursts() {
        let mut bhd = BlackHoleDetector::new(1200);
        // A full-size packet was delivered long ago...
        bhd.on_non_probe_acked(0, 1400);
        // ...and a newer full-size packet is delivered now, before loss detection runs
        bhd.on_non_probe_acked((BLACK_HOLE_THRESHOLD + 1) as u64 * 2, 1400);
        // Loss detection then reveals bursts that were transmitted before that delivery
        for i in 0..(BLACK_HOLE_THRESHOLD + 1) {
            bhd.on_non_probe_lost(i as u64 * 2 + 1, 1400);
        }
        assert!(
            !bhd.black_hole_detected(),
            "full-size losses preceding a full-size delivery are not suspicious"
        );
        // Full-size losses transmitted after the last delivery are still suspicious
        for i in 0..(BLACK_HOLE_THRESHOLD + 1) {
            bhd.on_non_probe_lost((BLACK_HOLE_THRESHOLD as u64 + 1 + i as u64) * 2 + 1, 1400);
        }
        assert!(
            bhd.black_hole_detected(),
            "full-size losses following the last full-size delivery are suspicious"
        );
    }

    // Acknowledgment of a packet marks prior loss bursts with the same packet size as
    // non-suspicious
    #[test]
    fn retroactively_non_suspicious() {
        let mut bhd = BlackHoleDetector::new(1200);
        for i in 0..BLACK_HOLE_THRESHOLD {
            bhd.on_non_probe_lost(i as u64 * 2, 1400);
        }
        bhd.on_non_probe_acked(BLACK_HOLE_THRESHOLD as u64 * 2, 1400);
        bhd.on_non_probe_lost(BLACK_HOLE_THRESHOLD as u64 * 2 + 1, 1400);
        assert!(!bhd.black_hole_detected());
    }

    /// Drives a detector the way `Connection` does, one ACK at a time: `sizes[pn]` is the size of
    /// packet `pn` and `delivered(pn)` whether it reaches the peer. Every `ack_every` packets an
    /// ACK arrives: the delivered packets it covers are reported acknowledged first, then the
    /// packets it reveals as lost (those `packet_threshold` = 3 or more below its largest), then
    /// the detector is asked for a black hole. Returns the packet numbers of the ACKs after which a
    /// black hole was declared.
    fn run_detector(
        min_mtu: u16,
        sizes: &[u16],
        delivered: impl Fn(u64) -> bool,
        ack_every: usize,
    ) -> Vec<u64> {
        run(
            &mut BlackHoleDetector::new(min_mtu),
            sizes,
            delivered,
            ack_every,
        )
    }

    /// What [`run`] drives: the detector alone, or a whole [`MtuDiscovery`]
    trait Detector {
        fn on_non_probe_acked(&mut self, pn: u64, len: u16);
        fn on_non_probe_lost(&mut self, pn: u64, len: u16);
        fn black_hole_detected(&mut self) -> bool;
    }

    impl Detector for BlackHoleDetector {
        fn on_non_probe_acked(&mut self, pn: u64, len: u16) {
            Self::on_non_probe_acked(self, pn, len)
        }
        fn on_non_probe_lost(&mut self, pn: u64, len: u16) {
            Self::on_non_probe_lost(self, pn, len)
        }
        fn black_hole_detected(&mut self) -> bool {
            Self::black_hole_detected(self)
        }
    }

    impl Detector for MtuDiscovery {
        fn on_non_probe_acked(&mut self, pn: u64, len: u16) {
            assert!(!self.on_acked(SpaceId::Data, pn, len));
        }
        fn on_non_probe_lost(&mut self, pn: u64, len: u16) {
            Self::on_non_probe_lost(self, pn, len)
        }
        fn black_hole_detected(&mut self) -> bool {
            Self::black_hole_detected(self, Instant::now())
        }
    }

    /// [`run_detector`] for any [`Detector`]
    fn run(
        bhd: &mut impl Detector,
        sizes: &[u16],
        delivered: impl Fn(u64) -> bool,
        ack_every: usize,
    ) -> Vec<u64> {
        let mut declared = Vec::new();
        let mut unresolved = Vec::new();
        for pn in 0..sizes.len() as u64 {
            unresolved.push(pn);
            if (pn + 1) % ack_every as u64 != 0 {
                continue;
            }
            let Some(&largest) = unresolved.iter().rev().find(|&&p| delivered(p)) else {
                continue;
            };
            for &p in unresolved.iter().filter(|&&p| p <= largest && delivered(p)) {
                bhd.on_non_probe_acked(p, sizes[p as usize]);
            }
            let lost: Vec<u64> = unresolved
                .iter()
                .copied()
                .filter(|&p| !delivered(p) && p + 3 <= largest)
                .collect();
            for &p in &lost {
                bhd.on_non_probe_lost(p, sizes[p as usize]);
            }
            unresolved.retain(|&p| p > largest || !(delivered(p) || lost.contains(&p)));
            if bhd.black_hole_detected() {
                declared.push(pn);
            }
        }
        declared
    }

    /// A deterministic pseudo-random sequence in [0, 1)
    fn uniform(seed: u64) -> impl Fn(u64) -> f64 {
        move |i| {
            let mut x = (seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_add(i);
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 33;
            x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            x ^= x >> 33;
            (x >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    // A bulk transfer at the discovered MTU, 1 to 5 % of packets lost at random (10 % too for the
    // first two patterns), ACKs acknowledging 2 to 64 packets and so revealing several losses at
    // once. The packets are full-size, in three patterns: all of one size; in batches (as with
    // GSO) of nine padded to the MTU and a last one a few bytes shorter; or mostly a little under
    // the MTU with one in ten a few bytes larger (packet number length, an ACK frame that fits).
    // Deliveries of full-size packets sent after each loss prove the path still carries them:
    // never a black hole. Before the detector compared each loss burst with the deliveries sent
    // after it, the mixed pattern declared black holes in 13 of its 36 runs below 10 % loss
    // (1 at 1 %, 13 at 2 %, 151 at 5 %, as many as 39 in one run of 20 000 packets).
    #[test]
    fn random_loss_of_full_size_packets_is_not_a_black_hole() {
        for seed in 0..4 {
            let rand = uniform(seed);
            let uniform_sizes = vec![1452; 20_000];
            let batched_sizes: Vec<u16> = (0..20_000)
                .map(|pn| match pn % 10 {
                    9 => 1443 + (rand(pn + 1_000_000) * 9.0) as u16,
                    _ => 1452,
                })
                .collect();
            let mixed_sizes: Vec<u16> = (0..20_000)
                .map(|pn| match pn % 10 {
                    9 => 1444 + (rand(pn + 1_000_000) * 9.0) as u16,
                    _ => 1443,
                })
                .collect();
            let patterns = [
                ("uniform", &uniform_sizes, 0.1),
                ("batched", &batched_sizes, 0.1),
                ("mixed", &mixed_sizes, 0.1),
            ];
            for (what, sizes, max_loss) in patterns {
                for loss in [0.01, 0.02, 0.05, 0.1]
                    .into_iter()
                    .filter(|&l| l <= max_loss)
                {
                    for ack_every in [2, 16, 64] {
                        let declared = run_detector(1200, sizes, |pn| rand(pn) >= loss, ack_every);
                        assert_eq!(
                            declared,
                            [],
                            "{what} sizes, {loss} loss, seed {seed}, an ACK every {ack_every}"
                        );
                    }
                }
            }
        }
    }

    // Packets of all sizes, 10 % lost at random: sizes spread evenly over 1300 to 1452 bytes,
    // and traffic that is 70 % small packets (acknowledgments) and 30 % of 1200 to 1437 bytes
    // (several datagrams packed into one packet). Bursts of the larger sizes often go without a
    // later delivery at least as large; only bursts that agree on one narrower path count.
    // 72 runs of 20 000 packets: without that agreement the detector declared 175 black
    // holes in them, with it 24. SloPN patch: a whole MTU discovery suspects one 255 times
    // (from three agreeing bursts) and declares none, since four large packets sent after a
    // suspicion must be lost before one is delivered.
    #[test]
    fn random_loss_of_packets_of_all_sizes_rarely_looks_like_a_black_hole() {
        let mut declared = 0;
        let mut confirmed = 0;
        let mut suspicions = 0;
        for seed in 0..12 {
            let rand = uniform(seed);
            let spread: Vec<u16> = (0..20_000)
                .map(|pn| 1300 + (rand(pn + 2_000_000) * 153.0) as u16)
                .collect();
            let packed: Vec<u16> = (0..20_000)
                .map(|pn| {
                    if rand(pn + 3_000_000) < 0.7 {
                        100
                    } else {
                        1200 + (rand(pn + 2_000_000) * 238.0) as u16
                    }
                })
                .collect();
            for sizes in [&spread, &packed] {
                for ack_every in [2, 16, 64] {
                    let delivered = |pn| rand(pn) >= 0.1;
                    declared += run_detector(1200, sizes, delivered, ack_every).len();
                    // SloPN patch: a whole MTU discovery, whose suspicions the packets sent
                    // after them confirm or refute (no probes: the traffic is steady)
                    let mut mtud = mtud_at(1452);
                    confirmed += run(&mut mtud, sizes, delivered, ack_every).len();
                    suspicions += mtud.state.as_ref().unwrap().suspicions;
                }
            }
        }
        assert!(
            declared <= 30,
            "{declared} black holes declared by the detector alone"
        );
        // Suspicions come from three agreeing bursts, more often than the detector alone
        // declared from four; none is confirmed.
        assert!((100..=400).contains(&suspicions), "{suspicions} suspicions");
        assert_eq!(
            confirmed, 0,
            "black holes declared after {suspicions} suspicions"
        );
    }

    // The path narrows at packet 1000: from then on every packet above 1300 bytes is lost, smaller
    // ones are delivered (with 1 % random loss on top). Packets alternate between full-size data
    // and small ones, as acknowledgments and control traffic do. The black hole is declared once
    // four large packets are lost, each between delivered small ones: within three ACKs of 16
    // packets.
    #[test]
    fn real_black_hole_is_detected() {
        let rand = uniform(7);
        let sizes: Vec<u16> = (0..2_000)
            .map(|pn| if pn % 2 == 0 { 1452 } else { 1250 })
            .collect();
        let delivered = |pn: u64| {
            let fits = pn < 1000 || sizes[pn as usize] <= 1300;
            fits && rand(pn) >= 0.01
        };
        for ack_every in [2, 16] {
            // (The harness keeps sending large packets, so it declares more after the first.)
            let declared = run_detector(1200, &sizes, delivered, ack_every);
            let declared = *declared.first().expect("black hole declared");
            assert!(
                (1000..1000 + 3 * 16).contains(&declared),
                "declared at {declared}, acks every {ack_every}"
            );
            // SloPN patch: confirmed by the large packets lost after the suspicion, within one
            // more ACK
            let confirmed = run(&mut mtud_at(1452), &sizes, delivered, ack_every);
            let confirmed = *confirmed.first().expect("black hole confirmed");
            assert!(
                (1000..1000 + 4 * 16).contains(&confirmed),
                "confirmed at {confirmed}, acks every {ack_every}"
            );
        }
    }

    // The same narrowing under bulk traffic: seven of eight packets full-size, one small. The
    // bursts come from the large packets lost between the small ones delivered: declared within
    // four ACKs of 16 packets.
    #[test]
    fn real_black_hole_under_bulk_traffic_is_detected() {
        let rand = uniform(7);
        let sizes: Vec<u16> = (0..2_000)
            .map(|pn| if pn % 8 == 0 { 1250 } else { 1452 })
            .collect();
        let delivered = |pn: u64| {
            let fits = pn < 1000 || sizes[pn as usize] <= 1300;
            fits && rand(pn) >= 0.01
        };
        for ack_every in [2, 16] {
            let declared = run_detector(1200, &sizes, delivered, ack_every);
            let declared = *declared.first().expect("black hole declared");
            assert!(
                (1000..1000 + 4 * 16).contains(&declared),
                "declared at {declared}, acks every {ack_every}"
            );
            let confirmed = run(&mut mtud_at(1452), &sizes, delivered, ack_every);
            let confirmed = *confirmed.first().expect("black hole confirmed");
            assert!(
                (1000..1000 + 5 * 16).contains(&confirmed),
                "confirmed at {confirmed}, acks every {ack_every}"
            );
        }
    }
}
