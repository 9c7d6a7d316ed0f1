//! The compiled, immutable form of a [`Config`](crate::config::Config) that both servers answer
//! from.
//!
//! [`compile`] does once, per reload, everything that does not depend on the query: names are
//! lower-cased and keyed, zone files become node tables with their empty non-terminals, access
//! rules become an [`Access`] table and allow bitmasks, and every apex we serve is indexed with
//! who may see it. [`policy`] is the one place that decides what a source sees at a name, for
//! DNS, routing and certificate choice alike. Nothing here changes after `compile`.

mod compile;
pub mod policy;

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::IpNet;
use rustls::sign::CertifiedKey;

use crate::access::Access;
use crate::config::Audience;

/// What trusted askers get for unlisted names under an app domain (the config's word for it).
pub use crate::config::Policy;
/// The secondaries of a space and their keys, as zone transfers and NOTIFY use them.
pub use crate::config::{Secondary, TsigAlgorithm, TsigKey, XfrAudience};

pub use compile::{ZoneKey, assemble, certified_key, compile, compile_space};
pub use policy::Sight;

/// The apex of DNS service discovery: `<process>.<app>.app.localspace.`.
pub const LOCALSPACE: &str = "app.localspace.";

/// Everything the DNS server and the router answer from.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// A number no other snapshot of this process has (0 for an empty default one): what a
    /// cache of results computed from one snapshot is keyed by.
    pub id: u64,
    /// Problems that did not stop the compile (a certificate whose key type rustls cannot use),
    /// for the reloader to log.
    pub warnings: Vec<String>,
    /// The spaces, sorted by name: a space's index is its rank. Shared with the reloader,
    /// which keeps each space while its file does not change.
    pub spaces: Vec<Arc<SpaceView>>,
    /// Which spaces trust a source.
    pub access: Access,
    /// App names and exact custom domains, keyed by their lower-case wire form ([`wire`]) so
    /// that a query's name is looked up as it arrives, with a fast seeded hash.
    hosts: Hosts,
    /// Wildcard custom domains, keyed by the name below which they answer (`*.x` under `x`).
    wildcards: HashMap<Name, AppRef>,
    /// Empty non-terminals made by custom domains (`b.example` for `a.b.example`), with the
    /// apps below them: they exist only for askers who may see one of those apps.
    ents: HashMap<Name, Vec<AppRef>>,
    apexes: HashMap<Name, Vec<Apex>>,
    /// For each app domain, the sum (RFC 1982 arithmetic) of the public serials of the spaces
    /// on it: see [`Snapshot::soa`].
    domain_public_serials: HashMap<Name, u32>,
    /// Every apex we serve (lower-case wire form), and whether it is an app domain and nothing
    /// else (no zone file or custom domain shares it).
    apex_keys: HashMap<Box<[u8]>, bool, foldhash::fast::RandomState>,
    /// Names at or below which a public asker may get an answer (lower-case wire form).
    public: HashSet<Box<[u8]>, foldhash::fast::RandomState>,
    localspace: Name,
}

/// A space, compiled.
#[derive(Debug)]
pub struct SpaceView {
    /// Its name.
    pub name: String,
    /// Its app domain.
    pub domain: Name,
    /// Its own network.
    pub network: IpNet,
    /// The networks of each of its peers.
    pub peers: Vec<Vec<IpNet>>,
    /// The names of its peers, in the same order.
    pub peer_names: Vec<String>,
    /// How metrics name its audiences: the space itself (its network), then `space/peer` for
    /// each peer.
    pub audiences: Vec<Box<str>>,
    /// Internal router endpoints.
    pub router_private: Vec<IpAddr>,
    /// Public router endpoints.
    pub router_public: Vec<IpAddr>,
    /// TTL of synthesized records.
    pub ttl: u32,
    /// The SOA serial of the zones synthesized for this space (app domain, custom domains,
    /// service discovery) as trusted askers see them.
    pub serial: u32,
    /// The SOA serial of the same zones as public askers see them: it moves only with public
    /// data (standard apps, `router.public`, the public identity).
    pub public_serial: u32,
    /// The apps.
    pub apps: Vec<AppView>,
    /// The zone files.
    pub zones: Vec<ZoneData>,
    /// NS records (with glue) of synthesized zones: (name, glue address).
    pub nameservers: Vec<(Name, Option<IpAddr>)>,
    /// The NS that public askers see.
    pub public_nameservers: Vec<(Name, Option<IpAddr>)>,
    /// The RNAME of public SOAs; `hostmaster.<apex>` when `None`.
    pub public_hostmaster: Option<Name>,
    /// What trusted askers get for names under `domain` that no space lists.
    pub unlisted: Policy,
    /// Where [`Policy::Forward`] relays to.
    pub upstreams: Vec<SocketAddr>,
    hostmaster: Name,
    /// Every dyno of every app, an app's in one run with its web dynos first.
    pub dynos: Vec<Endpoint>,
    /// The process types of the dynos, `web` first: [`Endpoint`] holds an index.
    processes: Vec<Box<str>>,
    /// Problems that did not stop the compile (a certificate whose key type rustls cannot use).
    pub warnings: Vec<String>,
    /// The secondaries that replicate its views by zone transfer.
    pub secondaries: Vec<Secondary>,
}

impl SpaceView {
    /// The metrics name of the audience of a source that this space trusts as `member`.
    pub fn audience(&self, member: crate::access::Member) -> &str {
        let at = match member {
            crate::access::Member::Network => 0,
            crate::access::Member::Peer(i) => i + 1,
        };
        self.audiences.get(at).map_or(&*self.name, |a| a)
    }

    /// Every dyno of `app`, its web dynos first.
    pub fn dynos(&self, app: &AppView) -> &[Endpoint] {
        let (start, end) = (app.dynos.0 as usize, app.dynos.2 as usize);
        self.dynos.get(start..end).unwrap_or(&[])
    }

    /// The web dynos of `app`, which the router forwards to.
    pub fn web(&self, app: &AppView) -> &[Endpoint] {
        let (start, end) = (app.dynos.0 as usize, app.dynos.1 as usize);
        self.dynos.get(start..end).unwrap_or(&[])
    }

    /// The process type of a dyno, e.g. `web`.
    pub fn process(&self, dyno: &Endpoint) -> &str {
        self.processes
            .get(usize::from(dyno.process))
            .map_or("", |p| p)
    }
}

/// An app, compiled. Its dynos are a run of its space's [`SpaceView::dynos`], so that a million
/// apps cost no allocation each beyond their name.
#[derive(Debug)]
pub struct AppView {
    /// Its name.
    pub name: Box<str>,
    /// `true` for an internal app.
    pub internal: bool,
    /// Bitmask of the peers allowed to see it; `None` for every peer.
    pub allow: Option<u64>,
    /// Its custom domains, lower-case; wildcards keep their `*` label.
    pub domains: Box<[Name]>,
    /// Its run of the space's dynos: (start, end of the web dynos, end).
    dynos: (u32, u32, u32),
    /// The certificate for the app's custom domains.
    pub tls: Option<Arc<CertifiedKey>>,
}

/// A dyno, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Private address.
    pub ip: IpAddr,
    /// Port, if it listens.
    pub port: Option<u16>,
    /// Its number within its process type.
    pub index: u32,
    /// Its process type, an index into the space's process names.
    process: u16,
}

/// App names and exact custom domains by lower-case wire name: the names one after another in
/// one buffer and a table of (offset, app), instead of an allocation per name.
#[derive(Debug, Default)]
pub struct Hosts {
    names: Vec<u8>,
    table: hashbrown::HashTable<(u32, AppRef)>,
    hasher: foldhash::fast::RandomState,
}

impl Hosts {
    /// The wire name at `offset` of the buffer.
    fn name_at(names: &[u8], offset: u32) -> &[u8] {
        let start = offset as usize;
        let mut end = start;
        while let Some(&len) = names.get(end) {
            end += usize::from(len) + 1;
            if len == 0 {
                break;
            }
        }
        names.get(start..end).unwrap_or(&[])
    }

    /// Makes room for `additional` more names.
    fn reserve(&mut self, additional: usize) {
        let (names, hasher) = (&self.names, &self.hasher);
        (self.table).reserve(additional, |&(at, _)| {
            hasher.hash_one(Self::name_at(names, at))
        });
        self.names.reserve(additional * 24);
    }

    fn get(&self, key: &[u8]) -> Option<AppRef> {
        let hash = self.hasher.hash_one(key);
        let found = (self.table).find(hash, |&(at, _)| Self::name_at(&self.names, at) == key);
        found.map(|&(_, app)| app)
    }

    /// Sets the app of `key`, a lower-case wire name.
    fn insert(&mut self, key: &[u8], app: AppRef) {
        let hash = self.hasher.hash_one(key);
        let names = &self.names;
        match (self.table).find_mut(hash, |&(at, _)| Self::name_at(names, at) == key) {
            Some(entry) => entry.1 = app,
            None => {
                let at = self.names.len() as u32;
                self.names.extend_from_slice(key);
                let (names, hasher) = (&self.names, &self.hasher);
                (self.table).insert_unique(hash, (at, app), |&(at, _)| {
                    hasher.hash_one(Self::name_at(names, at))
                });
            }
        }
    }
}

/// A reference to an app: (space index, app index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppRef {
    /// The space's index.
    pub space: usize,
    /// The app's index within the space.
    pub app: usize,
}

/// A zone file's data, compiled into nodes.
#[derive(Debug)]
pub struct ZoneData {
    /// The zone file.
    pub file: PathBuf,
    /// The apex.
    pub apex: Name,
    /// Who sees it.
    pub audience: Audience,
    /// Every name of the zone, including empty non-terminals (with no rrsets), keyed lower-case.
    pub nodes: HashMap<Name, Vec<Rrset>>,
    /// Whether any NS rrset sits below the apex (a delegation), so lookups must look for cuts.
    pub has_cuts: bool,
}

/// The records of one name and type.
#[derive(Debug, Clone)]
pub struct Rrset {
    /// The type.
    pub rtype: RecordType,
    /// The records, with the owner name as written in the zone file.
    pub records: Vec<Record>,
}

/// A zone apex we serve, and whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apex {
    /// A zone file of a space.
    File {
        /// The space.
        space: usize,
        /// Index in the space's zones.
        zone: usize,
    },
    /// A custom domain (or a wildcard's base) that no zone file of its space holds for some of
    /// the askers who may see the app.
    Custom {
        /// The app.
        app: AppRef,
        /// Only askers its space does not trust see this apex (a standard app's domain inside
        /// a zone file that only trusted askers see).
        public: bool,
    },
    /// An app domain, shared by the spaces that use it (ascending).
    Domain,
    /// `app.localspace.`, service discovery.
    Localspace,
}

/// A zone as one asker sees it: which apex and whose data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneView<'s> {
    /// The zone's apex name.
    pub apex: &'s Name,
    /// What kind of zone it is.
    pub kind: Apex,
    /// The space whose data (and SOA) answers.
    pub space: usize,
    /// The asker is not trusted by `space`: a synthesized zone shows its public identity.
    pub public: bool,
}

impl Snapshot {
    /// The app whose wildcard custom domain answers below `base` (`*.x` for `x`).
    pub fn wildcard(&self, base: &Name) -> Option<AppRef> {
        self.wildcards.get(base).copied()
    }

    /// The app whose name or exact custom domain is `key`, a lower-case wire-format name.
    pub fn exact_host(&self, key: &[u8]) -> Option<AppRef> {
        self.hosts.get(key)
    }

    /// Whether an asker that no space trusts may get anything but REFUSED at `key` (a
    /// lower-case wire-format name): whether `key` or one of its ancestors is a name public
    /// askers may see (a public zone file, a standard app). Ancestors are suffixes of the same
    /// buffer, so this allocates nothing.
    pub fn public_may_see(&self, key: &[u8]) -> bool {
        let mut at = 0;
        while let Some(&label) = key.get(at) {
            if self.public.contains(&key[at..]) {
                return true;
            }
            if label == 0 {
                return false;
            }
            at += usize::from(label) + 1;
        }
        false
    }

    /// The closest apex at or above `key` (a lower-case wire-format name): its offset in `key`
    /// and whether it is only an app domain. Ancestors are suffixes of the same buffer.
    pub fn closest_apex(&self, key: &[u8]) -> Option<(usize, bool)> {
        let mut at = 0;
        loop {
            if let Some(&domain_only) = self.apex_keys.get(&key[at..]) {
                return Some((at, domain_only));
            }
            match key.get(at)? {
                0 => return None,
                &label => at += usize::from(label) + 1,
            }
        }
    }

    /// The app behind `app`.
    pub fn app(&self, app: AppRef) -> &AppView {
        &self.spaces[app.space].apps[app.app]
    }

    /// The zone file data behind a [`ZoneView`] of kind [`Apex::File`].
    pub fn zone_data(&self, view: &ZoneView) -> Option<&ZoneData> {
        match view.kind {
            Apex::File { space, zone } => self.spaces.get(space)?.zones.get(zone),
            _ => None,
        }
    }

    /// The SOA record of a zone: the file's own, or synthesized from the space's private or
    /// public identity.
    pub fn soa(&self, view: &ZoneView) -> Option<Record> {
        if let Some(data) = self.zone_data(view) {
            let rrsets = data.nodes.get(&data.apex)?;
            return rrsets
                .iter()
                .find(|r| r.rtype == RecordType::SOA)?
                .records
                .first()
                .cloned();
        }
        let space = &self.spaces[view.space];
        let (mname, rname, serial) = if view.public {
            let rname = (space.public_hostmaster.clone())
                .or_else(|| view.apex.prepend_label("hostmaster").ok())
                .unwrap_or_else(Name::root);
            let mname = (space.public_nameservers.first())
                .map_or_else(|| view.apex.clone(), |(n, _)| n.clone());
            (mname, rname, space.public_serial)
        } else {
            let mname = (space.nameservers.first()).map_or_else(Name::root, |(n, _)| n.clone());
            let serial = match view.kind {
                Apex::Domain => self.app_domain_serial(view.space),
                _ => space.serial,
            };
            (mname, space.hostmaster.clone(), serial)
        };
        // Refresh 4 h, retry 1 h, expire 1 week: the values RFC 1912 §2.2 and Zonemaster ask for.
        let soa = SOA::new(mname, rname, serial, 14_400, 3600, 604_800, space.ttl);
        Some(Record::from_rdata(
            view.apex.clone(),
            space.ttl,
            RData::SOA(soa),
        ))
    }

    /// The serial of the app domain as the askers that space `space` trusts see it. The app
    /// domain is shared: they see that space's data and the public data of every other space
    /// on it (their standard apps). So its serial is the space's serial plus the others'
    /// public serials (RFC 1982 arithmetic), which moves whenever any of that moves; with one
    /// space on the domain, the space's own serial. (A source trusted by several spaces sees
    /// the first one's: another trusting space's private changes do not move it.)
    pub fn app_domain_serial(&self, space: usize) -> u32 {
        let Some(view) = self.spaces.get(space) else {
            return 0;
        };
        (self.domain_public_serials.get(&view.domain)).map_or(view.serial, |sum| {
            view.serial
                .wrapping_add(*sum)
                .wrapping_sub(view.public_serial)
        })
    }

    /// The nameservers a synthesized zone shows: the public ones to public askers.
    pub fn nameservers(&self, view: &ZoneView) -> &[(Name, Option<IpAddr>)] {
        let space = &self.spaces[view.space];
        match view.public {
            true => &space.public_nameservers,
            false => &space.nameservers,
        }
    }

    /// The apex NS records of a synthesized zone, and the addresses of those nameservers that
    /// this zone itself answers (in-bailiwick, RFC 9471): never an address of a name we would
    /// not answer when asked directly.
    pub fn synthesized_ns(&self, view: &ZoneView) -> (Vec<Record>, Vec<Record>) {
        let space = &self.spaces[view.space];
        let nameservers = self.nameservers(view);
        let ns = (nameservers.iter())
            .map(|(n, _)| {
                Record::from_rdata(view.apex.clone(), space.ttl, RData::NS(NS(n.clone())))
            })
            .collect();
        let glue = (nameservers.iter())
            .filter(|(n, _)| view.apex.zone_of(n))
            .filter_map(|(n, ip)| ip.map(|ip| address_record(n.clone(), space.ttl, ip)))
            .collect();
        (ns, glue)
    }

    /// The dyno addresses of the lower-case service discovery name `qname` in `space`:
    /// `<app>.app.localspace.` exists with none, `<process>.<app>.…` has every dyno of that
    /// process, `<n>.<process>.<app>.…` the one dyno; `None` for a name that does not exist.
    pub fn discovery(&self, index: usize, qname: &Name) -> Option<Vec<IpAddr>> {
        let space = self.spaces.get(index)?;
        if !self.localspace.zone_of(qname) {
            return None;
        }
        let labels: Vec<&[u8]> = qname.iter().collect();
        let below = labels
            .len()
            .checked_sub(self.localspace.num_labels() as usize)?;
        // The app is found by its host name, `<app>.<the space's app domain>`.
        let app_name = labels.get(below.checked_sub(1)?)?;
        let mut host = Vec::with_capacity(app_name.len() + 1 + space.domain.len() + 2);
        host.push(app_name.len() as u8);
        host.extend_from_slice(app_name);
        host.extend_from_slice(&wire(&space.domain));
        let app = self.exact_host(&host).filter(|a| a.space == index)?;
        let dynos = space.dynos(self.app(app)).iter();
        let process = |d: &&Endpoint| space.process(d).as_bytes() == labels[below - 2];
        match below {
            1 => Some(Vec::new()),
            2 => {
                let ips: Vec<IpAddr> = dynos.filter(process).map(|d| d.ip).collect();
                (!ips.is_empty()).then_some(ips)
            }
            3 => dynos
                .filter(process)
                .find(|d| d.index.to_string().as_bytes() == labels[0])
                .map(|d| vec![d.ip]),
            _ => None,
        }
    }
}

/// Whether SOA serial `a` is after `b` in serial number arithmetic (RFC 1982 §3.2).
pub fn serial_after(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

/// Whether `name` is the lower-case wire-format name `key` (compared without case).
pub fn is_wire(name: &Name, key: &[u8]) -> bool {
    let mut at = 0;
    for label in name.iter() {
        let Some(&[len, ref rest @ ..]) = key.get(at..) else {
            return false;
        };
        if usize::from(len) != label.len()
            || !rest
                .get(..label.len())
                .is_some_and(|k| k.eq_ignore_ascii_case(label))
        {
            return false;
        }
        at += label.len() + 1;
    }
    key.get(at..) == Some(&[0][..])
}

/// `name` in lower-case wire format (length-prefixed labels, then 0): the key of app names.
pub fn wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// An A or AAAA record.
pub fn address_record(owner: Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(ip) => RData::A(A(ip)),
        IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
    };
    Record::from_rdata(owner, ttl, data)
}
