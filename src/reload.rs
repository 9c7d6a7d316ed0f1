//! Hot reload: watch the zones directory, rebuild the snapshot off the query path, swap it in
//! only when the whole directory is valid.
//!
//! The reloader is the only writer of the `ArcSwap<Snapshot>`. A reload loads, validates and
//! compiles everything into a new [`Snapshot`] (on a blocking thread), then swaps it in with
//! one store: queries that already loaded the old snapshot finish on it, and no query ever sees
//! half of an edit. A failed reload logs every diagnostic and keeps the last good snapshot.
//! File events and SIGHUP go through one channel; a burst of events is one reload, and events
//! that arrive during a reload cause one more.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hickory_proto::rr::Name;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{self, Audience, Config, Diagnostic};
use crate::snapshot::{self, Snapshot, ZoneKey};

/// Why a reload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file changed.
    File,
    /// SIGHUP.
    Signal,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// A new snapshot is serving; `changes` says what differs from the last one.
    Swapped {
        /// The new generation number.
        generation: u64,
        /// What changed, for the log.
        changes: Changes,
    },
    /// The files have problems; the last good snapshot keeps serving.
    Rejected(Vec<Diagnostic>),
}

/// Reloads the config of one directory into one shared snapshot.
pub struct Reloader {
    dir: PathBuf,
    snapshot: Arc<ArcSwap<Snapshot>>,
    state: Mutex<State>,
}

struct State {
    config: Config,
    serials: Serials,
    generation: u64,
    failures: u64,
}

/// The reloader's counters, for logs, tests and (later) metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Successful loads so far, the first included.
    pub generation: u64,
    /// Rejected reloads so far.
    pub failures: u64,
}

impl Reloader {
    /// Loads `dir` for the first time; a failure here is fatal to the caller.
    pub fn load(dir: &Path) -> Result<Reloader, Vec<Diagnostic>> {
        let config = config::load_dir(dir)?;
        let mut serials = Serials::default();
        let snapshot = serials.compile(&config, unix_now());
        Ok(Reloader {
            dir: dir.to_path_buf(),
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            state: Mutex::new(State {
                config,
                serials,
                generation: 1,
                failures: 0,
            }),
        })
    }

    /// The shared snapshot the servers read.
    pub fn snapshot(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    /// The config now serving.
    pub fn with_config<T>(&self, f: impl FnOnce(&Config) -> T) -> T {
        f(&self.lock().config)
    }

    /// The counters.
    pub fn status(&self) -> Status {
        let state = self.lock();
        Status {
            generation: state.generation,
            failures: state.failures,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-written (it is replaced whole),
        // so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads, validates and compiles the directory and swaps the result in; blocking.
    /// Concurrent calls run one after another.
    pub fn reload(&self) -> Reloaded {
        let mut state = self.lock();
        let started = Instant::now();
        let (sources, mut diagnostics) = config::load::load_sources(&self.dir);
        let loaded = started.elapsed();
        let config = match config::validate::validate(sources) {
            Ok(config) if diagnostics.is_empty() => config,
            Ok(_) => return self.reject(&mut state, diagnostics),
            Err(more) => {
                diagnostics.extend(more);
                return self.reject(&mut state, diagnostics);
            }
        };
        let validated = started.elapsed() - loaded;
        let mut serials = state.serials.clone();
        let snapshot = serials.compile(&config, unix_now());
        let compiled = started.elapsed() - loaded - validated;
        let swap = Instant::now();
        let old = self.snapshot.swap(Arc::new(snapshot));
        let swapped = swap.elapsed();
        drop_here(old);

        let changes = Changes::between(&state.config, &config);
        state.config = config;
        state.serials = serials;
        state.generation += 1;
        info!(
            generation = state.generation,
            load_ms = ms(loaded),
            validate_ms = ms(validated),
            compile_ms = ms(compiled),
            swap_us = swapped.as_micros() as u64,
            serial = state.serials.last,
            "reloaded: {changes}"
        );
        Reloaded::Swapped {
            generation: state.generation,
            changes,
        }
    }

    fn reject(&self, state: &mut State, diagnostics: Vec<Diagnostic>) -> Reloaded {
        state.failures += 1;
        for d in &diagnostics {
            error!("{d}");
        }
        error!(
            generation = state.generation,
            failures = state.failures,
            "last reload failed with {} error(s); still serving generation {}",
            diagnostics.len(),
            state.generation
        );
        Reloaded::Rejected(diagnostics)
    }

    /// The paths to watch: the zones directory, and the directories of zone and certificate
    /// files that live outside it.
    fn watch_list(&self) -> BTreeSet<PathBuf> {
        // Compare real paths: `zones/../certs` is not inside `zones`.
        let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let dir = real(&self.dir);
        let mut paths = BTreeSet::from([dir.clone()]);
        let state = self.lock();
        for space in &state.config.spaces {
            let files = (space.zones.iter().map(|z| z.file.as_path())).chain(
                space.apps.iter().flat_map(|a| {
                    a.tls
                        .iter()
                        .flat_map(|t| [t.cert.as_path(), t.key.as_path()])
                }),
            );
            for file in files {
                if let Some(parent) = file.parent().map(real)
                    && !parent.starts_with(&dir)
                {
                    paths.insert(parent);
                }
            }
        }
        paths
    }
}

/// Drops the last reference to an old snapshot on this (blocking) thread rather than on a
/// query's: a query that loaded it just before the swap holds it for microseconds, and freeing
/// 100k apps takes long enough to show in that query's latency. Gives up after a second.
fn drop_here(old: Arc<Snapshot>) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(old);
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() as u32)
}

/// Runs reloads on triggers until `shutdown`: file events from `watch` (which is re-pointed
/// after each reload, as certificate paths may change) and SIGHUP, both through `receiver`. A
/// burst of triggers within `debounce` of each other is one reload.
pub async fn run(
    reloader: Arc<Reloader>,
    mut watch: Option<FileWatch>,
    mut receiver: mpsc::UnboundedReceiver<Trigger>,
    debounce: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            t = receiver.recv() => t,
            () = shutdown.cancelled() => return,
        };
        let Some(first) = first else { return };
        // Debounce: wait until the files are quiet, but never more than 2 s after the first event.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut why = first;
        while let Ok(Some(t)) = tokio::time::timeout(debounce, receiver.recv()).await {
            if t == Trigger::Signal {
                why = t;
            }
            if Instant::now() > deadline {
                break;
            }
        }
        debug!(?why, "reloading");
        let r = reloader.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || r.reload()).await {
            error!("reload task failed: {e}");
        }
        if let Some(watch) = &mut watch {
            watch.update(&reloader);
        }
    }
}

/// A file watcher on the zones directory and the directories of the files it names, sending
/// [`Trigger::File`] on every change.
pub struct FileWatch {
    watcher: RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
}

impl FileWatch {
    /// Starts watching what `reloader`'s config names; changes are seen once this returns.
    pub fn start(
        reloader: &Reloader,
        triggers: mpsc::UnboundedSender<Trigger>,
    ) -> notify::Result<FileWatch> {
        let watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                // Reads (ours included) show up as access events; only changes matter.
                Ok(e) if matches!(e.kind, EventKind::Access(_)) => {}
                Ok(_) => {
                    let _ = triggers.send(Trigger::File);
                }
                Err(e) => warn!("file watch error: {e}"),
            })?;
        let mut watch = FileWatch {
            watcher,
            watched: BTreeSet::new(),
        };
        watch.update(reloader);
        Ok(watch)
    }

    /// Watches the paths the current config needs, and stops watching the others.
    fn update(&mut self, reloader: &Reloader) {
        let wanted = reloader.watch_list();
        for gone in self.watched.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        let mut watching = BTreeSet::new();
        for path in wanted {
            if self.watched.contains(&path) {
                watching.insert(path);
                continue;
            }
            match self.watcher.watch(&path, RecursiveMode::Recursive) {
                Ok(()) => {
                    watching.insert(path);
                }
                Err(e) => warn!(path = %path.display(), "cannot watch: {e}"),
            }
        }
        self.watched = watching;
    }
}

/// A zone whose serial the reloader manages; the owned form of [`ZoneKey`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ZoneId {
    Space(String),
    File(String, Name, Audience),
}

/// The SOA serials of every zone: derived from the clock, bumped only for zones whose data
/// changed, and never going back (the next serial is max(now, last + 1)).
#[derive(Debug, Clone, Default)]
struct Serials {
    /// The data fingerprint and serial of each zone.
    zones: HashMap<ZoneId, (u64, u32)>,
    /// The last serial given out.
    last: u32,
}

impl Serials {
    /// Gives each zone of `config` its serial and compiles the snapshot.
    fn compile(&mut self, config: &Config, now: u32) -> Snapshot {
        let mut prints = HashMap::new();
        for space in &config.spaces {
            let synthesized = (
                &space.domain,
                &space.network,
                &space.peers,
                &space.router_private,
                &space.router_public,
                space.ttl,
                &space.nameservers,
                &space.apps,
            );
            prints.insert(ZoneId::Space(space.name.clone()), fingerprint(&synthesized));
            for zone in &space.zones {
                let id = ZoneId::File(space.name.clone(), zone.apex.clone(), zone.audience);
                prints.insert(id, fingerprint(&zone.records));
            }
        }
        let changed = prints
            .iter()
            .any(|(id, print)| self.zones.get(id).is_none_or(|(p, _)| p != print));
        let next = if changed {
            now.max(self.last.wrapping_add(1))
        } else {
            self.last
        };
        self.zones = (prints.into_iter())
            .map(|(id, print)| {
                let serial = match self.zones.get(&id) {
                    Some(&(p, serial)) if p == print => serial,
                    _ => next,
                };
                (id, (print, serial))
            })
            .collect();
        self.last = next;
        snapshot::compile(config, |key| {
            let id = match key {
                ZoneKey::Space(space) => ZoneId::Space(space.to_string()),
                ZoneKey::File {
                    space,
                    apex,
                    audience,
                } => ZoneId::File(space.to_string(), apex.clone(), audience),
            };
            self.zones.get(&id).map_or(next, |&(_, serial)| serial)
        })
    }
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
    fn between(old: &HashMap<String, u64>, new: &HashMap<String, u64>) -> Delta {
        let mut d = Delta::default();
        for (k, print) in new {
            match old.get(k) {
                None => d.added.push(k.clone()),
                Some(p) if p != print => d.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        d.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        d.added.sort();
        d.removed.sort();
        d.changed.sort();
        d
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl Changes {
    /// Compares two configs.
    pub fn between(old: &Config, new: &Config) -> Changes {
        fn spaces(c: &Config) -> HashMap<String, u64> {
            (c.spaces.iter())
                .map(|s| {
                    (
                        s.name.clone(),
                        fingerprint(&(
                            s.network,
                            &s.peers,
                            &s.router_private,
                            &s.router_public,
                            s.ttl,
                            &s.nameservers,
                            &s.domain,
                            &s.zones.iter().map(|z| &z.records).collect::<Vec<_>>(),
                            &s.apps,
                        )),
                    )
                })
                .collect()
        }
        fn apps(c: &Config) -> HashMap<String, u64> {
            (c.spaces.iter())
                .flat_map(|s| {
                    s.apps
                        .iter()
                        .map(move |a| (format!("{}/{}", s.name, a.name), fingerprint(a)))
                })
                .collect()
        }
        fn names(c: &Config) -> HashMap<String, u64> {
            let mut names = HashSet::new();
            for s in &c.spaces {
                for a in &s.apps {
                    names.insert(format!("{}.{}", a.name, s.domain));
                    names.extend(a.domains.iter().map(|d| d.to_string()));
                }
                for z in &s.zones {
                    names.extend(z.records.keys().map(|k| k.name.to_string()));
                }
            }
            names.into_iter().map(|n| (n, 0)).collect()
        }
        Changes {
            spaces: Delta::between(&spaces(old), &spaces(new)),
            apps: Delta::between(&apps(old), &apps(new)),
            names: Delta::between(&names(old), &names(new)),
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
