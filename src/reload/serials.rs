//! The SOA serials of every zone, from the fingerprints of each generation.

use std::collections::HashMap;

use super::prints::{Prints, ZoneId};
use crate::metrics::Metrics;
use crate::snapshot::ZoneKey;

/// The SOA serials of every zone: derived from the clock, bumped only for zones whose data
/// changed, and never going back (the next serial is max(now, last + 1)).
#[derive(Debug, Clone, Default)]
pub(super) struct Serials {
    pub(super) zones: HashMap<ZoneId, u32>,
    /// The last serial given out.
    pub(super) last: u32,
}

impl Serials {
    /// Gives each zone of `new` its serial, given the fingerprints of the generation before.
    pub(super) fn assign(&mut self, old: &Prints, new: &Prints, now: u32) {
        let changed = |id: &ZoneId, print: &u64| old.zones.get(id) != Some(print);
        let next = if new.zones.iter().any(|(id, p)| changed(id, p)) {
            now.max(self.last.wrapping_add(1))
        } else {
            self.last
        };
        self.zones = (new.zones.iter())
            .map(|(id, print)| match self.zones.get(id) {
                Some(&serial) if !changed(id, print) => (id.clone(), serial),
                _ => (id.clone(), next),
            })
            .collect();
        self.last = next;
    }

    /// Sets the per-zone serial gauges.
    pub(super) fn report(&self, metrics: &Metrics) {
        metrics.zone_serials(self.zones.iter().map(|(id, &serial)| {
            let zone = match id {
                ZoneId::Space(_) => "app domain (trusted)".to_string(),
                ZoneId::Public(_) => "app domain (public)".to_string(),
                ZoneId::File(_, apex, audience) => format!("{apex} ({audience:?})").to_lowercase(),
            };
            (id.space(), zone, serial)
        }));
    }

    pub(super) fn get(&self, key: ZoneKey) -> u32 {
        self.zones
            .get(&ZoneId::of(key))
            .copied()
            .unwrap_or(self.last)
    }
}
