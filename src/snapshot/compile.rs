//! Builds a [`Snapshot`] from a checked [`Config`]: one pass over the spaces, then the indexes
//! that need every space (apexes first, then the empty non-terminals they bound).

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;
use std::sync::Arc;

use hickory_proto::rr::{Name, RData, Record, RecordType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{
    Apex, AppRef, AppView, Endpoint, LOCALSPACE, Rrset, Snapshot, SpaceView, ZoneData, wire,
};
use crate::access::{Access, Member};
use crate::config::{Audience, Config, Space};

/// A zone whose SOA serial the caller chooses when compiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZoneKey<'a> {
    /// The zones synthesized for a space: its app domain, custom domains, service discovery.
    Space(&'a str),
    /// The same zones as public askers see them.
    Public(&'a str),
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
    let spaces = (config.spaces.iter())
        .map(|space| Arc::new(compile_space(space, &serial)))
        .collect();
    assemble(spaces)
}

/// Compiles one space on its own: what the reloader keeps per space file and reuses while the
/// file does not change. [`assemble`] builds the indexes that need every space.
pub fn compile_space(space: &Space, serial: impl Fn(ZoneKey) -> u32) -> SpaceView {
    let mut warnings = Vec::new();
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
    let mut apps = Vec::with_capacity(space.apps.len());
    let mut dynos = Vec::new();
    let mut processes: Vec<Box<str>> = vec!["web".into()];
    for app in &space.apps {
        let tls =
            app.tls
                .as_ref()
                .and_then(|tls| match certified_key(&tls.cert_pem, &tls.key_pem) {
                    Ok(key) => Some(Arc::new(key)),
                    Err(e) => {
                        let cert = tls.cert.display();
                        let app = &app.name;
                        warnings.push(format!(
                            "{cert}: app {app}'s certificate cannot be used ({e}); it gets the \
                             default certificate"
                        ));
                        None
                    }
                });
        let start = dynos.len() as u32;
        let web = (app.dynos.iter()).filter(|d| d.process == "web");
        let others = (app.dynos.iter()).filter(|d| d.process != "web");
        for dyno in web.chain(others) {
            let process = match processes.iter().position(|p| **p == *dyno.process) {
                Some(p) => p,
                None => {
                    processes.push(dyno.process.as_str().into());
                    processes.len() - 1
                }
            };
            dynos.push(Endpoint {
                ip: dyno.ip,
                port: dyno.port,
                index: dyno.index,
                process: process as u16,
            });
        }
        let web = start + app.dynos.iter().filter(|d| d.process == "web").count() as u32;
        apps.push(AppView {
            name: app.name.as_str().into(),
            tls,
            internal: app.internal_routing,
            allow: app
                .allow
                .as_ref()
                .map(|peers| peers.iter().fold(0, |m, p| m | 1 << p)),
            domains: app.domains.clone().into(),
            dynos: (start, web, dynos.len() as u32),
        });
    }
    let hostmaster = Name::from_ascii(format!("hostmaster.{}.spaceroute.internal.", space.name))
        .unwrap_or_else(|_| Name::root());
    SpaceView {
        name: space.name.clone(),
        domain: space.domain.clone(),
        network: space.network,
        peers: space.peers.iter().map(|p| p.cidrs.clone()).collect(),
        peer_names: space.peers.iter().map(|p| p.name.clone()).collect(),
        audiences: std::iter::once(space.name.clone().into_boxed_str())
            .chain((space.peers.iter()).map(|p| format!("{}/{}", space.name, p.name).into()))
            .collect(),
        router_private: space.router_private.clone(),
        router_public: space.router_public.clone(),
        ttl: space.ttl,
        serial: serial(ZoneKey::Space(&space.name)),
        public_serial: serial(ZoneKey::Public(&space.name)),
        apps,
        zones,
        nameservers: (space.nameservers.iter())
            .map(|n| (n.name.clone(), n.ip))
            .collect(),
        public_nameservers: (space.public_nameservers.iter())
            .map(|n| (n.name.clone(), n.ip))
            .collect(),
        public_hostmaster: space.public_hostmaster.clone(),
        unlisted: space.unlisted,
        upstreams: space.upstreams.clone(),
        hostmaster,
        dynos,
        processes,
        warnings,
        secondaries: space.secondaries.clone(),
    }
}

/// The snapshot of compiled spaces, sorted by name: the access table and the name indexes,
/// which need every space. Linear in the apps, and cheap beside compiling them.
pub fn assemble(spaces: Vec<Arc<SpaceView>>) -> Snapshot {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut snapshot = Snapshot {
        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        localspace: name(LOCALSPACE),
        ..Snapshot::default()
    };
    let mut access = Vec::new();
    // Every custom domain (wildcards with their `*`), for the empty non-terminals above them.
    let mut custom: Vec<(Name, AppRef)> = Vec::new();
    let mut host = Vec::new();
    let names = (spaces.iter().flat_map(|s| &s.apps)).map(|a| 1 + a.domains.len());
    snapshot.hosts.reserve(names.sum());
    for (s, space) in spaces.iter().enumerate() {
        snapshot.warnings.extend(space.warnings.iter().cloned());
        access.push((space.network, s, Member::Network));
        for (p, cidrs) in space.peers.iter().enumerate() {
            access.extend(cidrs.iter().map(|&c| (c, s, Member::Peer(p))));
        }
        let domain_apexes = snapshot.apexes.entry(space.domain.clone()).or_default();
        if !domain_apexes.contains(&Apex::Domain) {
            domain_apexes.push(Apex::Domain);
        }
        for (z, zone) in space.zones.iter().enumerate() {
            let apexes = snapshot.apexes.entry(zone.apex.clone()).or_default();
            apexes.push(Apex::File { space: s, zone: z });
        }
        let domain = wire(&space.domain);
        for (a, app) in space.apps.iter().enumerate() {
            let app_ref = AppRef { space: s, app: a };
            snapshot
                .hosts
                .insert(app_host(&mut host, &app.name, &domain), app_ref);
            for domain in &app.domains {
                let base = crate::config::wildcard_base(domain);
                custom.push((domain.clone(), app_ref));
                if domain.is_wildcard() {
                    snapshot.wildcards.insert(base.clone(), app_ref);
                } else {
                    snapshot.hosts.insert(&wire(domain), app_ref);
                }
                // Its own apex, for every audience no zone file of the space covers: a standard
                // app's domain inside a trusted-only zone file is its own apex to the public.
                let held = |audience| {
                    (space.zones.iter()).any(|z| z.audience == audience && z.apex.zone_of(&base))
                };
                let trusted = !held(Audience::Trusted);
                if trusted || (!app.internal && !held(Audience::Public)) {
                    snapshot.apexes.entry(base).or_default().push(Apex::Custom {
                        app: app_ref,
                        public: !trusted,
                    });
                }
            }
        }
    }
    snapshot.spaces = spaces;
    snapshot
        .apexes
        .insert(snapshot.localspace.clone(), vec![Apex::Localspace]);
    for space in &snapshot.spaces {
        let sum = snapshot
            .domain_public_serials
            .entry(space.domain.clone())
            .or_default();
        *sum = sum.wrapping_add(space.public_serial);
    }
    snapshot.access = Access::new(access);
    snapshot.ents = empty_non_terminals(&snapshot, custom);
    snapshot.public = public_names(&snapshot);
    snapshot.apex_keys = (snapshot.apexes.iter())
        .map(|(apex, kinds)| (wire(apex).into(), kinds == &[Apex::Domain]))
        .collect();
    snapshot
}

/// The names at or below which an asker no space trusts may get an answer: apexes of public
/// zone files and of standard apps' domains, standard apps' names and wildcard bases. Below no
/// such name, every such asker gets REFUSED.
fn public_names(snapshot: &Snapshot) -> HashSet<Box<[u8]>, RandomState> {
    let mut public = HashSet::default();
    for (apex, kinds) in &snapshot.apexes {
        let shown = kinds.iter().any(|kind| match *kind {
            Apex::File { space, zone } => {
                snapshot.spaces[space].zones[zone].audience == Audience::Public
            }
            Apex::Custom { app, .. } => !snapshot.app(app).internal,
            Apex::Domain | Apex::Localspace => false,
        });
        if shown {
            public.insert(wire(apex).into());
        }
    }
    let mut host = Vec::new();
    for space in &snapshot.spaces {
        let domain = wire(&space.domain);
        for app in space.apps.iter().filter(|a| !a.internal) {
            public.insert(app_host(&mut host, &app.name, &domain).into());
            for domain in &app.domains {
                let base = crate::config::wildcard_base(domain);
                public.insert(wire(&base).into());
            }
        }
    }
    public
}

/// The names between each custom domain and the apex of the zone that holds it, with the apps
/// below them (RFC 4592 §2.2.2: a wildcard's owner makes its parent exist too).
/// App names (`<app>.<domain>`) sit right below an apex and make none.
fn empty_non_terminals(
    snapshot: &Snapshot,
    custom: Vec<(Name, AppRef)>,
) -> HashMap<Name, Vec<AppRef>> {
    let mut ents: HashMap<Name, Vec<AppRef>> = HashMap::new();
    for (owner, app) in custom {
        let mut between = Vec::new();
        let mut up = owner.base_name();
        while !snapshot.apexes.contains_key(&up) {
            if up.is_root() {
                // No zone above: the domain is its own apex, nothing lies between.
                between.clear();
                break;
            }
            let parent = up.base_name();
            between.push(up);
            up = parent;
        }
        for name in between {
            let apps = ents.entry(name).or_default();
            if !apps.contains(&app) {
                apps.push(app);
            }
        }
    }
    ents
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
    let certified = CertifiedKey::new(chain, key);
    // A key that is not the certificate's would fail every handshake.
    match certified.keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err("the private key is not the certificate's".into())
        }
        _ => Ok(certified),
    }
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
        file: zone.file.clone(),
        apex: zone.apex.clone(),
        audience: zone.audience,
        nodes,
        has_cuts,
    }
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap_or_else(|_| Name::root())
}

/// The lower-case wire name `<app>.<domain>` in `buf`; `domain` is in wire form already and
/// app names are lower-case (`validate` checks), so no `Name` is built for a million apps.
fn app_host<'b>(buf: &'b mut Vec<u8>, app: &str, domain: &[u8]) -> &'b [u8] {
    buf.clear();
    buf.push(app.len() as u8);
    buf.extend(app.bytes().map(|b| b.to_ascii_lowercase()));
    buf.extend_from_slice(domain);
    buf
}
