//! Hot reload: watch the zones directory, rebuild the snapshot off the query path, swap it in
//! only when the whole directory is valid.
//!
//! The reloader is the only writer of the `ArcSwap<Snapshot>`. A reload builds a new
//! [`Snapshot`] (on a blocking thread), then swaps it in with one store: queries that already
//! loaded the old snapshot finish on it, and no query ever sees half of an edit. A failed
//! reload logs every diagnostic and keeps the last good snapshot.
//! Each space file is kept compiled, keyed by a hash of its text and of every file it names: a
//! reload reads, checks and compiles only the files that changed, runs the checks across files
//! over every space, and assembles the shared indexes (an edit to one file of a million-app
//! tree is served in well under a second).
//! File events and SIGHUP go through one channel; a burst of events is one reload, and events
//! that arrive during a reload cause one more.
//!
//! One job per file: this one reloads (load against the kept spaces, validate, compile, swap)
//! and runs the loop that debounces triggers; `watch` keeps the file watcher pointed at what the
//! config names; `prints` fingerprints each generation and says what changed; `serials` gives
//! each zone its SOA serial from those fingerprints.

mod prints;
mod serials;
mod watch;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Diagnostic;
use crate::config::load;
use crate::config::validate::{self, Claims};
use crate::metrics::Metrics;
use crate::snapshot::{self, Snapshot, SpaceView};
use prints::Prints;
pub use prints::{Changes, Delta};
use serials::Serials;
pub use watch::FileWatch;

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
        changes: Box<Changes>,
        /// Space files that had not changed, reused as compiled.
        reused: usize,
    },
    /// The files have problems; the last good snapshot keeps serving.
    Rejected(Vec<Diagnostic>),
}

/// Reloads the config of one directory into one shared snapshot.
pub struct Reloader {
    dir: PathBuf,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each space file as last loaded, by path.
    kept: HashMap<PathBuf, Kept>,
    prints: Prints,
    serials: Serials,
    generation: u64,
    failures: u64,
}

/// A space file as last loaded, reused as compiled while neither it nor a file it names
/// changes. The config itself is not kept: at a million apps it is larger than the snapshot.
#[derive(Clone)]
struct Kept {
    /// [`load::content_hash`] of the space file.
    hash: u64,
    /// The files it names, with their hashes ([`load::Source::named`]).
    named: Vec<(PathBuf, Option<u64>)>,
    /// What it compiled to, shared with the snapshot.
    view: Arc<SpaceView>,
    /// Apps and names it serves, for the summary.
    counts: (usize, usize),
}

/// The result of loading a directory against what was kept from the last load.
struct Built {
    snapshot: Snapshot,
    kept: HashMap<PathBuf, Kept>,
    prints: Prints,
    serials: Serials,
    /// Space files reused as compiled.
    reused: usize,
    /// Time spent reading and parsing, checking, and compiling.
    times: [Duration; 3],
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
        Reloader::load_with(dir, Arc::new(Metrics::new()))
    }

    /// [`Reloader::load`], counting into `metrics`, which the process's servers share.
    pub fn load_with(dir: &Path, metrics: Arc<Metrics>) -> Result<Reloader, Vec<Diagnostic>> {
        let built = build(dir, &State::default())?;
        let [loaded, validated, compiled] = built.times;
        info!(
            load_ms = ms(loaded),
            validate_ms = ms(validated),
            compile_ms = ms(compiled),
            "compiled the zones directory"
        );
        let Built {
            snapshot,
            kept,
            prints,
            serials,
            ..
        } = built;
        for w in &snapshot.warnings {
            warn!("{w}");
        }
        metrics.reloaded(1, serials.last);
        serials.report(&metrics, &snapshot);
        Ok(Reloader {
            dir: dir.to_path_buf(),
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            metrics,
            state: Mutex::new(State {
                kept,
                prints,
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

    /// The process's metrics, which the reloader creates and counts reloads into.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// What the config now serving holds: "2 spaces, 5 apps, 9 names".
    pub fn summary(&self) -> String {
        let state = self.lock();
        let (apps, names) =
            (state.kept.values()).fold((0, 0), |(a, n), k| (a + k.counts.0, n + k.counts.1));
        format!("{} spaces, {apps} apps, {names} names", state.kept.len())
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

    /// Loads, validates and compiles what changed in the directory and swaps the result in;
    /// blocking. Concurrent calls run one after another.
    pub fn reload(&self) -> Reloaded {
        let mut state = self.lock();
        let built = match build(&self.dir, &state) {
            Ok(built) => built,
            Err(diagnostics) => return self.reject(&mut state, diagnostics),
        };
        for w in &built.snapshot.warnings {
            warn!("{w}");
        }
        let swap = Instant::now();
        let old = self.snapshot.swap(Arc::new(built.snapshot));
        let swapped = swap.elapsed();
        drop_here(old);

        let changes = Changes::between(&state.prints, &built.prints);
        state.kept = built.kept;
        state.prints = built.prints;
        state.serials = built.serials;
        state.generation += 1;
        self.metrics.reloaded(state.generation, state.serials.last);
        state.serials.report(&self.metrics, &self.snapshot.load());
        let [loaded, validated, compiled] = built.times;
        info!(
            generation = state.generation,
            load_ms = ms(loaded),
            validate_ms = ms(validated),
            compile_ms = ms(compiled),
            swap_us = swapped.as_micros() as u64,
            reused = built.reused,
            serial = state.serials.last,
            "reloaded: {changes}"
        );
        Reloaded::Swapped {
            generation: state.generation,
            changes: Box::new(changes),
            reused: built.reused,
        }
    }

    fn reject(&self, state: &mut State, diagnostics: Vec<Diagnostic>) -> Reloaded {
        state.failures += 1;
        self.metrics.reload_failed();
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
        let files = (state.kept.values()).flat_map(|k| k.named.iter().map(|(path, _)| path));
        for file in files {
            if let Some(parent) = file.parent().map(real)
                && !parent.starts_with(&dir)
            {
                paths.insert(parent);
            }
        }
        paths
    }
}

/// Loads `dir` against what `old` kept: a space file that has not changed, nor any file it
/// names, is reused as compiled; the others are read, checked and compiled. The checks across
/// files run over every space, and report a conflict at a changed file (it comes later).
fn build(dir: &Path, old: &State) -> Result<Built, Vec<Diagnostic>> {
    let started = Instant::now();
    let paths = load::space_paths(dir).map_err(|d| vec![d])?;
    let unchanged = |path: &PathBuf, kept: &Kept| {
        load::file_hash(path) == Some(kept.hash)
            && (kept.named.iter()).all(|(named, hash)| load::file_hash(named) == *hash)
    };
    let (mut reused, mut changed) = (Vec::new(), Vec::new());
    for path in paths {
        match old.kept.get(&path) {
            Some(kept) if unchanged(&path, kept) => reused.push((path, kept.clone())),
            _ => changed.push(path),
        }
    }
    let (sources, mut diagnostics) = load::load_paths(&changed);
    let loaded = started.elapsed();

    let mut spaces = Vec::new();
    for source in &sources {
        match validate::check_space(source) {
            Ok(space) => spaces.push((space, source)),
            Err(more) => diagnostics.extend(more),
        }
    }
    let claims: Vec<_> = (reused.iter())
        .map(|(path, kept)| (claims(&kept.view, path), None))
        .chain(
            spaces
                .iter()
                .map(|(space, source)| (space.claims(), Some(*source))),
        )
        .collect();
    diagnostics.extend(validate::check_across(&claims));
    drop(claims);
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    let validated = started.elapsed() - loaded;

    let mut prints = Prints::default();
    for (_, kept) in &reused {
        prints.keep(&old.prints, &kept.view.name);
    }
    for (space, _) in &spaces {
        prints.add(space);
    }
    let mut serials = old.serials.clone();
    let serial_warnings = serials.assign(&old.prints, &prints, unix_now());
    let reused_count = reused.len();
    let mut kept: HashMap<PathBuf, Kept> = reused.into_iter().collect();
    kept.extend(spaces.into_iter().map(|(space, source)| {
        let view = Arc::new(snapshot::compile_space(&space, |key| serials.get(key)));
        let kept = Kept {
            hash: source.hash,
            named: source.named.clone(),
            view,
            counts: (space.apps.len(), space.names_served()),
        };
        (source.path.clone(), kept)
    }));
    let mut views: Vec<Arc<SpaceView>> = kept.values().map(|k| k.view.clone()).collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    let mut snapshot = snapshot::assemble(views);
    snapshot.warnings.extend(serial_warnings);
    let compiled = started.elapsed() - loaded - validated;
    Ok(Built {
        snapshot,
        kept,
        prints,
        serials,
        reused: reused_count,
        times: [loaded, validated, compiled],
    })
}

/// What a kept space claims that no other may, for the checks across files: what
/// [`crate::config::Space::claims`] gives for a space just read, from what was compiled of it. Here,
/// not in `snapshot`, so that the snapshot knows nothing of validation.
fn claims<'a>(view: &'a SpaceView, file: &'a Path) -> Claims<'a> {
    Claims {
        name: &view.name,
        file,
        network: view.network,
        domain: &view.domain,
        nameservers: (view.nameservers.iter().chain(&view.public_nameservers))
            .map(|(n, _)| n)
            .collect(),
        apps: (view.apps.iter())
            .map(|a| (&*a.name, &*a.domains))
            .collect(),
        records: (view.zones.iter())
            .flat_map(|z| {
                (z.nodes.iter()).flat_map(move |(owner, rrsets)| {
                    (rrsets.iter()).map(move |r| (&*z.file, owner.clone(), r.rtype))
                })
            })
            .collect(),
        keys: (view.secondaries.iter())
            .map(|s| (&s.key.name, s.audience))
            .collect(),
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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut why = first;
        while let Ok(Some(t)) = tokio::time::timeout(debounce, receiver.recv()).await {
            if t == Trigger::Signal {
                why = t;
            }
            if tokio::time::Instant::now() > deadline {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Audience, Config};
    use crate::snapshot::ZoneKey;
    use hickory_proto::rr::Name;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    const ZONE: &str = "$TTL 60\n@ IN SOA ns1 h 1 2 3 4 5\nwww IN A 10.1.1.1\n";

    fn config(router: &str, www: &str, extra_app: bool) -> Config {
        declared(router, www, extra_app, "", 1)
    }

    /// A space with `top` among its top-level keys and a zone file of serial `zone_serial`.
    fn declared(router: &str, www: &str, extra_app: bool, top: &str, zone_serial: u32) -> Config {
        let app = if extra_app {
            "  - name: extra-app\n"
        } else {
            ""
        };
        let yaml = format!(
            "space: s\n{top}network: 10.16.0.0/16\nrouter: {{private: [{router}]}}\nzones:\n  - file: corp.example.zone\napps:\n  - name: the-app\n{app}"
        );
        let zone = ZONE
            .replace("10.1.1.1", www)
            .replace(" 1 2 3 4 5", &format!(" {zone_serial} 2 3 4 5"));
        config::parse_texts(&[("d/s.yaml", &yaml)], &[("d/corp.example.zone", &zone)]).unwrap()
    }

    fn serials_of(serials: &Serials) -> (u32, u32) {
        let apex = Name::from_ascii("corp.example.").unwrap();
        let file = ZoneKey::File {
            space: "s",
            apex: &apex,
            audience: Audience::Trusted,
        };
        (serials.get(ZoneKey::Space("s")), serials.get(file))
    }

    #[test]
    fn serials_move_only_for_changed_zones_and_never_back() {
        let mut serials = Serials::default();
        let a = Prints::of(&config("10.16.0.10", "10.1.1.1", false));
        // The space declares no serial: the clock. The zone file says 1.
        assert!(serials.assign(&Prints::default(), &a, 1000).is_empty());
        assert_eq!(serials_of(&serials), (1000, 1));
        // Same second, app data changed: +1 for the space's zones only.
        let b = Prints::of(&config("10.16.0.11", "10.1.1.1", false));
        serials.assign(&a, &b, 1000);
        assert_eq!(serials_of(&serials), (1001, 1));
        // Nothing changed: nothing moves, even much later.
        serials.assign(&b, &b, 5000);
        assert_eq!(serials_of(&serials), (1001, 1));
        // The zone file's data changed but not its serial: one more, and a warning naming it.
        let c = Prints::of(&config("10.16.0.11", "10.1.1.2", false));
        let warnings = serials.assign(&b, &c, 6000);
        assert_eq!(serials_of(&serials), (1001, 2));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("zone corp.example."), "{warnings:?}");
        // A clock that went back does not take serials back.
        let d = Prints::of(&config("10.16.0.12", "10.1.1.2", false));
        serials.assign(&c, &d, 10);
        assert_eq!(serials_of(&serials), (1002, 2));
        // The file raised its serial: taken as written, with no warning.
        let e = Prints::of(&declared("10.16.0.12", "10.1.1.3", false, "", 7));
        assert!(serials.assign(&d, &e, 20).is_empty());
        assert_eq!(serials_of(&serials), (1002, 7));
    }

    /// Issue 10: replicas built from the same files serve the same serials, whatever each one
    /// loaded before and whatever its clock says.
    #[test]
    fn issue_10_declared_serials_agree_across_replicas_started_at_different_times() {
        let v1 = Prints::of(&declared(
            "10.16.0.10",
            "10.1.1.1",
            false,
            "serial: 2026113001\n",
            5,
        ));
        let v2 = Prints::of(&declared(
            "10.16.0.11",
            "10.1.1.2",
            true,
            "serial: 2026113002\n",
            6,
        ));
        // One replica ran through v1 and then v2, the other started on v2 a day later.
        let mut early = Serials::default();
        early.assign(&Prints::default(), &v1, 1_000);
        assert_eq!(serials_of(&early), (2026113001, 5));
        assert!(early.assign(&v1, &v2, 2_000).is_empty());
        let mut late = Serials::default();
        late.assign(&Prints::default(), &v2, 90_000);
        assert_eq!(serials_of(&early), serials_of(&late));
        assert_eq!(serials_of(&late), (2026113002, 6));
        let public = |s: &Serials| s.get(ZoneKey::Public("s"));
        assert_eq!((public(&early), public(&late)), (2026113002, 2026113002));
        // A serial written lower than one served is not taken back, and says so.
        let v3 = Prints::of(&declared(
            "10.16.0.11",
            "10.1.1.2",
            true,
            "serial: 2026010100\n",
            6,
        ));
        let warnings = early.assign(&v2, &v3, 3_000);
        assert_eq!(serials_of(&early), (2026113002, 6));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("is below 2026113002"), "{warnings:?}");
    }

    /// Issue 7, item 8: outsiders cannot watch internal deploys in the public SOA serial.
    #[test]
    fn issue_7_internal_deploys_do_not_move_the_public_serial() {
        let mut serials = Serials::default();
        let a = Prints::of(&config("10.16.0.10", "10.1.1.1", false));
        serials.assign(&Prints::default(), &a, 1000);
        let public = |s: &Serials| s.get(ZoneKey::Public("s"));
        assert_eq!(public(&serials), 1000);
        // An internal app added, the private router moved: the trusted view's serial moves.
        let b = Prints::of(&config("10.16.0.11", "10.1.1.1", true));
        serials.assign(&a, &b, 2000);
        assert_eq!(
            (serials.get(ZoneKey::Space("s")), public(&serials)),
            (2000, 1000)
        );
        // A standard app is public data.
        let mut c = config("10.16.0.11", "10.1.1.1", true);
        c.spaces[0].apps[1].internal_routing = false;
        let c = Prints::of(&c);
        serials.assign(&b, &c, 3000);
        assert_eq!(public(&serials), 3000);
        // With declared serials, `public.serial` is the public view's: an internal deploy that
        // raises `serial` leaves it.
        let top = |n| format!("serial: {n}\npublic: {{serial: 77}}\n");
        let d = Prints::of(&declared("10.16.0.11", "10.1.1.1", true, &top(10), 1));
        let e = Prints::of(&declared("10.16.0.12", "10.1.1.1", false, &top(11), 1));
        let mut serials = Serials::default();
        serials.assign(&Prints::default(), &d, 1000);
        assert!(serials.assign(&d, &e, 2000).is_empty());
        assert_eq!(
            (serials.get(ZoneKey::Space("s")), public(&serials)),
            (11, 77)
        );
    }

    /// The debounce, on tokio's paused clock: a burst of triggers is one reload, and a stream
    /// that never pauses is reloaded every 2 s rather than never.
    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_reload_and_a_stream_is_reloaded_every_two_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "space: s\nnetwork: 10.16.0.0/16\nrouter: {private: [10.16.0.10]}\n";
        std::fs::write(dir.path().join("s.yaml"), yaml).unwrap();
        let reloader = Arc::new(Reloader::load(dir.path()).unwrap());
        let generation = || reloader.status().generation;
        let (tx, rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let debounce = Duration::from_millis(200);
        tokio::spawn(run(reloader.clone(), None, rx, debounce, shutdown.clone()));
        let sleep = |ms| tokio::time::sleep(Duration::from_millis(ms));

        // Ten triggers 50 ms apart, then quiet: one reload, 200 ms after the last.
        for _ in 0..10 {
            tx.send(Trigger::File).unwrap();
            sleep(50).await;
        }
        sleep(100).await;
        assert_eq!(generation(), 1, "not before the files are quiet");
        sleep(100).await;
        assert_eq!(generation(), 2);

        // A trigger every 100 ms for 5 s: a reload once 2 s have passed since the first.
        for i in 0..50 {
            tx.send(Trigger::File).unwrap();
            sleep(100).await;
            // Triggers 20 and 42 land on the very tick of a reload: either count is right.
            let expected = match i {
                20 | 42 => continue,
                0..=19 => 2,
                21..=41 => 3,
                _ => 4,
            };
            assert_eq!(generation(), expected, "after trigger {i}");
        }
        sleep(300).await;
        assert_eq!(generation(), 5, "and once more when it stops");
        shutdown.cancel();
    }

    #[test]
    fn changes_name_spaces_apps_and_names() {
        let a = Prints::of(&config("10.16.0.10", "10.1.1.1", false));
        let b = Prints::of(&config("10.16.0.10", "10.1.1.1", true));
        let changes = Changes::between(&a, &b);
        assert_eq!(changes.apps.added, ["s/extra-app"]);
        assert_eq!(changes.spaces.changed, ["s"]);
        assert_eq!(changes.names.added, ["extra-app.herokuapp.com."]);
        assert_eq!(
            changes.to_string(),
            "spaces ~s; apps +s/extra-app; names +extra-app.herokuapp.com."
        );
        assert_eq!(Changes::between(&b, &b).to_string(), "no changes");
        assert_eq!(
            Changes::between(&b, &a).to_string(),
            "spaces ~s; apps -s/extra-app; names -extra-app.herokuapp.com."
        );
    }
}
