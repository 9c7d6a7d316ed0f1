//! The SOA serials of every zone, from the fingerprints of each generation.
//!
//! A serial comes from the data when the data gives one: a zone file's SOA serial, a space
//! file's `serial` (and `public.serial`). Replicas built from the same files then serve the same
//! serials whenever they started, which a secondary following an anycast address needs. A zone
//! whose files give none takes the clock when its data changes (Knot's `serial-policy:
//! unixtime`): that is per process. In one process a zone's serial never goes back (RFC 1982):
//! data that changed under a serial that did not grow gets the old serial + 1, and a warning.

use std::collections::HashMap;
use std::fmt;

use super::prints::{Prints, ZoneId};
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, ZoneKey, serial_after};

/// The SOA serials of every zone.
#[derive(Debug, Clone, Default)]
pub(super) struct Serials {
    pub(super) zones: HashMap<ZoneId, u32>,
    /// The last serial taken from the clock.
    pub(super) last: u32,
}

impl Serials {
    /// Gives each zone of `new` its serial, given the fingerprints of the generation before and
    /// the time; returns a warning for each zone whose declared serial cannot be used.
    pub(super) fn assign(&mut self, old: &Prints, new: &Prints, now: u32) -> Vec<String> {
        let changed =
            |id: &ZoneId| old.zones.get(id).map(|p| p.data) != new.zones.get(id).map(|p| p.data);
        let clock_moves = (new.zones.iter()).any(|(id, p)| p.serial.is_none() && changed(id));
        let next = if clock_moves {
            now.max(self.last.wrapping_add(1))
        } else {
            self.last
        };
        let mut warnings = Vec::new();
        self.zones = (new.zones.iter())
            .map(|(id, print)| {
                let before = self.zones.get(id).copied();
                let wanted = match (print.serial, before) {
                    (Some(declared), _) => declared,
                    (None, Some(before)) if !changed(id) => before,
                    (None, _) => next,
                };
                let serial = match before {
                    None => wanted,
                    Some(before) if serial_after(wanted, before) => wanted,
                    Some(before) if changed(id) => {
                        let serial = before.wrapping_add(1);
                        if print.serial.is_some() {
                            warnings.push(format!(
                                "{}: the data changed but its serial {wanted} is not above \
                                 {before}; serving {serial} (raise the serial in the file, or \
                                 replicas and secondaries disagree)",
                                Zone(id)
                            ));
                        }
                        serial
                    }
                    Some(before) => {
                        if wanted != before {
                            warnings.push(format!(
                                "{}: serial {wanted} is below {before}, which stays (a serial \
                                 never goes back)",
                                Zone(id)
                            ));
                        }
                        before
                    }
                };
                (id.clone(), serial)
            })
            .collect();
        self.last = next;
        warnings
    }

    /// Sets the per-zone serial gauges: each zone's serial as askers see it in `snapshot`.
    pub(super) fn report(&self, metrics: &Metrics, snapshot: &Snapshot) {
        let index: HashMap<&str, usize> = (snapshot.spaces.iter().enumerate())
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        metrics.zone_serials(self.zones.iter().map(|(id, &serial)| {
            let serial = match id {
                ZoneId::Space(name) => {
                    (index.get(name.as_str())).map_or(serial, |&s| snapshot.app_domain_serial(s))
                }
                _ => serial,
            };
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

/// A zone as a warning names it.
struct Zone<'a>(&'a ZoneId);

impl fmt::Display for Zone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            ZoneId::Space(space) => write!(f, "space {space}: its synthesized zones (`serial`)"),
            ZoneId::Public(space) => {
                write!(f, "space {space}: its public view (`public.serial`)")
            }
            ZoneId::File(space, apex, _) => write!(f, "space {space}: zone {apex} (its SOA)"),
        }
    }
}
