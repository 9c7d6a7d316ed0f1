//! Who sees what: the one lookup that DNS answers, routing and TLS certificate choice all use.
//!
//! A name the asker may not see behaves exactly as if it did not exist: it does not stop a
//! covering wildcard the asker may see (RFC 4592 over the asker's view of the names), it does
//! not make its parents exist, and its zone falls back to the next apex the asker may see. A
//! fix here holds for the DNS server, the router and the certificate resolver together.

use std::net::IpAddr;

use hickory_proto::rr::Name;

use super::{Apex, AppRef, AppView, Snapshot, ZoneView, wire};
use crate::access::{Trust, Trusts};
use crate::config::Audience;

/// What an asker sees at a name among the names that apps own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sight {
    /// An app answers: the name itself, or a wildcard custom domain covering it.
    App(AppRef),
    /// An empty non-terminal above an app the asker may see: the name exists, with no data.
    Empty,
    /// No app's name: the zone data (or nothing) answers.
    Nothing,
}

impl Snapshot {
    /// Every name `source` may resolve to an app (app names and custom domains, exact and
    /// wildcard) and every owner name of the zone files it sees, without duplicates.
    pub fn visible_names(&self, source: IpAddr) -> Vec<Name> {
        self.visible_names_but_hosts(source, true)
    }

    /// [`Snapshot::visible_names`] without the app host names (`<app>.<app domain>`) unless
    /// `hosts`: a zone transfer walks those one by one instead of holding a million of them.
    pub fn visible_names_but_hosts(&self, source: IpAddr, hosts: bool) -> Vec<Name> {
        let trusts = self.access.classify(source);
        let mut names = Vec::new();
        for (s, space) in self.spaces.iter().enumerate() {
            for (a, app) in space.apps.iter().enumerate() {
                let app_ref = AppRef { space: s, app: a };
                if app.domains.is_empty() && !hosts || self.addresses(app_ref, &trusts).is_none() {
                    continue;
                }
                if hosts
                    && let Ok(host) =
                        Name::from_ascii(&*app.name).and_then(|n| n.append_domain(&space.domain))
                {
                    names.push(host);
                }
                names.extend(app.domains.iter().cloned());
            }
            let trusted = trusts.iter().any(|t| t.space == s);
            for zone in &space.zones {
                let sees = match zone.audience {
                    Audience::Trusted => trusted,
                    Audience::Public => !trusted,
                };
                if sees {
                    names.extend(zone.nodes.keys().cloned());
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names
    }

    /// Every apex we serve to someone: app domains, zone files, custom domains.
    pub fn apex_names(&self) -> impl Iterator<Item = &Name> {
        self.apexes.keys()
    }

    /// What an asker with `trusts` sees at the lower-case `qname` among app names and custom
    /// domains: an exact name first, then an empty non-terminal, then the wildcard at the
    /// closest encloser (RFC 4592 §3.3.1), all over the names this asker may see.
    pub fn sight(&self, qname: &Name, trusts: &Trusts) -> Sight {
        let sees = |app: &AppRef| self.addresses(*app, trusts).is_some();
        if let Some(app) = self.exact_host(&wire(qname)).filter(sees) {
            return Sight::App(app);
        }
        let ent = |name: &Name| (self.ents.get(name)).is_some_and(|apps| apps.iter().any(sees));
        if ent(qname) {
            return Sight::Empty;
        }
        let mut up = qname.base_name();
        while !up.is_root() {
            if let Some(app) = self.wildcards.get(&up).filter(|a| sees(a)) {
                return Sight::App(*app);
            }
            // The closest encloser exists without a wildcard: no synthesis (RFC 4592 §4.1).
            if self.exact_host(&wire(&up)).is_some_and(|a| sees(&a)) || ent(&up) {
                return Sight::Nothing;
            }
            up = up.base_name();
        }
        Sight::Nothing
    }

    /// The app a request from `client` for the lower-case `host` goes to: exactly what DNS
    /// answers that client for that name. `None` is "no such app", the same for a name that
    /// exists and one that does not.
    pub fn route(&self, client: IpAddr, host: &Name) -> Option<AppRef> {
        match self.sight(host, &self.access.classify(client)) {
            Sight::App(app) => Some(app),
            Sight::Empty | Sight::Nothing => None,
        }
    }

    /// The addresses `app` resolves to for an asker with `trusts`, or `None` when the asker may
    /// not see it at all (the "Who sees what" table of DESIGN.md).
    pub fn addresses(&self, app: AppRef, trusts: &Trusts) -> Option<&[IpAddr]> {
        self.addresses_for(app, trusts.iter().find(|t| t.space == app.space))
    }

    /// [`Snapshot::addresses`] given only how the app's own space trusts the asker (`None`:
    /// not at all), as [`Access::trust`](crate::access::Access::trust) tells it.
    pub fn addresses_for(&self, app: AppRef, trust: Option<&Trust>) -> Option<&[IpAddr]> {
        let view = self.app(app);
        let space = &self.spaces[app.space];
        match trust {
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
                let public = !trusts.iter().any(|t| t.space == space);
                return Some(ZoneView {
                    apex,
                    kind,
                    space,
                    public,
                });
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
                Apex::Custom { app, public }
                    if self.addresses(app, trusts).is_some() && !(public && trusted(app.space)) =>
                {
                    Some(app.space)
                }
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
}

/// Whether `trust` (a trusting space's view of the asker) may see the internal app `app`.
fn allowed(app: &AppView, trust: &Trust) -> bool {
    trust.network || app.allow.is_none_or(|mask| mask & trust.peers != 0)
}
