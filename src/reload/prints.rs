//! Fingerprints of each generation of the config: what a reload compares to decide serials and
//! to log what changed. Kept small: at a million apps, one hash per app.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use foldhash::quality::FixedState;
use hickory_proto::rr::{Name, RData};

#[cfg(test)]
use crate::config::Config;
use crate::config::{self, Audience};
use crate::snapshot::ZoneKey;

/// A zone whose serial the reloader manages; the owned form of [`ZoneKey`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum ZoneId {
    Space(String),
    Public(String),
    File(String, Name, Audience),
}

impl ZoneId {
    /// The space whose zone this is.
    pub(super) fn space(&self) -> &str {
        match self {
            ZoneId::Space(space) | ZoneId::Public(space) | ZoneId::File(space, ..) => space,
        }
    }

    pub(super) fn of(key: ZoneKey) -> ZoneId {
        match key {
            ZoneKey::Space(space) => ZoneId::Space(space.to_string()),
            ZoneKey::Public(space) => ZoneId::Public(space.to_string()),
            ZoneKey::File {
                space,
                apex,
                audience,
            } => ZoneId::File(space.to_string(), apex.clone(), audience),
        }
    }
}

/// Fingerprints of a config's parts, computed once per generation: what a reload compares to
/// decide serials and to log what changed. Kept small: at a million apps, one hash per app.
#[derive(Debug, Clone, Default)]
pub(super) struct Prints {
    /// Each zone's data, and the serial its files declare.
    pub(super) zones: HashMap<ZoneId, ZonePrint>,
    /// Each space, shared with the next generation while it does not change.
    pub(super) spaces: HashMap<String, Arc<SpacePrints>>,
}

/// One zone's fingerprint and declared serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ZonePrint {
    /// The zone's data, serial excluded.
    pub(super) data: u64,
    /// The serial its files give it: a zone file's SOA serial, a space's `serial`; `None`
    /// leaves it to the clock.
    pub(super) serial: Option<u32>,
}

/// One space's fingerprints.
#[derive(Debug, Clone, Default)]
pub(super) struct SpacePrints {
    /// The whole space, zones included.
    print: u64,
    /// Its app domain, which with the app names gives the app host names.
    domain: String,
    /// Each app by name.
    apps: HashMap<Box<str>, u64, FixedState>,
    /// The other names it serves: custom domains and zone-file owners.
    names: HashSet<String>,
}

impl SpacePrints {
    /// Every name served: app host names and the other names.
    pub(super) fn names(&self) -> HashSet<String> {
        let hosts = self.apps.keys().map(|a| format!("{a}.{}", self.domain));
        hosts.chain(self.names.iter().cloned()).collect()
    }
}

impl Prints {
    #[cfg(test)]
    pub(super) fn of(config: &Config) -> Prints {
        let mut p = Prints::default();
        for space in &config.spaces {
            p.add(space);
        }
        p
    }

    /// Takes the prints of the space `name` from `old`, for a space reused unchanged.
    pub(super) fn keep(&mut self, old: &Prints, name: &str) {
        if let Some(space) = old.spaces.get(name) {
            self.spaces.insert(name.to_string(), space.clone());
        }
        let zones = old.zones.iter().filter(|(id, _)| id.space() == name);
        self.zones
            .extend(zones.map(|(id, print)| (id.clone(), *print)));
    }

    /// Fingerprints `s`.
    pub(super) fn add(&mut self, s: &config::Space) {
        let apps: Vec<u64> = s.apps.iter().map(hash).collect();
        let mut names = HashSet::new();
        for a in &s.apps {
            names.extend(a.domains.iter().map(|d| d.to_string()));
        }
        let synthesized = fingerprint(&(
            &s.domain,
            &s.network,
            &s.peers,
            &s.router_private,
            &s.router_public,
            s.ttl,
            &s.nameservers,
            (s.unlisted, &s.upstreams),
        )) ^ hash(&apps);
        // What public askers see: standard apps and their domains, `router.public`, the
        // public identity. An internal deploy does not move this serial.
        let public = fingerprint(&(
            &s.domain,
            &s.router_public,
            s.ttl,
            &s.public_nameservers,
            &s.public_hostmaster,
        )) ^ hash(
            &(s.apps.iter())
                .filter(|a| !a.internal_routing)
                .map(|a| (&a.name, &a.domains))
                .collect::<Vec<_>>(),
        );
        let mut space = vec![synthesized, public];
        let print = |data, serial| ZonePrint { data, serial };
        self.zones
            .insert(ZoneId::Space(s.name.clone()), print(synthesized, s.serial));
        self.zones.insert(
            ZoneId::Public(s.name.clone()),
            print(public, s.public_serial),
        );
        for z in &s.zones {
            let (data, serial) = zone_print(z);
            space.push(data);
            let id = ZoneId::File(s.name.clone(), z.apex.clone(), z.audience);
            self.zones.insert(id, print(data, Some(serial)));
            names.extend(z.records.keys().map(|k| k.name.to_string()));
        }
        let prints = SpacePrints {
            print: hash(&space),
            domain: s.domain.to_string(),
            apps: (s.apps.iter().zip(apps))
                .map(|(a, print)| (a.name.as_str().into(), print))
                .collect(),
            names,
        };
        self.spaces.insert(s.name.clone(), Arc::new(prints));
    }
}

/// A zone file's data, its SOA serial left out, and that serial.
fn zone_print(zone: &config::Zone) -> (u64, u32) {
    let mut serial = 0;
    let mut data = DefaultHasher::new();
    for (key, set) in &zone.records {
        for record in set.records_without_rrsigs() {
            let mut record = record.clone();
            if let RData::SOA(soa) = &mut record.data {
                serial = std::mem::take(&mut soa.serial);
            }
            fingerprint(&(key, record)).hash(&mut data);
        }
    }
    (data.finish(), serial)
}

/// A hash of a value that is `Hash` (apps, a million of them): stable within the process.
fn hash(value: &impl Hash) -> u64 {
    FixedState::default().hash_one(value)
}

/// A hash of a value's `Debug` form: config types hold hickory records, which are not `Hash`.
fn fingerprint(value: &impl fmt::Debug) -> u64 {
    struct HashWriter(DefaultHasher);
    impl fmt::Write for HashWriter {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            s.hash(&mut self.0);
            Ok(())
        }
    }
    let mut w = HashWriter(DefaultHasher::new());
    let _ = write!(w, "{value:?}");
    w.0.finish()
}

/// What a reload changed: spaces, apps and names added, removed and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Spaces added, removed, changed.
    pub spaces: Delta,
    /// Apps (`space/app`) added, removed, changed.
    pub apps: Delta,
    /// Names served (app names, custom domains, zone-file owners) added and removed.
    pub names: Delta,
}

/// Items added, removed and changed, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Added.
    pub added: Vec<String>,
    /// Removed.
    pub removed: Vec<String>,
    /// Changed.
    pub changed: Vec<String>,
}

impl Delta {
    fn sort(mut self) -> Delta {
        self.added.sort();
        self.removed.sort();
        self.changed.sort();
        self
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl Changes {
    /// What differs between two generations; spaces whose print did not move are not looked
    /// into, so a reload that touched one space of a million apps compares only that one.
    pub(super) fn between(old: &Prints, new: &Prints) -> Changes {
        let empty = Arc::new(SpacePrints::default());
        let mut c = Changes::default();
        let spaces =
            (new.spaces.keys()).chain(old.spaces.keys().filter(|s| !new.spaces.contains_key(*s)));
        for name in spaces {
            let (before, after) = (old.spaces.get(name), new.spaces.get(name));
            match (before, after) {
                (Some(b), Some(a)) if b.print == a.print => continue,
                (Some(_), Some(_)) => c.spaces.changed.push(name.clone()),
                (None, _) => c.spaces.added.push(name.clone()),
                (_, None) => c.spaces.removed.push(name.clone()),
            }
            let (before, after) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
            for (app, print) in &after.apps {
                match before.apps.get(app) {
                    None => c.apps.added.push(format!("{name}/{app}")),
                    Some(p) if p != print => c.apps.changed.push(format!("{name}/{app}")),
                    Some(_) => {}
                }
            }
            let gone = before.apps.keys().filter(|a| !after.apps.contains_key(*a));
            c.apps
                .removed
                .extend(gone.map(|app| format!("{name}/{app}")));
            let (before, after) = (before.names(), after.names());
            c.names.added.extend(after.difference(&before).cloned());
            c.names.removed.extend(before.difference(&after).cloned());
        }
        Changes {
            spaces: c.spaces.sort(),
            apps: c.apps.sort(),
            names: c.names.sort(),
        }
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.spaces.is_empty() && self.apps.is_empty() && self.names.is_empty() {
            return f.write_str("no changes");
        }
        let mut first = true;
        for (what, d) in [
            ("spaces", &self.spaces),
            ("apps", &self.apps),
            ("names", &self.names),
        ] {
            if d.is_empty() {
                continue;
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{what}")?;
            for (sign, items) in [("+", &d.added), ("-", &d.removed), ("~", &d.changed)] {
                match items.len() {
                    0 => {}
                    1..=5 => write!(f, " {sign}{}", items.join(&format!(" {sign}")))?,
                    n => write!(f, " {sign}{n}")?,
                }
            }
        }
        Ok(())
    }
}
