//! Config watcher: polls the config path and republishes the snapshot when
//! anything under it changes.
//!
//! Polling (every 250 ms) rather than inotify: it sees editors' write-to-temp
//! then rename, Kubernetes ConfigMap symlink swaps and files appearing in new
//! subfolders without tracking watches, and costs a few `stat` calls.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use mesh_registry::{Snapshot, SnapshotHandle};

pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Symlinked folders could loop; real config trees are shallow.
const MAX_DEPTH: usize = 16;

/// Builds a fresh snapshot from the config source (load + translate).
pub type ReloadFn = Box<dyn Fn() -> anyhow::Result<Snapshot> + Send>;

/// Counters of the reload machinery, shown on `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ReloadStats {
    pub(crate) total: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// Publishes `snapshot` as the next version and returns that version.
/// In-flight work keeps the `Arc` it loaded; new loads see this one.
pub fn publish(handle: &SnapshotHandle, mut snapshot: Snapshot) -> u64 {
    let version = handle.load().version + 1;
    snapshot.version = version;
    handle.store(std::sync::Arc::new(snapshot));
    version
}

/// What the files under the path look like: changes when any file is added,
/// removed, replaced or written. `Err` when the path cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint(Result<Vec<FileStamp>, String>);

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FileStamp {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Fingerprint {
    pub(crate) fn of(path: &Path) -> Self {
        let mut files = Vec::new();
        let result = collect(path, 0, &mut files).map(|()| {
            files.sort();
            files
        });
        Self(result.map_err(|e| e.to_string()))
    }
}

/// Looks at the files the config loader reads: the path itself when it is a
/// file, else `.yaml`/`.yml` files below it, skipping hidden folders (such as
/// Kubernetes' `..data`). Editor temp and swap files therefore cause no reload.
fn collect(path: &Path, depth: usize, out: &mut Vec<FileStamp>) -> std::io::Result<()> {
    // `metadata` follows symlinks: a swapped link target shows up as a change.
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        if depth >= MAX_DEPTH {
            return Ok(());
        }
        for entry in std::fs::read_dir(path)? {
            let child = entry?.path();
            let name = child.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Ok(child_meta) = std::fs::metadata(&child) else {
                // Vanished between listing and stat (an editor at work) or a
                // dangling link: the next poll sees the settled state.
                continue;
            };
            let wanted = if child_meta.is_dir() {
                !name.starts_with('.')
            } else {
                matches!(
                    child.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml")
                )
            };
            if wanted {
                let _ = collect(&child, depth + 1, out);
            }
        }
    } else {
        use std::os::unix::fs::MetadataExt;
        out.push(FileStamp {
            path: path.to_path_buf(),
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        });
    }
    Ok(())
}

pub(crate) struct ConfigWatch {
    pub(crate) path: PathBuf,
    pub(crate) reload: ReloadFn,
    /// Taken when the watch was registered: a program that registers the
    /// watch before its initial load cannot miss an edit made in between.
    pub(crate) baseline: Fingerprint,
}

/// After a change is seen, wait this long for the files to stop changing
/// (an editor writing in place, a `cp` of several files) before reloading.
const SETTLE: Duration = Duration::from_millis(100);
/// Reload anyway if the files keep changing for this long.
const MAX_SETTLE: Duration = Duration::from_secs(2);

/// Polls forever on the control thread. Reloads run on tokio's blocking pool
/// so a large translation never stalls the admin endpoints.
pub(crate) async fn run(watch: ConfigWatch, snapshots: SnapshotHandle, stats: &ReloadStats) {
    let ConfigWatch {
        path,
        reload,
        baseline,
    } = watch;
    let reload = std::sync::Arc::new(std::sync::Mutex::new(reload));
    let mut last = baseline;
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let mut now = Fingerprint::of(&path);
        if now == last {
            continue;
        }
        let changing_since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(SETTLE).await;
            let again = Fingerprint::of(&path);
            let settled = again == now;
            now = again;
            if settled || changing_since.elapsed() >= MAX_SETTLE {
                break;
            }
        }
        last = now;
        stats.total.fetch_add(1, Ordering::Relaxed);
        let reload = reload.clone();
        let result = tokio::task::spawn_blocking(move || {
            let reload = reload.lock().unwrap_or_else(|p| p.into_inner());
            (*reload)()
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("reload panicked: {e}")));
        match result {
            Ok(snapshot) => {
                let version = publish(&snapshots, snapshot);
                tracing::info!(path = %path.display(), version, "configuration reloaded");
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    path = %path.display(),
                    error = format!("{e:#}"),
                    "configuration reload failed; keeping the last good snapshot"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_sees_edits_new_files_and_removal() {
        let dir = std::env::temp_dir().join(format!("mesh-runtime-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.yaml"), "a: 1\n").unwrap();
        let first = Fingerprint::of(&dir);
        assert!(first.0.is_ok());
        assert_eq!(first, Fingerprint::of(&dir));

        std::fs::write(dir.join("a.yaml"), "a: 12\n").unwrap();
        let edited = Fingerprint::of(&dir);
        assert_ne!(first, edited);

        std::fs::write(dir.join("sub/b.yaml"), "b: 1\n").unwrap();
        let added = Fingerprint::of(&dir);
        assert_ne!(edited, added);

        // Files the loader ignores do not count.
        std::fs::write(dir.join(".a.yaml.swp"), "x").unwrap();
        std::fs::create_dir_all(dir.join("..data")).unwrap();
        std::fs::write(dir.join("..data/c.yaml"), "c: 1\n").unwrap();
        assert_eq!(added, Fingerprint::of(&dir));

        std::fs::remove_dir_all(&dir).unwrap();
        let gone = Fingerprint::of(&dir);
        assert!(gone.0.is_err());
    }

    #[test]
    fn publish_increments_the_version() {
        let handle = mesh_registry::new_handle(Snapshot::default());
        assert_eq!(publish(&handle, Snapshot::default()), 1);
        assert_eq!(publish(&handle, Snapshot::default()), 2);
        assert_eq!(handle.load().version, 2);
    }
}
