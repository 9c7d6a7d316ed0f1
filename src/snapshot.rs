//! The compiled, immutable form of a [`Config`] that both servers answer from.
//!
//! `compile` does once, per reload, everything that does not depend on the query: names are
//! lower-cased and keyed, zone files become node tables with their empty non-terminals, access
//! rules become an [`Access`] table and allow bitmasks, and every apex we serve is indexed with
//! who may see it. Nothing here changes after `compile`; a reload builds a new Snapshot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::access::{Access, Member, Trust, Trusts};
use crate::config::{Audience, Config, Dyno};

/// The apex of DNS service discovery: `<process>.<app>.app.localspace.`.
pub const LOCALSPACE: &str = "app.localspace.";

/// Everything the DNS server and the router answer from.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Problems that did not stop the compile (a certificate whose key type rustls cannot use),
    /// for the reloader to log.
    pub warnings: Vec<String>,
    /// The spaces, sorted by name: a space's index is its rank.
    pub spaces: Vec<SpaceView>,
    /// Which spaces trust a source.
    pub access: Access,
    hosts: HashMap<Name, AppRef>,
    wildcards: HashMap<Name, AppRef>,
    apexes: HashMap<Name, Vec<Apex>>,
    localspace: Name,
}

/// A space, compiled.
#[derive(Debug)]
pub struct SpaceView {
    /// Its name.
    pub name: String,
    /// Its app domain.
    pub domain: Name,
    /// Internal router endpoints.
    pub router_private: Vec<IpAddr>,
    /// Public router endpoints.
    pub router_public: Vec<IpAddr>,
    /// TTL of synthesized records.
    pub ttl: u32,
    /// The SOA serial of the zones synthesized for this space (app domain, custom domains,
    /// service discovery).
    pub serial: u32,
    /// The apps.
    pub apps: Vec<AppView>,
    /// The zone files.
    pub zones: Vec<ZoneData>,
    /// NS records (with glue) of synthesized zones: (name, glue address).
    pub nameservers: Vec<(Name, Option<IpAddr>)>,
    hostmaster: Name,
    /// Service discovery names under `app.localspace.` and the dyno addresses they answer.
    discovery: HashMap<Name, Vec<IpAddr>>,
}

/// An app, compiled.
#[derive(Debug)]
pub struct AppView {
    /// Its name.
    pub name: String,
    /// `true` for an internal app.
    pub internal: bool,
    /// Bitmask of the peers allowed to see it; `None` for every peer.
    pub allow: Option<u64>,
    /// The `web` dynos, which the router forwards to.
    pub web: Vec<Dyno>,
    /// Where the router's round robin over `web` stands. The one mutable field of a snapshot:
    /// a counter, not answer data.
    pub next: AtomicUsize,
    /// The certificate for the app's custom domains.
    pub tls: Option<Arc<CertifiedKey>>,
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
    /// A custom domain (or a wildcard's base) that no zone file of its space holds.
    Custom(AppRef),
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
}

/// A zone whose SOA serial the caller chooses when compiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZoneKey<'a> {
    /// The zones synthesized for a space: its app domain, custom domains, service discovery.
    Space(&'a str),
    /// A zone file of a space.
    File {
        /// The space's name.
        space: &'a str,
        /// The zone's apex.
        apex: &'a Name,
        /// Who sees it.
        audience: Audience,
    },
}

/// Builds the snapshot of `config`; `serial` gives the SOA serial of each zone (a zone file's
/// own serial is replaced, as Knot's `serial-policy: unixtime` does).
pub fn compile(config: &Config, serial: impl Fn(ZoneKey) -> u32) -> Snapshot {
    let mut snapshot = Snapshot {
        localspace: name(LOCALSPACE),
        ..Snapshot::default()
    };
    let mut access = Vec::new();
    for (s, space) in config.spaces.iter().enumerate() {
        access.push((space.network, s, Member::Network));
        for (p, peer) in space.peers.iter().enumerate() {
            access.extend(peer.cidrs.iter().map(|&c| (c, s, Member::Peer(p))));
        }
        let domain_apexes = snapshot.apexes.entry(space.domain.clone()).or_default();
        if !domain_apexes.contains(&Apex::Domain) {
            domain_apexes.push(Apex::Domain);
        }
        let zones: Vec<ZoneData> = (space.zones.iter())
            .map(|zone| {
                let key = ZoneKey::File {
                    space: &space.name,
                    apex: &zone.apex,
                    audience: zone.audience,
                };
                compile_zone(zone, serial(key))
            })
            .collect();
        for (z, zone) in zones.iter().enumerate() {
            let apexes = snapshot.apexes.entry(zone.apex.clone()).or_default();
            apexes.push(Apex::File { space: s, zone: z });
        }

        let mut apps = Vec::new();
        let mut discovery: HashMap<Name, Vec<IpAddr>> = HashMap::new();
        for (a, app) in space.apps.iter().enumerate() {
            let app_ref = AppRef { space: s, app: a };
            if let Ok(host) =
                Name::from_ascii(&app.name).and_then(|n| n.append_domain(&space.domain))
            {
                snapshot.hosts.insert(host, app_ref);
            }
            for domain in &app.domains {
                let base = crate::config::validate::wildcard_base(domain);
                if domain.is_wildcard() {
                    snapshot.wildcards.insert(base.clone(), app_ref);
                } else {
                    snapshot.hosts.insert(domain.clone(), app_ref);
                }
                if !zones.iter().any(|z| z.apex.zone_of(&base)) {
                    snapshot
                        .apexes
                        .entry(base)
                        .or_default()
                        .push(Apex::Custom(app_ref));
                }
            }
            // Names are checked by validate, so these only fail on names no app can have.
            if let Ok(app_name) =
                Name::from_ascii(&app.name).and_then(|n| n.append_domain(&snapshot.localspace))
            {
                for dyno in &app.dynos {
                    let Ok(process) = app_name.prepend_label(dyno.process.as_str()) else {
                        continue;
                    };
                    if let Ok(one) = process.prepend_label(dyno.index.to_string().as_str()) {
                        discovery.entry(one).or_default().push(dyno.ip);
                    }
                    discovery.entry(process).or_default().push(dyno.ip);
                }
                discovery.entry(app_name).or_default();
            }
            let tls =
                app.tls
                    .as_ref()
                    .and_then(|tls| match certified_key(&tls.cert_pem, &tls.key_pem) {
                        Ok(key) => Some(Arc::new(key)),
                        Err(e) => {
                            let cert = tls.cert.display();
                            snapshot.warnings.push(format!(
                                "{cert}: app {} gets the default certificate: {e}",
                                app.name
                            ));
                            None
                        }
                    });
            apps.push(AppView {
                name: app.name.clone(),
                next: AtomicUsize::new(0),
                tls,
                internal: app.internal_routing,
                allow: app
                    .allow
                    .as_ref()
                    .map(|peers| peers.iter().fold(0, |m, p| m | 1 << p)),
                web: app
                    .dynos
                    .iter()
                    .filter(|d| d.process == "web")
                    .cloned()
                    .collect(),
            });
        }
        let hostmaster =
            Name::from_ascii(format!("hostmaster.{}.spaceroute.internal.", space.name))
                .unwrap_or_else(|_| Name::root());
        snapshot.spaces.push(SpaceView {
            name: space.name.clone(),
            domain: space.domain.clone(),
            router_private: space.router_private.clone(),
            router_public: space.router_public.clone(),
            ttl: space.ttl,
            serial: serial(ZoneKey::Space(&space.name)),
            apps,
            zones,
            nameservers: space
                .nameservers
                .iter()
                .map(|n| (n.name.clone(), n.ip))
                .collect(),
            hostmaster,
            discovery,
        });
    }
    snapshot
        .apexes
        .insert(snapshot.localspace.clone(), vec![Apex::Localspace]);
    snapshot.access = Access::new(access);
    snapshot
}

/// The certificate chain and signing key of a PEM certificate chain and private key.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if chain.is_empty() {
        return Err("no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| e.to_string())?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(chain, key))
}

fn compile_zone(zone: &crate::config::Zone, serial: u32) -> ZoneData {
    let mut nodes: HashMap<Name, Vec<Rrset>> = HashMap::new();
    let mut has_cuts = false;
    for (key, set) in &zone.records {
        let owner: Name = Name::from(&key.name).to_lowercase();
        has_cuts |= key.record_type == RecordType::NS && owner != zone.apex;
        let mut up = owner.base_name();
        while zone.apex.zone_of(&up)
            && up.num_labels() >= zone.apex.num_labels()
            && !nodes.contains_key(&up)
        {
            nodes.insert(up.clone(), Vec::new());
            if up.is_root() {
                break;
            }
            up = up.base_name();
        }
        let mut records: Vec<Record> = set.records_without_rrsigs().cloned().collect();
        for record in &mut records {
            if let RData::SOA(soa) = &mut record.data {
                soa.serial = serial;
            }
        }
        nodes.entry(owner).or_default().push(Rrset {
            rtype: key.record_type,
            records,
        });
    }
    ZoneData {
        apex: zone.apex.clone(),
        audience: zone.audience,
        nodes,
        has_cuts,
    }
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap_or_else(|_| Name::root())
}

impl Snapshot {
    /// The app that answers for the lower-case host name `host`: an app name under its domain,
    /// an exact custom domain or, failing those, the closest wildcard custom domain.
    pub fn host(&self, host: &Name) -> Option<AppRef> {
        if let Some(app) = self.hosts.get(host) {
            return Some(*app);
        }
        let mut up = host.base_name();
        while !up.is_root() {
            if let Some(app) = self.wildcards.get(&up) {
                return Some(*app);
            }
            up = up.base_name();
        }
        None
    }

    /// The app a request from `client` for the lower-case `host` goes to: the DNS rules, so a
    /// public source reaches only standard apps and a trusted one what it could resolve.
    /// `None` is "no such app", the same for a name that exists and one that does not.
    pub fn route(&self, client: IpAddr, host: &Name) -> Option<AppRef> {
        let app = self.host(host)?;
        let trusts = self.access.classify(client);
        self.addresses(app, &trusts).map(|_| app)
    }

    /// The app behind `app`.
    pub fn app(&self, app: AppRef) -> &AppView {
        &self.spaces[app.space].apps[app.app]
    }

    /// The addresses `app` resolves to for an asker with `trusts`, or `None` when the asker may
    /// not see it at all (the "Who sees what" table of DESIGN.md).
    pub fn addresses(&self, app: AppRef, trusts: &Trusts) -> Option<&[IpAddr]> {
        let view = self.app(app);
        let space = &self.spaces[app.space];
        match trusts.iter().find(|t| t.space == app.space) {
            Some(_) if !view.internal && space.router_private.is_empty() => {
                Some(&space.router_public)
            }
            Some(_) if !view.internal => Some(&space.router_private),
            Some(t) if allowed(view, t) => Some(&space.router_private),
            Some(_) => None,
            None if !view.internal => Some(&space.router_public),
            None => None,
        }
    }

    /// The zone that holds the lower-case `qname` for an asker with `trusts`: the longest apex
    /// the asker may see. `None` means we serve no zone for that name to that asker.
    pub fn zone(&self, qname: &Name, trusts: &Trusts) -> Option<ZoneView<'_>> {
        let mut candidate = qname.clone();
        loop {
            if let Some((apex, apexes)) = self.apexes.get_key_value(&candidate)
                && let Some((kind, space)) = self.visible(apex, apexes, trusts)
            {
                return Some(ZoneView { apex, kind, space });
            }
            if candidate.is_root() {
                return None;
            }
            candidate = candidate.base_name();
        }
    }

    /// The most specific of `apexes` (all at `apex`) that the asker may see, and whose data
    /// answers: a trusted zone file of a trusting space, an app's own apex, the app domain, service
    /// discovery, then a public zone file.
    fn visible(&self, apex: &Name, apexes: &[Apex], trusts: &Trusts) -> Option<(Apex, usize)> {
        let trusted = |space| trusts.iter().any(|t: &Trust| t.space == space);
        let audience = |space: usize, zone: usize| self.spaces[space].zones[zone].audience;
        let pick = |want: &dyn Fn(&Apex) -> Option<usize>| {
            apexes
                .iter()
                .filter_map(|a| want(a).map(|s| (*a, s)))
                .min_by_key(|(_, s)| *s)
        };
        pick(&|a| match *a {
            Apex::File { space, zone }
                if trusted(space) && audience(space, zone) == Audience::Trusted =>
            {
                Some(space)
            }
            _ => None,
        })
        .or_else(|| {
            pick(&|a| match *a {
                Apex::Custom(app) if self.addresses(app, trusts).is_some() => Some(app.space),
                _ => None,
            })
        })
        .or_else(|| {
            pick(&|a| match a {
                Apex::Domain => trusts
                    .iter()
                    .find(|t| &self.spaces[t.space].domain == apex)
                    .map(|t| t.space),
                _ => None,
            })
        })
        .or_else(|| {
            pick(&|a| match a {
                Apex::Localspace => trusts.iter().find(|t| t.network).map(|t| t.space),
                _ => None,
            })
        })
        .or_else(|| {
            pick(&|a| match *a {
                Apex::File { space, zone } if audience(space, zone) == Audience::Public => {
                    Some(space)
                }
                _ => None,
            })
        })
    }

    /// The zone file data behind a [`ZoneView`] of kind [`Apex::File`].
    pub fn zone_data(&self, view: &ZoneView) -> Option<&ZoneData> {
        match view.kind {
            Apex::File { space, zone } => self.spaces.get(space)?.zones.get(zone),
            _ => None,
        }
    }

    /// The SOA record of a zone; synthesized from the space for all but zone files.
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
        let mname = space
            .nameservers
            .first()
            .map_or_else(Name::root, |(n, _)| n.clone());
        let soa = SOA::new(
            mname,
            space.hostmaster.clone(),
            space.serial,
            3600,
            600,
            604_800,
            space.ttl,
        );
        Some(Record::from_rdata(
            view.apex.clone(),
            space.ttl,
            RData::SOA(soa),
        ))
    }

    /// The apex NS records of a synthesized zone, and their glue.
    pub fn synthesized_ns(&self, view: &ZoneView) -> (Vec<Record>, Vec<Record>) {
        let space = &self.spaces[view.space];
        let ns = (space.nameservers.iter())
            .map(|(n, _)| {
                Record::from_rdata(view.apex.clone(), space.ttl, RData::NS(NS(n.clone())))
            })
            .collect();
        let glue = (space.nameservers.iter())
            .filter_map(|(n, ip)| ip.map(|ip| address_record(n.clone(), space.ttl, ip)))
            .collect();
        (ns, glue)
    }

    /// The dyno addresses of a service discovery name in `space`; `Some(empty)` for `<app>.app.localspace.`.
    pub fn discovery(&self, space: usize, qname: &Name) -> Option<&[IpAddr]> {
        self.spaces
            .get(space)?
            .discovery
            .get(qname)
            .map(Vec::as_slice)
    }
}

/// Whether `trust` (a trusting space's view of the asker) may see the internal app `app`.
fn allowed(app: &AppView, trust: &Trust) -> bool {
    trust.network || app.allow.is_none_or(|mask| mask & trust.peers != 0)
}

/// An A or AAAA record.
pub fn address_record(owner: Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(ip) => RData::A(A(ip)),
        IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
    };
    Record::from_rdata(owner, ttl, data)
}
