//! Checks loaded space files as a whole and builds the typed [`Config`].
//!
//! Each check reports a [`Diagnostic`] at the line of the entry it is about, and every check
//! runs, so one `spaceroute check` shows every problem. Pure: it reads no files (`load` did).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use foldhash::HashMap as FastMap;
use hickory_proto::rr::{Name, RecordType};
use ipnet::IpNet;

use super::load::{Positions, Source, ZoneText};
use super::{
    App, Config, Diagnostic, Dyno, Nameserver, Peer, Policy, Secondary, Space, Tls, TsigAlgorithm,
    TsigKey, XfrAudience, Zone, model, wildcard_base,
};

/// The most peers a space may have (the allow masks are 64 bits wide).
pub const MAX_PEERS: usize = 64;

/// Validates `sources` and returns the [`Config`], or every diagnostic found.
pub fn validate(sources: Vec<Source>) -> Result<Config, Vec<Diagnostic>> {
    let mut v = Validator::default();
    let mut spaces: Vec<(Space, &Source)> = Vec::new();
    for source in &sources {
        // A space with errors of its own still takes part in the checks across files (with
        // what of it is valid), so that one run reports every problem.
        if let Some((space, _clean)) = v.space(source) {
            spaces.push((space, source));
        }
    }
    let claims: Vec<_> = (spaces.iter())
        .map(|(space, source)| (space.claims(), Some(*source)))
        .collect();
    v.across(&claims);
    drop(claims);
    if !v.diagnostics.is_empty() {
        return Err(v.diagnostics);
    }
    let mut spaces: Vec<Space> = spaces.into_iter().map(|(s, _)| s).collect();
    spaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Config { spaces })
}

/// Checks one space file on its own, as [`validate`] does before the checks across files.
pub fn check_space(source: &Source) -> Result<Space, Vec<Diagnostic>> {
    let mut v = Validator::default();
    match v.space(source) {
        Some((space, true)) => Ok(space),
        _ => Err(v.diagnostics),
    }
}

/// The checks across files of [`validate`], over what each space claims. A space with its
/// [`Source`] gets diagnostics at its lines; one without (kept from an earlier load) at line 1
/// of its file. A conflict is reported at the later of the two spaces.
pub fn check_across(spaces: &[(Claims, Option<&Source>)]) -> Vec<Diagnostic> {
    let mut v = Validator::default();
    v.across(spaces);
    v.diagnostics
}

/// What one space claims that no other space may: the input of the checks across files, from
/// a [`Space`] just checked or from what was compiled of it earlier.
#[derive(Debug)]
pub struct Claims<'a> {
    /// The space's name.
    pub name: &'a str,
    /// Its space file.
    pub file: &'a Path,
    /// Its own network.
    pub network: IpNet,
    /// Its app domain.
    pub domain: &'a Name,
    /// Its nameserver names, private and public.
    pub nameservers: Vec<&'a Name>,
    /// Its apps: name and custom domains.
    pub apps: Vec<(&'a str, &'a [Name])>,
    /// Its zone files' records: the file, the owner (lower-case) and the type.
    pub records: Vec<(&'a Path, Name, RecordType)>,
    /// Its secondaries' keys, by index in `secondaries`, with the audience each replicates.
    pub keys: Vec<(&'a Name, XfrAudience)>,
}

impl Space {
    /// What this space claims.
    pub fn claims(&self) -> Claims<'_> {
        Claims {
            name: &self.name,
            file: &self.file,
            network: self.network,
            domain: &self.domain,
            nameservers: (self.nameservers.iter().chain(&self.public_nameservers))
                .map(|n| &n.name)
                .collect(),
            apps: (self.apps.iter())
                .map(|a| (a.name.as_str(), a.domains.as_slice()))
                .collect(),
            records: (self.zones.iter())
                .flat_map(|z| {
                    (z.records.keys()).map(|k| (&*z.file, k.name.to_lowercase(), k.record_type))
                })
                .collect(),
            keys: (self.secondaries.iter())
                .map(|s| (&s.key.name, s.audience))
                .collect(),
        }
    }
}

#[derive(Default)]
struct Validator {
    diagnostics: Vec<Diagnostic>,
}

/// Where a diagnostic goes: a file and its positions.
struct Here<'a> {
    path: &'a Path,
    positions: &'a Positions,
}

impl Here<'_> {
    fn error(&self, entry: &str, message: String) -> Diagnostic {
        let (line, column) = self.positions.at(entry);
        Diagnostic {
            file: self.path.to_path_buf(),
            line,
            column,
            message,
        }
    }
}

impl Validator {
    fn report(&mut self, here: &Here, entry: &str, message: String) {
        self.diagnostics.push(here.error(entry, message));
    }

    /// Checks one space file on its own; `None` when it is too broken to cross-check.
    /// Checks one space file: the space built from what in it is valid (`None` only without a
    /// valid network), and whether all of it was.
    fn space(&mut self, source: &Source) -> Option<(Space, bool)> {
        let here = Here {
            path: &source.path,
            positions: &source.positions,
        };
        let f = &source.file;
        let before = self.diagnostics.len();

        if !is_space_name(&f.space) {
            self.report(
                &here,
                "space",
                format!("space name {:?} must be [a-z0-9-]+", f.space),
            );
        }
        let domain = match parse_host(f.domain.as_deref().unwrap_or("herokuapp.com"), false) {
            Ok(d) => d,
            Err(e) => {
                self.report(&here, "domain", format!("domain: {e}"));
                Name::root()
            }
        };
        let network = self.cidr(&here, "network", &f.network);

        let mut peers: Vec<Peer> = Vec::new();
        if f.peers.len() > MAX_PEERS {
            self.report(
                &here,
                "peers",
                format!("at most {MAX_PEERS} peers per space"),
            );
        }
        for (i, p) in f.peers.iter().enumerate() {
            let entry = format!("peers[{i}]");
            if !is_space_name(&p.name) {
                let msg = format!("peer name {:?} must be [a-z0-9-]+", p.name);
                self.report(&here, &format!("{entry}.name"), msg);
            } else if peers.iter().any(|q| q.name == p.name) {
                let msg = format!("duplicate peer name {:?}", p.name);
                self.report(&here, &format!("{entry}.name"), msg);
            }
            if p.cidrs.is_empty() {
                self.report(&here, &entry, format!("peer {:?} has no cidrs", p.name));
            }
            let cidrs = (p.cidrs.iter().enumerate())
                .filter_map(|(j, c)| self.cidr(&here, &format!("{entry}.cidrs[{j}]"), c))
                .collect();
            peers.push(Peer {
                name: p.name.clone(),
                cidrs,
            });
        }

        let router_private = self.ips(&here, "router.private", &f.router.private);
        let router_public = self.ips(&here, "router.public", &f.router.public);

        let mut nameservers = self.nameservers(&here, "nameservers", &f.nameservers);
        if f.nameservers.is_empty() {
            let default = format!("ns1.{}.spaceroute.internal.", f.space);
            if let Ok(name) = parse_host(&default, false) {
                nameservers.push(Nameserver { name, ip: None });
            }
        }
        let public_nameservers =
            self.nameservers(&here, "public.nameservers", &f.public.nameservers);
        let public_hostmaster = f.public.hostmaster.as_ref().and_then(|h| {
            parse_host(h, false)
                .map_err(|e| self.report(&here, "public.hostmaster", format!("hostmaster: {e}")))
                .ok()
        });
        let upstreams: Vec<SocketAddr> = (f.unlisted.upstreams.iter().enumerate())
            .filter_map(|(i, text)| {
                let parsed = (text.parse::<SocketAddr>().ok())
                    .or_else(|| Some(SocketAddr::new(text.parse::<IpAddr>().ok()?, 53)));
                if parsed.is_none() {
                    let msg = format!("{text:?} is not an address like 10.0.0.2 or 10.0.0.2:53");
                    self.report(&here, &format!("unlisted.upstreams[{i}]"), msg);
                }
                parsed
            })
            .collect();
        match f.unlisted.policy {
            Policy::Forward if f.unlisted.upstreams.is_empty() => {
                let msg = "policy forward needs at least one upstream".to_string();
                self.report(&here, "unlisted.policy", msg);
            }
            Policy::Refused | Policy::Nxdomain if !f.unlisted.upstreams.is_empty() => {
                let msg = "upstreams are only used with policy forward".to_string();
                self.report(&here, "unlisted.upstreams", msg);
            }
            _ => {}
        }

        let mut zones: Vec<Zone> = Vec::new();
        for (i, (entry, text)) in f.zones.iter().zip(&source.zones).enumerate() {
            let Some(text) = text else { continue };
            if let Some(zone) = self.zone(text, entry.audience) {
                if zones
                    .iter()
                    .any(|z| z.apex == zone.apex && z.audience == entry.audience)
                {
                    let msg = format!(
                        "zone {} is served twice to the same audience",
                        zone.apex.to_ascii()
                    );
                    self.report(&here, &format!("zones[{i}].file"), msg);
                }
                zones.push(zone);
            }
        }

        // Duplicate names, within the file too, are found across files (`across`).
        let mut apps: Vec<App> = Vec::with_capacity(f.apps.len());
        for (i, a) in f.apps.iter().enumerate() {
            let cert = source.certs.get(i).cloned().flatten();
            if let Some(app) = self.app(&here, i, a, &peers, cert) {
                apps.push(app);
            }
        }
        let has_internal = apps.iter().any(|a| a.internal_routing);
        if has_internal && router_private.is_empty() {
            let msg = "internal apps need router.private addresses".to_string();
            self.report(&here, "router", msg);
        }
        for (i, a) in apps.iter().enumerate() {
            if !a.internal_routing && router_public.is_empty() {
                let msg = format!(
                    "standard app {:?} (internal_routing: false) needs router.public in its space",
                    a.name
                );
                self.report(&here, &format!("apps[{i}].internal_routing"), msg);
            }
        }

        let secondaries = (f.secondaries.iter().enumerate())
            .filter_map(|(i, secondary)| {
                let key = source.keys.get(i).cloned().flatten();
                self.secondary(&here, i, secondary, key.as_deref(), &f.peers)
            })
            .collect();

        let network = network?;
        let clean = self.diagnostics.len() == before;
        let space = Space {
            name: f.space.clone(),
            file: source.path.clone(),
            domain,
            network,
            peers,
            router_private,
            router_public,
            ttl: f.ttl.unwrap_or(60),
            nameservers,
            public_nameservers,
            public_hostmaster,
            serial: f.serial,
            public_serial: f.public.serial.or(f.serial),
            unlisted: f.unlisted.policy,
            upstreams,
            zones,
            apps,
            secondaries,
        };
        Some((space, clean))
    }

    fn app(
        &mut self,
        here: &Here,
        i: usize,
        a: &model::App,
        peers: &[Peer],
        cert: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Option<App> {
        let before = self.diagnostics.len();
        if !is_app_name(&a.name) {
            let msg = format!("app name {:?} must be [a-z][a-z0-9-]{{2,29}}", a.name);
            self.report(here, &format!("apps[{i}].name"), msg);
        }
        let allow = a.allow.as_ref().map(|allow| {
            (allow.iter().enumerate())
                .filter_map(|(j, name)| {
                    let found = peers.iter().position(|p| &p.name == name);
                    if found.is_none() {
                        let msg =
                            format!("allow names {name:?}, which is not a peer of this space");
                        self.report(here, &format!("apps[{i}].allow[{j}]"), msg);
                    }
                    found
                })
                .collect()
        });
        let mut domains: Vec<Name> = Vec::new();
        for (j, d) in a.domains.iter().enumerate() {
            match parse_host(d, true) {
                Ok(name) if domains.contains(&name) => {
                    let msg = format!("domain {d:?} is listed twice");
                    self.report(here, &format!("apps[{i}].domains[{j}]"), msg);
                }
                Ok(name) => domains.push(name),
                Err(e) => self.report(
                    here,
                    &format!("apps[{i}].domains[{j}]"),
                    format!("domain: {e}"),
                ),
            }
        }
        let mut dynos: Vec<Dyno> = Vec::new();
        for (j, d) in a.dynos.iter().enumerate() {
            let at = || format!("apps[{i}].dynos[{j}]");
            let shape = d.name.split_once('.').and_then(|(process, n)| {
                // Canonical decimal only: `web.01` and `web.+1` would name `web.1` twice.
                let canonical = n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0');
                let n: u32 = n.parse().ok().filter(|_| canonical)?;
                is_process(process).then(|| (process.to_string(), n))
            });
            let Some((process, index)) = shape else {
                let msg = format!("dyno name {:?} must be <process>.<n>, like web.1", d.name);
                self.report(here, &format!("{}.name", at()), msg);
                continue;
            };
            let ip = d.ip.parse::<IpAddr>().ok();
            if ip.is_none() {
                let msg = format!("{:?} is not an IP address", d.ip);
                self.report(here, &format!("{}.ip", at()), msg);
            }
            if process == "web" && d.port.is_none_or(|p| p == 0) {
                let msg = format!("web dyno {:?} needs a port (1-65535)", d.name);
                self.report(here, &at(), msg);
            }
            if dynos
                .iter()
                .any(|o| o.process == process && o.index == index)
            {
                let msg = format!("duplicate dyno name {:?}", d.name);
                self.report(here, &format!("{}.name", at()), msg);
            }
            if let Some(ip) = ip {
                dynos.push(Dyno {
                    process,
                    index,
                    ip,
                    port: d.port,
                });
            }
        }
        if let Some((cert_pem, key_pem)) = &cert
            && let Err((what, message)) = check_pem(cert_pem, key_pem)
        {
            self.report(here, &format!("apps[{i}].tls.{what}"), message);
        }
        let tls = a.tls.as_ref().zip(cert).map(|(t, (cert_pem, key_pem))| {
            let base = here.path.parent().unwrap_or(Path::new("."));
            Tls {
                cert: base.join(&t.cert),
                key: base.join(&t.key),
                cert_pem,
                key_pem,
            }
        });
        (self.diagnostics.len() == before).then(|| App {
            name: a.name.clone(),
            internal_routing: a.internal_routing,
            allow,
            domains,
            tls,
            dynos,
        })
    }

    /// Checks a parsed zone file: one SOA, at the apex, and nothing outside the apex; each
    /// problem at the line of the record that has it.
    fn zone(&mut self, text: &ZoneText, audience: model::Audience) -> Option<Zone> {
        let here_err = |line: usize, message: String| Diagnostic {
            file: text.path.clone(),
            line,
            column: 1,
            message,
        };
        let soas: Vec<&Name> = (text.records.keys())
            .filter(|k| k.record_type == RecordType::SOA)
            .map(|k| &*k.name)
            .collect();
        let apex = match soas.as_slice() {
            [apex] => apex.to_lowercase(),
            [] => {
                self.diagnostics
                    .push(here_err(1, "zone file has no SOA record".into()));
                return None;
            }
            [first, ..] => {
                let first = (*first).clone();
                let line = text.line_of(|k| k.record_type == RecordType::SOA && *k.name != first);
                self.diagnostics.push(here_err(
                    line,
                    "zone file has more than one SOA record".into(),
                ));
                return None;
            }
        };
        let before = self.diagnostics.len();
        let mut cname_owners = Vec::new();
        for key in text.records.keys() {
            let name: &Name = &key.name;
            if !apex.zone_of(name) {
                let msg = format!(
                    "{} is outside the zone {}",
                    name.to_ascii(),
                    apex.to_ascii()
                );
                let line = text.line_of(|k| k == key);
                self.diagnostics.push(here_err(line, msg));
            }
            if key.record_type == RecordType::CNAME {
                cname_owners.push(name.clone());
            }
        }
        for owner in cname_owners {
            let others = (text.records.keys())
                .filter(|k| *k.name == owner && k.record_type != RecordType::CNAME)
                .count();
            if others > 0 {
                let msg = format!("{} has a CNAME and other data", owner.to_ascii());
                // The later of the two: the record that made the clash.
                let cname =
                    text.line_of(|k| *k.name == owner && k.record_type == RecordType::CNAME);
                let other =
                    text.line_of(|k| *k.name == owner && k.record_type != RecordType::CNAME);
                self.diagnostics.push(here_err(cname.max(other), msg));
            }
        }
        (self.diagnostics.len() == before).then(|| Zone {
            file: text.path.clone(),
            apex,
            audience,
            records: text.records.clone(),
        })
    }

    /// Checks that hold across files: unique space names, apps per domain and custom domains,
    /// networks that do not overlap, custom domains that no zone file also defines.
    fn across(&mut self, spaces: &[(Claims, Option<&Source>)]) {
        let unknown = Positions::default();
        let mut space_names: HashMap<&str, &Path> = HashMap::new();
        // Apps are keyed by (app domain, name); the domain as a small number, as hashing a Name
        // goes byte by byte and a million apps share a few domains.
        let mut domain_ids: HashMap<&Name, usize> = HashMap::new();
        let total = spaces.iter().map(|(s, _)| s.apps.len()).sum();
        let mut apps: FastMap<(usize, &str), &Path> =
            FastMap::with_capacity_and_hasher(total, <_>::default());
        let mut hosts: HashMap<Name, (&str, &Path)> = HashMap::new();
        let app_domains: HashSet<&Name> = spaces.iter().map(|(s, _)| s.domain).collect();
        let zone_names = ZoneNames::new(spaces.iter().flat_map(|(s, _)| &s.records));
        // Nameserver names answer their addresses in our synthesized zones (RFC 1034 §4.2.2
        // glue made authoritative), so no app may own one.
        let ns_names: HashMap<&Name, &Path> = (spaces.iter())
            .flat_map(|(s, _)| s.nameservers.iter().map(|&n| (n, s.file)))
            .collect();
        // A TSIG key names one audience of one space: it is how a request finds its view.
        let mut keys: HashMap<&Name, (&str, XfrAudience, &Path)> = HashMap::new();
        for (i, (space, source)) in spaces.iter().enumerate() {
            let here = Here {
                path: space.file,
                positions: source.map_or(&unknown, |s| &s.positions),
            };
            for (k, &(key, audience)) in space.keys.iter().enumerate() {
                let first = *keys
                    .entry(key)
                    .or_insert((space.name, audience, space.file));
                if first.0 != space.name || first.1 != audience {
                    let msg = format!(
                        "key {} already signs for another audience (space {}, {}) in {}: give \
                         each audience its own key",
                        key.to_ascii(),
                        first.0,
                        first.1,
                        first.2.display()
                    );
                    self.report(&here, &format!("secondaries[{k}].key.name"), msg);
                }
            }
            let next_id = domain_ids.len();
            let domain_id = *domain_ids.entry(space.domain).or_insert(next_id);
            // The nameserver names one label below this app domain, the names an app could take.
            let ns_labels: Vec<(&[u8], &Path)> = (ns_names.iter())
                .filter(|(n, _)| n.num_labels() == space.domain.num_labels() + 1)
                .filter(|(n, _)| n.base_name() == *space.domain)
                .filter_map(|(n, p)| Some((n.iter().next()?, *p)))
                .collect();
            if let Some(first) = space_names.insert(space.name, space.file) {
                let msg = format!(
                    "space {:?} is also defined in {}",
                    space.name,
                    first.display()
                );
                self.report(&here, "space", msg);
            }
            for (other, _) in &spaces[..i] {
                if nets_overlap(&space.network, &other.network) {
                    let msg = format!(
                        "network {} overlaps space {:?} ({}) in {}",
                        space.network,
                        other.name,
                        other.network,
                        other.file.display()
                    );
                    self.report(&here, "network", msg);
                }
            }
            for (a, &(app_name, domains)) in space.apps.iter().enumerate() {
                let ns = ns_labels
                    .iter()
                    .find(|(l, _)| l.eq_ignore_ascii_case(app_name.as_bytes()));
                if let Some((_, file)) = ns {
                    let msg = format!(
                        "app {:?} collides with a nameserver name in {}",
                        app_name,
                        file.display()
                    );
                    self.report(&here, &format!("apps[{a}].name"), msg);
                }
                if let Some(first) = apps.insert((domain_id, app_name), space.file) {
                    let msg = if first == space.file {
                        format!("duplicate app name {app_name:?}")
                    } else {
                        format!(
                            "app {:?} is already defined for {} in {}",
                            app_name,
                            space.domain.to_ascii(),
                            first.display()
                        )
                    };
                    self.report(&here, &format!("apps[{a}].name"), msg);
                }
                for (d, domain) in domains.iter().enumerate() {
                    let at = format!("apps[{a}].domains[{d}]");
                    if let Some((owner, file)) =
                        hosts.insert(domain.clone(), (app_name, space.file))
                    {
                        let msg = format!(
                            "domain {} is already a domain of app {owner:?} in {}",
                            domain.to_ascii(),
                            file.display()
                        );
                        self.report(&here, &at, msg);
                    }
                    if let Some(file) = ns_names.get(domain) {
                        let msg = format!(
                            "domain {} is a nameserver name in {}",
                            domain.to_ascii(),
                            file.display()
                        );
                        self.report(&here, &at, msg);
                    }
                    if let Some(app_domain) =
                        ancestors(&wildcard_base(domain)).find(|n| app_domains.contains(&n))
                    {
                        let msg = format!(
                            "domain {} is inside the app domain {}",
                            domain.to_ascii(),
                            app_domain.to_ascii()
                        );
                        self.report(&here, &at, msg);
                    }
                    if let Some((clash, file)) = zone_names.shadowed_by(domain) {
                        let msg = format!(
                            "domain {} collides with {} in zone file {}",
                            domain.to_ascii(),
                            clash.to_ascii(),
                            file.display()
                        );
                        self.report(&here, &at, msg);
                    }
                }
            }
        }
    }

    /// Checks one secondary: its addresses, its key (name, algorithm, the secret in its file)
    /// and its audience; `None` when any is wrong.
    fn secondary(
        &mut self,
        here: &Here,
        i: usize,
        s: &model::Secondary,
        key_file: Option<&[u8]>,
        peers: &[model::Peer],
    ) -> Option<Secondary> {
        let at = |entry: &str| format!("secondaries[{i}].{entry}");
        let before = self.diagnostics.len();
        if s.addresses.is_empty() {
            self.report(here, &at("name"), "a secondary needs an address".into());
        }
        let mut addresses = |key: &str, texts: &[String]| -> Vec<SocketAddr> {
            let mut out = Vec::new();
            for (a, text) in texts.iter().enumerate() {
                let parsed = (text.parse::<SocketAddr>().ok()).or_else(|| {
                    text.parse::<IpAddr>()
                        .ok()
                        .map(|ip| SocketAddr::new(ip, 53))
                });
                match parsed {
                    Some(addr) => out.push(addr),
                    None => self.report(
                        here,
                        &at(&format!("{key}[{a}]")),
                        format!("invalid address {text:?}: expected ip or ip:port"),
                    ),
                }
            }
            out
        };
        let sources = addresses("addresses", &s.addresses);
        let notify = match &s.notify {
            Some(texts) => addresses("notify", texts),
            None => sources.clone(),
        };
        // A key name is any domain name, one label included (`xfr-a`, as keymgr makes them).
        let key_name = s.key.name.trim_end_matches('.');
        let name = (Name::from_ascii(format!("{key_name}.")).ok())
            .filter(|n| !key_name.is_empty() && !n.is_wildcard())
            .map(|n| n.to_lowercase());
        if name.is_none() {
            let msg = format!("key name {:?} is not a domain name", s.key.name);
            self.report(here, &at("key.name"), msg);
        }
        let wanted = s.key.algorithm.as_deref().unwrap_or("hmac-sha256");
        let algorithm = TsigAlgorithm::from_name(wanted);
        if algorithm.is_none() {
            let msg = format!(
                "unknown TSIG algorithm {wanted:?}: expected hmac-sha256, hmac-sha384 or hmac-sha512"
            );
            self.report(here, &at("key.algorithm"), msg);
        }
        let secret = key_file.and_then(|bytes| {
            tsig_secret(bytes)
                .map_err(|e| {
                    let msg = format!("key file {}: {e}", s.key.file);
                    self.report(here, &at("key.file"), msg)
                })
                .ok()
        });
        let audience = match s.audience.as_str() {
            "space" => Some(XfrAudience::Space),
            "public" => Some(XfrAudience::Public),
            other => match other.strip_prefix("peer:") {
                Some(peer) => match peers.iter().position(|p| p.name == peer) {
                    Some(index) => Some(XfrAudience::Peer(index)),
                    None => {
                        let msg = format!("audience {other:?}: the space has no peer {peer:?}");
                        self.report(here, &at("audience"), msg);
                        None
                    }
                },
                None => {
                    let msg = format!("audience {other:?}: expected space, public or peer:<name>");
                    self.report(here, &at("audience"), msg);
                    None
                }
            },
        };
        if self.diagnostics.len() != before {
            return None;
        }
        Some(Secondary {
            name: s.name.clone(),
            sources: sources.iter().map(|a| a.ip()).collect(),
            notify,
            key: TsigKey {
                name: name?,
                algorithm: algorithm?,
                secret: secret?,
            },
            audience: audience?,
        })
    }

    fn nameservers(
        &mut self,
        here: &Here,
        entry: &str,
        list: &[model::Nameserver],
    ) -> Vec<Nameserver> {
        let mut nameservers = Vec::new();
        for (i, ns) in list.iter().enumerate() {
            let entry = format!("{entry}[{i}]");
            let name = parse_host(&ns.name, false)
                .map_err(|e| self.report(here, &format!("{entry}.name"), format!("name: {e}")))
                .ok();
            let ip = ns
                .ip
                .as_ref()
                .and_then(|ip| self.ip(here, &format!("{entry}.ip"), ip));
            if let Some(name) = name {
                nameservers.push(Nameserver { name, ip });
            }
        }
        nameservers
    }

    fn cidr(&mut self, here: &Here, entry: &str, text: &str) -> Option<IpNet> {
        match text.parse::<IpNet>() {
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                let msg = format!("{text:?} is not a CIDR like 10.16.0.0/16 or fd00::/64");
                self.report(here, entry, msg);
                None
            }
        }
    }

    fn ip(&mut self, here: &Here, entry: &str, text: &str) -> Option<IpAddr> {
        match text.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                let msg = format!("{text:?} is not an IP address");
                self.report(here, entry, msg);
                None
            }
        }
    }

    fn ips(&mut self, here: &Here, entry: &str, texts: &[String]) -> Vec<IpAddr> {
        (texts.iter().enumerate())
            .filter_map(|(i, t)| self.ip(here, &format!("{entry}[{i}]"), t))
            .collect()
    }
}

/// Checks that a certificate file holds a PEM certificate chain and a key file a PEM private
/// key; the error names which file (`cert` or `key`) and what is wrong.
fn check_pem(cert: &[u8], key: &[u8]) -> Result<(), (&'static str, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(cert).collect();
    match chain {
        Ok(chain) if !chain.is_empty() => {}
        Ok(_) => return Err(("cert", "certificate file holds no PEM certificate".into())),
        Err(e) => return Err(("cert", format!("certificate file is not valid PEM: {e}"))),
    }
    PrivateKeyDer::from_pem_slice(key).map(|_| ()).map_err(|e| {
        (
            "key",
            format!("key file holds no usable PEM private key: {e}"),
        )
    })
}

/// `name` and its ancestors, up to and excluding the root.
fn ancestors(name: &Name) -> impl Iterator<Item = Name> {
    std::iter::successors(Some(name.clone()), |n| Some(n.base_name())).take_while(|n| !n.is_root())
}

/// Every owner name of every zone file, indexed to find what a custom domain would shadow.
struct ZoneNames<'a> {
    /// Names with A, AAAA or CNAME records: what a custom domain's answers would shadow. Other
    /// data (the apex's SOA and NS, MX, TXT) keeps being served beside the custom domain.
    data: HashMap<Name, &'a Path>,
    /// Names with some record strictly below them, with one such record's name.
    parents: HashMap<Name, (Name, &'a Path)>,
}

impl<'a> ZoneNames<'a> {
    fn new(records: impl Iterator<Item = &'a (&'a Path, Name, RecordType)>) -> ZoneNames<'a> {
        let mut names = ZoneNames {
            data: HashMap::new(),
            parents: HashMap::new(),
        };
        for (file, name, rtype) in records {
            if matches!(rtype, RecordType::A | RecordType::AAAA | RecordType::CNAME) {
                names.data.entry(name.clone()).or_insert(file);
            }
            for parent in ancestors(&name.base_name()) {
                names.parents.entry(parent).or_insert((name.clone(), file));
            }
        }
        names
    }

    /// The record a custom domain would shadow, and its zone file: for an exact domain, an A, AAAA or CNAME at
    /// that name; for a wildcard, any record below its base.
    fn shadowed_by(&self, domain: &Name) -> Option<(Name, &'a Path)> {
        if domain.is_wildcard() {
            self.parents.get(&domain.base_name()).cloned()
        } else {
            self.data.get(domain).map(|file| (domain.clone(), *file))
        }
    }
}

fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The base64 secret of a key file: the secret alone, or the `secret` line of BIND's
/// `tsig-keygen` (`secret "…";`) or Knot's `keymgr -t` (`secret: …`) output.
fn tsig_secret(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let line = (text.lines())
        .map(str::trim)
        .find_map(|l| l.strip_prefix("secret"))
        .unwrap_or(text);
    let b64: String = (line.chars())
        .filter(|c| !matches!(c, ':' | '"' | ';') && !c.is_whitespace())
        .collect();
    let secret = (data_encoding::BASE64.decode(b64.as_bytes()))
        .map_err(|e| format!("the secret is not base64: {e}"))?;
    if secret.len() < 16 {
        return Err(format!(
            "a {}-byte secret is too short (at least 16; `tsig-keygen` or `keymgr -t` make one)",
            secret.len()
        ));
    }
    Ok(secret)
}

fn is_space_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_app_name(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=30).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn is_process(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 30
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// Parses a host name into a lower-case FQDN; `wildcard` allows a leading `*.` label.
fn parse_host(text: &str, wildcard: bool) -> Result<Name, String> {
    let bare = text.strip_suffix('.').unwrap_or(text);
    let rest = match bare.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => bare,
    };
    let labels_ok = !rest.is_empty()
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !labels_ok || rest.split('.').count() < 2 {
        return Err(format!("{text:?} is not a host name like api.example.com"));
    }
    let mut name = Name::from_ascii(bare).map_err(|e| format!("{text:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

#[cfg(test)]
mod tests {
    fn errors(files: &[(&str, &str)], zones: &[(&str, &str)]) -> Vec<String> {
        match crate::config::parse_texts(files, zones) {
            Ok(_) => vec![],
            Err(ds) => ds.iter().map(|d| d.to_string()).collect(),
        }
    }

    const ZONE: &str = "$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nwww IN A 10.16.5.5\n*.dev IN A 10.16.5.6\n";

    fn assert_one(errs: &[String], location: &str, words: &str) {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(location) && e.contains(words)),
            "expected {location} ... {words:?} in {errs:#?}"
        );
    }

    /// Issue 11: a secondary's key file, secret, algorithm and audience are checked, and a key
    /// signs for one audience only, across files too.
    #[test]
    fn issue_11_secondaries_are_checked_and_a_key_names_one_audience() {
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=";
        let space = |name: &str, net: &str, secondaries: &str| {
            format!(
                "space: {name}\nnetwork: {net}\npeers:\n  - {{name: vpn, cidrs: [10.200.0.0/16]}}\nrouter: {{private: [10.16.0.10]}}\nsecondaries:\n{secondaries}"
            )
        };
        let secondary = |key: &str, file: &str, audience: &str| {
            format!(
                "  - name: s2\n    addresses: [\"127.16.9.1:5300\"]\n    key: {{name: {key}, file: {file}}}\n    audience: {audience}\n"
            )
        };
        let good = space("a", "10.16.0.0/16", &secondary("xfr-a", "a.key", "space"));
        let knot =
            format!("key:\n  - id: xfr-a\n    algorithm: hmac-sha256\n    secret: {secret}\n");
        let config =
            crate::config::parse_texts(&[("d/a.yaml", &good)], &[("d/a.key", &knot)]).unwrap();
        let s = &config.spaces[0].secondaries[0];
        assert_eq!(s.key.name.to_ascii(), "xfr-a.");
        assert_eq!(s.key.secret, b"secret-secret-secret-secret-1234");
        assert_eq!(s.notify[0].to_string(), "127.16.9.1:5300");
        assert_eq!(
            s.sources,
            ["127.16.9.1".parse::<std::net::IpAddr>().unwrap()]
        );
        // `notify:` sends NOTIFY elsewhere (port 53 unless given); requests still come from
        // `addresses`.
        let elsewhere = good.replace(
            "    key:",
            "    notify: [127.0.0.1, \"127.0.0.2:5301\"]\n    key:",
        );
        let config =
            crate::config::parse_texts(&[("d/a.yaml", &elsewhere)], &[("d/a.key", &knot)]).unwrap();
        let s = &config.spaces[0].secondaries[0];
        let notify: Vec<String> = s.notify.iter().map(ToString::to_string).collect();
        assert_eq!(notify, ["127.0.0.1:53", "127.0.0.2:5301"]);
        assert_eq!(
            s.sources,
            ["127.16.9.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(
            !format!("{s:?}").contains("secret-secret"),
            "the secret is never printed"
        );
        // BIND's tsig-keygen output reads the same.
        let bind =
            format!("key \"xfr-a\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{secret}\";\n}};\n");
        let config =
            crate::config::parse_texts(&[("d/a.yaml", &good)], &[("d/a.key", &bind)]).unwrap();
        assert_eq!(config.spaces[0].secondaries[0].key.secret.len(), 32);

        let errs = errors(&[("d/a.yaml", &good)], &[]);
        assert_one(&errs, "d/a.yaml:9:", "cannot read key file d/a.key");
        let errs = errors(&[("d/a.yaml", &good)], &[("d/a.key", "not base64!")]);
        assert_one(&errs, "d/a.yaml:9:", "the secret is not base64");
        let errs = errors(&[("d/a.yaml", &good)], &[("d/a.key", "c2hvcnQ=")]);
        assert_one(&errs, "d/a.yaml:9:", "too short");
        let odd = space(
            "a",
            "10.16.0.0/16",
            &secondary("xfr-a", "a.key", "peer:office"),
        );
        let errs = errors(&[("d/a.yaml", &odd)], &[("d/a.key", secret)]);
        assert_one(&errs, "d/a.yaml:10:", "the space has no peer \"office\"");
        let odd = space(
            "a",
            "10.16.0.0/16",
            &secondary("xfr-a", "a.key", "everyone"),
        );
        let errs = errors(&[("d/a.yaml", &odd)], &[("d/a.key", secret)]);
        assert_one(
            &errs,
            "d/a.yaml:10:",
            "expected space, public or peer:<name>",
        );

        // One key, two audiences: within a file, and across files.
        let two = format!(
            "{}{}",
            secondary("xfr-a", "a.key", "space"),
            secondary("xfr-a", "a.key", "peer:vpn")
        );
        let two = space("a", "10.16.0.0/16", &two);
        let errs = errors(&[("d/a.yaml", &two)], &[("d/a.key", secret)]);
        assert_one(
            &errs,
            "d/a.yaml:",
            "key xfr-a. already signs for another audience",
        );
        let other = space("b", "10.17.0.0/16", &secondary("xfr-a", "a.key", "space"));
        let errs = errors(
            &[("d/a.yaml", &good), ("d/b.yaml", &other)],
            &[("d/a.key", secret)],
        );
        assert_one(
            &errs,
            "d/b.yaml:",
            "key xfr-a. already signs for another audience (space a, space)",
        );
    }

    #[test]
    fn accepts_a_full_space() {
        let yaml = "space: s\nnetwork: 10.16.0.0/16\npeers:\n  - {name: vpn, cidrs: [192.168.10.0/24, \"fd00:10::/64\"]}\nrouter: {private: [10.16.0.10], public: [203.0.113.10]}\nzones:\n  - file: corp.example.com.zone\napps:\n  - name: app-one\n    allow: [vpn]\n    domains: [api.corp.example.com, \"*.tools.corp.example.com\"]\n    dynos:\n      - {name: web.1, ip: 10.16.1.21, port: 5000}\n      - {name: worker.1, ip: 10.16.1.23}\n  - name: std-app\n    internal_routing: false\n";
        let config =
            crate::config::parse_texts(&[("s.yaml", yaml)], &[("corp.example.com.zone", ZONE)])
                .unwrap();
        let s = &config.spaces[0];
        assert_eq!(s.domain.to_ascii(), "herokuapp.com.");
        assert_eq!(s.apps[0].allow, Some(vec![0]));
        assert_eq!(s.apps[0].dynos[1].name(), "worker.1");
        assert_eq!(
            s.nameservers[0].name.to_ascii(),
            "ns1.s.spaceroute.internal."
        );
        assert_eq!(s.zones[0].apex.to_ascii(), "corp.example.com.");
    }

    #[test]
    fn duplicate_app_names_are_reported_within_a_file_and_across_files() {
        let one = "space: one\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\napps:\n  - name: app-a\n  - name: app-b\n  - name: app-a\n";
        let two = "space: two\nnetwork: 10.17.0.0/16\nrouter: {private: [10.17.0.10]}\napps:\n  - name: app-b\n";
        let errs = errors(&[("one.yaml", one), ("two.yaml", two)], &[]);
        assert_one(&errs, "one.yaml:7:11:", "duplicate app name \"app-a\"");
        assert_one(
            &errs,
            "two.yaml:5:11:",
            "app \"app-b\" is already defined for herokuapp.com. in one.yaml",
        );
        assert_eq!(errs.len(), 2, "{errs:#?}");
    }

    #[test]
    fn bad_values_are_reported_at_their_line() {
        let yaml = "space: Bad_Space\nnetwork: 10.16.0.0/33\npeers:\n  - {name: vpn, cidrs: [nope]}\nrouter: {private: [10.16.0.300]}\nnameservers:\n  - {name: \"bad name\", ip: 1.2.3}\napps:\n  - name: ab\n    allow: [office]\n    domains: [\"x\", \"*.ok.example.com\", \"a.*.example.com\"]\n    dynos:\n      - {name: web, ip: 10.16.1.1, port: 5000}\n      - {name: web.1, ip: 10.16.1.x, port: 5000}\n      - {name: web.2, ip: 10.16.1.2}\n";
        let errs = errors(&[("s.yaml", yaml)], &[]);
        assert_one(&errs, "s.yaml:1:8:", "space name");
        assert_one(&errs, "s.yaml:2:10:", "is not a CIDR");
        assert_one(&errs, "s.yaml:4:25:", "is not a CIDR");
        assert_one(&errs, "s.yaml:5:20:", "not an IP address");
        assert_one(&errs, "s.yaml:7:12:", "not a host name");
        assert_one(&errs, "s.yaml:7:28:", "not an IP address");
        assert_one(&errs, "s.yaml:9:11:", "app name");
        assert_one(&errs, "s.yaml:10:13:", "not a peer of this space");
        assert_one(&errs, "s.yaml:11:15:", "not a host name");
        assert_one(&errs, "s.yaml:11:40:", "not a host name");
        assert_one(&errs, "s.yaml:13:16:", "must be <process>.<n>");
        assert_one(&errs, "s.yaml:14:27:", "not an IP address");
        assert_one(&errs, "s.yaml:15:9:", "needs a port");
        assert_eq!(errs.len(), 13, "{errs:#?}");
    }

    #[test]
    fn duplicates_across_files_name_both() {
        let a = "space: a\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\napps:\n  - name: dup-app\n    domains: [api.example.com]\n";
        let b = "space: a\nnetwork: 10.16.128.0/17\nrouter: {private: [10.17.0.10]}\napps:\n  - name: other\n  - name: dup-app\n    domains: [API.example.com.]\n";
        let errs = errors(&[("a.yaml", a), ("b.yaml", b)], &[]);
        assert_one(
            &errs,
            "b.yaml:1:8:",
            "space \"a\" is also defined in a.yaml",
        );
        assert_one(&errs, "b.yaml:2:10:", "overlaps space \"a\"");
        assert_one(&errs, "b.yaml:6:11:", "app \"dup-app\" is already defined");
        assert_one(
            &errs,
            "b.yaml:7:15:",
            "already a domain of app \"dup-app\" in a.yaml",
        );
        assert_eq!(errs.len(), 4, "{errs:#?}");
    }

    #[test]
    fn standard_app_needs_router_public_and_internal_needs_private() {
        let yaml = "space: s\nnetwork: 10.16.0.0/16\napps:\n  - name: pub-app\n    internal_routing: false\n  - name: priv-app\n";
        let errs = errors(&[("s.yaml", yaml)], &[]);
        assert_one(&errs, "s.yaml:5:23:", "needs router.public");
        assert_one(&errs, "s.yaml:1:1:", "need router.private");
    }

    #[test]
    fn custom_domain_colliding_with_zone_data_is_rejected() {
        let yaml = "space: s\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\nzones:\n  - file: corp.example.com.zone\napps:\n  - name: apex-app\n    domains: [corp.example.com]\n  - name: www-app\n    domains: [www.corp.example.com, \"*.corp.example.com\", x.herokuapp.com]\n";
        let errs = errors(&[("s.yaml", yaml)], &[("corp.example.com.zone", ZONE)]);
        // The apex itself is fine: only its SOA and NS live there.
        assert_one(
            &errs,
            "s.yaml:10:15:",
            "collides with www.corp.example.com.",
        );
        assert_one(&errs, "s.yaml:10:37:", "collides with");
        assert_one(
            &errs,
            "s.yaml:10:59:",
            "inside the app domain herokuapp.com.",
        );
        assert_eq!(errs.len(), 3, "{errs:#?}");
    }

    #[test]
    fn zone_without_soa_or_with_outside_data_is_rejected() {
        let yaml = "space: s\nnetwork: 10.16.0.0/16\nzones:\n  - file: corp.example.com.zone\n";
        let errs = errors(
            &[("s.yaml", yaml)],
            &[("corp.example.com.zone", "$TTL 60\nwww IN A 10.1.1.1\n")],
        );
        assert_one(&errs, "corp.example.com.zone:1:1:", "no SOA");
        let zone = "$TTL 60\n@ IN SOA ns1 h 1 2 3 4 5\nother.example.net. IN A 10.1.1.1\n";
        let errs = errors(&[("s.yaml", yaml)], &[("corp.example.com.zone", zone)]);
        assert_one(&errs, "corp.example.com.zone:3:1:", "outside the zone");
        let zone = "$TTL 60\n@ IN SOA ns1 h 1 2 3 4 5\n\n; the mail host\nmail IN A 10.1.1.1\nwww IN CNAME mail\nwww IN TXT \"x\"\n";
        let errs = errors(&[("s.yaml", yaml)], &[("corp.example.com.zone", zone)]);
        assert_one(
            &errs,
            "corp.example.com.zone:7:1:",
            "has a CNAME and other data",
        );
    }
}
