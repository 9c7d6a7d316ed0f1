//! The file watcher: the zones directory and the directories of the files it names (zone
//! files and certificates may live elsewhere), re-pointed after each reload.

use std::collections::BTreeSet;
use std::path::PathBuf;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::warn;

use super::{Reloader, Trigger};

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
    pub(super) fn update(&mut self, reloader: &Reloader) {
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
