//! `spaceroute explain`: why a source gets the answer it gets, from the same code that answers.
//!
//! Pure, like `dns::answer`, which it calls: the explanation of a name for a source is who
//! trusts the source and through what (its space's network or a peer), what owns the name
//! (an app, a custom domain, a wildcard, a zone file, nothing), which row of the "who sees what"
//! table applied, and the exact answer the server gives (rcode, AA, records), taken from
//! [`answer`] itself over TCP (so that nothing is truncated). The rule is the words; the answer
//! is the server's, so the two cannot drift apart silently: tests pin both per row.

use std::net::IpAddr;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde::Serialize;

use crate::access::Trusts;
use crate::config::Audience;
use crate::dns::answer::{Transport, answer};
use crate::snapshot::policy::Sight;
use crate::snapshot::{Apex, AppRef, Snapshot, wire};

/// Why `source` gets its answer for `name` and `qtype`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Explanation {
    /// The source address.
    pub source: IpAddr,
    /// The spaces that trust it and through what; empty for a public source.
    pub trusted_by: Vec<TrustedBy>,
    /// The name asked, lower-case and absolute.
    pub name: String,
    /// The type asked.
    pub qtype: String,
    /// What owns the name, whoever asks.
    pub owner: String,
    /// The row of the "who sees what" table that applied, in words.
    pub rule: String,
    /// The answer.
    pub answer: Answered,
}

/// One space's trust in the source.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TrustedBy {
    /// The space.
    pub space: String,
    /// `network`, or `peer <name>` for each peer whose networks hold the source.
    pub via: Vec<String>,
}

/// The answer the server gives.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Answered {
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`, ...; `no reply` when the query is dropped.
    pub rcode: String,
    /// Authoritative answer.
    pub aa: bool,
    /// The answer section, one record per line as in a zone file.
    pub answers: Vec<String>,
    /// The authority section.
    pub authority: Vec<String>,
}

/// Explains `name`/`qtype` for `source`, or says why the name cannot be asked.
pub fn explain(
    snapshot: &Snapshot,
    source: IpAddr,
    name: &str,
    qtype: RecordType,
) -> Result<Explanation, String> {
    let mut qname = Name::from_ascii(name).map_err(|e| format!("{name:?}: {e}"))?;
    qname.set_fqdn(true);
    let qname = qname.to_lowercase();
    let trusts = snapshot.access.classify(source);
    let trusted_by = (trusts.iter())
        .map(|t| {
            let space = &snapshot.spaces[t.space];
            let mut via: Vec<String> = Vec::new();
            if t.network {
                via.push(format!("network {}", space.network));
            }
            for (i, peer) in space.peer_names.iter().enumerate() {
                if t.peers & (1 << i) != 0 {
                    via.push(format!("peer {peer}"));
                }
            }
            TrustedBy {
                space: space.name.clone(),
                via,
            }
        })
        .collect();
    let (owner, rule) = rule(snapshot, &trusts, &qname);
    Ok(Explanation {
        source,
        trusted_by,
        name: qname.to_ascii(),
        qtype: qtype.to_string(),
        owner,
        rule,
        answer: answered(snapshot, source, &qname, qtype),
    })
}

/// Every name `source` may resolve to an app and every owner name of the zone files it sees,
/// sorted, as text.
pub fn visible_names(snapshot: &Snapshot, source: IpAddr) -> Vec<String> {
    let mut names: Vec<String> = (snapshot.visible_names(source).iter())
        .map(Name::to_ascii)
        .collect();
    names.sort();
    names
}

/// What owns `qname` and which row of the table applies to an asker with `trusts`.
fn rule(snapshot: &Snapshot, trusts: &Trusts, qname: &Name) -> (String, String) {
    let space_name = |s: usize| snapshot.spaces[s].name.as_str();
    let trusted_by = |s: usize| trusts.iter().any(|t| t.space == s);
    let public = trusts.is_empty();
    let app_name = |app: AppRef| {
        let view = snapshot.app(app);
        let kind = if view.internal {
            "internal"
        } else {
            "standard"
        };
        format!("{kind} app {}/{}", space_name(app.space), view.name)
    };

    // The app that owns the name itself, or a wildcard custom domain covering it.
    let exact = snapshot.exact_host(&wire(qname));
    let covering = || {
        let mut up = qname.base_name();
        while !up.is_root() {
            if let Some(app) = snapshot.wildcard(&up) {
                return Some(app);
            }
            up = up.base_name();
        }
        None
    };
    let owned = exact.or_else(covering);
    let sight = snapshot.sight(qname, trusts);
    if let Some(app) = owned {
        let owner = match exact {
            Some(_) => app_name(app),
            None => format!("{} (by its wildcard custom domain)", app_name(app)),
        };
        let view = snapshot.app(app);
        let s = space_name(app.space);
        let rule = match (snapshot.addresses(app, trusts), sight) {
            (Some(_), Sight::App(seen)) if seen == app && view.internal => format!(
                "trusted by {s}: an internal app of {s} the source may see (its network, or a peer \
                 its allow list admits): router.private, authoritative"
            ),
            (Some(_), Sight::App(seen)) if seen == app && trusted_by(app.space) => format!(
                "trusted by {s}: a standard app of {s}: router.private (router.public when the \
                 space has none)"
            ),
            (Some(_), Sight::App(seen)) if seen == app => {
                format!("not trusted by {s}: a standard app: {s}'s router.public")
            }
            (_, Sight::App(seen)) => format!(
                "the source may not see {}, so the name is as if absent for it; the wildcard of \
                 {} covers it",
                app_name(app),
                app_name(seen)
            ),
            _ if trusted_by(app.space) => format!(
                "trusted by {s}, but {s}'s internal app {} allows only some peers, not this \
                 source's: as if absent (NXDOMAIN or NODATA with the SOA)",
                view.name
            ),
            _ if !public => format!(
                "an internal app of {s}, which does not trust the source (other spaces do): as \
                 if absent (NXDOMAIN or NODATA with the SOA)"
            ),
            _ => format!("public source, internal app of {s}: REFUSED, as for any private name"),
        };
        return (owner, rule);
    }
    let Some(zone) = snapshot.zone(qname, trusts) else {
        let rule = match public && snapshot.zone(qname, &every_space(snapshot)).is_some() {
            true => "public source, a name only trusted askers may see: REFUSED".to_string(),
            false => "a name in no zone we serve: REFUSED (never recursion)".to_string(),
        };
        return ("nothing".to_string(), rule);
    };
    let s = space_name(zone.space);
    match zone.kind {
        Apex::File { space, zone: z } => {
            let data = &snapshot.spaces[space].zones[z];
            let owner = format!(
                "zone file {} ({} audience) of space {s}",
                data.file.display(),
                match data.audience {
                    Audience::Trusted => "trusted",
                    Audience::Public => "public",
                }
            );
            let rule = match data.audience {
                Audience::Trusted => format!(
                    "trusted by {s}: a name in {s}'s zone files: the zone data (CNAMEs chased, \
                     wildcards, NODATA or NXDOMAIN with the SOA)"
                ),
                Audience::Public => {
                    "a name in an audience: public zone file: that file's data".to_string()
                }
            };
            (owner, rule)
        }
        Apex::Domain if !zone.public => (
            format!("no app; the app domain {} of space {s}", zone.apex),
            format!(
                "trusted by {s}: a name under {s}'s app domain that no space lists: {s}'s \
                 unlisted policy ({:?})",
                snapshot.spaces[zone.space].unlisted
            ),
        ),
        Apex::Localspace => (
            "service discovery (app.localspace)".to_string(),
            format!("trusted by {s}: the dynos of {s}'s apps"),
        ),
        _ => (
            format!("no name of its own; the zone {}", zone.apex),
            match public {
                true => "public source: only standard apps and public zone data exist for it; \
                         the rest is NXDOMAIN under a zone it sees"
                    .to_string(),
                false => format!("trusted by {s}: no such name in {s}'s view: NXDOMAIN"),
            },
        ),
    }
}

/// Trust by every space's own network: to tell "private" from "not ours".
fn every_space(snapshot: &Snapshot) -> Trusts {
    (0..snapshot.spaces.len())
        .map(|space| crate::access::Trust {
            space,
            network: true,
            peers: u64::MAX,
        })
        .collect()
}

/// The server's answer to `qname`/`qtype` from `source`, over TCP.
fn answered(snapshot: &Snapshot, source: IpAddr, qname: &Name, qtype: RecordType) -> Answered {
    let mut query = Message::query();
    query.metadata.id = 1;
    query.add_query(Query::query(qname.clone(), qtype));
    let reply = (query.to_vec().ok())
        .and_then(|bytes| answer(snapshot, source, Transport::Tcp, &bytes).reply)
        .and_then(|bytes| Message::from_vec(&bytes).ok());
    match reply {
        Some(m) => Answered {
            rcode: match u16::from(m.metadata.response_code) {
                0 => "NOERROR".to_string(),
                1 => "FORMERR".to_string(),
                2 => "SERVFAIL".to_string(),
                3 => "NXDOMAIN".to_string(),
                4 => "NOTIMP".to_string(),
                5 => "REFUSED".to_string(),
                _ => m.metadata.response_code.to_string(),
            },
            aa: m.metadata.authoritative,
            answers: m.answers.iter().map(ToString::to_string).collect(),
            authority: m.authorities.iter().map(ToString::to_string).collect(),
        },
        None => Answered {
            rcode: "no reply".to_string(),
            aa: false,
            answers: Vec::new(),
            authority: Vec::new(),
        },
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "source   {}", self.source)?;
        if self.trusted_by.is_empty() {
            writeln!(f, "trust    public: no space trusts it")?;
        }
        for t in &self.trusted_by {
            writeln!(f, "trust    space {} via {}", t.space, t.via.join(", "))?;
        }
        writeln!(f, "name     {} {}", self.name, self.qtype)?;
        writeln!(f, "owner    {}", self.owner)?;
        writeln!(f, "rule     {}", self.rule)?;
        let aa = if self.answer.aa { ", aa" } else { "" };
        writeln!(f, "answer   {}{aa}", self.answer.rcode)?;
        for r in &self.answer.answers {
            writeln!(f, "  answer    {r}")?;
        }
        for r in &self.answer.authority {
            writeln!(f, "  authority {r}")?;
        }
        Ok(())
    }
}
