//! Events held back from an assignment on until the OS has its routes and DNS: whoever
//! follows a spoke's events (the status, the GUI, a script) learns that the tunnel is up
//! only when nothing leaves around it any more.

/// Events waiting for an assignment to be routed, in order.
#[derive(Debug)]
pub(crate) struct HeldEvents<E> {
    held: Vec<E>,
}

impl<E> Default for HeldEvents<E> {
    fn default() -> Self {
        Self { held: Vec::new() }
    }
}

impl<E> HeldEvents<E> {
    /// Takes `event` in if it must wait: it starts an assignment that is not routed yet
    /// (`starts_assignment`), or earlier events wait (their order is kept). Otherwise gives
    /// it back to be handed on now.
    pub(crate) fn hold(&mut self, event: E, starts_assignment: bool) -> Option<E> {
        if starts_assignment || !self.held.is_empty() {
            self.held.push(event);
            None
        } else {
            Some(event)
        }
    }

    /// The held events, oldest first, once `routed` (or the loop ends: `ending`); none
    /// before.
    pub(crate) fn release(&mut self, routed: bool, ending: bool) -> Vec<E> {
        if routed || ending {
            std::mem::take(&mut self.held)
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_from_an_assignment_wait_for_its_routes_in_order() {
        let mut held = HeldEvents::default();
        assert_eq!(held.hold("connected", false), Some("connected"));
        assert_eq!(held.hold("assigned", true), None);
        assert_eq!(
            held.hold("dns_changed", false),
            None,
            "behind the assignment"
        );
        assert!(held.release(false, false).is_empty(), "not routed yet");
        assert_eq!(held.release(true, false), ["assigned", "dns_changed"]);
        assert_eq!(held.hold("mtu_changed", false), Some("mtu_changed"));
        // A loop that ends before the routes are in still hands everything on.
        assert_eq!(held.hold("assigned", true), None);
        assert_eq!(held.release(false, true), ["assigned"]);
        assert!(held.release(true, true).is_empty());
    }
}
